#!/usr/bin/env bash
# bench/checkout: 1,000 sequential stripe_create_checkout calls against the
# loopback fake Stripe, against the same 1,000 request bodies sent over one
# keep-alive connection by curl (all URLs in one invocation), same run.
#     bash bench/checkout.sh [calls, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
fake_pid=
trap 'cluster_stop "$work/pg"; [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null' EXIT
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'"
node test/fake_stripe/server.js --port 0 --key sk_test_bench --port-file "$work/fake.port" >"$work/fake.log" 2>&1 &
fake_pid=$!
for _ in $(seq 50); do [ -s "$work/fake.port" ] && break; sleep 0.1; done
fake="http://127.0.0.1:$(cat "$work/fake.port")"

psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION stripe_billing;
ALTER SYSTEM SET stripe_billing.api_key = 'sk_test_bench';
ALTER SYSTEM SET stripe_billing.api_base = '$fake';
SELECT pg_reload_conf(), pg_sleep(0.3);
SQL

ms() { echo $(( $(date +%s%N) / 1000000 )); }

# the extension: n calls, one session, one after another
t0=$(ms)
psql -X -q -At -v n="$n" >/dev/null <<'SQL'
SELECT count(*) FROM generate_series(1, :n) g,
  LATERAL stripe_billing.stripe_create_checkout('user_' || g, 'price_pro', 'https://app.example/ok',
                                                'https://app.example/cancel') c;
SQL
t1=$(ms)
sessions=$(curl -s "$fake/_fake/stats" | sed -n 's/.*"requests": *\([0-9]*\).*/\1/p')

# the baseline: the bodies the extension sent, replayed by curl over one
# keep-alive connection (new idempotency keys, so the fake does the work again)
curl -s "$fake/_fake/requests?path=/v1/checkout/sessions" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const r of JSON.parse(s)) console.log(r.raw_body)})' \
    >"$work/bodies"
args=()
i=0
while IFS= read -r body; do
    i=$((i + 1))
    [ $i -gt 1 ] && args+=(--next)
    args+=(-s -o /dev/null -X POST "$fake/v1/checkout/sessions" -H "Authorization: Bearer sk_test_bench"
           -H "Stripe-Version: 2025-03-31.basil" -H "Idempotency-Key: curl_$i" --data-raw "$body")
done <"$work/bodies"
before=$(curl -s "$fake/_fake/stats" | sed -n 's/.*"connections_opened": *\([0-9]*\).*/\1/p')
t2=$(ms)
curl "${args[@]}"
t3=$(ms)
after=$(curl -s "$fake/_fake/stats" | sed -n 's/.*"connections_opened": *\([0-9]*\).*/\1/p')

ext=$((t1 - t0)); raw=$((t3 - t2))
echo "stripe_create_checkout: $n calls in $ext ms ($(awk -v t=$ext -v n=$n 'BEGIN{printf "%.2f", t/n}') ms/call)"
echo "curl, one keep-alive connection ($((after - before - 1)) opened): $i requests in $raw ms ($(awk -v t=$raw -v n=$i 'BEGIN{printf "%.2f", t/n}') ms/request)"
echo "ratio: $(awk -v a=$ext -v b=$raw 'BEGIN{printf "%.3f", a/b}')x  (target <= 1.3x)"
[ "$i" = "$n" ] || { echo "expected $n recorded request bodies, found $i (fake requests: $sessions)"; exit 1; }
