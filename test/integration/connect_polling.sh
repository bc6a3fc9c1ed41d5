#!/usr/bin/env bash
# The worker polling 1,000 connected accounts (issue 25, item 5), 990 of
# them idle, on a throwaway cluster of its own: poll_interval 2 s,
# connect_idle_interval 60 s, max_requests_per_second 40.  The accounts are
# learnt by hand (CALL stripe_backfill(ARRAY['accounts'])) while the worker
# is paused; then it takes each one's cursor, 10 of them become active (a
# webhook each), one is deauthorized (its account.application.deauthorized
# by webhook).  One PASS/FAIL line each:
#   first      every account's cursor taken (one request each)
#   stats      the worker's writes counted in pg_stat_user_tables while it
#              runs (what autovacuum goes by)
#   rate       the fake's record of every request the worker made: no
#              window of one second holds more than max_requests_per_second
#   active     an event on each active account (no webhook) applied within
#              two poll intervals of its making
#   idle       an event on each of 3 idle accounts applied within the idle
#              interval and a cycle (three poll intervals)
#   idle_cost  each idle account polled once per idle interval (the gaps
#              between its polls, past the first, which is drawn within the
#              interval): the polling cost of N idle accounts is N requests
#              per connect_idle_interval
#   deauthorized  no request for the deauthorized account after its event
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh
. test/lib/fake_stripe.sh

PY=/usr/bin/python3     # Debian's, which has python3-psycopg
$PY -c 'import psycopg' 2>/dev/null || { echo "FAIL: python3-psycopg is missing"; exit 1; }
KEY=sk_test_polling_$RANDOM$RANDOM
WHSEC=whsec_connect_$RANDOM$RANDOM
DB=polling
N=${N:-1000}
ACTIVE=10
RATE=40
POLL_S=2
IDLE_S=60
work_begin connect_polling
began=$(date +%s)

sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$FAKE_URL$2"
}
client() { $PY test/integration/connect/connect.py "$@"; }
# requests ACCOUNT SINCE_MS [UNTIL_MS]: GET /v1/events of an account in a time window
requests() { fake GET "/_fake/requests/count?path=/v1/events&method=GET&account=$1&since=$2${3:+&until=$3}" | jq .count; }
# an event made in ACCOUNT now (customer.created of customer cus_polling_K); prints its id
new_event() {
    fake POST /_fake/events "{\"account\": \"$1\", \"events\": [{\"type\": \"customer.created\",
        \"data\": {\"object\": {\"id\": \"cus_polling_$2\", \"object\": \"customer\", \"email\": \"u$2@example.com\",
                                  \"metadata\": {}, \"livemode\": false, \"created\": $(date +%s)}}}]}" | jq -r .last_id
}
applied_at_ms() { sql "SELECT (extract(epoch FROM received_at) * 1000)::bigint FROM stripe_billing.events WHERE id = '$1'"; }

fake_start "$work" "$KEY" || exit 1
fake POST /_fake/accounts "{\"count\": $N, \"catalogue\": false}" >/dev/null || exit 1
mapfile -t accounts < <(fake GET /_fake/accounts | jq -r '.[].id')
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" \
    "stripe_billing.api_base = '$FAKE_URL'" "stripe_billing.api_key = '$KEY'" \
    "stripe_billing.webhook_secret = '$WHSEC'" "stripe_billing.database = '$DB'" \
    "stripe_billing.poll_interval = '${POLL_S}s'" "stripe_billing.connect_idle_interval = '${IDLE_S}s'" \
    "stripe_billing.max_requests_per_second = $RATE" "stripe_billing.backfill_on_start = off" || exit 1
psql -X -q -d postgres -c "CREATE DATABASE $DB" && sql "CREATE EXTENSION stripe_billing" || exit 1
sql "SELECT stripe_billing.stripe_sync_pause()" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL stripe_billing.stripe_backfill(ARRAY['accounts'])" >"$work/backfill.log" 2>&1 ||
    { echo "FAIL  setup: the accounts' backfill failed: $(tail -2 "$work/backfill.log")"; exit 1; }
[ "$(sql "SELECT count(*) FROM stripe_billing.accounts")" = "$N" ] || { echo "FAIL  setup: $(sql "SELECT count(*) FROM stripe_billing.accounts") accounts learnt of $N"; exit 1; }
t0=$(now_ms)
sql "SELECT stripe_billing.stripe_sync_resume(), pg_reload_conf()" >/dev/null

# ---- first: every account's cursor, one request each
begin
pr=()
first_done() { sql "SELECT count(*) FROM stripe_billing.sync_state WHERE account IS NOT NULL AND lookback_after IS NOT NULL"; }
POLL=1 wait_until 240 eval '[ "$(first_done)" = "$N" ]' || pr+=(" $(first_done) of $N accounts have a cursor after 240 s")
t1=$(now_ms)
conclude "first" "the $N accounts' cursors taken in $(((t1 - t0) / 1000)) s ($RATE requests a second at most)" "${pr[@]}"

# ---- stats: the worker's writes reach the statistics while it runs
# (autovacuum and autoanalyze decide on them): each account's first poll
# updated its sync_state row
begin
pr=()
updated() { sql "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'stripe_billing.sync_state'::regclass"; }
POLL=0.5 wait_until 10 eval '[ "$(updated)" -ge "$N" ]' ||
    pr+=(" pg_stat_user_tables counts $(updated) updates of sync_state, not the $N or more the worker made")
conclude "stats" "sync_state's updates by the worker counted in pg_stat_user_tables while it runs: $(updated)" "${pr[@]}"

# ---- the accounts: 10 active (a webhook each), 1 deauthorized, 3 idle with an event
active=("${accounts[@]:0:ACTIVE}")
gone=${accounts[ACTIVE]}
idle=("${accounts[@]:ACTIVE+1:3}")
for k in "${!active[@]}"; do new_event "${active[k]}" $((k + 1)) >/dev/null || exit 1; done
client fetch --fake "$FAKE_URL" --key "$KEY" --out "$work/hooks.jsonl" --accounts "$(IFS=,; echo "${active[*]}")" --newest 1 >/dev/null &&
    fake POST "/_fake/accounts/$gone/deauthorize" | jq -c .event >>"$work/hooks.jsonl" &&
    client deliver --db "$DB" --events "$work/hooks.jsonl" --secret "$WHSEC" --connect-secret "$WHSEC" \
        --sessions 1 --duplicates 0 >"$work/hooks.json" || exit 1
[ "$(jq .raised "$work/hooks.json")" = 0 ] || { echo "FAIL  setup: webhooks raised: $(cat "$work/hooks.json")"; exit 1; }
t_gone=$(now_ms)
declare -A idle_event idle_made
for k in "${!idle[@]}"; do
    idle_event[$k]=$(new_event "${idle[k]}" $((100 + k))) || exit 1
    idle_made[$k]=$(now_ms)
done

# ---- active: events without webhooks, applied within two poll intervals
begin
pr=()
lat=()
sleep 1
for k in "${!active[@]}"; do
    made=$(now_ms)
    id=$(new_event "${active[k]}" $((200 + k))) || { pr+=(" the fake refused an event"); break; }
    if POLL=0.05 wait_until $((4 * POLL_S)) eval '[ -n "$(applied_at_ms "$id")" ]'; then
        l=$(($(applied_at_ms "$id") - made))
        lat+=("$l")
        [ "$l" -le $((2 * POLL_S * 1000)) ] || pr+=(" ${active[k]}: $l ms")
    else
        pr+=(" ${active[k]}: its event $id not applied in $((4 * POLL_S)) s")
    fi
    sleep 0.3
done
conclude "active" "events on $ACTIVE active accounts applied $(printf '%s\n' "${lat[@]}" | sort -n | paste -sd ' ') ms after they were made (limit $((2 * POLL_S * 1000)) ms)" "${pr[@]}"

# ---- idle: applied within the idle interval
begin
pr=()
lat=()
for k in "${!idle[@]}"; do
    if POLL=0.5 wait_until $((IDLE_S + 4 * POLL_S)) eval '[ -n "$(applied_at_ms "${idle_event[$k]}")" ]'; then
        l=$(($(applied_at_ms "${idle_event[$k]}") - idle_made[$k]))
        lat+=("$l")
        [ "$l" -le $(((IDLE_S + 3 * POLL_S) * 1000)) ] || pr+=(" ${idle[k]}: $l ms")
    else
        pr+=(" ${idle[k]}: its event not applied in $((IDLE_S + 4 * POLL_S)) s")
    fi
done
conclude "idle" "events on 3 idle accounts applied $(printf '%s\n' "${lat[@]}" | sort -n | paste -sd ' ') ms after they were made (limit: the idle interval and a cycle, $(((IDLE_S + 3 * POLL_S) * 1000)) ms)" "${pr[@]}"

# ---- idle cost: each idle account polled once an idle interval
begin
pr=()
POLL=1 wait_until $((2 * IDLE_S + 30)) eval '[ $(now_ms) -ge $((t1 + 2 * IDLE_S * 1000 + 5000)) ]'
fake GET "/_fake/requests?path=/v1/events&method=GET&since=$t0" >"$work/polls.json"
skip=$(printf '%s\n' "${active[@]}" "$gone" "${idle[@]}" | jq -R . | jq -s -c .)
read -r idle_n observed short long lo hi < <($PY - "$work/polls.json" "$skip" "$IDLE_S" "$POLL_S" <<'PY'
import collections, json, sys
polls, skip, idle, poll = json.load(open(sys.argv[1])), set(json.loads(sys.argv[2])), int(sys.argv[3]) * 1000, int(sys.argv[4]) * 1000
at = collections.defaultdict(list)
for r in polls:
    a = r.get("stripe_account")
    if a and a not in skip:
        at[a].append(r["received_at"])
# the first gap is drawn within the interval (the first polls spread out); the others are the interval
gaps = [b - a for t in at.values() for a, b in zip(sorted(t)[1:], sorted(t)[2:])]
print(len(at), sum(1 for t in at.values() if len(t) >= 3),
      sum(1 for g in gaps if g < idle - 1000), sum(1 for g in gaps if g > idle + 3 * poll),
      min(gaps, default=0), max(gaps, default=0))
PY
)
expected=$((N - ACTIVE - 1 - 3))
[ "$idle_n" = "$expected" ] || pr+=(" $idle_n idle accounts polled, not $expected")
[ "$observed" -ge $((expected / 4)) ] || pr+=(" only $observed accounts polled thrice (too few intervals seen)")
[ "$short" = 0 ] || pr+=(" $short intervals shorter than connect_idle_interval")
[ "$long" = 0 ] || pr+=(" $long intervals longer than connect_idle_interval and a cycle (three poll intervals)")
conclude "idle_cost" "$idle_n idle accounts; between polls of the $observed seen thrice: $lo to $hi ms (connect_idle_interval ${IDLE_S} s): one request per idle account per interval, $((3600 / IDLE_S)) an hour at this setting, 1 an hour by default" "${pr[@]}"

# ---- rate: every request the worker made (its User-Agent), a second at a time
begin
pr=()
fake GET "/_fake/requests?since=$t0" >"$work/requests.json"
read -r total peak < <($PY -c '
import bisect, json, sys
t = sorted(r["received_at"] for r in json.load(open(sys.argv[1]))
           if r["headers"].get("user-agent", "").startswith("stripe_billing/"))   # (the worker, not the test)
print(len(t), max((bisect.bisect_left(t, x + 1000) - i for i, x in enumerate(t)), default=0))' "$work/requests.json")
[ "$peak" -le "$RATE" ] || pr+=(" $peak requests within one second")
conclude "rate" "$total requests in $((($(now_ms) - t0) / 1000)) s, at most $peak within any second (limit $RATE)" "${pr[@]}"

# ---- deauthorized: never polled again
begin
pr=()
after=$(requests "$gone" "$((t_gone + 1000))")
[ "$after" = 0 ] || pr+=(" $after requests for $gone after its deauthorization")
[ -n "$(sql "SELECT deauthorized_at FROM stripe_billing.accounts WHERE id = '$gone'")" ] || pr+=(" accounts.deauthorized_at is not set")
conclude "deauthorized" "$gone: deauthorized_at set, no request in the $(((($(now_ms) - t_gone) / 1000))) s since" "${pr[@]}"

echo "connect_polling: $passed passed, $failed failed in $(($(date +%s) - began)) s"
[ "$failed" -eq 0 ]
