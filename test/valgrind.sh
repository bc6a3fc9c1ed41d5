#!/usr/bin/env bash
# The regression and isolation tests with every server process under
# Valgrind's Memcheck: PostgreSQL 18 built a second time with -DUSE_VALGRIND
# (its memory contexts then tell Memcheck about every chunk, so a read of
# freed or unallocated palloc memory is an error too), the postmaster
# started by pg_ctl through a wrapper that execs it under Valgrind (the
# backends are its forks: all are watched), with PostgreSQL's own
# suppressions (src/tools/valgrind.supp).  Passes when both suites pass and
# Memcheck reports no error at all; the errors in the extension's frames
# are counted apart.  Then, as test/suite.sh does, checks that no server of
# its own is left (a leftover counts as a failure).  Run as root:
#     bash test/valgrind.sh
# (test/run.sh runs it; alone it builds what it needs, about 6 minutes the
# first time.)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. test/lib/apt.sh
command -v valgrind >/dev/null || {
    apt_update && apt_get install -y -qq --no-install-recommends valgrind >/dev/null
} || { echo "installing valgrind failed"; exit 1; }
bindir=$(bash test/pg-build.sh 18 valgrind | tail -1) || { echo "building PostgreSQL 18 for Valgrind failed"; exit 1; }
supp=$(dirname "$bindir")/valgrind.supp

. test/lib/build.sh
build_for "$bindir" || { echo "building the extension failed"; exit 1; }

PG_BINDIR=$bindir
. test/lib/cluster.sh
work_begin valgrind
# (a failure shows these; Memcheck's errors are shown below)
work_logs main/server.log installcheck.log
export SB_WORK_LIST=$work/work_dirs
echo "$work" >"$SB_WORK_LIST"
mkdir "$work/vg"
chown "$SB_TEST_USER" "$work/vg" 2>/dev/null
cat >"$work/postgres" <<WRAPPER
#!/bin/sh
exec valgrind --trace-children=yes --leak-check=no --error-exitcode=99 \\
    --suppressions=$supp --num-callers=40 --read-var-info=no --error-limit=no \\
    --log-file=$work/vg/%p.log $bindir/postgres "\$@"
WRAPPER
chmod 755 "$work/postgres"

# errors in Memcheck's logs: the sum of their ERROR SUMMARY lines
summed_errors() {
    cat "$@" | sed -nE 's/^==[0-9]+== ERROR SUMMARY: ([0-9]+) errors.*/\1/p' | awk '{ s += $1 } END { print s + 0 }'
}
# (the verdict can fail: a read after free in a small program is counted)
printf '#include <stdlib.h>\nint main(void) { char *p = malloc(8); free(p); return p[0]; }\n' >"$work/canary.c"
gcc -O0 -o "$work/canary" "$work/canary.c" && valgrind --log-file="$work/canary.log" "$work/canary"
[ "$(summed_errors "$work/canary.log")" -ge 1 ] ||
    { echo "Memcheck did not count the canary's read after free: the verdict would prove nothing"; exit 1; }

t0=$(date +%s)
export SB_STOP_TIMEOUT=300    # (a shutdown under Memcheck is slow too)
echo "== starting a cluster under Valgrind in $work/main"
SB_POSTGRES_WRAPPER=$work/postgres SB_START_TIMEOUT=300 \
    cluster_start "$work/main" "shared_preload_libraries = 'stripe_billing'" "max_connections = 20" || exit 1

# event_lifecycle is left out: its 2,160 delivery orders (some 24,000 event
# applications, through the code event_ordering runs) take over 15 minutes
# under Memcheck
regress=$(make -s -f - PG_CONFIG="$bindir/pg_config" print-regress <<<'include Makefile
print-regress: ; @echo $(REGRESS)' | tr ' ' '\n' | grep -vx event_lifecycle | paste -sd ' ')
echo "== pg_regress ($regress) and isolation tests, every backend under Memcheck"
installcheck "$bindir" "$work/installcheck.log" REGRESS="$regress"
ok=$CHECK_OK
bad=$CHECK_BAD
cluster_stop "$work/main" || { echo "the cluster under Valgrind did not stop"; bad=$((bad + 1)); }

# Memcheck's verdict: every process's log ends with its ERROR SUMMARY
logs=$(ls "$work"/vg/*.log | wc -l)
errors=$(summed_errors "$work"/vg/*.log)
ours=$(awk '/^==[0-9]+== [A-Z]/ { inerr = ($0 !~ /ERROR SUMMARY|HEAP SUMMARY|Memcheck|Copyright|Using Valgrind|Command:|Parent PID/) }
            inerr && /stripe_billing\.so/ { n++; inerr = 0 } END { print n + 0 }' "$work"/vg/*.log)
echo "== Memcheck: $logs processes, $errors errors, $ours in the extension's frames ($(($(date +%s) - t0)) s)"
if [ "$errors" -gt 0 ]; then
    grep -l -E 'ERROR SUMMARY: [1-9]' "$work"/vg/*.log | head -3 | while read -r f; do
        echo "-- $f"; grep -vE '^==[0-9]+== (Memcheck|Copyright|Using Valgrind|Command:|Parent PID|$)' "$f" | head -60
    done
fi
vg_ok=$([ "$errors" -eq 0 ] && [ "$logs" -gt 0 ] && echo 1 || echo 0)
make -s clean >/dev/null

# nothing of its own left: no process of its cluster (matched by its work
# directory, as test/suite.sh does)
left=$(work_leftovers "$SB_WORK_LIST")
clean=1
if [ -n "$left" ]; then
    clean=0
    sed 's/^/FAIL  left over: /' <<<"$left"
    work_leftovers "$SB_WORK_LIST" --clear
fi
if [ "$bad" -eq 0 ] && [ "$vg_ok" -eq 1 ] && [ "$clean" -eq 1 ]; then
    echo "$((ok + 2)) passed, 0 failed"
    exit 0
fi
echo "failed:$([ "$bad" -eq 0 ] || echo " installcheck")$([ "$vg_ok" -eq 1 ] || echo " memcheck")$([ "$clean" -eq 1 ] || echo " leftovers")"
echo "$((ok + vg_ok + clean)) passed, $((bad + 2 - vg_ok - clean)) failed"
exit 1
