#!/usr/bin/env bash
# A dump restores: pg_dump -Fc of a database using the extension, restored
# with pg_restore --single-transaction --exit-on-error into a new database,
# succeeds and answers as before with no manual step: every entitlement
# check, the worker's cursor and pause, the ledger, the billing tables, the
# feature grants and the usage outbox (whose ids go on from where they were,
# with the same installation id in the meter event identifiers).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
work_begin dump
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" ||
    { echo "FAIL: the cluster did not start"; exit 1; }
createdb src || exit 1
fail=0

psql -X -q -v ON_ERROR_STOP=1 -d src >/dev/null <<'SQL' || { echo "FAIL: setup"; exit 1; }
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
SELECT stripe_billing.stripe_grant_feature('product', 'prod_pro', 'export');
CREATE FUNCTION pg_temp.sub_event(evt text, status text, u int) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', 'customer.subscription.updated',
           'created', 1700000000 + u, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_' || u, 'object', 'subscription', 'customer', 'cus_' || u,
              'status', status, 'metadata', jsonb_build_object('user_ref', 'user_' || u),
              'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                 'id', 'si_' || u, 'quantity', 1,
                 'current_period_start', 1700000000, 'current_period_end', 4102444800,
                 'price', jsonb_build_object('id', 'price_pro', 'lookup_key', 'pro', 'product', 'prod_pro')))))))
$$;
SELECT stripe_billing.stripe_apply_event(pg_temp.sub_event('evt_' || g,
         (ARRAY['active', 'canceled', 'past_due', 'unpaid'])[1 + g % 4], g))
  FROM generate_series(1, 40) g;
-- the worker's state, as a running installation has it
UPDATE stripe_billing.sync_state SET event_cursor = 'evt_cursor_kept', events_applied = 1234;
SELECT stripe_billing.stripe_sync_pause();
SELECT stripe_billing.stripe_report_usage('user_1', 'api_calls', g) FROM generate_series(1, 5) g;
SQL

# answers: every check, every table's contents, the worker's state
answers() {
    psql -X -At -d "$1" <<'SQL'
SELECT 'check ' || u || ' ' || f || ' ' || stripe_billing.stripe_has_entitlement('user_' || u, f)
  FROM generate_series(1, 40) u, unnest(ARRAY['reports', 'export', 'sso']) f ORDER BY u, f;
SELECT 'sync ' || event_cursor || ' ' || paused || ' ' || events_applied FROM stripe_billing.sync_state;
SELECT 'rows ' || t || ' ' || n FROM (
  SELECT 'events' AS t, count(*) AS n FROM stripe_billing.events UNION ALL
  SELECT 'subscriptions', count(*) FROM stripe_billing.subscriptions UNION ALL
  SELECT 'subscription_items', count(*) FROM stripe_billing.subscription_items UNION ALL
  SELECT 'customers', count(*) FROM stripe_billing.customers UNION ALL
  SELECT 'feature_grants', count(*) FROM stripe_billing.feature_grants UNION ALL
  SELECT 'user_features', count(*) FROM stripe_billing.user_features UNION ALL
  SELECT 'usage_outbox', count(*) FROM stripe_billing.usage_outbox) c ORDER BY t;
SELECT 'features ' || md5(string_agg(user_ref || feature || coalesce(valid_until::text, ''), ',' ORDER BY user_ref, feature))
  FROM stripe_billing.user_features;
SQL
}
answers src >"$work/before.txt"

"$PG_BINDIR/pg_dump" -Fc -d src -f "$work/src.dump" || { echo "FAIL: pg_dump"; exit 1; }
createdb dst || exit 1
if "$PG_BINDIR/pg_restore" --single-transaction --exit-on-error -d dst "$work/src.dump" >"$work/restore.log" 2>&1; then
    echo "PASS 1 pg_restore --single-transaction --exit-on-error into a new database succeeded"
else
    echo "FAIL 1 pg_restore failed:"; sed 's/^/   /' "$work/restore.log" | head -5; fail=1
fi

answers dst >"$work/after.txt"
granted=$(grep -c ' true$' "$work/before.txt")
if [ "$granted" -gt 0 ] && diff -q "$work/before.txt" "$work/after.txt" >/dev/null; then
    echo "PASS 2 the restored database answers all 120 checks as before ($granted granted), with the same cursor, pause, counters and rows"
else
    echo "FAIL 2 the restored database answers differently:"; diff "$work/before.txt" "$work/after.txt" | head -10 | sed 's/^/   /'; fail=1
fi

next=$(psql -X -At -d dst -c "SELECT stripe_billing.stripe_report_usage('user_1', 'api_calls', 1)")
max=$(psql -X -At -d src -c "SELECT max(id) FROM stripe_billing.usage_outbox")
if [ -n "$next" ] && [ "$next" -gt "$max" ]; then
    echo "PASS 3 usage outbox ids go on after the restore ($next > $max)"
else
    echo "FAIL 3 a new usage row got id '$next' after the restore (the old rows go up to $max)"; fail=1
fi

# the meter event identifiers go on too: the same installation id (a new
# one would let a resent row count twice at Stripe)
inst_src=$(psql -X -At -d src -c "SELECT stripe_billing.stripe_installation_id()")
inst_dst=$(psql -X -At -d dst -c "SELECT stripe_billing.stripe_installation_id()")
rows_dst=$(psql -X -At -d dst -c "SELECT count(*) FROM stripe_billing.installation")
if [ -n "$inst_src" ] && [ "$inst_src" = "$inst_dst" ] && [ "$rows_dst" = 2 ]; then
    echo "PASS 4 the restored database keeps the installation id ($inst_dst; the one its CREATE EXTENSION made is younger)"
else
    echo "FAIL 4 installation id $inst_src before, $inst_dst after the restore ($rows_dst rows)"; fail=1
fi
exit $fail
