#!/usr/bin/env bash
# The background worker "stripe_billing sync" end to end, against the fake
# Stripe, on a throwaway cluster of its own (poll_interval 200 ms):
#   1 catch-up   10,000 waiting events applied exactly once, each object's row
#                naming its newest event; prints the rate
#   2 crashes    kill -9 of the worker at random moments (10 times) and an
#                immediate shutdown mid-page, during a catch-up: every event
#                once, and the tables equal a clean in-order replay
#   3 faults     over a quarter of GET /v1/events failing (500, 429,
#                truncated, hung, a body over max_response_size, an HTML
#                200): every event once, failures shown in sync_status,
#                the worker's errors SBA07 (no 22P02), recovery
#   4 webhooks   the same events by webhook and by polling at once: one
#                ledger row each, outcomes consistent
#   5 usage      a rolled-back report is never sent; 3,000 committed ones go
#                through the meter event stream and are stored once each
#                although the worker is killed -9 mid-stream
#   6 signals    SIGHUP changes poll_interval at once (60 s -> 200 ms);
#                SIGTERM ends the worker within a second; prints the lag
#   7 standby    a streaming standby starts no worker
#   8-11         a malformed event (on every path that applies polled
#                events), an echoed key, late-listed events, empty pages
#                saying has_more (see each check)
#   12 unparsable an event jsonb refuses (a \u0000) is kept as failed with
#                its body; the events around it are applied
# One PASS/FAIL line per check; exits 0 only if every check passed.
#
# Synthetic events are dated a day ahead.  After a catch-up the worker
# re-fetches objects whose last two events share a second (refetch) and
# applies the fetched object as a snapshot dated by the response's Date
# header; dated now, that snapshot would be newer than the events and put
# the request's id in last_event_id.  A day ahead it is stale, so the rows
# keep their events' ids and can be compared with a clean replay.
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh

KEY=sk_test_worker_$RANDOM$RANDOM
WHSEC=whsec_worker_$RANDOM$RANDOM
export NODE_PATH=$PWD/test/integration/node/node_modules
began=$(date +%s)
. test/lib/fake_stripe.sh
work_begin worker
work_logs primary/server.log standby/server.log fake.log
primary=$work/primary
standby=$work/standby
port=
seed_id=        # the fake's first event: the worker's first cursor, never applied
fake_total=0    # events in the fake
gen_first=      # the first and last events of the latest generate
gen_last=
clean_upto=     # the newest event applied to the clean database
batch_seed=0    # the generator's seeds, one per batch: reproducible streams

# ---- time and waiting (reporting and wait_until: test/lib/checks.sh) -----

# sleep_random MIN_MS MAX_MS
sleep_random() { sleep "$(awk -v a="$1" -v b="$2" -v r="$RANDOM" 'BEGIN { printf "%.3f", (a + (b - a) * r / 32767) / 1000 }')"; }

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ---- the databases ---------------------------------------------------------

# sql [DB] QUERY: one query on the primary, unaligned output, errors to stderr.
sql() {
    local db=postgres
    [ $# -eq 2 ] && { db=$1; shift; }
    psql -X -At -q -v ON_ERROR_STOP=1 -h "$primary" -d "$db" -c "$1"
}

# set_conf NAME VALUE / reset_conf NAME: ALTER SYSTEM a stripe_billing setting, and reload.
set_conf() { sql "ALTER SYSTEM SET stripe_billing.$1 = $2" && sql "SELECT pg_reload_conf()" >/dev/null; }
reset_conf() { sql "ALTER SYSTEM RESET stripe_billing.$1" && sql "SELECT pg_reload_conf()" >/dev/null; }

accepting() { sql "SELECT 1" >/dev/null 2>&1; }
worker_pid() { sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'" 2>/dev/null; }
has_worker() { [ -n "$(worker_pid)" ]; }
# wait_worker [OLD_PID]: until the cluster accepts connections and a worker
# other than OLD_PID (one just killed, still listed) runs
new_worker() { local p; p=$(worker_pid) && [ -n "$p" ] && [ "$p" != "${1:-}" ]; }
wait_worker() { wait_until 120 accepting && wait_until 60 new_worker "${1:-}"; }

# worker_doing ACTIVITY: the worker is inside the step reported as ACTIVITY
worker_doing() {
    [ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'
               AND state = 'active' AND query = '$1'" 2>/dev/null)" = 1 ]
}

ledger_count() { sql "SELECT count(*) FROM stripe_billing.events" 2>/dev/null; }
in_ledger() { [ "$(sql "SELECT count(*) FROM stripe_billing.events WHERE id = '$1'" 2>/dev/null)" = 1 ]; }
sync_status() { sql "SELECT $1 FROM stripe_billing.sync_status" 2>/dev/null; }
# sql_true QUERY: the query answers true
sql_true() { [ "$(sql "$1" 2>/dev/null)" = t ]; }

# pause_worker: pauses the worker and waits until the step under way when
# the pause committed has ended (any step begun after it finds the worker
# paused, and does nothing)
pause_worker() {
    local at
    sql "SELECT stripe_billing.stripe_sync_pause()" >/dev/null && at=$(sql "SELECT clock_timestamp()") &&
        wait_until 60 sql_true "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'
                                   AND state = 'active' AND query_start < '$at'"
}

# ---- the fake Stripe -------------------------------------------------------

fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "http://127.0.0.1:$port$2"
}

# generate COUNT CUSTOMERS PER_SECOND: appends synthetic events (a day
# ahead, see above); sets gen_first, gen_last and fake_total.
generate() {
    local out
    batch_seed=$((batch_seed + 1))
    out=$(fake POST /_fake/events "{\"generate\": {\"count\": $1, \"customers\": $2, \"per_second\": $3,
        \"seed\": $batch_seed, \"start_created\": $(($(date +%s) + 86400))}}") || return 1
    read -r gen_first gen_last < <(jq -r '"\(.first_id) \(.last_id)"' <<<"$out")
    fake_total=$((fake_total + $(jq .appended <<<"$out")))
}

fake_last_id() { fake GET /_fake/events | jq -r '.[-1].id'; }

# every event of the fake but the seed is in the ledger
ledger_complete() { [ "$(ledger_count)" = "$((fake_total - 1))" ]; }
# events of the fake not in the ledger yet (fails when the server is down)
pending() { local n; n=$(ledger_count) && [ -n "$n" ] && echo $((fake_total - 1 - n)); }

# load_fake_list DB: the fake's event list into DB's wtest.fake_events
load_fake_list() {
    fake GET /_fake/events | jq -r 'to_entries[] | "\(.key + 1)\t\(.value.id)"' |
        psql -X -q -v ON_ERROR_STOP=1 -h "$primary" -d "$1" \
            -c "TRUNCATE wtest.fake_events" -c "COPY wtest.fake_events (ord, id) FROM STDIN"
}

# ledger_vs_fake: prints what differs between the ledger's ids and the
# fake's (all but the seed); nothing when they are the same set.
ledger_vs_fake() {
    load_fake_list postgres || { echo "could not load the fake's list"; return; }
    sql "SELECT concat_ws('; ',
            CASE WHEN l.n <> f.n THEN format('the ledger has %s events, the fake %s', l.n, f.n) END,
            CASE WHEN l.h IS DISTINCT FROM f.h THEN 'the ledger''s ids are not the fake''s' END)
           FROM (SELECT count(*) n, md5(string_agg(id, ',' ORDER BY id)) h FROM stripe_billing.events) l,
                (SELECT count(*) n, md5(string_agg(id, ',' ORDER BY id)) h FROM wtest.fake_events WHERE ord > 1) f"
}

# state_vs_clean WITH_LEDGER: brings the clean database up to the fake's
# newest event (applied in order) and prints the tables whose digests differ.
state_vs_clean() {
    load_fake_list clean || { echo "could not load the fake's list into clean"; return; }
    clean_upto=$(sql clean "SELECT wtest.apply_in_order('$clean_upto')") || { echo "the clean replay failed"; return; }
    diff <(sql "SELECT * FROM wtest.state($1)") <(sql clean "SELECT * FROM wtest.state($1)") |
        awk '/^[<>]/ { print $2 }' | sort -u | tr '\n' ' '
}

# ---- setup -----------------------------------------------------------------

start_fake() {
    fake_start "$work" "$KEY" || return 1
    port=${FAKE_URL##*:}
}

# The fake holds one event before the extension exists: on its first cycle
# the worker takes it as its cursor without applying it.  (No backfill on
# start: the tables are compared with a replay of the events alone; the
# backfill has test/integration/backfill.sh.)
setup() {
    start_fake || return 1
    generate 1 1 1 || return 1
    seed_id=$gen_first
    clean_upto=$seed_id
    cluster_start "$primary" "shared_preload_libraries = 'stripe_billing'" \
        "stripe_billing.poll_interval = '200ms'" "stripe_billing.api_key = '$KEY'" \
        "stripe_billing.api_base = 'http://127.0.0.1:$port'" "stripe_billing.meter_events_base = 'http://127.0.0.1:$port'" \
        "wal_level = replica" \
        "stripe_billing.poll_lookback = '2s'" "stripe_billing.backfill_on_start = off" || return 1
    sql "CREATE EXTENSION stripe_billing" && sql "CREATE DATABASE clean" &&
        sql clean "CREATE EXTENSION stripe_billing" || return 1
    for db in postgres clean; do
        psql -X -q -v ON_ERROR_STOP=1 -h "$primary" -d "$db" -f test/integration/worker/helpers.sql || return 1
    done
    wait_until 60 eval '[ "$(sync_status cursor)" = "$seed_id" ]' ||
        { echo "the worker did not take the fake's newest event as its cursor"; return 1; }
    [ "$(ledger_count)" = 0 ] || { echo "the worker applied the event it should only start after"; return 1; }
    note "worker pid $(worker_pid), fake on port $port, work dir $work"
}

# ---- 6: signals, and the steady-state lag ----------------------------------

check_signals() {
    begin
    local problems=() id t0 woke lags=() lag pid gone back reload_at
    reload_at=$(sql "SELECT clock_timestamp()")
    set_conf poll_interval "'60s'"
    # SIGHUP wakes the worker: it polls once, then sleeps for 60 s.  Seen as
    # a poll after the reload, then none for 2 s (at 200 ms, five a second)
    wait_until 60 sql_true "SELECT last_poll_at > '$reload_at' AND clock_timestamp() - last_poll_at > interval '2 s'
                              FROM stripe_billing.sync_status" ||
        problems+=(" after the reload to 60s the worker still polled at least every 2 s")
    generate 1 1 1
    id=$gen_first
    # (that the event does NOT arrive within 3 s: a loaded machine only
    # delays a poll, it cannot make one come sooner)
    sleep 3
    in_ledger "$id" && problems+=(" with poll_interval 60s an event arrived within 3 s: the setting was not in effect")
    t0=$(now_ms)
    set_conf poll_interval "'200ms'"
    # at once, that is well before the 60 s the worker would otherwise sleep
    if POLL=0.02 wait_until 30 in_ledger "$id"; then
        woke=$(($(now_ms) - t0))
        [ "$woke" -le 15000 ] || problems+=(" the waiting event arrived ${woke} ms after the reload, not within 15 s")
    else
        woke=never; problems+=(" the waiting event did not arrive within 30 s of the reload")
    fi
    # steady state: from appending an event to seeing it committed
    for _ in 1 2 3 4 5 6 7; do
        sleep_random 100 500
        t0=$(now_ms)
        generate 1 1 1
        id=$gen_first
        POLL=0.01 wait_until 30 in_ledger "$id" || { problems+=(" an event took over 30 s"); break; }
        lags+=($(($(now_ms) - t0)))
    done
    lag=$(median "${lags[@]:-0}")
    echo "      steady-state lag (poll_interval 200 ms): median ${lag} ms of ${lags[*]:-none} ms"
    # (the default interval, 10 s, would make a median of some 5 s)
    [ "$lag" -le 1000 ] || problems+=(" median lag ${lag} ms: the 200 ms interval is not in effect")
    conclude "6 SIGHUP poll_interval" "an event waiting under 60s arrived ${woke} ms after the reload to 200ms" "${problems[@]}"

    begin
    problems=()
    pid=$(worker_pid)
    t0=$(now_ms)
    kill -TERM "$pid"
    if POLL=0.01 wait_until 10 eval '! kill -0 "$pid" 2>/dev/null'; then
        gone=$(($(now_ms) - t0))
    else
        gone=never; problems+=(" the worker ($pid) still ran 10 s after SIGTERM")
    fi
    # (restarted bgw_restart_time, 5 s, after it exited)
    if wait_until 60 eval '[ -n "$(worker_pid)" ] && [ "$(worker_pid)" != "$pid" ]'; then
        back="restarted by the postmaster after $((($(now_ms) - t0) / 1000)) s"
    else
        back="not restarted"; problems+=(" the postmaster did not restart the worker within 60 s")
    fi
    conclude "6 SIGTERM" "the worker exited ${gone} ms after SIGTERM, $back" "${problems[@]}"
}

# ---- 1: catch-up -----------------------------------------------------------

check_catch_up() {
    begin
    local problems=() first last t0 ms=never rate=? objects mismatched ties outcomes gets
    fake DELETE /_fake/requests >/dev/null
    generate 10000 1000 100
    first=$gen_first last=$gen_last
    t0=$(now_ms)
    if wait_until 300 ledger_complete; then
        ms=$(($(now_ms) - t0))
        rate=$((10000 * 1000 / ms))
    else
        problems+=(" not caught up after 300 s: $(pending) events missing")
    fi
    # 100 pages: each fetched once (a page is requested in the background
    # while the one before it is applied, and that response is the one used),
    # plus the idle polls of a 200 ms poll_interval around the batch (the
    # lookback's own requests, created[...], are not pages of the catch-up)
    gets=$(fake GET '/_fake/requests?path=/v1/events' | jq '[.[] | select((.query | tostring | test("created")) | not)] | length')
    [ "$gets" -ge 100 ] && [ "$gets" -le 112 ] ||
        problems+=(" $gets requests to /v1/events for 100 pages (expected 100 to 112)")
    echo "      catch-up: 10000 events in ${ms} ms = ${rate} events/s, $gets requests to /v1/events"
    local diff; diff=$(ledger_vs_fake)
    [ -n "$diff" ] && problems+=(" $diff")
    IFS='|' read -r objects mismatched ties < <(sql "SELECT * FROM wtest.last_event_check('$first', '$last')" | tr -d ' ')
    [ "${mismatched:-x}" = 0 ] || problems+=(" $mismatched of $objects objects' last_event_id is not their newest event")
    outcomes=$(sql "SELECT string_agg(outcome || '=' || n, ' ') FROM (SELECT outcome, count(*) n FROM stripe_billing.events GROUP BY 1) o")
    [ "$outcomes" = "applied=$(ledger_count)" ] || problems+=(" outcomes: $outcomes")
    conclude "1 catch-up" "10000 events applied once (ledger = the fake's ids), last_event_id right for all $objects objects ($ties same-second ties), ledger outcomes $outcomes" "${problems[@]}"
}

# ---- 2: crash safety -------------------------------------------------------

stop_immediate_and_start() {
    as_owner "$PG_BINDIR/pg_ctl" -D "$primary/data" -m immediate -w stop >/dev/null &&
        as_owner "$PG_BINDIR/pg_ctl" -D "$primary/data" -l "$primary/server.log" -w -t 120 start >/dev/null
}

check_crashes() {
    begin
    local problems=() kills=0 during=0 left pid killed= expected generated=5000 midpage=no deadline log_kills
    generate 5000 1000 100
    deadline=$(($(now_ms) + 300000))
    while [ $kills -lt 10 ] && [ "$(now_ms)" -lt "$deadline" ]; do
        wait_worker "$killed" || { problems+=(" the worker was not back after kill $kills"); break; }
        sleep_random 20 400
        pid=$(worker_pid) && [ -n "$pid" ] && [ "$pid" != "$killed" ] || continue
        left=$(pending) || continue
        kill -KILL "$pid" || continue
        killed=$pid
        kills=$((kills + 1))
        [ "$left" -gt 0 ] && during=$((during + 1))
        # keep a catch-up going for every kill
        [ "$left" -lt 3000 ] && { generate 3000 1000 100; generated=$((generated + 3000)); }
    done
    [ $during -ge 10 ] || problems+=(" only $during of $kills kills hit a catch-up")
    # and once the whole server, mid-page
    wait_worker "$killed" || problems+=(" the worker was not back after the kills")
    left=$(pending)
    [ "${left:-0}" -lt 500 ] && { generate 2000 1000 100; generated=$((generated + 2000)); }
    POLL=0.01 wait_until 60 worker_doing 'stripe_billing: polling /v1/events' && midpage=yes
    stop_immediate_and_start || problems+=(" the immediate stop and start failed")
    [ $midpage = yes ] || problems+=(" the immediate stop did not catch the worker polling")
    wait_worker || problems+=(" the worker was not back after the immediate stop")
    wait_until 300 ledger_complete || problems+=(" not caught up 300 s after the crashes: $(pending) events missing")
    log_kills=$(grep -c 'stripe_billing sync.*terminated by signal 9' "$primary/server.log")
    note "$generated events during the crashes; $kills kills -9 ($log_kills in the server log, $during during a catch-up), immediate stop mid-page: $midpage"

    local diff; diff=$(ledger_vs_fake)
    [ -n "$diff" ] && problems+=(" $diff")
    expected=$(ledger_count)
    [ "$(sync_status events_applied)" = "$expected" ] ||
        problems+=(" sync_status.events_applied is $(sync_status events_applied), the ledger has $expected")
    [ "$(sync_status cursor)" = "$(fake_last_id)" ] || problems+=(" the cursor is not the fake's newest event")
    diff=$(state_vs_clean true)
    [ -n "$diff" ] && problems+=(" tables differing from the clean replay: $diff")
    conclude "2 crash safety" "$kills kills -9 and an immediate stop during catch-ups: all $expected events once, cursor and counter exact, billing tables and ledger = clean in-order replay" "${problems[@]}"
}

# ---- 3: faults -------------------------------------------------------------

# worker_error_times LOG OFFSET: the seconds, relative to the first, of the
# worker's errors logged after byte OFFSET
worker_error_times() {
    tail -c +"$(($2 + 1))" "$1" | grep 'ERROR: .*Stripe API' |
        awk '{ split($2, t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]; if (NR == 1) f = s; printf "+%.1f ", s - f }'
}

check_faults() {
    begin
    local problems=() max_failures=0 errors_seen=0 messages="$work/fault_errors" f e deadline injected took log_at
    set_conf request_timeout "'2000ms'"
    # each fault fails the step, rather than being retried inside stripe_api
    set_conf max_network_retries 0
    # a page of 100 events is some 460 kB: 1 MB takes it, not the 2 MB "huge" body
    set_conf max_response_size "'1MB'"
    : >"$messages"
    fake DELETE /_fake/requests >/dev/null
    log_at=$(stat -c %s "$primary/server.log")
    # 5% each of all GET /v1/events: 500, 429 (Retry-After 1), truncated,
    # hung; then 5% each of the rest: a 2 MB body sent chunked (over the
    # cap), an HTML page with 200 (these seeds give two of each among the
    # first 25 requests: most requests of a catch-up are prefetches, which
    # fall back to asking again, silently, but for a body over the cap,
    # raised whether prefetched or not).  And the first request none of
    # those takes gets the huge body, the next the HTML page: the first
    # request of a poll and the one after a failure are made the usual way,
    # so these two fail a step, and the worker logs why.
    fake POST /_fake/faults '{"rules": [
        {"kind": "500", "path": "/v1/events", "method": "GET", "rate": 0.05, "seed": 11},
        {"kind": "429", "path": "/v1/events", "method": "GET", "rate": 0.05263, "seed": 12, "retry_after": 1},
        {"kind": "truncate", "path": "/v1/events", "method": "GET", "rate": 0.05556, "seed": 13},
        {"kind": "hang", "path": "/v1/events", "method": "GET", "rate": 0.05882, "seed": 14},
        {"kind": "huge", "path": "/v1/events", "method": "GET", "rate": 0.05, "seed": 29, "bytes": 2097152, "chunked": true},
        {"kind": "html", "path": "/v1/events", "method": "GET", "rate": 0.05, "seed": 44},
        {"kind": "huge", "path": "/v1/events", "method": "GET", "count": 1, "bytes": 2097152, "chunked": true},
        {"kind": "html", "path": "/v1/events", "method": "GET", "count": 1}]}' >/dev/null
    generate 3000 500 100
    # 30 pages: about 12 faults, each followed by a backoff of 0.5-1 s (or a
    # 2 s timeout first), longer after failures in a row: some 20 s.  180 s
    # is ample, on a loaded machine too.
    deadline=$(($(now_ms) + 180000))
    until ledger_complete; do
        if [ "$(now_ms)" -ge "$deadline" ]; then
            problems+=(" not caught up after 180 s of faults: $(pending) of 3000 events missing; the worker's errors came at $(worker_error_times "$primary/server.log" "$log_at")s")
            break
        fi
        IFS='|' read -r f e < <(sync_status "consecutive_failures, last_error")
        [ "${f:-0}" -gt "$max_failures" ] && max_failures=$f
        [ -n "$e" ] && { errors_seen=$((errors_seen + 1)); echo "$e" >>"$messages"; }
        sleep 0.2
    done
    took=$((SECONDS - phase_began))
    injected=$(fake GET '/_fake/requests?path=/v1/events' |
        jq -r '[.[] | .status | tostring] | group_by(.) | map("\(.[0])=\(length)") | join(" ")')
    note "GET /v1/events answers: $injected"
    note "sync_status: consecutive_failures up to $max_failures, last_error set in $errors_seen samples: $(sort -u "$messages" | cut -c1-60 | head -6 | paste -sd '|')"
    [ "$max_failures" -gt 0 ] || [ "$errors_seen" -gt 0 ] || problems+=(" sync_status never showed a failure")
    for kind in huge html; do
        [[ " $injected " == *" $kind="* ]] ||
            problems+=(" the fake answered no request with $kind: the check would prove nothing")
    done
    # the worker refused both for what they are (not a 22P02, not an empty page taken)
    local worker_log; worker_log=$(tail -c +"$((log_at + 1))" "$primary/server.log")
    grep -q 'ERROR: .*GET /v1/events exceeds stripe_billing.max_response_size (1024 kB)' <<<"$worker_log" ||
        problems+=(" the server log shows no worker error for the body over max_response_size")
    # (the page is then asked for again as text, as a page holding an event
    # jsonb refuses is: logged, and an error if that answer is no JSON list
    # either)
    grep -Eq '(ERROR|LOG): .*(GET /v1/events returned a response that is not JSON \(HTTP 200|the page of events is not a JSON list)' <<<"$worker_log" ||
        problems+=(" the server log shows no worker error for the HTML 200")
    grep -q 'ERROR: .*invalid input syntax for type json' <<<"$worker_log" &&
        problems+=(" the worker raised 22P02 on a body that is not JSON")
    # faults off; the reloads also wake the worker from a backoff
    fake DELETE /_fake/faults >/dev/null
    reset_conf request_timeout
    reset_conf max_network_retries
    reset_conf max_response_size
    wait_until 120 ledger_complete || problems+=(" still $(pending) events missing 120 s after the faults stopped")
    wait_until 60 eval '[ "$(sync_status consecutive_failures)" = 0 ]' ||
        problems+=(" consecutive_failures still $(sync_status consecutive_failures) after the faults stopped")
    [ -z "$(sync_status last_error)" ] || problems+=(" last_error still set after recovery: $(sync_status last_error)")
    local diff; diff=$(ledger_vs_fake)
    [ -n "$diff" ] && problems+=(" $diff")
    diff=$(state_vs_clean true)
    [ -n "$diff" ] && problems+=(" tables differing from the clean replay: $diff")
    conclude "3 faults" "3000 events with a quarter of /v1/events failing (huge and HTML bodies among them), in ${took} s: all once (tables = clean replay); failures shown (consecutive_failures up to $max_failures), then back to 0" "${problems[@]}"
}

# ---- 4: webhook and poll together ------------------------------------------

# deliver FILE OUT: hands the signed events of FILE to stripe_handle_webhook,
# one statement (transaction) a line; outcomes to OUT, errors to OUT.err.
deliver() {
    psql -X -At -q -v ON_ERROR_STOP=0 -h "$primary" -d postgres -f "$1" >"$2" 2>"$2.err"
}

# deadlocked OUT...: the statements (lines of their files) that ended in a deadlock
deadlocked() {
    sed -nE 's/^psql:([^:]+):([0-9]+): ERROR: +deadlock detected.*/\1 \2/p' "${@/%/.err}" |
        while read -r file line; do sed -n "${line}p" "$file"; done
}

check_webhooks() {
    begin
    local problems=() before log_at results counts hooked duplicates deadlocks errors sources outcomes by_worker
    set_conf webhook_secret "'$WHSEC'"
    pause_worker || problems+=(" the worker's step under way did not end within 60 s of the pause")
    before=$(fake_last_id)
    # one event per second: no same-second ties, so any delivery order ends
    # in the same state as the clean in-order replay
    generate 2000 300 1
    node test/integration/worker/webhook_sql.js "http://127.0.0.1:$port" "$KEY" "$before" "$WHSEC" >"$work/hooks_oldest_first.sql" ||
        { conclude "4 webhook and poll" "could not prepare the webhooks" " webhook_sql.js failed"; return; }
    tac "$work/hooks_oldest_first.sql" >"$work/hooks_newest_first.sql"
    log_at=$(stat -c %s "$primary/server.log")
    # three deliveries of each event at once: polling, and two webhook streams
    sql "SELECT stripe_billing.stripe_sync_resume()" >/dev/null
    deliver "$work/hooks_oldest_first.sql" "$work/hooks_a.out" &
    local a=$!
    deliver "$work/hooks_newest_first.sql" "$work/hooks_b.out" &
    wait "$a" $!
    # a delivery that lost a deadlock failed with an error, as an endpoint
    # would answer 500: Stripe delivers it again, and so does this test
    deadlocked "$work/hooks_a.out" "$work/hooks_b.out" >"$work/hooks_again.sql"
    deadlocks=$(wc -l <"$work/hooks_again.sql")
    deliver "$work/hooks_again.sql" "$work/hooks_again.out"
    wait_until 120 ledger_complete || problems+=(" not caught up 120 s after the webhooks: $(pending) events missing")

    results=$(cat "$work"/hooks_{a,b,again}.out)
    counts=$(sort <<<"$results" | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
    hooked=$(grep -cvx duplicate <<<"$results")
    duplicates=$(grep -cx duplicate <<<"$results")
    errors=$(($(cat "$work"/hooks_{a,b}.out.err | grep ERROR | grep -cv 'ERROR: *deadlock detected') +
              $(grep -c ERROR "$work/hooks_again.out.err")))
    by_worker=$(tail -c +"$((log_at + 1))" "$primary/server.log" | grep -E '^\S+ \S+ \S+ \[[0-9]+\] ERROR: +deadlock' | wc -l)
    load_fake_list postgres
    local batch="SELECT e.* FROM stripe_billing.events e JOIN wtest.fake_events f USING (id)
                  WHERE f.ord > (SELECT ord FROM wtest.fake_events WHERE id = '$before')"
    sources=$(sql "SELECT string_agg(source || '=' || n, ' ' ORDER BY source) FROM (SELECT source, count(*) n FROM ($batch) b GROUP BY 1) s")
    outcomes=$(sql "SELECT string_agg(outcome || '=' || n, ' ' ORDER BY outcome) FROM (SELECT outcome, count(*) n FROM ($batch) b GROUP BY 1) s")
    note "webhook results: ${counts}(after $deadlocks deadlocked deliveries were made again; the worker lost $by_worker deadlocks)"
    note "ledger rows of the batch by source: $sources; by outcome: $outcomes"
    [ "$errors" = 0 ] || problems+=(" $errors webhook deliveries failed: $(grep -h ERROR "$work"/hooks_*.out.err | sort | uniq -c | head -3 | tr -s ' ' | paste -sd '|')")
    [ $((hooked + duplicates)) = 4000 ] ||
        problems+=(" $((hooked + duplicates)) webhook results for 4000 deliveries")
    [ "$(sql "SELECT count(*) FROM ($batch) b")" = 2000 ] || problems+=(" the batch has $(sql "SELECT count(*) FROM ($batch) b") ledger rows, not 2000")
    [ "$(sql "SELECT count(*) FROM ($batch) b WHERE source = 'webhook'")" = "$hooked" ] ||
        problems+=(" $hooked webhook deliveries were not duplicates, but the ledger credits webhooks with $(sql "SELECT count(*) FROM ($batch) b WHERE source = 'webhook'") rows")
    [[ "$sources" == *poll=* && "$sources" == *webhook=* ]] || problems+=(" the deliveries did not overlap: sources $sources")
    [ "$(sql "SELECT count(*) FROM ($batch) b WHERE outcome NOT IN ('applied', 'stale')")" = 0 ] ||
        problems+=(" outcomes other than applied/stale: $outcomes")
    local diff; diff=$(ledger_vs_fake)
    [ -n "$diff" ] && problems+=(" $diff")
    diff=$(state_vs_clean false)
    [ -n "$diff" ] && problems+=(" billing tables differing from the clean replay: $diff")
    reset_conf webhook_secret
    conclude "4 webhook and poll" "2000 events, each delivered by polling and twice by webhook: one ledger row each ($sources; $outcomes), billing tables = clean replay" "${problems[@]}"
}

# ---- 5: usage outbox -------------------------------------------------------

# streamed: the fake's POST /v2/billing/meter_event_stream requests so far
streamed() { fake GET '/_fake/requests?path=/v2/billing/meter_event_stream&method=POST' | jq length; }

check_usage() {
    begin
    local problems=() customer rolled first last kills=0 seen killed= pid identifiers stats
    customer=cus_wt_meter
    fake POST /_fake/objects "{\"object\": {\"id\": \"$customer\", \"object\": \"customer\"}}" >/dev/null
    sql "SELECT stripe_billing.stripe_link_customer('wt_meter_user', '$customer')" >/dev/null
    rolled=$(psql -X -At -q -v ON_ERROR_STOP=1 -h "$primary" -d postgres <<'SQL'
BEGIN;
SELECT stripe_billing.stripe_report_usage('wt_meter_user', 'wt_api_calls', 424242);
ROLLBACK;
SQL
)
    pause_worker || problems+=(" the worker's step under way did not end within 60 s of the pause")
    fake DELETE /_fake/requests >/dev/null
    IFS='|' read -r first last < <(sql "SELECT min(id), max(id) FROM (SELECT stripe_billing.stripe_report_usage('wt_meter_user', 'wt_api_calls', g) AS id FROM generate_series(1, 3000) g) s")
    # each batch answered 300 ms late: a worker's call (10 batches, 4 at a
    # time) is under way for about a second, some batches answered (at the
    # fake: stored), none marked yet; each kill lands there, and the next
    # worker sends those rows again
    fake POST /_fake/latency '{"ms": 300, "path": "/v2/billing/meter_event_stream"}' >/dev/null
    sql "SELECT stripe_billing.stripe_sync_resume()" >/dev/null
    seen=0
    while [ $kills -lt 4 ]; do
        wait_worker "$killed" || { problems+=(" the worker was not back after kill $kills"); break; }
        [ "$(sync_status outbox_backlog)" = 0 ] && break
        POLL=0.02 wait_until 60 eval '[ "$(streamed)" -gt "$((seen + 4))" ]' || break
        pid=$(worker_pid) && [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || continue
        killed=$pid
        kills=$((kills + 1))
        seen=$(streamed)
    done
    wait_worker "$killed" || problems+=(" the worker was not back after the kills")
    wait_until 120 eval '[ "$(sync_status outbox_backlog)" = 0 ]' ||
        problems+=(" $(sync_status outbox_backlog) usage rows still unsent after 120 s")
    fake DELETE /_fake/latency >/dev/null

    stats=$(fake GET /_fake/meter_events/stats | jq -c .)
    identifiers=$(fake GET /_fake/meter_events | jq -r '.[] | select(.event_name == "wt_api_calls") | .identifier' | sort)
    inst=$(sql "SELECT stripe_billing.stripe_installation_id()")
    note "usage rows $first..$last (rolled back: $rolled); $kills kills -9 mid-stream; $(streamed) stream requests; the fake: $stats"
    [ "$identifiers" = "$(for ((i = first; i <= last; i++)); do echo "sb_${inst}_$i"; done | sort)" ] ||
        problems+=(" the fake's meter events are not exactly sb_${inst}_$first..$last once each: $(uniq -c <<<"$identifiers" | awk '$1 > 1' | head -3 | paste -sd ' ')")
    grep -qx "sb_${inst}_$rolled" <<<"$identifiers" && problems+=(" the rolled-back report $rolled was sent")
    [ "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE id = $rolled")" = 0 ] || problems+=(" the rolled-back row exists")
    [ "$(sql "SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NOT NULL AND id BETWEEN $first AND $last")" = 3000 ] ||
        problems+=(" not every row is marked sent: $(sql "SELECT count(*) || ' unsent, errors: ' || coalesce(string_agg(DISTINCT last_error, '|'), '-') FROM stripe_billing.usage_outbox WHERE sent_at IS NULL")")
    [ "$kills" -gt 0 ] || problems+=(" no kill landed: the check would prove nothing")
    if [ "$(jq .duplicates <<<"$stats")" -gt 0 ]; then
        note "$(jq .duplicates <<<"$stats") events sent again after a crash, dropped by the fake as duplicates"
    else
        problems+=(" no event was sent twice: no kill landed between a batch's answer and its commit, so the check proves nothing")
    fi
    conclude "5 usage outbox" "rolled-back report never sent; 3000 committed rows through the meter event stream each stored once and marked sent despite $kills kills mid-stream" "${problems[@]}"
}

# ---- 7: standby --------------------------------------------------------------

standby_has_worker() {
    [ "$(psql -X -At -h "$standby" -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'")" != 0 ]
}

# ---- 10: events listed late, behind the cursor ----------------------------

check_late_listed() {
    begin
    local problems=() anchor created late_ids=() body applied forward lookback
    # three events of a second of their own, two days ahead (the generated
    # batches compress time: a lookback window near them holds hundreds)
    created=$(($(date +%s) + 2 * 86400))
    body=$(jq -nc --argjson created "$created" '{events: [range(3) as $i |
        {id: "evt_anchor_\($i)_\($created)", type: "customer.updated", created: $created,
         data: {object: {id: "cus_anchor_\($i)", object: "customer"}}}]}')
    fake POST /_fake/events "$body" >/dev/null || problems+=(" the fake refused the anchor events")
    anchor="evt_anchor_2_$created"
    fake_total=$((fake_total + 3))
    wait_until 60 in_ledger "$anchor" || problems+=(" the anchor events never arrived")
    # 5 events of that second, listed only now, behind the anchor (the cursor is past it)
    body=$(jq -nc --arg before "$anchor" --argjson created "$created" '{before: $before, events: [range(5) as $i |
        {id: "evt_late_\($i)_\($created)", type: "customer.updated", created: $created,
         data: {object: {id: "cus_late_\($i)", object: "customer", email: "late\($i)@example.com"}}}]}')
    fake POST /_fake/events "$body" >/dev/null || problems+=(" the fake refused the late events")
    for i in 0 1 2 3 4; do late_ids+=("evt_late_${i}_$created"); done
    fake_total=$((fake_total + 5))
    all_late() { for id in "${late_ids[@]}"; do in_ledger "$id" || return 1; done; }
    wait_until 60 all_late || true
    applied=$(sql "SELECT count(*) FROM stripe_billing.events WHERE id LIKE 'evt_late_%_$created' AND source = 'poll' AND outcome = 'applied'")
    [ "$applied" = 5 ] || problems+=(" $applied of 5 late-listed events applied")
    [ "$(sql "SELECT count(*) FROM stripe_billing.customers WHERE id LIKE 'cus_late_%' AND email LIKE 'late%'")" = 5 ] ||
        problems+=(" the late events' customers are not in the table")
    # idle: the lookback costs one request a cycle, like the forward poll
    # (counted over ten idle cycles, however long they take)
    fake DELETE /_fake/requests >/dev/null
    idle_requests() {
        fake GET "/_fake/requests?path=/v1/events" |
            jq -r '"\([.[] | select((.query | tostring | test("created")) | not)] | length) \([.[] | select(.query | tostring | test("created"))] | length)"'
    }
    wait_until 60 eval '[ "$(idle_requests | cut -d " " -f 1)" -ge 10 ]' || problems+=(" fewer than 10 polls in 60 s")
    read -r forward lookback < <(idle_requests)
    [ "$lookback" -ge 1 ] && [ "$lookback" -le $((forward + 1)) ] ||
        problems+=(" idle: $lookback lookback requests against $forward forward ones")
    ledger_complete || problems+=(" the ledger lacks $(pending) events")
    conclude "10 late-listed" "5 events listed late behind the cursor (same second): $applied applied once, by polling; idle, $lookback lookback requests for $forward forward ones" "${problems[@]}"
}

# ---- 11: an empty page that says has_more does not make a busy loop --------

check_empty_has_more() {
    begin
    local problems=() n0 n t0 ms
    fake POST /_fake/faults '{"rules": [{"kind": "empty_has_more", "path": "/v1/events", "method": "GET", "count": 1000}]}' >/dev/null
    fake DELETE /_fake/requests >/dev/null
    requests_seen() { fake GET "/_fake/requests?path=/v1/events" | jq 'length'; }
    wait_until 60 eval '[ "$(requests_seen)" -ge 1 ]' || problems+=(" no request met the empty pages within 60 s")
    # then 2 s of them: a busy loop would make hundreds of requests, a
    # loaded machine only fewer (a check that something does NOT happen)
    n0=$(requests_seen) t0=$(now_ms)
    sleep 2
    n=$(($(requests_seen) - n0)) ms=$(($(now_ms) - t0))
    fake DELETE /_fake/faults >/dev/null
    # poll_interval 200 ms: about 5 cycles a second, each a page and a lookback
    [ "$n" -le $((15 * ms / 1000)) ] || problems+=(" $n requests to /v1/events in $ms ms")
    generate 1 1 1
    wait_until 60 in_ledger "$gen_first" || problems+=(" the next event never arrived after the empty pages")
    conclude "11 empty has_more" "empty pages saying has_more: $n requests in $ms ms (poll_interval 200 ms), then events arrive again" "${problems[@]}"
}

# ---- 9: an upstream echoing the key leaves no key in sync_state -----------

check_echoed_key() {
    begin
    local problems=() err
    sql "UPDATE stripe_billing.sync_state SET last_error = NULL" >/dev/null
    fake POST /_fake/faults '{"rules": [{"kind": "echo_auth", "path": "/v1/events", "method": "GET", "count": 1}]}' >/dev/null
    generate 1 1 1
    wait_until 60 eval '[ -n "$(sync_status last_error)" ]' || problems+=(" the echoing answer never reached sync_status")
    err=$(sync_status last_error)
    fake DELETE /_fake/faults >/dev/null
    grep -qF "${KEY#sk_test_}" <<<"$err" && problems+=(" sync_state.last_error holds the API key: $err")
    grep -q 'Bearer' <<<"$err" || problems+=(" the stored error does not show the echoed header (masked): the check would prove nothing: $err")
    wait_until 60 in_ledger "$gen_first" || problems+=(" the event never arrived after the echoing answer")
    conclude "9 echoed key" "an error echoing the Authorization header is stored masked: ${err:0:90}" "${problems[@]}"
}

# ---- 8: an event too malformed to keep does not stall the worker ----------
# (issue 22: a 3,000-byte id, no index can hold it: SBE01), on every path
# that applies polled events: a page's body, a page's head (the event the
# cursor moves to), the lookback, a page jsonb refuses, and the first start
# (check_malformed_first_start).  Each time: skipped with a WARNING, the
# good events around it applied, no failure.

poison_id() { echo "evt_${1}_$(printf 'x%.0s' $(seq 3000))"; }
# poison_event ID CREATED: an event whose id no ledger can keep
poison_event() {
    jq -nc --arg id "$1" --argjson created "$2" '{id: $id, type: "customer.updated", created: $created,
        data: {object: {id: "cus_poison", object: "customer"}}}'
}
skipped_warnings() { grep -c 'a polled event was skipped' "$primary/server.log"; }
more_warnings() { [ "$(skipped_warnings)" -gt "$1" ]; }

check_malformed() {
    begin
    local problems=() bad good1 good2 warned created body late_good
    # the body of a page: between two good events
    warned=$(skipped_warnings)
    generate 1 1 1; good1=$gen_first
    bad=$(poison_id body)
    fake POST /_fake/events "{\"events\": [$(poison_event "$bad" $(($(date +%s) + 86400)))]}" >/dev/null ||
        problems+=(" the fake refused the malformed event")
    generate 1 1 1; good2=$gen_first
    wait_until 60 in_ledger "$good2" || problems+=(" body: the event after the malformed one never arrived (sync_status: $(sync_status last_error))")
    in_ledger "$good1" || problems+=(" body: the event before the malformed one is missing")
    more_warnings "$warned" || problems+=(" body: no warning about the skipped event in the log")

    # the head of a page: the newest event listed, where the cursor moves
    warned=$(skipped_warnings)
    bad=$(poison_id head)
    fake POST /_fake/events "{\"events\": [$(poison_event "$bad" $(($(date +%s) + 86400)))]}" >/dev/null ||
        problems+=(" the fake refused the malformed event")
    wait_until 60 more_warnings "$warned" || problems+=(" head: no warning about the skipped event in the log")
    generate 1 1 1; good2=$gen_first
    wait_until 60 in_ledger "$good2" || problems+=(" head: the event after the malformed one never arrived (sync_status: $(sync_status last_error))")

    # the lookback: a malformed event and a good one listed late, behind the cursor
    warned=$(skipped_warnings)
    created=$(($(date +%s) + 86400))
    generate 1 1 1
    wait_until 60 in_ledger "$gen_first" || problems+=(" lookback: the anchor event never arrived")
    late_good="evt_late_good_$created"
    body=$(jq -nc --arg before "$gen_first" --argjson created "$(sql "SELECT extract(epoch FROM created)::bigint FROM stripe_billing.events WHERE id = '$gen_first'")" \
        --argjson poison "$(poison_event "$(poison_id late)" 0)" --arg good "$late_good" \
        '{before: $before, events: [($poison | .created = $created),
          {id: $good, type: "customer.updated", created: $created, data: {object: {id: "cus_late_good", object: "customer"}}}]}')
    fake POST /_fake/events "$body" >/dev/null || problems+=(" the fake refused the late events")
    fake_total=$((fake_total + 1))
    wait_until 60 in_ledger "$late_good" || problems+=(" lookback: the good late event never arrived (sync_status: $(sync_status last_error))")
    wait_until 60 more_warnings "$warned" || problems+=(" lookback: no warning about the skipped event in the log")

    # a page jsonb refuses (a \u0000 in an event): the malformed event in it too
    warned=$(skipped_warnings)
    generate 1 1 1; good1=$gen_first
    created=$(($(date +%s) + 86400))
    fake POST /_fake/events "{\"events\": [{\"id\": \"evt_nul2_$RANDOM$RANDOM\", \"type\": \"customer.updated\",
        \"created\": $created, \"data\": {\"object\": {\"id\": \"cus_nul2\", \"object\": \"customer\",
        \"name\": \"a\\u0000b\"}}}, $(poison_event "$(poison_id unparsed)" "$created")]}" >/dev/null ||
        problems+=(" the fake refused the events")
    fake_total=$((fake_total + 1))
    generate 1 1 1; good2=$gen_first
    wait_until 60 in_ledger "$good2" || problems+=(" unparsed page: the event after the malformed one never arrived (sync_status: $(sync_status last_error))")
    in_ledger "$good1" || problems+=(" unparsed page: the event before the malformed one is missing")
    more_warnings "$warned" || problems+=(" unparsed page: no warning about the skipped event in the log")

    [ "$(sql "SELECT count(*) FROM stripe_billing.events WHERE length(id) > 255")" = 0 ] ||
        problems+=(" a malformed event is in the ledger")
    [ "$(sync_status consecutive_failures)" = 0 ] || problems+=(" consecutive_failures is $(sync_status consecutive_failures)")
    ledger_complete || problems+=(" the ledger lacks $(pending) events")
    conclude "8 malformed" "an event with a 3,004-byte id in a page's body, at a page's head, listed late, in a page jsonb refuses: skipped with a warning each time, the events around it applied, no failure" "${problems[@]}"
}

# ---- 8, first start: the oldest event since start_from is malformed -------

check_malformed_first_start() {
    begin
    local problems=() created bad good1 good2 warned
    warned=$(skipped_warnings)
    # a second of their own, three days ahead: the first start lists them only
    created=$(($(date +%s) + 3 * 86400))
    bad=$(poison_id first)
    good1="evt_first_good1_$created"
    good2="evt_first_good2_$created"
    sql "SELECT stripe_billing.stripe_sync_pause()" >/dev/null
    fake POST /_fake/events "{\"events\": [$(poison_event "$bad" "$created"),
        {\"id\": \"$good1\", \"type\": \"customer.updated\", \"created\": $((created + 1)),
         \"data\": {\"object\": {\"id\": \"cus_first1\", \"object\": \"customer\"}}},
        {\"id\": \"$good2\", \"type\": \"customer.updated\", \"created\": $((created + 2)),
         \"data\": {\"object\": {\"id\": \"cus_first2\", \"object\": \"customer\"}}}]}" >/dev/null ||
        problems+=(" the fake refused the events")
    fake_total=$((fake_total + 2))
    sql "SELECT stripe_billing.stripe_sync_start_from(to_timestamp($created)::text)" >/dev/null
    sql "SELECT stripe_billing.stripe_sync_resume()" >/dev/null
    wait_until 60 in_ledger "$good2" || problems+=(" the events after the malformed oldest one never arrived (sync_status: $(sync_status last_error))")
    in_ledger "$good1" || problems+=(" the first good event is missing")
    more_warnings "$warned" || problems+=(" no warning about the skipped event in the log")
    [ "$(sync_status consecutive_failures)" = 0 ] || problems+=(" consecutive_failures is $(sync_status consecutive_failures)")
    conclude "8 malformed, first start" "the oldest event since start_from has a 3,006-byte id: skipped with a warning, the two after it applied, no failure" "${problems[@]}"
}

# ---- 12: an event jsonb refuses does not stall the worker -----------------

check_unparsable() {
    begin
    local problems=() bad good1 good2 row
    generate 1 1 1; good1=$gen_first
    bad="evt_nul_$RANDOM$RANDOM"
    # a \u0000 in a string: valid JSON, which jsonb refuses (the whole page with it, once)
    fake POST /_fake/events "{\"events\": [{\"id\": \"$bad\", \"type\": \"customer.updated\",
        \"created\": $(($(date +%s) + 86400)), \"data\": {\"object\": {\"id\": \"cus_nul\", \"object\": \"customer\",
        \"name\": \"a\\u0000b\"}}}]}" >/dev/null || problems+=(" the fake refused the event")
    fake_total=$((fake_total + 1))
    generate 1 1 1; good2=$gen_first
    wait_until 60 in_ledger "$good2" || problems+=(" the event after the unparsable one never arrived (sync_status: $(sync_status last_error))")
    in_ledger "$good1" || problems+=(" the event before the unparsable one is missing")
    row=$(sql "SELECT outcome || ', ' || source || ', body ' || (body IS NOT NULL) || ', payload ' || (payload IS NOT NULL) || ', ' || left(error, 60)
                 FROM stripe_billing.events WHERE id = '$bad'")
    [[ "$row" == "failed, poll, body true, payload false, the event is not valid jsonb"* ]] ||
        problems+=(" the event is not kept as failed with its body: ${row:-not in the ledger}")
    [ "$(sql "SELECT position('\\u0000' IN convert_from(body, 'UTF8')) > 0 FROM stripe_billing.events WHERE id = '$bad'")" = t ] ||
        problems+=(" the kept body lost the \\u0000")
    ledger_complete || problems+=(" the ledger lacks $(pending) events")
    conclude "12 unparsable" "an event jsonb refuses (\\u0000) between two good ones: $row; the page's other events applied" "${problems[@]}"
}

check_standby() {
    begin
    local problems=() recovery
    at_exit cluster_stop "$standby"
    mkdir -p "$standby"
    [ "$(id -u)" -eq 0 ] && chown "$SB_TEST_USER" "$standby"
    as_owner "$PG_BINDIR/pg_basebackup" -h "$primary" -U postgres -D "$standby/data" -R -X stream -c fast ||
        { conclude "7 standby" "no standby" " pg_basebackup failed"; return; }
    echo "unix_socket_directories = '$standby'" | as_owner tee -a "$standby/data/postgresql.conf" >/dev/null
    as_owner "$PG_BINDIR/pg_ctl" -D "$standby/data" -l "$standby/server.log" -w start >/dev/null ||
        { conclude "7 standby" "no standby" " the standby did not start"; return; }
    recovery=$(psql -X -At -h "$standby" -d postgres -c "SELECT pg_is_in_recovery()")
    [ "$recovery" = t ] || problems+=(" the standby is not in recovery")
    # for 4 s, never a worker (that something does NOT happen: a worker the
    # standby wrongly started would be there from its start, which -w waited for)
    wait_until 4 standby_has_worker && problems+=(" the standby runs a stripe_billing sync worker")
    grep -q 'sync worker started' "$standby/server.log" && problems+=(" the standby's log shows a worker start")
    has_worker || problems+=(" (control) the primary has no worker")
    conclude "7 standby" "a streaming standby (in recovery: $recovery) ran no 'stripe_billing sync' backend for 4 s; the primary does" "${problems[@]}"
}

# ---- main --------------------------------------------------------------------

if ! setup; then
    conclude "setup" "cluster, fake Stripe, first cursor" " setup failed"
    exit 1
fi
check_signals
check_catch_up
check_crashes
check_faults
check_webhooks
check_usage
check_malformed
check_echoed_key
check_late_listed
check_empty_has_more
check_unparsable
check_malformed_first_start
check_standby
echo "worker: $passed passed, $failed failed in $(($(date +%s) - began)) s"
[ $failed -eq 0 ]
