#!/usr/bin/env bash
# examples/node (Express + node-postgres), started against a throwaway
# cluster and the loopback fake Stripe, connected as an application role
# without table rights, driven by test/examples/drive_app.js: webhooks
# signed by the official stripe SDK (shuffled, duplicated, tampered), the
# RLS-gated page per user, Checkout.  Also checks that the app logged the
# refused Checkout's SQLSTATE, detail and hint while the caller got none.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
key="sk_test_example$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
secret="whsec_example$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
work=$(mktemp -d /tmp/stripe_billing_example.XXXXXX)
chmod 755 "$work"
app_pid=
cleanup() {
    [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null
    fake_stop
    cluster_stop "$work/pg"
}
trap cleanup EXIT
[ -d examples/node/node_modules/express ] || { echo "FAIL: examples/node has no node_modules (run scripts/install-deps.sh)"; exit 1; }
fake_start "$work" "$key" || exit 1
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
    "stripe_billing.webhook_secret = '$secret'" || exit 1
createdb app
psql -X -q -v ON_ERROR_STOP=1 -d app <<'SQL' >/dev/null || exit 1
CREATE EXTENSION stripe_billing;
CREATE ROLE app LOGIN;
GRANT EXECUTE ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                                boolean, text, jsonb, text, boolean) TO app;
SELECT stripe_billing.stripe_grant_feature('price', 'price_reports', 'reports');
CREATE TABLE reports (id serial PRIMARY KEY, title text NOT NULL);
INSERT INTO reports (title) VALUES ('Q1'), ('Q2'), ('Q3');
ALTER TABLE reports ENABLE ROW LEVEL SECURITY;
CREATE POLICY reports_paid ON reports FOR SELECT
  USING ((SELECT stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')));
GRANT SELECT ON reports TO app;
SQL

PORT=0 PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=app PGDATABASE=app node examples/node/app.js >"$work/app.log" 2>&1 &
app_pid=$!
for _ in $(seq 100); do grep -q '^listening ' "$work/app.log" && break; sleep 0.05; done
port=$(sed -n 's/^listening //p' "$work/app.log")
[ -n "$port" ] || { echo "FAIL: the app did not start"; cat "$work/app.log"; exit 1; }

NODE_PATH=test/node/node_modules node test/examples/drive_app.js "http://127.0.0.1:$port" "$secret" "$FAKE_URL"
rc=$?
# the refused Checkout: its SQLSTATE, detail and hint are in the app's log
if grep -q '"where":"checkout","code":"22023","message":"metadata key \\"a\[b\]\\" must not contain' "$work/app.log" &&
   grep -q '"where":"webhook","code":"SBS04"' "$work/app.log"; then
    echo "PASS: the app logged code, message, detail and hint of what it refused (22023 for the metadata, SBS04 for a tampered body)"
else
    echo "FAIL: the app's log lacks the refusals' codes:"; tail -5 "$work/app.log" | sed 's/^/      /'; rc=1
fi
exit $rc
