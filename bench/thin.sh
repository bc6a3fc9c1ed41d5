#!/usr/bin/env bash
# bench/thin: thin events (event destinations, issue 26), two figures of one
# run on one cluster (durable commits, as in production):
#  1. the webhook route's time: stripe_handle_webhook on signed thin
#     notifications (verified and recorded pending: nothing is fetched in the
#     route's transaction) against the same call on signed snapshot events
#     (customer.subscription.updated: verified, recorded and applied) over
#     the same 1,000 subscriptions; 8 pgbench clients, alternating runs;
#  2. the fetch latency, a notification's commit to its event applied (the
#     worker woken at the commit, GET /v2/core/events/{id} and the related
#     object from the loopback fake Stripe, applied): median and p99 over
#     subscription lifecycles' thin events delivered at a steady rate, under
#     the default max_requests_per_second (20: two requests an event, 50 ms
#     apart) and under one that does not hold them back, against their
#     floor: the same two GETs made back to back on one keep-alive
#     connection.  The worker has nothing else to do (poll_interval 1h: its
#     cycles of /v1/events, which would delay a fetch by their length, are
#     left out), so the figure is the thin path's own.
#     bash bench/thin.sh [transactions per client per run, default 2500]
#                        [notifications a second, default 8] [lifecycles, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
per_client=${1:-2500}
rate=${2:-8}
users=${3:-20}
clients=8
runs=2
total=$((per_client * clients * runs))
PY=/usr/bin/python3
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work_begin bench_thin
KEY=sk_test_bench_thin
WHSEC=whsec_bench_0123456789abcdef
fake_start "$work" "$KEY"
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "fsync = on" \
    "max_connections = 50" "shared_buffers = 512MB" "stripe_billing.database = 'bench_fetch'" \
    "stripe_billing.api_base = '$FAKE_URL'" "stripe_billing.api_key = '$KEY'" \
    "stripe_billing.webhook_secret = '$WHSEC'" "stripe_billing.webhook_tolerance = '1h'" \
    "stripe_billing.backfill_on_start = off" "stripe_billing.poll_interval = '1h'"
fixture=test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json
PGBENCH=$PG_BINDIR/pgbench

# ---- 1. the route: snapshot events against thin notifications
createdb bench_route
psql -X -q -v ON_ERROR_STOP=1 -d bench_route -v total="$total" -v template="$(cat "$fixture")" -v secret="$WHSEC" <<'SQL'
CREATE EXTENSION stripe_billing;
CREATE EXTENSION pgcrypto;
CREATE FUNCTION sign(body text, secret text) RETURNS text LANGUAGE sql AS $$
  SELECT 't=' || t || ',v1=' || encode(hmac(convert_to(t || '.' || body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex')
    FROM (SELECT extract(epoch FROM now())::bigint AS t) x
$$;
-- 1,000 subscriptions, each updated again and again, in time order
CREATE TABLE snapshots (n bigint PRIMARY KEY, body text NOT NULL, header text NOT NULL);
INSERT INTO snapshots
SELECT n, body, sign(body, :'secret')
  FROM (SELECT n, jsonb_set(jsonb_set(jsonb_set(jsonb_set(:'template'::jsonb,
                      '{id}', to_jsonb('evt_bench_' || n)),
                      '{created}', to_jsonb(1700000000 + n / 1000)),
                      '{data,object,id}', to_jsonb('sub_bench_' || n % 1000)),
                      '{data,object,items,data,0,id}', to_jsonb('si_bench_' || n % 1000))::text AS body
          FROM generate_series(1, :total) n) p;
-- their thin notifications, as a destination sends them (pretty-printed)
CREATE TABLE notifications (n bigint PRIMARY KEY, body text NOT NULL, header text NOT NULL);
INSERT INTO notifications
SELECT n, body, sign(body, :'secret')
  FROM (SELECT n, jsonb_pretty(jsonb_build_object(
                      'id', 'evt_test_65bench' || n, 'object', 'v2.core.event',
                      'type', 'v1.customer.subscription.updated', 'livemode', false,
                      'created', to_char(to_timestamp(1700000000 + n / 1000.0) AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                      'related_object', jsonb_build_object('id', 'sub_bench_' || n % 1000, 'type', 'subscription',
                                                           'url', '/v1/subscriptions/sub_bench_' || n % 1000))) AS body
          FROM generate_series(1, :total) n) p;
CREATE SEQUENCE next_snapshot;
CREATE SEQUENCE next_thin;
SQL
cat >"$work/snapshot.sql" <<'EOF'
SELECT stripe_billing.stripe_handle_webhook(body, header) FROM snapshots WHERE n = (SELECT nextval('next_snapshot'));
EOF
cat >"$work/thin.sql" <<'EOF'
SELECT stripe_billing.stripe_handle_webhook(body, header) FROM notifications WHERE n = (SELECT nextval('next_thin'));
EOF
# every transaction takes the next payload: a fixed count, so none runs dry;
# prints "tps latency_ms"
run() {
    "$PGBENCH" -n -d bench_route -c "$clients" -j 2 -t "$per_client" -f "$work/$1.sql" 2>&1 |
        awk '/^latency average/ {l = $4} /^tps = / {t = $3} END {print t, l}'
}
read -r s1 sl1 <<<"$(run snapshot)"; read -r t1 tl1 <<<"$(run thin)"
read -r s2 sl2 <<<"$(run snapshot)"; read -r t2 tl2 <<<"$(run thin)"

# ---- 2. the fetch latency: the worker, woken at each notification's commit,
# under the default request budget, then under one that does not hold it back
createdb bench_fetch
psql -X -q -v ON_ERROR_STOP=1 -d bench_fetch -c "CREATE EXTENSION stripe_billing" \
    -c "CREATE TABLE batches (label text, id text)"
wait_until 30 eval '[ "$(psql -X -At -d bench_fetch -c "SELECT last_success_at IS NOT NULL FROM stripe_billing.sync_status WHERE account IS NULL")" = t ]'
fetch_latency() {
    local label=$1 seed=$2 since
    since=$(curl -sS "$FAKE_URL/_fake/thin_events" | jq -r '.[-1].id // empty')
    curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' \
        --data "{\"generate\": {\"mode\": \"lifecycle\", \"users\": $users, \"seed\": $seed}}" "$FAKE_URL/_fake/events" >/dev/null
    curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' \
        --data "{\"secret\": \"$WHSEC\"${since:+, \"since\": \"$since\"}}" "$FAKE_URL/_fake/thin_events/notifications" >"$work/$label.json"
    jq -r --arg l "$label" '.notifications[] | [$l, .id] | @tsv' "$work/$label.json" |
        psql -X -q -d bench_fetch -c "COPY batches FROM STDIN"
    $PY test/integration/thin/deliver.py --db bench_fetch --no-shuffle --rate "$rate" <"$work/$label.json" >/dev/null
    wait_until 300 eval '[ "$(psql -X -At -d bench_fetch -c "SELECT count(*) FROM stripe_billing.events WHERE outcome = '"'pending'"'")" = 0 ]'
}
fetch_latency budget 1
psql -X -q -d postgres -c "ALTER SYSTEM SET stripe_billing.max_requests_per_second = 10000" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
fetch_latency unthrottled 2
# the floor: the same two GETs, back to back, on one keep-alive connection
$PY - "$FAKE_URL" "$KEY" "$work/unthrottled.json" >"$work/floor.txt" <<'PY'
import http.client, json, statistics, sys, time, urllib.parse
url, key, notes = urllib.parse.urlparse(sys.argv[1]), sys.argv[2], json.load(open(sys.argv[3]))["notifications"]
conn = http.client.HTTPConnection(url.hostname, url.port)
headers = {"Authorization": f"Bearer {key}"}
times = []
for note in notes:
    began = time.perf_counter()
    conn.request("GET", "/v2/core/events/" + note["id"], headers=headers)
    event = json.loads(conn.getresponse().read())
    if event.get("related_object"):
        conn.request("GET", event["related_object"]["url"], headers=headers)
        conn.getresponse().read()
    times.append((time.perf_counter() - began) * 1000)
times.sort()
print(statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))])
PY
read -r floor_median floor_p99 <"$work/floor.txt"

psql -X -At -d bench_fetch -v s1="$s1" -v s2="$s2" -v t1="$t1" -v t2="$t2" -v sl1="$sl1" -v sl2="$sl2" \
     -v tl1="$tl1" -v tl2="$tl2" -v rate="$rate" -v floor_median="$floor_median" -v floor_p99="$floor_p99" <<'SQL'
SELECT format(E'the webhook route, %s clients:\n'
              '  snapshot events (verify, record, apply): %s tps, %s ms a call (runs: %s, %s tps)\n'
              '  thin notifications (verify, record):     %s tps, %s ms a call (runs: %s, %s tps)\n'
              '  ratio thin/snapshot: %s tps, %s of the time a call (target: at most 1)',
              8, round(greatest(:s1, :s2)), least(:sl1, :sl2), round(:s1), round(:s2),
              round(greatest(:t1, :t2)), least(:tl1, :tl2), round(:t1), round(:t2),
              round(greatest(:t1, :t2) / greatest(:s1, :s2), 2), round(least(:tl1, :tl2) / least(:sl1, :sl2), 2));
WITH l AS (
  SELECT b.label, extract(epoch FROM f.done_at - e.received_at) * 1000 AS ms
    FROM batches b JOIN stripe_billing.events e ON e.id = b.id JOIN stripe_billing.thin_fetches f ON f.event_id = e.id
),
s AS (
  SELECT label, count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS median,
         percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, max(ms) AS max
    FROM l GROUP BY label
)
SELECT format(E'the fetch, a notification committed to its event applied (%s a second; the two GETs alone, back to back\n'
              '  on one keep-alive connection: median %s ms, p99 %s ms):\n'
              '  max_requests_per_second 20 (the default): %s events, median %s ms, p99 %s ms, max %s ms\n'
              '  max_requests_per_second 10000:            %s events, median %s ms, p99 %s ms, max %s ms;'
              ' ratio to the two GETs: median %s, p99 %s',
              :rate, round(:floor_median::numeric, 1), round(:floor_p99::numeric, 1),
              b.n, round(b.median::numeric, 1), round(b.p99::numeric, 1), round(b.max::numeric, 1),
              u.n, round(u.median::numeric, 1), round(u.p99::numeric, 1), round(u.max::numeric, 1),
              round((u.median / :floor_median)::numeric, 1), round((u.p99 / :floor_p99)::numeric, 1))
  FROM s b, s u WHERE b.label = 'budget' AND u.label = 'unthrottled';
SELECT format('work done: %s thin events (%s applied, %s not), %s fetch attempts', count(*),
              count(*) FILTER (WHERE outcome = 'applied'), count(*) FILTER (WHERE outcome <> 'applied'),
              (SELECT sum(attempts) FROM stripe_billing.thin_fetches))
  FROM stripe_billing.events WHERE payload->>'object' = 'v2.core.event';
SQL
