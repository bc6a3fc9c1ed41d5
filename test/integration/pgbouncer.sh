#!/usr/bin/env bash
# The extension behind PgBouncer (Debian's) in transaction mode, as
# applications run it: 1,000 requests of two users interleaved over 8
# client connections and a pool of 2 server connections, each request a
# transaction that sets app.user_ref with set_config(..., true) and reads an
# RLS-protected table through psycopg 3 (prepare_threshold=None); a
# cancellation of one user's subscription committed in the middle, while
# every server connection is warm (its entitlement cache filled).  Every
# answer is checked against what the user may see at that moment: zero
# wrong answers.  Also shows why prepare_threshold=None is needed: with
# psycopg's default, requests fail with "prepared statement already
# exists" once a prepared statement meets another client's connection.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
PY=/usr/bin/python3     # Debian's, which has python3-psycopg
work_begin pgbouncer
bdir=$work/pgbouncer
fail=0

cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "max_connections = 20" || exit 1
createdb app
psql -X -q -v ON_ERROR_STOP=1 -d app <<'SQL' || exit 1
CREATE EXTENSION stripe_billing;
CREATE ROLE app_user LOGIN;
CREATE TABLE reports (id serial PRIMARY KEY, body text NOT NULL);
INSERT INTO reports (body) SELECT 'report ' || g FROM generate_series(1, 3) g;
ALTER TABLE reports ENABLE ROW LEVEL SECURITY;
CREATE POLICY reports_paid ON reports FOR SELECT
  USING ((SELECT stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')));
GRANT SELECT ON reports TO app_user;
SELECT stripe_billing.stripe_grant_feature('price', 'price_reports', 'reports');
-- two users on the paid plan
\i test/lib/subscription_event.sql
SELECT stripe_billing.stripe_apply_event(pg_temp.subscription_created(u, 'price_reports'))
  FROM unnest(ARRAY['user_a', 'user_b']) u;
SQL
[ "$(psql -X -At -d app -c "SELECT count(*) FROM stripe_billing.user_features WHERE feature = 'reports'")" = 2 ] ||
    { echo "FAIL: setup: the two users are not on the paid plan"; exit 1; }

# ---- PgBouncer, transaction pooling, two server connections ----
port=$((20000 + RANDOM % 20000))
mkdir -p "$bdir"
cat >"$bdir/pgbouncer.ini" <<EOF
[databases]
app = host=$work/pg port=5432 dbname=app
[pgbouncer]
listen_addr =
unix_socket_dir = $bdir
listen_port = $port
auth_type = trust
auth_file = $bdir/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 50
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
EOF
echo '"app_user" ""' >"$bdir/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown -R "$SB_TEST_USER" "$bdir"
# (stopped at exit by its pid file: pgbouncer itself, not the runuser that
# started it, which does not pass SIGTERM on)
stop_pgbouncer() { [ -s "$bdir/pgbouncer.pid" ] && stop_pid "$(cat "$bdir/pgbouncer.pid")"; return 0; }
at_exit stop_pgbouncer
as_owner /usr/sbin/pgbouncer "$bdir/pgbouncer.ini" >"$bdir/pgbouncer.out" 2>&1 &
pgb_job=$!
wait_until 60 eval '[ -S "$bdir/.s.PGSQL.$port" ] || ! kill -0 $pgb_job 2>/dev/null'
[ -S "$bdir/.s.PGSQL.$port" ] || { echo "FAIL: pgbouncer did not start"; cat "$bdir/pgbouncer.out" "$bdir/pgbouncer.log"; exit 1; }

# ---- the requests ----
cat >"$work/drive.py" <<'EOF'
import random, sys, threading, psycopg
host, port, superuser_dsn, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
REQUESTS, CLIENTS = 1000, 8
kw = {} if mode == "default" else {"prepare_threshold": None}
conns = [psycopg.connect(host=host, port=port, dbname="app", user="app_user", autocommit=True, **kw)
         for _ in range(CLIENTS)]
lock = threading.Lock()
state = {"done": 0, "revoked_at": None, "wrong": [], "errors": [], "seen": {}}
revoking = threading.Event()   # set before the cancellation commits
revoked = threading.Event()    # set once it has

def request(conn, user):
    # one request: its own transaction, the user set for that transaction only
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('app.user_ref', %s, true)", (user,))
            cur.execute("SELECT count(*) FROM reports")
            return cur.fetchone()[0]

def client(i):
    rnd = random.Random(i)
    while True:
        with lock:
            if state["done"] >= REQUESTS:
                return
            state["done"] += 1
            n = state["done"]
        user = rnd.choice(["user_a", "user_b"])
        # user_a sees the reports until the cancellation starts committing,
        # none from when it has; a request in between may see either
        began_after = revoked.is_set()
        try:
            got = request(conns[i], user)
        except Exception as e:
            with lock:
                state["errors"].append(f"{type(e).__name__}: {e}".splitlines()[0])
            continue
        ended_before = not revoking.is_set()
        if user == "user_b" or ended_before:
            want = {3}
        elif began_after:
            want = {0}
        else:
            want = {0, 3}
        with lock:
            state["seen"][(user, got)] = state["seen"].get((user, got), 0) + 1
            if got not in want:
                state["wrong"].append((n, user, got, sorted(want)))
        if n == REQUESTS // 2 and not revoked.is_set():
            # the cancellation, committed by another session (the webhook's)
            revoking.set()
            with psycopg.connect(superuser_dsn, autocommit=True) as su:
                su.execute("""SELECT stripe_billing.stripe_apply_event(jsonb_build_object(
                  'id', 'evt_pgb_cancel', 'object', 'event', 'type', 'customer.subscription.deleted',
                  'livemode', false, 'created', extract(epoch FROM now())::bigint,
                  'data', jsonb_build_object('object', jsonb_build_object(
                    'id', 'sub_user_a', 'object', 'subscription', 'customer', 'cus_user_a', 'status', 'canceled',
                    'ended_at', extract(epoch FROM now())::bigint,
                    'current_period_start', extract(epoch FROM now())::bigint - 86400,
                    'current_period_end', extract(epoch FROM now())::bigint + 30 * 86400,
                    'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', '[]'::jsonb)))))""")
            revoked.set()

threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads: t.start()
for t in threads: t.join()
print(f"requests {state['done']} wrong {len(state['wrong'])} errors {len(state['errors'])}")
print("answers " + " ".join(f"{u}:{g}={c}" for (u, g), c in sorted(state["seen"].items())))
if mode != "default":  # (there user_a has no access left: only the errors count)
    for w in state["wrong"][:5]: print("wrong", w)
for e in sorted(set(state["errors"]))[:3]: print("error", e)
EOF
chmod 644 "$work/drive.py"
su_dsn="host=$work/pg port=5432 dbname=app user=postgres"
out=$($PY "$work/drive.py" "$bdir" "$port" "$su_dsn" none 2>&1)
echo "$out" | sed 's/^/      /'
backends=$(psql -X -At -d app -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user'")
if grep -q '^requests 1000 wrong 0 errors 0$' <<<"$out" && grep -q 'user_a:0=' <<<"$out" && grep -q 'user_a:3=' <<<"$out" &&
   [ "$backends" -le 2 ]; then
    echo "PASS 1 1,000 requests of two users through PgBouncer (transaction mode, $backends server connections for 8 clients, psycopg prepare_threshold=None): zero wrong answers, user_a's access gone after the cancellation committed on warm connections"
else
    echo "FAIL 1 behind PgBouncer: wrong answers, errors, or the check would prove nothing (server connections of app_user: $backends)"; fail=1
fi

# psycopg's default prepares a statement after 5 executions; behind a
# transaction pooler the next client's connection may already hold one of
# that name
psql -X -q -d app -c "DELETE FROM stripe_billing.events WHERE id = 'evt_pgb_cancel'" >/dev/null
out=$($PY "$work/drive.py" "$bdir" "$port" "$su_dsn" default 2>&1)
echo "$out" | sed 's/^/      /'
if grep -qE 'error (DuplicatePreparedStatement|InvalidSqlStatementName)' <<<"$out"; then
    echo "PASS 2 with psycopg's default prepare_threshold, requests fail behind PgBouncer (as the README warns): prepare_threshold=None is needed"
else
    echo "FAIL 2 psycopg's default prepare_threshold did not fail behind PgBouncer 1.18: the README's advice is not shown to matter"; fail=1
fi
exit $fail
