#!/usr/bin/env bash
# The quickstart's SQL runs as pasted: step 3 (CREATE EXTENSION, the
# application's role and its grants, a feature grant), taken from the
# README itself, in a database of the suite's cluster; then the role can
# call what it was granted and the checks, and cannot write billing tables.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
db=sb_quickstart
dropdb --if-exists "$db" 2>/dev/null
createdb "$db" || exit 1
trap 'dropdb --if-exists "$db" 2>/dev/null; psql -X -q -c "DROP ROLE IF EXISTS app_backend" 2>/dev/null' EXIT
fail=0
# the ```sql blocks of the quickstart section, in order
blocks=$(sed -n '/^## Quickstart for an application/,/^## Two commands/p' README.md |
    awk '/^```sql$/ { n++; inblock = 1; next } /^```$/ { inblock = 0 } inblock { print n "\t" $0 }')
step3=$(awk -F '\t' '$1 == 2 { print $2 }' <<<"$blocks")
grep -q 'CREATE EXTENSION stripe_billing' <<<"$step3" || { echo "FAIL  the quickstart's step 3 block was not found"; exit 1; }
psql -X -q -c "DROP ROLE IF EXISTS app_backend" 2>/dev/null
if out=$(psql -X -q -v ON_ERROR_STOP=1 -d "$db" 2>&1 <<<"$step3"); then
    echo "PASS  step 3 runs as pasted (CREATE EXTENSION, the role, its grants, a feature grant)"
else
    echo "FAIL  step 3: $out"; fail=1
fi
rights=$(psql -X -At -d "$db" -c "SELECT string_agg(f || ':' || has_function_privilege('app_backend', f, 'EXECUTE'), ' ' ORDER BY f)
    FROM unnest(ARRAY['stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean, numeric, bigint, text, text, text, text, text)',
                      'stripe_billing.stripe_create_portal_session(text, text, text, text)',
                      'stripe_billing.stripe_report_usage(text, text, bigint, timestamptz, text)',
                      'stripe_billing.stripe_handle_webhook(bytea, text)',
                      'stripe_billing.stripe_has_entitlement(text, text)',
                      'stripe_billing.stripe_send_usage(integer)']) f" 2>&1)
if [[ "$rights" == *"stripe_create_checkout"*":true"*"stripe_create_portal_session(text, text, text, text):true"*"stripe_handle_webhook(bytea, text):true"*"stripe_has_entitlement(text, text):true"*"stripe_report_usage(text, text, bigint, timestamptz, text):true"*"stripe_send_usage(integer):false"* ]]; then
    echo "PASS  app_backend may create sessions, report usage, handle webhooks and check access, and not send usage itself"
else
    echo "FAIL  app_backend's rights: $rights"; fail=1
fi
step6=$(awk -F '\t' '$1 == 4 { print $2 }' <<<"$blocks" | head -1)
got=$(psql -X -q -At -d "$db" -c "SET ROLE app_backend" -c "$step6" 2>&1)
[ "$got" = f ] && echo "PASS  step 6's check runs as app_backend ($step6 -> $got)" ||
    { echo "FAIL  step 6's check as app_backend: $got"; fail=1; }
refused=$(psql -X -q -At -d "$db" -c "SET ROLE app_backend" -c "INSERT INTO stripe_billing.user_features VALUES ('42', 'reports', NULL)" 2>&1)
[[ "$refused" == *"permission denied"* ]] && echo "PASS  app_backend cannot write user_features" ||
    { echo "FAIL  app_backend wrote user_features: $refused"; fail=1; }
exit $fail
