#!/usr/bin/env bash
# examples/python (FastAPI + psycopg 3), started against a throwaway
# cluster and the loopback fake Stripe, connected as an application role
# without table rights, driven by test/integration/examples/drive_app.js: webhooks
# signed by the official stripe SDK (shuffled, duplicated, tampered), the
# RLS-gated page per user, Checkout.  Also checks that the app logged the
# refused Checkout's SQLSTATE, detail and hint while the caller got none.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/example_app.sh
/usr/bin/python3 -c "import fastapi, uvicorn, psycopg_pool" 2>/dev/null ||
    { echo "FAIL: python3-fastapi, python3-uvicorn or python3-psycopg-pool is missing (run scripts/install-deps.sh)"; exit 1; }
example_backend || exit 1

# a free port (uvicorn does not report the one it picks for 0)
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
example_app env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=app PGDATABASE=app \
    /usr/bin/python3 -m uvicorn app:app --app-dir examples/python --host 127.0.0.1 --port "$port"
example_listening 'Application startup complete' || { echo "FAIL: the app did not start"; cat "$work/app.log"; exit 1; }

example_drive "http://127.0.0.1:$port"
rc=$?
example_logged || rc=1
exit $rc
