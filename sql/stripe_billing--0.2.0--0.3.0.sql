-- stripe_billing 0.2.0 -> 0.3.0.  Every function ends as a fresh 0.3.0
-- install makes it (test/upgrade.sh compares the catalogs); the data stays.
\echo Use "ALTER EXTENSION stripe_billing UPDATE TO '0.3.0'" to load this file. \quit

-- EXECUTE granted on stripe_sync_now, a function until now and a procedure
-- from now on, is carried over at the end.
SELECT pg_catalog.set_config('stripe_billing_upgrade.stripe_sync_now', coalesce(p.proacl::text, ''), false)
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'stripe_billing'::regnamespace AND p.proname = 'stripe_sync_now';

-- Each item's JSON is in its subscription's raw (items.data): the copy in
-- subscription_items goes, and the mapping no longer writes it.
ALTER TABLE stripe_billing.subscription_items DROP COLUMN raw;
CREATE OR REPLACE FUNCTION stripe_billing._apply_subscription(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  sid text := o->>'id';
  items jsonb := o->'items'->'data';
  complete_list boolean := NOT coalesce((o->'items'->>'has_more')::boolean, false);
  period_start timestamptz := stripe_billing._ts(o->'current_period_start');
  period_end timestamptz := stripe_billing._ts(o->'current_period_end');
  customer_id text := stripe_billing._id(o->'customer');
BEGIN
  IF period_start IS NULL OR period_end IS NULL THEN
    SELECT coalesce(period_start, min(stripe_billing._ts(i->'current_period_start'))),
           coalesce(period_end, max(stripe_billing._ts(i->'current_period_end')))
      INTO period_start, period_end
      FROM jsonb_array_elements(items) i;
  END IF;

  INSERT INTO stripe_billing.subscriptions AS t
         (id, customer, status, cancel_at_period_end, cancel_at, canceled_at, ended_at,
          current_period_start, current_period_end, trial_start, trial_end, pause_collection,
          latest_invoice, metadata, created, raw, last_event_id, last_event_created, refetch)
  VALUES (sid, customer_id, o->>'status', coalesce((o->>'cancel_at_period_end')::boolean, false),
          stripe_billing._ts(o->'cancel_at'), stripe_billing._ts(o->'canceled_at'), stripe_billing._ts(o->'ended_at'),
          period_start, period_end, stripe_billing._ts(o->'trial_start'), stripe_billing._ts(o->'trial_end'),
          CASE WHEN jsonb_typeof(o->'pause_collection') = 'object' THEN o->'pause_collection' END,
          stripe_billing._id(o->'latest_invoice'), coalesce(o->'metadata', '{}'),
          stripe_billing._ts(o->'created'), o, ev_id, ev_created, NOT complete_list)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, status = EXCLUDED.status,
         cancel_at_period_end = EXCLUDED.cancel_at_period_end, cancel_at = EXCLUDED.cancel_at,
         canceled_at = EXCLUDED.canceled_at, ended_at = EXCLUDED.ended_at,
         current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
         trial_start = EXCLUDED.trial_start, trial_end = EXCLUDED.trial_end,
         pause_collection = EXCLUDED.pause_collection, latest_invoice = EXCLUDED.latest_invoice,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = EXCLUDED.refetch OR coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status IN ('canceled', 'incomplete_expired'),
                                      EXCLUDED.status IN ('canceled', 'incomplete_expired'));
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;

  -- the items follow the subscription snapshot that was just written
  INSERT INTO stripe_billing.subscription_items AS t
         (id, subscription, price, product, price_lookup_key, quantity,
          current_period_start, current_period_end, deleted, last_event_id, last_event_created)
  SELECT i->>'id', sid,
         coalesce(i->'price'->>'id', i->'plan'->>'id'),
         coalesce(stripe_billing._id(i->'price'->'product'), stripe_billing._id(i->'plan'->'product')),
         i->'price'->>'lookup_key', (i->>'quantity')::bigint,
         coalesce(stripe_billing._ts(i->'current_period_start'), period_start),
         coalesce(stripe_billing._ts(i->'current_period_end'), period_end),
         false, ev_id, ev_created
    FROM jsonb_array_elements(items) i
  ON CONFLICT (id) DO UPDATE SET
         subscription = EXCLUDED.subscription, price = EXCLUDED.price, product = EXCLUDED.product,
         price_lookup_key = EXCLUDED.price_lookup_key, quantity = EXCLUDED.quantity,
         current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
         deleted = false,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);

  -- items no longer listed were removed (unless the list was cut short)
  IF complete_list THEN
    UPDATE stripe_billing.subscription_items
       SET deleted = true, last_event_id = ev_id, last_event_created = ev_created, updated_at = now()
     WHERE subscription = sid AND NOT deleted
       AND id NOT IN (SELECT i->>'id' FROM jsonb_array_elements(items) i);
  END IF;

  IF stripe_billing._user_ref(o->'metadata') IS NOT NULL THEN
    PERFORM stripe_billing._link_customer(customer_id, stripe_billing._user_ref(o->'metadata'), true, ev_type);
  END IF;
  PERFORM stripe_billing._refresh_customer_features(customer_id, ev_type);
  RETURN 'applied';
END
$$;

-- Records and applies many events in array order, each as stripe_apply_event
-- does, in one subtransaction plus one per failing event (a subtransaction
-- per event would overflow PostgreSQL's cache past 64).  Not for PUBLIC.
CREATE FUNCTION stripe_billing.stripe_apply_events(events jsonb[], source text DEFAULT 'manual')
RETURNS TABLE (event_id text, outcome text)
AS 'MODULE_PATHNAME', 'stripe_apply_events'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_apply_events(jsonb[], text) FROM PUBLIC;

-- Applies a page of polled events (newest first) oldest first, in one
-- subtransaction plus one per failing event; a malformed event (SBE01: no
-- usable id) is skipped with a WARNING.  Returns how many were kept.
CREATE FUNCTION stripe_billing._apply_page(page jsonb, source text) RETURNS integer
AS 'MODULE_PATHNAME', 'stripe_apply_page'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;
-- (internal, as every function whose name starts with _)
REVOKE ALL ON FUNCTION stripe_billing._apply_page(jsonb, text) FROM PUBLIC;

-- A worker's page: one subtransaction, not one per event.
CREATE OR REPLACE FUNCTION stripe_billing._poll_page(prefetch_next boolean DEFAULT false,
                                          OUT events integer, OUT has_more boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  st stripe_billing.sync_state;
  page jsonb;
  first_page jsonb;
  oldest jsonb;
  error_detail text;
BEGIN
  SELECT * INTO st FROM stripe_billing.sync_state FOR UPDATE;
  UPDATE stripe_billing.sync_state SET last_poll_at = now();
  events := 0;
  has_more := false;

  IF st.event_cursor IS NULL THEN
    -- first start: from now (the newest event is the cursor, not applied),
    -- or from a point in time (the oldest event since then is applied first)
    IF st.start_from = 'now' THEN
      first_page := stripe_billing.stripe_api('GET', '/v1/events', '{"limit": 1}');
      -- no event at all yet: start from this moment instead
      UPDATE stripe_billing.sync_state
         SET event_cursor = first_page->'data'->0->>'id',
             start_from = CASE WHEN first_page->'data'->0 IS NULL THEN now()::text ELSE 'now' END,
             lookback_after = coalesce(stripe_billing._ts(first_page->'data'->0->'created'), now()),
             last_success_at = now(), consecutive_failures = 0;
      RETURN;
    END IF;
    first_page := stripe_billing.stripe_api('GET', '/v1/events',
        jsonb_build_object('limit', 100, 'created', jsonb_build_object('gte',
            floor(extract(epoch FROM st.start_from::timestamptz))::bigint)));
    oldest := first_page->'data'->(jsonb_array_length(first_page->'data') - 1);
    WHILE coalesce((first_page->>'has_more')::boolean, false) LOOP
      first_page := stripe_billing.stripe_api('GET', '/v1/events',
          jsonb_build_object('limit', 100, 'starting_after', oldest->>'id', 'created',
              jsonb_build_object('gte', floor(extract(epoch FROM st.start_from::timestamptz))::bigint)));
      oldest := coalesce(first_page->'data'->(jsonb_array_length(first_page->'data') - 1), oldest);
    END LOOP;
    IF oldest IS NULL THEN
      -- nothing since then yet: look again next time
      UPDATE stripe_billing.sync_state SET last_success_at = now(), consecutive_failures = 0;
      RETURN;
    END IF;
    PERFORM stripe_billing.stripe_apply_event(oldest, 'poll');
    UPDATE stripe_billing.sync_state SET event_cursor = oldest->>'id', events_applied = events_applied + 1,
           lookback_after = st.start_from::timestamptz - interval '1 second',
           last_event_created = stripe_billing._ts(oldest->'created'),
           last_success_at = now(), consecutive_failures = 0;
    events := 1;
    has_more := true;
    RETURN;
  END IF;

  -- Stripe keeps events 30 days: a cursor older than that, or one Stripe no
  -- longer knows, cannot go on.  Restart from the newest event and
  -- reconcile what the gap may have missed, rather than stall or jump
  -- silently.
  IF st.last_event_created < now() - interval '30 days' THEN
    PERFORM stripe_billing._restart_cursor(format('the cursor %s is older than Stripe''s 30 days of events',
                                                  st.event_cursor));
    RETURN;
  END IF;
  BEGIN
    page := stripe_billing._events_page(st.event_cursor, prefetch_next);
  EXCEPTION
  WHEN SQLSTATE 'SBA01' THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
    IF error_detail NOT LIKE '%code resource_missing, param ending_before%' THEN
      RAISE;
    END IF;
    PERFORM stripe_billing._restart_cursor(format('Stripe no longer lists the cursor %s', st.event_cursor));
    RETURN;
  WHEN SQLSTATE 'SBA07' THEN
    -- a body over max_response_size is as large when asked again: raised
    GET STACKED DIAGNOSTICS error_detail = MESSAGE_TEXT;
    IF error_detail LIKE '%exceeds stripe_billing.max_response_size%' THEN
      RAISE;
    END IF;
    -- not jsonb: a transfer spoiled on the way (asked again, below), or a
    -- page holding an event jsonb refuses, which would stall polling for
    -- ever: that one is kept as failed and the page goes on
    page := stripe_billing._poll_unparsed_page(st.event_cursor);
    IF page IS NULL THEN
      RETURN;     -- (applied, cursor moved)
    END IF;
  END;
  has_more := coalesce((page->>'has_more')::boolean, false);
  page := page->'data';    -- (taken out once: a page is some 500 KB)
  events := jsonb_array_length(page);
  -- an empty page that says more wait would be asked for again at once,
  -- many times a second: wait for the next poll instead
  IF events = 0 THEN
    has_more := false;
  END IF;
  -- (newest first: applied oldest first, a malformed event skipped)
  PERFORM stripe_billing._apply_page(page, 'poll');
  UPDATE stripe_billing.sync_state
     SET event_cursor = coalesce(page->0->>'id', event_cursor),
         events_applied = events_applied + events,
         last_event_created = coalesce(stripe_billing._ts(page->0->'created'), last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL;
END
$$;

DROP FUNCTION stripe_billing.stripe_sync_now();
-- Runs a poll cycle now in this session, a transaction per page (a long
-- catch-up stays linear and holds no page's locks longer than its own);
-- events: the number of events received.  CALL it outside a transaction
-- block.
CREATE PROCEDURE stripe_billing.stripe_sync_now(INOUT events integer DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause and no SECURITY DEFINER: a procedure with either may not
-- commit; every call below is qualified, and the steps pin their own
-- search_path)
AS $$
DECLARE
  p record;
BEGIN
  events := 0;
  LOOP
    p := stripe_billing._poll_page();
    events := events OPERATOR(pg_catalog.+) p.events;
    COMMIT;
    EXIT WHEN NOT p.has_more;
  END LOOP;
  events := events OPERATOR(pg_catalog.+) stripe_billing._poll_lookback();
  PERFORM stripe_billing._sync_duties();
  COMMIT;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_sync_now(integer) FROM PUBLIC;

DO $$
DECLARE
  grantee name;
BEGIN
  FOR grantee IN
      SELECT r.rolname
        FROM pg_catalog.aclexplode(NULLIF(pg_catalog.current_setting('stripe_billing_upgrade.stripe_sync_now', true),
                                          '')::pg_catalog.aclitem[]) a
        JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
       WHERE a.privilege_type = 'EXECUTE'
         AND a.grantee <> (SELECT p.proowner FROM pg_catalog.pg_proc p
                            WHERE p.oid = 'stripe_billing.stripe_sync_now(integer)'::pg_catalog.regprocedure)
  LOOP
    EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE stripe_billing.stripe_sync_now(integer) TO %I', grantee);
  END LOOP;
END
$$;
