#!/usr/bin/env bash
# bench/ingest: stripe_handle_webhook (verify + apply) on signed
# customer.subscription.updated payloads over 1,000 subscriptions, against a
# plain INSERT of the same jsonb into a one-column table; 8 pgbench clients,
# same cluster, same run.  Run after the setup command.
#     bash bench/ingest.sh [transactions per client per run, default 2500]
set -euo pipefail
cd "$(dirname "$0")/.."
per_client=${1:-2500}
clients=8
runs=2
total=$((per_client * clients * runs))
. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
trap 'cluster_stop "$work/pg"' EXIT
# durable commits, as in production
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "fsync = on" \
    "max_connections = 50" "shared_buffers = 512MB"
fixture=test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json
PGBENCH=$PG_BINDIR/pgbench

psql -X -q -v ON_ERROR_STOP=1 -v total="$total" -v template="$(cat "$fixture")" <<'SQL'
CREATE EXTENSION stripe_billing;
CREATE EXTENSION pgcrypto;
ALTER SYSTEM SET stripe_billing.webhook_secret = 'whsec_bench_0123456789abcdef';
ALTER SYSTEM SET stripe_billing.webhook_tolerance = '1h';
SELECT pg_reload_conf();
-- distinct events: 1,000 subscriptions, each updated again and again, in time order
CREATE TABLE payloads (n bigint PRIMARY KEY, body text NOT NULL, header text NOT NULL);
INSERT INTO payloads
SELECT n, body, 't=' || t || ',v1=' || encode(hmac(convert_to(t || '.' || body, 'UTF8'),
                                                 'whsec_bench_0123456789abcdef', 'sha256'), 'hex')
  FROM (SELECT n, extract(epoch FROM now())::bigint AS t,
               jsonb_set(jsonb_set(jsonb_set(jsonb_set(:'template'::jsonb,
                   '{id}', to_jsonb('evt_bench_' || n)),
                   '{created}', to_jsonb(1700000000 + n / 1000)),
                   '{data,object,id}', to_jsonb('sub_bench_' || n % 1000)),
                   '{data,object,items,data,0,id}', to_jsonb('si_bench_' || n % 1000))::text AS body
          FROM generate_series(1, :total) n) p;
CREATE SEQUENCE next_webhook;
CREATE SEQUENCE next_insert;
CREATE TABLE plain (doc jsonb);
SQL

cat >"$work/webhook.sql" <<'EOF2'
SELECT stripe_billing.stripe_handle_webhook(body, header) FROM payloads WHERE n = (SELECT nextval('next_webhook'));
EOF2
cat >"$work/insert.sql" <<'EOF2'
INSERT INTO plain SELECT body::jsonb FROM payloads WHERE n = (SELECT nextval('next_insert'));
EOF2

# every transaction takes the next payload: a fixed count, so none runs dry
run() {
    "$PGBENCH" -n -c "$clients" -j 2 -t "$per_client" -f "$work/$1.sql" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
# alternate, twice each; keep the better of each pair (warm caches)
w1=$(run webhook); i1=$(run insert); w2=$(run webhook); i2=$(run insert)
psql -X -At -v w1="$w1" -v w2="$w2" -v i1="$i1" -v i2="$i2" <<'SQL'
SELECT format(E'stripe_handle_webhook: %s tps (runs: %s, %s)\nplain INSERT:          %s tps (runs: %s, %s)\nratio webhook/insert:  %s (target >= 0.5)',
              round(greatest(:w1, :w2)), round(:w1), round(:w2), round(greatest(:i1, :i2)), round(:i1), round(:i2),
              round(greatest(:w1, :w2) / greatest(:i1, :i2), 3));
SELECT format('work done: %s events applied (%s not applied), %s subscriptions; %s plain rows',
              count(*) FILTER (WHERE outcome = 'applied'), count(*) FILTER (WHERE outcome <> 'applied'),
              (SELECT count(*) FROM stripe_billing.subscriptions), (SELECT count(*) FROM plain))
  FROM stripe_billing.events;
SQL
