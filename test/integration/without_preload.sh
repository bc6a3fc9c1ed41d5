#!/usr/bin/env bash
# The SQL entry points work in a session that has not loaded the library
# yet, on a server without shared_preload_libraries (webhooks only, no
# worker): each call below runs in a new session, where the settings the
# extension defines (stripe_billing.access_slack, ...) do not exist until
# something loads the library.  They used to fail with "unrecognized
# configuration parameter".  One PASS/FAIL line per call.
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
work_begin nopreload
fail=0
cluster_start "$work/pg" || exit 1
created=$(psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION stripe_billing" 2>&1) || { echo "$created"; exit 1; }
# CREATE EXTENSION says what is left out, and how to have it
if grep -q '^WARNING:  stripe_billing is not in shared_preload_libraries: its background worker will not run' <<<"$created" &&
   grep -q '^DETAIL:  .*events are not polled' <<<"$created" &&
   grep -q '^HINT:  Add stripe_billing to shared_preload_libraries' <<<"$created"; then
    echo "PASS  CREATE EXTENSION warns that the library is not preloaded, with what that leaves out and the fix"
else
    echo "FAIL  CREATE EXTENSION without preload said: $created"; fail=1
fi

# fresh SQL [EXPECTED_ERROR]: runs SQL in a new session; passes when it
# succeeds, or fails with EXPECTED_ERROR (and never on a missing setting)
fresh() {
    local out
    out=$(psql -X -At -v ON_ERROR_STOP=1 -c "$1" 2>&1)
    local rc=$?
    if grep -q 'unrecognized configuration parameter' <<<"$out"; then
        echo "FAIL  $1 -- $out"; fail=1
    elif [ $rc -ne 0 ] && { [ -z "${2:-}" ] || ! grep -qF "$2" <<<"$out"; }; then
        echo "FAIL  $1 -- $out"; fail=1
    else
        echo "PASS  $1"
    fi
}

[ "$(psql -X -At -c "SELECT count(*) FROM pg_settings WHERE name LIKE 'stripe_billing.%'")" = 0 ] ||
    { echo "FAIL  a new session already has the library loaded: this test would prove nothing"; fail=1; }
fresh "SELECT stripe_billing.stripe_link_customer('user_np', 'cus_np')"
fresh "SELECT stripe_billing.stripe_grant_feature('price', 'price_np', 'reports')"
fresh "SELECT stripe_billing.stripe_refresh_entitlements()"
fresh "SELECT stripe_billing.stripe_revoke_feature('price', 'price_np', 'reports')"
fresh "SELECT stripe_billing.stripe_has_entitlement('user_np', 'reports')"
fresh "SELECT count(*) FROM stripe_billing.stripe_user_features('user_np')"
fresh "SELECT stripe_billing.stripe_subscription_status('user_np')"
fresh "SELECT count(*) FROM stripe_billing.sync_status"
fresh "SELECT stripe_billing.stripe_report_usage('user_np', 'api_calls', 1)"
fresh "SELECT stripe_billing.stripe_send_usage()"
fresh "SELECT stripe_billing.stripe_retry_failed_usage()"
fresh "CALL stripe_billing.stripe_backfill(ARRAY['bogus'])" "is not a kind of object to backfill"
fresh "CALL stripe_billing.stripe_reconcile()" "no Stripe API key is configured"
[ "$fail" = 0 ] && echo "every entry point worked in a session that had not loaded the library"
exit $fail
