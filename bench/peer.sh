#!/usr/bin/env bash
# bench/peer: three contenders raced in one run, same cluster, same signed
# payloads, same concurrency (one node-postgres process, 8 requests in
# flight), in alternating rounds (engine, ours, insert, engine, ...):
#   engine  the Supabase Stripe Sync Engine (@supabase/stripe-sync-engine
#           0.48.5, StripeSync.processWebhook) on its own schema, offline:
#           no revalidation, no backfill, its Stripe API pointed at a dead
#           loopback port and every TCP connection counted (must stay 0);
#   ours    SELECT stripe_billing.stripe_handle_webhook(payload, header);
#   insert  INSERT INTO plain (doc) VALUES ($1::jsonb) of the same payload.
# Two workloads, fresh ids every round: single (customer.subscription.updated
# of distinct subscriptions) and mixed (every fixture of test/fixtures/events
# both sides apply offline, cycled).  A warm-up round each, then 3 counted
# rounds; prints events/s per round, medians and spread, ours/insert (target
# >= 0.8 single, >= 0.6 mixed), ours/engine (target >= 3), WAL bytes per
# event (ours/insert target <= 1.5), rows landed and our outcomes, a
# per-event profile (table/index statistics, pg_waldump by record type and
# relation) of the last single round.  Fails if ours does not apply every
# event, if the engine's rows are missing or if anything reaches the network.
# Installs its npm packages (bench/peer/package-lock.json) in a temporary
# folder.  Run after the setup command (the extension installed).
#     bash bench/peer.sh [events per round, default 3000]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-3000}
rounds=3
secret=whsec_bench_peer_0123456789abcdef
. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
node_dir=$(mktemp -d /tmp/stripe_billing_peer_npm.XXXXXX)
trap 'cluster_stop "$work/pg"; rm -rf "$node_dir" "$work"' EXIT

echo "== installing the sync engine (npm ci in $node_dir)"
cp bench/peer/package.json bench/peer/package-lock.json bench/peer/race.js bench/peer/walrels.js "$node_dir/"
npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null

# durable commits, as in production; no checkpoint and no autovacuum inside
# a round (the driver runs VACUUM ANALYZE between rounds, outside the
# timing and the WAL measurement), WAL kept for pg_waldump
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "fsync = on" \
    "max_connections = 50" "shared_buffers = 512MB" "autovacuum = off" \
    "checkpoint_timeout = '1h'" "max_wal_size = '20GB'" "wal_keep_size = '4GB'"

for try in 1 2 3 4 5; do
    psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION stripe_billing' 2>"$work/create.err" && break
    # another installation of the extension may be under way: retry
    [ "$try" -lt 5 ] || { cat "$work/create.err"; exit 1; }
    echo "CREATE EXTENSION failed ($(head -1 "$work/create.err")), retrying in 60 s"; sleep 60
done
psql -X -q -o /dev/null -v ON_ERROR_STOP=1 -v secret="$secret" <<'SQL'
ALTER SYSTEM SET stripe_billing.webhook_secret = :'secret';
ALTER SYSTEM SET stripe_billing.webhook_tolerance = '1h';
SELECT pg_reload_conf();
CREATE TABLE plain (doc jsonb);
SQL
echo "stripe_billing $(psql -X -At -c "SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing'"), livemode = $(psql -X -At -c 'SHOW stripe_billing.livemode'); PostgreSQL $(psql -X -At -c 'SHOW server_version'); node $(node --version); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

status=0
fixtures=$PWD/test/fixtures/events
(cd "$node_dir" && node race.js "$events" "$rounds" "$fixtures" "$secret" "$work/wal_ranges") || status=$?
echo "load average after the race: $(cut -d' ' -f1-3 /proc/loadavg) (other processes share the CPUs: compare the contenders of one run, not runs)"
[ -s "$work/wal_ranges" ] || exit $((status ? status : 1))

# WAL of the last counted single round of each contender, by record type and relation
psql -X -At -F '|' >"$work/relmap" <<'SQL'
SELECT pg_relation_filenode(c.oid), c.oid::regclass::text FROM pg_class c WHERE pg_relation_filenode(c.oid) IS NOT NULL
UNION ALL
SELECT pg_relation_filenode(t.oid), c.oid::regclass::text || ' (TOAST)' FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
UNION ALL
SELECT pg_relation_filenode(i.indexrelid), c.oid::regclass::text || ' (TOAST index)'
  FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid;
SQL
echo
echo "== profile: pg_waldump of the last counted single round"
for c in engine ours insert; do
    read -r _ _ start end n < <(grep "^$c $rounds " "$work/wal_ranges")
    as_owner "$PG_BINDIR/pg_waldump" -p "$work/pg/data/pg_wal" -s "$start" -e "$end" 2>/dev/null |
        node "$node_dir/walrels.js" "$work/relmap" "$n" "$c"
done
exit "$status"
