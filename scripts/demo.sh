#!/usr/bin/env bash
# The README's first command: install what is needed, build, and show the
# main job on a throwaway cluster against a loopback fake Stripe (no keys
# needed): a signed webhook verified and recorded exactly once, then the
# whole loop: Checkout created from SQL, paid in the fake, its events
# applied, and the user's subscription and features following each change.
#     bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

. test/lib/cluster.sh
. test/lib/fake_stripe.sh
work=$(mktemp -d /tmp/stripe_billing_demo.XXXXXX)
trap 'cluster_stop "$work/pg"; fake_stop' EXIT
echo "== starting a throwaway cluster (shared_preload_libraries = 'stripe_billing')"
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'"

secret="whsec_demo_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
payload=$(cat test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json)
# Sign it as Stripe would, with the official SDK.
header=$(PAYLOAD="$payload" SECRET="$secret" NODE_PATH=test/integration/node/node_modules node -e '
  const stripe = require("stripe")("sk_test_unused");
  process.stdout.write(stripe.webhooks.generateTestHeaderString({payload: process.env.PAYLOAD, secret: process.env.SECRET}));')

echo "== a webhook signed by the stripe SDK, handed to the database like a route would"
psql -X -q -v ON_ERROR_STOP=0 -v payload="$payload" -v header="$header" <<SQL
CREATE EXTENSION stripe_billing;
ALTER SYSTEM SET stripe_billing.webhook_secret = '$secret';
\o /dev/null
SELECT pg_reload_conf(), pg_sleep(0.3);
\o
\c
\echo
\echo '-- first delivery: verified and recorded'
SELECT stripe_billing.stripe_handle_webhook(:'payload', :'header') AS outcome;
\echo '-- Stripe retries the same event: recorded once, reported duplicate'
SELECT stripe_billing.stripe_handle_webhook(:'payload', :'header') AS outcome;
\echo '-- the ledger'
SELECT id, type, source, outcome, created FROM stripe_billing.events;
\echo '-- a tampered body is refused with the reason (SQLSTATE SBS04 -> answer 400)'
\set VERBOSITY default
SELECT stripe_billing.stripe_handle_webhook(:'payload' || ' ', :'header');
\echo '-- and so is a forged header'
SELECT stripe_billing.stripe_handle_webhook(:'payload', 't=1700000000,v1=deadbeef');
\echo '-- the secret is not visible to application roles'
CREATE ROLE demo_app;
SET ROLE demo_app;
SHOW stripe_billing.webhook_secret;
SQL

echo
echo "== the loop: Checkout from SQL, paid in the fake Stripe, events applied, features follow"
fake_start "$work" sk_test_demo
fake=$FAKE_URL

# Pulls the fake's events and applies them oldest first, as the background
# worker does.
pull_events() {
    psql -X -q -At <<'SQL'
SELECT 'events: ' || string_agg(outcome || ' ' || n, ', ' ORDER BY outcome)
  FROM (SELECT outcome, count(*) AS n
          FROM (SELECT stripe_billing.stripe_apply_event(e, 'poll') AS outcome
                  FROM jsonb_array_elements(stripe_billing.stripe_api('GET', '/v1/events', '{"limit": 100}')->'data')
                       WITH ORDINALITY AS page(e, n)
                 ORDER BY n DESC) applied
         GROUP BY outcome) counts;
SQL
}
state() {
    psql -X -q -At <<'SQL'
SELECT format('  subscription: %s, cancel_at_period_end %s; features of user_42: %s',
              coalesce(stripe_billing.stripe_subscription_status('user_42'), 'none'),
              coalesce((SELECT bool_or(cancel_at_period_end)::text FROM stripe_billing.subscriptions), '-'),
              coalesce((SELECT string_agg(feature || coalesce(' until ' || to_char(valid_until, 'YYYY-MM-DD'), ''), ', ')
                          FROM stripe_billing.stripe_user_features('user_42')), 'none'));
SQL
}

createdb loop
export PGDATABASE=loop
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION stripe_billing;
ALTER SYSTEM SET stripe_billing.api_key = 'sk_test_demo';
ALTER SYSTEM SET stripe_billing.api_base = '$fake';
SELECT pg_reload_conf(), pg_sleep(0.3);
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
SQL
echo "-- the app maps price lookup key 'pro' to feature 'reports', and creates a Checkout session:"
psql -X -q -c "SELECT session_id, url FROM stripe_billing.stripe_create_checkout('user_42', 'price_pro',
                 'https://app.example/welcome', 'https://app.example/pricing', trial_days => 14)"
state
session=$(psql -X -At -c "SELECT id FROM stripe_billing.checkout_sessions WHERE user_ref = 'user_42'")
echo "-- the customer pays (the fake completes the session and emits Stripe's events)"
curl -s -X POST "$fake/_fake/checkout/sessions/$session/complete" >/dev/null
pull_events
state
echo "-- the user cancels from the app: at period end"
psql -X -q -At -c "SELECT 'cancel_at_period_end: ' || (stripe_billing.stripe_cancel_subscription(id)->>'cancel_at_period_end')
                     FROM stripe_billing.subscriptions"
state
echo "-- and changes their mind"
psql -X -q -At -c "SELECT 'cancel_at_period_end: ' || (stripe_billing.stripe_resume_subscription(id)->>'cancel_at_period_end')
                     FROM stripe_billing.subscriptions"
pull_events
state
echo "-- a payment fails at renewal: past_due (access until period end + stripe_billing.past_due_grace)"
sub=$(psql -X -At -c "SELECT id FROM stripe_billing.subscriptions")
curl -s -X POST -H 'Content-Type: application/json' -d '{"status": "past_due", "new_period": true}' \
    "$fake/_fake/subscriptions/$sub/advance" >/dev/null
pull_events
state
echo "-- Stripe gives up: canceled, access ends"
curl -s -X POST -H 'Content-Type: application/json' -d '{"status": "canceled"}' \
    "$fake/_fake/subscriptions/$sub/advance" >/dev/null
pull_events
state
echo
echo "== demo done; the cluster and the fake Stripe stop on exit"
