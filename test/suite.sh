#!/usr/bin/env bash
# The suite on one PostgreSQL, whose bin directory is PG_BINDIR (default
# Debian's 15), with the extension built and installed for it (test/run.sh
# does both):
#     PG_BINDIR=/usr/lib/postgresql/15/bin bash test/suite.sh
# Starts a throwaway cluster (run by an unprivileged user) and runs every
# test: pg_regress, isolation, and the integration tests under test/.  Then
# checks that nothing of its own is left: no server, fake Stripe, PgBouncer
# or app its tests started, no work directory of theirs in /tmp (each
# leftover, one line, counts as a failure).  Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. test/lib/cluster.sh
. test/lib/build.sh
work_begin test
work_logs main/server.log    # (a failing test shows its own logs)
# the work directories of this run, its own first (test/lib/work.sh)
export SB_WORK_LIST=$work/work_dirs
echo "$work" >"$SB_WORK_LIST"
echo "== starting a throwaway cluster in $work/main"
cluster_start "$work/main" "shared_preload_libraries = 'stripe_billing'" || exit 1

passed=0
failed=0
failures=()

# pg_regress (test/sql, test/expected) and pg_isolation_regress (test/specs):
# one count per test, read from their own report lines.
echo "== pg_regress and isolation tests"
installcheck "$PG_BINDIR" "$work/installcheck.log"
passed=$((passed + CHECK_OK))
failed=$((failed + CHECK_BAD))
[ "$CHECK_BAD" -eq 0 ] || failures+=("installcheck")

# Integration tests: each script is one test; its output is shown.  One
# that cannot run here says why and exits 77: skipped, neither passed nor
# failed.
createdb sb_integration
export PGDATABASE=sb_integration
skipped=0
integration() {
    local name=$1 rc; shift
    echo "== $name"
    "$@" 2>&1 | sed 's/^/   /'
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        echo "   -> ok"; passed=$((passed + 1))
    elif [ "$rc" -eq 77 ]; then
        echo "   -> skipped"; skipped=$((skipped + 1))
    else
        echo "   -> FAILED"; failed=$((failed + 1)); failures+=("$name")
    fi
}
integration signature_crosscheck bash test/integration/signature_crosscheck.sh
integration secrets_not_logged bash test/integration/secrets_not_logged.sh "$work/main/server.log"
integration standby_entitlements bash test/integration/standby_entitlements.sh
integration concurrency_stress bash test/integration/concurrency_stress.sh
integration search_path_hijack bash test/integration/search_path_hijack.sh
integration dump_restore bash test/integration/dump_restore.sh
integration api_calls bash test/integration/api_calls.sh
integration subscription_changes bash test/integration/subscription_changes.sh
integration usage_outbox bash test/integration/usage_outbox.sh
integration subtransactions bash test/integration/subtransactions.sh
integration worker bash test/integration/worker.sh
integration concurrent_appliers bash test/integration/concurrent_appliers.sh
integration backfill bash test/integration/backfill.sh
integration connect bash test/integration/connect.sh
integration connect_polling bash test/integration/connect_polling.sh
integration thin_events bash test/integration/thin_events.sh
integration fake_stripe node --test test/integration/fake_stripe/selftest.js
integration notify bash test/integration/notify.sh
integration without_preload bash test/integration/without_preload.sh
integration pgbouncer bash test/integration/pgbouncer.sh
integration packaging bash test/integration/packaging.sh
integration sql_reference bash test/integration/sql_reference.sh
integration quickstart bash test/integration/quickstart.sh
integration upgrade bash test/integration/upgrade.sh
integration example_express bash test/integration/example_express.sh
integration example_fastapi bash test/integration/example_fastapi.sh
integration citus bash test/integration/citus.sh
# (the package is built for Debian's PostgreSQL, debian/pgversions)
[ "$PG_BINDIR" = /usr/lib/postgresql/15/bin ] && integration debian_package bash test/integration/debian_package.sh

# Nothing of the run is left: the suite's cluster stopped, then no process
# any test started (a postmaster, the fake, PgBouncer, an app, a client) and
# no work directory of theirs, matched by the directories this run made
# (another clone's suite may be running beside it).
echo "== leftovers"
cluster_stop "$work/main" || { failed=$((failed + 1)); failures+=("the suite's cluster did not stop"); }
left=$(work_leftovers "$SB_WORK_LIST")
if [ -z "$left" ]; then
    echo "   none: $(($(wc -l <"$SB_WORK_LIST") - 1)) work directories removed, no server or process of theirs running"
    echo "   -> ok"; passed=$((passed + 1))
else
    while IFS= read -r line; do
        echo "   FAIL  left over: $line"; failed=$((failed + 1))
    done <<<"$left"
    failures+=("leftovers")
    work_leftovers "$SB_WORK_LIST" --clear
fi

echo
[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
