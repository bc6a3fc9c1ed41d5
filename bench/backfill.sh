#!/usr/bin/env bash
# bench/backfill: objects applied per second by CALL stripe_backfill() from
# the loopback fake Stripe holding an existing account (2,000 customers,
# 2,000 subscriptions of which 100 have 15 items, 50 products, 100 prices,
# invoices, entitlements), against curl fetching exactly the same requests
# (as the fake recorded them) on one keep-alive connection without applying
# anything: the ratio is how close the backfill comes to the network and the
# fake alone.  max_requests_per_second is lifted (10000) on both sides.
# A warm-up round, then three timed rounds, each into a fresh database; the
# medians are printed.  ROUNDS="0 1" runs fewer; SHOW_KINDS=1 prints each
# kind's pages, requests and time.
#     bash bench/backfill.sh [customers, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
customers=${1:-2000}
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
key=sk_test_bench_backfill
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
chmod 755 "$work"
trap 'cluster_stop "$work/pg"; fake_stop' EXIT
fake_start "$work" "$key"
cluster_start "$work/pg" "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.max_requests_per_second = 10000"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }

curl -sS -X POST -H 'Content-Type: application/json' --data "{\"customers\": $customers,
    \"subscriptions\": $customers, \"wide_subscriptions\": $((customers / 20)), \"wide_items\": 15,
    \"products\": 50, \"prices\": 100, \"canceled\": $((customers / 10)), \"entitlements_per_customer\": 2,
    \"invoices_per_subscription\": 1, \"seed\": 7}" "$FAKE_URL/_fake/account" >/dev/null

backfill_times=(); curl_times=(); ratios=()
for round in ${ROUNDS:-0 1 2 3}; do
    dropdb --if-exists bench_backfill && createdb bench_backfill
    psql -X -q -d bench_backfill -c "CREATE EXTENSION stripe_billing" >/dev/null
    curl -sS -X DELETE "$FAKE_URL/_fake/requests" >/dev/null
    t0=$(now_ms)
    psql -X -q -d bench_backfill -c "CALL stripe_billing.stripe_backfill()" 2>/dev/null
    backfill_ms=$(($(now_ms) - t0))
    objects=$(psql -X -At -d bench_backfill -c "SELECT sum(objects) FROM stripe_billing.backfill_state")
    [ -z "${SHOW_KINDS:-}" ] || psql -X -d bench_backfill -c "SELECT kind, pages, objects, requests, finished_at - started_at AS took FROM stripe_billing.backfill_state ORDER BY ordinal"

    # the same requests, on one connection, nothing applied
    curl -sS "$FAKE_URL/_fake/requests?path=/v1/" | jq -r --arg base "$FAKE_URL" '.[] |
        "url = \"\($base)\(.path)?\(.query | to_entries | map(if (.value | type) == "object"
            then (.key as $k | .value | to_entries | map("\($k)[\(.key)]=\(.value | tostring | @uri)") | join("&"))
            else "\(.key)=\(.value | tostring | @uri)" end) | join("&"))\"\noutput = \"/dev/null\""' \
        >"$work/curl.conf"
    requests=$(grep -c '^url' "$work/curl.conf")
    t1=$(now_ms)
    curl -sS -g -u "$key:" -K "$work/curl.conf"
    curl_ms=$(($(now_ms) - t1))

    r=$(awk -v b="$backfill_ms" -v c="$curl_ms" 'BEGIN { printf "%.2f", c / b }')
    if [ "$round" = 0 ]; then
        echo "warm-up: $objects objects, $requests requests; backfill $backfill_ms ms, curl $curl_ms ms"
        continue
    fi
    backfill_times+=("$backfill_ms"); curl_times+=("$curl_ms"); ratios+=("$r")
    echo "round $round: $objects objects in $requests requests; backfill $backfill_ms ms" \
        "($(awk -v o="$objects" -v t="$backfill_ms" 'BEGIN { printf "%d", o * 1000 / t }') objects/s)," \
        "curl $curl_ms ms ($(awk -v o="$objects" -v t="$curl_ms" 'BEGIN { printf "%d", o * 1000 / t }') objects/s): ratio $r"
done
b=$(median "${backfill_times[@]}"); c=$(median "${curl_times[@]}")
echo "median: backfill $b ms ($(awk -v o="$objects" -v t="$b" 'BEGIN { printf "%d", o * 1000 / t }') objects/s)," \
    "curl $c ms ($(awk -v o="$objects" -v t="$c" 'BEGIN { printf "%d", o * 1000 / t }') objects/s)"
echo "ratio (backfill objects/s over curl's, target >= 0.5): $(median "${ratios[@]}")"
