#!/usr/bin/env bash
# Objects planted on the search path never run inside the extension.
#
# An application role that owns its database plants, in schema public,
# functions and operators that shadow pg_catalog's (exact signatures, and
# better matches for jsonb_build_object's literals), each one recording its
# call and trying ALTER ROLE ... SUPERUSER, and puts public first on the
# database's search_path.  Then the background worker polls events (as the
# bootstrap superuser, then as a non-superuser stripe_billing.worker_role),
# and a superuser calls the extension's functions in that database.  No
# planted object may run, and the role must stay what it was.  A canary,
# an unqualified call in the same sessions, shows the traps are live.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh
. test/lib/fake_stripe.sh
. test/lib/checks.sh
KEY="sk_test_hijack$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
work_begin hijack
fail=0
pass() { echo "PASS $*"; }
flunk() { echo "FAIL $*"; fail=1; }

fake_start "$work" "$KEY" || exit 1
fake() { curl -s -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "$FAKE_URL$2"; }
generate() {
    fake POST /_fake/events "{\"generate\": {\"count\": $1, \"customers\": 20, \"per_second\": 5, \"seed\": $2,
        \"start_created\": $(($(date +%s) + 86400))}}" >/dev/null
}
generate 1 1    # the worker's first cursor

conf=("shared_preload_libraries = 'stripe_billing'" "stripe_billing.database = 'hijack'"
      "stripe_billing.api_key = '$KEY'" "stripe_billing.api_base = '$FAKE_URL'"
      "stripe_billing.poll_interval = '200ms'" "stripe_billing.meter_events_base = '$FAKE_URL'")
cluster_start "$work/pg" "${conf[@]}" || { echo "FAIL: the cluster did not start"; exit 1; }
# su: a superuser session of the test's own (pg_catalog first: its own
# queries must not trip the traps); victim: one on the database's path
su() { PGOPTIONS='-c search_path=pg_catalog,public' psql -X -q -At -v ON_ERROR_STOP=1 -d hijack "$@"; }
victim() { psql -X -q -At -v ON_ERROR_STOP=1 -d hijack "$@"; }

psql -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<'SQL' || { echo "FAIL: setup"; exit 1; }
CREATE ROLE sb_app_owner LOGIN;
CREATE DATABASE hijack OWNER sb_app_owner;
SQL
# 0b. The worker runs in the owner's database before CREATE EXTENSION (and
# after DROP EXTENSION): the owner plants a schema stripe_billing with a
# _worker_step of their own.  The worker must never call it (0.3.0 found it
# by name within a second and ran it as the bootstrap superuser).
plant_worker_step() {
    psql -X -q -v ON_ERROR_STOP=1 -U sb_app_owner -d hijack >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS public.worker_trap (who text, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON public.worker_trap TO PUBLIC;
CREATE SCHEMA stripe_billing;
CREATE FUNCTION stripe_billing._worker_step(step text, error text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.worker_trap (who) VALUES (current_user);
  BEGIN
    EXECUTE 'ALTER ROLE sb_app_owner SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  RETURN false;
END $$;
SQL
}
# planted_worker_step WHEN: the worker (running in that database) for 3 s
# (poll_interval 200 ms: some 15 cycles) never runs the planted function
planted_worker_step() {
    local who
    for _ in $(seq 50); do
        who=$(PGOPTIONS='-c search_path=pg_catalog' psql -X -At -d hijack -c "SELECT usename FROM pg_stat_activity
                WHERE backend_type = 'stripe_billing sync' AND datname = 'hijack'")
        [ -n "$who" ] && break; sleep 0.2
    done
    [ -n "$who" ] || { flunk "0b $1: no worker runs in the database, the check would prove nothing"; return; }
    sleep 3   # (a check that something does not happen: a window of cycles)
    local ran super
    ran=$(PGOPTIONS='-c search_path=pg_catalog' psql -X -At -d hijack -c "SELECT count(*) FROM public.worker_trap")
    super=$(PGOPTIONS='-c search_path=pg_catalog' psql -X -At -d hijack -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'sb_app_owner'")
    if [ "$ran" = 0 ] && [ "$super" = f ]; then
        pass "0b $1: a stripe_billing._worker_step planted by the database's owner was never called by the worker ($who) in 3 s"
    else
        flunk "0b $1: the worker called the planted _worker_step $ran time(s) (as: $(PGOPTIONS='-c search_path=pg_catalog' psql -X -At -d hijack -c "SELECT string_agg(DISTINCT who, ',') FROM public.worker_trap")); sb_app_owner superuser: $super"
        PGOPTIONS='-c search_path=pg_catalog' psql -X -q -d hijack -c "ALTER ROLE sb_app_owner NOSUPERUSER" >/dev/null
    fi
    psql -X -q -U sb_app_owner -d hijack -c "DROP SCHEMA stripe_billing CASCADE" -c "TRUNCATE public.worker_trap" >/dev/null 2>&1
}
plant_worker_step || { echo "FAIL: planting _worker_step"; exit 1; }
planted_worker_step "before CREATE EXTENSION"

su >/dev/null <<'SQL' || { echo "FAIL: setup"; exit 1; }
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
SQL

# the application role plants its traps (it owns the database, so it owns public)
psql -X -q -v ON_ERROR_STOP=1 -U sb_app_owner -d hijack >/dev/null <<'SQL' || { echo "FAIL: planting"; exit 1; }
CREATE TABLE public.trap_log (who text, what text, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON public.trap_log TO PUBLIC;
CREATE FUNCTION public.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.trap_log (who, what) VALUES (current_user, what);
  BEGIN
    EXECUTE 'ALTER ROLE sb_app_owner SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
END $$;
CREATE FUNCTION public.jsonb_build_object(a text, b integer) RETURNS jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('jsonb_build_object(text, integer)');
     RETURN pg_catalog.jsonb_build_object(a, b); END $$;
CREATE FUNCTION public.jsonb_build_object(a text, b integer, c text, d jsonb) RETURNS jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('jsonb_build_object(text, integer, text, jsonb)');
     RETURN pg_catalog.jsonb_build_object(a, b, c, d); END $$;
CREATE FUNCTION public.jsonb_build_object(a text, b text) RETURNS jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('jsonb_build_object(text, text)');
     RETURN pg_catalog.jsonb_build_object(a, b); END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.array_append(a text[], e text) RETURNS text[] LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('array_append()'); RETURN pg_catalog.array_append(a, e); END $$;
CREATE FUNCTION public.cardinality(a text[]) RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('cardinality()'); RETURN pg_catalog.cardinality(a); END $$;
CREATE FUNCTION public.jsonb_array_length(j jsonb) RETURNS integer LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('jsonb_array_length(jsonb)'); RETURN pg_catalog.jsonb_array_length(j); END $$;
CREATE FUNCTION public.jsonb_array_elements(j jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('jsonb_array_elements(jsonb)');
     RETURN QUERY SELECT * FROM pg_catalog.jsonb_array_elements(j); END $$;
CREATE FUNCTION public.to_timestamp(d double precision) RETURNS timestamptz LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('to_timestamp(double precision)'); RETURN pg_catalog.to_timestamp(d); END $$;
CREATE FUNCTION public.trap_get_text(j jsonb, k text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('->>(jsonb, text)'); RETURN j OPERATOR(pg_catalog.->>) k; END $$;
CREATE OPERATOR public.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = public.trap_get_text);
CREATE FUNCTION public.trap_get(j jsonb, k text) RETURNS jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('->(jsonb, text)'); RETURN j OPERATOR(pg_catalog.->) k; END $$;
CREATE OPERATOR public.-> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = public.trap_get);
CREATE FUNCTION public.trap_texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('=(text, text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_texteq);
-- types: domains named as pg_catalog's types, whose CHECK runs the trap
-- whenever a value is made one of them (an unqualified declaration such as
-- "failures text[]" would resolve to them)
CREATE FUNCTION public.trap_check(what text, v anyelement) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap(what); RETURN true; END $$;
CREATE DOMAIN public.text AS pg_catalog.text CHECK (public.trap_check('domain text', VALUE));
CREATE DOMAIN public.jsonb AS pg_catalog.jsonb CHECK (public.trap_check('domain jsonb', VALUE));
CREATE DOMAIN public.timestamptz AS pg_catalog.timestamptz CHECK (public.trap_check('domain timestamptz', VALUE));
CREATE DOMAIN public.int4 AS pg_catalog.int4 CHECK (public.trap_check('domain int4', VALUE));
-- a type of its own named as pg_catalog's regclass, with a cast from text
-- that runs the trap (an unqualified 'x'::regclass would take it)
CREATE TYPE public.regclass AS (oid oid);
CREATE FUNCTION public.trap_regclass(t pg_catalog.text) RETURNS public.regclass LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('cast text -> regclass'); RETURN ROW(0)::public.regclass; END $$;
CREATE CAST (pg_catalog.text AS public.regclass) WITH FUNCTION public.trap_regclass(pg_catalog.text) AS IMPLICIT;
ALTER DATABASE hijack SET search_path = public, pg_catalog;
SQL
# an operator class whose operators run the trap (CREATE OPERATOR CLASS is a
# superuser's: planted here as an extension of the owner's could have)
su >/dev/null <<'SQL' || { echo "FAIL: planting the operator class"; exit 1; }
CREATE FUNCTION public.trap_text_cmp(a pg_catalog.text, b pg_catalog.text) RETURNS int4 LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('operator class text_trap_ops'); RETURN pg_catalog.bttextcmp(a, b); END $$;
CREATE FUNCTION public.trap_text_lt(a pg_catalog.text, b pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.trap('operator class <'); RETURN a OPERATOR(pg_catalog.<) b; END $$;
CREATE OPERATOR public.< (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = public.trap_text_lt);
CREATE OPERATOR CLASS public.text_trap_ops FOR TYPE pg_catalog.text USING btree AS
  OPERATOR 1 public.<, OPERATOR 2 pg_catalog.<=, OPERATOR 3 pg_catalog.=, OPERATOR 4 pg_catalog.>=,
  OPERATOR 5 pg_catalog.>, FUNCTION 1 public.trap_text_cmp(pg_catalog.text, pg_catalog.text);
SQL

traps() { su -c "SELECT count(*) FROM public.trap_log"; }
canary() {   # (as the planting role itself: its ALTER ROLE fails)
    victim -U sb_app_owner -c "SELECT jsonb_build_object('canary', 1), 'x'::text, '{}'::jsonb, now()::timestamptz,
                                      1::int4, 'x'::pg_catalog.text::regclass, 'a' OPERATOR(public.<) 'b'" >/dev/null &&
        [ "$(su -c "SELECT count(DISTINCT what) FROM public.trap_log WHERE what IN ('jsonb_build_object(text, integer)',
               'domain text', 'domain jsonb', 'domain timestamptz', 'domain int4', 'cast text -> regclass', 'operator class <')")" = 7 ] &&
        su -c "DELETE FROM public.trap_log" >/dev/null
}
superuser_now() { su -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'sb_app_owner'"; }
ledger() { su -c "SELECT count(*) FROM stripe_billing.events"; }
has_ledger() { [ "$(ledger)" -ge "$1" ]; }
wait_ledger() { POLL=0.2 wait_until 120 has_ledger "$1"; }   # COUNT: the ledger holds COUNT events
worker_user() { su -c "SELECT usename FROM pg_stat_activity WHERE backend_type = 'stripe_billing sync'"; }

if canary; then pass "0 canary: an unqualified call in this database runs the planted function"
else flunk "0 canary: the traps are not live, this test would prove nothing"; fi

# 1. the worker, as the bootstrap superuser, polls 200 events (after it
# took the fake's newest event as its first cursor)
has_cursor() { [ -n "$(su -c "SELECT cursor FROM stripe_billing.sync_status")" ]; }
POLL=0.2 wait_until 60 has_cursor || flunk "1 the worker took no first cursor within 60 s"
generate 200 2
if wait_ledger 200; then
    t=$(traps); s=$(superuser_now)
    if [ "$t" = 0 ] && [ "$s" = f ]; then
        pass "1 the worker ($(worker_user)) applied $(ledger) events; no planted object ran, sb_app_owner is not superuser"
    else
        flunk "1 planted objects ran $t time(s) in the worker ($(su -c "SELECT string_agg(DISTINCT who || ':' || what, ', ') FROM public.trap_log")); sb_app_owner superuser: $s"
    fi
else
    flunk "1 the worker did not apply the events ($(ledger) in the ledger; sync_status: $(su -c "SELECT last_error FROM stripe_billing.sync_status"))"
fi

# 1b. the worker's duties: a usage row to send, a failed event to retry, a
# row marked by a tie to re-fetch
su -c "DELETE FROM public.trap_log" >/dev/null
su >/dev/null <<'SQL' || flunk "1b setting up the duties"
SELECT stripe_billing.stripe_link_customer('user_hj', (SELECT id FROM stripe_billing.customers ORDER BY id LIMIT 1));
SELECT stripe_billing.stripe_report_usage('user_hj', 'api_calls', 7);
UPDATE stripe_billing.sync_state SET last_retry_at = NULL;
SELECT stripe_billing.stripe_apply_event('{"id": "evt_hj_fail", "object": "event", "type": "customer.updated",
  "created": 1700000000, "livemode": false, "data": {"object": {"id": "cus_hj_fail", "object": "customer",
  "created": "not a time"}}}');
UPDATE stripe_billing.customers SET refetch = true
 WHERE id = (SELECT id FROM stripe_billing.customers WHERE NOT deleted ORDER BY id LIMIT 1);
SQL
duties_done() {
    [ "$(su -c "SELECT (SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NULL) = 0
                   AND (SELECT count(*) FROM stripe_billing.customers WHERE refetch) = 0
                   AND (SELECT last_retry_at IS NOT NULL FROM stripe_billing.sync_state)")" = t ]
}
if wait_until 30 duties_done; then
    t=$(traps)
    if [ "$t" = 0 ] && [ "$(superuser_now)" = f ]; then
        pass "1b the worker's duties (usage sent, a failed event retried, a marked row re-fetched) ran no planted object"
    else
        flunk "1b planted objects ran $t time(s) in the worker's duties: $(su -c "SELECT string_agg(DISTINCT what, ', ') FROM public.trap_log")"
    fi
else
    flunk "1b the worker did not do its duties in 30 s: $(su -c "SELECT format('%s usage rows unsent, %s rows marked, last retry %s, last error %s',
             (SELECT count(*) FROM stripe_billing.usage_outbox WHERE sent_at IS NULL),
             (SELECT count(*) FROM stripe_billing.customers WHERE refetch),
             (SELECT last_retry_at FROM stripe_billing.sync_state), (SELECT last_error FROM stripe_billing.sync_status))")"
fi

# 2. a superuser session (search_path public first) calls the extension,
# once the worker's own backfill is over (deriving every user's features
# while the worker derives some of them can deadlock: not what this tests)
streaming() { [ "$(su -c "SELECT phase FROM stripe_billing.sync_status")" = streaming ]; }
POLL=0.2 wait_until 120 streaming || flunk "2 the worker's backfill did not end within 120 s"
su -c "DELETE FROM public.trap_log" >/dev/null
out=$(FAKE_URL=$FAKE_URL victim 2>&1 <<'SQL'
CALL stripe_billing.stripe_sync_now();
SELECT stripe_billing.stripe_refresh_entitlements();
SELECT stripe_billing.stripe_link_customer('user_hj', (SELECT id FROM stripe_billing.customers LIMIT 1));
SELECT stripe_billing.stripe_report_usage('user_hj', 'api_calls', 3);
SELECT stripe_billing.stripe_send_usage(10);
SELECT stripe_billing.stripe_has_entitlement('user_hj', 'reports');
SELECT count(*) FROM stripe_billing.stripe_user_features('user_hj');
SELECT stripe_billing.stripe_subscription_status('user_hj');
SELECT stripe_billing._ts('1700000000'), stripe_billing._id('{"id": "x"}'),
       stripe_billing._user_ref('{"user_id": "u"}'),
       stripe_billing._access_ends('past_due', false, NULL, pg_catalog.now()),
       stripe_billing._may_overwrite(pg_catalog.now(), pg_catalog.now(), false, false);
SELECT stripe_billing.stripe_sync_pause();
SELECT stripe_billing.stripe_sync_resume();
SELECT count(*) FROM stripe_billing.stripe_retry_failed_events();
SELECT count(*) FROM stripe_billing.stripe_replay_events(NULL);
SELECT * FROM stripe_billing.sync_status;
CALL stripe_billing.stripe_backfill();
CALL stripe_billing.stripe_backfill(ARRAY['prices']);
CALL stripe_billing.stripe_reconcile();
-- a backfill of which a kind fails (its failures are collected in an array)
SELECT stripe_billing.stripe_sync_pause();
\! curl -s -X POST -H 'Content-Type: application/json' --data '{"rules": [{"kind": "401", "path": "/v1/invoices", "count": 10}]}' "$FAKE_URL/_fake/faults" >/dev/null
\set ON_ERROR_STOP 0
CALL stripe_billing.stripe_backfill(ARRAY['invoices']);
\set ON_ERROR_STOP 1
\! curl -s -X DELETE "$FAKE_URL/_fake/faults" >/dev/null
SELECT stripe_billing.stripe_sync_resume();
SELECT count(*) FROM stripe_billing.backfill_status;
SELECT count(*) FROM stripe_billing.reconcile_status;
SQL
) || flunk "2 a call failed: $(tail -3 <<<"$out")"
[ "$(su -c "SELECT state FROM stripe_billing.backfill_status WHERE kind = 'invoices'")" = failed ] &&
    grep -q 'backfill: 1 kind(s) failed' <<<"$out" ||
    flunk "2 the backfill's invoices did not fail as the fault asked: the failures' array was not exercised"
t=$(traps)
if [ "$t" = 0 ] && [ "$(superuser_now)" = f ]; then
    pass "2 a superuser calling the extension's functions and procedures (a backfill with a failing kind among them, and its inlined SQL helpers) ran no planted object"
else
    flunk "2 planted objects ran $t time(s): $(su -c "SELECT string_agg(DISTINCT what, ', ') FROM public.trap_log")"
fi

# 3. the worker as a role of our choosing, not a superuser
psql -X -q -v ON_ERROR_STOP=1 -d hijack >/dev/null <<'SQL' || flunk "3 creating the worker role"
CREATE ROLE sb_worker LOGIN;
GRANT EXECUTE ON FUNCTION stripe_billing._worker_step(pg_catalog.text, pg_catalog.text) TO sb_worker;
SQL
echo "stripe_billing.worker_role = 'sb_worker'" | as_owner tee -a "$work/pg/data/postgresql.conf" >/dev/null
# (a reload: the worker restarts as the new role)
as_owner "$PG_BINDIR/pg_ctl" -D "$work/pg/data" reload >/dev/null || flunk "3 reload"
# the events come after the restart: applied by the new worker, not the old
POLL=0.2 wait_until 60 eval '[ "$(worker_user)" = sb_worker ]' || flunk "3 no worker ran as sb_worker within 60 s of the reload"
su -c "DELETE FROM public.trap_log" >/dev/null
before=$(ledger)
generate 100 3
if wait_ledger $((before + 100)); then
    who=$(worker_user); t=$(traps)
    if [ "$who" = sb_worker ] && [ "$t" = 0 ] && [ "$(superuser_now)" = f ]; then
        pass "3 stripe_billing.worker_role = sb_worker (not a superuser): the worker ran as $who, applied 100 more events, no planted object ran"
    else
        flunk "3 worker ran as '$who', planted objects ran $t time(s)"
    fi
else
    flunk "3 the worker as sb_worker did not apply the events ($(su -c "SELECT last_error FROM stripe_billing.sync_status"))"
fi
if canary; then pass "4 canary again: the traps were live throughout"; else flunk "4 canary: the traps were not live"; fi
# 0b again, after DROP EXTENSION
su -c "DROP EXTENSION stripe_billing" >/dev/null || flunk "DROP EXTENSION"
plant_worker_step || flunk "planting _worker_step after DROP EXTENSION"
planted_worker_step "after DROP EXTENSION"
exit $fail
