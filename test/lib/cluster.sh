# Throwaway PostgreSQL clusters for tests, demos and benchmarks.
#
# PostgreSQL refuses to run as root, so when we are root the server runs as
# an unprivileged user (postgres by default).  Each cluster lives in its own
# temporary directory and listens on a Unix socket there only.
#
#   . test/lib/cluster.sh
#   cluster_start DIR [postgresql.conf line ...]   # sets PGHOST/PGPORT/PGUSER
#   cluster_stop DIR                               # and reports a crash
#   cluster_catch_up PRIMARY STANDBY [SECONDS]     # the standby replayed all
#                                                  # the primary wrote (60 s)
#   cluster_reloaded_since TIME [SECONDS]          # a new session has the
#                                                  # configuration of a reload
#                                                  # after TIME (60 s)
#
# cluster_start registers cluster_stop DIR with at_exit (test/lib/work.sh):
# a test that called work_begin stops its clusters when it exits, and its
# work directory goes with them.
# PG_BINDIR chooses the PostgreSQL (default: Debian's 15);
# SB_POSTGRES_WRAPPER, a program pg_ctl starts instead of postgres (which
# execs it: test/valgrind.sh), and SB_START_TIMEOUT how long to wait (s).  When
# SB_CRASH_REPORT names a file, cluster_stop appends to it any assertion
# failure or crash its server logged (test/run.sh fails the run on one):
# a backend killed on purpose (signal 9) is not one.
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
SB_TEST_USER=${SB_TEST_USER:-postgres}
. test/lib/work.sh

# Runs a command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$SB_TEST_USER" -- "$@"
    else
        "$@"
    fi
}

# Creates and starts a cluster in DIR; extra arguments go to postgresql.conf.
cluster_start() {
    local dir=$1; shift
    at_exit cluster_stop "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$SB_TEST_USER" "$dir"
        # the owner must reach it through a mktemp -d (mode 700) parent
        chmod o+x "$(dirname "$dir")"
    fi
    chmod 755 "$dir"
    as_owner "$PG_BINDIR/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log"; return 1; }
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = 5432"
        echo "fsync = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        for line in "$@"; do echo "$line"; done
    } | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    as_owner "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t "${SB_START_TIMEOUT:-60}" \
        ${SB_POSTGRES_WRAPPER:+-p "$SB_POSTGRES_WRAPPER"} start >/dev/null ||
        { cat "$dir/server.log"; return 1; }
    export PGHOST=$dir PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
}

# Whether the postmaster of the cluster in DIR runs (its postmaster.pid
# names a live postgres of that data directory).
cluster_running() {
    local pid args
    pid=$(head -1 "$1/data/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] || return 1
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) && [[ "$args" == *" -D $1/data "* ]]
}

# Stops the cluster in DIR, if it runs: a fast shutdown, waited for up to
# SB_STOP_TIMEOUT s (120); a server still up then is stopped immediately,
# and cluster_stop fails (a backend that does not end on SIGTERM is a bug).
# Its files stay: the work directory's EXIT trap removes them.
cluster_stop() {
    local dir=$1 rc=0
    if cluster_running "$dir" &&
       ! as_owner "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t "${SB_STOP_TIMEOUT:-120}" stop >/dev/null 2>&1 &&
       cluster_running "$dir"; then
        echo "cluster_stop: the server in $dir did not stop within ${SB_STOP_TIMEOUT:-120} s of a fast shutdown: stopping it immediately"
        as_owner "$PG_BINDIR/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null 2>&1 ||
            kill -KILL "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null
        rc=1
    fi
    cluster_check_log "$dir/server.log"
    return $rc
}

# Waits until the standby whose socket directory is STANDBY has replayed
# everything the primary (socket directory PRIMARY) has written so far.
cluster_catch_up() {
    local lsn
    lsn=$(psql -X -At -h "$1" -d postgres -c "SELECT pg_current_wal_lsn()") || return 1
    wait_until "${3:-60}" _cluster_replayed "$2" "$lsn"
}
_cluster_replayed() { [ "$(psql -X -At -h "$1" -d postgres -c "SELECT pg_last_wal_replay_lsn() >= '$2'")" = t ]; }

# Waits until the server of PGHOST has reloaded its configuration after TIME
# (a pg_conf_load_time()): the postmaster logged what changed, and new
# sessions start with it.
cluster_reloaded_since() { wait_until "${2:-60}" _cluster_reloaded "$1"; }
_cluster_reloaded() { [ "$(psql -X -At -d postgres -c "SELECT pg_conf_load_time() > '$1'")" = t ]; }

# Appends to $SB_CRASH_REPORT the assertion failures and crashes in a
# server log (TRAP: ..., terminated by signal 6, 7, 8, 11), each once (a
# cluster may be stopped twice: by its test, and at exit).
declare -gA _cluster_log_checked=()    # bytes of each log already checked
cluster_check_log() {
    [ -n "${SB_CRASH_REPORT:-}" ] && [ -f "$1" ] || return 0
    local from=${_cluster_log_checked[$1]:-0}
    _cluster_log_checked[$1]=$(stat -c %s "$1")
    tail -c +"$((from + 1))" "$1" | grep -E 'TRAP: |terminated by signal (4|6|7|8|11)[^0-9]' |
        sed "s|^|$1: |" >>"$SB_CRASH_REPORT" || true
}
