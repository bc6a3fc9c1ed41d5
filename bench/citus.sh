#!/usr/bin/env bash
# bench/citus: stripe_billing on a Citus cluster (a coordinator and two
# worker nodes on loopback, Citus built from ../shared/vendor as
# test/integration/citus.sh builds it), and the same on one node:
#   rls     SELECT count(*) over 1,000,000 rows (owner_ref drawn from
#           10,000 users, half of them entitled) as an application role,
#           app.user_ref an entitled user, with the policy
#           USING (stripe_has_entitlement(current_setting('app.user_ref', true), 'f'))
#           against an identical table with USING (true): distributed by
#           tenant (32 shards) on the cluster, ordinary tables on the single
#           node; one session each, interleaved rounds, medians
#   change  one event that changes a user's features (a plan switch that
#           grants or takes a feature, alternately), each its own transaction
#           (a procedure commits each, in a warm session): on the coordinator,
#           which writes user_features on every node (two-phase commit),
#           against the same events on the single node; and an event that
#           changes no feature, on both
#     bash bench/citus.sh [rounds, default 7]
# PG_BINDIR: a PostgreSQL 16 to 18; by default test/pg-build.sh's 18
# release build (no assertions), built when absent (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
[ -n "${PG_BINDIR:-}" ] || PG_BINDIR=$(bash test/pg-build.sh 18 release | tail -1)
. test/lib/cluster.sh
. test/lib/citus.sh
citus_source >/dev/null || { echo "bench/citus: no Citus source in $SB_CITUS_VENDOR"; exit 1; }
citus_build
make -s PG_CONFIG="$PG_BINDIR/pg_config" >/dev/null && make -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
chmod 755 "$work"
cleanup() {
    local dir
    for dir in "$work"/*/; do [ -d "$dir/data" ] && cluster_stop "${dir%/}"; done
    rm -rf "$work"
}
trap cleanup EXIT
conf=("shared_buffers = 1GB" "jit = off" "max_parallel_workers_per_gather = 0")

declare -A port
for n in coord w1 w2; do
    citus_node_start "$work/$n" "shared_preload_libraries = 'citus, stripe_billing'" "${conf[@]}"
    port[$n]=$NODE_PORT
done
citus_node_start "$work/single" "shared_preload_libraries = 'stripe_billing'" "${conf[@]}"
port[single]=$NODE_PORT
q() { citus_psql "${port[$1]}" -U postgres -d postgres -At -q -v ON_ERROR_STOP=1 "${@:2}"; }
for n in coord w1 w2; do q "$n" <<<"CREATE EXTENSION citus"; done
q coord >/dev/null <<SQL
SELECT citus_set_coordinator_host('127.0.0.1', ${port[coord]});
SELECT citus_add_node('127.0.0.1', ${port[w1]});
SELECT citus_add_node('127.0.0.1', ${port[w2]});
SQL
echo "== $("$PG_BINDIR/postgres" --version)$("$PG_BINDIR/pg_config" --configure | grep -q enable-cassert && echo ', assertions ON: slower than a release build' || true), Citus $SB_CITUS_VERSION"

# The same setup on both: 10,000 users (odd ones entitled to f), one batch
# of events; the app role; the two tables.
setup() {
    local node=$1 distribute=$2
    q "$node" >/dev/null <<SQL
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'f');
CREATE SCHEMA bench;
CREATE FUNCTION bench.event(id text, created bigint, status text, u text, price text) RETURNS jsonb
LANGUAGE sql AS \$\$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', 'customer.subscription.updated',
           'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_' || u, 'object', 'subscription', 'customer', 'cus_' || u, 'status', status,
              'metadata', jsonb_build_object('user_ref', u),
              'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                 'id', 'si_' || u, 'quantity', 1,
                 'current_period_start', 1700000000, 'current_period_end', 4102444800,
                 'price', jsonb_build_object('id', 'price_' || price, 'lookup_key', price, 'product', 'prod_x')))))))
\$\$;
SELECT count(*) FROM stripe_billing.stripe_apply_events(ARRAY(
  SELECT bench.event('evt_' || u, 1700000000, 'active', 'user_' || u, CASE WHEN u % 2 = 1 THEN 'pro' ELSE 'basic' END)
    FROM generate_series(1, 10000) u));
-- statistics of the billing tables, as autovacuum makes them in a running
-- system (without, the single node's derivation was planned for empty
-- tables: some 20 ms an event)
ANALYZE stripe_billing.events, stripe_billing.customers, stripe_billing.subscriptions,
        stripe_billing.subscription_items, stripe_billing.prices, stripe_billing.products,
        stripe_billing.user_derivations, stripe_billing.user_features;
-- the change benchmark's events: a plan switch that grants or takes f,
-- alternately (a canceled subscription stays canceled at Stripe), and one
-- that keeps the plan that grants nothing
CREATE SEQUENCE bench.n;
CREATE FUNCTION bench.toggle() RETURNS jsonb LANGUAGE sql AS \$\$
  SELECT bench.event('evt_toggle_' || n, 1800000000 + n, 'active', 'toggled',
                     CASE WHEN n % 2 = 0 THEN 'pro' ELSE 'basic' END) FROM nextval('bench.n') n
\$\$;
CREATE FUNCTION bench.unchanged() RETURNS jsonb LANGUAGE sql AS \$\$
  SELECT bench.event('evt_same_' || n, 1800000000 + n, 'active', 'unchanged', 'basic') FROM nextval('bench.n') n
\$\$;
-- n events of a kind, each committed on its own; the average ms of one
CREATE PROCEDURE bench.events(kind text, n int, INOUT ms float8 DEFAULT NULL)
LANGUAGE plpgsql AS \$\$
DECLARE
  t0 timestamptz;
  total interval := '0';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    IF kind = 'toggle' THEN
      PERFORM stripe_billing.stripe_apply_event(bench.toggle());
    ELSE
      PERFORM stripe_billing.stripe_apply_event(bench.unchanged());
    END IF;
    COMMIT;
    total := total + (clock_timestamp() - t0);
  END LOOP;
  ms := extract(epoch FROM total) * 1000 / n;
END
\$\$;
CREATE ROLE bench_app LOGIN;
$([ "$distribute" = yes ] && echo "ALTER ROLE bench_app SET citus.propagate_set_commands = 'local';")
CREATE TABLE docs_true (tenant int, id bigint, owner_ref text, body text);
CREATE TABLE docs_check (LIKE docs_true);
$([ "$distribute" = yes ] && echo "SELECT create_distributed_table('docs_true', 'tenant', shard_count => 32);
SELECT create_distributed_table('docs_check', 'tenant', colocate_with => 'docs_true');")
INSERT INTO docs_true SELECT g % 1000, g, 'user_' || (g % 10000 + 1), md5(g::text) FROM generate_series(1, 1000000) g;
INSERT INTO docs_check SELECT * FROM docs_true;
ALTER TABLE docs_true ENABLE ROW LEVEL SECURITY;
ALTER TABLE docs_check ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON docs_true FOR SELECT USING (true);
CREATE POLICY p ON docs_check FOR SELECT
  USING (stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'f'));
GRANT SELECT ON docs_true, docs_check TO bench_app;
VACUUM ANALYZE docs_true;
VACUUM ANALYZE docs_check;
SQL
}
echo "== setting up 10,000 users and 2 x 1,000,000 rows, on the cluster and on the single node"
began=$(date +%s)
setup coord yes
setup single no
echo "   ($(($(date +%s) - began)) s)"

# rls NODE: "true_ms check_ms rows_true rows_check", medians over the rounds
rls() {
    q "$1" -U bench_app <<SQL | tr '|' ' '
BEGIN;
SET LOCAL app.user_ref = 'user_1';
CREATE TEMP TABLE timings (name text, ms float8, n bigint) ON COMMIT DROP;
DO \$\$
DECLARE
  t0 timestamptz;
  n bigint;
  name text;
BEGIN
  FOR r IN 0..$rounds LOOP    -- round 0 warms the caches
    FOREACH name IN ARRAY ARRAY['true', 'check'] LOOP
      t0 := clock_timestamp();
      EXECUTE format('SELECT count(*) FROM %I', 'docs_' || name) INTO n;
      IF r > 0 THEN
        INSERT INTO timings VALUES (name, extract(epoch FROM clock_timestamp() - t0) * 1000, n);
      END IF;
    END LOOP;
  END LOOP;
END \$\$;
SELECT (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM timings WHERE name = 'true'),
       (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM timings WHERE name = 'check'),
       (SELECT max(n) FROM timings WHERE name = 'true'), (SELECT max(n) FROM timings WHERE name = 'check');
COMMIT;
SQL
}
echo "== rls: SELECT count(*) FROM docs_<policy> as the app role, user_1 (entitled); medians of $rounds interleaved rounds"
read -r st sc sn_true sn_check <<<"$(rls single)"
read -r ct cc cn_true cn_check <<<"$(rls coord)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
printf '  %-9s USING (true) %8.1f ms   the check %8.1f ms   %sx\n' "one node" "$st" "$sc" "$(ratio "$sc" "$st")"
printf '  %-9s USING (true) %8.1f ms   the check %8.1f ms   %sx  (target <= 1.3x)\n' "Citus" "$ct" "$cc" "$(ratio "$cc" "$ct")"
fail=0
[ "$sn_true" = 1000000 ] && [ "$sn_check" = 1000000 ] && [ "$cn_true" = 1000000 ] && [ "$cn_check" = 1000000 ] ||
    { echo "  an entitled user did not see every row: $sn_true $sn_check $cn_true $cn_check"; fail=1; }

# changes NODE: "change_ms no_change_ms", the average of 100 events each,
# in one session, after 20 that warm it (the library, plans, connections)
changes() {
    q "$1" <<'SQL' | tr '\n' ' '
CALL bench.events('toggle', 10) \g /dev/null
CALL bench.events('unchanged', 10) \g /dev/null
CALL bench.events('toggle', 100);
CALL bench.events('unchanged', 100);
SQL
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }
echo "== change: one event per transaction (in a procedure that commits each), average of 100 a round"
echo "   after 20 that warm the session; medians of $rounds interleaved rounds"
declare -A runs
for _ in $(seq 1 "$rounds"); do
    for n in single coord; do
        read -r toggle unchanged <<<"$(changes "$n")"
        runs[$n.toggle]+="$toggle " runs[$n.unchanged]+="$unchanged "
    done
done
for f in toggle unchanged; do
    s=$(median ${runs[single.$f]}) c=$(median ${runs[coord.$f]})
    printf '  %-9s one node %6.2f ms   Citus coordinator %6.2f ms   %sx\n' \
        "$([ $f = toggle ] && echo change || echo no-change)" "$s" "$c" "$(ratio "$c" "$s")"
    printf '            (rounds: %s| %s)\n' "$(printf '%.2f ' ${runs[single.$f]})" "$(printf '%.2f ' ${runs[coord.$f]})"
done
for n in single coord; do
    state=$(q "$n" <<<"SELECT string_agg(outcome || ': ' || n, ', ') FROM (SELECT outcome, count(*) AS n
                         FROM stripe_billing.events WHERE outcome <> 'applied' GROUP BY 1) s")
    [ -z "$state" ] || { echo "  $n: events not applied: $state"; fail=1; }
done
exit $fail
