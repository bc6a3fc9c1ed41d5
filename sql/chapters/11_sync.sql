
--------------------------------------------------------------------------
-- Sync: pulling /v1/events (the background worker, or stripe_sync_now)
--------------------------------------------------------------------------

-- The worker's state: a row for the platform's own events (account NULL;
-- its pause, retries and first start are the whole worker's), and one for
-- each connected account polled (Connect).
CREATE TABLE stripe_billing.sync_state (
    event_cursor         text,            -- newest event id applied by polling
    start_from           text NOT NULL DEFAULT 'now',  -- 'now', or a timestamptz within 30 days
    paused               boolean NOT NULL DEFAULT false,
    last_poll_at         timestamptz,
    last_success_at      timestamptz,
    last_error           text,
    last_error_at        timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    events_applied       bigint NOT NULL DEFAULT 0,
    last_event_created   timestamptz,
    last_retry_at        timestamptz,
    lookback_after       timestamptz,     -- where polling started: the lookback never reaches before it
    cursor_reset_at      timestamptz,     -- when an expired cursor was restarted from the newest event
    cursor_reset_reason  text,
    account              text,            -- NULL: the platform's; a connected account's id
    next_poll_at         timestamptz,     -- a connected account's next poll (see _poll_next_account)
    CONSTRAINT sync_state_account_key UNIQUE NULLS NOT DISTINCT (account)
);
INSERT INTO stripe_billing.sync_state DEFAULT VALUES;
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.sync_state', '');

-- pg_dump keeps the rows (cursors, pause, counters), and a restore inserts
-- them into a table where CREATE EXTENSION already put the platform's: a
-- restored row then replaces it instead of failing on the unique key (so a
-- restore succeeds in one transaction).
CREATE FUNCTION stripe_billing._sync_state_restore() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  DELETE FROM stripe_billing.sync_state s WHERE s.account IS NOT DISTINCT FROM NEW.account;
  RETURN NEW;
END
$$;
CREATE TRIGGER sync_state_restore BEFORE INSERT ON stripe_billing.sync_state
    FOR EACH ROW EXECUTE FUNCTION stripe_billing._sync_state_restore();

-- Applies one page of events newer than the cursor, oldest first, and moves
-- the cursor, all in the caller's transaction (so a crash loses or repeats
-- nothing).  Returns the number of events in the page and whether Stripe
-- has more.
-- The page of events just newer than the cursor, of the account (NULL:
-- the platform's); with prefetch_next, the next page's request starts in
-- the background (see api.c).
CREATE FUNCTION stripe_billing._events_page(event_cursor text, prefetch_next boolean,
                                            account text DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_events_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Applies a page of polled events (newest first) oldest first, in one
-- subtransaction plus one per failing event; a malformed event (SBE01: no
-- usable id) is skipped with a WARNING.  Returns how many were kept.
CREATE FUNCTION stripe_billing._apply_page(page jsonb, source text) RETURNS integer
AS 'MODULE_PATHNAME', 'stripe_apply_page'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- An expired cursor: the newest event becomes the cursor (not applied), the
-- lookback starts there, and a reconciliation repairs what the gap missed;
-- sync_status says when and why.
CREATE FUNCTION stripe_billing._restart_cursor(reason text, for_account text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  newest jsonb := stripe_billing.stripe_api('GET', '/v1/events', '{"limit": 1}',
                                            account => for_account)->'data'->0;
BEGIN
  RAISE WARNING 'stripe_billing: %; polling restarts from the newest event, %, and a reconciliation starts',
        reason, coalesce(newest->>'id', '(none yet)')
        USING DETAIL = coalesce('Account ' || for_account || '.', 'The platform''s events.');
  UPDATE stripe_billing.sync_state s
     SET event_cursor = newest->>'id',
         start_from = CASE WHEN newest IS NULL THEN now()::text ELSE 'now' END,
         last_event_created = stripe_billing._ts(newest->'created'),
         lookback_after = coalesce(stripe_billing._ts(newest->'created'), now()),
         cursor_reset_at = now(), cursor_reset_reason = reason,
         last_success_at = now(), consecutive_failures = 0
   WHERE s.account IS NOT DISTINCT FROM for_account;
  PERFORM stripe_billing._reconcile_begin('cursor expired', for_account);
END
$$;

-- A page of events jsonb refused as a whole: asked for again as text and
-- split without decoding its strings (_split_list_page).  Returns the page
-- as jsonb when it parses now (the first answer was spoiled on the way);
-- otherwise applies its events oldest first, each one jsonb refuses (a
-- \u0000 in a string, a number beyond jsonb's range) recorded as failed
-- with its text and the reason, moves the cursor and returns NULL.  A body
-- that is not a JSON list raises (SBA07: polled again later).
CREATE FUNCTION stripe_billing._poll_unparsed_page(event_cursor text, for_account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  body text := stripe_billing._events_page_text(event_cursor, for_account);
  list record;
  newest text;
BEGIN
  BEGIN
    RETURN body::jsonb;
  EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    NULL;
  END;
  list := stripe_billing._unparsed_list(body);
  PERFORM stripe_billing._apply_page(stripe_billing._with_account(stripe_billing._parsed_events(list.data),
                                                                  for_account), 'poll');
  newest := stripe_billing._oldest_with_id(list.data, newest => true)->0->>'id';
  RAISE WARNING 'stripe_billing: % polled event(s) jsonb refuses kept as failed', list.kept
        USING DETAIL = format('In the page after %s.', event_cursor);
  UPDATE stripe_billing.sync_state s
     SET event_cursor = coalesce(newest, s.event_cursor),
         events_applied = s.events_applied + jsonb_array_length(list.data),
         last_event_created = coalesce((SELECT l.created FROM stripe_billing.events l WHERE l.id = newest),
                                       s.last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL
   WHERE s.account IS NOT DISTINCT FROM for_account;
  RETURN NULL;
END
$$;

-- The events of a list page jsonb refuses as a whole, from its text
-- (_split_list_page), newest first, as listed: each one jsonb takes as it
-- is; each one it refuses (a \u0000 in a string, a number beyond its range)
-- recorded as failed with its text and the reason, and standing in the
-- list as {"id": ..., "object": "unparsed_event"} (with no id when it had
-- no usable header: skipped with a WARNING).  kept: how many were recorded.
-- A body that is not a JSON list raises (SBA07).
CREATE FUNCTION stripe_billing._unparsed_list(body text, OUT has_more boolean, OUT data jsonb,
                                              OUT kept integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  split record := stripe_billing._split_list_page(body);
  e jsonb;
BEGIN
  has_more := split.has_more;
  data := '[]';
  kept := 0;
  -- (oldest first, so that those recorded are recorded in the list's order)
  FOR i IN REVERSE cardinality(split.items) .. 1 LOOP
    BEGIN
      e := split.items[i]::jsonb;
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
      BEGIN
        e := jsonb_build_object('id', stripe_billing._record_unparsed_event(
                                        split.items[i], 'the event is not valid jsonb: ' || SQLERRM, 'poll'),
                                'object', 'unparsed_event');
        kept := kept + 1;
      EXCEPTION WHEN SQLSTATE 'SBE01' THEN
        RAISE WARNING 'stripe_billing: a polled event was skipped: %', SQLERRM;
        e := '{"object": "unparsed_event"}';
      END;
    END;
    data := jsonb_build_array(e) || data;
  END LOOP;
END
$$;

-- A list's events but those _unparsed_list recorded or skipped.
CREATE FUNCTION stripe_billing._parsed_events(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(e ORDER BY n), '[]')
    FROM jsonb_array_elements(data) WITH ORDINALITY x(e, n)
   WHERE e->>'object' IS DISTINCT FROM 'unparsed_event'
$$;

-- GET /v1/events with these parameters, of the account (NULL: the
-- platform's), as text (see api.c).
CREATE FUNCTION stripe_billing._events_text(params jsonb, account text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_text'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Splits a list page's text into its elements' texts (see events.c).
CREATE FUNCTION stripe_billing._split_list_page(body text, OUT has_more boolean, OUT items text[])
AS 'MODULE_PATHNAME', 'stripe_split_list_page'
LANGUAGE C STRICT IMMUTABLE
SET search_path = pg_catalog, pg_temp;

-- Records a polled event jsonb refuses as failed (see events.c).
CREATE FUNCTION stripe_billing._record_unparsed_event(body text, reason text, source text) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_record_unparsed_event'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- The page of events just newer than the cursor, of the account (NULL: the
-- platform's), as text.
CREATE FUNCTION stripe_billing._events_page_text(event_cursor text, account text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_page_text'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stripe_billing._poll_page(prefetch_next boolean DEFAULT false, for_account text DEFAULT NULL,
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
  SELECT * INTO st FROM stripe_billing.sync_state s WHERE s.account IS NOT DISTINCT FROM for_account FOR UPDATE;
  IF NOT FOUND THEN
    -- (a connected account's first poll: its row, from now)
    INSERT INTO stripe_billing.sync_state (account, start_from)
    VALUES (for_account, stripe_billing._account_start_from(for_account)) ON CONFLICT (account) DO NOTHING;
    SELECT * INTO st FROM stripe_billing.sync_state s WHERE s.account IS NOT DISTINCT FROM for_account FOR UPDATE;
  END IF;
  UPDATE stripe_billing.sync_state s SET last_poll_at = now() WHERE s.account IS NOT DISTINCT FROM for_account;
  events := 0;
  has_more := false;

  IF st.event_cursor IS NULL THEN
    -- first start: from now (the newest event is the cursor, not applied),
    -- or from a point in time (the oldest event since then is applied first)
    IF st.start_from = 'now' THEN
      first_page := stripe_billing.stripe_api('GET', '/v1/events', '{"limit": 1}', account => for_account);
      -- no event at all yet: start from this moment instead
      UPDATE stripe_billing.sync_state s
         SET event_cursor = first_page->'data'->0->>'id',
             start_from = CASE WHEN first_page->'data'->0 IS NULL THEN now()::text ELSE 'now' END,
             lookback_after = coalesce(stripe_billing._ts(first_page->'data'->0->'created'), now()),
             last_success_at = now(), consecutive_failures = 0
       WHERE s.account IS NOT DISTINCT FROM for_account;
      RETURN;
    END IF;
    first_page := stripe_billing.stripe_api('GET', '/v1/events',
        jsonb_build_object('limit', 100, 'created', jsonb_build_object('gte',
            floor(extract(epoch FROM st.start_from::timestamptz))::bigint)), account => for_account);
    oldest := first_page->'data'->(jsonb_array_length(first_page->'data') - 1);
    page := first_page->'data';
    WHILE coalesce((first_page->>'has_more')::boolean, false) LOOP
      first_page := stripe_billing.stripe_api('GET', '/v1/events',
          jsonb_build_object('limit', 100, 'starting_after', oldest->>'id', 'created',
              jsonb_build_object('gte', floor(extract(epoch FROM st.start_from::timestamptz))::bigint)),
          account => for_account);
      oldest := coalesce(first_page->'data'->(jsonb_array_length(first_page->'data') - 1), oldest);
      IF jsonb_array_length(first_page->'data') > 0 THEN
        page := first_page->'data';    -- (the oldest events listed)
      END IF;
    END LOOP;
    IF oldest IS NULL THEN
      -- nothing since then yet: look again next time
      UPDATE stripe_billing.sync_state s SET last_success_at = now(), consecutive_failures = 0
       WHERE s.account IS NOT DISTINCT FROM for_account;
      RETURN;
    END IF;
    -- the oldest event becomes the cursor, applied; an event too malformed
    -- to keep is skipped with a WARNING, as in any page (and the cursor is
    -- the oldest event that has an id)
    page := stripe_billing._oldest_with_id(page);
    PERFORM stripe_billing._apply_page(stripe_billing._with_account(page, for_account), 'poll');
    UPDATE stripe_billing.sync_state s SET event_cursor = page->0->>'id',
           events_applied = s.events_applied + jsonb_array_length(page),
           lookback_after = st.start_from::timestamptz - interval '1 second',
           last_event_created = coalesce(stripe_billing._ts(page->0->'created'), s.last_event_created),
           last_success_at = now(), consecutive_failures = 0
     WHERE s.account IS NOT DISTINCT FROM for_account;
    events := jsonb_array_length(page);
    has_more := true;
    RETURN;
  END IF;

  -- Stripe keeps events 30 days: a cursor older than that, or one Stripe no
  -- longer knows, cannot go on.  Restart from the newest event and
  -- reconcile what the gap may have missed, rather than stall or jump
  -- silently.
  IF st.last_event_created < now() - interval '30 days' THEN
    PERFORM stripe_billing._restart_cursor(format('the cursor %s is older than Stripe''s 30 days of events',
                                                  st.event_cursor), for_account);
    RETURN;
  END IF;
  BEGIN
    page := stripe_billing._events_page(st.event_cursor, prefetch_next, for_account);
  EXCEPTION
  WHEN SQLSTATE 'SBA01' THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
    IF NOT coalesce((SELECT e.code = 'resource_missing' AND e.param = 'ending_before'
                       FROM stripe_billing._api_error(error_detail) e), false) THEN
      RAISE;
    END IF;
    PERFORM stripe_billing._restart_cursor(format('Stripe no longer lists the cursor %s', st.event_cursor),
                                           for_account);
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
    RAISE LOG 'stripe_billing: %; the page is asked for again as text', error_detail;
    page := stripe_billing._poll_unparsed_page(st.event_cursor, for_account);
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
  PERFORM stripe_billing._apply_page(stripe_billing._with_account(page, for_account), 'poll');
  -- the cursor: the newest event listed that has an id, applied or skipped
  page := stripe_billing._oldest_with_id(page, newest => true);
  UPDATE stripe_billing.sync_state s
     SET event_cursor = coalesce(page->0->>'id', s.event_cursor),
         events_applied = s.events_applied + events,
         last_event_created = coalesce(stripe_billing._ts(page->0->'created'), s.last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL
   WHERE s.account IS NOT DISTINCT FROM for_account;
END
$$;

-- Of a list page (newest first): the oldest events up to the oldest one
-- that has an id (a non-empty string), newest first; with newest, the
-- newest event that has one, alone.  (An event without an id cannot be
-- the cursor; one too long to keep can.)  Empty when none has one.
CREATE FUNCTION stripe_billing._oldest_with_id(page jsonb, newest boolean DEFAULT false) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH listed AS (
    SELECT e, n, jsonb_typeof(e->'id') = 'string' AND e->>'id' <> '' AS has_id
      FROM jsonb_array_elements(coalesce(page, '[]')) WITH ORDINALITY x(e, n)
  ),
  edge AS (
    SELECT CASE WHEN newest THEN min(n) ELSE max(n) END AS n FROM listed WHERE has_id
  )
  SELECT coalesce(jsonb_agg(l.e ORDER BY l.n), '[]')
    FROM listed l, edge
   WHERE CASE WHEN newest THEN l.n = edge.n ELSE l.n >= edge.n END
$$;

-- Where a connected account's polling starts: at the first event that
-- made it known (a webhook's, so that the events between that one and the
-- first poll are polled too; within Stripe's 30 days), else from now (an
-- account known from /v1/accounts is backfilled instead).
CREATE FUNCTION stripe_billing._account_start_from(account text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN min(e.created) IS NULL THEN 'now'
              ELSE greatest(min(e.created) - interval '1 second', now() - interval '30 days' + interval '1 hour')::text
         END
    FROM stripe_billing.accounts a
    JOIN stripe_billing.events e ON e.account = a.id
         AND e.received_at >= a.first_seen_at AND e.received_at < a.first_seen_at + interval '1 minute'
   WHERE a.id = _account_start_from.account
$$;

-- A connected account's page of events, each naming the account (as its
-- webhooks do): the rows they write are the account's.
CREATE FUNCTION stripe_billing._with_account(page jsonb, account text) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN account IS NULL THEN page
              ELSE (SELECT coalesce(jsonb_agg(CASE WHEN jsonb_typeof(e) = 'object' AND NOT e ? 'account'
                                                   THEN e || jsonb_build_object('account', account) ELSE e END
                                              ORDER BY n), '[]')
                      FROM jsonb_array_elements(page) WITH ORDINALITY x(e, n)) END
$$;

-- Stripe's events list is eventually consistent: an event can be listed
-- after newer ones, behind the cursor, where ending_before never looks.  So
-- each cycle re-reads the last stripe_billing.poll_lookback of events up to
-- the cursor's second (created[gt], created[lte]), never before where
-- polling started (lookback_after), and applies, oldest
-- first, those listed behind the cursor that the ledger has not seen; the
-- rest are skipped without being applied again (and events ahead of the
-- cursor are left to the next page).  With nothing late, one request per
-- 100 events in the window.  Returns how many it applied.
CREATE FUNCTION stripe_billing._poll_lookback(for_account text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  lookback interval := current_setting('stripe_billing.poll_lookback')::interval;
  st stripe_billing.sync_state;
  page jsonb;
  older_than text;
  behind boolean := false;     -- past the cursor, in the list's newest-first order
  late jsonb := '[]';          -- missing events behind the cursor, newest first
  e jsonb;
  params jsonb;
  error_detail text;
  page_has_more boolean;
  page_data jsonb;
  applied integer := 0;
BEGIN
  -- (the state's row first, as a page takes it: see locks.c)
  SELECT * INTO st FROM stripe_billing.sync_state s WHERE s.account IS NOT DISTINCT FROM for_account FOR UPDATE;
  IF lookback <= interval '0' OR st.event_cursor IS NULL OR st.last_event_created IS NULL
     OR st.lookback_after IS NULL THEN
    RETURN 0;
  END IF;
  LOOP
    -- (a late event behind the cursor was created no later than the cursor's
    -- second; never before polling started)
    params := jsonb_strip_nulls(jsonb_build_object(
        'limit', 100, 'starting_after', older_than,
        'created', jsonb_build_object(
            'gt', greatest(floor(extract(epoch FROM st.last_event_created - lookback))::bigint - 1,
                           floor(extract(epoch FROM st.lookback_after))::bigint),
            'lte', extract(epoch FROM st.last_event_created)::bigint)));
    BEGIN
      page := stripe_billing.stripe_api('GET', '/v1/events', params, account => for_account);
    EXCEPTION WHEN SQLSTATE 'SBA07' THEN
      -- a body over max_response_size is as large when asked again: raised
      GET STACKED DIAGNOSTICS error_detail = MESSAGE_TEXT;
      IF error_detail LIKE '%exceeds stripe_billing.max_response_size%' THEN
        RAISE;
      END IF;
      -- a page holding an event jsonb refuses (as _poll_unparsed_page): that
      -- one is kept as failed (so the ledger has it), the others go on
      RAISE LOG 'stripe_billing: %; the lookback''s page is asked for again as text', error_detail;
      SELECT l.has_more, l.data INTO page_has_more, page_data
        FROM stripe_billing._unparsed_list(stripe_billing._events_text(params, for_account)) l;
      page := jsonb_build_object('has_more', page_has_more, 'data', page_data);
    END;
    FOR e IN SELECT d.value FROM jsonb_array_elements(page->'data') WITH ORDINALITY d(value, n) ORDER BY d.n LOOP
      IF NOT behind THEN
        behind := e->>'id' = st.event_cursor;
      ELSIF e->>'object' IS DISTINCT FROM 'unparsed_event'
            AND NOT EXISTS (SELECT FROM stripe_billing.events l WHERE l.id = e->>'id') THEN
        late := late || jsonb_build_array(e);
      END IF;
    END LOOP;
    EXIT WHEN NOT coalesce((page->>'has_more')::boolean, false)
           OR coalesce(jsonb_array_length(page->'data'), 0) = 0;
    older_than := stripe_billing._oldest_with_id(page->'data')->0->>'id';
  END LOOP;

  -- (one batch, as a page: oldest first, its locks at once, an event too
  -- malformed to keep skipped with a WARNING)
  IF jsonb_array_length(late) > 0 THEN
    applied := stripe_billing._apply_page(stripe_billing._with_account(late, for_account), 'poll');
  END IF;
  IF applied > 0 THEN
    UPDATE stripe_billing.sync_state s SET events_applied = s.events_applied + applied
     WHERE s.account IS NOT DISTINCT FROM for_account;
    RAISE LOG 'stripe_billing: % late-listed event(s) applied', applied;
  END IF;
  RETURN applied;
END
$$;

-- Fetches the current state of one row marked by a same-second tie (or of
-- an entitlement summary cut short) and applies it; false when none is
-- marked.  One object per transaction: its locks are the only ones the
-- transaction takes (see locks.c).
CREATE FUNCTION stripe_billing._refetch_one() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r record;
  list jsonb;
  items jsonb;
  summary jsonb;
  error_detail text;
BEGIN
  SELECT tab, object, id, path, customer, account INTO r FROM (
           SELECT 'customers' AS tab, 'customer' AS object, id, '/v1/customers/' || id AS path, id AS customer,
                  account
             FROM stripe_billing.customers WHERE refetch AND NOT deleted
           UNION ALL SELECT 'subscriptions', 'subscription', id, '/v1/subscriptions/' || id, customer, account
             FROM stripe_billing.subscriptions WHERE refetch
           UNION ALL SELECT 'invoices', 'invoice', id, '/v1/invoices/' || id, NULL, account
             FROM stripe_billing.invoices WHERE refetch AND NOT deleted
           UNION ALL SELECT 'products', 'product', id, '/v1/products/' || id, NULL, account
             FROM stripe_billing.products WHERE refetch AND NOT deleted
           UNION ALL SELECT 'prices', 'price', id, '/v1/prices/' || id, NULL, account
             FROM stripe_billing.prices WHERE refetch AND NOT deleted
           UNION ALL SELECT 'checkout_sessions', 'checkout.session', id, '/v1/checkout/sessions/' || id, customer,
                            account
             FROM stripe_billing.checkout_sessions WHERE refetch
           UNION ALL SELECT 'entitlement_summaries', NULL, customer, NULL, customer, account
             FROM stripe_billing.entitlement_summaries WHERE refetch
           -- (a connected account is read by the platform)
           UNION ALL SELECT 'accounts', 'account', id, '/v1/accounts/' || id, NULL, NULL
             FROM stripe_billing.accounts WHERE refetch
         ) marked LIMIT 1;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  -- the row's keys before it is written (the answer applied takes them
  -- again), of its account: a product's or price's id is the account's own
  PERFORM stripe_billing._lock_objects(jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
              'object', coalesce(r.object, 'customer'), 'id', coalesce(r.id, r.customer),
              'customer', r.customer))), r.account);

  IF r.tab = 'entitlement_summaries' THEN
    items := '[]';
    list := jsonb_build_object('has_more', true);
    WHILE (list->>'has_more')::boolean LOOP
      list := stripe_billing.stripe_api('GET', '/v1/entitlements/active_entitlements',
          jsonb_strip_nulls(jsonb_build_object('customer', r.customer, 'limit', 100,
                                               'starting_after', items->-1->>'id')), account => r.account);
      items := items || (list->'data');
    END LOOP;
    summary := jsonb_build_object('object', 'entitlements.active_entitlement_summary', 'customer', r.customer,
                                  'entitlements', jsonb_build_object('object', 'list', 'has_more', false,
                                                                     'data', items));
    -- as of now: newer than the summary event it completes
    PERFORM stripe_billing._apply_snapshots(jsonb_build_array(summary), now(), 'refetch', account => r.account);
    UPDATE stripe_billing.entitlement_summaries SET refetch = false WHERE customer = r.customer;
    RETURN true;
  END IF;

  -- an id that cannot be a path segment is not asked for (ids come from
  -- events; custom product and plan ids may hold '-')
  IF r.id !~ '^[A-Za-z0-9_-]{1,255}$' THEN
    RAISE WARNING 'stripe_billing: % % cannot be re-fetched: its id is not a Stripe id', r.tab, quote_literal(left(r.id, 100));
  ELSE
    BEGIN
      PERFORM stripe_billing.stripe_api('GET', r.path, account => r.account);   -- applied as a snapshot
    EXCEPTION WHEN SQLSTATE 'SBA01' THEN
      -- gone at Stripe (or not readable with this key, or an account that
      -- took the platform's access back): nothing to heal
      GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
      IF (stripe_billing._api_error(error_detail)).code IS DISTINCT FROM 'resource_missing'
         AND (stripe_billing._api_error(error_detail)).code IS DISTINCT FROM 'account_invalid' THEN
        RAISE;
      END IF;
    END;
  END IF;
  -- a snapshot of the same second as the tie cannot settle it: do not ask again
  EXECUTE format('UPDATE stripe_billing.%I SET refetch = false WHERE id = $1 AND %s AND refetch', r.tab,
                 CASE WHEN r.tab = 'accounts' THEN 'true' ELSE 'account IS NOT DISTINCT FROM $2' END)
    USING r.id, r.account;
  RETURN true;
END
$$;

-- Retries failed events (every 5 minutes), for the worker and
-- stripe_sync_now; returns how many.
CREATE FUNCTION stripe_billing._retry_due() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  retried integer;
BEGIN
  -- (the state's row first, as a page takes it: see locks.c)
  UPDATE stripe_billing.sync_state SET last_retry_at = now()
   WHERE account IS NULL AND (last_retry_at IS NULL OR last_retry_at < now() - interval '5 minutes');
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  SELECT count(*) INTO retried FROM stripe_billing.stripe_retry_failed_events(100);
  RETURN retried;
END
$$;

-- Sends due usage rows, for the worker and stripe_sync_now; returns how many.
CREATE FUNCTION stripe_billing._send_usage_due() RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT stripe_billing.stripe_send_usage(
      CASE current_setting('stripe_billing.usage_api') WHEN 'v1' THEN 100 ELSE 1000 END)
$$;

-- Polls the connected account most due (Connect), one page (and, while
-- its events are recent, its lookback), in the caller's transaction.
-- Accounts with activity (an event received in the last stripe_billing.
-- connect_active_window) are due every stripe_billing.poll_interval, the
-- others every stripe_billing.connect_idle_interval, the longest waiting
-- first; an account with more pages waiting is due again at once; a
-- deauthorized account never.  An account's first poll takes its cursor
-- now and, with stripe_billing.backfill_on_start, starts its backfill (the
-- worker's backfill step runs it).  An account's failure is its own:
-- recorded in its sync_state row (and polled again after a backoff), not
-- raised, so the others go on.  False when no account is due.
CREATE FUNCTION stripe_billing._poll_next_account() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  poll interval := current_setting('stripe_billing.poll_interval')::interval;
  idle interval := current_setting('stripe_billing.connect_idle_interval')::interval;
  active_window interval := current_setting('stripe_billing.connect_active_window')::interval;
  lookback interval := current_setting('stripe_billing.poll_lookback')::interval;
  acct text;
  active boolean;
  first_poll boolean;
  p record;
BEGIN
  WITH recent AS (
    SELECT DISTINCT e.account FROM stripe_billing.events e
     WHERE e.received_at > now() - active_window AND e.account IS NOT NULL
  )
  SELECT a.id, a.id IN (SELECT r.account FROM recent r), s.event_cursor IS NULL AND s.lookback_after IS NULL
    INTO acct, active, first_poll
    FROM stripe_billing.accounts a
    LEFT JOIN stripe_billing.sync_state s ON s.account = a.id
   WHERE a.deauthorized_at IS NULL
     AND (s.account IS NULL OR coalesce(s.next_poll_at, '-infinity') <= now()
          OR (a.id IN (SELECT r.account FROM recent r)
              AND coalesce(s.last_poll_at, '-infinity') <= now() - poll
              AND s.consecutive_failures = 0))
   -- (active accounts first, so that idle ones never hold them back; then
   -- the longest waiting, an account never polled first)
   ORDER BY a.id IN (SELECT r.account FROM recent r) DESC,
            s.next_poll_at NULLS FIRST, a.id
   LIMIT 1;
  IF acct IS NULL THEN
    RETURN false;
  END IF;
  BEGIN
    -- (the backfill's rows first, as for the platform's first start; a
    -- first poll that failed is a first poll again)
    IF first_poll AND current_setting('stripe_billing.backfill_on_start')::boolean
       AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state b WHERE b.account = acct) THEN
      PERFORM stripe_billing._backfill_begin(NULL, acct);
    END IF;
    p := stripe_billing._poll_page(false, acct);
    -- the lookback re-reads events listed late, which only recent events
    -- can be: an idle account costs one request a poll
    IF NOT p.has_more AND (SELECT s.last_event_created > now() - 2 * lookback FROM stripe_billing.sync_state s
                            WHERE s.account = acct) THEN
      PERFORM stripe_billing._poll_lookback(acct);
    END IF;
    -- (after its first poll, an idle account's next one is drawn within the
    -- idle interval: accounts learnt together are not polled together)
    UPDATE stripe_billing.sync_state s
       SET next_poll_at = now() + CASE WHEN p.has_more THEN interval '0' WHEN active THEN poll
                                       WHEN first_poll THEN idle * random() ELSE idle END
     WHERE s.account = acct;
  EXCEPTION WHEN OTHERS THEN
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58') THEN
      RAISE;     -- (the moment, not the account: the step is done again)
    END IF;
    INSERT INTO stripe_billing.sync_state AS s (account) VALUES (acct) ON CONFLICT (account) DO NOTHING;
    UPDATE stripe_billing.sync_state s
       SET last_error = SQLERRM, last_error_at = now(), consecutive_failures = s.consecutive_failures + 1,
           last_poll_at = now(),
           next_poll_at = now() + least(poll * power(2, least(s.consecutive_failures, 10)), idle)
     WHERE s.account = acct;
    RAISE WARNING 'stripe_billing: polling the connected account % failed: %', acct, SQLERRM;
  END;
  RETURN true;
END
$$;

-- The background worker's one entry point (so stripe_billing.worker_role
-- needs EXECUTE on this function only): 'ready' (true unless paused),
-- 'no_key' and 'failed' (record why in sync_state), 'poll' (one page; true
-- when more wait), 'backfill' and 'reconcile' (one page, when there is
-- one; true when more wait), 'lookback' (late-listed events), 'usage'
-- (send due usage), 'retry' (failed events, every 5 minutes), 'refetch'
-- (one object marked by a tie; true when it did one) and 'poll_accounts'
-- (a page of the connected account most due; true when it polled one).  Each step is a
-- transaction of the worker's.  Runs as the extension's owner.
CREATE FUNCTION stripe_billing._worker_step(step text, error text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  backfilled record;
  reconciled record;
BEGIN
  CASE step
  WHEN 'ready' THEN
    RETURN NOT (SELECT paused FROM stripe_billing.sync_state WHERE account IS NULL);
  WHEN 'no_key' THEN
    UPDATE stripe_billing.sync_state
       SET last_error = 'stripe_billing.api_key is not set', last_error_at = now()
     WHERE account IS NULL AND last_error IS DISTINCT FROM 'stripe_billing.api_key is not set';
    RETURN false;
  WHEN 'failed' THEN
    UPDATE stripe_billing.sync_state
       SET last_error = error, last_error_at = now(), consecutive_failures = consecutive_failures + 1
     WHERE account IS NULL;
    RETURN false;
  WHEN 'poll' THEN
    -- first start in this database: the cursor is taken now, then the
    -- account's objects are backfilled while events are pulled from it
    -- (the backfill's rows first, as stripe_backfill takes them before the
    -- locks of what it applies: see locks.c)
    IF current_setting('stripe_billing.backfill_on_start')::boolean
       AND (SELECT event_cursor IS NULL AND lookback_after IS NULL FROM stripe_billing.sync_state
             WHERE account IS NULL)
       AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state) THEN
      PERFORM stripe_billing._backfill_begin(NULL);
    END IF;
    RETURN (stripe_billing._poll_page(true)).has_more;
  WHEN 'backfill' THEN
    SELECT * INTO backfilled FROM stripe_billing._backfill_step(NULL, true, any_account => true);
    IF backfilled.failed THEN
      RAISE WARNING '%', backfilled.message;
    END IF;
    RETURN backfilled.kind IS NOT NULL AND NOT backfilled.failed;
  WHEN 'reconcile' THEN
    IF stripe_billing._reconcile_due() THEN
      PERFORM stripe_billing._reconcile_begin('scheduled');
    ELSIF stripe_billing._reconcile_due_account() IS NOT NULL THEN
      PERFORM stripe_billing._reconcile_begin('scheduled', stripe_billing._reconcile_due_account());
    END IF;
    SELECT * INTO reconciled FROM stripe_billing._reconcile_step(any_account => true);
    IF reconciled.failed THEN
      RAISE WARNING '%', reconciled.message;
    END IF;
    RETURN reconciled.run IS NOT NULL AND NOT reconciled.failed;
  WHEN 'lookback' THEN
    PERFORM stripe_billing._poll_lookback();
    RETURN false;
  WHEN 'usage' THEN
    PERFORM stripe_billing._send_usage_due();
    RETURN false;
  WHEN 'retry' THEN
    PERFORM stripe_billing._retry_due();
    RETURN false;
  WHEN 'refetch' THEN
    RETURN stripe_billing._refetch_one();
  WHEN 'poll_accounts' THEN
    RETURN stripe_billing._poll_next_account();
  END CASE;
END
$$;

-- The steps of the procedures that commit (stripe_sync_now, stripe_backfill,
-- stripe_reconcile).  A procedure that commits may not be SECURITY DEFINER,
-- so it runs with its caller's rights, and the internal functions are not
-- the caller's to run.  Each step goes through _procedure_step (C,
-- executable by everyone): it lets through a caller who may EXECUTE the
-- step's procedure, and runs the step in _procedure_step_run, which runs as
-- the extension's owner.  So GRANT EXECUTE on a procedure is all a role
-- needs to run it.
CREATE FUNCTION stripe_billing._procedure_step(step text, arg jsonb DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_procedure_step'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stripe_billing._procedure_step_run(step text, arg jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r record;
  kinds text[] := CASE WHEN jsonb_typeof(arg->'kinds') = 'array'
                       THEN ARRAY(SELECT jsonb_array_elements_text(arg->'kinds')) END;
BEGIN
  CASE step
  WHEN 'sync_now.poll' THEN
    r := stripe_billing._poll_page();
    RETURN jsonb_build_object('events', r.events, 'has_more', r.has_more);
  WHEN 'sync_now.lookback' THEN
    RETURN jsonb_build_object('events', stripe_billing._poll_lookback());
  WHEN 'sync_now.usage' THEN
    RETURN jsonb_build_object('sent', stripe_billing._send_usage_due());
  WHEN 'sync_now.retry' THEN
    RETURN jsonb_build_object('retried', stripe_billing._retry_due());
  WHEN 'sync_now.refetch' THEN
    RETURN jsonb_build_object('more', stripe_billing._refetch_one());
  WHEN 'sync_now.accounts' THEN
    RETURN jsonb_build_object('more', stripe_billing._poll_next_account());
  WHEN 'backfill.begin' THEN
    PERFORM stripe_billing._backfill_begin(kinds, arg->>'account');
    RETURN NULL;
  WHEN 'backfill.step' THEN
    SELECT * INTO r FROM stripe_billing._backfill_step(kinds, false, arg->>'account');
    RETURN to_jsonb(r);
  WHEN 'reconcile.begin' THEN
    RETURN to_jsonb(stripe_billing._reconcile_begin(arg->>'reason', arg->>'account'));
  WHEN 'reconcile.step' THEN
    SELECT * INTO r FROM stripe_billing._reconcile_step(arg->>'account');
    RETURN to_jsonb(r);
  END CASE;
END
$$;

-- Runs a poll cycle now in this session, a transaction per page (a long
-- catch-up stays linear and holds no page's locks longer than its own);
-- events: the number of events received.  CALL it outside a transaction
-- block.
CREATE PROCEDURE stripe_billing.stripe_sync_now(INOUT events integer DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause and no SECURITY DEFINER: a procedure with either may not
-- commit.  So it runs under its caller's search_path: every type, call and
-- operator below is qualified, down to the declarations, which PL/pgSQL
-- resolves when it first runs them.)
AS $$
DECLARE
  p pg_catalog.jsonb;
BEGIN
  events := 0;
  LOOP
    p := stripe_billing._procedure_step('sync_now.poll');
    events := events OPERATOR(pg_catalog.+) (p OPERATOR(pg_catalog.->>) 'events')::pg_catalog.int4;
    COMMIT;
    EXIT WHEN NOT (p OPERATOR(pg_catalog.->>) 'has_more')::pg_catalog.bool;
  END LOOP;
  p := stripe_billing._procedure_step('sync_now.lookback');
  events := events OPERATOR(pg_catalog.+) (p OPERATOR(pg_catalog.->>) 'events')::pg_catalog.int4;
  COMMIT;
  PERFORM stripe_billing._procedure_step('sync_now.usage');
  COMMIT;
  PERFORM stripe_billing._procedure_step('sync_now.retry');
  COMMIT;
  -- (up to 20 re-fetches, one object a transaction)
  FOR i IN 1 .. 20 LOOP
    p := stripe_billing._procedure_step('sync_now.refetch');
    COMMIT;
    EXIT WHEN NOT (p OPERATOR(pg_catalog.->>) 'more')::pg_catalog.bool;
  END LOOP;
  -- connected accounts due (Connect), a page a transaction, up to a
  -- thousand pages
  FOR i IN 1 .. 1000 LOOP
    p := stripe_billing._procedure_step('sync_now.accounts');
    COMMIT;
    EXIT WHEN NOT (p OPERATOR(pg_catalog.->>) 'more')::pg_catalog.bool;
  END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_sync_now(integer) FROM PUBLIC;

-- Where polling starts when there is no cursor yet: 'now', or a time within
-- Stripe's 30 days of events.  Resets the cursor.
CREATE FUNCTION stripe_billing.stripe_sync_start_from(start_from text, account text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF start_from IS NULL OR (start_from <> 'now' AND start_from::timestamptz < now() - interval '30 days') THEN
    PERFORM stripe_billing._bad_argument('start_from', 'must be ''now'' or a time within the last 30 days');
  END IF;
  PERFORM stripe_billing._check_account('account', stripe_sync_start_from.account);
  INSERT INTO stripe_billing.sync_state AS s (account) VALUES (stripe_sync_start_from.account)
  ON CONFLICT ON CONSTRAINT sync_state_account_key DO NOTHING;
  UPDATE stripe_billing.sync_state s
     SET start_from = CASE WHEN stripe_sync_start_from.start_from = 'now' THEN 'now'
                           ELSE stripe_sync_start_from.start_from::timestamptz::text END,
         event_cursor = NULL, lookback_after = NULL, next_poll_at = NULL
   WHERE s.account IS NOT DISTINCT FROM stripe_sync_start_from.account;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_start_from(text, text) FROM PUBLIC;

CREATE FUNCTION stripe_billing.stripe_sync_pause() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = true WHERE account IS NULL $$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_pause() FROM PUBLIC;

CREATE FUNCTION stripe_billing.stripe_sync_resume() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = false WHERE account IS NULL $$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_resume() FROM PUBLIC;
