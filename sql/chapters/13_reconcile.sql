-- Reconciliation runs: their progress and summary.
CREATE TABLE stripe_billing.reconcile_runs (
    id          bigserial PRIMARY KEY,
    reason      text NOT NULL,         -- manual, scheduled, cursor expired
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    phase       text NOT NULL DEFAULT 'subscriptions'
                CHECK (phase IN ('subscriptions', 'customers', 'subscription_schedules', 'disputes')),
    list_cursor text,
    checked     bigint NOT NULL DEFAULT 0,   -- objects compared
    drifted     bigint NOT NULL DEFAULT 0,   -- objects that differed
    fixed       bigint NOT NULL DEFAULT 0,   -- objects set to Stripe's state
    requests    bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    last_error  text,
    account     text                   -- the connected account reconciled (NULL: the platform)
);
-- (one run at a time per account)
CREATE UNIQUE INDEX reconcile_runs_running_idx ON stripe_billing.reconcile_runs (account) NULLS NOT DISTINCT
    WHERE state = 'running';
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_runs', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_runs_id_seq', '');

-- Each difference found, field by field.
CREATE TABLE stripe_billing.reconcile_log (
    id           bigserial PRIMARY KEY,
    run          bigint NOT NULL REFERENCES stripe_billing.reconcile_runs ON DELETE CASCADE,
    object_type  text NOT NULL,            -- subscription, customer, subscription_schedule, dispute
    object_id    text NOT NULL,
    field        text NOT NULL,            -- row (missing here), status, items, user_ref, ...
    local_value  text,
    stripe_value text,
    fixed        boolean NOT NULL DEFAULT false,
    found_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_log_run_idx ON stripe_billing.reconcile_log (run, object_type, object_id);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_log', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_log_id_seq', '');

-- The last run, of the platform and of each connected account reconciled.
CREATE VIEW stripe_billing.reconcile_status AS
SELECT DISTINCT ON (account)
       id AS run, reason, state, phase, checked, drifted, fixed, requests, started_at, finished_at, last_error,
       account
  FROM stripe_billing.reconcile_runs
 ORDER BY account NULLS FIRST, id DESC;

-- How a listed subscription differs from the local rows: one row per field
-- (only 'row' when it is missing here).
CREATE FUNCTION stripe_billing._subscription_drift(o jsonb)
RETURNS TABLE (field text, local_value text, stripe_value text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH items AS (SELECT i FROM jsonb_array_elements(o->'items'->'data') i),
  theirs AS (
    SELECT o->>'status' AS status,
           coalesce((o->>'cancel_at_period_end')::boolean, false) AS cancel_at_period_end,
           coalesce(stripe_billing._ts(o->'current_period_start'),
                    (SELECT min(stripe_billing._ts(i->'current_period_start')) FROM items)) AS period_start,
           coalesce(stripe_billing._ts(o->'current_period_end'),
                    (SELECT max(stripe_billing._ts(i->'current_period_end')) FROM items)) AS period_end,
           stripe_billing._id(o->'customer') AS customer,
           (SELECT string_agg(x, ', ' ORDER BY x)
              FROM (SELECT coalesce(i->'price'->>'id', i->'plan'->>'id') || ' x' || coalesce(i->>'quantity', '?')
                      FROM items) t(x)) AS items)
  SELECT 'row', NULL, 'present'
   WHERE NOT EXISTS (SELECT FROM stripe_billing.subscriptions WHERE id = o->>'id')
  UNION ALL
  SELECT f.field, f.local_value, f.stripe_value
    FROM stripe_billing.subscriptions l, theirs s,
         LATERAL (VALUES
           ('status', l.status, s.status),
           ('cancel_at_period_end', l.cancel_at_period_end::text, s.cancel_at_period_end::text),
           ('current_period_start', l.current_period_start::text, s.period_start::text),
           ('current_period_end', l.current_period_end::text, s.period_end::text),
           ('customer', l.customer, s.customer),
           ('items', (SELECT string_agg(x, ', ' ORDER BY x)
                        FROM (SELECT si.price || ' x' || coalesce(si.quantity::text, '?')
                                FROM stripe_billing.subscription_items si
                               WHERE si.subscription = l.id AND NOT si.deleted) t(x)), s.items)
         ) f(field, local_value, stripe_value)
   WHERE l.id = o->>'id' AND f.local_value IS DISTINCT FROM f.stripe_value
$$;

-- How a listed customer differs: missing, deleted here, or linked to
-- another user than its metadata names (a link without metadata, from
-- Checkout or stripe_link_customer, is not a difference).
CREATE FUNCTION stripe_billing._customer_drift(o jsonb)
RETURNS TABLE (field text, local_value text, stripe_value text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 'row', NULL, 'present'
   WHERE NOT EXISTS (SELECT FROM stripe_billing.customers WHERE id = o->>'id')
  UNION ALL
  SELECT f.field, f.local_value, f.stripe_value
    FROM stripe_billing.customers l,
         LATERAL (VALUES
           ('deleted', l.deleted::text, coalesce((o->>'deleted')::boolean, false)::text),
           ('user_ref', l.user_ref, coalesce(stripe_billing._user_ref(o->'metadata'), l.user_ref))
         ) f(field, local_value, stripe_value)
   WHERE l.id = o->>'id' AND f.local_value IS DISTINCT FROM f.stripe_value
$$;

-- The phases of a reconciliation, in order, each the kind of object it
-- lists (every status): (list path, object type).
CREATE FUNCTION stripe_billing._reconcile_phases(OUT phase text, OUT path text, OUT object_type text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  VALUES ('subscriptions', '/v1/subscriptions', 'subscription'),
         ('customers', '/v1/customers', 'customer'),
         ('subscription_schedules', '/v1/subscription_schedules', 'subscription_schedule'),
         ('disputes', '/v1/disputes', 'dispute')
$$;

-- Starts a reconciliation (or returns the one running).
CREATE FUNCTION stripe_billing._reconcile_begin(reason text, for_account text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  run_id bigint;
BEGIN
  PERFORM stripe_billing._check_account('account', for_account);
  INSERT INTO stripe_billing.reconcile_runs (reason, account) VALUES (reason, for_account)
  ON CONFLICT (account) WHERE state = 'running' DO NOTHING
  RETURNING id INTO run_id;
  RETURN coalesce(run_id, (SELECT r.id FROM stripe_billing.reconcile_runs r
                            WHERE r.state = 'running' AND r.account IS NOT DISTINCT FROM for_account));
END
$$;

-- Compares one listed page with the local rows, logs each difference, and
-- applies Stripe's state to the objects that differ.  The list is newer than
-- a row last written before it, so the row is replaced whatever it holds
-- (even a terminal state: Stripe's list says otherwise now); a row written
-- by an event newer than the list keeps it (the difference is logged, not
-- fixed).  Returns (checked, drifted, fixed).
CREATE FUNCTION stripe_billing._reconcile_compare(run_id bigint, object_type text, data jsonb,
                                                  snapshot timestamptz, complete jsonb DEFAULT '{}',
                                                  for_account text DEFAULT NULL,
                                                  OUT checked integer, OUT drifted integer, OUT fixed integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  first_log bigint := (SELECT coalesce(max(id), 0) FROM stripe_billing.reconcile_log);
  ids text[];
  outcomes jsonb;
BEGIN
  checked := jsonb_array_length(data);
  IF object_type = 'subscription' THEN
    INSERT INTO stripe_billing.reconcile_log (run, object_type, object_id, field, local_value, stripe_value)
    SELECT run_id, object_type, o->>'id', d.field, d.local_value, d.stripe_value
      FROM jsonb_array_elements(data) o,
           stripe_billing._subscription_drift(coalesce(complete->(o->>'id'), o)) d;
  ELSIF object_type = 'subscription_schedule' THEN
    INSERT INTO stripe_billing.reconcile_log (run, object_type, object_id, field, local_value, stripe_value)
    SELECT run_id, object_type, o->>'id', d.field, d.local_value, d.stripe_value
      FROM jsonb_array_elements(data) o, stripe_billing._subscription_schedule_drift(o) d;
  ELSIF object_type = 'dispute' THEN
    -- (chapter 33: what an open dispute may revoke)
    INSERT INTO stripe_billing.reconcile_log (run, object_type, object_id, field, local_value, stripe_value)
    SELECT run_id, object_type, o->>'id', d.field, d.local_value, d.stripe_value
      FROM jsonb_array_elements(data) o, stripe_billing._dispute_drift(o) d;
  ELSE
    INSERT INTO stripe_billing.reconcile_log (run, object_type, object_id, field, local_value, stripe_value)
    SELECT run_id, object_type, o->>'id', d.field, d.local_value, d.stripe_value
      FROM jsonb_array_elements(data) o, stripe_billing._customer_drift(o) d;
  END IF;
  SELECT array_agg(DISTINCT object_id) INTO ids FROM stripe_billing.reconcile_log WHERE id > first_log;
  drifted := coalesce(cardinality(ids), 0);
  fixed := 0;
  IF drifted = 0 THEN
    RETURN;
  END IF;

  -- rows written before the list give way to it (their locks first, as
  -- applying them takes: see locks.c)
  PERFORM stripe_billing._lock_objects(
      (SELECT jsonb_agg(coalesce(complete->(o->>'id'), o)) FROM jsonb_array_elements(data) o
        WHERE o->>'id' = ANY (ids)), for_account);
  IF object_type = 'subscription' THEN
    UPDATE stripe_billing.subscriptions SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
    UPDATE stripe_billing.subscription_items SET last_event_created = NULL
     WHERE subscription = ANY (ids) AND last_event_created < snapshot;
  ELSIF object_type = 'subscription_schedule' THEN
    UPDATE stripe_billing.subscription_schedules SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
  ELSIF object_type = 'dispute' THEN
    UPDATE stripe_billing.disputes SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
  ELSE
    UPDATE stripe_billing.customers SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
  END IF;
  outcomes := stripe_billing._apply_snapshots(
      (SELECT jsonb_agg(o) FROM jsonb_array_elements(data) o WHERE o->>'id' = ANY (ids)),
      snapshot, 'reconcile', complete, account => for_account)->'outcomes';

  -- a customer whose metadata names a user and has no link gets it; one
  -- linked to another user keeps that link (an explicit link wins)
  IF object_type = 'customer' THEN
    PERFORM stripe_billing._link_customer(g.object_id, g.stripe_value, true, 'customer.reconcile', for_account)
       FROM stripe_billing.reconcile_log g
      WHERE g.id > first_log AND g.field = 'user_ref' AND g.local_value IS NULL;
  END IF;
  UPDATE stripe_billing.reconcile_log g
     SET fixed = outcomes->>g.object_id = 'applied'
                 AND NOT (g.field = 'user_ref' AND g.local_value IS NOT NULL)
   WHERE g.id > first_log;
  SELECT count(DISTINCT object_id) FILTER (WHERE g.fixed) INTO fixed
    FROM stripe_billing.reconcile_log g WHERE g.id > first_log;
END
$$;

-- One page of the running reconciliation: subscriptions (status=all), then
-- customers, then subscription schedules, then disputes with their
-- charges (an open dispute may revoke its customer's features,
-- dispute_access): _reconcile_phases.  A failure ends the run (failed) and
-- is returned, not raised.  Returns the run (NULL: none running) and a
-- progress line.
CREATE FUNCTION stripe_billing._reconcile_step(for_account text DEFAULT NULL, any_account boolean DEFAULT false,
                                               OUT run bigint, OUT message text, OUT failed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r stripe_billing.reconcile_runs;
  ph record;
  next_phase text;
  l record;
  c record;
  data jsonb;
  complete jsonb;
  n integer := 1;
  more boolean;
BEGIN
  failed := false;
  SELECT * INTO r FROM stripe_billing.reconcile_runs g
   WHERE g.state = 'running' AND (any_account OR g.account IS NOT DISTINCT FROM for_account)
   ORDER BY g.id LIMIT 1
     FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  run := r.id;
  SELECT * INTO ph FROM stripe_billing._reconcile_phases() p WHERE p.phase = r.phase;
  SELECT p.phase INTO next_phase FROM stripe_billing._reconcile_phases() WITH ORDINALITY p
   WHERE p.ordinality > (SELECT q.ordinality FROM stripe_billing._reconcile_phases() WITH ORDINALITY q
                          WHERE q.phase = r.phase)
   ORDER BY p.ordinality LIMIT 1;
  BEGIN
    SELECT * INTO l FROM stripe_billing._list_page(ph.path,
        jsonb_strip_nulls(jsonb_build_object('limit', 100, 'starting_after', r.list_cursor,
                                             'status', CASE WHEN r.phase = 'subscriptions' THEN 'all' END,
                                             -- (a dispute's customer is its charge's)
                                             'expand', CASE WHEN r.phase = 'disputes'
                                                            THEN jsonb_build_array('data.charge') END)),
        account => r.account);
    data := coalesce(l.page->'data', '[]');
    complete := '{}';
    IF r.phase = 'subscriptions' THEN
      SELECT * INTO c FROM stripe_billing._complete_items(data, r.account);
      complete := c.complete;
      n := n + c.requests;
    END IF;
    c := stripe_billing._reconcile_compare(r.id, ph.object_type, data, l.snapshot, complete, r.account);
    more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
    UPDATE stripe_billing.reconcile_runs g
       SET checked = g.checked + c.checked, drifted = g.drifted + c.drifted, fixed = g.fixed + c.fixed,
           requests = g.requests + n,
           list_cursor = CASE WHEN more THEN data->-1->>'id' END,
           phase = CASE WHEN NOT more AND next_phase IS NOT NULL THEN next_phase ELSE g.phase END,
           state = CASE WHEN NOT more AND next_phase IS NULL THEN 'done' ELSE 'running' END,
           finished_at = CASE WHEN NOT more AND next_phase IS NULL THEN now() END
     WHERE g.id = r.id;
    message := format('stripe_billing reconcile%s: %s %s checked, %s differed, %s fixed',
                      ' of ' || r.account, c.checked, r.phase, c.drifted, c.fixed);
  EXCEPTION WHEN OTHERS THEN
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58') THEN
      RAISE;     -- (of the moment: the page is done again)
    END IF;
    UPDATE stripe_billing.reconcile_runs
       SET state = 'failed', last_error = SQLERRM, finished_at = now()
     WHERE id = r.id;
    message := format('stripe_billing reconcile%s: failed: %s', ' of ' || r.account, SQLERRM);
    failed := true;
  END;
END
$$;

-- Compares subscriptions (every status), customers, subscription
-- schedules and disputes at Stripe with the local rows, repairs what differs and logs it
-- in reconcile_log; page by page, each committed.  Not in a transaction
-- block (it commits).
CREATE PROCEDURE stripe_billing.stripe_reconcile(account text DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause, so that it may commit: every type, call and operator
-- below is qualified, and each step runs through _procedure_step, see
-- stripe_sync_now)
AS $$
DECLARE
  step pg_catalog.jsonb;
BEGIN
  PERFORM stripe_billing._procedure_step('reconcile.begin',
                                         pg_catalog.jsonb_build_object('reason', 'manual', 'account', account));
  COMMIT;
  LOOP
    step := stripe_billing._procedure_step('reconcile.step', pg_catalog.jsonb_build_object('account', account));
    EXIT WHEN step OPERATOR(pg_catalog.->>) 'run' IS NULL;
    RAISE NOTICE '%', step OPERATOR(pg_catalog.->>) 'message';
    COMMIT;
    IF (step OPERATOR(pg_catalog.->>) 'failed')::pg_catalog.bool THEN
      RAISE EXCEPTION '%', step OPERATOR(pg_catalog.->>) 'message'
            USING HINT = 'See stripe_billing.reconcile_status; the same CALL starts again.';
    END IF;
  END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_reconcile(text) FROM PUBLIC;

-- Since when an account (NULL: the platform's) has waited for a scheduled
-- reconciliation: its last run, the end of its backfill or its first poll,
-- the latest of them (NULL: never polled).  (_reconcile_due_account reads
-- the same for every account at once.)
CREATE FUNCTION stripe_billing._reconcile_waited_since(for_account text) RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT greatest((SELECT max(r.started_at) FROM stripe_billing.reconcile_runs r
                    WHERE r.account IS NOT DISTINCT FROM for_account),
                  (SELECT max(b.finished_at) FROM stripe_billing.backfill_state b
                    WHERE b.account IS NOT DISTINCT FROM for_account),
                  (SELECT s.lookback_after FROM stripe_billing.sync_state s
                    WHERE s.account IS NOT DISTINCT FROM for_account))
$$;

-- Is the platform's scheduled reconciliation due?  Every reconcile_interval
-- since the last run, the end of a backfill or the first poll, never during
-- a backfill.
CREATE FUNCTION stripe_billing._reconcile_due() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT current_setting('stripe_billing.reconcile_interval')::interval > interval '0'
     AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state WHERE state IN ('pending', 'running') AND account IS NULL)
     AND now() - stripe_billing._reconcile_waited_since(NULL)
         >= current_setting('stripe_billing.reconcile_interval')::interval
$$;

-- The connected account whose scheduled reconciliation is due (Connect),
-- if any: polled, authorized, not being backfilled, and reconciled (or
-- backfilled, or first polled) longer than reconcile_interval ago; the one
-- waiting longest first, so that no account is starved when runs cannot
-- keep up.
CREATE FUNCTION stripe_billing._reconcile_due_account() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.id
    FROM stripe_billing.accounts a
    JOIN stripe_billing.sync_state s ON s.account = a.id,
         LATERAL (SELECT greatest((SELECT max(r.started_at) FROM stripe_billing.reconcile_runs r
                                    WHERE r.account = a.id),
                                  (SELECT max(b.finished_at) FROM stripe_billing.backfill_state b
                                    WHERE b.account = a.id),
                                  s.lookback_after) AS at) last
   WHERE current_setting('stripe_billing.reconcile_interval')::interval > interval '0'
     AND a.deauthorized_at IS NULL AND s.lookback_after IS NOT NULL
     AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state b
                      WHERE b.account = a.id AND b.state IN ('pending', 'running'))
     AND NOT EXISTS (SELECT FROM stripe_billing.reconcile_runs r WHERE r.account = a.id AND r.state = 'running')
     AND now() - last.at >= current_setting('stripe_billing.reconcile_interval')::interval
   ORDER BY last.at, a.id
   LIMIT 1
$$;

