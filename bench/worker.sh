#!/usr/bin/env bash
# bench/worker: the background worker catching up on 10,000 events waiting
# in the loopback fake Stripe, against applying the same events (fetched
# beforehand) directly, 100 a transaction with stripe_apply_events as the
# worker applies a page, in another database of the same cluster, three
# rounds; then the steady-state lag from an event appearing in the fake to
# its commit.
#     bash bench/worker.sh [events, default 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
trap 'cluster_stop "$work/pg"; fake_stop' EXIT
fake_start "$work" sk_test_bench
fake=$FAKE_URL
# (the fake packs many events into each second of created time: a 5-minute
# lookback window would hold whole batches, where Stripe's holds 5 minutes)
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.poll_interval = '200ms'" \
    "stripe_billing.api_key = 'sk_test_bench'" "stripe_billing.api_base = '$fake'" \
    "stripe_billing.poll_lookback = '2s'" "stripe_billing.backfill_on_start = off"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Waits until the worker has applied N events, in one session reading its
# own counter (a psql or a count(*) per check would compete with the worker).
wait_applied() {
    PGOPTIONS="-c bench.n=$1" psql -X -q >/dev/null <<'SQL'
DO $$
BEGIN
  WHILE (SELECT events_applied FROM stripe_billing.sync_state) < current_setting('bench.n')::bigint LOOP
    PERFORM pg_sleep(0.005);
  END LOOP;
END $$;
SQL
}

# the worker starts from "now": no events yet, so it takes every event after
psql -X -q -c "CREATE EXTENSION stripe_billing" >/dev/null
for _ in $(seq 100); do
    [ "$(psql -X -At -c "SELECT start_from <> 'now' FROM stripe_billing.sync_state")" = t ] && break; sleep 0.1
done
sleep 1
# A warm-up batch, then three rounds, each: a batch of n events appended to
# the fake and the worker's catch-up timed, then the same n events applied
# directly in another database; the ratio is the median of the rounds'.
rounds=3
applied=0
worker_times=(); direct_times=(); ratios=()
# the direct side's database: it takes every batch too, so both sides'
# tables grow alike from round to round
createdb direct
psql -X -q -d direct -c "CREATE EXTENSION stripe_billing; SELECT stripe_billing.stripe_sync_pause();" >/dev/null
# a warm-up batch first (the fake's JIT, the worker's caches), not timed
echo "== warm-up: $((n / 5)) events"
curl -s -X POST -H 'Content-Type: application/json' \
    -d "{\"generate\": {\"count\": $((n / 5)), \"customers\": 200, \"per_second\": 10, \"seed\": 99, \"start_created\": $(date +%s)}}" \
    "$fake/_fake/events" >/dev/null
applied=$((n / 5))
wait_applied "$applied"
for round in $(seq $rounds); do
    echo "== round $round: $n events appended to the fake; the worker catches up"
    # (the fake appends the whole batch at once: timing starts when it is there)
    curl -s -X POST -H 'Content-Type: application/json' \
        -d "{\"generate\": {\"count\": $n, \"customers\": 200, \"per_second\": 10, \"seed\": $round, \"start_created\": $(date +%s)}}" \
        "$fake/_fake/events" >/dev/null
    applied=$((applied + n))
    t0=$(now_ms)
    wait_applied "$applied"
    worker_ms=$(( $(now_ms) - t0 ))

    echo "== round $round: the same events applied directly with stripe_apply_events, in another database"
    # fetch the newest n events (this batch) into a table, outside the timing
    PGOPTIONS="-c fetch.max=$n" psql -X -q -d direct -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DROP TABLE IF EXISTS fetched;
\i test/lib/fetch_events.sql
SQL
    t2=$(now_ms)
    # a transaction per 100 events, oldest first, as the worker commits a
    # page at a time; applied the way the worker applies a page (one
    # stripe_apply_events call: one subtransaction, features derived at its end)
    psql -X -q -d direct >/dev/null <<'SQL'
DO $$
DECLARE
  total bigint := (SELECT count(*) FROM fetched);
BEGIN
  FOR b IN 0..(total - 1) / 100 LOOP
    PERFORM count(*) FROM stripe_billing.stripe_apply_events(ARRAY(
       SELECT event FROM fetched WHERE n > b * 100 AND n <= (b + 1) * 100 ORDER BY n), 'poll');
    COMMIT;
  END LOOP;
END $$;
SQL
    direct_ms=$(( $(now_ms) - t2 ))
    r=$(awk -v w=$worker_ms -v d=$direct_ms 'BEGIN{printf "%.2f", d/w}')
    worker_times+=("$worker_ms"); direct_times+=("$direct_ms"); ratios+=("$r")
    echo "   worker $worker_ms ms, direct $direct_ms ms: $r"
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( (${#@} + 1) / 2 ))p"; }
worker_ms=$(median "${worker_times[@]}")
direct_ms=$(median "${direct_times[@]}")

echo "== steady-state lag: one event appended, time until it is committed (poll_interval 200 ms)"
lags=()
for i in $(seq 10); do
    before=$(psql -X -At -c "SELECT events_applied FROM stripe_billing.sync_state")
    s=$(now_ms)
    curl -s -X POST -H 'Content-Type: application/json' \
        -d "{\"events\": [{\"id\": \"evt_lag_$i\", \"type\": \"customer.updated\", \"created\": $(date +%s), \"data\": {\"object\": {\"id\": \"cus_lag\", \"object\": \"customer\"}}}]}" \
        "$fake/_fake/events" >/dev/null
    wait_applied $((before + 1))
    lags+=($(( $(now_ms) - s )))
    sleep 0.$((RANDOM % 3))
done
median=$(printf '%s\n' "${lags[@]}" | sort -n | sed -n '5p;6p' | awk '{s+=$1} END {printf "%d", s/NR}')

echo
echo "worker catch-up: $n events in $worker_ms ms ($(awk -v n=$n -v t=$worker_ms 'BEGIN{printf "%.0f", n*1000/t}') events/s, median of $rounds)"
echo "direct stripe_apply_events: $n events in $direct_ms ms ($(awk -v n=$n -v t=$direct_ms 'BEGIN{printf "%.0f", n*1000/t}') events/s, median of $rounds)"
echo "ratio worker/direct rate: $(median "${ratios[@]}"), median of the rounds (${ratios[*]}; target >= 0.6)"
echo "lag, ms: ${lags[*]}; median $median ms  (target <= poll_interval + 100 = 300 ms)"
psql -X -At -c "SELECT format('ledger: %s events, %s applied', count(*), count(*) FILTER (WHERE outcome = 'applied')) FROM stripe_billing.events"
