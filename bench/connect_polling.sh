#!/usr/bin/env bash
# bench/connect_polling: what N idle connected accounts cost the worker, in
# requests to Stripe and in database time (Stripe Connect, issue 25).  For
# each N (default 100, 1,000 and 10,000), on a cluster of its own against
# the loopback fake Stripe:
#   - N accounts made in the fake (no objects, no events), learnt with
#     CALL stripe_backfill(ARRAY['accounts']) while the worker is paused;
#   - the worker resumed with connect_idle_interval short (60 s), poll_interval
#     2 s and max_requests_per_second high (1000), so that the worker's own
#     speed is what limits it: the time its first polls of the N accounts
#     take (one step each, as fast as it goes);
#   - then a window of two idle intervals: the worker's GET /v1/events per
#     account (the fake's record, per Stripe-Account), extrapolated to the
#     default connect_idle_interval of 1 hour (requests per hour = N x
#     requests per account per interval); the worker's statements in that
#     window (pg_stat_statements, track = all: the scheduler's selection of
#     the most due account, stripe_billing._poll_next_account()'s first
#     query, and the others) and the worker process's CPU time.
# The baseline is the smallest N of the same run: how one step's selection
# grows with N.
#     bash bench/connect_polling.sh [N ...]     (default: 100 1000 10000)
# SB_BENCH_IDLE: connect_idle_interval in seconds (default 60);
# SB_BENCH_INTERVALS: idle intervals measured (default 2).
# Run after the setup command (the extension installed in PG_BINDIR's
# PostgreSQL, with pg_stat_statements); needs node, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 1000 10000)
idle=${SB_BENCH_IDLE:-60}
intervals=${SB_BENCH_INTERVALS:-2}
poll_s=2
rate=1000
key=sk_test_bench_polling
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work_begin bench_connect_polling
began=$(date +%s)
echo "bench/connect_polling: load average at the start $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"

fake() {
    curl -sS --fail-with-body --max-time 120 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$FAKE_URL$2"
}
sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d polling "$@"; }
ticks_per_s=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }    # utime + stime of a process

fake_start "$work" "$key"
results=$work/results    # lines: N name value
: >"$results"
for n in "${counts[@]}"; do
    echo "== $n idle connected accounts (connect_idle_interval ${idle} s, poll_interval ${poll_s} s," \
         "max_requests_per_second $rate)"
    fake POST /_fake/reset >/dev/null
    fake POST /_fake/accounts "{\"count\": $n, \"catalogue\": false}" >/dev/null
    pg=$work/pg-$n
    cluster_start "$pg" "shared_preload_libraries = 'stripe_billing, pg_stat_statements'" \
        "pg_stat_statements.track = all" "pg_stat_statements.max = 1000" \
        "stripe_billing.api_base = '$FAKE_URL'" "stripe_billing.api_key = '$key'" \
        "stripe_billing.database = 'polling'" "stripe_billing.poll_interval = '${poll_s}s'" \
        "stripe_billing.connect_idle_interval = '${idle}s'" "stripe_billing.max_requests_per_second = $rate" \
        "stripe_billing.backfill_on_start = off" "stripe_billing.reconcile_interval = 0"
    psql -X -q -d postgres -c "CREATE DATABASE polling"
    sql -c "CREATE EXTENSION stripe_billing" -c "CREATE EXTENSION pg_stat_statements" \
        -c "SELECT stripe_billing.stripe_sync_pause()" >/dev/null
    sql -c "CALL stripe_billing.stripe_backfill(ARRAY['accounts'])" >"$work/backfill.log" 2>&1 ||
        { echo "bench/connect_polling: the accounts' backfill failed: $(tail -3 "$work/backfill.log")"; exit 1; }
    known=$(sql -c "SELECT count(*) FROM stripe_billing.accounts")
    [ "$known" = "$n" ] || { echo "bench/connect_polling: $known accounts learnt of $n"; exit 1; }

    # the first polls: every account due at once, one step each
    t0=$(now_ms)
    sql -c "SELECT stripe_billing.stripe_sync_resume()" >/dev/null
    first_done() { [ "$(sql -c "SELECT count(*) FROM stripe_billing.sync_state
                                 WHERE account IS NOT NULL AND lookback_after IS NOT NULL")" = "$n" ]; }
    POLL=0.5 wait_until $((600 + n / 10)) first_done ||
        { echo "bench/connect_polling: the first polls of $n accounts took longer than $((600 + n / 10)) s"; exit 1; }
    t1=$(now_ms)
    echo "   first polls of the $n accounts: $(((t1 - t0) / 1000)) s, $(awk -v n="$n" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", n / ms * 1000 }') accounts/s"
    echo "$n first_polls_per_s $(awk -v n="$n" -v ms=$((t1 - t0)) 'BEGIN { print n / ms * 1000 }')" >>"$results"

    # the window: two idle intervals of the worker's steady state
    worker=$(sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'")
    [ -n "$worker" ] || { echo "bench/connect_polling: no worker"; exit 1; }
    sql -c "SELECT pg_stat_statements_reset()" >/dev/null
    w0=$(now_ms)
    c0=$(cpu_ticks "$worker")
    sleep $((intervals * idle))
    c1=$(cpu_ticks "$worker")
    w1=$(now_ms)
    fake GET "/_fake/requests/count?path=/v1/events&method=GET&since=$w0&until=$w1" >"$work/count.json"
    read -r platform accounts_polled requests lo hi < <(jq -r '.by_account
        | [(.platform // 0), (to_entries | map(select(.key != "platform")) | length),
           (to_entries | map(select(.key != "platform") | .value) | add // 0),
           (to_entries | map(select(.key != "platform") | .value) | min // 0),
           (to_entries | map(select(.key != "platform") | .value) | max // 0)] | @tsv' "$work/count.json")
    window_s=$(awk -v ms=$((w1 - w0)) 'BEGIN { print ms / 1000 }')
    per_account=$(awk -v r="$requests" -v n="$n" -v w="$window_s" -v i="$idle" 'BEGIN { print r / n / (w / i) }')
    # (the worker's statements in the window: the scheduler's selection is
    # the one over accounts and sync_state with the recent events)
    sql -F ' ' -c "SELECT calls, total_exec_time, mean_exec_time FROM pg_stat_statements
                    WHERE query LIKE '%WITH recent AS%FROM stripe_billing.accounts a%'" >"$work/select"
    read -r sel_calls sel_total sel_mean <"$work/select" ||
        { echo "bench/connect_polling: the selection's statement is not in pg_stat_statements"; exit 1; }
    sql -F ' ' -c "SELECT sum(total_exec_time) FROM pg_stat_statements
                    WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE 'SELECT count(*) FROM stripe_billing.sync_state%'" >"$work/all"
    read -r all_total <"$work/all"
    cpu_s=$(awk -v t=$((c1 - c0)) -v hz="$ticks_per_s" 'BEGIN { print t / hz }')
    {
        echo "$n window_s $window_s"
        echo "$n requests $requests"
        echo "$n accounts_polled $accounts_polled"
        echo "$n per_account $per_account"
        echo "$n min_account $lo"
        echo "$n max_account $hi"
        echo "$n platform $platform"
        echo "$n sel_calls $sel_calls"
        echo "$n sel_mean_ms $sel_mean"
        echo "$n sel_total_ms $sel_total"
        echo "$n statements_total_ms $all_total"
        echo "$n worker_cpu_s $cpu_s"
    } >>"$results"
    # what the statistics collector was told of the worker's writes
    read -r stat_upd stat_dead < <(sql -F ' ' -c "SELECT n_tup_upd, n_dead_tup FROM pg_stat_user_tables
                                                   WHERE relid = 'stripe_billing.sync_state'::regclass")
    echo "$n stat_upd $stat_upd" >>"$results"
    printf '   in %.0f s: %s requests for %s accounts (%s to %s each), %.2f per account per %s s interval, %.1f a second; %s for the platform\n' \
        "$window_s" "$requests" "$accounts_polled" "$lo" "$hi" "$per_account" "$idle" \
        "$(awk -v r="$requests" -v w="$window_s" 'BEGIN { print r / w }')" "$platform"
    printf '   per poll: the scheduler'"'"'s selection %.3f ms (%s calls), all the worker'"'"'s statements %.3f ms, worker CPU %.3f ms\n' \
        "$sel_mean" "$sel_calls" "$(awk -v t="$all_total" -v c="$requests" 'BEGIN { print t / c }')" \
        "$(awk -v t="$cpu_s" -v c="$requests" 'BEGIN { print t * 1000 / c }')"
    echo "   pg_stat_user_tables for sync_state: n_tup_upd $stat_upd, n_dead_tup $stat_dead (the worker updated it $sel_calls times or more)"
    echo "   the worker's statements, most time first (calls | mean ms | total ms | statement):"
    sql -c "SELECT calls, round(mean_exec_time::numeric, 3) AS mean_ms, round(total_exec_time::numeric) AS total_ms,
                   left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
              FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
             ORDER BY total_exec_time DESC LIMIT 6" -F ' | ' | sed 's/^/     /'
    cluster_stop "$pg"
    rm -rf "$pg"
done

# ---- summary
get() { awk -v n="$1" -v k="$2" '$1 == n && $2 == k { print $3 }' "$results"; }
calc() { awk "BEGIN { print $1 }"; }
base=${counts[0]}
echo
echo "== summary: connect_idle_interval ${idle} s measured; the default is 1 h (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%8s %8s %9s %8s %10s %8s %10s %8s %8s %10s %10s\n' "accounts" "first" "req/acct" "polls/s" "selection" "vs $base" "statements" "CPU" "vs $base" "DB s/hour" "CPU s/hour"
printf '%8s %8s %9s %8s %10s %8s %10s %8s %8s %10s %10s\n' "" "polls/s" "/interval" "" "ms/poll" "" "ms/poll" "ms/poll" "" "at 1 h" "at 1 h"
for n in "${counts[@]}"; do
    r=$(get "$n" requests); w=$(get "$n" window_s)
    st=$(calc "$(get "$n" statements_total_ms) / $r"); cpu=$(calc "$(get "$n" worker_cpu_s) * 1000 / $r")
    cpu_base=$(calc "$(get "$base" worker_cpu_s) * 1000 / $(get "$base" requests)")
    printf '%8s %8.0f %9.2f %8.1f %10.3f %7.1fx %10.3f %8.3f %7.1fx %10.1f %10.1f\n' "$n" "$(get "$n" first_polls_per_s)" \
        "$(get "$n" per_account)" "$(calc "$r / $w")" "$(get "$n" sel_mean_ms)" \
        "$(calc "$(get "$n" sel_mean_ms) / $(get "$base" sel_mean_ms)")" "$st" "$cpu" "$(calc "$cpu / $cpu_base")" \
        "$(calc "$n * $st / 1000")" "$(calc "$n * $cpu / 1000")"
done
echo "(req/acct/interval: the worker's GET /v1/events per account per idle interval (N x that an hour at the"
echo " default 1 h, while the worker keeps up); first polls/s: every account due at once, as fast as the worker"
echo " goes; selection: the scheduler's query, mean time per call; statements: all the worker's statements'"
echo " time per poll; CPU: the worker process's CPU time per poll; at 1 h: N polls an hour x the time per poll)"
echo "bench/connect_polling: $(($(date +%s) - began)) s"
