# What the example apps' tests share (test/integration/example_express.sh,
# test/integration/example_fastapi.sh): the backend an app runs against, the driver,
# and the check of the app's log.
#
#   . test/lib/example_app.sh
#   example_backend               # fake Stripe, cluster, database app; sets work, PGHOST, FAKE_URL
#   example_app COMMAND...        # starts the app on $work/app.log (stopped at exit)
#   example_listening PATTERN     # waits for PATTERN in its log (60 s), or its end
#   example_drive URL             # test/integration/examples/drive_app.js; returns its status
#   example_logged                # the app logged the refusals' SQLSTATEs
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
APP_PID=

example_app() {
    "$@" >"$work/app.log" 2>&1 &
    APP_PID=$!
    at_exit stop_pid "$APP_PID"
}

# (an app starts in a second or two; on a loaded machine, some more)
example_listening() {
    local pattern=$1
    wait_until 60 eval 'grep -qE "$pattern" "$work/app.log" || ! kill -0 "$APP_PID" 2>/dev/null'
    grep -qE "$pattern" "$work/app.log"
}

# A fake Stripe and a cluster (webhook secret, API key) with database app:
# the extension, an application role app without table rights, and an
# RLS-protected table reports gated on the feature reports.
example_backend() {
    key="sk_test_example$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    secret="whsec_example$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    work_begin example
    fake_start "$work" "$key" || return 1
    cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'postgres'" \
        "stripe_billing.api_key = '$key'" "stripe_billing.api_base = '$FAKE_URL'" \
        "stripe_billing.webhook_secret = '$secret'" || return 1
    createdb app
    psql -X -q -v ON_ERROR_STOP=1 -d app <<'SQL' >/dev/null
CREATE EXTENSION stripe_billing;
CREATE ROLE app LOGIN;
GRANT EXECUTE ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                                boolean, text, jsonb, text, boolean,
                                                                numeric, bigint, text, text, text, text, text) TO app;
SELECT stripe_billing.stripe_grant_feature('price', 'price_reports', 'reports');
CREATE TABLE reports (id serial PRIMARY KEY, title text NOT NULL);
INSERT INTO reports (title) VALUES ('Q1'), ('Q2'), ('Q3');
ALTER TABLE reports ENABLE ROW LEVEL SECURITY;
CREATE POLICY reports_paid ON reports FOR SELECT
  USING ((SELECT stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')));
GRANT SELECT ON reports TO app;
SQL
}

example_drive() {
    NODE_PATH=test/integration/node/node_modules node test/integration/examples/drive_app.js "$1" "$secret" "$FAKE_URL"
}

# The refused Checkout's and the tampered webhook's SQLSTATEs, with the
# message, are in the app's log (one JSON line each, either spacing).
example_logged() {
    if grep -qE '"where": ?"checkout", ?"code": ?"22023", ?"message": ?"metadata key \\"a\[b\]\\" must not contain' "$work/app.log" &&
       grep -qE '"where": ?"webhook", ?"code": ?"SBS04"' "$work/app.log"; then
        echo "PASS: the app logged code, message, detail and hint of what it refused (22023 for the metadata, SBS04 for a tampered body)"
    else
        echo "FAIL: the app's log lacks the refusals' codes:"; tail -5 "$work/app.log" | sed 's/^/      /'; return 1
    fi
}
