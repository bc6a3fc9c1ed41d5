#!/usr/bin/env bash
# bench/versions: the single-account figures of this tree against 0.3.0
# (commit 87f426f, the release before Stripe Connect), measured in the same
# run on the same machine:
#   - webhook ingest: stripe_handle_webhook of signed
#     customer.subscription.updated payloads, 8 pgbench clients, durable
#     commits (as bench/ingest.sh), events/s; two sets of payloads: 1,000
#     subscriptions of 1,000 customers, and bench/ingest.sh's own, whose
#     1,000 subscriptions all belong to one customer;
#   - entitlement checks in row-level-security policies over 1,000,000 rows
#     (as bench/rls.sh), and 10,000 users checked one by one, uncached and
#     cached.
# Each side has its own private copy of a PostgreSQL build (two libraries
# named stripe_billing.so cannot share one installation) and its own
# cluster; both clusters run side by side and the rounds alternate between
# them (A B, then B A, ...), so that the machine's drift hits both.
#     bash bench/versions.sh [ingest rounds, default 9; checks: three times as many]
# SB_BENCH_PG: the PostgreSQL build copied for each side (default the
# release build of 18, /var/cache/stripe_billing/pg-18-release, which
# `bash test/pg-build.sh 18 release` makes; any PostgreSQL 15+ installation
# tree with pgbench and pgcrypto will do).
# SB_BENCH_BASELINE: the commit measured against (default 87f426f, 0.3.0).
# SB_BENCH_PER_CLIENT: webhook transactions per pgbench client a round
# (default 600: 4,800 events a round; a quarter of that for the payloads
# of one customer, which 0.4.0 applies one at a time).
# Needs git (the baseline's sources come from this repository's history),
# make and a C compiler; everything it makes lives in one temporary
# directory, removed at exit with both clusters stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-9}
per_client=${SB_BENCH_PER_CLIENT:-600}
clients=8
pg_source=${SB_BENCH_PG:-/var/cache/stripe_billing/pg-18-release}
[ -x "$pg_source/bin/pg_config" ] || { echo "bench/versions: no PostgreSQL build in $pg_source (make it with bash test/pg-build.sh 18 release, or set SB_BENCH_PG)"; exit 1; }
old_commit=$(git rev-parse --short "${SB_BENCH_BASELINE:-87f426f}^{commit}")
. test/lib/cluster.sh
work_begin bench_versions
began=$(date +%s)
echo "bench/versions: load average at the start $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"

# the two sides: a, the baseline; b, this working tree (uncommitted changes
# included)
control_version() { sed -n "s/^default_version = '\\(.*\\)'/\\1/p"; }
declare -A label=([a]=$(git show "$old_commit:stripe_billing.control" | control_version)
                  [b]=$(control_version <stripe_billing.control))
declare -A want=([a]=${label[a]} [b]=${label[b]})
[ "${label[a]}" != "${label[b]}" ] || label=([a]="$old_commit" [b]="this tree")
sides=(a b)
echo "== building ${want[a]} (commit $old_commit) and ${want[b]} (this tree) into two copies of $pg_source"
mkdir "$work/src-a" "$work/src-b"
git archive "$old_commit" | tar -x -C "$work/src-a"
git ls-files -z -co --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -x -C "$work/src-b"
for s in "${sides[@]}"; do
    cp -a "$pg_source" "$work/install-$s"
    make -C "$work/src-$s" -j2 PG_CONFIG="$work/install-$s/bin/pg_config" install >"$work/build-$s.log" 2>&1 ||
        { echo "bench/versions: building ${label[$s]} failed:"; tail -20 "$work/build-$s.log"; exit 1; }
done

# ---- the two clusters (durable commits, as bench/ingest.sh; no JIT or
# parallel workers, as bench/rls.sh; no checkpoint within a round: each
# ingest round starts with one)
for s in "${sides[@]}"; do
    PG_BINDIR=$work/install-$s/bin
    cluster_start "$work/pg-$s" "shared_preload_libraries = 'stripe_billing'" "fsync = on" \
        "max_connections = 50" "shared_buffers = 1GB" "jit = off" "max_parallel_workers_per_gather = 0" \
        "checkpoint_timeout = 30min" "max_wal_size = 8GB"
done
# on SIDE COMMAND...: runs COMMAND against that side's cluster
on() { local s=$1; shift; PGHOST=$work/pg-$s PG_BINDIR=$work/install-$s/bin "$@"; }
sql() { local s=$1 db=$2; shift 2; on "$s" psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
for s in "${sides[@]}"; do
    sql "$s" postgres -c "CREATE DATABASE ingest" -c "CREATE DATABASE checks" >/dev/null
    got=$(sql "$s" ingest -c "CREATE EXTENSION stripe_billing" \
              -c "SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing'")
    [ "$got" = "${want[$s]}" ] || { echo "bench/versions: side $s installed stripe_billing $got, not ${want[$s]}"; exit 1; }
done
# rounds alternate, the first of a pair in turn: a b, b a, a b, ...
order() { if [ $(($1 % 2)) = 1 ]; then echo "a b"; else echo "b a"; fi; }
results=$work/results      # lines: measure side round value
: >"$results"

# ---- webhook ingest
# Two sets of payloads, in each cluster: "many", 1,000 subscriptions of
# 1,000 customers (sub_many_K of cus_many_K); "one", bench/ingest.sh's, the
# fixture's 1,000 subscriptions all of its one customer.  Each subscription
# is updated again and again, in time order; each event has its own id.
fixture=test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json
declare -A per=([many]=$per_client [one]=$((per_client / 4)))
for s in "${sides[@]}"; do
    sql "$s" ingest -c "CREATE EXTENSION pgcrypto" \
        -c "ALTER SYSTEM SET stripe_billing.webhook_secret = 'whsec_bench_0123456789abcdef'" \
        -c "ALTER SYSTEM SET stripe_billing.webhook_tolerance = '1h'" -c "SELECT pg_reload_conf()" >/dev/null
    for w in many one; do
        sql "$s" ingest -v w="$w" -v seq="${w}_next" -v total="$(((rounds + 1) * per[$w] * clients))" \
            -v template="$(cat "$fixture")" <<'SQL'
CREATE TABLE :"w" (n bigint PRIMARY KEY, body text NOT NULL, header text NOT NULL);
INSERT INTO :"w"
SELECT n, body, 't=' || t || ',v1=' || encode(hmac(convert_to(t || '.' || body, 'UTF8'),
                                                 'whsec_bench_0123456789abcdef', 'sha256'), 'hex')
  FROM (SELECT n, extract(epoch FROM now())::bigint AS t,
               jsonb_set(jsonb_set(jsonb_set(jsonb_set(jsonb_set(:'template'::jsonb,
                   '{id}', to_jsonb('evt_' || :'w' || '_' || n)),
                   '{created}', to_jsonb(1700000000 + n / 1000)),
                   '{data,object,id}', to_jsonb('sub_' || :'w' || '_' || n % 1000)),
                   '{data,object,customer}',
                   CASE :'w' WHEN 'many' THEN to_jsonb('cus_many_' || n % 1000)
                             ELSE :'template'::jsonb #> '{data,object,customer}' END),
                   '{data,object,items,data,0,id}', to_jsonb('si_' || :'w' || '_' || n % 1000))::text AS body
          FROM generate_series(1, :total) n) p;
CREATE SEQUENCE :"seq";
VACUUM ANALYZE :"w";
SQL
        echo "SELECT stripe_billing.stripe_handle_webhook(body, header) FROM $w WHERE n = (SELECT nextval('${w}_next'));" \
            >"$work/$w.sql"
    done
done
ingest_run() {    # SIDE WORKLOAD: prints events/s
    sql "$1" ingest -c CHECKPOINT
    on "$1" "$work/install-$1/bin/pgbench" -n -c "$clients" -j 2 -t "${per[$2]}" -f "$work/$2.sql" ingest 2>&1 |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
for w in many one; do
    echo "== ingest ($w): $clients clients x ${per[$w]} transactions a round, events/s;" \
         "a warm-up round each, then $rounds"
    for s in $(order 1); do ingest_run "$s" "$w" >/dev/null; done
    for r in $(seq "$rounds"); do
        line="   round $r:"
        for s in $(order "$r"); do
            tps=$(ingest_run "$s" "$w")
            [ -n "$tps" ] || { echo "bench/versions: pgbench failed on ${label[$s]}"; exit 1; }
            echo "ingest_$w $s $r $tps" >>"$results"
            line+=$(printf '  %s %6.0f' "${label[$s]}" "$tps")
        done
        echo "$line"
    done
done
total=$(((rounds + 1) * (per[many] + per[one]) * clients))
for s in "${sides[@]}"; do
    read -r applied other < <(sql "$s" ingest -F ' ' -c "SELECT count(*) FILTER (WHERE outcome = 'applied'),
                                                               count(*) FILTER (WHERE outcome <> 'applied')
                                                          FROM stripe_billing.events")
    [ "$applied" = "$total" ] && [ "$other" = 0 ] ||
        { echo "bench/versions: ${label[$s]} applied $applied events of $total ($other otherwise)"; exit 1; }
    sql "$s" postgres -c "DROP DATABASE ingest"    # (memory for what follows)
done

# ---- entitlement checks: 10,000 users, half of them entitled to f
echo "== checks: 10,000 users (5,000 entitled), and 1,000,000 rows per policy, in each cluster"
for s in "${sides[@]}"; do
    sql "$s" checks >/dev/null <<'SQL'
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
CREATE TABLE policies (name text PRIMARY KEY, ord int, expr text);
INSERT INTO policies VALUES
  ('true', 1, 'true'),
  ('wrapped', 2, '(SELECT stripe_billing.stripe_has_entitlement(current_setting(''app.user_ref''), ''f''))'),
  ('not_null', 3, 'owner_ref IS NOT NULL'),
  ('per_row', 4, 'stripe_billing.stripe_has_entitlement(owner_ref, ''f'')');
SELECT format('CREATE TABLE %1$I AS SELECT * FROM docs', 'docs_' || name) FROM policies ORDER BY ord \gexec
SELECT format('ALTER TABLE %1$I ENABLE ROW LEVEL SECURITY', 'docs_' || name) FROM policies ORDER BY ord \gexec
SELECT format('CREATE POLICY p ON %1$I FOR SELECT USING (%2$s)', 'docs_' || name, expr) FROM policies ORDER BY ord \gexec
SELECT format('GRANT SELECT ON %1$I TO bench_app', 'docs_' || name) FROM policies ORDER BY ord \gexec
SELECT format('VACUUM ANALYZE %1$I', 'docs_' || name) FROM policies ORDER BY ord \gexec
DROP TABLE docs;
GRANT SELECT ON policies TO bench_app;
SQL
done

# One round of a side, one new session as the app role, about a second:
# 10,000 distinct users checked one by one in one statement (every check a
# cache miss), then 100,000 checks of the same users (every check cached),
# and the same statements with no check; then every policy's count(*) once
# to warm its plan, and twice more, the faster kept.  Rounds are short and
# many, so that a burst of this machine's other work hits few of them, and
# the two sides of a round run a second apart.
check_round() {
    sql "$1" checks -F ' ' <<'SQL'
SET ROLE bench_app;
SET app.user_ref = 'user_1';
CREATE TEMP TABLE timings (name text, ms float8, n bigint);
DO $$
DECLARE
  p record;
  t0 timestamptz;
  n bigint;
BEGIN
  PERFORM stripe_billing.stripe_has_entitlement('nobody', 'f');    -- the session's first look-up
  t0 := clock_timestamp();
  SELECT count(*) FILTER (WHERE ('user_' || u) IS NOT NULL) INTO n FROM generate_series(1, 10000) u;
  INSERT INTO timings VALUES ('calls_none', extract(epoch FROM clock_timestamp() - t0) * 1000, n);
  t0 := clock_timestamp();
  SELECT count(*) FILTER (WHERE stripe_billing.stripe_has_entitlement('user_' || u, 'f')) INTO n
    FROM generate_series(1, 10000) u;
  INSERT INTO timings VALUES ('calls_uncached', extract(epoch FROM clock_timestamp() - t0) * 1000, n);
  t0 := clock_timestamp();
  SELECT count(*) FILTER (WHERE ('user_' || (u % 10000 + 1)) IS NOT NULL) INTO n FROM generate_series(1, 100000) u;
  INSERT INTO timings VALUES ('calls_none100k', extract(epoch FROM clock_timestamp() - t0) * 1000, n);
  t0 := clock_timestamp();
  SELECT count(*) FILTER (WHERE stripe_billing.stripe_has_entitlement('user_' || (u % 10000 + 1), 'f')) INTO n
    FROM generate_series(1, 100000) u;
  INSERT INTO timings VALUES ('calls_cached', extract(epoch FROM clock_timestamp() - t0) * 1000, n);
  FOR pass IN 0..2 LOOP    -- pass 0 warms the plans
    FOR p IN SELECT * FROM policies ORDER BY ord LOOP
      t0 := clock_timestamp();
      EXECUTE format('SELECT count(*) FROM %I', 'docs_' || p.name) INTO n;
      IF pass > 0 THEN
        INSERT INTO timings VALUES ('rls_' || p.name, extract(epoch FROM clock_timestamp() - t0) * 1000, n);
      END IF;
    END LOOP;
  END LOOP;
END $$;
SELECT name, min(ms), min(n) FROM timings GROUP BY name;
SQL
}
check_rounds=$((3 * rounds))
echo "== checks: a session a round as the app role: 10,000 distinct users checked one by one (uncached),"
echo "   100,000 checks of them (cached), then SELECT count(*) under each policy (the faster of 2), ms;"
echo "   a warm-up round each, then $check_rounds"
for s in $(order 1); do check_round "$s" >/dev/null; done
for r in $(seq "$check_rounds"); do
    for s in $(order "$r"); do
        check_round "$s" >"$work/round"
        while read -r name ms n; do
            case "$name:$n" in
                rls_true:1000000 | rls_wrapped:1000000 | rls_not_null:1000000 | rls_per_row:500000 | \
                calls_none:10000 | calls_uncached:5000 | calls_none100k:100000 | calls_cached:50000) ;;
                *) echo "bench/versions: ${label[$s]} counted $n rows for $name"; exit 1 ;;
            esac
            echo "$name $s $r $ms" >>"$results"
        done <"$work/round"
        [ "$(wc -l <"$work/round")" = 8 ] || { echo "bench/versions: a round of ${label[$s]} gave $(cat "$work/round")"; exit 1; }
        printf '   round %2s: %-9s %s\n' "$r" "${label[$s]}" \
            "$(sort "$work/round" | awk '{ printf "%s %.1f  ", substr($1, index($1, "_") + 1), $2 }')"
    done
done

# ---- summary: per round, the figures derived from the timings (a check
# in a policy: (per-row - not-null) / 1,000,000 rows; one by one: (checks -
# no check) / 10,000 or 100,000 calls); then each figure's median on each
# side, the ratio b / a of the medians, and the median of the rounds' own
# ratios (the two sides of a round ran back to back)
awk '{ v[$1 " " $2 " " $3] = $4; k[$2 " " $3] = 1; print }
     END { for (sr in k) {
               split(sr, x, " ")
               print "wrapped_true", x[1], x[2], v["rls_wrapped " sr] / v["rls_true " sr]
               print "cached_rls", x[1], x[2], (v["rls_per_row " sr] - v["rls_not_null " sr]) * 1e6 / 1e6
               print "uncached_call", x[1], x[2], (v["calls_uncached " sr] - v["calls_none " sr]) * 1e3 / 1e4
               print "cached_call", x[1], x[2], (v["calls_cached " sr] - v["calls_none100k " sr]) * 1e6 / 1e5 } }' \
    "$results" >"$work/figures"
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "== medians (ingest: $rounds rounds, checks: $check_rounds); ratio = ${label[b]} / ${label[a]} (events/s: above 1 is faster; times: below 1 is faster)"
printf '%-54s %9s %9s %7s %8s\n' "" "${label[a]}" "${label[b]}" "ratio" "rounds'"
row() {    # TITLE FIGURE DECIMALS
    local a b ratio rounds_ratio
    a=$(awk -v m="$2" '$1 == m && $2 == "a" { print $4 }' "$work/figures" | median)
    b=$(awk -v m="$2" '$1 == m && $2 == "b" { print $4 }' "$work/figures" | median)
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { print b / a }')
    rounds_ratio=$(awk -v m="$2" '$1 == m { v[$2 " " $3] = $4; r[$3] = 1 }
                                  END { for (i in r) print v["b " i] / v["a " i] }' "$work/figures" | median)
    printf "%-54s %9.${3}f %9.${3}f %7.3f %8.3f\n" "$1" "$a" "$b" "$ratio" "$rounds_ratio"
}
row "webhook ingest, 1,000 customers, events/s" ingest_many 0
row "webhook ingest, one customer (bench/ingest), events/s" ingest_one 0
row "count(*), USING (true), ms" rls_true 1
row "count(*), wrapped check, ms" rls_wrapped 1
row "  wrapped / USING (true)" wrapped_true 3
row "count(*), USING (owner_ref IS NOT NULL), ms" rls_not_null 1
row "count(*), per-row check, ms" rls_per_row 1
row "  one cached check in a policy, ns" cached_rls 1
row "one uncached check (10,000 users one by one), us" uncached_call 2
row "one cached check (100,000 calls, same users), ns" cached_call 1
echo "(rounds': the median of the rounds' own ratios)"
echo "bench/versions: $rounds rounds in $(($(date +%s) - began)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
