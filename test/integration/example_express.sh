#!/usr/bin/env bash
# examples/node (Express + node-postgres), started against a throwaway
# cluster and the loopback fake Stripe, connected as an application role
# without table rights, driven by test/integration/examples/drive_app.js: webhooks
# signed by the official stripe SDK (shuffled, duplicated, tampered), the
# RLS-gated page per user, Checkout.  Also checks that the app logged the
# refused Checkout's SQLSTATE, detail and hint while the caller got none.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/example_app.sh
[ -d examples/node/node_modules/express ] || { echo "FAIL: examples/node has no node_modules (run scripts/install-deps.sh)"; exit 1; }
example_backend || exit 1

example_app env PORT=0 PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=app PGDATABASE=app node examples/node/app.js
example_listening '^listening ' || { echo "FAIL: the app did not start"; cat "$work/app.log"; exit 1; }
port=$(sed -n 's/^listening //p' "$work/app.log")

example_drive "http://127.0.0.1:$port"
rc=$?
example_logged || rc=1
exit $rc
