#!/usr/bin/env bash
# bench/usage: usage rows per second sent by stripe_send_usage (Billing
# Meter Events v2: batches of 100, stripe_billing.usage_concurrency at once)
# to the loopback fake Stripe answering every request 50 ms late, against
# the same number of meter events posted by curl one per request
# (POST /v1/billing/meter_events on one keep-alive connection: the way usage
# was sent before), same fake, same latency, same run.  A warm-up round,
# then three timed rounds of ours; the curl baseline once (its rate is the
# latency's: one request per round trip).  Prints the medians and the ratio
# (target >= 50), and whether 10,000 rows took at most 10 s.
#     bash bench/usage.sh [rows, default 10000] [latency ms, default 50]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000}
latency=${2:-50}
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
key=sk_test_bench_usage
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
chmod 755 "$work"
trap 'cluster_stop "$work/pg"; fake_stop' EXIT
fake_start "$work" "$key"
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.meter_events_base = '$FAKE_URL'"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }
fake() { curl -sS -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "$FAKE_URL$2" >/dev/null; }

createdb bench_usage
export PGDATABASE=bench_usage
psql -X -q -c "CREATE EXTENSION stripe_billing" -c "SELECT stripe_billing.stripe_link_customer('bench_user', 'cus_bench')" >/dev/null
fake POST /_fake/objects '{"object": {"id": "cus_bench", "object": "customer"}}'
fake POST /_fake/latency "{\"ms\": $latency}"

ours=()
for round in 0 1 2 3; do
    psql -X -q -c "SELECT stripe_billing.stripe_report_usage('bench_user', 'bench_calls', g) FROM generate_series(1, $rows) g" >/dev/null
    t0=$(now_ms)
    # one session, as the worker: the meter event session is made once
    psql -X -q -At >/dev/null <<SQL
DO \$\$ BEGIN
  WHILE (SELECT pending FROM stripe_billing.usage_status) > 0 LOOP
    PERFORM stripe_billing.stripe_send_usage($rows);
  END LOOP;
END \$\$;
SQL
    ms=$(($(now_ms) - t0))
    if [ "$round" = 0 ]; then echo "warm-up: $rows rows in $ms ms"; continue; fi
    ours+=("$ms")
    echo "round $round: $rows rows in $ms ms ($(awk -v n="$rows" -v t="$ms" 'BEGIN { printf "%.0f", n * 1000 / t }') rows/s)"
done
[ "$(psql -X -At -c "SELECT failed FROM stripe_billing.usage_status")" = 0 ] || { echo "rows failed: the run is not valid"; exit 1; }

# the old way: one request per event, on one keep-alive connection
for ((i = 1; i <= rows; i++)); do
    printf 'url = "%s/v1/billing/meter_events"\nuser = "%s:"\ndata = "event_name=bench_calls&identifier=bench_curl_%s&payload[stripe_customer_id]=cus_bench&payload[value]=1"\noutput = "/dev/null"\n' \
        "$FAKE_URL" "$key" "$i"
    [ "$i" -lt "$rows" ] && echo next
done >"$work/curl.conf"
t0=$(now_ms)
curl -sS -g -K "$work/curl.conf"
curl_ms=$(($(now_ms) - t0))
stored=$(curl -sS "$FAKE_URL/_fake/meter_events/stats" | jq .stored)
[ "$stored" = $((rows * 4 + rows)) ] || { echo "the fake stored $stored events, expected $((rows * 5)): the run is not valid"; exit 1; }

m=$(median "${ours[@]}")
echo "median: stripe_send_usage $rows rows in $m ms ($(awk -v n="$rows" -v t="$m" 'BEGIN { printf "%.0f", n * 1000 / t }') rows/s); curl one per request: $rows events in $curl_ms ms ($(awk -v n="$rows" -v t="$curl_ms" 'BEGIN { printf "%.1f", n * 1000 / t }') events/s); latency $latency ms"
echo "ratio (rows/s over curl's, target >= 50): $(awk -v a="$curl_ms" -v b="$m" 'BEGIN { printf "%.0f", a / b }')"
[ "$rows" = 10000 ] && echo "10,000 rows within 10 s: $([ "$m" -le 10000 ] && echo yes || echo no) ($m ms)"
