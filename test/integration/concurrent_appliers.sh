#!/usr/bin/env bash
# Webhooks and the worker applying the same events at once (issue 22, items
# 6 and 7), on a throwaway cluster of its own with the worker polling the
# fake Stripe every second.
#
# A run: the fake makes ROUNDS rounds of USERS users' subscription
# lifecycles (test/integration/fake_stripe/lifecycle.js: 11 events each, in bursts
# sharing a second: Checkout, which alone links the user to the customer
# through client_reference_id; the customer; the subscription created and
# updated; an invoice paid, a renewal failed then paid; the subscription
# deleted).  test/integration/concurrent_appliers/deliver.py hands them, shuffled, to
# stripe_handle_webhook as signed webhooks through SESSIONS sessions, while
# the worker polls the same events: every event reaches the database twice.
# (The worker is paused while the events are made and read, and resumed and
# woken as the webhooks start, so both paths start together.)
# Then, one PASS/FAIL line each:
#   deadlocks  no "deadlock detected", nor any other error, in the server
#              log (each deadlock attributed to a webhook or the worker)
#   webhooks   no delivery raised; outcomes applied, stale or duplicate
#   ledger     every event in the ledger once, outcomes applied or stale
#   users      every user ends with all subscriptions canceled, no feature
#              (stripe_has_entitlement(user, 'reports') false)
#   replay     the billing rows of the run equal those of a clean database
#              where the same events were applied one after another in
#              created order, and user_features a fresh derivation
#   overlap    both paths applied events first, and polled events were
#              applied while the webhooks were delivered (not vacuous)
#   race       (item 7, narrowed) RACE_USERS users' lifecycles applied but
#              checkout.session.completed and customer.subscription.deleted,
#              then those two at the same moment in two sessions, user by
#              user (each transaction first waits on an advisory lock that
#              is released once both wait), in a database of its own: no
#              user may stay entitled ("entitled after the race: k of M"),
#              no delivery may raise
#
# Settings (environment):
#   ROUNDS=1       lifecycles per user (3: the issue's ~3,300 events)
#   USERS=100      users per run
#   SESSIONS=8     concurrent webhook sessions
#   RUNS=1         runs, each with new events, users and seeds; prints
#                  "right in k of N runs" (every user right in the run)
#   RACE_USERS=40  users of the narrowed race, per run (0: no race)
#   SEED=1         run k uses seed SEED + k - 1 (events and shuffle)
#   PACE_MS=0      mean pause of a session after each webhook
#   RACE_START=gate  how the race's two deliveries start together: gate (the
#                  advisory lock; tens of microseconds apart) or client (a
#                  barrier in the driver; about a millisecond apart)
#   MIN_FIRST_PCT=5  the overlap check's least share (%) of a run's events
#                  that each path must have applied first
#   KEEP=1         keep the work directory (logs, data) for inspection
#   PG_BINDIR      the PostgreSQL (test/lib/cluster.sh)
# Exits 0 only if every check of every run passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh

ROUNDS=${ROUNDS:-1}
USERS=${USERS:-100}
SESSIONS=${SESSIONS:-8}
RUNS=${RUNS:-1}
RACE_USERS=${RACE_USERS:-40}
SEED=${SEED:-1}
PACE_MS=${PACE_MS:-0}
RACE_START=${RACE_START:-gate}
# each path must have been first for at least this share of a run's events
MIN_FIRST_PCT=${MIN_FIRST_PCT:-5}

PY=/usr/bin/python3     # Debian's, which has python3-psycopg
$PY -c 'import psycopg' 2>/dev/null || { echo "FAIL: python3-psycopg is missing"; exit 1; }
DRIVER="$PY test/integration/concurrent_appliers/deliver.py"
KEY=sk_test_appliers_$RANDOM$RANDOM
WHSEC=whsec_appliers_$RANDOM$RANDOM
DB=appliers
began=$(date +%s)
work=$(mktemp -d /tmp/stripe_billing_appliers.XXXXXX)
chmod 755 "$work"
pg=$work/pg
fake_pid=
driver_pid=
port=
last_created=0

cleanup() {
    [ -n "$driver_pid" ] && kill "$driver_pid" 2>/dev/null && wait "$driver_pid" 2>/dev/null
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null
    cluster_stop "$pg"
    if [ "${KEEP:-0}" = 1 ]; then
        echo "logs and data kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sql() {
    local db=$DB
    [ $# -eq 2 ] && { db=$1; shift; }
    psql -X -At -q -v ON_ERROR_STOP=1 -d "$db" -c "$1"
}
fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "http://127.0.0.1:$port$2"
}
fake_last_id() { fake GET /_fake/events | jq -r '.[-1].id'; }
cursor() { sql "SELECT cursor FROM stripe_billing.sync_status" 2>/dev/null; }
worker_pid() { sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'" 2>/dev/null; }

# driver OUT COMMAND ARGS...: deliver.py in the background (so that a signal
# reaches the EXIT trap at once), its JSON summary to OUT
driver() {
    local out=$1 rc
    shift
    $DRIVER "$1" --fake "http://127.0.0.1:$port" --key "$KEY" --secret "$WHSEC" "${@:2}" >"$out" 2>"$out.err" &
    driver_pid=$!
    wait "$driver_pid"
    rc=$?
    driver_pid=
    [ $rc -eq 0 ] || { echo "      deliver.py $1 failed ($rc): $(tail -3 "$out.err")"; }
    return $rc
}

# lifecycles USERS ROUNDS PREFIX SEED: appends them to the fake; prints its answer
lifecycles() {
    local start out
    start=$(($(date +%s) + 86400))
    [ "$start" -gt $((last_created + 30)) ] || start=$((last_created + 30))
    out=$(fake POST /_fake/events "{\"generate\": {\"mode\": \"lifecycle\", \"users\": $1, \"rounds\": $2,
        \"user_prefix\": \"$3\", \"seed\": $4, \"start_created\": $start}}") || return 1
    last_created=$(jq .last_created <<<"$out")
    echo "$out"
}

# deadlocks_since OFFSET: "pid" of each deadlock logged after byte OFFSET of the server log
deadlocks_since() {
    tail -c +"$(($1 + 1))" "$pg/server.log" | sed -nE 's/^[^[]*\[([0-9]+)\] .*ERROR: +deadlock detected.*/\1/p'
}

# ---- setup -----------------------------------------------------------------
# Events are dated a day ahead (as test/integration/worker.sh does): the worker re-fetches
# objects left by a same-second tie and applies them as snapshots dated by the
# response; a day ahead these are stale, and the rows stay comparable with
# the clean replay.  The fake holds one event before the worker starts: its
# first cursor, never applied.

setup() {
    node test/integration/fake_stripe/server.js --port 0 --key "$KEY" --port-file "$work/fake.port" >"$work/fake.log" 2>&1 &
    fake_pid=$!
    wait_until 10 test -s "$work/fake.port" || { cat "$work/fake.log"; return 1; }
    port=$(cat "$work/fake.port")
    fake POST /_fake/events '{"generate": {"count": 1, "customers": 1, "seed": 1}}' >/dev/null || return 1
    seed_id=$(fake_last_id)
    cluster_start "$pg" "shared_preload_libraries = 'stripe_billing'" \
        "stripe_billing.api_base = 'http://127.0.0.1:$port'" "stripe_billing.api_key = '$KEY'" \
        "stripe_billing.webhook_secret = '$WHSEC'" "stripe_billing.poll_interval = '1s'" \
        "stripe_billing.database = '$DB'" "stripe_billing.backfill_on_start = off" || return 1
    local db
    for db in "$DB" clean race; do
        sql postgres "CREATE DATABASE $db" &&
            sql "$db" "CREATE EXTENSION stripe_billing" &&
            sql "$db" "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports')" >/dev/null || return 1
    done
    for db in "$DB" clean; do
        psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f test/integration/concurrent_appliers/helpers.sql || return 1
    done
    wait_until 30 eval '[ "$(cursor)" = "$seed_id" ]' ||
        { echo "the worker did not take the fake's event as its cursor ($(cursor))"; return 1; }
    note "worker pid $(worker_pid), fake on port $port, work dir $work"
}

# load_run DB DIR: the run's events and users into DB's ctest tables
load_run() {
    psql -X -q -v ON_ERROR_STOP=1 -d "$1" \
        -c "TRUNCATE ctest.run_events, ctest.run_users" \
        -c "\\copy ctest.run_events (ord, id, type, created, user_ref) FROM '$2/events.tsv' WITH (NULL '')" \
        -c "INSERT INTO ctest.run_users SELECT DISTINCT user_ref FROM ctest.run_events WHERE user_ref IS NOT NULL"
}

run_ledger_count() { sql "SELECT count(*) FROM stripe_billing.events WHERE id IN (SELECT id FROM ctest.run_events)" 2>/dev/null; }

# ---- one run -----------------------------------------------------------------

right_runs=0
total_deadlocks=0 total_raised=0 total_wrong=0 total_entitled=0 total_race_users=0 total_race_entitled=0
runs_report=()

one_run() {
    local k=$1 seed=$((SEED + $1 - 1)) dir=$work/run$1 after gen n log_at s problems=() w
    mkdir -p "$dir"
    echo "== run $k of $RUNS: $ROUNDS round(s) of $USERS users, $SESSIONS webhook sessions, seed $seed"
    after=$(fake_last_id)
    log_at=$(stat -c %s "$pg/server.log")
    # the worker is paused while the events are made and the driver reads
    # them; the driver resumes it (and wakes it) as its sessions start
    sql "SELECT stripe_billing.stripe_sync_pause()" >/dev/null
    sleep 0.5   # the cycle under way ends
    gen=$(lifecycles "$USERS" "$ROUNDS" "r${k}_u" "$seed") || { conclude "setup" "run $k" " the fake refused to generate"; return; }
    n=$(jq .appended <<<"$gen")
    driver "$dir/stress.json" stress --db "$DB" --after "$after" --sessions "$SESSIONS" --seed "$seed" \
        --pace-ms "$PACE_MS" --resume-worker --out "$dir/webhooks.jsonl" ||
        { sql "SELECT stripe_billing.stripe_sync_resume()" >/dev/null; conclude "webhooks" "run $k" " the driver failed"; return; }
    s=$(cat "$dir/stress.json")
    driver "$dir/list.json" list --after "$after" --out "$dir/events.tsv" &&
        load_run "$DB" "$dir" >/dev/null && load_run clean "$dir" >/dev/null ||
        { conclude "setup" "run $k" " could not load the run's events"; return; }
    begin
    wait_until 120 eval '[ "$(run_ledger_count)" = "$n" ]' || problems+=(" the ledger has $(run_ledger_count) of the run's $n events 120 s after the webhooks")
    # the worker's cursor reaches the run's last event: its polls are done
    wait_until 60 eval '[ "$(cursor)" = "$(jq -r .last_id <<<"$gen")" ]' || problems+=(" the worker's cursor did not reach the run's last event")
    note "$n events ($(jq -c '[.first_created, .last_created]' <<<"$gen") created), webhooks delivered in $(jq .seconds <<<"$s") s: $(jq -c .outcomes <<<"$s"), raised $(jq .raised <<<"$s")"

    # -- deadlocks
    begin
    local pids wpid dl dl_hooks dl_worker dl_other
    pids=" $(jq -r '.pids | join(" ")' <<<"$s") "
    wpid=$(worker_pid)
    dl=$(deadlocks_since "$log_at")
    dl_hooks=0 dl_worker=0 dl_other=0
    for w in $dl; do
        if [[ "$pids" == *" $w "* ]]; then dl_hooks=$((dl_hooks + 1))
        elif [ "$w" = "$wpid" ]; then dl_worker=$((dl_worker + 1))
        else dl_other=$((dl_other + 1)); fi
    done
    local dl_n=$((dl_hooks + dl_worker + dl_other)) others
    total_deadlocks=$((total_deadlocks + dl_n))
    local pr=()
    [ "$dl_n" = 0 ] || pr+=(" $dl_n 'deadlock detected' in the server log (aborted: $dl_hooks webhook transactions, $dl_worker worker pages, $dl_other others)")
    # and no other error (the worker's would be seen nowhere else)
    others=$(tail -c +"$((log_at + 1))" "$pg/server.log" | grep -E ' (ERROR|FATAL|PANIC): ' | grep -v 'deadlock detected' |
        sed -E 's/^[^]]*\] //' | cut -c1-120 | sort | uniq -c | paste -sd ';')
    [ -z "$others" ] || pr+=(" other errors in the server log: $others")
    conclude "deadlocks" "run $k: $dl_n 'deadlock detected' in the server log ($dl_hooks webhooks, $dl_worker worker, $dl_other other), no other error" "${pr[@]}"
    [ "$dl_n" = 0 ] || tail -c +"$((log_at + 1))" "$pg/server.log" | grep -A3 -m2 'deadlock detected' | sed 's/^/      | /' | cut -c1-220

    # -- webhooks
    begin
    pr=()
    local raised delivered odd
    raised=$(jq .raised <<<"$s")
    delivered=$(jq .delivered <<<"$s")
    total_raised=$((total_raised + raised))
    [ "$raised" = 0 ] || pr+=(" $raised of $delivered webhooks raised: $(jq -r '.errors | to_entries | map("\(.value)x \(.key)") | join("; ")' <<<"$s" | cut -c1-300)")
    [ "$delivered" = "$n" ] || pr+=(" $delivered webhooks delivered for $n events")
    odd=$(jq -r '.outcomes | keys - ["applied", "stale", "duplicate"] | join(",")' <<<"$s")
    [ -z "$odd" ] || pr+=(" webhook outcomes other than applied, stale, duplicate: $odd")
    conclude "webhooks" "run $k: $delivered signed webhooks, $raised raised; outcomes $(jq -c .outcomes <<<"$s")" "${pr[@]}"

    # -- ledger
    begin
    pr=("${problems[@]}")
    local outcomes missing
    outcomes=$(sql "SELECT string_agg(outcome || '=' || n, ' ' ORDER BY outcome) FROM (SELECT outcome, count(*) n FROM stripe_billing.events
                     WHERE id IN (SELECT id FROM ctest.run_events) GROUP BY 1) o")
    missing=$(sql "SELECT count(*) FROM ctest.run_events r WHERE NOT EXISTS (SELECT FROM stripe_billing.events e WHERE e.id = r.id)")
    [ "$missing" = 0 ] || pr+=(" $missing of the run's events are not in the ledger")
    [ "$(sql "SELECT count(*) FROM stripe_billing.events WHERE id IN (SELECT id FROM ctest.run_events) AND outcome NOT IN ('applied', 'stale')")" = 0 ] ||
        pr+=(" ledger outcomes other than applied, stale: $outcomes")
    conclude "ledger" "run $k: $n events, each once in the ledger; outcomes $outcomes" "${pr[@]}"

    # -- users
    begin
    pr=()
    local wrong entitled examples
    sql "SELECT * FROM ctest.users()" >"$dir/users.txt"
    wrong=$(awk -F'|' -v r="$ROUNDS" '$2 != r || $3 != r || $4 != r || $5 != "f" || $6 != 0' "$dir/users.txt" | wc -l)
    entitled=$(awk -F'|' '$5 == "t"' "$dir/users.txt" | wc -l)
    examples=$(awk -F'|' -v r="$ROUNDS" '$2 != r || $3 != r || $4 != r || $5 != "f" || $6 != 0' "$dir/users.txt" | head -3 | paste -sd ' ')
    total_wrong=$((total_wrong + wrong))
    total_entitled=$((total_entitled + entitled))
    [ "$(wc -l <"$dir/users.txt")" = "$USERS" ] || pr+=(" $(wc -l <"$dir/users.txt") users in the run, not $USERS")
    [ "$wrong" = 0 ] || pr+=(" $wrong of $USERS users end wrong, $entitled of them still entitled to 'reports' (user|customers|subscriptions|canceled|entitled|features: $examples)")
    conclude "users" "run $k: $((USERS - wrong)) of $USERS users end with their $ROUNDS subscription(s) canceled and no feature; $entitled still entitled" "${pr[@]}"
    local users_ok=${#pr[@]}

    # -- replay
    begin
    pr=()
    local r d fresh
    if driver "$dir/replay.json" replay --db clean --after "$after"; then
        r=$(cat "$dir/replay.json")
        [ "$(jq .raised <<<"$r")" = 0 ] || pr+=(" the clean replay raised: $(jq -c .errors <<<"$r")")
        d=$(diff <(sql "SELECT * FROM ctest.state()") <(sql clean "SELECT * FROM ctest.state()") |
            awk '/^[<>]/ { print $2 }' | sort -u | paste -sd ' ')
        [ -z "$d" ] || pr+=(" tables differing from the clean in-order replay: $d")
    else
        pr+=(" the clean replay failed")
    fi
    # user_features against a derivation from scratch, rolled back
    fresh=$(psql -X -At -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
BEGIN;
CREATE TEMP TABLE kept ON COMMIT DROP AS
  SELECT user_ref, feature, valid_until FROM stripe_billing.user_features WHERE user_ref IN (SELECT user_ref FROM ctest.run_users);
SELECT stripe_billing.stripe_refresh_entitlements() \g /dev/null
SELECT count(*) FROM ((SELECT * FROM kept EXCEPT SELECT user_ref, feature, valid_until FROM stripe_billing.user_features
                        WHERE user_ref IN (SELECT user_ref FROM ctest.run_users))
                      UNION ALL
                      (SELECT user_ref, feature, valid_until FROM stripe_billing.user_features
                        WHERE user_ref IN (SELECT user_ref FROM ctest.run_users) EXCEPT SELECT * FROM kept)) x;
ROLLBACK;
SQL
)
    [ "$fresh" = 0 ] || pr+=(" ${fresh:-?} user_features rows differ from a fresh derivation")
    conclude "replay" "run $k: checkout sessions, customers, invoices, subscriptions, items and user_features = a clean replay one after another in created order; user_features = a fresh derivation" "${pr[@]}"
    local right=no
    [ "$users_ok" = 0 ] && [ ${#pr[@]} = 0 ] && { right=yes; right_runs=$((right_runs + 1)); }

    # -- overlap: both paths were first for some events, at the same time
    begin
    pr=()
    local by_hook by_poll polled_during dup
    IFS='|' read -r by_hook by_poll polled_during < <(sql "SELECT count(*) FILTER (WHERE source = 'webhook'), count(*) FILTER (WHERE source = 'poll'),
            count(*) FILTER (WHERE source = 'poll' AND received_at BETWEEN to_timestamp($(jq .first_start <<<"$s")) AND to_timestamp($(jq .last_end <<<"$s")))
          FROM stripe_billing.events WHERE id IN (SELECT id FROM ctest.run_events)")
    dup=$(jq '.outcomes.duplicate // 0' <<<"$s")
    [ $((by_hook * 100)) -ge $((n * MIN_FIRST_PCT)) ] || pr+=(" webhooks were first for only $by_hook of $n events")
    [ $((by_poll * 100)) -ge $((n * MIN_FIRST_PCT)) ] || pr+=(" polling was first for only $by_poll of $n events")
    [ "$polled_during" -gt 0 ] || pr+=(" no polled event was applied while the webhooks were delivered")
    [ "$by_hook" = "$(jq '(.outcomes.applied // 0) + (.outcomes.stale // 0)' <<<"$s")" ] ||
        pr+=(" the ledger credits webhooks with $by_hook events, the webhooks answered applied or stale $(jq '(.outcomes.applied // 0) + (.outcomes.stale // 0)' <<<"$s") times")
    conclude "overlap" "run $k: first by webhook $by_hook, by poll $by_poll ($polled_during of them while the webhooks were delivered; $dup webhooks then answered duplicate)" "${pr[@]}"

    # -- the narrowed race (item 7)
    local race_line="no race"
    if [ "$RACE_USERS" -gt 0 ]; then
        begin
        pr=()
        local ra rafter rlog rd=0 re
        rafter=$(fake_last_id)
        rlog=$(stat -c %s "$pg/server.log")
        gen=$(lifecycles "$RACE_USERS" 1 "r${k}_race_u" $((seed + 100000))) || pr+=(" the fake refused to generate")
        if driver "$dir/race.json" race --db race --after "$rafter" --start "$RACE_START" --out "$dir/race.jsonl"; then
            ra=$(cat "$dir/race.json")
            rd=$(deadlocks_since "$rlog" | grep -cxF -f <(jq -r '.pids[]' <<<"$ra"))
            re=$(jq .entitled <<<"$ra")
            total_race_users=$((total_race_users + RACE_USERS))
            total_race_entitled=$((total_race_entitled + re))
            [ "$re" = 0 ] || pr+=(" $re of $RACE_USERS users still entitled to 'reports' after the race, their subscription canceled: $(jq -r '.entitled_users[:5] | join(" ")' <<<"$ra")")
            [ "$(jq '.not_canceled | length' <<<"$ra")" = 0 ] || pr+=(" subscriptions not canceled: $(jq -c .not_canceled <<<"$ra")")
            [ "$(jq .raised <<<"$ra")" = 0 ] || pr+=(" $(jq .raised <<<"$ra") of the raced webhooks raised ($rd deadlocks; delivered again afterwards: $(jq -c .retried.outcomes <<<"$ra")): $(jq -r '.errors | keys | join("; ")' <<<"$ra" | cut -c1-200)")
            race_line="entitled after the race: $re of $RACE_USERS"
            conclude "race" "run $k: $race_line (start: $RACE_START; the two reached the ledger $(jq -r '.ledger_gap_us | "\(.[0]) µs apart (median), \(.[1]) µs (9th decile)"' <<<"$ra"); $(jq .raised <<<"$ra") raised)" "${pr[@]}"
        else
            conclude "race" "run $k" " the race driver failed"
        fi
        # the worker polls the race's events into $DB too: let it finish first
        wait_until 60 eval '[ "$(cursor)" = "$(fake_last_id)" ]' || note "the worker has not caught up with the race's events"
    fi
    runs_report+=("run $k: right=$right, deadlocks $dl_n, webhooks raised $raised, users wrong $wrong (entitled $entitled) of $USERS, first by webhook/poll $by_hook/$by_poll; $race_line")
}

# ---- main --------------------------------------------------------------------

if ! setup; then
    conclude "setup" "cluster, fake Stripe, worker" " setup failed"
    exit 1
fi
for k in $(seq 1 "$RUNS"); do
    one_run "$k"
done
echo "== summary"
printf '   %s\n' "${runs_report[@]}"
echo "   right in $right_runs of $RUNS runs ($ROUNDS round(s) of $USERS users, $SESSIONS sessions): $total_deadlocks deadlocks, $total_raised webhooks raised, $total_wrong users wrong ($total_entitled entitled)"
[ "$RACE_USERS" -gt 0 ] && echo "   entitled after the race: $total_race_entitled of $total_race_users"
echo "concurrent_appliers: $passed passed, $failed failed in $(($(date +%s) - began)) s"
[ "$failed" -eq 0 ]
