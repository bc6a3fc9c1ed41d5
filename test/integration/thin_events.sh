#!/usr/bin/env bash
# Thin events (issue 26) against the fake Stripe, on a throwaway cluster of
# its own: notifications of an event destination (signed by the fake with
# the destination's secret) are recorded pending by stripe_handle_webhook,
# and the worker fetches and applies them.  One PASS/FAIL line each:
#   twin       three users' subscription lifecycles and a subscription bought
#              through Checkout (44 events), delivered only as thin
#              notifications, shuffled, a third of them twice: every call
#              answers pending or duplicate and fetches nothing; the worker
#              fetches them all (GET /v2/core/events/{id}, then the related
#              object); the billing rows (their typed columns: raw is the
#              object as fetched, which Stripe changes without an event, a
#              customer's next_invoice_sequence) and the features equal
#              those of their snapshot twin (the same changes' snapshot
#              events applied in order in another database)
#   retries    a fetch that fails twice (500) then succeeds is applied once:
#              three fetches of the event, one of the object, attempts 3
#   gone       an event Stripe no longer has (404): failed, with the reason
#   meter      a meter error report (error_report_triggered of a meter) and a
#              no_meter_found mark the usage rows they concern, by
#              identifier and by customer; the others stay unmarked;
#              usage_status counts them
#   accounts   v2.core.account.updated fills stripe_billing.accounts from the
#              Accounts v2 object; a destination's ping is applied at once
#   connect    a connected account's thin events (their context) are fetched
#              with Stripe-Context, and their rows carry the account
#   polling    with stripe_billing.thin_events on, the worker lists GET
#              /v2/core/events and applies thin events no notification
#              brought, one of them listed late (behind its cursor)
#   sync_now   CALL stripe_sync_now() fetches a pending thin event in a
#              database the worker does not serve
#   errors     no ERROR in the server log
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh
. test/lib/fake_stripe.sh

PY=/usr/bin/python3     # Debian's, which has python3-psycopg
$PY -c 'import psycopg' 2>/dev/null || { echo "FAIL: python3-psycopg is missing"; exit 1; }
KEY=sk_test_thin_$RANDOM$RANDOM
WHSEC=whsec_snapshot_$RANDOM$RANDOM
WHSEC_THIN=whsec_destination_$RANDOM$RANDOM
DB=thin
work_begin thin_events

sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "${2:-$DB}" -c "$1"; }
fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$FAKE_URL$2"
}
api() { curl -sS --fail-with-body --max-time 60 -u "$KEY:" "$@"; }
# deliver [DB] < notifications: signed notifications through stripe_handle_webhook
deliver() { $PY test/integration/thin/deliver.py --db "${1:-$DB}" "${@:2}"; }
notes() { fake POST /_fake/thin_events/notifications "{\"secret\": \"$WHSEC_THIN\", $1}"; }
pending() { sql "SELECT count(*) FROM stripe_billing.events WHERE outcome = 'pending'" "${1:-$DB}"; }
# silent_change CUSTOMER NOTE: the customer's metadata.plan_note becomes NOTE
# at the fake without a snapshot event (the worker's polling of /v1/events
# cannot bring it), and one thin v1.customer.updated names the customer:
# prints that thin event's id.  Only fetching the customer shows NOTE.
silent_change() {
    fake POST /_fake/objects "{\"merge\": true, \"object\": {\"id\": \"$1\", \"object\": \"customer\",
        \"metadata\": {\"plan_note\": \"$2\"}}}" >/dev/null &&
        fake POST /_fake/thin_events "{\"events\": [{\"type\": \"v1.customer.updated\", \"related_object\":
            {\"id\": \"$1\", \"type\": \"customer\", \"url\": \"/v1/customers/$1\"}}]}" | jq -r '.events[0].id'
}

# ---- the changes: three lifecycles and a Checkout, before the worker runs
# in the database (its first poll of /v1/events takes the newest event as
# its cursor: it applies none of these, only thin events bring them)
fake_start "$work" "$KEY" || exit 1
# (created two minutes ago: behind where the worker's polling starts, so that
# its lookback never takes their snapshot events for late-listed ones)
fake POST /_fake/events '{"generate": {"mode": "lifecycle", "users": 3, "seed": 26, "spread": 3,
    "start_created": '"$(($(date +%s) - 120))"'}}' >/dev/null || exit 1
session=$(api "$FAKE_URL/v1/checkout/sessions" -d mode=subscription -d 'line_items[0][price]=price_pro' \
    -d 'line_items[0][quantity]=1' -d client_reference_id=user_active -d customer_email=active@example.com \
    -d success_url=https://app.example/ok | jq -r .id) || exit 1
fake POST "/_fake/checkout/sessions/$session/complete" '{}' >/dev/null || exit 1
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" \
    "stripe_billing.api_base = '$FAKE_URL'" "stripe_billing.meter_events_base = '$FAKE_URL'" \
    "stripe_billing.api_key = '$KEY'" "stripe_billing.webhook_secret = '$WHSEC,$WHSEC_THIN'" \
    "stripe_billing.poll_interval = '1s'" "stripe_billing.database = '$DB'" \
    "stripe_billing.backfill_on_start = off" "stripe_billing.max_requests_per_second = 200" || exit 1
for db in "$DB" twin; do
    psql -X -q -d postgres -c "CREATE DATABASE $db" && sql "CREATE EXTENSION stripe_billing" "$db" &&
        sql "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'pro')" "$db" >/dev/null || exit 1
done
wait_until 30 eval '[ -n "$(sql "SELECT cursor FROM stripe_billing.sync_status WHERE account IS NULL")" ]' ||
    { echo "FAIL  setup: the worker took no cursor"; exit 1; }

# ---- twin: thin notifications only, against the snapshot events in order
begin
pr=()
fake GET /_fake/thin_events >"$work/thin.json"
n=$(jq length "$work/thin.json")
notes '"timestamp": '"$(date +%s)" >"$work/notes.json"
deliver "$DB" --duplicates 0.33 --seed 26 <"$work/notes.json" >"$work/deliver.json"
d=$(cat "$work/deliver.json")
[ "$(jq .raised <<<"$d")" = 0 ] || pr+=(" $(jq .raised <<<"$d") deliveries raised: $(jq -c .errors <<<"$d")")
odd=$(jq -r '.outcomes | keys - ["pending", "duplicate"] | join(",")' <<<"$d")
[ -z "$odd" ] || pr+=(" outcomes other than pending and duplicate: $odd")
[ "$(jq '.outcomes.pending' <<<"$d")" = "$n" ] || pr+=(" $(jq -c .outcomes <<<"$d") for $n thin events")
# (the snapshot twin: the same changes' snapshot events, oldest first)
curl -sS -H "Authorization: Bearer $KEY" "$FAKE_URL/v1/events?limit=100" | jq '{events: (.data | reverse)}' |
    deliver twin --apply-events >"$work/twin.json"
POLL=0.2 wait_until 60 eval '[ "$(pending)" = 0 ]' || pr+=(" $(pending) thin events still pending")
polled=$(sql "SELECT count(*) FROM stripe_billing.events WHERE source = 'poll'")
[ "$polled" = 0 ] || pr+=(" the worker polled $polled snapshot events: the twin is not thin-only")
outcomes=$(sql "SELECT string_agg(outcome || '=' || n, ' ' ORDER BY outcome) FROM (SELECT outcome, count(*) n FROM stripe_billing.events GROUP BY 1) o")
[ "$outcomes" = "applied=$n" ] || pr+=(" ledger outcomes $outcomes, expected applied=$n")
fetches=$(fake GET "/_fake/requests/count?path=/v2/core/events/&method=GET" | jq .count)
[ "$fetches" = "$n" ] || pr+=(" $fetches fetches of /v2/core/events/{id} for $n events")
rows() {
    sql "SELECT coalesce(jsonb_agg(r ORDER BY r::text), '[]') FROM (SELECT to_jsonb(t)
                - '{raw,last_event_id,last_event_created,updated_at,refetch}'::text[] AS r FROM stripe_billing.$2 t) x" "$1"
}
for table in customers subscriptions subscription_items invoices checkout_sessions payments user_features; do
    a=$(rows twin "$table") b=$(rows "$DB" "$table")
    [ "$a" = "$b" ] || pr+=(" $table differ from the twin's ($(jq length <<<"$a") rows there, $(jq length <<<"$b") here): $(diff <(jq -S . <<<"$a") <(jq -S . <<<"$b") | head -6 | tr '\n' ' ' | cut -c1-400)")
done
features=$(sql "SELECT string_agg(user_ref || ':' || feature, ',') FROM stripe_billing.user_features")
[ "$features" = "user_active:pro" ] || pr+=(" features '$features', expected user_active:pro")
took=$(jq '[.ms[]] | sort | .[length / 2 | floor]' <<<"$d")
conclude "twin" "$n thin events delivered $(jq .delivered <<<"$d") times (median call $took ms), all applied; the typed columns of customers, subscriptions, items, invoices, Checkout sessions and payments, and the features, equal the snapshot twin's ($(jq -c .outcomes "$work/twin.json"))" "${pr[@]}"

# ---- retries: a fetch failing twice
begin
pr=()
customer=$(sql "SELECT id FROM stripe_billing.customers WHERE user_ref = 'user_active'")
thin=$(silent_change "$customer" retried) && [ -n "$thin" ] || exit 1
fake DELETE /_fake/requests >/dev/null
fake POST /_fake/faults "{\"rules\": [{\"kind\": \"500\", \"path\": \"/v2/core/events/$thin\", \"count\": 2}]}" >/dev/null
notes "\"ids\": [\"$thin\"]" | deliver >/dev/null
wait_until 30 eval '[ "$(sql "SELECT outcome FROM stripe_billing.events WHERE id = '"'$thin'"'")" = applied ]' ||
    pr+=(" the event is $(sql "SELECT outcome || ' ' || coalesce(error, '') FROM stripe_billing.events WHERE id = '$thin'")")
attempts=$(sql "SELECT attempts FROM stripe_billing.thin_fetches WHERE event_id = '$thin'")
[ "$attempts" = 3 ] || pr+=(" attempts $attempts, expected 3")
event_gets=$(fake GET "/_fake/requests?path=/v2/core/events/$thin" | jq -c '[.[].status]')
[ "$event_gets" = '["500","500",200]' ] || pr+=(" the event's fetches answered $event_gets")
object_gets=$(fake GET "/_fake/requests/count?path=/v1/customers/$customer&method=GET" | jq .count)
[ "$object_gets" = 1 ] || pr+=(" $object_gets fetches of the customer, expected 1")
note=$(sql "SELECT metadata->>'plan_note' FROM stripe_billing.customers WHERE id = '$customer'")
[ "$note" = retried ] || pr+=(" the customer's metadata.plan_note is '$note'")
fake DELETE /_fake/faults >/dev/null
conclude "retries" "two 500s then 200: fetched 3 times ($event_gets), the customer once, applied" "${pr[@]}"

# ---- gone: Stripe no longer has the event
begin
pr=()
thin=$(silent_change "$customer" gone) && [ -n "$thin" ] || exit 1
notes "\"ids\": [\"$thin\"]" >"$work/gone.json"
fake POST /_fake/thin_events/expire "{\"ids\": [\"$thin\"]}" >/dev/null
deliver <"$work/gone.json" >/dev/null
wait_until 30 eval '[ "$(sql "SELECT outcome FROM stripe_billing.events WHERE id = '"'$thin'"'")" = failed ]' ||
    pr+=(" the event is $(sql "SELECT outcome FROM stripe_billing.events WHERE id = '$thin'")")
error=$(sql "SELECT error FROM stripe_billing.events WHERE id = '$thin'")
[[ "$error" == "Stripe no longer has this event (GET /v2/core/events/$thin: HTTP 404"*"30 days" ]] ||
    pr+=(" its error: $error")
note=$(sql "SELECT metadata->>'plan_note' FROM stripe_billing.customers WHERE id = '$customer'")
[ "$note" = retried ] || pr+=(" the customer changed: '$note'")
conclude "gone" "failed: $error" "${pr[@]}"

# ---- meter: error reports reach the usage rows they concern
begin
pr=()
fake POST /_fake/objects '{"object": {"id": "mtr_test_api", "object": "billing.meter", "event_name": "api_calls"}}' >/dev/null
other=$(sql "SELECT user_ref FROM stripe_billing.customers WHERE user_ref LIKE 'user\_%' AND user_ref <> 'user_active' ORDER BY 1 LIMIT 1")
sql "SELECT stripe_billing.stripe_report_usage(u, m, 1)
       FROM (VALUES ('user_active', 'api_calls'), ('user_active', 'api_calls'), ('$other', 'api_calls'),
                    ('$other', 'api_calls'), ('user_active', 'exports')) v(u, m)" >/dev/null
wait_until 30 eval '[ "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NOT NULL")" = 5 ]' ||
    pr+=(" the worker sent $(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NOT NULL") usage rows of 5")
ident() { echo "sb_$(sql "SELECT stripe_billing.stripe_installation_id()")_$1"; }
now=$(date +%s)
report=$(fake POST /_fake/meter_error_reports "{\"meter\": \"mtr_test_api\", \"validation_start\": $((now - 60)),
    \"validation_end\": $((now + 5)), \"errors\": [
      {\"code\": \"meter_event_invalid_value\", \"identifiers\": [\"$(ident 1)\"], \"message\": \"Value must be a number\"},
      {\"code\": \"meter_event_customer_not_found\", \"identifiers\": [\"$(ident 3)\"], \"count\": 2}]}" | jq -r .id)
lost=$(fake POST /_fake/meter_error_reports "{\"errors\": [{\"code\": \"no_meter\", \"identifiers\": [\"$(ident 5)\"]}]}" | jq -r .id)
notes "\"ids\": [\"$report\", \"$lost\"]" | deliver >/dev/null
wait_until 30 eval '[ "$(sql "SELECT count(*) FROM stripe_billing.events WHERE id IN ('"'$report', '$lost'"') AND outcome = '"'applied'"'")" = 2 ]' ||
    pr+=(" the reports: $(sql "SELECT string_agg(outcome || ' ' || coalesce(error, ''), '; ') FROM stripe_billing.events WHERE id IN ('$report', '$lost')")")
marks=$(sql "SELECT string_agg(id || ':' || coalesce(stripe_error_code || '/' || stripe_error_match, '-'), ' ' ORDER BY id) FROM stripe_billing.usage_outbox")
expected="1:meter_event_invalid_value/identifier 2:- 3:meter_event_customer_not_found/identifier 4:meter_event_customer_not_found/customer 5:no_meter/identifier"
[ "$marks" = "$expected" ] || pr+=(" the rows are marked '$marks', expected '$expected'")
message=$(sql "SELECT stripe_error FROM stripe_billing.usage_outbox WHERE id = 1")
[ "$message" = "Value must be a number" ] || pr+=(" row 1's message: $message")
counted=$(sql "SELECT stripe_errors FROM stripe_billing.usage_status")
[ "$counted" = 4 ] || pr+=(" usage_status counts $counted")
meter_gets=$(fake GET "/_fake/requests/count?path=/v1/billing/meters/mtr_test_api" | jq .count)
[ "$meter_gets" = 1 ] || pr+=(" the meter was fetched $meter_gets times")
conclude "meter" "$marks; usage_status.stripe_errors = $counted" "${pr[@]}"

# ---- accounts: Accounts v2, and a destination's ping
begin
pr=()
account=$(fake POST /_fake/accounts '{"accounts": [{"name": "Creator Studio", "country": "FR", "default_currency": "eur", "type": "express", "payouts_enabled": false, "currently_due": ["external_account"]}]}' | jq -r '.ids[0]')
added=$(fake POST /_fake/thin_events "{\"events\": [{\"type\": \"v2.core.account.updated\", \"related_object\":
    {\"id\": \"$account\", \"type\": \"v2.core.account\", \"url\": \"/v2/core/accounts/$account\"}},
    {\"type\": \"v2.core.event_destination.ping\", \"related_object\": {\"id\": \"ed_test_1\",
     \"type\": \"v2.core.event_destination\", \"url\": \"/v2/core/event_destinations/ed_test_1\"}}]}")
ids=$(jq -c '[.events[].id]' <<<"$added")
d=$(notes "\"ids\": $ids" | deliver)
[ "$(jq -cS .outcomes <<<"$d")" = '{"applied":1,"pending":1}' ] || pr+=(" the calls answered $(jq -c .outcomes <<<"$d")")
wait_until 30 eval '[ -n "$(sql "SELECT 1 FROM stripe_billing.accounts WHERE id = '"'$account'"' AND business_name IS NOT NULL")" ]' ||
    pr+=(" no account row: $(sql "SELECT string_agg(outcome || ' ' || coalesce(error, ''), '; ') FROM stripe_billing.events WHERE id IN (SELECT jsonb_array_elements_text('$ids'))")")
row=$(sql "SELECT concat_ws(' ', business_name, country, default_currency, charges_enabled, payouts_enabled, requirements_due, type) FROM stripe_billing.accounts WHERE id = '$account'")
[ "$row" = "Creator Studio FR eur t f {external_account} express" ] || pr+=(" the account row: $row")
include=$(fake GET "/_fake/requests?path=/v2/core/accounts/$account" | jq -c '.[0].query.include')
[ "$include" = '["configuration.merchant","defaults","identity","requirements"]' ] || pr+=(" asked with include $include")
conclude "accounts" "$account: $row; the ping applied at once" "${pr[@]}"

# ---- connect: a connected account's thin events, their context
begin
pr=()
fake POST /_fake/events "{\"generate\": {\"mode\": \"lifecycle\", \"users\": 1, \"seed\": 7}, \"account\": \"$account\"}" >/dev/null
fake DELETE /_fake/requests >/dev/null
d=$(notes "\"account\": \"$account\"" | deliver)
m=$(jq .delivered <<<"$d")
POLL=0.2 wait_until 60 eval '[ "$(pending)" = 0 ]' || pr+=(" $(pending) thin events still pending")
carried=$(sql "SELECT count(*) FROM stripe_billing.events WHERE account = '$account' AND payload->>'object' = 'v2.core.event' AND outcome = 'applied'")
[ "$carried" = "$m" ] || pr+=(" $carried of $m thin events applied as the account's")
wrong=$(sql "SELECT count(*) FROM stripe_billing.subscriptions WHERE account IS DISTINCT FROM '$account' AND customer IN
                (SELECT id FROM stripe_billing.customers WHERE account = '$account')")
rows_here=$(sql "SELECT count(*) FROM stripe_billing.subscriptions WHERE account = '$account'")
[ "$rows_here" = 1 ] && [ "$wrong" = 0 ] || pr+=(" the account's subscriptions: $rows_here here, $wrong elsewhere")
contexts=$(fake GET "/_fake/requests?path=/v2/core/events/&method=GET" | jq -r '[.[] | .headers["stripe-context"] // "none"] | unique | join(",")')
[ "$contexts" = "$account" ] || pr+=(" the fetches' Stripe-Context: $contexts")
conclude "connect" "$m thin events of $account fetched with Stripe-Context: $account; their rows carry the account" "${pr[@]}"

# ---- polling: GET /v2/core/events with stripe_billing.thin_events on
begin
pr=()
psql -X -q -d postgres -c "ALTER SYSTEM SET stripe_billing.thin_events = on" -c "SELECT pg_reload_conf()" >/dev/null
wait_until 30 eval '[ -n "$(sql "SELECT cursor_created FROM stripe_billing.thin_poll_state WHERE account IS NULL")" ]' ||
    pr+=(" the worker took no thin cursor")
sleep 1.2    # (then a change: its thin event comes after where listing started)
api "$FAKE_URL/v1/customers/$customer" -d 'metadata[plan_note]=polled' >/dev/null || exit 1
polled_one=$(fake GET /_fake/thin_events | jq -r '.[-1].id')
listed() { sql "SELECT count(*) FROM stripe_billing.events WHERE id = '$polled_one'"; }
wait_until 30 eval '[ "$(listed)" = 1 ]' || pr+=(" the worker did not list $polled_one")
# one listed late: created between where listing started and the cursor,
# appended after the cursor moved past it (Stripe's list is eventually consistent)
wait_until 30 eval '[ "$(sql "SELECT cursor_created >= (SELECT created FROM stripe_billing.events WHERE id = '"'$polled_one'"') FROM stripe_billing.thin_poll_state WHERE account IS NULL")" = t ]' ||
    pr+=(" the thin cursor did not move past $polled_one")
late_at=$(sql "SELECT to_char((lookback_after + (cursor_created - lookback_after) / 2) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                 FROM stripe_billing.thin_poll_state WHERE account IS NULL")
late=$(fake POST /_fake/thin_events "{\"events\": [{\"type\": \"v1.customer.updated\", \"created\": \"$late_at\",
    \"related_object\": {\"id\": \"$customer\", \"type\": \"customer\", \"url\": \"/v1/customers/$customer\"}}]}" | jq -r '.events[0].id')
applied() { sql "SELECT count(*) FROM stripe_billing.events WHERE id IN ('$polled_one', '$late') AND outcome = 'applied' AND source = 'poll'"; }
wait_until 30 eval '[ "$(applied)" = 2 ]' ||
    pr+=(" $(applied) of the 2 thin events applied from the list: $(sql "SELECT string_agg(id || ' ' || outcome || ' ' || source, '; ') FROM stripe_billing.events WHERE id IN ('$polled_one', '$late')")")
lists=$(fake GET "/_fake/requests?path=/v2/core/events&method=GET" | jq '[.[] | select(.path == "/v2/core/events")] | length')
[ "$lists" -ge 2 ] || pr+=(" $lists listings of /v2/core/events")
gte=$(fake GET "/_fake/requests?path=/v2/core/events&method=GET" | jq -r '[.[] | select(.path == "/v2/core/events") | .query.created.gte // empty][-1]')
[[ "$gte" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$ ]] || pr+=(" created[gte] is '$gte', not RFC 3339")
note=$(sql "SELECT metadata->>'plan_note' FROM stripe_billing.customers WHERE id = '$customer'")
[ "$note" = polled ] || pr+=(" the customer's note is '$note'")
psql -X -q -d postgres -c "ALTER SYSTEM RESET stripe_billing.thin_events" -c "SELECT pg_reload_conf()" >/dev/null
conclude "polling" "$lists listings (created[gte] $gte); the thin event listed in time and the one listed late behind the cursor both applied" "${pr[@]}"

# ---- sync_now: on demand, where the worker does not run
begin
pr=()
thin=$(fake GET /_fake/thin_events | jq -r '.[-1].id')
notes "\"ids\": [\"$thin\"]" | deliver twin >/dev/null
[ "$(pending twin)" = 1 ] || pr+=(" $(pending twin) pending in the twin before the call")
sql "CALL stripe_billing.stripe_sync_now()" twin >/dev/null || pr+=(" stripe_sync_now failed")
outcome=$(sql "SELECT outcome FROM stripe_billing.events WHERE id = '$thin'" twin)
[ "$outcome" = applied ] || pr+=(" the thin event is $outcome")
conclude "sync_now" "CALL stripe_sync_now(): $outcome" "${pr[@]}"

# ---- errors
begin
errors=$(grep -E 'ERROR|PANIC|TRAP' "$work/pg/server.log" | grep -v 'canceling statement' | head -5)
conclude "errors" "none in the server log" ${errors:+" $errors"}

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
