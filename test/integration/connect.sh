#!/usr/bin/env bash
# Stripe Connect (issue 25): the platform and 30 connected accounts of the
# fake Stripe, about 3,100 events across them, delivered shuffled with a
# quarter of them twice by webhook (the platform's signed with its
# endpoint's secret, the accounts' with the Connect endpoint's: the secret
# list holds both) through 8 sessions while the worker polls every account
# it learns of, on a throwaway cluster of its own.  One PASS/FAIL line each:
#   webhooks   no delivery raised; outcomes applied, stale or duplicate
#   worker     the worker polled every connected account (its cursor at the
#              account's newest event) and applied some events first
#   errors     no deadlock, no other ERROR in the server log
#   accounts   stripe_billing.accounts holds the 30 accounts (their
#              account.updated fields as the fake has them)
#   rows       each account's customers, subscriptions (their items'
#              prices), invoices and events here equal the fake's, each row
#              carrying its account (test/integration/connect/connect.py)
#   products   the product prod_basic (an id the accounts chose alike) of
#              the platform and of two accounts, backfilled by hand with
#              stripe_backfill(kinds, account => ...): three rows
#   reconcile  stripe_reconcile(account => ...) repairs an account's drift;
#              the worker reconciles the platform and every account on
#              schedule (reconcile_interval), the longest waiting first
#              (the platform too), repairing another's
#   grants     grants by lookup key per account give each account's users
#              that account's feature only; a grant by product id on one
#              account does not reach users of the same product id on
#              another; stripe_has_entitlement agrees
#   newcomer   an account authorized later (account.application.authorized
#              by webhook), whose objects were made without events: the
#              worker backfills it on its own (backfill_on_start)
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/checks.sh
. test/lib/fake_stripe.sh

PY=/usr/bin/python3     # Debian's, which has python3-psycopg
$PY -c 'import psycopg' 2>/dev/null || { echo "FAIL: python3-psycopg is missing"; exit 1; }
KEY=sk_test_connect_$RANDOM$RANDOM
WHSEC=whsec_platform_$RANDOM$RANDOM
WHSEC_CONNECT=whsec_connect_$RANDOM$RANDOM
DB=connect
ACCOUNTS=${ACCOUNTS:-30}
work_begin connect
began=$(date +%s)

sql() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fake() {
    curl -sS --fail-with-body --max-time 60 -X "$1" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$FAKE_URL$2"
}
client() { $PY test/integration/connect/connect.py "$@"; }

# ---- setup: the fake's accounts, the cluster, the grants
fake_start "$work" "$KEY" || exit 1
fake POST /_fake/accounts "{\"count\": $ACCOUNTS}" >/dev/null || exit 1
mapfile -t accounts < <(fake GET /_fake/accounts | jq -r '.[].id')
basic=${accounts[0]} other=${accounts[1]}
# one event of the platform before the worker starts: its first cursor
fake POST /_fake/events '{"generate": {"count": 1, "customers": 1, "seed": 1}}' >/dev/null || exit 1
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" \
    "stripe_billing.api_base = '$FAKE_URL'" "stripe_billing.api_key = '$KEY'" \
    "stripe_billing.webhook_secret = '$WHSEC,$WHSEC_CONNECT'" "stripe_billing.poll_interval = '1s'" \
    "stripe_billing.database = '$DB'" "stripe_billing.backfill_on_start = off" \
    "stripe_billing.max_requests_per_second = 100" || exit 1
psql -X -q -d postgres -c "CREATE DATABASE $DB" && sql "CREATE EXTENSION stripe_billing" || exit 1
{
    echo "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'pro@platform');"
    for a in "${accounts[@]}"; do
        echo "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'pro@$a', account => '$a');"
    done
    echo "SELECT stripe_billing.stripe_grant_feature('product', 'prod_basic', 'basic@$basic', account => '$basic');"
} | psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null || exit 1
wait_until 30 eval '[ -n "$(sql "SELECT cursor FROM stripe_billing.sync_status WHERE account IS NULL")" ]' ||
    { echo "FAIL  setup: the worker took no cursor"; exit 1; }

# ---- the events: the platform's and each account's (5% account.updated),
# made while the worker is paused; then webhooks and the worker at once
sql "SELECT stripe_billing.stripe_sync_pause()" >/dev/null
sleep 1.5    # (the cycle under way ends)
start=$(($(date +%s) - 120))
fake POST /_fake/events "{\"generate\": {\"count\": 100, \"customers\": 25, \"per_second\": 5, \"seed\": 7,
    \"start_created\": $start}}" >/dev/null || exit 1
fake POST /_fake/events "{\"generate\": {\"count\": 100, \"customers\": 25, \"per_second\": 5, \"seed\": 11,
    \"account_updates\": 0.05, \"start_created\": $start}, \"accounts\": $ACCOUNTS}" >/dev/null || exit 1
client fetch --fake "$FAKE_URL" --key "$KEY" --out "$work/events.jsonl" >"$work/fetch.json" || exit 1
n=$(jq .events "$work/fetch.json")
note "$n events: $(jq .platform "$work/fetch.json") of the platform, the others of $(jq .accounts "$work/fetch.json") connected accounts"
log_at=$(stat -c %s "$work/pg/server.log")

begin
client deliver --db "$DB" --events "$work/events.jsonl" --secret "$WHSEC" --connect-secret "$WHSEC_CONNECT" \
    --sessions 8 --duplicates 0.25 --seed 5 --resume-worker >"$work/deliver.json" 2>"$work/deliver.log"
d=$(cat "$work/deliver.json" 2>/dev/null || echo '{}')
pr=()
[ "$(jq .raised <<<"$d")" = 0 ] || pr+=(" $(jq .raised <<<"$d") webhooks raised: $(jq -c .errors <<<"$d" | cut -c1-300)")
odd=$(jq -r '.outcomes // {} | keys - ["applied", "stale", "duplicate"] | join(",")' <<<"$d")
[ -z "$odd" ] || pr+=(" outcomes other than applied, stale, duplicate: $odd")
conclude "webhooks" "$(jq .delivered <<<"$d") signed webhooks for $n events in $(jq .seconds <<<"$d") s; outcomes $(jq -c .outcomes <<<"$d")" "${pr[@]}"

# ---- the worker: every account's cursor at its newest event
begin
pr=()
ledger() { sql "SELECT count(*) FROM stripe_billing.events"; }
behind() {
    local a newest behind=0
    for a in "" "${accounts[@]}"; do
        newest=$(curl -sS -H "Authorization: Bearer $KEY" ${a:+-H "Stripe-Account: $a"} "$FAKE_URL/v1/events?limit=1" | jq -r '.data[0].id')
        [ "$(sql "SELECT event_cursor FROM stripe_billing.sync_state WHERE account IS NOT DISTINCT FROM NULLIF('$a', '')" 2>/dev/null)" = "$newest" ] ||
            behind=$((behind + 1))
    done
    echo "$behind"
}
wait_until 120 eval '[ "$(ledger)" -ge "$n" ]' || pr+=(" the ledger holds $(ledger) events of $n")
POLL=1 wait_until 120 eval '[ "$(behind)" = 0 ]' || pr+=(" $(behind) of $((ACCOUNTS + 1)) cursors are not at their account's newest event")
# (ties of one second marked rows for the worker to re-fetch: it does)
marked() {
    sql "SELECT (SELECT count(*) FROM stripe_billing.customers WHERE refetch) + (SELECT count(*) FROM stripe_billing.subscriptions WHERE refetch)
              + (SELECT count(*) FROM stripe_billing.invoices WHERE refetch) + (SELECT count(*) FROM stripe_billing.accounts WHERE refetch)"
}
POLL=0.5 wait_until 60 eval '[ "$(marked)" = 0 ]' || pr+=(" $(marked) rows still marked for a re-fetch")
IFS='|' read -r by_hook by_poll by_poll_connected polled_accounts < <(sql "
    SELECT count(*) FILTER (WHERE source = 'webhook'), count(*) FILTER (WHERE source = 'poll'),
           count(*) FILTER (WHERE source = 'poll' AND account IS NOT NULL),
           (SELECT count(*) FROM stripe_billing.sync_state WHERE account IS NOT NULL AND last_success_at IS NOT NULL)
      FROM stripe_billing.events")
[ "$by_poll_connected" -gt 0 ] || pr+=(" the worker applied no connected account's event first")
[ "$polled_accounts" = "$ACCOUNTS" ] || pr+=(" $polled_accounts connected accounts polled, not $ACCOUNTS")
conclude "worker" "$polled_accounts accounts polled, every cursor at its account's newest event, every tie re-fetched; first by webhook $by_hook, by poll $by_poll ($by_poll_connected of connected accounts)" "${pr[@]}"

begin
errors=$(tail -c +"$((log_at + 1))" "$work/pg/server.log" | grep -E ' (ERROR|FATAL|PANIC): ' |
    sed -E 's/^[^]]*\] //' | cut -c1-160 | sort | uniq -c | paste -sd ';')
[ -z "$errors" ] && conclude "errors" "no deadlock and no other ERROR in the server log" ||
    conclude "errors" "the server log" " $errors"

# ---- accounts
begin
pr=()
curl -sS -H "Authorization: Bearer $KEY" "$FAKE_URL/v1/accounts?limit=100" |
    jq -r '.data[] | [.id, .business_profile.name, (.charges_enabled | tostring), (.payouts_enabled | tostring),
                      (.requirements.currently_due | sort | join(","))] | @tsv' | sort >"$work/accounts.fake"
sql "SELECT id, business_name, charges_enabled::text, payouts_enabled::text,
            array_to_string(ARRAY(SELECT unnest(requirements_due) ORDER BY 1), ',')
       FROM stripe_billing.accounts" | tr '|' '\t' | sort >"$work/accounts.here"
[ "$(wc -l <"$work/accounts.fake")" = "$ACCOUNTS" ] || pr+=(" the fake lists $(wc -l <"$work/accounts.fake") accounts")
diff -q "$work/accounts.fake" "$work/accounts.here" >/dev/null ||
    pr+=(" stripe_billing.accounts differs from the fake's: $(diff "$work/accounts.fake" "$work/accounts.here" | grep '^[<>]' | head -2 | paste -sd ' ')")
conclude "accounts" "$(wc -l <"$work/accounts.here") connected accounts, names, charges and payouts enabled and requirements due as the fake's" "${pr[@]}"

# ---- rows
begin
c=$(client compare --db "$DB" --fake "$FAKE_URL" --key "$KEY") || c='{"problems": ["compare failed"]}'
mapfile -t pr < <(jq -r '.problems[] | " " + .' <<<"$c" | head -8)
conclude "rows" "$(jq -c .compared <<<"$c") compared across the platform and $ACCOUNTS accounts" "${pr[@]}"

# ---- products: the same chosen id in three accounts
begin
pr=()
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >"$work/backfill.log" 2>&1 <<SQL || pr+=(" stripe_backfill failed: $(tail -2 "$work/backfill.log")")
CALL stripe_billing.stripe_backfill(ARRAY['products', 'prices']);
CALL stripe_billing.stripe_backfill(ARRAY['products', 'prices'], account => '$basic');
CALL stripe_billing.stripe_backfill(ARRAY['products', 'prices'], account => '$other');
SQL
got=$(sql "SELECT string_agg(coalesce(account, 'platform'), ',' ORDER BY account NULLS FIRST) FROM stripe_billing.products WHERE id = 'prod_basic'")
[ "$got" = "platform,$(printf '%s\n' "$basic" "$other" | sort | paste -sd ,)" ] || pr+=(" products prod_basic: $got")
got=$(sql "SELECT count(*) FROM stripe_billing.prices WHERE id = 'price_basic'")
[ "$got" = 3 ] || pr+=(" $got prices price_basic, not 3")
got=$(sql "SELECT count(DISTINCT account) FROM stripe_billing.backfill_state WHERE state = 'done' AND account IS NOT NULL")
[ "$got" = 2 ] || pr+=(" backfill_state has $got connected accounts done, not 2")
conclude "products" "prod_basic and price_basic of the platform, $basic and $other: three rows each, backfilled per account" "${pr[@]}"

# ---- grants
begin
g=$(client features --db "$DB" --fake "$FAKE_URL" --key "$KEY" --basic-account "$basic") || g='{"wrong": -1}'
pr=()
[ "$(jq .wrong <<<"$g")" = 0 ] || pr+=(" $(jq .wrong <<<"$g") users' features differ from the grants': $(jq -c .examples <<<"$g" | cut -c1-400)")
[ "$(jq .check_disagrees <<<"$g")" = 0 ] || pr+=(" stripe_has_entitlement disagrees for $(jq .check_disagrees <<<"$g") users")
[ "$(jq .accounts_with_features <<<"$g")" = $((ACCOUNTS + 1)) ] || pr+=(" features of $(jq .accounts_with_features <<<"$g") accounts, not $((ACCOUNTS + 1)) (vacuous)")
[ "$(jq .basic_elsewhere <<<"$g")" -gt 0 ] || pr+=(" no user has prod_basic elsewhere only (vacuous)")
conclude "grants" "$(jq .users <<<"$g") users, $(jq .features <<<"$g") features of $(jq .accounts_with_features <<<"$g") accounts as granted; basic@$basic for its $(jq .basic_users <<<"$g") users only, not the $(jq .basic_elsewhere <<<"$g") with prod_basic on other accounts only" "${pr[@]}"

# ---- newcomer: an account authorized now, its objects made before (no
# events), is backfilled by the worker on its own
begin
pr=()
psql -X -q -d "$DB" -c "ALTER SYSTEM SET stripe_billing.backfill_on_start = on" -c "SELECT pg_reload_conf()" >/dev/null
# (a worker in the middle of a cycle reloads at the next one: a new worker
# reads the setting for sure; the postmaster starts it again in 5 s)
worker_pid() { sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'"; }
old_pid=$(worker_pid)
sql "SELECT pg_terminate_backend($old_pid)" >/dev/null
POLL=0.5 wait_until 60 eval '[ -n "$(worker_pid)" ] && [ "$(worker_pid)" != "$old_pid" ]' || pr+=(" the worker did not start again")
newcomer=$(fake POST /_fake/accounts '{"count": 1, "seed": 77, "catalogue": false, "authorized_event": true}' | jq -r '.ids[0]')
fake POST /_fake/account "{\"account\": \"$newcomer\", \"customers\": 40, \"products\": 4, \"prices\": 8, \"seed\": 3}" >/dev/null ||
    pr+=(" the fake refused to seed $newcomer")
: >"$work/newcomer.jsonl"
client fetch --fake "$FAKE_URL" --key "$KEY" --out "$work/newcomer.jsonl" --accounts "$newcomer" >/dev/null &&
    client deliver --db "$DB" --events "$work/newcomer.jsonl" --secret "$WHSEC" --connect-secret "$WHSEC_CONNECT" \
        --sessions 1 --duplicates 0 >"$work/newcomer.json" || pr+=(" its authorization was not delivered")
backfilled() { sql "SELECT count(*) FILTER (WHERE state = 'done') || '/' || count(*) FROM stripe_billing.backfill_state WHERE account = '$newcomer'"; }
# (every kind of _backfill_kinds but the platform's accounts)
kinds=$(sql "SELECT cardinality(stripe_billing._backfill_kinds()) - 1")
POLL=0.5 wait_until 180 eval '[ "$(backfilled)" = $kinds/$kinds ]' || pr+=(" its backfill: $(backfilled) kinds done, not $kinds/$kinds")
POLL=0.5 wait_until 60 eval '[ "$(marked)" = 0 ]'
c=$(client compare --db "$DB" --fake "$FAKE_URL" --key "$KEY") || c='{"problems": ["compare failed"]}'
mapfile -t -O "${#pr[@]}" pr < <(jq -r '.problems[] | " " + .' <<<"$c" | head -8)
n_new=$(sql "SELECT count(*) FROM stripe_billing.customers WHERE account = '$newcomer'")
[ "$n_new" = 40 ] || pr+=(" $n_new of its 40 customers here")
[ -n "$(sql "SELECT authorized_at FROM stripe_billing.accounts WHERE id = '$newcomer'")" ] || pr+=(" accounts.authorized_at is not set")
conclude "newcomer" "$newcomer, authorized by webhook with 40 customers made before: backfilled by the worker ($(backfilled) kinds), its rows equal the fake's, every account's still do" "${pr[@]}"

# ---- reconcile: per account, by hand and scheduled by the worker
begin
pr=()
drift() {   # drift ACCOUNT: a customer gone here, a subscription's cancel_at_period_end flipped
    sql "DELETE FROM stripe_billing.customers WHERE id = (SELECT min(id) FROM stripe_billing.customers WHERE account = '$1');
         UPDATE stripe_billing.subscriptions SET cancel_at_period_end = NOT cancel_at_period_end
          WHERE id = (SELECT min(id) FROM stripe_billing.subscriptions WHERE account = '$1')"
}
third=${accounts[2]} fourth=${accounts[3]}
drift "$third"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL stripe_billing.stripe_reconcile(account => '$third')" >"$work/reconcile.log" 2>&1 ||
    pr+=(" stripe_reconcile(account => ...) failed: $(tail -1 "$work/reconcile.log")")
by_hand=$(sql "SELECT state || ' ' || drifted || ' ' || fixed FROM stripe_billing.reconcile_status WHERE account = '$third'")
[ "$by_hand" = "done 2 2" ] || pr+=(" $third by hand: $by_hand (state, drifted, fixed), not done 2 2")
drift "$fourth"
# the subscriptions' and schedules' lists 300 ms late (not the events the
# worker polls): reconciling all the accounts takes longer than the
# interval, so the first reconciled are due again before the last had
# their turn
fake POST /_fake/latency '{"ms": 300, "path": "/v1/subscription"}' >/dev/null || pr+=(" the fake refused a latency")
psql -X -q -d "$DB" -c "ALTER SYSTEM SET stripe_billing.reconcile_interval = '5s'" -c "SELECT pg_reload_conf()" >/dev/null
# (the accounts reconciled on schedule at least once: the platform counts as one)
scheduled() { sql "SELECT count(DISTINCT coalesce(account, '')) FROM stripe_billing.reconcile_runs WHERE state = 'done' AND reason = 'scheduled'"; }
POLL=0.5 wait_until 480 eval '[ "$(scheduled)" -ge $((ACCOUNTS + 2)) ]' || pr+=(" $(scheduled) accounts reconciled by the worker, not $((ACCOUNTS + 2)) (the platform, $ACCOUNTS and the newcomer)")
psql -X -q -d "$DB" -c "ALTER SYSTEM SET stripe_billing.reconcile_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
fake DELETE /_fake/latency >/dev/null
sleep 1     # (a run under way ends)
POLL=0.5 wait_until 60 eval '[ "$(sql "SELECT count(*) FROM stripe_billing.reconcile_runs WHERE state = '"'running'"'")" = 0 ]'
c=$(client compare --db "$DB" --fake "$FAKE_URL" --key "$KEY") || c='{"problems": ["compare failed"]}'
mapfile -t -O "${#pr[@]}" pr < <(jq -r '.problems[] | " " + .' <<<"$c" | head -8)
# the longest waiting first: no account (the platform one of them) is
# reconciled twice on schedule before every account has been once (runs
# take longer than the interval)
repeated=$(sql "SELECT count(*) - count(DISTINCT coalesce(account, '')) FROM (SELECT account FROM stripe_billing.reconcile_runs
                 WHERE reason = 'scheduled' ORDER BY id LIMIT $((ACCOUNTS + 2))) r")
[ "$repeated" = 0 ] || pr+=(" $repeated of the first $((ACCOUNTS + 2)) scheduled runs repeat an account (the platform's: $(sql "SELECT count(*) FROM (SELECT account FROM stripe_billing.reconcile_runs WHERE reason = 'scheduled' ORDER BY id LIMIT $((ACCOUNTS + 2))) r WHERE account IS NULL")) while others waited")
fixed=$(sql "SELECT sum(fixed) FROM stripe_billing.reconcile_runs WHERE account = '$fourth' AND reason = 'scheduled'")
[ "$fixed" = 2 ] || pr+=(" the worker's runs fixed $fixed of $fourth's 2 differences")
conclude "reconcile" "$third reconciled by hand (state, drifted, fixed: $by_hand); the worker reconciled the platform and all $((ACCOUNTS + 1)) connected accounts on schedule, each once before any twice, fixing $fixed of $fourth's 2 differences; every account's rows equal the fake's" "${pr[@]}"

echo "connect: $passed passed, $failed failed in $(($(date +%s) - began)) s"
[ "$failed" -eq 0 ]
