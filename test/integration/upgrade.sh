#!/usr/bin/env bash
# ALTER EXTENSION stripe_billing UPDATE from every released version (0.1.0,
# 0.2.0, 0.3.0, installed from the frozen scripts in test/integration/upgrade):
# a database installed at it, with events applied, users' features, usage
# rows and grants of the app's own, is updated to the default version; then
# its catalog
# (functions with their signatures, defaults, settings, volatility,
# security, language and body; tables, columns, defaults, indexes,
# constraints, triggers, views, grants, comments, the dumped configuration
# tables) equals a fresh install's, the data is intact and works on, and
# the app's grants on recreated functions are carried over, and the grantee
# runs each granted routine.  Before the update, the library (this
# version's) serves the old version's SQL: its C functions, declared with
# fewer arguments, are called as declared.  Runs against
# the suite's cluster (PGHOST), in databases of its own.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
new=$(sed -n "s/^default_version = '\(.*\)'/\1/p" stripe_billing.control)
fail=0
# The released versions' install scripts are not installed (a database
# reaches the current version through the upgrade scripts): the frozen
# copies here are put beside them for the test, and taken away after.
extdir=$("${PG_BINDIR:-/usr/lib/postgresql/15/bin}/pg_config" --sharedir)/extension
frozen=()
for f in test/integration/upgrade/stripe_billing--*.sql; do
    [ -e "$extdir/$(basename "$f")" ] && continue   # (a package may ship it)
    cp "$f" "$extdir/" || { echo "FAIL  cannot put $(basename "$f") in $extdir (run as its owner, or root)"; exit 1; }
    frozen+=("$extdir/$(basename "$f")")
done
cleanup() {
    for db in sb_upgrade sb_fresh; do dropdb --if-exists "$db" 2>/dev/null; done
    psql -X -q -c "DROP ROLE IF EXISTS sb_upgrade_app" 2>/dev/null
    [ ${#frozen[@]} -eq 0 ] || rm -f "${frozen[@]}"
}
trap cleanup EXIT
psql -X -q -c "DROP ROLE IF EXISTS sb_upgrade_app" 2>/dev/null
psql -X -q -c "CREATE ROLE sb_upgrade_app" || exit 1
q() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
# as_app SQL: runs SQL as sb_upgrade_app in sb_upgrade; prints the SQLSTATE
# of its error (and the message, for P0001), or "ok"
as_app() {
    local out
    out=$(PGOPTIONS='-c role=sb_upgrade_app' psql -X -At -q -d sb_upgrade -v VERBOSITY=sqlstate -c "$1" 2>&1 >/dev/null |
          sed -n 's/^ERROR:  //p' | head -1)
    if [ "$out" = P0001 ]; then
        out="P0001 $(PGOPTIONS='-c role=sb_upgrade_app' psql -X -At -q -d sb_upgrade -c "$1" 2>&1 >/dev/null |
                     sed -n 's/^ERROR:  //p' | head -1)"
    fi
    echo "${out:-ok}"
}

# ---- the catalogs ----
catalog() {
    psql -X -At -q -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
SELECT 'function ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' || pg_get_function_result(p.oid)
       || ' kind=' || p.prokind::text || ' ' || p.provolatile::text || p.proparallel::text || ' secdef=' || p.prosecdef
       || ' strict=' || p.proisstrict || ' lang=' || l.lanname || ' config=' || coalesce(p.proconfig::text, '-')
       || ' acl=' || coalesce(p.proacl::text, '-') || ' bin=' || coalesce(p.probin, '-')
       || ' src=' || md5(p.prosrc) || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'stripe_billing'::regnamespace
UNION ALL
SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
       || CASE WHEN c.relkind = 'v' THEN ' view=' || md5(pg_get_viewdef(c.oid)) ELSE '' END
  FROM pg_class c WHERE c.relnamespace = 'stripe_billing'::regnamespace
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)
       || ' ' || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') || ' collation=' || a.attcollation::regcollation
       || ' compression=' || coalesce(nullif(a.attcompression::text, ''), '-')
       || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'stripe_billing'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'stripe_billing'::regnamespace
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace = 'stripe_billing'::regnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'stripe_billing'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'dumped ' || c.relname || ' ' || coalesce(e.extcondition[i], '')
  FROM pg_extension e, generate_subscripts(e.extconfig, 1) i JOIN pg_class c ON true
 WHERE e.extname = 'stripe_billing' AND c.oid = e.extconfig[i]
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
 WHERE e.extname = 'stripe_billing' AND d.deptype = 'e'
ORDER BY 1
SQL
}

# Installs version $1 with data and grants, updates it, checks the data and
# grants, and compares its catalog with a fresh install's.
from() {
    local old=$1 checkout_args=$2
    for db in sb_upgrade sb_fresh; do dropdb --if-exists "$db" 2>/dev/null; createdb "$db" || exit 1; done

    # ---- the old version, in use ----
    psql -X -q -v ON_ERROR_STOP=1 -d sb_upgrade >/dev/null <<SQL || { echo "FAIL  setting up $old"; exit 1; }
CREATE EXTENSION stripe_billing VERSION '$old';
SELECT stripe_billing.stripe_grant_feature('price', 'price_up', 'reports');
\i test/lib/subscription_event.sql
SELECT stripe_billing.stripe_apply_event(pg_temp.subscription_created(u, 'price_up'))
  FROM unnest(ARRAY['user_1', 'user_2', 'user_3']) u;
SELECT stripe_billing.stripe_report_usage('user_1', 'api_calls', g) FROM generate_series(1, 5) g;
GRANT EXECUTE ON FUNCTION stripe_billing.stripe_create_checkout($checkout_args) TO sb_upgrade_app;
GRANT EXECUTE ON FUNCTION stripe_billing.stripe_api(text, text, jsonb, text) TO sb_upgrade_app;
GRANT EXECUTE ON FUNCTION stripe_billing.stripe_report_usage(text, text, bigint, timestamptz) TO sb_upgrade_app;
GRANT EXECUTE ON ROUTINE stripe_billing.stripe_sync_now TO sb_upgrade_app;
GRANT EXECUTE ON PROCEDURE stripe_billing.stripe_backfill(text[]) TO sb_upgrade_app;
GRANT EXECUTE ON PROCEDURE stripe_billing.stripe_reconcile() TO sb_upgrade_app;
SQL
    [ "$(q sb_upgrade "SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing'")" = "$old" ] ||
        { echo "FAIL  the database is not at $old"; exit 1; }
    # the old version's C functions, as it declares them, served by this
    # version's library (no API key: each gets as far as the request; "-":
    # not in that version)
    old_calls=$(psql -X -At -q -v ON_ERROR_STOP=1 -d sb_upgrade <<'SQL'
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
  EXECUTE statement;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $f$;
SELECT string_agg(f || '=' || CASE WHEN to_regproc('stripe_billing.' || f) IS NULL THEN '-' ELSE pg_temp.try(s) END,
                  ' ' ORDER BY n)
  FROM (VALUES (1, 'stripe_api', 'SELECT stripe_billing.stripe_api(''GET'', ''/v1/customers'')'),
               (2, 'stripe_create_checkout', 'SELECT stripe_billing.stripe_create_checkout(''user_1'', ''price_up'',
                     ''https://example.com/s'', ''https://example.com/c'', trial_days => 7)'),
               (3, '_events_page', 'SELECT stripe_billing._events_page(''evt_1'', true)'),
               (4, '_events_page_text', 'SELECT stripe_billing._events_page_text(''evt_1'')'),
               (5, '_list_page', 'SELECT stripe_billing._list_page(''/v1/customers'', ''{}'')'),
               (6, '_list_prefetch', 'SELECT stripe_billing._list_prefetch(''/v1/customers'', ''{}'')'),
               (7, '_meter_stream_send', 'SELECT stripe_billing._meter_stream_send(''{"{}"}'')')) c(n, f, s)
SQL
)
    expected="stripe_api=SBC02 stripe_create_checkout=SBC02 _events_page=SBC02 _events_page_text=SBC02 _list_page=SBC02 _list_prefetch=ok"
    if [ "$old" = 0.1.0 ]; then expected="$expected _meter_stream_send=-"; else expected="$expected _meter_stream_send=SBC02"; fi
    if [ "$old_calls" = "$expected" ]; then
        echo "PASS  at $old, before the update: its C functions, declared with fewer arguments, work with this library ($old_calls)"
    else
        echo "FAIL  at $old, before the update, its C functions: got '$old_calls', expected '$expected'"; fail=1
    fi

    # (a thin event to fetch is refused until the update, as a failure of the
    # moment: its route answers 500 and Stripe delivers it again; 0.3.0's
    # ledger has no outcome "pending", and nothing would fetch it)
    thin=$(psql -X -At -q -d sb_upgrade -v VERBOSITY=sqlstate -c "SELECT stripe_billing.stripe_apply_event(
        '{\"id\": \"evt_test_65up\", \"object\": \"v2.core.event\", \"type\": \"v1.customer.updated\",
          \"livemode\": false, \"created\": \"2026-01-01T00:00:00Z\",
          \"related_object\": {\"id\": \"cus_1\", \"type\": \"customer\", \"url\": \"/v1/customers/cus_1\"}}')" 2>&1)
    if [ "$thin" = "ERROR:  55000" ]; then
        echo "PASS  at $old, before the update: a thin event to fetch is refused (55000), not recorded"
    else
        echo "FAIL  at $old, before the update, a thin event: got '$thin', expected 'ERROR:  55000'"; fail=1
    fi

    before=$(q sb_upgrade "SELECT (SELECT count(*) FROM stripe_billing.events) || ' events, ' ||
        (SELECT count(*) FROM stripe_billing.user_features) || ' features, ' ||
        (SELECT count(*) FROM stripe_billing.usage_outbox) || ' usage rows, ' ||
        (SELECT count(*) FROM stripe_billing.subscriptions) || ' subscriptions'")

    # ---- the update ----
    if out=$(psql -X -q -v ON_ERROR_STOP=1 -d sb_upgrade -c "ALTER EXTENSION stripe_billing UPDATE" 2>&1); then
        echo "PASS  ALTER EXTENSION stripe_billing UPDATE from $old to $(q sb_upgrade "SELECT extversion FROM pg_extension WHERE extname = 'stripe_billing'")"
    else
        echo "FAIL  ALTER EXTENSION stripe_billing UPDATE: $out"; exit 1
    fi
    psql -X -q -v ON_ERROR_STOP=1 -d sb_fresh -c "CREATE EXTENSION stripe_billing" 2>/dev/null || { echo "FAIL  a fresh install"; exit 1; }

    after=$(q sb_upgrade "SELECT (SELECT count(*) FROM stripe_billing.events) || ' events, ' ||
        (SELECT count(*) FROM stripe_billing.user_features) || ' features, ' ||
        (SELECT count(*) FROM stripe_billing.usage_outbox) || ' usage rows, ' ||
        (SELECT count(*) FROM stripe_billing.subscriptions) || ' subscriptions'")
    # (Connect: every existing row is the platform's, account NULL)
    accounted=$(q sb_upgrade "SELECT (SELECT count(*) FROM stripe_billing.events WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.customers WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.subscriptions WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.subscription_items WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.prices WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.feature_grants WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.usage_outbox WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.sync_state WHERE account IS NOT NULL)
        + (SELECT count(*) FROM stripe_billing.accounts)")
    works=$(q sb_upgrade "SELECT stripe_billing.stripe_has_entitlement('user_2', 'reports') || ' ' ||
        (SELECT pending FROM stripe_billing.usage_status) || ' ' ||
        (stripe_billing.stripe_installation_id() ~ '^[0-9a-f]{16}$')")
    if [ "$before" = "$after" ] && [ "$before" = "3 events, 3 features, 5 usage rows, 3 subscriptions" ] && [ "$works" = "true 5 true" ] &&
        [ "$accounted" = 0 ]; then
        echo "PASS  from $old: the data is intact ($after, each the platform's: account NULL) and works on (an entitlement check, usage_status, an installation id)"
    else
        echo "FAIL  from $old: before: $before; after: $after; checks: $works; rows of an account: $accounted"; fail=1
    fi
    granted=$(q sb_upgrade "SELECT has_function_privilege('sb_upgrade_app', 'stripe_billing.stripe_create_checkout($checkout_new)', 'EXECUTE')
        || ' ' || has_function_privilege('sb_upgrade_app', 'stripe_billing.stripe_api(text, text, jsonb, text, text)', 'EXECUTE')
        || ' ' || has_function_privilege('sb_upgrade_app', 'stripe_billing.stripe_report_usage(text, text, bigint, timestamptz, text)', 'EXECUTE')
        || ' ' || has_function_privilege('sb_upgrade_app', 'stripe_billing.stripe_sync_now(integer)', 'EXECUTE')
        || ' ' || has_function_privilege('sb_upgrade_app', 'stripe_billing.stripe_create_portal_session(text, text, text, text)', 'EXECUTE')")
    if [ "$granted" = "true true true true false" ]; then
        echo "PASS  from $old: the app's grants on stripe_create_checkout, stripe_api, stripe_report_usage and stripe_sync_now (recreated: new signatures, a procedure) are carried over, and none is added (stripe_create_portal_session)"
    else
        echo "FAIL  from $old: the app's grants on stripe_create_checkout, stripe_api, stripe_report_usage, stripe_sync_now, stripe_create_portal_session: $granted"; fail=1
    fi
    # the grantee can still run each granted routine (no API key is set
    # here: each gets as far as the request, past every privilege check)
    ran=$(as_app "CALL stripe_billing.stripe_sync_now()"),$(as_app "CALL stripe_billing.stripe_backfill()")
    ran=$ran,$(as_app "CALL stripe_billing.stripe_reconcile()")
    ran=$ran,$(as_app "SELECT stripe_billing.stripe_create_checkout('user_1', 'price_up', 'https://example.com/s', 'https://example.com/c')")
    ran=$ran,$(as_app "SELECT stripe_billing.stripe_create_checkout('user_1', 'price_up', 'https://example.com/s', 'https://example.com/c',
                                                                  application_fee_percent => 10, account => 'acct_1')")
    ran=$ran,$(as_app "SELECT stripe_billing.stripe_create_checkout('user_1', 'price_up', 'https://example.com/s', 'https://example.com/c',
                                                                  coupon => 'SPRING20')")
    ran=$ran,$(as_app "SELECT stripe_billing.stripe_api('GET', '/v1/customers', account => 'acct_1')")
    ran=$ran,$(as_app "SELECT stripe_billing.stripe_report_usage('user_1', 'api_calls', 1, account => 'acct_1')")
    if [ "$ran" = "SBC02,P0001 stripe_billing backfill: 13 kind(s) failed,P0001 stripe_billing reconcile: failed: no Stripe API key is configured,SBC02,SBC02,SBC02,SBC02,ok" ]; then
        echo "PASS  from $old: the grantee runs stripe_sync_now, stripe_backfill, stripe_reconcile, stripe_create_checkout (also on a connected account, and with a coupon) and stripe_api (each stops at the missing API key, past every privilege check), and stripe_report_usage on a connected account"
    else
        echo "FAIL  from $old: the grantee's calls: $ran"; fail=1
    fi
    q sb_upgrade "REVOKE EXECUTE ON FUNCTION stripe_billing.stripe_create_checkout($checkout_new) FROM sb_upgrade_app;
                  REVOKE EXECUTE ON FUNCTION stripe_billing.stripe_api(text, text, jsonb, text, text) FROM sb_upgrade_app;
                  REVOKE EXECUTE ON FUNCTION stripe_billing.stripe_report_usage(text, text, bigint, timestamptz, text)
                      FROM sb_upgrade_app;
                  REVOKE EXECUTE ON PROCEDURE stripe_billing.stripe_sync_now(integer) FROM sb_upgrade_app;
                  REVOKE EXECUTE ON PROCEDURE stripe_billing.stripe_backfill(text[], text) FROM sb_upgrade_app;
                  REVOKE EXECUTE ON PROCEDURE stripe_billing.stripe_reconcile(text) FROM sb_upgrade_app"
    catalog sb_upgrade >"/tmp/sb_catalog_upgrade.$$"
    catalog sb_fresh >"/tmp/sb_catalog_fresh.$$"
    lines=$(wc -l <"/tmp/sb_catalog_fresh.$$")
    if diff -q "/tmp/sb_catalog_upgrade.$$" "/tmp/sb_catalog_fresh.$$" >/dev/null && [ "$lines" -gt 300 ]; then
        echo "PASS  from $old: the updated catalog equals a fresh $new install's ($lines lines: functions, relations, columns, indexes, constraints, triggers, dumped tables, members)"
    else
        echo "FAIL  from $old: the updated catalog differs from a fresh $new install's (< updated, > fresh):"
        diff "/tmp/sb_catalog_upgrade.$$" "/tmp/sb_catalog_fresh.$$" | head -20 | cut -c1-220 | sed 's/^/      /'
        fail=1
    fi
    rm -f "/tmp/sb_catalog_upgrade.$$" "/tmp/sb_catalog_fresh.$$"
}

# stripe_create_checkout's arguments at the new version
checkout_new="text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean, numeric, bigint, text, text, text, text, text"
from 0.1.0 "text, text, text, text, integer, text, integer, boolean, text, jsonb, text"
from 0.2.0 "text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean"
from 0.3.0 "text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean"
exit $fail
