#!/usr/bin/env bash
# stripe_billing on a Citus cluster: a coordinator and two worker nodes on
# loopback, each on a free port of its own, run by an unprivileged user;
# Citus 14 built from its release source in ../shared/vendor (test/lib/citus.sh,
# cached beside the PostgreSQL builds).  The application's table
# (2,000 rows of 20 users over 10 tenants) is distributed by tenant, with the
# policy USING (owner = current_setting('app.user_ref', true) AND
# stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')),
# read by an ordinary role that sets app.user_ref with SET LOCAL:
#   1 setup       CREATE EXTENSION on the coordinator is the setup: user_features
#                 becomes a reference table with a placement (and our trigger)
#                 on every node; stripe_citus_setup() then has nothing to do
#   2 refused     Citus refuses the hand-wrapped check (a subquery) in a
#                 policy of a distributed table; the bare check is made an
#                 InitPlan on the worker nodes by our planner support
#   3 rls         from one session: paid users see exactly their 100 rows,
#                 unpaid none, through multi-shard, router, grouped, CTE and
#                 LIMIT queries, as on the same table not distributed
#   4 settings    the setting reaches the worker nodes only by SET LOCAL with
#                 citus.propagate_set_commands = 'local' (also run by a
#                 function); without, or by set_config(), nothing is seen
#   5 revocation  a cancellation applied on the coordinator hides the rows
#                 from the same session's next transaction, answered by the
#                 same worker backends (warm connections)
#   6 node down   a worker node stopped: a webhook that changes features
#                 fails with an error and leaves nothing anywhere; changes of
#                 nothing apply; the surviving nodes answer checks; after the
#                 restart the redelivery applies on every node
#   7 new node    a node added and shards moved onto it: its checks answer
#                 right, and follow a revocation
#   8 connect     a connected account's subscription: the platform's grant
#                 does not cover it on any node, its account's grant does
#                 (on every node), and its revocation reaches every node
#   9 created first  in databases of their own: the extension created before
#                 Citus, and before the nodes were added (a warning): stripe_citus_setup()
#                 brings it into shape once (the earlier rows on every node),
#                 then has nothing to do
#  10 update      in a database of its own: 0.3.0 installed on the coordinator
#                 with nodes (before this version's Citus support), a user
#                 paid; ALTER EXTENSION UPDATE makes user_features a
#                 reference table, as CREATE EXTENSION does, on every node
# One PASS/FAIL line per check; exits 0 only if every check passed, 77
# (skipped, one line) without the Citus source or before PostgreSQL 16.
set -uo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
. test/lib/citus.sh
. test/lib/checks.sh

major=$("$PG_BINDIR/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
if [ "$major" -lt 16 ]; then
    echo "skipped: Citus $SB_CITUS_VERSION needs PostgreSQL 16 or later (this is $major)"
    exit 77
fi
if ! citus_source >/dev/null; then
    echo "skipped: Citus source not found ($SB_CITUS_VENDOR/citus-$SB_CITUS_VERSION.tar.gz)"
    exit 77
fi
citus_build || { echo "building Citus failed"; exit 1; }
version=$(sed -n "s/^default_version = '\\(.*\\)'/\\1/p" stripe_billing.control)
make -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null || { echo "installing stripe_billing failed"; exit 1; }

# (the nodes are stopped and the directory removed at exit, passing or
# failing: test/lib/work.sh)
work_begin citus
work_logs coord/server.log w1/server.log w2/server.log w3/server.log
WHSEC=whsec_citus_$RANDOM$RANDOM

# node NAME: starts a node with Citus and stripe_billing preloaded; its
# port in port[NAME]
declare -A port
node() {
    at_exit cluster_stop "$work/$1"
    citus_node_start "$work/$1" "shared_preload_libraries = 'citus, stripe_billing'" \
        "stripe_billing.webhook_secret = '$WHSEC'" || return 1
    port[$1]=$NODE_PORT
    q "$1" "CREATE EXTENSION citus" >/dev/null
}
# q NODE SQL: statements as the superuser, unaligned output.  (Given as a
# script, not -c: Citus sends some DDL to the shards as the query string it
# came in, which must then hold that one statement.)
q() { citus_psql "${port[$1]}" -U postgres -d postgres -At -q -v ON_ERROR_STOP=1 <<<"$2"; }
# app NODE: psql as the application's role, reading a script on stdin
app() { citus_psql "${port[$1]}" -U app -d postgres -At -q -v ON_ERROR_STOP=1 "${@:2}"; }
# placement NODE: this node's rows of user_features, read on its placement
placement() {
    q "$1" "SET citus.override_table_visibility = off;
            SELECT string_agg(user_ref || ':' || feature, ' ' ORDER BY user_ref) FROM stripe_billing.user_features_$shard"
}
# checks NODE USERS...: stripe_has_entitlement on that node, "user:t/f" each
checks() {
    local node=$1
    shift
    q "$node" "SELECT string_agg(u || ':' || stripe_billing.stripe_has_entitlement(u, 'reports'), ' ' ORDER BY u)
                 FROM unnest('{$(IFS=,; echo "$*")}'::text[]) u"
}

echo "== a coordinator and two worker nodes (Citus $SB_CITUS_VERSION, $("$PG_BINDIR/postgres" --version))"
node coord && node w1 && node w2 || { echo "could not start the nodes"; exit 1; }
q coord "SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]});
         SELECT citus_add_node('127.0.0.1', ${port[w1]});
         SELECT citus_add_node('127.0.0.1', ${port[w2]})" >/dev/null || { echo "could not add the nodes"; exit 1; }
echo "   coordinator :${port[coord]}, workers :${port[w1]} :${port[w2]}"

# ---- 1: setup ---------------------------------------------------------------
begin
problems=()
q coord "CREATE EXTENSION stripe_billing" >"$work/create.out" 2>&1 ||
    problems+=(" CREATE EXTENSION failed: $(cat "$work/create.out")")
kind=$(q coord "SELECT partmethod::text || repmodel::text FROM pg_dist_partition
                 WHERE logicalrelid = 'stripe_billing.user_features'::regclass")
[ "$kind" = nt ] || problems+=(" user_features is not a reference table (pg_dist_partition: '$kind')")
shard=$(q coord "SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'stripe_billing.user_features'::regclass")
groups=$(q coord "SELECT string_agg(groupid::text, ',' ORDER BY groupid) FROM pg_dist_placement WHERE shardid = ${shard:-0}")
[ "$groups" = 0,1,2 ] || problems+=(" placements on groups '$groups', not 0,1,2")
for n in coord w1 w2; do
    got=$(q "$n" "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing') || ' '
                  || (SELECT count(*) FROM pg_trigger WHERE tgname = 'user_features_invalidate_${shard:-0}')")
    [ "$got" = "$version 1" ] || problems+=(" $n: extension and placement trigger: '$got'")
done
again=$(q coord "SELECT stripe_billing.stripe_citus_setup()")
[ "$again" = f ] || problems+=(" stripe_citus_setup() after CREATE EXTENSION answered '$again', not false")
# other tables stay the coordinator's own
others=$(q coord "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'stripe_billing.%'")
[ "$others" = 1 ] || problems+=(" $others tables of stripe_billing are Citus tables, not 1")
conclude "1 setup" "CREATE EXTENSION made user_features a reference table (shard $shard, placements on groups $groups, trigger on each); setup again: nothing to do" "${problems[@]}"

# The billing state: 20 users; even ones pay ('active'), u01, u05, ... were
# canceled, u03, u07, ... never subscribed.  Later events go through the
# webhook.
sub_event_sql="CREATE FUNCTION sub_event(evt text, created bigint, status text, u text) RETURNS jsonb
         LANGUAGE sql AS \$\$
           SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', 'customer.subscription.updated',
                    'created', created, 'livemode', false,
                    'data', jsonb_build_object('object', jsonb_build_object(
                       'id', 'sub_' || u, 'object', 'subscription', 'customer', 'cus_' || u,
                       'status', status, 'metadata', jsonb_build_object('user_ref', u),
                       'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                          'id', 'si_' || u, 'quantity', 1,
                          'current_period_start', 1700000000, 'current_period_end', 4102444800,
                          'price', jsonb_build_object('id', 'price_pro', 'lookup_key', 'pro',
                                                      'product', 'prod_pro')))))))
         \$\$;
"
q coord "CREATE EXTENSION pgcrypto; $sub_event_sql
         -- what an app's webhook route does with Stripe's request
         CREATE FUNCTION deliver(event jsonb) RETURNS text LANGUAGE sql AS \$\$
           SELECT stripe_billing.stripe_handle_webhook(event::text,
                    't=' || t || ',v1=' || encode(hmac(t || '.' || event::text, '$WHSEC', 'sha256'), 'hex'))
             FROM (SELECT extract(epoch FROM now())::bigint::text AS t) s
         \$\$;
         SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
         -- one batch, as a page the worker polls: its users' features
         -- are derived at its end, at once (10 rows written together)
         SELECT count(*) FROM stripe_billing.stripe_apply_events(ARRAY(
           SELECT sub_event('evt_' || u, 1700000000, CASE WHEN k % 2 = 0 THEN 'active' ELSE 'canceled' END, u)
             FROM generate_series(0, 19) k, LATERAL (SELECT 'u' || lpad(k::text, 2, '0') AS u) x
            WHERE k % 4 <> 3), 'poll')" >/dev/null || { echo "could not apply the events"; exit 1; }
users=$(printf 'u%02d ' $(seq 0 19))

# The application: docs distributed by tenant, row g owned by user g % 20 in
# tenant g % 10; the same rows in docs_local, an ordinary table.
q coord "CREATE ROLE app LOGIN;
         ALTER ROLE app SET citus.propagate_set_commands = 'local';
         CREATE TABLE docs (tenant int, id int, owner text, body text, PRIMARY KEY (tenant, id));
         SELECT create_distributed_table('docs', 'tenant');
         INSERT INTO docs SELECT g % 10, g, 'u' || lpad((g % 20)::text, 2, '0'), md5(g::text)
           FROM generate_series(1, 2000) g;
         CREATE TABLE docs_local AS SELECT * FROM docs;
         GRANT SELECT ON docs, docs_local TO app;" >/dev/null || { echo "could not make the application's tables"; exit 1; }

# ---- 2: the policy ------------------------------------------------------------
begin
problems=()
wrapped="USING (owner = current_setting('app.user_ref', true)
                AND (SELECT stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')))"
bare="USING (owner = current_setting('app.user_ref', true)
             AND stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports'))"
q coord "ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs_local ENABLE ROW LEVEL SECURITY" >/dev/null
if q coord "CREATE POLICY docs_paid ON docs FOR SELECT $wrapped" >"$work/wrapped.out" 2>&1; then
    problems+=(" Citus accepted the wrapped check in a policy of a distributed table (update the README)")
    q coord "DROP POLICY docs_paid ON docs" >/dev/null
else
    note "the wrapped form, refused: $(grep -m1 ERROR "$work/wrapped.out")"
fi
q coord "CREATE POLICY docs_paid ON docs FOR SELECT $bare;
         CREATE POLICY docs_paid ON docs_local FOR SELECT $bare" >/dev/null ||
    problems+=(" the bare policy was refused")
plan=$(app coord <<'SQL'
BEGIN;
SET LOCAL app.user_ref = 'u00';
EXPLAIN (VERBOSE, COSTS OFF) SELECT count(*) FROM docs;
COMMIT;
SQL
)
grep -q 'InitPlan' <<<"$plan" && grep -q 'Node: host=127.0.0.1' <<<"$plan" ||
    problems+=(" the check is not an InitPlan on the worker nodes:$(tr '\n' ' ' <<<"$plan")")
conclude "2 policy" "Citus refuses the subquery; the bare check, planned once per shard query on the worker nodes (InitPlan)" "${problems[@]}"

# ---- 3: row-level security ----------------------------------------------------
# counts USER: multi-shard, router (the user's tenant), router (another
# tenant), grouped, a CTE pulled to the coordinator, a LIMIT subquery, and
# the same table not distributed; one line, in one transaction
counts_sql() {
    local u=$1 t=$((10#${1#u} % 10))
    cat <<SQL
BEGIN;
SET LOCAL app.user_ref = '$u';
SELECT '$u', (SELECT count(*) FROM docs), (SELECT count(*) FROM docs WHERE tenant = $t),
       (SELECT count(*) FROM docs WHERE tenant = $(((t + 1) % 10))),
       (SELECT coalesce(string_agg(owner || '=' || n, ','), '-')
          FROM (SELECT owner, count(*) AS n FROM docs GROUP BY owner) g),
       (WITH mine AS MATERIALIZED (SELECT id FROM docs) SELECT count(*) FROM mine),
       (SELECT count(*) FROM (SELECT id FROM docs ORDER BY id LIMIT 1000) l),
       (SELECT count(*) FROM docs_local);
COMMIT;
SQL
}
expected_counts() {
    local u k
    for u in $users; do
        k=$((10#${u#u}))
        if [ $((k % 2)) = 0 ]; then echo "$u|100|100|0|$u=100|100|100|100"; else echo "$u|0|0|0|-|0|0|0"; fi
    done
}
begin
problems=()
for u in $users; do counts_sql "$u"; done >"$work/counts.sql"
app coord -f "$work/counts.sql" >"$work/counts.out" 2>&1 || problems+=(" the queries failed: $(head -3 "$work/counts.out")")
diff <(expected_counts) "$work/counts.out" >"$work/counts.diff" ||
    problems+=(" answers differ from the expected (< expected, > got): $(tr '\n' ' ' <"$work/counts.diff")")
conclude "3 rls" "20 users from one session: the 10 paid see their 100 rows (multi-shard, router, grouped, CTE, LIMIT; as docs_local), the 10 unpaid none" "${problems[@]}"

# ---- 4: how the setting reaches the worker nodes ------------------------------
begin
problems=()
q coord "CREATE FUNCTION set_app_user(u text) RETURNS void LANGUAGE plpgsql AS
           \$\$ BEGIN EXECUTE format('SET LOCAL app.user_ref = %L', u); END \$\$;
         GRANT EXECUTE ON FUNCTION set_app_user(text) TO app" >/dev/null
got=$(app coord <<'SQL'
BEGIN; SET LOCAL citus.propagate_set_commands = 'none'; SET LOCAL app.user_ref = 'u00';
SELECT 'not propagated', (SELECT count(*) FROM docs), (SELECT count(*) FROM docs_local); COMMIT;
BEGIN; SELECT set_config('app.user_ref', 'u00', true) \g /dev/null
SELECT 'set_config', (SELECT count(*) FROM docs), (SELECT count(*) FROM docs_local); COMMIT;
BEGIN; SELECT set_app_user('u00') \g /dev/null
SELECT 'SET LOCAL in a function', (SELECT count(*) FROM docs), (SELECT count(*) FROM docs_local); COMMIT;
BEGIN; SELECT count(*) FROM docs \g /dev/null
SET LOCAL app.user_ref = 'u00';
SELECT 'SET LOCAL after a query', (SELECT count(*) FROM docs), (SELECT count(*) FROM docs_local); COMMIT;
SQL
)
want='not propagated|0|100
set_config|0|100
SET LOCAL in a function|100|100
SET LOCAL after a query|100|100'
[ "$got" = "$want" ] || problems+=(" got: $(tr '\n' ';' <<<"$got")")
conclude "4 settings" "a paid user's rows on the worker nodes: by SET LOCAL (also EXECUTEd in a function), propagated: 100; not propagated, or by set_config(): 0 (on one node: 100)" "${problems[@]}"

# ---- 5: a revocation reaches the worker nodes' warm backends ------------------
# gpid_backends GPID: the backends serving the session GPID on the worker nodes
gpid_backends() {
    local n
    for n in w1 w2; do
        q "$n" "SELECT '$n:' || string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
                 WHERE application_name = 'citus_internal gpid=$1'"
    done | tr '\n' ' '
}
# paid_on PORT: a paid user (of u10 ... u18) whose rows are on that node
paid_on() {
    q coord "SELECT 'u' || k FROM generate_series(10, 18, 2) k JOIN pg_dist_shard_placement p
               ON p.shardid = get_shard_id_for_distribution_column('docs', k % 10)
              WHERE p.nodeport = $1 ORDER BY k LIMIT 1"
}
# sees USER: that user's rows, multi-shard / router, in one transaction
sees() {
    echo "BEGIN; SET LOCAL app.user_ref = '$1';
          SELECT (SELECT count(*) FROM docs) || '/' || (SELECT count(*) FROM docs WHERE tenant = ${1#u?});
          COMMIT;"
}
begin
problems=()
revoked=(u02)
for w in w1 w2; do
    u=$(paid_on "${port[$w]}")
    [ -n "$u" ] && revoked+=("$u") || note "(no paid user of u10 ... u18 has rows on $w)"
done
coproc APP { app coord 2>&1; }
app_in=${APP[1]} app_out=${APP[0]} app_pid=$APP_PID
ask() { echo "$1" >&"$app_in"; read -r -t 60 "$2" <&"$app_out" || eval "$2=\"(no answer)\""; }
# one connection a worker node, kept between transactions
ask "SET citus.max_adaptive_executor_pool_size = 1; SELECT citus_backend_gpid();" gpid
before=
for u in "${revoked[@]}"; do ask "$(sees "$u")" got; before+="$u:$got "; done
warm=$(gpid_backends "$gpid")
for u in "${revoked[@]}"; do
    q coord "SELECT deliver(sub_event('evt_${u}_cancel', 1700000100, 'canceled', '$u'))" >/dev/null
done
after=
for u in "${revoked[@]}"; do ask "$(sees "$u")" got; after+="$u:$got "; done
after_backends=$(gpid_backends "$gpid")
exec {app_in}>&-
wait "$app_pid" 2>/dev/null
[ "$before" = "$(printf '%s:100/100 ' "${revoked[@]}")" ] || problems+=(" before the cancellations: $before")
[ "$after" = "$(printf '%s:0/0 ' "${revoked[@]}")" ] || problems+=(" after them, the same session saw: $after")
grep -q 'w1:[0-9]' <<<"$warm" && grep -q 'w2:[0-9]' <<<"$warm" || problems+=(" no cached backends: '$warm'")
[ "$warm" = "$after_backends" ] || problems+=(" the worker backends changed: '$warm' -> '$after_backends'")
conclude "5 revocation" "${revoked[*]} (rows on both worker nodes) canceled on the coordinator: the session's next transactions saw $after(were $before), through the same worker backends ($warm)" "${problems[@]}"

# ---- 6: a worker node down -----------------------------------------------------
begin
problems=()
# a session that wrote user_features on every node before the stop (zz,
# who owns no rows, subscribes) keeps connections to them
coproc SU { citus_psql "${port[coord]}" -U postgres -d postgres -At -q -v ON_ERROR_STOP=1 2>&1; }
su_in=${SU[1]} su_out=${SU[0]} su_pid=$SU_PID
echo "SELECT deliver(sub_event('evt_zz', 1700000000, 'active', 'zz'));" >&"$su_in"
read -r -t 60 _ <&"$su_out"
paid_before=$(placement coord)
cluster_stop "$work/w2" >/dev/null
# u04's cancellation: in that session, and in a new one
echo "SELECT deliver(sub_event('evt_u04_cancel', 1700000100, 'canceled', 'u04'));" >&"$su_in"
exec {su_in}>&-
cat <&"$su_out" >"$work/down_warm.out"
wait "$su_pid" && problems+=(" a warm session applied the cancellation with a node down: $(cat "$work/down_warm.out")")
q coord "SELECT deliver(sub_event('evt_u04_cancel', 1700000100, 'canceled', 'u04'))" >"$work/down_new.out" 2>&1 &&
    problems+=(" a new session applied the cancellation with a node down: $(cat "$work/down_new.out")")
for f in down_warm down_new; do note "$f: $(grep -m1 -o 'ERROR: .*' "$work/$f.out")"; done
[ -z "$(q coord "SELECT id FROM stripe_billing.events WHERE id = 'evt_u04_cancel'")" ] ||
    problems+=(" the failed delivery left the event in the ledger")
[ "$(placement coord)" = "$paid_before" ] && [ "$(placement w1)" = "$paid_before" ] ||
    problems+=(" user_features changed on a surviving node")
# events that change no feature write nothing on the worker nodes
unchanged=$(q coord "SELECT deliver(sub_event('evt_u04_old', 1600000000, 'canceled', 'u04')) || ' '
                     || deliver(sub_event('evt_u01_again', 1700000200, 'canceled', 'u01'))" 2>&1)
[ "$unchanged" = "stale applied" ] || problems+=(" events changing no feature, with a node down: '$unchanged'")
answers="$(checks coord u00 u04 u01) / $(checks w1 u00 u04 u01)"
[ "$answers" = "u00:true u01:false u04:true / u00:true u01:false u04:true" ] ||
    problems+=(" the surviving nodes answered: $answers")
# a paid user's router query whose shard is on the surviving worker node
t=$(q coord "SELECT t FROM unnest('{0,6,8}'::int[]) t JOIN pg_dist_shard_placement p
               ON p.shardid = get_shard_id_for_distribution_column('docs', t) WHERE p.nodeport = ${port[w1]} LIMIT 1")
if [ -n "$t" ]; then
    got=$(printf "BEGIN; SET LOCAL app.user_ref = 'u%02d'; SELECT count(*) FROM docs WHERE tenant = %d; COMMIT;\n" "$t" "$t" | app coord 2>&1)
    [ "$got" = 100 ] || problems+=(" u$t's router query on the surviving node: '$got'")
else
    note "(no paid user's tenant on the surviving node to query)"
fi
as_owner "$PG_BINDIR/pg_ctl" -D "$work/w2/data" -l "$work/w2/server.log" -w start >/dev/null ||
    problems+=(" could not restart the worker node")
redelivered=$(q coord "SELECT deliver(sub_event('evt_u04_cancel', 1700000100, 'canceled', 'u04'))" 2>&1)
[ "$redelivered" = applied ] || problems+=(" the redelivery after the restart: '$redelivered'")
for n in coord w1 w2; do
    [ "$(checks "$n" u04)" = u04:false ] || problems+=(" $n after the redelivery: $(checks "$n" u04)")
done
got=$(printf "BEGIN; SET LOCAL app.user_ref = 'u04'; SELECT count(*) FROM docs; COMMIT;\n" | app coord 2>&1)
[ "$got" = 0 ] || problems+=(" u04 still sees '$got' rows")
conclude "6 node down" "with a worker node stopped the cancellation failed (an error, as the route's 500), nothing written; events changing no feature applied; the surviving nodes answered; after the restart the redelivery: $redelivered, on every node" "${problems[@]}"

# ---- 7: a node added later ------------------------------------------------------
begin
problems=()
node w3 || problems+=(" could not start the new node")
q coord "SELECT citus_add_node('127.0.0.1', ${port[w3]})" >/dev/null || problems+=(" could not add the node")
before=$(q w3 "SELECT stripe_billing.stripe_has_entitlement('u00', 'reports')" 2>&1)
note "before it holds shards: $(grep -m1 -o 'ERROR: .*' <<<"$before" || echo "$before")"
q coord "SELECT rebalance_table_shards('docs', shard_transfer_mode => 'block_writes')" >/dev/null 2>"$work/rebalance.err" ||
    problems+=(" rebalance failed: $(cat "$work/rebalance.err")")
moved=$(q coord "SELECT count(*) FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)
                  WHERE s.logicalrelid = 'docs'::regclass AND p.nodeport = ${port[w3]}")
[ "${moved:-0}" -gt 0 ] || problems+=(" no shard of docs moved to the new node")
[ "$(placement w3)" = "$(placement coord)" ] || problems+=(" the new node's placement differs: $(placement w3)")
revoked+=(u04)
expected=$(for u in $users; do
               k=$((10#${u#u}))
               [ $((k % 2)) = 0 ] && [[ " ${revoked[*]} " != *" $u "* ]] && echo -n "$u:true " || echo -n "$u:false "
           done)
[ "$(checks w3 $users) " = "$expected" ] || problems+=(" the new node answers: $(checks w3 $users)")
for u in $users; do counts_sql "$u"; done >"$work/counts.sql"
app coord -f "$work/counts.sql" >"$work/counts3.out" 2>&1
diff <(expected_counts | sed -E "s/^($(IFS='|'; echo "${revoked[*]}"))\\|.*/\\1|0|0|0|-|0|0|0/") "$work/counts3.out" >"$work/counts3.diff" ||
    problems+=(" answers over three worker nodes differ: $(tr '\n' ' ' <"$work/counts3.diff")")
# two users canceled in one batch (two rows deleted together)
q coord "SELECT count(*) FROM stripe_billing.stripe_apply_events(ARRAY[
           sub_event('evt_u06_cancel', 1700000100, 'canceled', 'u06'),
           sub_event('evt_u08_cancel', 1700000100, 'canceled', 'u08')], 'poll')" >/dev/null
[ "$(checks w3 u06 u08)" = "u06:false u08:false" ] ||
    problems+=(" the new node missed a revocation: $(checks w3 u06 u08)")
conclude "7 new node" "added, $moved shards of docs moved to it (with user_features' placement): its checks and all users' counts over three worker nodes are right, and follow two revocations in one batch" "${problems[@]}"

# ---- 8: Stripe Connect ---------------------------------------------------------
# ca1 subscribes to the same lookup key 'pro' on a connected account: the
# platform's grant (account NULL) covers the platform's subscriptions only
begin
problems=()
q coord "SELECT stripe_billing.stripe_apply_event(sub_event('evt_ca1', 1700000000, 'active', 'ca1')
                                                  || '{\"account\": \"acct_1Citus\"}')" >/dev/null ||
    problems+=(" the connected account's event failed")
acct=$(q coord "SELECT account FROM stripe_billing.subscriptions WHERE id = 'sub_ca1'")
[ "$acct" = acct_1Citus ] || problems+=(" sub_ca1's account is '$acct'")
for n in coord w1 w2 w3; do
    [ "$(checks "$n" ca1 u00)" = "ca1:false u00:true" ] ||
        problems+=(" $n, the platform's grant only: $(checks "$n" ca1 u00)")
done
q coord "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports', account => 'acct_1Citus')" >/dev/null
for n in coord w1 w2 w3; do
    [ "$(checks "$n" ca1 u00)" = "ca1:true u00:true" ] ||
        problems+=(" $n, with the account's grant: $(checks "$n" ca1 u00)")
done
q coord "SELECT stripe_billing.stripe_revoke_feature('lookup_key', 'pro', 'reports', account => 'acct_1Citus')" >/dev/null
for n in coord w1 w2 w3; do
    [ "$(checks "$n" ca1 u00)" = "ca1:false u00:true" ] ||
        problems+=(" $n, the account's grant revoked: $(checks "$n" ca1 u00)")
done
conclude "8 connect" "a subscription of acct_1Citus: not covered by the platform's grant on any node; its account's grant reached every node, and so did its revocation" "${problems[@]}"

# ---- 9: the extension before Citus, or before the nodes --------------------------
# qd NODE DB SQL: as q, in database DB
qd() { citus_psql "${port[$1]}" -U postgres -d "$2" -At -q -v ON_ERROR_STOP=1 <<<"$3"; }
begin
problems=()
for db in sb_first sb_nonodes; do
    for n in coord w1 w2; do
        citus_psql "${port[$n]}" -U postgres -d postgres -q -c "CREATE DATABASE $db" >/dev/null 2>&1 ||
            problems+=(" CREATE DATABASE $db on $n failed")
    done
done
for n in w1 w2; do
    qd "$n" sb_first "CREATE EXTENSION citus" >/dev/null
    qd "$n" sb_nonodes "CREATE EXTENSION citus" >/dev/null
done
# sb_first: stripe_billing, then Citus; sb_nonodes: Citus, stripe_billing, then the nodes
qd coord sb_first "CREATE EXTENSION stripe_billing; CREATE EXTENSION citus" >/dev/null 2>"$work/first.err" ||
    problems+=(" sb_first: $(cat "$work/first.err")")
qd coord sb_nonodes "CREATE EXTENSION citus; CREATE EXTENSION stripe_billing" >/dev/null 2>"$work/nonodes.err" ||
    problems+=(" sb_nonodes: $(cat "$work/nonodes.err")")
grep -q 'WARNING: .*has no nodes yet' "$work/nonodes.err" || problems+=(" sb_nonodes: no warning that user_features stays local")
for db in sb_first sb_nonodes; do
    qd coord "$db" "SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
                    SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]});
                    SELECT citus_add_node('127.0.0.1', ${port[w1]});
                    SELECT citus_add_node('127.0.0.1', ${port[w2]});" >/dev/null 2>"$work/$db.err" ||
        problems+=(" $db: adding the nodes failed: $(cat "$work/$db.err")")
done
# a user paid before the setup (the rows must reach the placements)
qd coord sb_first "$sub_event_sql
                   SELECT stripe_billing.stripe_apply_event(sub_event('evt_early', 1700000000, 'active', 'early'))" >/dev/null ||
    problems+=(" sb_first: the early event failed")
for db in sb_first sb_nonodes; do
    got=$(qd coord "$db" "SELECT stripe_billing.stripe_citus_setup(); SELECT stripe_billing.stripe_citus_setup();" 2>"$work/$db.setup" | tr '\n' ' ')
    [ "$got" = "t f " ] || problems+=(" $db: stripe_citus_setup() twice answered '$got', not 't f'")
    for n in w1 w2; do
        [ "$(qd "$n" "$db" "SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing'")" = "$version" ] ||
            problems+=(" $db: no stripe_billing on $n")
    done
done
for n in coord w1 w2; do
    got=$(qd "$n" sb_first "SELECT stripe_billing.stripe_has_entitlement('early', 'reports')" 2>&1)
    [ "$got" = t ] || problems+=(" sb_first: $n answers '$got' for the user paid before the setup")
done
# (a query of the shell table is Citus's, answered from a placement: its size tells)
shell=$(qd coord sb_first "SELECT pg_relation_size('stripe_billing.user_features')")
[ "$shell" = 0 ] || problems+=(" sb_first: the coordinator's shell table keeps $shell bytes of the old rows")
qd coord sb_first "SELECT stripe_billing.stripe_apply_event(sub_event('evt_early_cancel', 1700000100, 'canceled', 'early'))" >/dev/null
for n in w1 w2; do
    got=$(qd "$n" sb_first "SELECT stripe_billing.stripe_has_entitlement('early', 'reports')" 2>&1)
    [ "$got" = f ] || problems+=(" sb_first: $n answers '$got' after the cancellation")
done
conclude "9 created first" "created before Citus, and before the nodes (a warning says so): stripe_citus_setup() made user_features a reference table, with the earlier rows on every node, and then had nothing to do" "${problems[@]}"

# ---- 10: ALTER EXTENSION UPDATE on a coordinator ----------------------------------
begin
problems=()
# the released 0.3.0 install script, put beside this version's for the
# test (every node runs the same installation) and taken away at exit
extdir=$("$PG_BINDIR/pg_config" --sharedir)/extension
if [ ! -e "$extdir/stripe_billing--0.3.0.sql" ]; then
    cp test/integration/upgrade/stripe_billing--0.3.0.sql "$extdir/" && at_exit rm -f "$extdir/stripe_billing--0.3.0.sql"
fi
for n in coord w1 w2; do
    citus_psql "${port[$n]}" -U postgres -d postgres -q -c "CREATE DATABASE sb_update" >/dev/null 2>&1 ||
        problems+=(" CREATE DATABASE sb_update on $n failed")
    [ "$n" = coord ] || qd "$n" sb_update "CREATE EXTENSION citus" >/dev/null
done
qd coord sb_update "CREATE EXTENSION citus;
                    SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]});
                    SELECT citus_add_node('127.0.0.1', ${port[w1]});
                    SELECT citus_add_node('127.0.0.1', ${port[w2]});
                    CREATE EXTENSION stripe_billing VERSION '0.3.0';
                    SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
                    $sub_event_sql
                    SELECT stripe_billing.stripe_apply_event(sub_event('evt_old', 1700000000, 'active', 'old'))" \
    >/dev/null 2>"$work/update_old.err" || problems+=(" at 0.3.0: $(head -3 "$work/update_old.err")")
kind=$(qd coord sb_update "SELECT coalesce((SELECT partmethod::text || repmodel::text FROM pg_dist_partition
                                           WHERE logicalrelid = 'stripe_billing.user_features'::regclass), 'local')")
[ "$kind" = local ] || problems+=(" at 0.3.0, user_features was already a Citus table ('$kind')")
qd coord sb_update "ALTER EXTENSION stripe_billing UPDATE" >/dev/null 2>"$work/update.err" ||
    problems+=(" ALTER EXTENSION stripe_billing UPDATE failed: $(head -3 "$work/update.err")")
kind=$(qd coord sb_update "SELECT partmethod::text || repmodel::text FROM pg_dist_partition
                            WHERE logicalrelid = 'stripe_billing.user_features'::regclass")
[ "$kind" = nt ] || problems+=(" after the update, user_features is not a reference table ('$kind')")
for n in coord w1 w2; do
    got=$(qd "$n" sb_update "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing') || ' '
                             || stripe_billing.stripe_has_entitlement('old', 'reports')" 2>&1)
    [ "$got" = "$version true" ] || problems+=(" $n after the update: '$got', not '$version true'")
done
qd coord sb_update "SELECT stripe_billing.stripe_apply_event(sub_event('evt_old_cancel', 1700000100, 'canceled', 'old'))" >/dev/null
for n in w1 w2; do
    got=$(qd "$n" sb_update "SELECT stripe_billing.stripe_has_entitlement('old', 'reports')" 2>&1)
    [ "$got" = f ] || problems+=(" $n answers '$got' after the cancellation")
done
conclude "10 update" "0.3.0 on a coordinator with nodes, updated by ALTER EXTENSION UPDATE: user_features became a reference table, the paid user's row on every node, $version everywhere; a cancellation then reached the worker nodes" "${problems[@]}"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
