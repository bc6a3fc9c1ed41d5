#!/usr/bin/env bash
# bench/rls: stripe_has_entitlement inside row-level-security policies over a
# 1,000,000-row table whose rows carry an owner_ref drawn from 10,000 users
# (half of them entitled).  Every policy has its own identical copy of the
# table; one session, as an app role subject to the policies, runs
# SELECT count(*) on each in turn, round after round; medians.
# The naive per-row function costs several milliseconds a row, so its copy
# holds the first 2,000 rows and its figure is compared per row.
#     bash bench/rls.sh [rounds, default 7]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
trap 'cluster_stop "$work/pg"' EXIT
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "shared_buffers = 2GB" \
    "jit = off" "max_parallel_workers_per_gather = 0"

echo "== setting up 10,000 users (5,000 entitled) and 1,000,000 rows per policy"
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'f');
-- odd users subscribe to the price that grants f; even users to another
SELECT count(stripe_billing.stripe_apply_event(jsonb_build_object(
         'id', 'evt_' || u, 'object', 'event', 'type', 'customer.subscription.created',
         'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_' || u, 'object', 'subscription', 'customer', 'cus_' || u, 'status', 'active',
            'metadata', jsonb_build_object('user_ref', 'user_' || u),
            'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
               'id', 'si_' || u, 'quantity', 1,
               'current_period_start', 1700000000, 'current_period_end', 4102444800,
               'price', jsonb_build_object('id', CASE WHEN u % 2 = 1 THEN 'price_pro' ELSE 'price_basic' END,
                                           'lookup_key', CASE WHEN u % 2 = 1 THEN 'pro' ELSE 'basic' END,
                                           'product', 'prod_x')))))))))
  FROM generate_series(1, 10000) u;

CREATE ROLE bench_app;
CREATE TABLE docs (id bigint, owner_ref text, body text);
INSERT INTO docs SELECT g, 'user_' || (g % 10000 + 1), md5(g::text) FROM generate_series(1, 1000000) g;

-- The naive per-row check people write for RLS: a SECURITY DEFINER SQL
-- function (so the app role needs no grants on the billing tables) with an
-- EXISTS over customers, subscriptions, items and the feature mapping.
CREATE FUNCTION naive_has_feature(owner text, wanted text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT EXISTS (SELECT 1 FROM stripe_billing.customers c
    JOIN stripe_billing.subscriptions s ON s.customer = c.id
    JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
    JOIN stripe_billing.feature_grants g
      ON (g.source_type = 'price' AND g.source = i.price)
      OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
      OR (g.source_type = 'product' AND g.source = i.product)
   WHERE c.user_ref = owner AND NOT c.deleted
     AND s.status IN ('active', 'trialing') AND g.feature = wanted)
$$;
-- The same EXISTS written inline in the policy: the planner turns it into a
-- hashed subplan built once per query (and the app role needs SELECT on the
-- billing tables).
GRANT SELECT ON stripe_billing.customers, stripe_billing.subscriptions,
                stripe_billing.subscription_items, stripe_billing.feature_grants TO bench_app;

CREATE TABLE policies (name text PRIMARY KEY, ord int, expr text);
INSERT INTO policies VALUES
  ('true', 1, 'true'),
  ('wrapped', 2, '(SELECT stripe_billing.stripe_has_entitlement(current_setting(''app.user_ref''), ''f''))'),
  ('bare', 3, 'stripe_billing.stripe_has_entitlement(current_setting(''app.user_ref''), ''f'')'),
  ('not_null', 4, 'owner_ref IS NOT NULL'),
  ('per_row', 5, 'stripe_billing.stripe_has_entitlement(owner_ref, ''f'')'),
  ('naive_row', 6, 'naive_has_feature(owner_ref, ''f'')'),
  ('naive_inline', 7, 'EXISTS (SELECT 1 FROM stripe_billing.customers c
     JOIN stripe_billing.subscriptions s ON s.customer = c.id
     JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
     JOIN stripe_billing.feature_grants g
       ON (g.source_type = ''price'' AND g.source = i.price)
       OR (g.source_type = ''lookup_key'' AND g.source = i.price_lookup_key)
       OR (g.source_type = ''product'' AND g.source = i.product)
    WHERE c.user_ref = docs_naive_inline.owner_ref AND NOT c.deleted
      AND s.status IN (''active'', ''trialing'') AND g.feature = ''f'')');
-- (the naive per-row function is so slow that its table keeps 2,000 rows)
SELECT format('CREATE TABLE %1$I AS SELECT * FROM docs WHERE %2$s', 'docs_' || name,
              CASE name WHEN 'naive_row' THEN 'id <= 2000' ELSE 'true' END)
  FROM policies ORDER BY ord \gexec
SELECT format('ALTER TABLE %1$I ENABLE ROW LEVEL SECURITY', 'docs_' || name) FROM policies ORDER BY ord \gexec
SELECT format('CREATE POLICY p ON %1$I FOR SELECT USING (%2$s)', 'docs_' || name, expr) FROM policies ORDER BY ord \gexec
SELECT format('GRANT SELECT ON %1$I TO bench_app', 'docs_' || name) FROM policies ORDER BY ord \gexec
SELECT format('VACUUM ANALYZE %1$I', 'docs_' || name) FROM policies ORDER BY ord \gexec
GRANT SELECT ON policies TO bench_app;
SQL

echo "== SELECT count(*) FROM docs_<policy> as the app role (app.user_ref = an entitled user)"
echo "   median of $rounds interleaved rounds (naive_row: 2,000 rows, 1 round: it is slow)"
PGOPTIONS="-c bench.rounds=$rounds" psql -X -q -At -v ON_ERROR_STOP=1 2>&1 <<'SQL' |
SET ROLE bench_app;
SET app.user_ref = 'user_1';
CREATE TEMP TABLE timings (name text, ms float8, n bigint);
DO $$
DECLARE
  p record;
  t0 timestamptz;
  n bigint;
BEGIN
  FOR r IN 0..current_setting('bench.rounds')::int LOOP    -- round 0 warms the caches
    FOR p IN SELECT * FROM policies ORDER BY ord LOOP
      CONTINUE WHEN p.name = 'naive_row' AND r <> 1;
      t0 := clock_timestamp();
      EXECUTE format('SELECT count(*) FROM %I', 'docs_' || p.name) INTO n;
      IF r > 0 THEN
        INSERT INTO timings VALUES (p.name, extract(epoch FROM clock_timestamp() - t0) * 1000, n);
      END IF;
    END LOOP;
  END LOOP;
END $$;
SELECT t.name, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY t.ms)::numeric, 1), max(t.n)
  FROM timings t JOIN policies USING (name) GROUP BY t.name, ord ORDER BY ord;
SQL
tr '|' ' ' >"$work/results"

declare -A ms rows
while read -r name m n; do
    ms[$name]=$m; rows[$name]=$n
    printf '  %-13s %9.1f ms %8s rows  USING (%s)\n' "$name" "$m" "$n" \
        "$(psql -X -At -c "SELECT regexp_replace(expr, '\s+', ' ', 'g') FROM policies WHERE name = '$name'")"
done <"$work/results"

fail=0
[ "${rows[wrapped]}" = 1000000 ] && [ "${rows[bare]}" = 1000000 ] ||
    { echo "per-request policies hid rows of an entitled user"; fail=1; }
[ "${rows[per_row]}" = 500000 ] && [ "${rows[naive_row]}" = 1000 ] && [ "${rows[naive_inline]}" = 500000 ] ||
    { echo "per-row policies should show the 500,000 rows of entitled owners"; fail=1; }
awk -v t="${ms[true]}" -v w="${ms[wrapped]}" -v b="${ms[bare]}" -v nn="${ms[not_null]}" \
    -v pr="${ms[per_row]}" -v nv="${ms[naive_row]}" -v ni="${ms[naive_inline]}" 'BEGIN {
    printf "\n== ratios (same run)\n"
    printf "per-request, wrapped / USING (true):                 %.3fx  (target <= 1.2x)\n", w / t
    printf "per-request, bare / USING (true):                    %.3fx\n", b / t
    printf "per-row check / USING (owner_ref IS NOT NULL):       %.3fx\n", pr / nn
    printf "naive per-row EXISTS function / per-row check, per row: %.0fx slower  (target >= 20x)\n", (nv / 2000) / (pr / 1000000)
    printf "naive inline EXISTS (hashed per query) / per-row check: %.2fx\n", ni / pr
    printf "one cached check: %.0f ns  ((per-row - not-null) / 1,000,000 rows; target <= 100 ns)\n", (pr - nn) * 1e6 / 1000000
}'
exit $fail
