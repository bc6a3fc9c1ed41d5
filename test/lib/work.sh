# A test's work directory, and everything the test starts, gone when it
# exits, passing or failing: nothing is kept, so a failing test prints the
# end of its logs first.
#
#   . test/lib/work.sh
#   work_begin NAME            # work=/tmp/stripe_billing_NAME.XXXXXX (755), and
#                              # the EXIT trap below; exports SB_TEST_WORK=$work
#   at_exit COMMAND [ARG...]   # run at exit, the last registered first
#   stop_pid PID [SECONDS]     # SIGTERM, then SIGKILL after SECONDS (10);
#                              # fails when it took the SIGKILL
#   work_leftovers LIST [--clear]
#                              # what the work directories of LIST left (below)
#
# The EXIT trap, in this order: runs the at_exit commands (cluster_start and
# fake_start register theirs: test/lib/cluster.sh, test/lib/fake_stripe.sh);
# ends the test's background jobs still running; on a failure (a non-zero
# exit status, or a signal) prints the last lines of the work directory's
# *.log files; removes the directory.  A cleanup step that fails (a server
# that would not stop, ...) fails the test.  SIGINT, SIGTERM and SIGHUP end
# the test through the same trap, with a failing status.
#
# SB_WORK_LIST, when set (test/suite.sh and test/valgrind.sh set it), names
# a file each work directory is appended to, for work_leftovers.
# SB_KEEP_WORK=1 keeps the directory after a failure (its servers are
# stopped all the same), to look at by hand; the suite then counts it as a
# leftover.
[ -n "${_sb_work_sh:-}" ] && return 0
_sb_work_sh=1
. test/lib/wait.sh

work=${work:-}
_work_exit_cmds=()
_work_show=()     # the logs to show on a failure (default: every *.log)

work_begin() {
    work=$(mktemp -d "/tmp/stripe_billing_$1.XXXXXX") || { echo "FAIL  work_begin: mktemp"; exit 1; }
    chmod 755 "$work"
    [ -n "${SB_WORK_LIST:-}" ] && echo "$work" >>"$SB_WORK_LIST"
    # every process the test starts inherits it: the suite finds leftovers by it
    export SB_TEST_WORK=$work
    trap _work_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

at_exit() { _work_exit_cmds+=("$(printf '%q ' "$@")"); }

# work_logs FILE...: on a failure, show these logs (relative to $work) only
work_logs() { _work_show=("$@"); }

stop_pid() {
    local pid=$1 limit=${2:-10}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    if ! POLL=0.05 wait_until "$limit" eval "! kill -0 $pid 2>/dev/null"; then
        echo "stop_pid: process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)) still ran $limit s after SIGTERM: killed"
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    wait "$pid" 2>/dev/null
    return 0
}

_work_exit() {
    local rc=$? i f n=0 pids
    set +e
    trap - EXIT INT TERM HUP
    for ((i = ${#_work_exit_cmds[@]} - 1; i >= 0; i--)); do
        eval "${_work_exit_cmds[i]}" ||
            { echo "FAIL  cleanup: '${_work_exit_cmds[i]% }' failed"; [ "$rc" -ne 0 ] || rc=1; }
    done
    # background jobs a failure left running (clients, pgbench, ...)
    pids=$(jobs -pr)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null
        POLL=0.05 wait_until 10 eval '[ -z "$(jobs -pr)" ]' ||
            { pids=$(jobs -pr); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null; }
        wait 2>/dev/null
    fi
    if [ -n "$work" ] && [ -d "$work" ]; then
        if [ "$rc" -ne 0 ]; then
            # nothing is kept: what a diagnosis needs, now
            if [ ${#_work_show[@]} -gt 0 ]; then
                for f in "${_work_show[@]}"; do [ -s "$work/$f" ] && echo "$work/$f"; done
            else
                find "$work" -maxdepth 3 -name '*.log' -not -name initdb.log -type f -size +0 -not -path '*/data/*' | sort
            fi | while IFS= read -r f; do
                n=$((n + 1))
                [ "$n" -le 12 ] || { echo "(more logs not shown)"; break; }
                echo "---- the last ${SB_LOG_LINES:-30} lines of ${f#"$work"/}"
                tail -n "${SB_LOG_LINES:-30}" "$f" | cut -c1-500
            done
        fi
        if [ "$rc" -ne 0 ] && [ "${SB_KEEP_WORK:-0}" = 1 ]; then
            echo "(SB_KEEP_WORK=1: the work directory is kept in $work)"
        elif ! rm -rf "$work"; then
            echo "FAIL  cleanup: could not remove $work"; [ "$rc" -ne 0 ] || rc=1
        fi
    fi
    exit "$rc"
}

# work_leftovers LIST [--clear]: one line per thing the work directories
# listed in LIST (one a line) left behind, other than the caller's own
# $work directory itself: a process whose command line names one of them
# (a postmaster's -D, the fake's --port-file, PgBouncer's configuration) or
# whose environment has SB_TEST_WORK set to one (whatever a test started),
# named once (its children, a postmaster's backends, are not listed); a
# directory still there.  Only those of LIST: another suite's, running at
# the same time from another clone, are not ours.  --clear also ends those
# processes (a postmaster by SIGQUIT, an immediate shutdown; others SIGTERM,
# then SIGKILL) and removes those directories.  Reads /proc with builtins
# only: a command started here would carry the caller's SB_TEST_WORK itself.
work_leftovers() {
    local list=$1 clear=${2:-} d p pid arg e hit k v ppid
    local -a dirs=() args envs
    local -A of=() parent=() cmd=()
    while IFS= read -r d; do [ -n "$d" ] && dirs+=("$d"); done <"$list"
    [ ${#dirs[@]} -gt 0 ] || return 0
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        { [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ]; } && continue
        mapfile -d '' -t args 2>/dev/null <"$p/cmdline" || continue
        [ ${#args[@]} -gt 0 ] || continue    # a kernel thread, or a zombie
        envs=()
        mapfile -d '' -t envs 2>/dev/null <"$p/environ"
        hit=
        for d in "${dirs[@]}"; do
            for arg in "${args[@]}"; do
                [[ "$arg" == "$d" || "$arg" == *"$d/"* ]] && { hit=$d; break 2; }
            done
            for e in "${envs[@]}"; do
                [ "$e" = "SB_TEST_WORK=$d" ] && { hit=$d; break 2; }
            done
        done
        [ -n "$hit" ] || continue
        ppid=
        while read -r k v; do [ "$k" = PPid: ] && { ppid=$v; break; }; done 2>/dev/null <"$p/status"
        of[$pid]=$hit parent[$pid]=$ppid cmd[$pid]="${args[*]}"
    done
    for pid in "${!of[@]}"; do
        [ -n "${of[${parent[$pid]:-0}]:-}" ] && continue    # its parent is listed
        echo "process $pid of ${of[$pid]}: ${cmd[$pid]:0:160}"
    done
    for d in "${dirs[@]}"; do
        [ "$d" != "$work" ] && [ -e "$d" ] && echo "directory $d"
    done
    [ "$clear" = --clear ] || return 0
    for pid in "${!of[@]}"; do
        [ -n "${of[${parent[$pid]:-0}]:-}" ] && continue
        if [[ "${cmd[$pid]}" == *"postgres -D "* ]]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi 2>/dev/null
    done
    for pid in "${!of[@]}"; do
        POLL=0.1 wait_until 10 eval "[ ! -e /proc/$pid ]" || kill -KILL "$pid" 2>/dev/null
    done
    for d in "${dirs[@]}"; do [ "$d" != "$work" ] && rm -rf "$d"; done
    return 0
}
