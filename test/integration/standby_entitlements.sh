#!/usr/bin/env bash
# Entitlement checks on a hot standby: a streaming replica of a throwaway
# primary answers stripe_has_entitlement and friends (read-only, nothing
# written, nothing refused), and a revocation committed on the primary
# reaches a standby session's cache through WAL replay, also when the
# session looked the feature up inside a REPEATABLE READ transaction whose
# snapshot predates the revocation (it must not keep serving the old answer).
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/lib/cluster.sh
work_begin standby

cluster_start "$work/primary" "shared_preload_libraries = 'stripe_billing'" "wal_level = replica"
primary=$PGHOST

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
CREATE FUNCTION sub_event(evt text, created bigint, status text, user_ref text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', 'customer.subscription.updated',
           'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_' || user_ref, 'object', 'subscription', 'customer', 'cus_' || user_ref,
              'status', status, 'metadata', jsonb_build_object('user_ref', user_ref),
              'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                 'id', 'si_' || user_ref, 'quantity', 1,
                 'current_period_start', 1700000000, 'current_period_end', 4102444800,
                 'price', jsonb_build_object('id', 'price_pro', 'lookup_key', 'pro', 'product', 'prod_pro')))))))
$$;
SELECT stripe_billing.stripe_apply_event(sub_event('evt_a1', 1700000000, 'active', 'user_a'));
SELECT stripe_billing.stripe_apply_event(sub_event('evt_b1', 1700000000, 'canceled', 'user_b'));
SELECT stripe_billing.stripe_apply_event(sub_event('evt_c1', 1700000000, 'active', 'user_c'));
SQL

# the standby: a base backup streaming from the primary, its own socket
at_exit cluster_stop "$work/standby"
mkdir -p "$work/standby"
chown "$SB_TEST_USER" "$work/standby"
as_owner "$PG_BINDIR/pg_basebackup" -h "$primary" -U postgres -D "$work/standby/data" -R -X stream -c fast
echo "unix_socket_directories = '$work/standby'" | as_owner tee -a "$work/standby/data/postgresql.conf" >/dev/null
as_owner "$PG_BINDIR/pg_ctl" -D "$work/standby/data" -l "$work/standby/server.log" -w start >/dev/null
standby=$work/standby

cluster_catch_up "$primary" "$standby" || { echo "FAIL: the standby did not catch up within 60 s"; exit 1; }

out=$(PRIMARY=$primary STANDBY=$standby psql -X -h "$standby" -d postgres -v ON_ERROR_STOP=1 2>&1 <<'SQL'
SELECT pg_is_in_recovery() AS standby;
SELECT stripe_billing.stripe_has_entitlement('user_a', 'reports') AS a_reports,
       stripe_billing.stripe_has_entitlement('user_b', 'reports') AS b_reports,
       stripe_billing.stripe_has_entitlement('user_a', 'sso') AS a_sso,
       stripe_billing.stripe_subscription_status('user_a') AS a_status;
SELECT feature FROM stripe_billing.stripe_user_features('user_a');
-- the primary cancels user_a; this session's cached answer must follow
\! psql -X -q -At -h "$PRIMARY" -d postgres -c "SELECT stripe_billing.stripe_apply_event(sub_event('evt_a2', 1700000100, 'canceled', 'user_a'))"
\! bash -c '. test/lib/cluster.sh; cluster_catch_up "$PRIMARY" "$STANDBY" || echo "the standby did not catch up within 60 s"'
SELECT stripe_billing.stripe_has_entitlement('user_a', 'reports') AS a_reports_after_cancel,
       stripe_billing.stripe_subscription_status('user_a') AS a_status;
-- user_c is looked up inside a REPEATABLE READ transaction, then canceled
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT stripe_billing.stripe_has_entitlement('user_c', 'reports') AS c_before;
\! psql -X -q -At -h "$PRIMARY" -d postgres -c "SELECT stripe_billing.stripe_apply_event(sub_event('evt_c2', 1700000100, 'canceled', 'user_c'))"
\! bash -c '. test/lib/cluster.sh; cluster_catch_up "$PRIMARY" "$STANDBY" || echo "the standby did not catch up within 60 s"'
SELECT stripe_billing.stripe_has_entitlement('user_c', 'reports') AS c_in_old_snapshot;
COMMIT;
SELECT stripe_billing.stripe_has_entitlement('user_c', 'reports') AS c_after_commit;
SELECT stripe_billing.stripe_has_entitlement('user_c', 'reports') AS c_next_statement;
SQL
) || { echo "$out"; exit 1; }
echo "$out"

fail=0
grep -q "ERROR" <<<"$out" && { echo "the standby refused a check"; fail=1; }
grep -q "did not catch up" <<<"$out" && { echo "the standby did not catch up: the checks after a cancel prove nothing"; fail=1; }
expect() { grep -qE "$1" <<<"$out" || { echo "expected: $2"; fail=1; }; }
expect '^ t$' "the standby is in recovery"
expect '^ t +\| f +\| f +\| active' "user_a has reports on the standby, user_b and sso do not"
expect '^ reports$' "stripe_user_features lists reports"
expect '^ f +\| canceled' "after the primary's cancel, the standby session's check says false"
for col in c_before c_in_old_snapshot c_after_commit c_next_statement; do
    v=$(awk -v c="$col" '$1 == c {getline; getline; print $1; exit}' <<<"$out")
    echo "   $col: $v"
    case $col in c_before) want=t ;; *) want=f ;; esac
    [ "$v" = "$want" ] || { echo "expected $col = $want (a revocation replayed after a REPEATABLE READ look-up)"; fail=1; }
done
[ $fail -eq 0 ] && echo "standby answered every check, and followed the primary's revocation"
exit $fail
