#!/usr/bin/env bash
# The README's first command: install what is needed, build, and show the
# main job on a throwaway cluster: a signed Stripe webhook verified and
# recorded exactly once inside the database.  No Stripe keys needed.
#     bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_demo.XXXXXX)
trap 'cluster_stop "$work/pg"' EXIT
echo "== starting a throwaway cluster (shared_preload_libraries = 'stripe_billing')"
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'"

secret="whsec_demo_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
payload=$(cat ../shared/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json 2>/dev/null ||
          echo '{"id":"evt_demo_1","object":"event","type":"customer.subscription.updated","api_version":"2025-03-31.basil","created":1700000000,"livemode":false,"data":{"object":{"id":"sub_demo","object":"subscription"}}}')
# Sign it as Stripe would, with the official SDK.
header=$(PAYLOAD="$payload" SECRET="$secret" NODE_PATH=test/node/node_modules node -e '
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
echo "== demo done; the cluster in $work is stopped on exit"
