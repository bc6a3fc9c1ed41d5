#!/usr/bin/env bash
# NOTIFY stripe_billing: a committed change to a user's features notifies
# listeners with the user, the customer, the event type and the features; a
# rolled-back change, or an event that changes no feature, notifies nobody.
set -euo pipefail
cd "$(dirname "$0")/.."
db=sb_notify_$$
createdb "$db"
trap 'dropdb --if-exists "$db"' EXIT

out=$(psql -X -q -d "$db" -v ON_ERROR_STOP=1 2>&1 <<'SQL'
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports') \g /dev/null
CREATE FUNCTION sub_event(evt text, created bigint, status text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', 'customer.subscription.updated',
           'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_n', 'object', 'subscription', 'customer', 'cus_n', 'status', status,
              'metadata', jsonb_build_object('user_ref', 'user_n'),
              'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                 'id', 'si_n', 'quantity', 1, 'current_period_start', 1700000000, 'current_period_end', 4102444800,
                 'price', jsonb_build_object('id', 'price_pro', 'lookup_key', 'pro', 'product', 'prod_pro')))))))
$$;
LISTEN stripe_billing;
\echo == rolled back
BEGIN;
SELECT stripe_billing.stripe_apply_event(sub_event('evt_n0', 1700000000, 'active')) \g /dev/null
ROLLBACK;
\echo == committed: access granted
SELECT stripe_billing.stripe_apply_event(sub_event('evt_n1', 1700000000, 'active')) \g /dev/null
\echo == no change to the features
SELECT stripe_billing.stripe_apply_event(sub_event('evt_n2', 1700000100, 'active')) \g /dev/null
\echo == committed: access revoked
SELECT stripe_billing.stripe_apply_event(sub_event('evt_n3', 1700000200, 'canceled')) \g /dev/null
\echo == end
SQL
)
echo "$out"
section() { sed -n "/== $1/,/== /p" <<<"$out"; }
fail=0
section "rolled back" | grep -q "Asynchronous notification" && { echo "FAIL: a rolled-back change notified"; fail=1; }
section "committed: access granted" | grep -q '"user_ref" : "user_n", "customer" : "cus_n", "event_type" : "customer.subscription.updated", "features" : \[{"feature" : "reports"' ||
    { echo "FAIL: no notification with user, customer, event type and features on grant"; fail=1; }
section "no change" | grep -q "Asynchronous notification" && { echo "FAIL: an event that changed no feature notified"; fail=1; }
section "committed: access revoked" | grep -q '"user_ref" : "user_n".*"features" : \[\]' ||
    { echo "FAIL: no notification with an empty feature list on revocation"; fail=1; }
[ $fail -eq 0 ] && echo "PASS: notifications on committed changes only, with user, customer, event type and features"
exit $fail
