#!/usr/bin/env bash
# NOTIFY stripe_billing: a committed change to a user's features notifies
# listeners with the user, the customer, the event type, the derivation's
# number and how many features the user has now (not the features: a
# payload is bounded); a rolled-back change, or an event that changes no
# feature, notifies nobody.  Events without a row (invoice.upcoming,
# customer.subscription.trial_will_end) are notices on the same channel,
# once per event, with bounded fields.  A user granted 300 features with long names
# (a list of them would be some 30 kB, past NOTIFY's 8000 bytes) is
# derived, the event applied, and notified in a small payload.
set -euo pipefail
cd "$(dirname "$0")/../.."
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
\echo == many features
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'feature_' || g || '_' || repeat('x', 80))
  FROM generate_series(1, 300) g \g /dev/null
-- (a second subscription: the first one's cancellation sticks)
SELECT 'outcome=' || stripe_billing.stripe_apply_event(jsonb_set(jsonb_set(
         sub_event('evt_n4', 1700000300, 'active'), '{data,object,id}', '"sub_n2"'),
         '{data,object,items,data,0,id}', '"si_n2"'));
SELECT 'features=' || count(*) FROM stripe_billing.stripe_user_features('user_n');
\echo == notice: trial_will_end
CREATE FUNCTION notice_event(evt text, type text, obj jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', type, 'created', 1700001000,
                            'livemode', false, 'data', jsonb_build_object('object', obj))
$$;
SELECT stripe_billing.stripe_link_customer('user_t', 'cus_t') \g /dev/null
SELECT 'outcome=' || stripe_billing.stripe_apply_event(notice_event('evt_t1', 'customer.subscription.trial_will_end',
  '{"id": "sub_t", "object": "subscription", "customer": "cus_t", "status": "trialing", "trial_end": 1700259200,
    "items": {"data": [{"id": "si_t", "quantity": 1, "current_period_start": 1700000000, "current_period_end": 1700259200,
                        "price": {"id": "price_t"}}]}}'));
\echo == notice: delivered again
SELECT 'outcome=' || stripe_billing.stripe_apply_event(notice_event('evt_t1', 'customer.subscription.trial_will_end',
  '{"id": "sub_t", "object": "subscription", "customer": "cus_t", "status": "trialing", "trial_end": 1700259200,
    "items": {"data": []}}'));
\echo == notice: invoice.upcoming
SELECT 'outcome=' || stripe_billing.stripe_apply_event(notice_event('evt_u1', 'invoice.upcoming',
  '{"object": "invoice", "customer": "cus_t", "amount_due": 1500, "currency": "usd", "next_payment_attempt": 1700259200,
    "parent": {"subscription_details": {"subscription": "sub_t"}}}'));
\echo == notice: rolled back
BEGIN;
SELECT stripe_billing.stripe_apply_event(notice_event('evt_u2', 'invoice.upcoming', '{"object": "invoice", "customer": "cus_t"}')) \g /dev/null
ROLLBACK;
\echo == notice: in a batch
SELECT 'batch=' || string_agg(outcome, ',') FROM stripe_billing.stripe_apply_events(ARRAY[
  notice_event('evt_u3', 'invoice.upcoming', '{"object": "invoice", "customer": "cus_t", "amount_due": 700}'),
  notice_event('evt_u4', 'invoice.created', '{"id": "in_t4", "object": "invoice", "customer": "cus_t"}')]);
\echo == notice: bounded
SELECT 'outcome=' || stripe_billing.stripe_apply_event(notice_event('evt_u5', 'invoice.upcoming',
  jsonb_build_object('object', 'invoice', 'customer', repeat('c', 100000), 'amount_due', '9' || repeat('9', 30),
                     'currency', repeat('x', 5000), 'subscription', jsonb_build_object('id', repeat('s', 300)))));
\echo == end
SQL
)
echo "$out"
section() { sed -n "/== $1/,/== /p" <<<"$out"; }
fail=0
section "rolled back" | grep -q "Asynchronous notification" && { echo "FAIL: a rolled-back change notified"; fail=1; }
section "committed: access granted" | grep -q '"user_ref" : "user_n", "customer" : "cus_n", "event_type" : "customer.subscription.updated", "derivation" : [0-9]*, "features" : 1}' ||
    { echo "FAIL: no notification with user, customer, event type, derivation and feature count on grant"; fail=1; }
section "no change" | grep -q "Asynchronous notification" && { echo "FAIL: an event that changed no feature notified"; fail=1; }
section "committed: access revoked" | grep -q '"user_ref" : "user_n".*"features" : 0}' ||
    { echo "FAIL: no notification with no features on revocation"; fail=1; }
many=$(section "many features")
grep -q 'outcome=applied' <<<"$many" && grep -q 'features=301' <<<"$many" ||
    { echo "FAIL: a user with 301 features was not derived: $(grep -E 'outcome=|features=|ERROR' <<<"$many" | head -3)"; fail=1; }
payload=$(grep -o '"user_ref" : "user_n".*"features" : 301}' <<<"$many")
[ -n "$payload" ] && [ "${#payload}" -lt 300 ] ||
    { echo "FAIL: no small notification for the user with 301 features: ${payload:0:200}"; fail=1; }
# notices: events without a row, on the same channel
notice=$(section "notice: trial_will_end")
grep -q 'outcome=applied' <<<"$notice" && grep -q '"event_type" : "customer.subscription.trial_will_end", "event_id" : "evt_t1", "user_ref" : "user_t", "customer" : "cus_t", "subscription" : "sub_t", "account" : null, "trial_end" : 1700259200}' <<<"$notice" ||
    { echo "FAIL: no notice of trial_will_end with event, user, customer, subscription and trial end: $(grep -E 'outcome|Asynchronous' <<<"$notice")"; fail=1; }
[ "$(grep -c 'Asynchronous notification' <<<"$notice")" = 1 ] || { echo "FAIL: trial_will_end notified $(grep -c 'Asynchronous notification' <<<"$notice") times"; fail=1; }
again=$(section "notice: delivered again")
grep -q 'outcome=duplicate' <<<"$again" && ! grep -q 'Asynchronous notification' <<<"$again" ||
    { echo "FAIL: an event delivered again was noticed again (or not a duplicate)"; fail=1; }
upcoming=$(section "notice: invoice.upcoming")
grep -q 'outcome=ignored' <<<"$upcoming" && grep -q '"event_type" : "invoice.upcoming", "event_id" : "evt_u1", "user_ref" : "user_t", "customer" : "cus_t", "subscription" : "sub_t", "account" : null, "amount_due" : 1500, "currency" : "usd", "next_payment_attempt" : 1700259200}' <<<"$upcoming" ||
    { echo "FAIL: no notice of invoice.upcoming (recorded ignored) with amount, currency and next attempt: $(grep -E 'outcome|Asynchronous' <<<"$upcoming")"; fail=1; }
section "notice: rolled back" | grep -q "Asynchronous notification" && { echo "FAIL: a rolled-back notice was sent"; fail=1; }
batch=$(section "notice: in a batch")
grep -q 'batch=ignored,applied' <<<"$batch" && grep -q '"event_id" : "evt_u3".*"amount_due" : 700' <<<"$batch" &&
    [ "$(grep -c 'Asynchronous notification' <<<"$batch")" = 1 ] ||
    { echo "FAIL: the notice of an event in stripe_apply_events: $(grep -E 'batch=|Asynchronous' <<<"$batch")"; fail=1; }
bounded=$(section "notice: bounded")
notice_payload=$(grep -o '{"event_type" : "invoice.upcoming", "event_id" : "evt_u5".*}' <<<"$bounded")
grep -q 'outcome=ignored' <<<"$bounded" && [ -n "$notice_payload" ] && [ "${#notice_payload}" -lt 400 ] &&
    grep -q '"customer" : null, "subscription" : null, "account" : null, "amount_due" : null, "currency" : null' <<<"$notice_payload" ||
    { echo "FAIL: an upcoming invoice with a 100 kB customer id, a 31-digit amount and a 5 kB currency: ${bounded:0:300}"; fail=1; }
[ $fail -eq 0 ] && echo "PASS: notices: trial_will_end (applied) and invoice.upcoming (ignored) notified once each with event, user, customer, subscription and their figures; none when delivered again or rolled back; stripe_apply_events notifies too; oversized fields left out (${#notice_payload} bytes)"
[ $fail -eq 0 ] && echo "PASS: a user with 301 features (a list of them: $((301 * 105)) bytes) derived, notified in ${#payload} bytes"
[ $fail -eq 0 ] && echo "PASS: notifications on committed changes only, with user, customer, event type, derivation and feature count"
exit $fail
