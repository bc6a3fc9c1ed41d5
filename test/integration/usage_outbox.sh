#!/usr/bin/env bash
# The usage outbox against the loopback fake Stripe: Billing Meter Events v2
# (a session, then batches of 100 as JSON to the meter event stream), rows
# Stripe cannot take kept out of the way of the others, a batch Stripe
# refuses sent again row by row (v1) so only the row at fault fails,
# transient failures backing off, an expired session made again, and
# 10,000 rows through the stream with 50 ms latency and 5% injected
# failures (some after the request got through): each row counted once at
# the fake, none lost.
#
# Starts its own fake and throwaway cluster (needs the installed extension):
#     bash test/integration/usage_outbox.sh
# One PASS/FAIL line per check; exits 0 only when every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
. test/lib/fake_stripe.sh

key="sk_test_usage$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
work_begin usage
fake_start "$work" "$key" || exit 1
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.meter_events_base = '$FAKE_URL'" || exit 1
export PGDATABASE=usage_outbox
createdb usage_outbox

sql() { psql -X -At -q -v ON_ERROR_STOP=1 -c "$1"; }
fake() { curl -sS -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "$FAKE_URL$2"; }
. test/lib/verdicts.sh
# the recorded requests to a path after seq MARK
since() { fake GET "/_fake/requests?path=$2" | jq --argjson m "$1" '[.[] | select(.seq > $m)]'; }
mark() { fake GET /_fake/stats | jq .requests; }

sql "CREATE EXTENSION stripe_billing;
     SELECT stripe_billing.stripe_link_customer('u_meter', 'cus_meter');" >/dev/null
fake POST /_fake/objects '{"object": {"id": "cus_meter", "object": "customer"}}' >/dev/null
inst=$(sql "SELECT stripe_billing.stripe_installation_id()")
report() {   # report N [USER] [OCCURRED_AT SQL]: N rows; prints first|last id
    sql "SELECT min(id) || '|' || max(id) FROM (SELECT stripe_billing.stripe_report_usage('${2:-u_meter}', 'api_calls', g,
         ${3:-now()}) AS id FROM generate_series(1, $1) g) s"
}
status() { sql "SELECT pending || ' ' || waiting || ' ' || sent || ' ' || failed FROM stripe_billing.usage_status"; }

###########################################################################
# 1. The v2 requests
###########################################################################
m=$(mark)
IFS='|' read -r first last <<<"$(report 3)"
eq "$(sql "SELECT stripe_billing.stripe_send_usage()")" 3 "rows sent"
since "$m" /v2/ >"$work/recs.json"
eq "$(jq -r '[.[] | "\(.method) \(.path) \(.status)"] | join(",")' "$work/recs.json")" \
   "POST /v2/billing/meter_event_session 200,POST /v2/billing/meter_event_stream 200" "requests sent"
eq "$(jq -r '.[1].headers["content-type"]' "$work/recs.json")" application/json "the stream's Content-Type"
expected=$(sql "SELECT jsonb_agg(jsonb_build_object('event_name', 'api_calls', 'identifier', 'sb_$inst' || '_' || id,
                  'payload', jsonb_build_object('stripe_customer_id', 'cus_meter', 'value', value::text),
                  'timestamp', to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')) ORDER BY id)
                FROM stripe_billing.usage_outbox WHERE id BETWEEN $first AND $last")
eq "$(jq -cS '.[1].json' "$work/recs.json")" "$(jq -cS '{events: .}' <<<"$expected")" "the stream's body (every event field)"
eq "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NOT NULL AND last_error IS NULL")" 3 "rows marked sent"
eq "$(fake GET /_fake/meter_events | jq -r '[.[] | "\(.api):\(.identifier)"] | join(",")')" \
   "v2:sb_${inst}_$first,v2:sb_${inst}_$((first + 1)),v2:sb_${inst}_$last" "meter events the fake stored"
verdict "usage goes as one meter event session, then a JSON batch to the meter event stream (event_name, identifier sb_<installation>_<id>, ISO timestamp, customer and value) authenticated by the session; rows marked sent"

# one session (the token lives in the backend): a second send makes no new
# session; after the fake expires it, the stream's 401 makes a new one
report 4 >/dev/null
m=$(mark)
out=$(psql -X -At -q -v ON_ERROR_STOP=1 <<SQL
SELECT stripe_billing.stripe_send_usage(1);
SELECT stripe_billing.stripe_send_usage(1);
\\! curl -sS -X POST $FAKE_URL/_fake/meter_sessions/expire >/dev/null
SELECT stripe_billing.stripe_send_usage(2);
SQL
)
eq "$(tr '\n' ' ' <<<"$out")" "1 1 2 " "rows sent by the three calls"
eq "$(since "$m" /v2/ | jq -r '[.[] | "\(.path | sub("/v2/billing/"; "")) \(.status)"] | join(",")')" \
   "meter_event_session 200,meter_event_stream 200,meter_event_stream 200,meter_event_stream 401,meter_event_session 200,meter_event_stream 200" "requests"
verdict "a session's token is kept between calls (no new session for the second send); one Stripe says expired (401 billing_meter_event_session_expired) is made again and the batch sent once more"

###########################################################################
# 2. Nothing blocks the sendable rows
###########################################################################
sql "DELETE FROM stripe_billing.usage_outbox" >/dev/null
report 2 u_nobody >/dev/null
report 1 u_meter "now() - interval '36 days'" >/dev/null
IFS='|' read -r first last <<<"$(report 250)"
m=$(mark)
# (the rows without a customer wait a second: the send and the looks at the
# rows run in one session, statements apart; clients apart, on a loaded
# machine, the second could be over and the rows no longer waiting)
out=$(psql -X -At -q -v ON_ERROR_STOP=1 2>&1 <<'SQL'
SELECT stripe_billing.stripe_send_usage(250);
SELECT pending || ' ' || waiting || ' ' || sent || ' ' || failed FROM stripe_billing.usage_status;
SELECT count(*) FROM stripe_billing.usage_outbox WHERE failed_at IS NOT NULL AND last_error LIKE '%older than the 35 days%';
SELECT count(*) FROM stripe_billing.usage_outbox
 WHERE user_ref = 'u_nobody' AND next_attempt_at > now() AND last_error LIKE '%no Stripe customer yet%';
SQL
)
IFS=$'\n' read -r -d '' sent1 st old nobody <<<"$out"
eq "$sent1" 250 "rows sent by the first call (max_rows 250)"
eq "$(since "$m" /v2/billing/meter_event_stream | jq -r '[.[] | (.json.events | length)] | join(",")')" "100,100,50" "events per stream request"
eq "$st" "2 2 250 1" "usage_status (pending waiting sent failed)"
[ "$old" = 1 ] || bad "the 36-day-old row is not failed with the reason"
[ "$nobody" = 2 ] || bad "the rows without a customer do not wait with the reason"
verdict "rows Stripe cannot take first (no customer yet: they wait; 36 days old: failed), then 250 sendable ones: every sendable row is sent in the first call, in batches of 100"

# a batch Stripe refuses (an event 10 minutes ahead) goes again row by row
sql "DELETE FROM stripe_billing.usage_outbox" >/dev/null
report 4 >/dev/null
IFS='|' read -r ahead _ <<<"$(report 1 u_meter "now() + interval '10 minutes'")"
report 3 >/dev/null
m=$(mark)
eq "$(sql "SELECT stripe_billing.stripe_send_usage()")" 7 "rows sent"
eq "$(since "$m" /v | jq -r '[.[] | "\(.path | sub("/v[12]/billing/"; "")) \(.status)"] | unique | join(",")')" \
   "meter_event_session 200,meter_event_stream 400,meter_events 200,meter_events 400" "requests (unique)"
eq "$(sql "SELECT failed_at IS NOT NULL, last_error LIKE 'Stripe API: %' FROM stripe_billing.usage_outbox WHERE id = $ahead")" "t|t" \
   "the row 10 minutes ahead (failed, with Stripe's message)"
eq "$(status)" "0 0 7 1" "usage_status"
verdict "a batch Stripe refuses (400) is sent again row by row through v1: the 7 good rows are sent, the one at fault fails with Stripe's message ($(sql "SELECT last_error FROM stripe_billing.usage_outbox WHERE id = $ahead"))"

# transient failures wait, then go.  The backoff is a second: the send, the
# look at the rows left and the second send run in one session, statements
# apart, not processes apart (on a loaded machine, starting three clients
# could take longer than the backoff)
sql "DELETE FROM stripe_billing.usage_outbox" >/dev/null
report 150 >/dev/null
fake POST /_fake/faults '{"rules": [{"kind": "503", "path": "/v2/billing/meter_event_stream", "count": 1}]}' >/dev/null
out=$(psql -X -At -q -v ON_ERROR_STOP=1 2>&1 <<'SQL'
SELECT stripe_billing.stripe_send_usage();
SELECT count(*) || ':' || min(attempts) || ':' || bool_and(next_attempt_at > now()) || ':' || bool_and(last_error LIKE 'meter event stream: %')
  FROM stripe_billing.usage_outbox WHERE sent_at IS NULL;
SELECT stripe_billing.stripe_send_usage();
SQL
)
fake DELETE /_fake/faults >/dev/null
IFS=$'\n' read -r -d '' sent1 left sent2 <<<"$out"
eq "$sent1" 50 "rows sent (one of two batches answered 503)"
eq "$left" "100:1:true:true" "rows left (count:attempts:waiting:error)"
eq "$sent2" 0 "rows sent at once again (they wait)"
due() { [ "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NULL AND next_attempt_at <= now()")" = 100 ]; }
wait_until 30 due || bad "the rows were not due again 30 s after their 1 s backoff"
eq "$(sql "SELECT stripe_billing.stripe_send_usage()")" 100 "rows sent after the backoff"
verdict "a batch answered 503 waits (attempts 1, next_attempt_at, the error) and is sent once its backoff is over"

###########################################################################
# 3. 10,000 rows, 50 ms latency, 5% failures
###########################################################################
sql "DELETE FROM stripe_billing.usage_outbox" >/dev/null
fake POST /_fake/reset '{}' >/dev/null
fake POST /_fake/objects '{"object": {"id": "cus_meter", "object": "customer"}}' >/dev/null
fake POST /_fake/latency '{"ms": 50}' >/dev/null
fake POST /_fake/faults '{"rules": [
    {"kind": "500", "path": "/v2/billing/meter_event_stream", "rate": 0.025, "seed": 3},
    {"kind": "after_reset", "path": "/v2/billing/meter_event_stream", "rate": 0.025, "seed": 4}]}' >/dev/null
IFS='|' read -r first last <<<"$(report 10000)"
t0=$(date +%s%N)
calls=0
deadline=$(($(now_ms) + 300000))
while [ "$(sql "SELECT pending FROM stripe_billing.usage_status")" != 0 ] && [ "$(now_ms)" -lt "$deadline" ]; do
    sql "SELECT stripe_billing.stripe_send_usage(10000)" >/dev/null
    calls=$((calls + 1))
    # (the rows of a failed batch wait a second or more before their next try)
    [ "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NULL AND next_attempt_at <= now()")" = 0 ] &&
        [ "$(sql "SELECT pending FROM stripe_billing.usage_status")" != 0 ] && sleep 0.3
done
ms=$((($(date +%s%N) - t0) / 1000000))
fake DELETE /_fake/faults >/dev/null
fake DELETE /_fake/latency >/dev/null
stats=$(fake GET /_fake/meter_events/stats)
faulted=$(fake GET '/_fake/requests?path=/v2/billing/meter_event_stream' | jq -r '[.[] | .status | tostring] | group_by(.) | map("\(.[0])=\(length)") | join(" ")')
echo "      10,000 rows in $ms ms over $calls calls; stream answers: $faulted; fake: $stats"
eq "$(status)" "0 0 10000 0" "usage_status"
eq "$(jq .stored <<<"$stats")" 10000 "meter events stored by the fake"
fake GET /_fake/meter_events | jq -r '.[].identifier' | sort >"$work/stored"
seq "$first" "$last" | sed "s/^/sb_${inst}_/" | sort >"$work/wanted"
cmp -s "$work/stored" "$work/wanted" || bad "the stored identifiers are not exactly sb_${inst}_$first..$last once each ($(comm -3 "$work/stored" "$work/wanted" | head -3 | paste -sd ' '))"
[[ " $faulted " == *" 500="* && " $faulted " == *" after_reset="* ]] || bad "the fake injected no 500 or no after_reset: the check would prove nothing"
[ "$(jq .duplicates <<<"$stats")" -gt 0 ] || bad "no batch was sent twice after a reset (duplicates 0): the check would prove nothing"
verdict "10,000 rows through the stream with 50 ms latency and 5% failures (half after the request got through): each stored once by identifier, none lost, all marked sent ($(jq .duplicates <<<"$stats") resent events dropped as duplicates)"

echo "$checks checks, $failed failed"
[ "$failed" -eq 0 ]
