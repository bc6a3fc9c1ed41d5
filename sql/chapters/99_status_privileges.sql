-- The worker's state at a glance, a row for the platform's events (first)
-- and one for each connected account polled; phase: starting, backfill
-- (objects are being listed; events are pulled meanwhile), reconciling,
-- streaming or paused (the whole worker).
CREATE VIEW stripe_billing.sync_status AS
SELECT CASE WHEN (SELECT p.paused FROM stripe_billing.sync_state p WHERE p.account IS NULL) THEN 'paused'
            WHEN s.event_cursor IS NULL AND s.lookback_after IS NULL THEN 'starting'
            WHEN EXISTS (SELECT FROM stripe_billing.backfill_state b
                          WHERE b.state IN ('pending', 'running') AND b.account IS NOT DISTINCT FROM s.account)
              THEN 'backfill'
            WHEN EXISTS (SELECT FROM stripe_billing.reconcile_runs r
                          WHERE r.state = 'running' AND r.account IS NOT DISTINCT FROM s.account) THEN 'reconciling'
            ELSE 'streaming' END AS phase,
       s.event_cursor AS cursor, s.start_from, s.paused, s.last_poll_at, s.last_success_at,
       now() - s.last_event_created AS lag, s.events_applied, s.last_error, s.last_error_at,
       s.consecutive_failures, s.cursor_reset_at, s.cursor_reset_reason,
       (SELECT count(*) FROM stripe_billing.usage_outbox u WHERE u.sent_at IS NULL AND u.failed_at IS NULL) AS outbox_backlog,
       (SELECT count(*) FROM stripe_billing.events e WHERE e.outcome = 'failed') AS failed_events,
       (SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'stripe_billing sync'
         AND datname = current_database() LIMIT 1) AS worker_pid,
       s.account, s.next_poll_at,
       (SELECT count(*) FROM stripe_billing.events e
         WHERE e.outcome = 'pending' AND e.account IS NOT DISTINCT FROM s.account) AS thin_pending,
       now() - (SELECT min(e.received_at) FROM stripe_billing.events e
                 WHERE e.outcome = 'pending' AND e.account IS NOT DISTINCT FROM s.account) AS thin_oldest_pending_age
  FROM stripe_billing.sync_state s
 ORDER BY s.account NULLS FIRST;

-- Internal functions are for the extension's own calls only.
DO $$
DECLARE f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = 'stripe_billing'::regnamespace AND p.proname LIKE '\_%'
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
  END LOOP;
END
$$;
-- ... but one: the gate of the committing procedures' steps, which checks
-- its caller's right to EXECUTE the procedure itself (see _procedure_step).
GRANT EXECUTE ON FUNCTION stripe_billing._procedure_step(text, jsonb) TO PUBLIC;

-- Whether shared_preload_libraries loaded the library: the background
-- worker runs only then.
CREATE FUNCTION stripe_billing._preloaded() RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_preloaded'
LANGUAGE C STRICT STABLE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._preloaded() FROM PUBLIC;

-- Installed on a server that did not preload the library: say what that
-- leaves out.
DO $$
BEGIN
  IF NOT stripe_billing._preloaded() THEN
    RAISE WARNING 'stripe_billing is not in shared_preload_libraries: its background worker will not run'
      USING DETAIL = 'Webhooks and the SQL calls work, but Stripe''s events are not polled (an event whose '
                     'webhook is lost is never applied), usage is sent only when you call stripe_send_usage(), '
                     'no backfill or reconciliation runs by itself, and a secret set per database or role is '
                     'refused only in sessions that have loaded the library.',
            HINT = 'Add stripe_billing to shared_preload_libraries in postgresql.conf and restart PostgreSQL.';
  END IF;
END
$$;
