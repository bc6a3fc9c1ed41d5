#!/usr/bin/env bash
# Subtransactions stay few however many events a transaction applies: past
# 64 in one transaction PostgreSQL's per-backend subtransaction cache
# overflows and every other session's snapshots slow down.
#   1. stripe_apply_events: 20,000 events (5 of them failing) in one
#      transaction take one subtransaction plus one per failure, where a
#      loop of stripe_apply_event takes 20,000; both leave the same ledger
#      and the same billing rows.
#   2. A worker's page (_apply_page): 100 events in one subtransaction; a
#      malformed one skipped with a WARNING, a failing one recorded failed,
#      the others applied.
#      A run whose derivation at its end fails is applied again deriving
#      per event: only the events of the user at fault fail.
#   3. CALL stripe_sync_now(): a transaction per page over 20,000 events of
#      the loopback fake, each with at most one subtransaction; refused
#      inside a transaction block.
# Counted as transaction ids assigned (a quiet cluster of its own: between
# two of its transactions, the ids taken are the top one's and those of its
# subtransactions that wrote), and on PostgreSQL 16 and later also by
# pg_stat_get_backend_subxact.
#     bash test/integration/subtransactions.sh        (needs the installed extension)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
. test/lib/verdicts.sh

key="sk_test_subx$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# (its work directory, a GB of data, goes when it exits: test/lib/work.sh)
work_begin subx
fake_start "$work" "$key" || exit 1
# (the worker serves database postgres, so the test's own databases are
# touched by the test alone)
# (and no autovacuum: its ANALYZE of the tables just filled takes
# transaction ids too, which a slow run, on a loaded machine, gives the time
# to land between the two ids a check reads)
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.backfill_on_start = off" "stripe_billing.poll_lookback = '2s'" "autovacuum = off" || exit 1
sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
version=$(sql postgres "SHOW server_version_num")
n=20000
start=$(($(date +%s) - 3600))
curl -sS -X POST -H 'Content-Type: application/json' \
    -d "{\"generate\": {\"count\": $n, \"customers\": 200, \"per_second\": 10, \"seed\": 7, \"start_created\": $start}}" \
    "$FAKE_URL/_fake/events" >/dev/null || { echo "FAIL: the fake did not generate events"; exit 1; }

for db in batch single page derive sync; do
    createdb "$db" && sql "$db" "CREATE EXTENSION stripe_billing; SELECT stripe_billing.stripe_sync_pause()" >/dev/null ||
        { echo "FAIL: setting up database $db"; exit 1; }
done
# the fake's events, oldest first, with five made to fail (no data.object.id)
psql -X -q -v ON_ERROR_STOP=1 -d batch >/dev/null <<'SQL' || { echo "FAIL: fetching the events"; exit 1; }
\i test/lib/fetch_events.sql
UPDATE fetched SET event = event #- '{data,object,id}' WHERE n IN (1, 2, 5000, 12345, 20000);
SQL
for db in single page derive; do
    psql -X -q -d batch -c "COPY fetched TO STDOUT" |
        psql -X -q -d "$db" -c "CREATE TABLE fetched (n bigint, event jsonb); COPY fetched FROM STDIN"
done
# every price of the events grants a feature: users' features are derived and compared too
for db in batch single derive; do
    sql "$db" "SELECT count(stripe_billing.stripe_grant_feature('price', p, 'pro'))
                 FROM (SELECT DISTINCT i->'price'->>'id' AS p FROM fetched,
                              jsonb_array_elements(event->'data'->'object'->'items'->'data') i) s
                WHERE p IS NOT NULL" >/dev/null
done
eq "$(sql batch "SELECT count(*) FROM fetched")" "$n" "events fetched from the fake"

# Runs SQL in one transaction of database $1 and prints the transaction ids
# it took (then, on 16 and later, its subtransaction count and overflow).
xids_of() {
    local db=$1 body=$2 x0 x1 extra=
    x0=$(sql "$db" "SELECT pg_current_xact_id()")
    # (the WARNINGs of check 2 are looked at apart)
    export PGOPTIONS="-c client_min_messages=error"
    if [ "$version" -ge 160000 ]; then
        extra=$(psql -X -At -q -v ON_ERROR_STOP=1 -d "$db" <<SQL | tail -1
BEGIN;
$body
SELECT s.subxact_count || ' ' || s.subxact_overflowed
  FROM pg_stat_get_backend_idset() b, pg_stat_get_backend_subxact(b) s
 WHERE pg_stat_get_backend_pid(b) = pg_backend_pid();
COMMIT;
SQL
        )
    else
        psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "BEGIN" -c "$body" -c "COMMIT" >/dev/null || echo "(failed)"
    fi
    unset PGOPTIONS
    x1=$(sql "$db" "SELECT pg_current_xact_id()")
    echo "$((x1 - x0 - 1)) $extra"
}

# 1. 20,000 events in one transaction
got=$(xids_of batch "SELECT count(*) FROM stripe_billing.stripe_apply_events(
    ARRAY(SELECT event FROM fetched ORDER BY n), 'poll');")
read -r xids count overflowed <<<"$got"
# one run, plus per failure: the run rolled back, the events before it again
[ "$xids" -ge 2 ] && [ "$xids" -le 12 ] ||
    bad "stripe_apply_events took $xids transaction ids (the top one, one run and two per failure: at most 12)"
if [ "$version" -ge 160000 ]; then
    [ "$count" -le 64 ] && [ "$overflowed" = false ] ||
        bad "pg_stat_get_backend_subxact says $count subtransactions, overflowed $overflowed"
fi
eq "$(sql batch "SELECT outcome || ' ' || count(*) FROM stripe_billing.events GROUP BY outcome ORDER BY outcome" | paste -sd,)" \
    "applied 19995,failed 5" "outcomes of stripe_apply_events"
eq "$(sql batch "SELECT count(*) FROM stripe_billing.events e JOIN fetched f ON f.event->>'id' = e.id
                 WHERE e.outcome = 'failed' AND f.n IN (1, 2, 5000, 12345, 20000)
                   AND e.error LIKE '%data.object.id%' AND e.payload = f.event")" 5 \
    "the five failing events recorded failed, with their payload and an error naming data.object.id"
single=$(xids_of single "SELECT count(stripe_billing.stripe_apply_event(event, 'poll'))
    FROM (SELECT event FROM fetched ORDER BY n) f;")
read -r sxids scount soverflowed <<<"$single"
[ "$sxids" -gt 1000 ] || bad "the contrast: a loop of stripe_apply_event took only $sxids transaction ids"
[ "$version" -lt 160000 ] || [ "$soverflowed" = true ] ||
    bad "the contrast: a loop of stripe_apply_event did not overflow the cache ($scount, $soverflowed)"
state() {
    sql "$1" "SELECT md5(string_agg(id || ' ' || type || ' ' || outcome || ' ' || coalesce(error, '-'), ',' ORDER BY id))
                FROM stripe_billing.events"
    for t in customers subscriptions subscription_items invoices payments products prices user_features; do
        sql "$1" "SELECT '$t ' || count(*) || ' ' || md5(coalesce(string_agg((to_jsonb(x) - 'updated_at')::text, ',' ORDER BY (to_jsonb(x) - 'updated_at')::text), ''))
                    FROM stripe_billing.$t x"
    done
}
features=$(sql batch "SELECT count(*) FROM stripe_billing.user_features")
[ "$features" -gt 0 ] || bad "no user has a feature: the comparison of the derivations would be empty"
[ "$(state batch)" = "$(state single)" ] ||
    bad "stripe_apply_events and a loop of stripe_apply_event left different ledgers or rows: $(diff <(state batch) <(state single) | tr '\n' ' ')"
verdict "20,000 events in one transaction: stripe_apply_events took $xids transaction ids${count:+ ($count subtransactions, overflowed: $overflowed)}, a loop of stripe_apply_event $sxids${scount:+ ($scount, overflowed: $soverflowed)}; the same ledger and rows, and the same $features features"

# 2. a worker's page: 100 events, one of them malformed, one failing
page="(SELECT jsonb_agg(CASE WHEN n = 30 THEN event - 'id' WHEN n = 60 THEN event #- '{data,object,id}' ELSE event END
                        ORDER BY n DESC)
         FROM fetched WHERE n BETWEEN 3 AND 102)"
got=$(xids_of page "SELECT stripe_billing._apply_page($page, 'poll');")
read -r xids count overflowed <<<"$got"
[ "$xids" -le 4 ] || bad "a page took $xids transaction ids (the top one, one run and two for the failure: at most 4)"
out=$(psql -X -At -q -d page -c "SELECT stripe_billing._apply_page($page, 'poll')" 2>&1)
grep -q 'WARNING:  stripe_billing: a polled event was skipped: malformed Stripe event' <<<"$out" ||
    bad "no WARNING for the malformed event: $out"
eq "$(sql page "SELECT outcome || ' ' || count(*) FROM stripe_billing.events GROUP BY outcome ORDER BY outcome" | paste -sd,)" \
    "applied 98,failed 1" "outcomes of the page (one malformed skipped)"
eq "$(sql page "SELECT e.outcome FROM stripe_billing.events e JOIN fetched f ON f.event->>'id' = e.id WHERE f.n = 60")" \
    failed "the event without data.object.id"
eq "$(sql page "SELECT count(*) FROM stripe_billing.events e JOIN fetched f ON f.event->>'id' = e.id
                 WHERE f.n IN (59, 61, 102, 3) AND e.outcome = 'applied'")" 4 "the events around it and at the ends"
verdict "a worker's page of 100 events took $xids transaction ids; a malformed event skipped with a WARNING, a failing one recorded failed, the other 98 applied"

# 2b. a page whose features cannot be derived for one user: the run's
# derivation at its end fails, the run is applied again deriving per event,
# and only that user's subscription events fail
psql -X -q -v ON_ERROR_STOP=1 -d derive >/dev/null <<'SQL' || bad "setting up the derivation failure"
-- a subscription event of the page whose customer a customer event links to a user
CREATE TABLE victim AS
SELECT s.event->'data'->'object'->>'customer' AS customer, c.event AS customer_event,
       c.event->'data'->'object'->'metadata'->>'user_ref' AS user_ref
  FROM fetched s JOIN fetched c ON c.event->'data'->'object'->>'id' = s.event->'data'->'object'->>'customer'
 WHERE s.n BETWEEN 3 AND 102 AND s.event->>'type' LIKE 'customer.subscription.%'
   AND c.event->'data'->'object'->'metadata'->>'user_ref' IS NOT NULL
 ORDER BY s.n LIMIT 1;
SELECT stripe_billing.stripe_apply_event(customer_event, 'manual') FROM victim;
CREATE FUNCTION public.refuse_victim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.user_ref = (SELECT user_ref FROM public.victim) THEN
    RAISE EXCEPTION 'test: no features for %', NEW.user_ref;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_victim BEFORE INSERT ON stripe_billing.user_features
  FOR EACH ROW EXECUTE FUNCTION public.refuse_victim();
SQL
got=$(xids_of derive "SELECT stripe_billing._apply_page((SELECT jsonb_agg(event ORDER BY n DESC) FROM fetched
                                                        WHERE n BETWEEN 3 AND 102), 'poll');")
read -r xids count overflowed <<<"$got"
victim_events=$(sql derive "SELECT count(*) FROM fetched f, victim v WHERE f.n BETWEEN 3 AND 102
    AND f.event->>'type' LIKE 'customer.subscription.%' AND f.event->'data'->'object'->>'customer' = v.customer")
failed_ok=$(sql derive "SELECT count(*) FROM stripe_billing.events WHERE outcome = 'failed' AND error LIKE 'test: no features for %'")
others=$(sql derive "SELECT count(*) FROM stripe_billing.events WHERE outcome <> 'failed' AND source = 'poll'")
[ "$victim_events" -ge 1 ] || bad "no subscription event of the victim's customer in the page"
eq "$failed_ok" "$victim_events" "events failed on the refused derivation"
eq "$(sql derive "SELECT count(*) FROM stripe_billing.events WHERE outcome = 'failed'")" "$failed_ok" "failed events"
eq "$((others + failed_ok))" 100 "events of the page recorded"
[ "$(sql derive "SELECT count(*) FROM stripe_billing.user_features")" -gt 0 ] || bad "no other user got features"
[ "$xids" -le $((2 + 2 * victim_events + 2)) ] || bad "$xids transaction ids"
verdict "a page whose run cannot derive one user's features: applied again deriving per event; the $failed_ok subscription event(s) of that user failed, the other $others applied ($xids transaction ids)"

# 3. CALL stripe_sync_now(): a transaction per page
sql sync "SELECT stripe_billing.stripe_sync_start_from(to_timestamp($start - 1)::text)" >/dev/null
out=$(psql -X -At -q -d sync -c "BEGIN" -c "CALL stripe_billing.stripe_sync_now()" 2>&1)
grep -q 'invalid transaction termination' <<<"$out" || bad "inside a transaction block: $out"
eq "$(sql sync "SELECT count(*) FROM stripe_billing.events")" 0 "events applied by the refused call"
# (a backend reports to pg_stat_database with a delay, at the latest as it
# exits: once no session of database sync is left, each has reported)
sync_sessions() { sql postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = 'sync'"; }
wait_until 30 eval '[ "$(sync_sessions)" = 0 ]' || bad "sessions of database sync still there 30 s after the last one ended"
commits0=$(sql postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = 'sync'")
x0=$(sql sync "SELECT pg_current_xact_id()")
total=0
for _ in $(seq 20); do
    got=$(sql sync "CALL stripe_billing.stripe_sync_now()") || { bad "CALL stripe_sync_now() failed"; break; }
    total=$((total + got))
    [ "$got" -gt 0 ] || break
done
x1=$(sql sync "SELECT pg_current_xact_id()")
pages=$((n / 100))
wait_until 30 eval '[ "$(sync_sessions)" = 0 ]' || bad "sessions of database sync still there 30 s after the last one ended"
commits=$(( $(sql postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = 'sync'") - commits0 ))
eq "$total" "$n" "events received by CALL stripe_sync_now()"
eq "$(sql sync "SELECT outcome || ' ' || count(*) FROM stripe_billing.events GROUP BY outcome")" "applied $n" "the ledger after stripe_sync_now"
[ "$commits" -ge "$pages" ] || bad "only $commits transactions committed for $pages pages"
xids=$((x1 - x0 - 1))
# each page: its transaction's id and one run's; a few more for the cycle's ends
[ "$xids" -le $((2 * pages + 40)) ] || bad "$xids transaction ids for $pages pages"
verdict "CALL stripe_sync_now() received $total events in $commits transactions with $xids transaction ids ($pages pages); refused inside a transaction block"

echo "$((checks - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
