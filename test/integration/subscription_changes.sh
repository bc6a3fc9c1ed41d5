#!/usr/bin/env bash
# Subscription changes from SQL against the loopback fake Stripe (issue 27,
# part A): a scheduled downgrade end to end (requested, pending in
# stripe_user_subscriptions, replaced by a second call, applied at the
# period end by the fake's renewal, the features changing only then), a
# pending change taken back, paused and resumed collection with both
# settings of stripe_billing.paused_collection_access, add-ons and seats
# (items added, given a quantity, previewed and removed: the requests sent
# and the rows they change), bad input refused before any request (22023
# naming the argument), and subscription schedules backfilled and
# reconciled in a database of their own.
#
# Starts its own fake and its own throwaway cluster:
#     bash test/integration/subscription_changes.sh
# One PASS/FAIL line per check; exits 0 only when every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh

rand() { head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
RUN=$(rand)
KEY="sk_test_changes${RUN}"
started=$(date +%s)

. test/lib/fake_stripe.sh
work_begin changes
work_logs pg/server.log client.log fake.log

fake_start "$work" "$KEY" || { echo "FAIL: the fake Stripe did not start"; exit 1; }
P=${FAKE_URL##*:}
fk() { node test/integration/api/fake.js "$P" "$@"; }               # METHOD PATH [BODY] [EXPR]
reqcount() { fk GET /_fake/stats '' 'r.requests'; }
# recs MARK [PATH_PREFIX]: the recorded requests after MARK, into $work/recs.json
recs() { fk GET "/_fake/requests?path=${2:-}" '' "since(r, $1)" >"$work/recs.json"; }
jx() { node test/integration/api/fake.js "@$work/recs.json" "$1"; }   # EXPR on the saved records

cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" \
    "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$KEY'" \
    "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.request_timeout = 10000" \
    "log_statement = 'all'" || { echo "FAIL: the cluster did not start"; exit 1; }
at_exit fake_stop
createdb changes || { echo "FAIL: createdb"; exit 1; }
export PGDATABASE=changes

client_log=$work/client.log
: >"$client_log"
# sql SCRIPT: runs SCRIPT in a new session (stops at the first error).
# Sets OUT, STATE (the first error's SQLSTATE, or empty), MSG (its message).
sql() {
    OUT=$(timeout 60 psql -X -At -q -v ON_ERROR_STOP=1 -v VERBOSITY=verbose 2>&1 <<<"$1")
    STATE=$(sed -nE 's/^.*(ERROR|FATAL):  ([0-9A-Z]{5}): .*$/\2/p' <<<"$OUT" | head -1)
    MSG=$(sed -nE 's/^.*(ERROR|FATAL):  [0-9A-Z]{5}: (.*)$/\2/p' <<<"$OUT" | head -1)
    printf -- '--- %s\n%s\n' "$1" "$OUT" >>"$client_log"
}
rows() { grep -vE '^(psql:|ERROR:|DETAIL:|HINT:|LOCATION:|CONTEXT:|STATEMENT:|WARNING:|NOTICE:)' <<<"$OUT"; }

. test/lib/verdicts.sh
noerr() { [ -z "$STATE" ] || bad "$1: error $STATE: $MSG"; }

# The features: price_pro grants advanced, price_basic basic, the seat
# price seats (features come from every item of a subscription).
fk POST /_fake/objects '{"objects": [{"id": "prod_seat", "object": "product", "name": "Seat"},
  {"id": "price_seat", "object": "price", "product": "prod_seat", "unit_amount": 300, "currency": "usd",
   "type": "recurring", "recurring": {"interval": "month", "interval_count": 1}, "lookup_key": "seat"}]}' >/dev/null
sql "CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('price', 'price_pro', 'advanced');
SELECT stripe_billing.stripe_grant_feature('price', 'price_basic', 'basic');
SELECT stripe_billing.stripe_grant_feature('price', 'price_seat', 'seats');
-- the fake's events since the last call, applied oldest first (duplicates
-- are harmless: the ledger reports them)
CREATE FUNCTION public.apply_events() RETURNS integer LANGUAGE plpgsql AS \$f\$
DECLARE e jsonb; n integer := 0;
BEGIN
  FOR e IN SELECT x FROM jsonb_array_elements(
             stripe_billing.stripe_api('GET', '/v1/events', '{\"limit\": 100}')->'data') WITH ORDINALITY AS t(x, i)
           ORDER BY i DESC LOOP
    n := n + (stripe_billing.stripe_apply_event(e) = 'applied')::integer;
  END LOOP;
  RETURN n;
END \$f\$;
CREATE FUNCTION public.features(u text) RETURNS text LANGUAGE sql AS
  \$f\$ SELECT coalesce(string_agg(feature, ',' ORDER BY feature), '') FROM stripe_billing.stripe_user_features(u) \$f\$;"
noerr "CREATE EXTENSION"
[ -z "$STATE" ] || { echo "FAIL: setup: $OUT"; exit 1; }

# subscribe USER PRICE: a completed Checkout, its events applied; sets SUB
# and ITEM (the subscription's item)
subscribe() {
    sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('$1', '$2', 'https://app.example/ok',
                                                                     'https://app.example/cancel');"
    SUB=$(fk POST "/_fake/checkout/sessions/$(rows)/complete" '{}' 'r.session.subscription')
    sql "SELECT public.apply_events();
SELECT i.id FROM stripe_billing.subscription_items i WHERE i.subscription = '$SUB' AND NOT i.deleted;"
    ITEM=$(rows | sed -n 2p)
}
advance() { fk POST "/_fake/subscriptions/$1/advance" '{"status": "active", "new_period": true}' >/dev/null; }

###########################################################################
# 1. A downgrade at the period end, end to end
###########################################################################
subscribe u_down price_pro
sql "SELECT public.features('u_down'),
            extract(epoch FROM current_period_start)::bigint, extract(epoch FROM current_period_end)::bigint
       FROM stripe_billing.subscriptions WHERE id = '$SUB';"
IFS='|' read -r feats pstart pend <<<"$(rows)"
eq "$feats" advanced "features on price_pro"
down_sub=$SUB

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_change_price('$SUB', 'price_basic', at => 'period_end',
                                              idempotency_key => 'down-$RUN')->>'object';
SELECT status || '|' || subscription || '|' || extract(epoch FROM current_phase_start)::bigint || '|'
       || extract(epoch FROM current_phase_end)::bigint
  FROM stripe_billing.subscription_schedules WHERE subscription = '$SUB';
SELECT string_agg(extract(epoch FROM start_date)::bigint || ':' || price || 'x' || quantity, ' ' ORDER BY start_date)
  FROM stripe_billing.subscription_schedule_phases p
  JOIN stripe_billing.subscription_schedules s ON s.id = p.schedule WHERE s.subscription = '$SUB';
SELECT price || '|' || pending_price || '|' || pending_quantity || '|' || extract(epoch FROM pending_at)::bigint
  FROM stripe_billing.stripe_user_subscriptions('u_down');
SELECT public.features('u_down');"
noerr "stripe_change_price(at => 'period_end')"
eq "$(rows | sed -n 1p)" subscription_schedule "the call returns the schedule"
eq "$(rows | sed -n 2p)" "active|$SUB|$pstart|$pend" "the local schedule (status|subscription|current phase)"
eq "$(rows | sed -n 3p)" "$pstart:price_prox1 $pend:price_basicx1" "the local phases (start:price x quantity)"
eq "$(rows | sed -n 4p)" "price_pro|price_basic|1|$pend" "stripe_user_subscriptions (price|pending price|quantity|at)"
eq "$(rows | sed -n 5p)" advanced "features while the change is pending"
recs "$mark" /v1/
eq "$(SUB=$SUB jx 'r.map(x => x.method + " " + x.path.replace(env.SUB, "SUB").replace(/sub_sched_\w+/, "SCHED") + " " + x.status).join(",")')" \
   "GET /v1/subscriptions/SUB 200,POST /v1/subscription_schedules 200,POST /v1/subscription_schedules/SCHED 200" "requests sent"
eq "$(jx 'r.length ? JSON.stringify(r[0].query) + " " + r[0].raw_body : ""')" '{"expand":["schedule"]} ' "the subscription read with its schedule (query, body)"
eq "$(jx 'r.length > 1 ? pairs(r[1]).join(",") : ""')" "from_subscription=$SUB" "the schedule made from the subscription"
eq "$(jx 'r.length > 1 ? r[1].idempotency_key : ""')" "sb_schedule_$(printf '%s' "down-$RUN" | md5sum | cut -d' ' -f1)" \
   "the creation's idempotency key (derived from the caller's)"
same_lines "the schedule's new phases" "end_behavior=release
phases[0][end_date]=$pend
phases[0][items][0][price]=price_pro
phases[0][items][0][quantity]=1
phases[0][start_date]=$pstart
phases[1][items][0][price]=price_basic
phases[1][items][0][quantity]=1
phases[1][proration_behavior]=none
proration_behavior=none" "$(jx 'r.length > 2 ? pairs(r[2]) : ""')"
eq "$(jx 'r.length > 2 ? r[2].idempotency_key : ""')" "down-$RUN" "the update's idempotency key (the caller's)"
verdict "stripe_change_price(at => 'period_end') reads the subscription with its schedule, makes one from it, and sets the phases: the current one as it is, price_basic from the period end without prorations; the schedule is pending locally at once, the features unchanged"

mark=$(reqcount)
sql "SELECT public.apply_events();
SELECT stripe_billing.stripe_change_price('$SUB', 'price_basic', quantity => 2, at => 'period_end')->>'id';
SELECT count(*) FROM stripe_billing.subscription_schedules WHERE subscription = '$SUB';
SELECT pending_price || 'x' || pending_quantity FROM stripe_billing.stripe_user_subscriptions('u_down');
SELECT public.features('u_down');"
noerr "a second stripe_change_price(at => 'period_end')"
eq "$(rows | sed -n 3,5p | paste -sd ' ')" "1 price_basicx2 advanced" "schedules of the subscription, pending change, features"
recs "$mark" /v1/
eq "$(jx 'r.filter(x => x.path !== "/v1/events").map(x => x.method + " " + x.path.replace(/sub_\w+/, "X")).join(",")')" \
   "GET /v1/subscriptions/X,POST /v1/subscription_schedules/X" "requests (no second schedule)"
eq "$(jx 'r.filter(x => x.method === "POST").map(x => pairs(x).filter(l => l.startsWith("phases[1]")).join(" ")).join("")')" \
   "phases[1][items][0][price]=price_basic phases[1][items][0][quantity]=2 phases[1][proration_behavior]=none" "the replaced phase"
verdict "a second call replaces the pending change on the same schedule (price_basic x 2), after the events of the first were applied"

# the period ends at the fake: its renewal enters the phase
sql "SELECT public.features('u_down');"
before=$(rows)
advance "$SUB"
sql "SELECT public.features('u_down');"
eq "$before|$(rows)" "advanced|advanced" "features before the renewal's events are applied"
sql "SELECT public.apply_events();
SELECT string_agg(price || 'x' || quantity, ',') FROM stripe_billing.subscription_items
 WHERE subscription = '$SUB' AND NOT deleted;
SELECT status || '|' || extract(epoch FROM current_period_start)::bigint FROM stripe_billing.subscriptions WHERE id = '$SUB';
SELECT coalesce(pending_price, 'none') || '|' || price FROM stripe_billing.stripe_user_subscriptions('u_down');
SELECT public.features('u_down');"
noerr "the renewal's events"
eq "$(rows | sed -n 2,5p | paste -sd ' ')" "price_basicx2 active|$pend none|price_basic basic" \
   "after the renewal's events: items, status|period start, pending|price, features"
verdict "at the period end the fake's renewal enters the phase: the subscription's events move it to price_basic x 2 and the features change only then (advanced -> basic); nothing is pending any more"

###########################################################################
# 2. Taking a pending change back
###########################################################################
subscribe u_keep price_pro
keep_sub=$SUB
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_cancel_pending_change('$SUB') IS NULL;"
noerr "stripe_cancel_pending_change without a schedule"
eq "$(rows)" t "the answer without a pending change"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path.replace(/sub_\w+/, "SUB")).join(",")')" "GET /v1/subscriptions/SUB" "requests sent"
sql "SELECT stripe_billing.stripe_change_price('$SUB', 'price_basic', at => 'period_end') IS NOT NULL;"
noerr "the change to take back"
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_cancel_pending_change('$SUB', idempotency_key => 'undo-$RUN')->>'status';
SELECT status || '|' || coalesce(subscription, 'none') || '|' || released_subscription
  FROM stripe_billing.subscription_schedules WHERE released_subscription = '$SUB';
SELECT coalesce(pending_price, 'none') FROM stripe_billing.stripe_user_subscriptions('u_keep');"
noerr "stripe_cancel_pending_change"
eq "$(rows | paste -sd ' ')" "released released|none|$SUB none" "answer, local schedule, pending change"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path.replace(/sub_sched_\w+/, "SCHED").replace(/sub_\w+/, "SUB") + " " + (x.idempotency_key || "")).join(",")')" \
   "GET /v1/subscriptions/SUB ,POST /v1/subscription_schedules/SCHED/release undo-$RUN" "requests sent"
advance "$SUB"
sql "SELECT public.apply_events();
SELECT string_agg(price, ',') FROM stripe_billing.subscription_items WHERE subscription = '$SUB' AND NOT deleted;
SELECT public.features('u_keep');"
eq "$(rows | sed -n 2,3p | paste -sd ' ')" "price_pro advanced" "items and features after the renewal"
verdict "stripe_cancel_pending_change releases the subscription's schedule (none: NULL, one GET only); the renewal then keeps price_pro"

###########################################################################
# 3. Paused collection, and both access settings
###########################################################################
subscribe u_pause price_pro
pause_sub=$SUB
until=$(($(date +%s) + 20 * 86400))
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_pause_subscription('$SUB', 'mark_uncollectible', resumes_at => to_timestamp($until))->'pause_collection'->>'behavior';
SELECT status || '|' || pause_behavior || '|' || extract(epoch FROM pause_resumes_at)::bigint
  FROM stripe_billing.subscriptions WHERE id = '$SUB';
SELECT collection_paused || '|' || extract(epoch FROM collection_resumes_at)::bigint
  FROM stripe_billing.stripe_user_subscriptions('u_pause');
SELECT public.features('u_pause');"
noerr "stripe_pause_subscription"
eq "$(rows | paste -sd ' ')" "mark_uncollectible active|mark_uncollectible|$until mark_uncollectible|$until advanced" \
   "answer, local row, stripe_user_subscriptions, features (keep)"
recs "$mark" /v1/
same_lines "the pause's form" "pause_collection[behavior]=mark_uncollectible
pause_collection[resumes_at]=$until" "$(jx 'r.length ? pairs(r[0]) : ""')"
eq "$(jx 'r.length && !!r[0].idempotency_key')" true "Idempotency-Key sent"
verdict "stripe_pause_subscription posts pause_collection[behavior|resumes_at]; the local row shows it at once; the subscription stays active and keeps its features"

sql "SET stripe_billing.paused_collection_access = 'revoke';
SELECT stripe_billing.stripe_refresh_entitlements() > 0;
SELECT public.features('u_pause'), public.features('u_keep');
SET stripe_billing.paused_collection_access = 'keep';
SELECT stripe_billing.stripe_refresh_entitlements() > 0;
SELECT public.features('u_pause');"
noerr "paused_collection_access"
eq "$(rows | paste -sd ' ')" "t |advanced t advanced" "revoke: the paused user loses access, the other keeps it; keep: back"
verdict "paused_collection_access = 'revoke' takes a paused subscription's features (not another's), 'keep' gives them back"

mark=$(reqcount)
sql "SET stripe_billing.paused_collection_access = 'revoke';
SELECT stripe_billing.stripe_unpause_subscription('$SUB')->'pause_collection' = 'null';
SELECT coalesce(pause_behavior, 'none') || '|' || coalesce(pause_resumes_at::text, 'none')
  FROM stripe_billing.subscriptions WHERE id = '$SUB';
SELECT public.features('u_pause');"
noerr "stripe_unpause_subscription"
eq "$(rows | paste -sd ' ')" "t none|none advanced" "answer, local row, features (revoke: collection resumed)"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path.replace(/sub_\w+/, "SUB") + " " + JSON.stringify(x.raw_body)).join(",")')" \
   'POST /v1/subscriptions/SUB "pause_collection="' "the request (pause_collection unset)"
verdict "stripe_unpause_subscription posts pause_collection= (empty); the local row is collecting again, and with 'revoke' the features come back in the same transaction"

###########################################################################
# 4. Add-ons and seats
###########################################################################
subscribe u_seats price_basic
seats_sub=$SUB
base_item=$ITEM
mark=$(reqcount)
sql "SELECT jsonb_array_length(stripe_billing.stripe_add_item('$SUB', 'price_seat', 3)->'items'->'data');
SELECT string_agg(price || 'x' || quantity, ',' ORDER BY price) FROM stripe_billing.subscription_items
 WHERE subscription = '$SUB' AND NOT deleted;
SELECT public.features('u_seats');
SELECT id FROM stripe_billing.subscription_items WHERE subscription = '$SUB' AND price = 'price_seat';"
noerr "stripe_add_item"
eq "$(rows | sed -n 1,3p | paste -sd ' ')" "2 price_basicx1,price_seatx3 basic,seats" "answer's items, local items, features"
seat_item=$(rows | sed -n 4p)
recs "$mark" /v1/
same_lines "the add's form" "items[0][price]=price_seat
items[0][quantity]=3
proration_behavior=create_prorations" "$(jx 'r.length ? pairs(r[0]) : ""')"
eq "$(jx 'r.map(x => x.method + " " + x.path.replace(/sub_\w+/, "SUB")).join(",")')" "POST /v1/subscriptions/SUB" "requests sent"
verdict "stripe_add_item posts items[0][price|quantity] with proration_behavior; the new item and its feature are there at once (features from every item)"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_set_quantity('$seat_item', 5, 'none') IS NOT NULL;
SELECT quantity FROM stripe_billing.subscription_items WHERE id = '$seat_item';"
noerr "stripe_set_quantity"
eq "$(rows | paste -sd ' ')" "t 5" "answer, local quantity"
recs "$mark" /v1/
same_lines "the quantity's form" "items[0][id]=$seat_item
items[0][quantity]=5
proration_behavior=none" "$(jx 'r.length ? pairs(r[0]) : ""')"
verdict "stripe_set_quantity posts items[0][id|quantity] to the item's subscription; the local quantity is 5 at once"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_preview_items('$SUB', '[{\"id\": \"$seat_item\", \"quantity\": 7}]',
                                               proration_behavior => 'always_invoice');
SELECT quantity FROM stripe_billing.subscription_items WHERE id = '$seat_item';"
noerr "stripe_preview_items"
preview=$(rows | sed -n 1p)
eq "$(rows | sed -n 2p)" 5 "the local quantity after the preview"
pdate=$(jq -r '.proration_date' <<<"$preview")
pepoch=$(date -d "$pdate" +%s)
recs "$mark" /v1/
same_lines "the preview's form" "customer=$(fk GET "/_fake/objects/$SUB" '' 'r.customer')
subscription=$SUB
subscription_details[items][0][id]=$seat_item
subscription_details[items][0][quantity]=7
subscription_details[proration_behavior]=always_invoice
subscription_details[proration_date]=$pepoch" "$(jx 'r.length ? pairs(r[0]) : ""')"
[ "$(jq '[.lines[] | select(.proration)] | length' <<<"$preview")" -ge 2 ] || bad "no proration lines in the preview: $preview"
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_set_quantity('$seat_item', 7, 'always_invoice', proration_date => '$pdate')->>'latest_invoice';"
noerr "stripe_set_quantity with the preview's proration_date"
invoice=$(rows)
eq "$(fk GET "/_fake/objects/$invoice" '' 'r.amount_due')" "$(jq .amount_due <<<"$preview")" "the change's invoice vs the preview's amount"
verdict "stripe_preview_items previews an item change (create_preview with subscription_details[items]), changes nothing, and stripe_set_quantity with its proration_date bills what it showed ($(jq -c .amount_due <<<"$preview"))"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_remove_item('$seat_item', proration_behavior => 'none') IS NOT NULL;
SELECT deleted FROM stripe_billing.subscription_items WHERE id = '$seat_item';
SELECT public.features('u_seats');"
noerr "stripe_remove_item"
eq "$(rows | paste -sd ' ')" "t t basic" "answer, local item deleted, features"
recs "$mark" /v1/
same_lines "the removal's form" "items[0][deleted]=true
items[0][id]=$seat_item
proration_behavior=none" "$(jx 'r.length ? pairs(r[0]) : ""')"
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_remove_item('$base_item');"
eq "$STATE" 55000 "removing the only live item"
eq "$(reqcount)" "$mark" "requests made"
verdict "stripe_remove_item posts items[0][id|deleted]; the item and its feature go at once; the only live item is refused (55000) before any request"

###########################################################################
# 5. Bad input, refused before any request
###########################################################################
mark=$(reqcount)
n=0
while IFS='|' read -r call field; do
    [ -n "$call" ] || continue
    sql "SELECT stripe_billing.$call;"
    [ "$STATE" = 22023 ] || bad "$call: expected 22023, got '${STATE:-no error}' $MSG"
    [[ "$MSG" == "$field "* ]] || bad "$call: the message should name $field: '$MSG'"
    n=$((n + 1))
done <<EOF
stripe_change_price('$down_sub', 'price_pro', at => 'tomorrow')|at
stripe_change_price('$down_sub', 'price_pro', at => NULL)|at
stripe_change_price('$down_sub', 'price_pro', at => 'period_end', proration_date => now())|proration_date
stripe_change_price('$down_sub', '', at => 'period_end')|new_price
stripe_change_price('$down_sub', 'price_pro', quantity => 0, at => 'period_end')|quantity
stripe_cancel_pending_change('sub_x/../../customers/cus_x')|subscription_id
stripe_cancel_pending_change('$down_sub', account => 'cus_1')|account
stripe_cancel_pending_change('$down_sub', account => 'acct_1Other')|account
stripe_pause_subscription('$pause_sub', 'sleep')|behavior
stripe_pause_subscription('$pause_sub', NULL)|behavior
stripe_pause_subscription('$pause_sub', 'void', resumes_at => now() - interval '1 hour')|resumes_at
stripe_pause_subscription('', 'void')|subscription_id
stripe_unpause_subscription('sub x')|subscription_id
stripe_add_item('$seats_sub', '')|price
stripe_add_item('$seats_sub', 'price_pro', 0)|quantity
stripe_add_item('$seats_sub', 'price_pro', NULL)|quantity
stripe_add_item('$seats_sub', 'price_basic')|price
stripe_add_item('$seats_sub', 'price_pro', 1, 'sometimes')|proration_behavior
stripe_remove_item('si_unknown')|subscription_item_id
stripe_remove_item('si_x/../y')|subscription_item_id
stripe_remove_item('$base_item', 'never')|proration_behavior
stripe_remove_item('$base_item', account => 'acct_1Other')|account
stripe_set_quantity('$base_item', 0)|quantity
stripe_set_quantity('$base_item', NULL)|quantity
stripe_set_quantity('', 2)|subscription_item_id
stripe_preview_items('$seats_sub', '{}')|items
stripe_preview_items('$seats_sub', '[]')|items
stripe_preview_items('$seats_sub', NULL)|items
stripe_preview_items('$seats_sub', '[1]')|items[0]
stripe_preview_items('$seats_sub', '[{"quantity": 2}]')|items[0]
stripe_preview_items('$seats_sub', '[{"price": "price_pro"}, {"id": "si_x", "bogus": 1}]')|items[1].bogus
stripe_preview_items('$seats_sub', '[{"id": "si/x", "quantity": 2}]')|items[0].id
stripe_preview_items('$seats_sub', '[{"price": 5}]')|items[0].price
stripe_preview_items('$seats_sub', '[{"price": "price_pro", "quantity": 0}]')|items[0].quantity
stripe_preview_items('$seats_sub', '[{"price": "price_pro", "quantity": 1.5}]')|items[0].quantity
stripe_preview_items('$seats_sub', '[{"id": "si_x", "deleted": "yes"}]')|items[0].deleted
stripe_preview_items('$seats_sub', '[{"id": "si_x", "deleted": true, "quantity": 1}]')|items[0]
stripe_preview_items('$seats_sub', '[{"price": "price_pro"}]', 'later')|proration_behavior
EOF
eq "$(reqcount)" "$mark" "requests reaching the fake"
verdict "$n calls with a bad argument (at, proration_date, behavior, resumes_at, price, quantity, items, ids, accounts) are refused with 22023 naming it, before any request"

###########################################################################
# 6. Backfill and reconciliation of subscription schedules
###########################################################################
# one schedule pending (u_seats' subscription), the released one and the
# one in its last phase (u_keep's, u_down's); a fresh database lists them
sql "SELECT stripe_billing.stripe_change_price('$seats_sub', 'price_pro', at => 'period_end') IS NOT NULL;"
noerr "a schedule to backfill"
createdb changes_backfill || bad "createdb"
PGDATABASE=changes_backfill sql "CREATE EXTENSION stripe_billing;
CALL stripe_billing.stripe_backfill();
SELECT state FROM stripe_billing.backfill_status WHERE kind = 'subscription_schedules';
SELECT string_agg(coalesce(subscription, released_subscription) || ':' || status, ' ' ORDER BY coalesce(subscription, released_subscription))
  FROM stripe_billing.subscription_schedules;
SELECT count(*) FROM stripe_billing.subscription_schedule_phases;
SELECT coalesce(pending_price, 'none') FROM stripe_billing.stripe_user_subscriptions('u_seats');"
noerr "the backfill"
expected=$(printf '%s\n' "$down_sub:active" "$keep_sub:released" "$seats_sub:active" | LC_ALL=C sort | paste -sd ' ')
eq "$(rows | sed -n 1p)" "done" "the backfill of subscription_schedules"
eq "$(rows | sed -n 2p | tr ' ' '\n' | LC_ALL=C sort | paste -sd ' ')" "$expected" "the schedules backfilled (subscription:status)"
[ "$(rows | sed -n 3p)" -ge 5 ] 2>/dev/null || bad "phases backfilled: $(rows | sed -n 3p)"
eq "$(rows | sed -n 4p)" price_pro "u_seats' pending change, as backfilled"
verdict "stripe_backfill lists the subscription schedules (after the subscriptions), with their phases: the pending change is there"

# (a row written in the second of a list is not older than it, and keeps
# a terminal status: the drift is made a second after the backfill)
sleep 1.1
PGDATABASE=changes_backfill sql "CALL stripe_billing.stripe_reconcile();
SELECT drifted FROM stripe_billing.reconcile_status;
DELETE FROM stripe_billing.subscription_schedule_phases
 WHERE schedule = (SELECT id FROM stripe_billing.subscription_schedules WHERE subscription = '$seats_sub');
UPDATE stripe_billing.subscription_schedules SET status = 'canceled' WHERE subscription = '$down_sub';
CALL stripe_billing.stripe_reconcile();
SELECT state || '|' || drifted || '|' || fixed FROM stripe_billing.reconcile_status;
SELECT string_agg(field || ':' || coalesce(local_value, '-') || '->' || fixed, ' ' ORDER BY field)
  FROM stripe_billing.reconcile_log WHERE object_type = 'subscription_schedule'
   AND run = (SELECT run FROM stripe_billing.reconcile_status);
SELECT coalesce(pending_price, 'none') FROM stripe_billing.stripe_user_subscriptions('u_seats');
SELECT status FROM stripe_billing.subscription_schedules WHERE subscription = '$down_sub';
CALL stripe_billing.stripe_reconcile();
SELECT drifted FROM stripe_billing.reconcile_status;"
noerr "the reconciliations"
eq "$(rows | sed -n 1p)" 0 "drift right after the backfill"
eq "$(rows | sed -n 2p)" "done|2|2" "the run after two drifts (state|drifted|fixed)"
eq "$(rows | sed -n 3p)" "phases:-->true status:canceled->true" "logged (field:local value->fixed)"
eq "$(rows | sed -n 4,6p | paste -sd ' ')" "price_pro active 0" "after the repair: pending change, status, a third run's drift"
verdict "stripe_reconcile compares subscription schedules too: a status and phases changed here are logged and repaired, a run after finds nothing"

echo "$checks checks, $failed failed, $(($(date +%s) - started)) s"
[ "$failed" -eq 0 ] && [ "$checks" -ge 14 ]
