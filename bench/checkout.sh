#!/usr/bin/env bash
# bench/checkout: 1,000 sequential stripe_create_checkout calls against the
# loopback fake Stripe, against the same 1,000 request bodies sent over one
# keep-alive connection by curl (all URLs in one invocation), same run:
# a warm-up round, then seven rounds of both back to back; the median ratio.
#     bash bench/checkout.sh [calls, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
trap 'cluster_stop "$work/pg"; fake_stop' EXIT
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'"
fake_start "$work" sk_test_bench
fake=$FAKE_URL

psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION stripe_billing;
ALTER SYSTEM SET stripe_billing.api_key = 'sk_test_bench';
ALTER SYSTEM SET stripe_billing.api_base = '$fake';
SELECT pg_reload_conf(), pg_sleep(0.3);
SQL

ms() { echo $(( $(date +%s%N) / 1000000 )); }

# the extension: n calls, one after another, in one session that has made
# a few calls already (its connection to the fake, its plans): timed inside
# the session, as an application's pooled connection would see them
ext_round() {
    psql -X -q -At -v n="$n" -v round="$1" <<'SQL' | tail -1
SELECT count(*) FROM generate_series(1, 20) g,
  LATERAL stripe_billing.stripe_create_checkout('warm_' || :round || '_' || g, 'price_pro',
                                                'https://app.example/ok', 'https://app.example/cancel') c \g /dev/null
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FROM generate_series(1, :n) g,
  LATERAL stripe_billing.stripe_create_checkout('user_' || :round || '_' || g, 'price_pro',
                                                'https://app.example/ok', 'https://app.example/cancel') c \g /dev/null
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000);
SQL
}

# the baseline: the bodies the extension sent in round 1, replayed by curl
# over one keep-alive connection (new idempotency keys: the fake works again)
curl_args() {
    curl -s "$fake/_fake/requests?path=/v1/checkout/sessions" |
        node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const r of JSON.parse(s).slice(0, '"$n"')) console.log(r.raw_body)})' \
        >"$work/bodies"
    args=()
    i=0
    while IFS= read -r body; do
        i=$((i + 1))
        [ $i -gt 1 ] && args+=(--next)
        args+=(-s -o /dev/null -X POST "$fake/v1/checkout/sessions" -H "Authorization: Bearer sk_test_bench"
               -H "Stripe-Version: 2025-03-31.basil" -H "Idempotency-Key: curl_${1}_$i" --data-raw "$body")
    done <"$work/bodies"
}
# a warm-up round (the fake's JIT), then seven rounds, each timing the
# extension and curl back to back; the ratio is the median of the rounds'
# ratios (a pair shares the fake's state and the machine's mood)
rounds=7
ext_times=(); raw_times=(); ratios=()
for round in $(seq 0 $rounds); do
    e=$(ext_round $round)
    curl_args "$round"
    before=$(curl -s "$fake/_fake/stats" | sed -n 's/.*"connections_opened": *\([0-9]*\).*/\1/p')
    t0=$(ms)
    curl "${args[@]}"
    c=$(( $(ms) - t0 ))
    after=$(curl -s "$fake/_fake/stats" | sed -n 's/.*"connections_opened": *\([0-9]*\).*/\1/p')
    if [ "$round" -eq 0 ]; then
        echo "warm-up: extension $e ms, curl $c ms"
        continue
    fi
    r=$(awk -v a="$e" -v b="$c" 'BEGIN{printf "%.3f", a/b}')
    ext_times+=("$e"); raw_times+=("$c"); ratios+=("$r")
    echo "round $round: extension $e ms, curl $c ms over $((after - before - 1)) connection(s): ${r}x"
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p"; }
ext=$(median "${ext_times[@]}")
raw=$(median "${raw_times[@]}")

echo "stripe_create_checkout: $n calls in $ext ms ($(awk -v t=$ext -v n=$n 'BEGIN{printf "%.2f", t/n}') ms/call, median)"
echo "curl, one keep-alive connection: $i requests in $raw ms ($(awk -v t=$raw -v n=$i 'BEGIN{printf "%.2f", t/n}') ms/request, median)"
echo "ratio: $(median "${ratios[@]}")x, median of the rounds (range $(printf '%s\n' "${ratios[@]}" | sort -n | head -1)-$(printf '%s\n' "${ratios[@]}" | sort -n | tail -1)x; target <= 1.3x)"
[ "$i" = "$n" ] || { echo "expected $n request bodies, found $i"; exit 1; }
