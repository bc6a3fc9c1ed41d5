#!/usr/bin/env bash
# Concurrency under load, against a throwaway cluster:
#  1. plan switches, 100 rounds: for each user, two sessions at once, one
#     canceling the old subscription (plan 1), one activating the new one
#     (plan 2), each holding its transaction open a little after applying;
#     afterwards every user must have exactly the new plan's feature, and
#     every user's derived features must equal a derivation from scratch
#     (stripe_refresh_entitlements);
#  2. meanwhile a client checks entitlements without pause, another runs
#     ANALYZE on user_features and a third writes other users' rows into it
#     (each write invalidates every backend's cache): no check may raise.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
work_begin stress
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "max_connections = 40" ||
    { echo "FAIL: the cluster did not start"; exit 1; }
createdb stress && export PGDATABASE=stress

psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || { echo "FAIL: setup"; exit 1; }
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'plan_1', 'f1');
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'plan_2', 'f2');
SELECT stripe_billing.stripe_link_customer('u_' || g, 'cus_' || g) FROM generate_series(1, 100) g;
-- an event of user u's subscription s (plan s) with a status
CREATE FUNCTION stress_event(u int, s int, status text, created int) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', 'evt_' || u || '_' || s || '_' || created, 'object', 'event',
           'type', 'customer.subscription.updated', 'created', 1700000000 + created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_' || u || '_' || s, 'object', 'subscription', 'customer', 'cus_' || u,
              'status', status,
              'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                 'id', 'si_' || u || '_' || s, 'quantity', 1,
                 'current_period_start', 1700000000, 'current_period_end', 4102444800,
                 'price', jsonb_build_object('id', 'price_' || s, 'lookup_key', 'plan_' || s,
                                             'product', 'prod_' || s)))))))
$$;
-- every user starts on plan 1
SELECT stripe_billing.stripe_apply_event(stress_event(g, 1, 'active', 0)) FROM generate_series(1, 100) g;
SQL

cat >"$work/checks.sql" <<'EOF2'
\set u random(1, 100)
SELECT stripe_billing.stripe_has_entitlement('u_' || :u, 'f1'), stripe_billing.stripe_has_entitlement('u_' || :u, 'f2');
EOF2
cat >"$work/analyze.sql" <<'EOF2'
ANALYZE stripe_billing.user_features;
EOF2
# direct writes of other users' rows: every one invalidates every cache
cat >"$work/writes.sql" <<'EOF2'
\set w random(1, 50)
INSERT INTO stripe_billing.user_features VALUES ('w_' || :w, 'f1', NULL) ON CONFLICT DO NOTHING;
DELETE FROM stripe_billing.user_features WHERE user_ref = 'w_' || (:w % 7);
EOF2

pgbench=$PG_BINDIR/pgbench
"$pgbench" -n -c 1 -T 12 -f "$work/checks.sql" >"$work/checks.log" 2>&1 &
ck=$!
"$pgbench" -n -c 1 -T 12 -f "$work/analyze.sql" >"$work/analyze.log" 2>&1 &
an=$!
"$pgbench" -n -c 1 -T 12 -f "$work/writes.sql" >"$work/writes.log" 2>&1 &
wr=$!

# switch SESSION_EVENT: one side of a plan switch, held open 50 ms after applying
switch() {
    psql -X -q -At -v ON_ERROR_STOP=1 >>"$work/switch.log" 2>&1 <<SQL
BEGIN;
SELECT stripe_billing.stripe_apply_event($1) \\g /dev/null
SELECT pg_sleep(0.05);
COMMIT;
SQL
}
t0=$(date +%s)
for batch in $(seq 0 9); do
    for i in $(seq 1 10); do
        u=$((batch * 10 + i))
        switch "stress_event($u, 1, 'canceled', 1)" &
        switch "stress_event($u, 2, 'active', 1)" &
    done
    wait $(jobs -p | grep -vE "^($ck|$an|$wr)\$")
done
echo "   100 plan switches in $(($(date +%s) - t0)) s"
wait $ck; ck_rc=$?
wait $an; an_rc=$?
wait $wr

fail=0
checks=$(grep -oE 'number of transactions actually processed: [0-9]+' "$work/checks.log" | grep -oE '[0-9]+$')
if grep -q ERROR "$work/switch.log"; then
    echo "FAIL: a plan-switch session failed"; grep ERROR "$work/switch.log" | sort | uniq -c | head -3; fail=1
fi
if [ "$ck_rc" -ne 0 ] || grep -qE 'aborted|ERROR' "$work/checks.log"; then
    echo "FAIL 2: an entitlement check raised under concurrent writes and ANALYZE"; grep -E 'ERROR|aborted' "$work/checks.log" | head -3; fail=1
elif [ "${checks:-0}" -eq 0 ]; then
    echo "FAIL 2: no entitlement check ran: the check would prove nothing"; fail=1
else
    echo "PASS 2: $((${checks:-0} * 2)) checks during writes and ANALYZE of user_features, none raised"
fi

mismatch=$(psql -X -q -At -v ON_ERROR_STOP=1 <<'SQL'
DELETE FROM stripe_billing.user_features WHERE user_ref LIKE 'w\_%';   -- the direct writes' rows
CREATE TEMP TABLE derived AS SELECT user_ref, feature, valid_until FROM stripe_billing.user_features;
SELECT stripe_billing.stripe_refresh_entitlements() \g /dev/null
SELECT count(*) FROM ((SELECT * FROM derived EXCEPT SELECT user_ref, feature, valid_until FROM stripe_billing.user_features)
                      UNION ALL
                      (SELECT user_ref, feature, valid_until FROM stripe_billing.user_features EXCEPT SELECT * FROM derived)) d;
SQL
)
wrong=$(psql -X -At -c "SELECT count(*) FROM generate_series(1, 100) g
  WHERE ARRAY(SELECT feature FROM stripe_billing.user_features WHERE user_ref = 'u_' || g ORDER BY feature) <> ARRAY['f2']")
if [ "$mismatch" = 0 ] && [ "$wrong" = 0 ]; then
    echo "PASS 1: after 100 concurrent plan switches every user has exactly the new plan's feature, equal to a fresh derivation"
else
    echo "FAIL 1: $wrong of 100 users without exactly the new plan's feature; $mismatch user_features rows differ from a fresh derivation"; fail=1
fi
exit $fail
