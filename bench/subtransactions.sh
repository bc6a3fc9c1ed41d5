#!/usr/bin/env bash
# bench/subtransactions: does the time to apply N events in one transaction
# grow linearly?  5,000 and 20,000 events of the loopback fake (fetched
# beforehand), each size applied in one transaction by stripe_apply_events
# (one subtransaction) and by a loop of stripe_apply_event (one per event),
# and caught up by CALL stripe_sync_now() (a transaction per page); a fresh
# database for each, three rounds, medians.  Prints the time per event at
# each size and the ratio (20,000's per event / 5,000's: 1.0 is linear),
# and the transaction ids each took.
#     bash bench/subtransactions.sh [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
chmod 755 "$work"
trap 'cluster_stop "$work/pg"; fake_stop; rm -rf "$work"' EXIT
fake_start "$work" sk_test_bench
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = 'sk_test_bench'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.backfill_on_start = off" "stripe_billing.poll_lookback = '2s'" \
    "shared_buffers = 512MB" "max_wal_size = '10GB'"
start=$(($(date +%s) - 7200))
generate() {
    curl -s -X POST -H 'Content-Type: application/json' \
        -d "{\"generate\": {\"count\": $1, \"customers\": 200, \"per_second\": 10, \"seed\": $2, \"start_created\": $3}}" \
        "$FAKE_URL/_fake/events" >/dev/null
}
sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# CALL stripe_sync_now() in a fresh database, the cursor before the first
# event: prints "milliseconds transaction-ids events"
sync_now() {
    local db=s_$RANDOM t0 t1 x0 x1 got
    createdb "$db"
    sql "$db" "CREATE EXTENSION stripe_billing; SELECT stripe_billing.stripe_sync_pause();
               SELECT stripe_billing.stripe_sync_start_from(to_timestamp($start - 1)::text); CHECKPOINT" >/dev/null
    x0=$(sql "$db" "SELECT pg_current_xact_id()")
    t0=$(now_ms)
    # (the first call finds the oldest event and applies it; the second the rest)
    sql "$db" "CALL stripe_billing.stripe_sync_now()" >/dev/null
    sql "$db" "CALL stripe_billing.stripe_sync_now()" >/dev/null
    t1=$(now_ms)
    x1=$(sql "$db" "SELECT pg_current_xact_id()")
    got=$(sql "$db" "SELECT count(*) FILTER (WHERE outcome = 'applied') FROM stripe_billing.events")
    dropdb "$db"
    echo "$((t1 - t0)) $((x1 - x0 - 1)) $got"
}
declare -A ms ids
# stripe_sync_now reads the fake's whole list: 5,000 events in it, then 20,000
generate 5000 3 "$start"
read -r t x got < <(sync_now)
[ "$got" = 5000 ] || { echo "bench/subtransactions: stripe_sync_now applied $got of 5000 events"; exit 1; }
ms[sync_now.5000]=$t; ids[sync_now.5000]=$x
echo "CALL stripe_sync_now(), 5000 events: $t ms, $x transaction ids"
generate 15000 4 $((start + 1000))
read -r t x got < <(sync_now)
[ "$got" = 20000 ] || { echo "bench/subtransactions: stripe_sync_now applied $got of 20000 events"; exit 1; }
ms[sync_now.20000]=$t; ids[sync_now.20000]=$x
echo "CALL stripe_sync_now(), 20000 events: $t ms, $x transaction ids"
createdb source
sql source "CREATE EXTENSION stripe_billing; SELECT stripe_billing.stripe_sync_pause()" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d source >/dev/null <<'SQL'
\i test/lib/fetch_events.sql
SQL
# Applies the first $2 events in a fresh database the way $1 says; prints
# "milliseconds transaction-ids".
apply() {
    local how=$1 n=$2 db=b_$RANDOM t0 t1 x0 x1
    createdb "$db"
    sql "$db" "CREATE EXTENSION stripe_billing; SELECT stripe_billing.stripe_sync_pause()" >/dev/null
    psql -X -q -d source -c "COPY (SELECT n, event FROM fetched WHERE n <= $n) TO STDOUT" |
        psql -X -q -d "$db" -c "CREATE TABLE fetched (n bigint, event jsonb); COPY fetched FROM STDIN"
    sql "$db" "CHECKPOINT" >/dev/null
    x0=$(sql "$db" "SELECT pg_current_xact_id()")
    t0=$(now_ms)
    case "$how" in
        apply_events)
            sql "$db" "SELECT count(*) FROM stripe_billing.stripe_apply_events(ARRAY(SELECT event FROM fetched ORDER BY n), 'poll')" >/dev/null ;;
        apply_event)
            sql "$db" "SELECT count(stripe_billing.stripe_apply_event(event, 'poll')) FROM (SELECT event FROM fetched ORDER BY n) f" >/dev/null ;;
    esac
    t1=$(now_ms)
    x1=$(sql "$db" "SELECT pg_current_xact_id()")
    [ "$(sql "$db" "SELECT count(*) FILTER (WHERE outcome = 'applied') >= $n FROM stripe_billing.events")" = t ] ||
        { echo "bench/subtransactions: $how did not apply $n events" >&2; exit 1; }
    dropdb "$db"
    echo "$((t1 - t0)) $((x1 - x0 - 1))"
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }
for r in $(seq "$rounds"); do
    for how in apply_events apply_event; do
        for n in 5000 20000; do
            read -r t x < <(apply "$how" "$n")
            ms[$how.$n]+="$t "; ids[$how.$n]=$x
            echo "round $r: $how $n events: $t ms, $x transaction ids"
        done
    done
done
echo
printf '%-28s %16s %16s %12s\n' "" "5,000: µs/event" "20,000: µs/event" "ratio"
for how in apply_events apply_event sync_now; do
    # shellcheck disable=SC2086
    a=$(median ${ms[$how.5000]}); b=$(median ${ms[$how.20000]})
    printf '%-28s %16s %16s %12s   (ids at 20,000: %s)\n' "$how" "$((a * 1000 / 5000))" "$((b * 1000 / 20000))" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (b / 20000) / (a / 5000) }')" "${ids[$how.20000]}"
done
echo "(ratio: time per event at 20,000 over time per event at 5,000; 1.0 is linear)"
