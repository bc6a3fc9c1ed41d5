#!/usr/bin/env bash
# Secrets never reach the server log nor a client's messages: every way a
# secret passes through a statement, a setting, an error or a notice is
# exercised with log_statement = 'all', and neither the log nor what the
# client saw may hold the secret.  Needs a server with
# shared_preload_libraries = 'stripe_billing'; $1 is its log file.
set -euo pipefail
log=$1
rand() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
wh="whsec_LOGCHECK$(rand)"
key="sk_test_LOGCHECK$(rand)"
plain="plainsecret$(rand)"      # a configured secret with no Stripe prefix
quoted="quotedsecret$(rand)"    # set through the quoted setting name
start=$(($(stat -c %s "$log") + 1))
. test/lib/cluster.sh
work_begin secrets
client=$work/client.txt

psql -X -q -v ON_ERROR_STOP=0 >"$client" 2>&1 <<SQL
CREATE EXTENSION IF NOT EXISTS stripe_billing;
DROP ROLE IF EXISTS regress_sb_logcheck;
CREATE ROLE regress_sb_logcheck;
DROP ROLE IF EXISTS regress_sb_monitor;
CREATE ROLE regress_sb_monitor LOGIN IN ROLE pg_monitor;
SET log_statement = 'all';
SET log_min_error_statement = 'error';
SET log_min_messages = 'notice';
SET stripe_billing.webhook_secret = '$wh, $plain';
SET stripe_billing.api_key TO '$key';
SELECT set_config('stripe_billing.api_key', '$key', false) IS NOT NULL AS set;
ALTER SYSTEM SET stripe_billing.webhook_secret = '$wh';
ALTER SYSTEM SET stripe_billing.api_key = '$key';
SELECT pg_conf_load_time() AS reload_before \gset
SELECT pg_reload_conf();
\setenv RELOAD_BEFORE :reload_before
\! bash -c '. test/lib/cluster.sh; cluster_reloaded_since "\$RELOAD_BEFORE" || echo "RELOAD NOT SEEN within 60 s"'
-- a monitoring role's new session: the secrets are its reset values now
\\! psql -X -U regress_sb_monitor -c "SELECT * FROM pg_settings" -c "SHOW ALL" -c "SHOW stripe_billing.api_key" -c "SELECT current_setting('stripe_billing.webhook_secret')"
-- the names quoted, as SQL allows
SET "stripe_billing"."webhook_secret" = '$quoted';
SET "stripe_billing" . api_key = '$quoted';
SET stripe_billing.webhook_secret = '$wh, $plain';
SET stripe_billing.api_key TO '$key';
-- where every role could read it: refused
ALTER DATABASE postgres SET stripe_billing.api_key = '$key';
ALTER ROLE regress_sb_logcheck SET stripe_billing.webhook_secret = '$plain';
-- failures with secrets in the statement, configured or literal
SELECT stripe_billing.stripe_handle_webhook('{"id": "evt_1"}', 't=1,v1=00');
SELECT stripe_billing.stripe_check_signature('x', 't=1,v1=00', '$wh');
SELECT stripe_billing.stripe_check_signature('x', 't=1,v1=00', '$plain');
SELECT stripe_billing.stripe_check_signature('x', 't=1,v1=00', ARRAY['$wh', '$plain']);
SELECT 1/0 AS "$key";
-- messages built from the secrets themselves
DO \$\$ BEGIN RAISE NOTICE 'secret is %', current_setting('stripe_billing.webhook_secret'); END \$\$;
DO \$\$ BEGIN RAISE EXCEPTION 'key is %', current_setting('stripe_billing.api_key'); END \$\$;
-- a role that may not set them tries
SET ROLE regress_sb_logcheck;
SET stripe_billing.api_key = '$key';
SET stripe_billing.webhook_secret = '$plain';
RESET ROLE;
ALTER SYSTEM RESET stripe_billing.webhook_secret;
ALTER SYSTEM RESET stripe_billing.api_key;
SELECT pg_conf_load_time() AS reload_before \gset
SELECT pg_reload_conf();
\setenv RELOAD_BEFORE :reload_before
\! bash -c '. test/lib/cluster.sh; cluster_reloaded_since "\$RELOAD_BEFORE" || echo "RELOAD NOT SEEN within 60 s"'
DROP ROLE regress_sb_logcheck;
DROP ROLE regress_sb_monitor;
SQL
# (each backend logs a statement before it answers; the postmaster logs a
# reload before new sessions start with it, which the session waited for)
logged=$(tail -c +"$start" "$log")

fail=0
grep -q "RELOAD NOT SEEN" "$client" && { echo "a configuration reload was not seen within 60 s: the checks after it prove nothing"; fail=1; }
for s in "${wh#whsec_}" "${key#sk_test_}" "$plain" "$quoted"; do
    if grep -qF "$s" <<<"$logged"; then
        echo "LEAK in server log: $(grep -F "$s" <<<"$logged" | head -3)"; fail=1
    fi
    if grep -qF "$s" "$client"; then
        echo "LEAK to client: $(grep -F "$s" "$client" | head -3)"; fail=1
    fi
done

# Not vacuous: the statements, errors and notices did reach the log and client.
for expect in "stripe_check_signature" "division by zero" "secret is" "key is" \
              "permission denied to set parameter" "changed to"; do
    if ! grep -qF "$expect" <<<"$logged"; then
        echo "expected a log line with '$expect'; the check would prove nothing"; fail=1
    fi
done
grep -qF "secret is ****" "$client" || { echo "client did not see the masked notice"; fail=1; }
grep -qF "stripe_billing.api_base" "$client" || { echo "the monitoring role's pg_settings was not shown; the check would prove nothing"; fail=1; }
grep -qF "********" "$client" || { echo "the monitoring role did not see the masked SHOW"; fail=1; }
[ "$(grep -c "cannot be set per database, role or function" "$client")" -ge 2 ] ||
    { echo "ALTER DATABASE/ROLE ... SET of a secret was not refused"; fail=1; }
! grep -qE "^ *stripe_billing\.(api_key|webhook_secret) *\|" "$client" ||
    { echo "pg_settings or SHOW ALL listed a secret setting to the monitoring role"; fail=1; }

echo "server log lines examined: $(wc -l <<<"$logged"); client lines: $(wc -l <"$client")"
[ $fail -eq 0 ] && echo "no secret in the server log or client messages"
exit $fail
