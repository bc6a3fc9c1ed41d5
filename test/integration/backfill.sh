#!/usr/bin/env bash
# Taking over an existing Stripe account, end to end, against the fake
# Stripe seeded with an account that existed before the install (2,000
# customers, 2,000 subscriptions of which 100 have 15 items, 50 products,
# 100 prices, paid invoices, 2 Stripe Entitlements per live customer), on a
# throwaway cluster of its own:
#   1 backfill   CALL stripe_backfill() killed (kill -9 of its backend) three
#                times mid-way and called again: it resumes (no kind's first
#                page is asked for twice), and the tables equal the account
#                as the stripe SDK lists it; users have the right features
#   2 during     events made at Stripe during the backfill win where newer;
#                events older than the listing are stale
#   3 rate       under a fake limit of 5 requests/s: with
#                max_requests_per_second 50 the 429s are waited out; with 4,
#                none is sent beyond the limit
#   4 reconcile  drift injected by a superuser (7 kinds of edits) is found,
#                logged field by field and repaired; a second run finds none
#   5 worker     a fresh database: the worker takes the cursor, backfills
#                while pulling events (killed -9 three times), ends equal
#   6 expired    the worker's cursor expires at Stripe: it restarts from the
#                newest event, says so, and reconciles what the gap missed;
#                a cursor 31 days old is restarted without asking
#   7 too late   an event listed later than poll_lookback: reported and
#                repaired by the scheduled reconciliation
#   8 start      polling from a time within a second (x.9 s) takes the events
#                of that second (it used to round up and skip them)
# One PASS/FAIL line per check; exits 0 only if every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh
. test/lib/fake_stripe.sh

KEY=sk_test_backfill_$RANDOM$RANDOM
export NODE_PATH=$PWD/test/integration/node/node_modules
work_begin backfill
since=$(($(date +%s) - 90 * 86400))

# sql DB QUERY: one query, unaligned output, errors to stderr.
sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
accepting() { sql postgres "SELECT 1" >/dev/null 2>&1; }
fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$FAKE_URL$2"
}
# requests recorded by the fake for a path (prefix), as JSON
requests() { fake GET "/_fake/requests?path=$1"; }

# seed SEED: a fresh fake holding the pre-existing account
seed() {
    fake POST /_fake/reset >/dev/null &&
        fake POST /_fake/account "{\"customers\": 2000, \"subscriptions\": 2000, \"wide_subscriptions\": 100,
            \"wide_items\": 15, \"products\": 50, \"prices\": 100, \"canceled\": 200,
            \"entitlements_per_customer\": 2, \"invoices_per_subscription\": 1, \"seed\": $1}" >/dev/null
}

# differences DB: the rows that differ between the database and the fake
# (as the stripe SDK lists it), printed; their count is the exit status
differences() {
    node test/integration/backfill/account_rows.js "$FAKE_URL" "$KEY" "$since" >"$work/stripe_rows.tsv" || return 100
    sql "$1" "TRUNCATE btest.stripe_rows" &&
        psql -X -q -d "$1" -c "\\copy btest.stripe_rows FROM '$work/stripe_rows.tsv'" || return 100
    local n
    n=$(sql "$1" "SELECT count(*) FROM btest.differences")
    [ "$n" = 0 ] || sql "$1" "SELECT * FROM btest.differences ORDER BY 3, 1 LIMIT 10" | sed 's/^/      /'
    return "$n"
}

# first_pages: how many times each kind's first page was asked for (no
# starting_after; entitlements: the first customer's), one "path n" a line
first_pages() {
    requests /v1/ | jq -r '
        map(select(.method == "GET" and .status == 200
                   and (.path | test("^/v1/(products|prices|customers|subscriptions|invoices|entitlements/active_entitlements)$"))
                   and .query.starting_after == null and (.query.limit | tostring) == "100"))
        | (map(select(.path == "/v1/entitlements/active_entitlements")) | (.[0].query.customer // "")) as $first
        | map(select(.path != "/v1/entitlements/active_entitlements" or .query.customer == $first))
        | group_by(.path) | map("\(.[0].path | sub("^/v1/"; "") | sub("/active_entitlements"; "")) \(length)") | .[]'
}

# ready_count: how many times the server said it was ready (crash restarts count)
ready_count() { grep -c 'database system is ready to accept connections' "$work/pg/server.log"; }
# restarted_since N: the server restarted after a crash (ready more than N
# times) and accepts connections again
restarted_since() { [ "$(ready_count)" -gt "$1" ] && accepting; }

# kill9 DB PID: freezes the backend, notes which kind's first page may be
# in flight (the first unfinished kind, with no page committed yet), kills it
kill9() {
    kill -STOP "$2" || return 1
    in_flight_first+=" $(sql "$1" "SELECT kind FROM stripe_billing.backfill_state WHERE state <> 'done'
                                    ORDER BY ordinal LIMIT 1" | sed 's/^/:/; s/$/:/')"
    [ "$(sql "$1" "SELECT pages FROM stripe_billing.backfill_state WHERE state <> 'done' ORDER BY ordinal LIMIT 1")" = 0 ] ||
        in_flight_first=${in_flight_first% *}
    kill -9 "$2"
}

# restarted: kinds whose first page was asked for again, other than after a
# kill during that very page (a resumed kind goes on from its cursor)
restarted() {
    local kind n allowed
    while read -r kind n; do
        allowed=$((1 + $(grep -o ":$kind:" <<<"$in_flight_first" | wc -l)))
        [ "$n" -le "$allowed" ] || echo -n " $kind (first page $n times)"
    done < <(first_pages)
    [ "$(first_pages | wc -l)" = 6 ] || echo -n " first pages of $(first_pages | wc -l) kinds, not 6"
}

# the users' features as derived, against those the account grants: every
# product grants "paid"; Stripe Entitlements add their lookup keys
features_problems() {
    sql "$1" "
        WITH live AS (SELECT c.user_ref, s.customer FROM stripe_billing.subscriptions s
                        JOIN stripe_billing.customers c ON c.id = s.customer
                       WHERE s.status IN ('active', 'trialing')),
        expected AS (SELECT user_ref, 'paid' AS feature FROM live
                     UNION SELECT l.user_ref, a.lookup_key FROM live l
                             JOIN stripe_billing.active_entitlements a ON a.customer = l.customer),
        got AS (SELECT f.user_ref, f.feature FROM stripe_billing.user_features f
                 WHERE f.user_ref NOT IN (SELECT c.user_ref FROM stripe_billing.subscriptions s
                                            JOIN stripe_billing.customers c ON c.id = s.customer
                                           WHERE s.status = 'past_due'))
        SELECT (SELECT count(*) FROM (SELECT * FROM expected EXCEPT SELECT * FROM got) x) || ' missing, ' ||
               (SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM expected) y) || ' extra, ' ||
               (SELECT count(DISTINCT user_ref) FROM expected) || ' users with features'"
}

grant_products() {
    sql "$1" "SELECT count(stripe_billing.stripe_grant_feature('product', id, 'paid')) FROM stripe_billing.products" >/dev/null
}

backfill_done() {
    [ "$(sql "$1" "SELECT count(*) FILTER (WHERE state = 'done') || '/' || count(*) FROM stripe_billing.backfill_state" 2>/dev/null)" = "7/7" ]   # (the six kinds of objects and the connected accounts)
}
backfilled_objects() { sql "$1" "SELECT coalesce(sum(objects), 0) FROM stripe_billing.backfill_state" 2>/dev/null; }
# reached DB N: has the backfill in DB applied N objects yet?
reached() { [ "$(backfilled_objects "$1")" -ge "$2" ] 2>/dev/null; }
# change_at_stripe N TAG: N active subscriptions changed at Stripe (metadata
# during = TAG, cancel at period end), as a user would during a backfill
change_at_stripe() {
    local sub
    for sub in $(curl -sS -u "$KEY:" "$FAKE_URL/v1/subscriptions?limit=$1&status=active" | jq -r '.data[].id'); do
        curl -sS -u "$KEY:" -d "metadata[during]=$2" -d "cancel_at_period_end=true" \
            "$FAKE_URL/v1/subscriptions/$sub" >/dev/null
    done
}
backend_of() { sql postgres "SELECT pid FROM pg_stat_activity WHERE query LIKE '$1%' AND pid <> pg_backend_pid()" 2>/dev/null | head -1; }

# ---- setup -----------------------------------------------------------------

fake_start "$work" "$KEY" || exit 1
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" \
    "stripe_billing.api_key = '$KEY'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.database = 'sb_worker'" "stripe_billing.poll_interval = 300" \
    "stripe_billing.poll_lookback = 2" "stripe_billing.max_requests_per_second = 200" || exit 1
for db in sb_procedure sb_worker; do createdb "$db" || exit 1; done
sql sb_procedure "CREATE EXTENSION stripe_billing" >/dev/null || exit 1
sql sb_procedure "$(cat test/integration/backfill/account_rows.sql)" >/dev/null || exit 1
seed 1 || { echo "seeding the fake failed"; exit 1; }

# ---- 1 and 2: the procedure, killed three times; events meanwhile ------------

check_backfill() {
    local problems=() kills=0 at out extra call_pid pid restarts firsts digest batch single changed_at ready
    in_flight_first=""
    begin
    # polling starts first (the cursor is the newest event), as in the README
    sql sb_procedure "CALL stripe_billing.stripe_sync_now()" >/dev/null || problems+=(" stripe_sync_now failed")
    # a change made before the backfill lists subscriptions: its event is older than the listing
    # (events are dated in seconds: the listing starts in a later second, on the same clock)
    changed_at=$(date +%s)
    curl -sS -u "$KEY:" -d cancel_at_period_end=true \
        "$FAKE_URL/v1/subscriptions/$(curl -sS -u "$KEY:" "$FAKE_URL/v1/subscriptions?limit=1&status=active" | jq -r '.data[0].id')" >/dev/null
    wait_until 10 eval '[ "$(date +%s)" -gt "$((changed_at + 1))" ]'
    for threshold in 1200 3600 6400; do
        psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_backfill()" >"$work/call.log" 2>&1 &
        call_pid=$!
        wait_until 120 reached sb_procedure "$threshold" ||
            problems+=(" the backfill did not reach $threshold objects")
        if [ "$threshold" = 3600 ]; then
            # changes at Stripe during the backfill: newer than any listing of them
            change_at_stripe 3 yes
        fi
        at=$(backfilled_objects sb_procedure)
        pid=$(backend_of "CALL stripe_billing.stripe_backfill")
        ready=$(ready_count)
        if [ -n "$pid" ] && ! backfill_done sb_procedure; then
            kill9 sb_procedure "$pid" && kills=$((kills + 1))
            echo "      killed the backfill's backend at $at objects"
            wait "$call_pid"
            # (the postmaster restarts the server after the kill: not the old one answering)
            wait_until 60 restarted_since "$ready" || problems+=(" the cluster did not come back")
        fi
        wait "$call_pid"
    done
    [ "$kills" = 3 ] || problems+=(" $kills kills mid-way, not 3")
    psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_backfill()" >"$work/call.log" 2>&1 ||
        problems+=(" the last call failed: $(tail -3 "$work/call.log")")
    backfill_done sb_procedure || problems+=(" not every kind is done: $(sql sb_procedure "SELECT string_agg(kind || ' ' || state, ', ') FROM stripe_billing.backfill_state")")
    grep -q "NOTICE:  stripe_billing backfill: entitlements, page" "$work/call.log" ||
        problems+=(" no progress NOTICE per page")
    restarts=$(restarted)
    [ -z "$restarts" ] || problems+=(" restarted from zero:$restarts")
    firsts=$(first_pages | tr '\n' ' ')
    out=$(sql sb_procedure "SELECT string_agg(kind || ' ' || objects, ', ') FROM stripe_billing.backfill_status")
    # the events made meanwhile, then everything must equal the account
    sql sb_procedure "CALL stripe_billing.stripe_sync_now()" >/dev/null || problems+=(" stripe_sync_now failed")
    differences sb_procedure || problems+=(" $? rows differ from the account")
    grant_products sb_procedure
    extra=$(features_problems sb_procedure)
    [[ "$extra" == "0 missing, 0 extra, "* ]] || problems+=(" features: $extra")
    # the derivation of many users at once (a backfill page's) and the one
    # per user (every event, stripe_refresh_entitlements) agree, from scratch
    digest="SELECT count(*) || ' ' || md5(string_agg(user_ref || ':' || feature || ':' || coalesce(valid_until::text, '-'), ','
                                                    ORDER BY user_ref, feature)) FROM stripe_billing.user_features"
    sql sb_procedure "DELETE FROM stripe_billing.user_features;
        SELECT stripe_billing._refresh_customers_features(array_agg(id), 'test') FROM stripe_billing.customers" >/dev/null
    batch=$(sql sb_procedure "$digest")
    sql sb_procedure "DELETE FROM stripe_billing.user_features; SELECT stripe_billing.stripe_refresh_entitlements()" >/dev/null
    single=$(sql sb_procedure "$digest")
    [ "$batch" = "$single" ] || problems+=(" the derivation at once gives $batch, the one per user $single")
    [ "${batch%% *}" -gt 1000 ] 2>/dev/null || problems+=(" only ${batch%% *} features derived: the comparison proves little")
    conclude backfill "$kills kills, first pages: $firsts(again after a kill during it:${in_flight_first:- none}); $out; $extra; derivation at once = per user (${batch%% *} features)" "${problems[@]}"

    problems=()
    begin
    out=$(sql sb_procedure "SELECT count(*) FILTER (WHERE e.outcome = 'applied') || ' applied, ' ||
                                   count(*) FILTER (WHERE e.outcome = 'stale') || ' stale'
                              FROM stripe_billing.events e WHERE e.type = 'customer.subscription.updated'")
    [ "$(sql sb_procedure "SELECT count(*) FROM stripe_billing.subscriptions WHERE metadata->>'during' = 'yes' AND cancel_at_period_end")" = 3 ] ||
        problems+=(" the 3 subscriptions changed during the backfill do not hold the change")
    [ "$(sql sb_procedure "SELECT count(*) FROM stripe_billing.events WHERE type = 'customer.subscription.updated' AND outcome = 'stale'")" -ge 1 ] ||
        problems+=(" the event older than the listing was not stale")
    [ "$(sql sb_procedure "SELECT count(*) FROM stripe_billing.events WHERE type = 'customer.subscription.updated' AND outcome = 'applied'")" -ge 3 ] ||
        problems+=(" the events newer than the listing were not applied")
    conclude during "subscription events: $out" "${problems[@]}"
}

# ---- 3: the rate limit ---------------------------------------------------------

check_rate() {
    local problems=() limited limited2 n
    begin
    fake POST /_fake/rate_limit '{"per_second": 5}' >/dev/null
    fake DELETE /_fake/requests >/dev/null
    PGOPTIONS="-c stripe_billing.max_requests_per_second=50" \
        psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_backfill(ARRAY['customers'])" >/dev/null 2>"$work/rate.log" ||
        problems+=(" the backfill under a limit failed: $(tail -2 "$work/rate.log")")
    limited=$(requests /v1/customers | jq '[.[] | select(.status == 429)] | length')
    [ "$limited" -gt 0 ] || problems+=(" no 429 was provoked at 50/s against 10/s")
    [ "$(sql sb_procedure "SELECT state FROM stripe_billing.backfill_state WHERE kind = 'customers'")" = done ] ||
        problems+=(" customers not done after the 429s")

    # a new limit starts with an empty window
    fake POST /_fake/rate_limit '{"per_second": 5}' >/dev/null
    fake DELETE /_fake/requests >/dev/null
    PGOPTIONS="-c stripe_billing.max_requests_per_second=4" \
        psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_backfill(ARRAY['customers'])" >/dev/null 2>"$work/rate.log" ||
        problems+=(" the backfill at 4/s failed")
    n=$(requests /v1/customers | jq length)
    limited2=$(requests /v1/customers | jq '[.[] | select(.status == 429)] | length')
    fake DELETE /_fake/rate_limit >/dev/null
    [ "${limited2:-1}" = 0 ] || problems+=(" $limited2 requests refused at 4/s under a limit of 5/s")
    conclude rate "at 50/s against a limit of 5/s: $limited 429s waited out; at 4/s: ${n:-?} requests, ${limited2:-?} refused" "${problems[@]}"
}

# ---- 4: reconciliation ---------------------------------------------------------

check_reconcile() {
    local problems=() ids fields status
    begin
    # seven live subscriptions and customers to edit, one per kind of drift
    mapfile -t ids < <(sql sb_procedure "SELECT s.id || ' ' || s.customer FROM stripe_billing.subscriptions s
                                          WHERE s.status = 'active' AND NOT s.cancel_at_period_end
                                            AND (SELECT count(*) FROM stripe_billing.subscription_items i
                                                  WHERE i.subscription = s.id) > 1
                                          ORDER BY s.id LIMIT 7")
    [ "${#ids[@]}" = 7 ] || problems+=(" only ${#ids[@]} subscriptions to edit")
    set -- ${ids[@]}
    sql sb_procedure "
        UPDATE stripe_billing.subscriptions SET status = 'canceled' WHERE id = '$1';
        UPDATE stripe_billing.subscriptions SET cancel_at_period_end = true WHERE id = '$3';
        UPDATE stripe_billing.subscription_items SET quantity = quantity + 4
         WHERE id = (SELECT min(id) FROM stripe_billing.subscription_items WHERE subscription = '$5');
        DELETE FROM stripe_billing.subscription_items
         WHERE id = (SELECT min(id) FROM stripe_billing.subscription_items WHERE subscription = '$7');
        UPDATE stripe_billing.customers SET user_ref = NULL WHERE id = '${10}';
        UPDATE stripe_billing.customers SET deleted = true WHERE id = '${12}';
        DELETE FROM stripe_billing.subscription_items WHERE subscription = '${13}';
        DELETE FROM stripe_billing.subscriptions WHERE id = '${13}';" >/dev/null || problems+=(" the edits failed")
    differences sb_procedure >/dev/null && problems+=(" the edits made no difference")
    psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_reconcile()" >"$work/reconcile.log" 2>&1 ||
        problems+=(" stripe_reconcile failed: $(tail -2 "$work/reconcile.log")")
    fields=$(sql sb_procedure "SELECT string_agg(object_type || '.' || field || CASE WHEN fixed THEN '' ELSE ' (not fixed)' END, ', '
                                                ORDER BY object_type, field)
                                 FROM stripe_billing.reconcile_log WHERE run = (SELECT run FROM stripe_billing.reconcile_status)")
    [ "$fields" = "customer.deleted, customer.user_ref, subscription.items, subscription.items, subscription.cancel_at_period_end, subscription.row, subscription.status" ] ||
        [ "$fields" = "customer.deleted, customer.user_ref, subscription.cancel_at_period_end, subscription.items, subscription.items, subscription.row, subscription.status" ] ||
        problems+=(" logged: $fields")
    status=$(sql sb_procedure "SELECT state || ', ' || checked || ' checked, ' || drifted || ' drifted, ' || fixed || ' fixed'
                                 FROM stripe_billing.reconcile_status")
    [[ "$status" == "done, "*" 7 drifted, 7 fixed" ]] || problems+=(" status: $status")
    differences sb_procedure || problems+=(" $? rows still differ")
    psql -X -q -d sb_procedure -c "CALL stripe_billing.stripe_reconcile()" >/dev/null 2>&1
    [[ "$(sql sb_procedure "SELECT drifted FROM stripe_billing.reconcile_status")" == 0 ]] ||
        problems+=(" a second run still found drift")
    conclude reconcile "$status; logged: $fields" "${problems[@]}"
}

# ---- 5, 6, 7: the worker -------------------------------------------------------

worker_pid() { sql postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'" 2>/dev/null; }

check_worker() {
    local problems=() kills=0 pid out seed_event restarts firsts ready
    in_flight_first=""
    begin
    seed 2 || problems+=(" seeding failed")
    fake POST /_fake/events '{"events": [{"type": "customer.created", "data": {"object": {"id": "cus_seedevent", "object": "customer"}}}]}' >/dev/null
    seed_event=$(fake GET /_fake/events | jq -r '.[-1].id')
    fake DELETE /_fake/requests >/dev/null
    sql sb_worker "CREATE EXTENSION stripe_billing" >/dev/null || problems+=(" CREATE EXTENSION failed")
    sql sb_worker "$(cat test/integration/backfill/account_rows.sql)" >/dev/null
    for threshold in 1500 4000 6500; do
        wait_until 120 reached sb_worker "$threshold" ||
            problems+=(" the worker's backfill did not reach $threshold objects")
        if [ "$threshold" = 4000 ]; then
            change_at_stripe 2 worker
        fi
        pid=$(worker_pid)
        ready=$(ready_count)
        if [ -n "$pid" ] && ! backfill_done sb_worker; then
            echo "      killed the worker at $(backfilled_objects sb_worker) objects, phase $(sql sb_worker "SELECT phase FROM stripe_billing.sync_status")"
            kill9 sb_worker "$pid" && kills=$((kills + 1))
            # (the postmaster restarts the server, and a new worker: not the old one answering)
            wait_until 60 restarted_since "$ready" || problems+=(" the cluster did not come back")
            wait_until 60 eval '[ -n "$(worker_pid)" ]' || problems+=(" no worker after the restart")
        fi
    done
    [ "$kills" = 3 ] || problems+=(" $kills kills mid-way, not 3")
    wait_until 180 backfill_done sb_worker || problems+=(" the worker's backfill did not finish")
    wait_until 30 bash -c "[ \"\$(psql -X -At -d sb_worker -c 'SELECT phase FROM stripe_billing.sync_status')\" = streaming ]" ||
        problems+=(" phase is $(sql sb_worker "SELECT phase FROM stripe_billing.sync_status"), not streaming")
    restarts=$(restarted)
    [ -z "$restarts" ] || problems+=(" restarted from zero:$restarts")
    firsts=$(first_pages | tr '\n' ' ')
    [ "$(sql sb_worker "SELECT count(*) FROM stripe_billing.events WHERE id = '$seed_event'")" = 0 ] ||
        problems+=(" the event that was the first cursor was applied")
    wait_until 30 bash -c "[ \"\$(psql -X -At -d sb_worker -c \"SELECT count(*) FROM stripe_billing.subscriptions WHERE metadata->>'during' = 'worker' AND cancel_at_period_end\")\" = 2 ]" ||
        problems+=(" the events made during the backfill were not applied")
    differences sb_worker || problems+=(" $? rows differ from the account")
    out=$(sql sb_worker "SELECT string_agg(kind || ' ' || objects, ', ') FROM stripe_billing.backfill_status")
    conclude worker "$kills worker kills, first pages: $firsts(again after a kill during it:${in_flight_first:- none}); $out" "${problems[@]}"
}

check_expired() {
    local problems=() cursor sub reason
    begin
    cursor=$(sql sb_worker "SELECT cursor FROM stripe_billing.sync_status")
    [ -n "$cursor" ] || problems+=(" no cursor")
    # a change Stripe's events will never show us (they expire), then Stripe drops them
    sub=$(sql sb_worker "SELECT id FROM stripe_billing.subscriptions WHERE status = 'active' ORDER BY id LIMIT 1")
    sql postgres "SELECT 1" >/dev/null
    fake POST /_fake/objects "{\"merge\": true, \"object\": {\"id\": \"$sub\", \"object\": \"subscription\", \"status\": \"past_due\"}}" >/dev/null ||
        problems+=(" the silent change failed")
    fake POST /_fake/events/expire "{\"through\": \"$(fake GET /_fake/events | jq -r '.[-1].id')\"}" >/dev/null ||
        problems+=(" expiring the events failed")
    curl -sS -u "$KEY:" -d "metadata[after]=expiry" "$FAKE_URL/v1/customers" >/dev/null
    wait_until 30 bash -c "[ -n \"\$(psql -X -At -d sb_worker -c 'SELECT cursor_reset_reason FROM stripe_billing.sync_status')\" ]" ||
        problems+=(" sync_status shows no cursor reset")
    reason=$(sql sb_worker "SELECT cursor_reset_reason FROM stripe_billing.sync_status")
    wait_until 60 bash -c "[ \"\$(psql -X -At -d sb_worker -c \"SELECT state FROM stripe_billing.reconcile_runs WHERE reason = 'cursor expired' ORDER BY id DESC LIMIT 1\")\" = done ]" ||
        problems+=(" no reconciliation after the reset finished")
    [ "$(sql sb_worker "SELECT status FROM stripe_billing.subscriptions WHERE id = '$sub'")" = past_due ] ||
        problems+=(" the change the gap missed was not repaired")
    [ "$(sql sb_worker "SELECT count(*) FROM stripe_billing.reconcile_log WHERE object_id = '$sub' AND field = 'status' AND fixed")" -ge 1 ] ||
        problems+=(" the repair is not in reconcile_log")
    curl -sS -u "$KEY:" -d "metadata[user_ref]=after_reset" "$FAKE_URL/v1/customers" >/dev/null
    wait_until 30 bash -c "[ \"\$(psql -X -At -d sb_worker -c \"SELECT count(*) FROM stripe_billing.customers WHERE user_ref = 'after_reset'\")\" = 1 ]" ||
        problems+=(" events after the reset are not applied")
    # a cursor older than Stripe's 30 days is not asked for at all
    sql sb_worker "UPDATE stripe_billing.sync_state SET last_event_created = now() - interval '31 days'" >/dev/null
    wait_until 30 bash -c "psql -X -At -d sb_worker -c 'SELECT cursor_reset_reason FROM stripe_billing.sync_status' | grep -q 'older than'" ||
        problems+=(" a cursor 31 days old was not restarted")
    reason="$reason; then: $(sql sb_worker "SELECT cursor_reset_reason FROM stripe_billing.sync_status")"
    wait_until 60 bash -c "[ \"\$(psql -X -At -d sb_worker -c \"SELECT count(*) FROM stripe_billing.reconcile_runs WHERE state = 'running'\")\" = 0 ]" ||
        problems+=(" the reconciliation after the second reset did not finish")
    conclude expired "reset: $reason" "${problems[@]}"
}

check_too_late() {
    local problems=() sub old logged
    begin
    # a scheduled reconciliation every 5 s from here on
    sql postgres "ALTER SYSTEM SET stripe_billing.reconcile_interval = '5s'" && sql postgres "SELECT pg_reload_conf()" >/dev/null
    sub=$(sql sb_worker "SELECT id FROM stripe_billing.subscriptions WHERE status = 'active' AND NOT cancel_at_period_end ORDER BY id DESC LIMIT 1")
    old=$(fake GET /_fake/events | jq -r '.[0].id')
    # Stripe changed it long ago; its event is listed only now, behind the cursor, out of the lookback
    fake POST /_fake/objects "{\"merge\": true, \"object\": {\"id\": \"$sub\", \"object\": \"subscription\", \"cancel_at_period_end\": true}}" >/dev/null
    fake POST /_fake/events "{\"before\": \"$old\", \"events\": [{\"type\": \"customer.subscription.updated\", \"created\": $(($(date +%s) - 3600)),
        \"data\": {\"object\": $(curl -sS -u "$KEY:" "$FAKE_URL/v1/subscriptions/$sub")}}]}" >/dev/null || problems+=(" listing the event late failed")
    wait_until 60 bash -c "[ \"\$(psql -X -At -d sb_worker -c \"SELECT cancel_at_period_end FROM stripe_billing.subscriptions WHERE id = '$sub'\")\" = t ]" ||
        problems+=(" the state of the event listed too late was never picked up")
    logged=$(sql sb_worker "SELECT r.reason || ': ' || l.field || ' ' || l.local_value || ' -> ' || l.stripe_value
                              FROM stripe_billing.reconcile_log l JOIN stripe_billing.reconcile_runs r ON r.id = l.run
                             WHERE l.object_id = '$sub' ORDER BY l.id DESC LIMIT 1")
    [[ "$logged" == "scheduled: cancel_at_period_end false -> true" ]] || problems+=(" reconcile_log says: $logged")
    conclude too_late "$logged" "${problems[@]}"
}

# ---- 8: polling from a point in time keeps the events of its second --------

check_start_second() {
    local problems=() t id got
    begin
    t=$(($(date +%s) - 100))
    id="evt_start_second_$t"
    fake POST /_fake/events "{\"events\": [{\"id\": \"$id\", \"type\": \"customer.updated\", \"created\": $t,
        \"data\": {\"object\": {\"id\": \"cus_start_second\", \"object\": \"customer\"}}}]}" >/dev/null ||
        problems+=(" the fake refused the event")
    createdb sb_start && sql sb_start "CREATE EXTENSION stripe_billing" >/dev/null || problems+=(" setup failed")
    sql sb_start "SELECT stripe_billing.stripe_sync_start_from(pg_catalog.to_timestamp($t.9)::text)" >/dev/null &&
        sql sb_start "CALL stripe_billing.stripe_sync_now()" >/dev/null || problems+=(" polling failed")
    got=$(sql sb_start "SELECT count(*) FROM stripe_billing.events WHERE id = '$id'")
    [ "$got" = 1 ] || problems+=(" the event of the start's second was skipped")
    conclude start "polling from $t.9 s took the event created at second $t: $got" "${problems[@]}"
}

check_start_second
check_backfill
check_rate
check_reconcile
check_worker
check_expired
check_too_late
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
