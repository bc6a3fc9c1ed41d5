-- stripe_billing 0.3.0 -> 0.4.0.
\echo Use "ALTER EXTENSION stripe_billing UPDATE TO '0.4.0'" to load this file. \quit
-- new: stripe_billing._lock_keys(text[], text[], text[])
CREATE FUNCTION stripe_billing._lock_keys(objects text[], customers text[], users text[]) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_keys'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._lock_objects(jsonb)
CREATE FUNCTION stripe_billing._lock_objects(objects jsonb) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_objects'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._object_kinds()
CREATE FUNCTION stripe_billing._object_kinds(OUT kind text, OUT event_types text[],
                                             OUT ignored_event_types text[], OUT apply_function text,
                                             OUT fields text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stripe_object_kinds'
LANGUAGE C STRICT STABLE
SET search_path = pg_catalog, pg_temp;

-- changed: stripe_billing.stripe_link_customer(text, text)
CREATE OR REPLACE FUNCTION stripe_billing.stripe_link_customer(user_ref text, customer_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  IF coalesce(user_ref, '') = '' THEN
    RAISE EXCEPTION 'user_ref must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(customer_id, '') = '' THEN
    RAISE EXCEPTION 'customer_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- (the customer's key, its linked user's and the new one's: see locks.c)
  PERFORM stripe_billing._lock_keys(NULL, ARRAY[customer_id], ARRAY[user_ref]);
  PERFORM stripe_billing._link_customer(customer_id, user_ref, false);
END
$$;

-- new: stripe_billing._reapply_events(text[])
CREATE FUNCTION stripe_billing._reapply_events(ids text[])
RETURNS TABLE (event_id text, event_type text, outcome text, error text)
AS 'MODULE_PATHNAME', 'stripe_reapply_events'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._reapply_events(text[]) FROM PUBLIC;

-- changed: stripe_billing.stripe_retry_failed_events(integer)
CREATE OR REPLACE FUNCTION stripe_billing.stripe_retry_failed_events(max_events integer DEFAULT NULL)
RETURNS TABLE (event_id text, event_type text, outcome text, error text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
  SELECT r.event_id, r.event_type, r.outcome, r.error
    FROM stripe_billing._reapply_events(ARRAY(
           SELECT ev.id FROM stripe_billing.events ev
            WHERE ev.outcome = 'failed' AND ev.payload IS NOT NULL ORDER BY ev.created, ev.id
            LIMIT max_events FOR UPDATE SKIP LOCKED)) r;
END
$$;

-- changed: stripe_billing.stripe_replay_events(text)
CREATE OR REPLACE FUNCTION stripe_billing.stripe_replay_events(event_type text)
RETURNS TABLE (event_id text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
  SELECT r.event_id, r.outcome
    FROM stripe_billing._reapply_events(ARRAY(
           SELECT ev.id FROM stripe_billing.events ev
            WHERE ev.outcome = 'ignored' AND (stripe_replay_events.event_type IS NULL
                                              OR ev.type = stripe_replay_events.event_type)
            ORDER BY ev.created, ev.id FOR UPDATE SKIP LOCKED)) r;
END
$$;

-- changed: stripe_billing._refresh_users_features(text[], text[], text)
CREATE OR REPLACE FUNCTION stripe_billing._refresh_users_features(targets text[], customer_ids text[] DEFAULT NULL,
                                                       ev_type text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  notified bigint;
BEGIN
  -- one derivation of a user at a time (see user_derivations), taken in
  -- user order so that two derivations of several users cannot deadlock;
  -- the next statement's snapshot then sees the previous derivations' commits
  INSERT INTO stripe_billing.user_derivations AS d (user_ref, derived_at)
  SELECT DISTINCT t.u COLLATE "C", now() FROM unnest(targets) t(u) WHERE t.u IS NOT NULL ORDER BY 1
  ON CONFLICT (user_ref) DO UPDATE SET derived_at = EXCLUDED.derived_at, derivations = d.derivations + 1;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  WITH due AS (
    SELECT DISTINCT ON (t.u COLLATE "C") t.u COLLATE "C" AS user_ref, t.c AS customer
      FROM unnest(targets, customer_ids) WITH ORDINALITY t(u, c, n)
     WHERE t.u IS NOT NULL
     ORDER BY t.u COLLATE "C", t.n
  ),
  grants AS (
    SELECT c.user_ref, g.feature,
           stripe_billing._access_ends(s.status, s.cancel_at_period_end, s.cancel_at,
                                       coalesce(i.current_period_end, s.current_period_end)) AS ends
      FROM stripe_billing.customers c
      JOIN stripe_billing.subscriptions s ON s.customer = c.id
      JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
      JOIN stripe_billing.feature_grants g
        ON (g.source_type = 'price' AND g.source = i.price)
        OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
        OR (g.source_type = 'product' AND g.source = i.product)
     WHERE c.user_ref = ANY (targets) AND NOT c.deleted
       AND s.status IN ('active', 'trialing', 'past_due')
    UNION ALL
    SELECT c.user_ref, e.lookup_key, NULL
      FROM stripe_billing.customers c
      JOIN stripe_billing.active_entitlements e ON e.customer = c.id
     WHERE c.user_ref = ANY (targets) AND NOT c.deleted
  ),
  wanted AS (
    SELECT user_ref COLLATE "C" AS user_ref, feature COLLATE "C" AS feature,
           CASE WHEN bool_or(ends IS NULL) THEN NULL ELSE max(ends) END AS valid_until
      FROM grants GROUP BY 1, 2
  ),
  revoked AS (
    DELETE FROM stripe_billing.user_features u
     WHERE u.user_ref = ANY (targets)
       AND NOT EXISTS (SELECT FROM wanted w WHERE w.user_ref = u.user_ref AND w.feature = u.feature)
    RETURNING u.user_ref
  ),
  granted AS (
    INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
    SELECT user_ref, feature, valid_until FROM wanted
    ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until
    WHERE u.valid_until IS DISTINCT FROM EXCLUDED.valid_until
    RETURNING u.user_ref
  )
  -- apps LISTEN stripe_billing to react when a user's access changes
  -- (delivered at commit, not at all on rollback); see the notification in
  -- _refresh_user_features
  SELECT count(pg_notify('stripe_billing', json_build_object(
           'user_ref', d.user_ref, 'customer', d.customer, 'event_type', ev_type,
           'derivation', (SELECT ud.derivations FROM stripe_billing.user_derivations ud
                           WHERE ud.user_ref = d.user_ref),
           'features', (SELECT count(*) FROM wanted w WHERE w.user_ref = d.user_ref))::text))
    INTO notified   -- (unused: PERFORM cannot start with WITH)
    FROM due d
   WHERE d.user_ref IN (SELECT user_ref FROM revoked UNION SELECT user_ref FROM granted);
END
$$;

-- changed: stripe_billing._refresh_user_features(text, text, text)
CREATE OR REPLACE FUNCTION stripe_billing._refresh_user_features(target text, customer_id text DEFAULT NULL,
                                                      ev_type text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  notified text;
  derivation bigint;
BEGIN
  IF target IS NULL THEN
    RETURN;
  END IF;
  -- one derivation of a user at a time (see user_derivations); the next
  -- statement's snapshot then sees the previous derivation's commit
  INSERT INTO stripe_billing.user_derivations AS d (user_ref, derived_at) VALUES (target, now())
  ON CONFLICT (user_ref) DO UPDATE SET derived_at = EXCLUDED.derived_at, derivations = d.derivations + 1
  RETURNING d.derivations INTO derivation;
  WITH grants AS (
    SELECT g.feature,
           stripe_billing._access_ends(s.status, s.cancel_at_period_end, s.cancel_at,
                                       coalesce(i.current_period_end, s.current_period_end)) AS ends
      FROM stripe_billing.customers c
      JOIN stripe_billing.subscriptions s ON s.customer = c.id
      JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
      JOIN stripe_billing.feature_grants g
        ON (g.source_type = 'price' AND g.source = i.price)
        OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
        OR (g.source_type = 'product' AND g.source = i.product)
     WHERE c.user_ref = target AND NOT c.deleted
       AND s.status IN ('active', 'trialing', 'past_due')
    UNION ALL
    SELECT e.lookup_key, NULL
      FROM stripe_billing.customers c
      JOIN stripe_billing.active_entitlements e ON e.customer = c.id
     WHERE c.user_ref = target AND NOT c.deleted
  ),
  wanted AS (
    SELECT feature, CASE WHEN bool_or(ends IS NULL) THEN NULL ELSE max(ends) END AS valid_until
      FROM grants GROUP BY feature
  ),
  revoked AS (
    DELETE FROM stripe_billing.user_features u
     WHERE u.user_ref = target AND u.feature NOT IN (SELECT feature FROM wanted)
    RETURNING 1
  ),
  granted AS (
    INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
    SELECT target, feature, valid_until FROM wanted
    ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until
    WHERE u.valid_until IS DISTINCT FROM EXCLUDED.valid_until
    RETURNING 1
  )
  -- apps LISTEN stripe_billing to react when a user's access changes
  -- (delivered at commit, not at all on rollback).  The payload names the
  -- user, never their features: NOTIFY payloads end at 8000 bytes, and a
  -- notification must never make billing state fail.  Its parts are
  -- bounded (each is an index key, at most some 2700 bytes; the feature
  -- count and the derivation number are integers), and the listener reads
  -- the rest (stripe_user_features): any role can NOTIFY this channel, so
  -- a payload is a hint to re-read, not a fact.
  SELECT pg_notify('stripe_billing', json_build_object(
           'user_ref', target, 'customer', customer_id, 'event_type', ev_type,
           'derivation', derivation, 'features', (SELECT count(*) FROM wanted))::text)
    INTO notified   -- (unused: PERFORM cannot start with WITH)
   WHERE EXISTS (SELECT FROM revoked) OR EXISTS (SELECT FROM granted);
END
$$;

-- changed: stripe_billing.stripe_refresh_entitlements()
CREATE OR REPLACE FUNCTION stripe_billing.stripe_refresh_entitlements() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint := 0;
  u text;
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  -- every user's key first (past a thousand users, the apply lock alone):
  -- see locks.c
  PERFORM stripe_billing._lock_keys(NULL, NULL, ARRAY(
      SELECT c.user_ref FROM stripe_billing.customers c WHERE c.user_ref IS NOT NULL
      UNION SELECT f.user_ref FROM stripe_billing.user_features f));
  -- users who lost every customer link keep no features
  DELETE FROM stripe_billing.user_features f
   WHERE NOT EXISTS (SELECT FROM stripe_billing.customers c WHERE c.user_ref = f.user_ref);
  FOR u IN SELECT DISTINCT user_ref FROM stripe_billing.customers WHERE user_ref IS NOT NULL LOOP
    PERFORM stripe_billing._refresh_user_features(u, NULL, 'refresh');
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;

-- new: stripe_billing._api_error(text)
CREATE FUNCTION stripe_billing._api_error(detail text, OUT http_status integer, OUT type text,
                                          OUT code text, OUT param text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT m[1]::integer, nullif(m[2], '(none)'), nullif(m[3], '(none)'), nullif(m[4], '(none)')
    FROM (SELECT regexp_match(detail, '^\S+ \S+: HTTP (\d{3}), type (\S+), code (\S+), param (\S+), request \S+\.$') AS m) s
$$;

-- changed: stripe_billing.stripe_installation_id()
CREATE OR REPLACE FUNCTION stripe_billing.stripe_installation_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT id FROM stripe_billing.installation ORDER BY created_at, id LIMIT 1
$$;

-- changed: stripe_billing._send_usage_v1(bigint, jsonb)
CREATE OR REPLACE FUNCTION stripe_billing._send_usage_v1(row_id bigint, event jsonb) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  outcome text := 'sent';
  error text;
  error_detail text;
BEGIN
  BEGIN
    PERFORM stripe_billing.stripe_api('POST', '/v1/billing/meter_events',
        jsonb_build_object('event_name', event->>'event_name', 'identifier', event->>'identifier',
                           'timestamp', extract(epoch FROM (event->>'timestamp')::timestamptz)::bigint,
                           'payload', event->'payload'),
        event->>'identifier');
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
    error := SQLERRM;
    outcome := CASE WHEN SQLSTATE = 'SBA01'
                         AND (stripe_billing._api_error(error_detail)).code = 'resource_already_exists' THEN 'sent'
                    WHEN SQLSTATE IN ('SBA01', 'SBA02') THEN 'failed'
                    ELSE 'retry' END;
  END;
  PERFORM stripe_billing._usage_mark(ARRAY[row_id], outcome, error);
  RETURN outcome;
END
$$;

-- changed: stripe_billing._poll_unparsed_page(text)
CREATE OR REPLACE FUNCTION stripe_billing._poll_unparsed_page(event_cursor text) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  body text := stripe_billing._events_page_text(event_cursor);
  list record;
  newest text;
BEGIN
  BEGIN
    RETURN body::jsonb;
  EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    NULL;
  END;
  list := stripe_billing._unparsed_list(body);
  PERFORM stripe_billing._apply_page(stripe_billing._parsed_events(list.data), 'poll');
  newest := stripe_billing._oldest_with_id(list.data, newest => true)->0->>'id';
  RAISE WARNING 'stripe_billing: % polled event(s) jsonb refuses kept as failed', list.kept
        USING DETAIL = format('In the page after %s.', event_cursor);
  UPDATE stripe_billing.sync_state s
     SET event_cursor = coalesce(newest, s.event_cursor),
         events_applied = s.events_applied + jsonb_array_length(list.data),
         last_event_created = coalesce((SELECT l.created FROM stripe_billing.events l WHERE l.id = newest),
                                       s.last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL;
  RETURN NULL;
END
$$;

-- new: stripe_billing._unparsed_list(text)
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

-- new: stripe_billing._parsed_events(jsonb)
CREATE FUNCTION stripe_billing._parsed_events(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(e ORDER BY n), '[]')
    FROM jsonb_array_elements(data) WITH ORDINALITY x(e, n)
   WHERE e->>'object' IS DISTINCT FROM 'unparsed_event'
$$;

-- new: stripe_billing._events_text(jsonb)
CREATE FUNCTION stripe_billing._events_text(params jsonb) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_text'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- changed: stripe_billing._poll_page(boolean)
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
    page := first_page->'data';
    WHILE coalesce((first_page->>'has_more')::boolean, false) LOOP
      first_page := stripe_billing.stripe_api('GET', '/v1/events',
          jsonb_build_object('limit', 100, 'starting_after', oldest->>'id', 'created',
              jsonb_build_object('gte', floor(extract(epoch FROM st.start_from::timestamptz))::bigint)));
      oldest := coalesce(first_page->'data'->(jsonb_array_length(first_page->'data') - 1), oldest);
      IF jsonb_array_length(first_page->'data') > 0 THEN
        page := first_page->'data';    -- (the oldest events listed)
      END IF;
    END LOOP;
    IF oldest IS NULL THEN
      -- nothing since then yet: look again next time
      UPDATE stripe_billing.sync_state SET last_success_at = now(), consecutive_failures = 0;
      RETURN;
    END IF;
    -- the oldest event becomes the cursor, applied; an event too malformed
    -- to keep is skipped with a WARNING, as in any page (and the cursor is
    -- the oldest event that has an id)
    page := stripe_billing._oldest_with_id(page);
    PERFORM stripe_billing._apply_page(page, 'poll');
    UPDATE stripe_billing.sync_state SET event_cursor = page->0->>'id',
           events_applied = events_applied + jsonb_array_length(page),
           lookback_after = st.start_from::timestamptz - interval '1 second',
           last_event_created = coalesce(stripe_billing._ts(page->0->'created'), last_event_created),
           last_success_at = now(), consecutive_failures = 0;
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
                                                  st.event_cursor));
    RETURN;
  END IF;
  BEGIN
    page := stripe_billing._events_page(st.event_cursor, prefetch_next);
  EXCEPTION
  WHEN SQLSTATE 'SBA01' THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
    IF NOT coalesce((SELECT e.code = 'resource_missing' AND e.param = 'ending_before'
                       FROM stripe_billing._api_error(error_detail) e), false) THEN
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
    RAISE LOG 'stripe_billing: %; the page is asked for again as text', error_detail;
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
  -- the cursor: the newest event listed that has an id, applied or skipped
  page := stripe_billing._oldest_with_id(page, newest => true);
  UPDATE stripe_billing.sync_state
     SET event_cursor = coalesce(page->0->>'id', event_cursor),
         events_applied = events_applied + events,
         last_event_created = coalesce(stripe_billing._ts(page->0->'created'), last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL;
END
$$;

-- new: stripe_billing._oldest_with_id(jsonb, boolean)
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

-- changed: stripe_billing._poll_lookback()
CREATE OR REPLACE FUNCTION stripe_billing._poll_lookback() RETURNS integer
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
  SELECT * INTO st FROM stripe_billing.sync_state FOR UPDATE;
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
      page := stripe_billing.stripe_api('GET', '/v1/events', params);
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
        FROM stripe_billing._unparsed_list(stripe_billing._events_text(params)) l;
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
    applied := stripe_billing._apply_page(late, 'poll');
  END IF;
  IF applied > 0 THEN
    UPDATE stripe_billing.sync_state SET events_applied = events_applied + applied;
    RAISE LOG 'stripe_billing: % late-listed event(s) applied', applied;
  END IF;
  RETURN applied;
END
$$;

-- new: stripe_billing._refetch_one()
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
  SELECT tab, id, path, customer INTO r FROM (
           SELECT 'customers' AS tab, id, '/v1/customers/' || id AS path, id AS customer
             FROM stripe_billing.customers WHERE refetch AND NOT deleted
           UNION ALL SELECT 'subscriptions', id, '/v1/subscriptions/' || id, customer
             FROM stripe_billing.subscriptions WHERE refetch
           UNION ALL SELECT 'invoices', id, '/v1/invoices/' || id, NULL
             FROM stripe_billing.invoices WHERE refetch AND NOT deleted
           UNION ALL SELECT 'products', id, '/v1/products/' || id, NULL
             FROM stripe_billing.products WHERE refetch AND NOT deleted
           UNION ALL SELECT 'prices', id, '/v1/prices/' || id, NULL
             FROM stripe_billing.prices WHERE refetch AND NOT deleted
           UNION ALL SELECT 'checkout_sessions', id, '/v1/checkout/sessions/' || id, customer
             FROM stripe_billing.checkout_sessions WHERE refetch
           UNION ALL SELECT 'entitlement_summaries', customer, NULL, customer
             FROM stripe_billing.entitlement_summaries WHERE refetch
         ) marked LIMIT 1;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  -- the row's keys before it is written (the answer applied takes them again)
  PERFORM stripe_billing._lock_keys(ARRAY[CASE r.tab WHEN 'subscriptions' THEN 'subscription:'
                                                     WHEN 'invoices' THEN 'invoice:'
                                                     WHEN 'products' THEN 'product:'
                                                     WHEN 'prices' THEN 'price:'
                                                     WHEN 'checkout_sessions' THEN 'checkout.session:' END || r.id],
                                    ARRAY[r.customer], NULL);

  IF r.tab = 'entitlement_summaries' THEN
    items := '[]';
    list := jsonb_build_object('has_more', true);
    WHILE (list->>'has_more')::boolean LOOP
      list := stripe_billing.stripe_api('GET', '/v1/entitlements/active_entitlements',
          jsonb_strip_nulls(jsonb_build_object('customer', r.customer, 'limit', 100,
                                               'starting_after', items->-1->>'id')));
      items := items || (list->'data');
    END LOOP;
    summary := jsonb_build_object('object', 'entitlements.active_entitlement_summary', 'customer', r.customer,
                                  'entitlements', jsonb_build_object('object', 'list', 'has_more', false,
                                                                     'data', items));
    -- as of now: newer than the summary event it completes
    PERFORM stripe_billing._apply_snapshots(jsonb_build_array(summary), now(), 'refetch');
    UPDATE stripe_billing.entitlement_summaries SET refetch = false WHERE customer = r.customer;
    RETURN true;
  END IF;

  -- an id that cannot be a path segment is not asked for (ids come from
  -- events; custom product and plan ids may hold '-')
  IF r.id !~ '^[A-Za-z0-9_-]{1,255}$' THEN
    RAISE WARNING 'stripe_billing: % % cannot be re-fetched: its id is not a Stripe id', r.tab, quote_literal(left(r.id, 100));
  ELSE
    BEGIN
      PERFORM stripe_billing.stripe_api('GET', r.path);   -- applied as a snapshot
    EXCEPTION WHEN SQLSTATE 'SBA01' THEN
      -- gone at Stripe (or not readable with this key): nothing to heal
      GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL;
      IF (stripe_billing._api_error(error_detail)).code IS DISTINCT FROM 'resource_missing' THEN
        RAISE;
      END IF;
    END;
  END IF;
  -- a snapshot of the same second as the tie cannot settle it: do not ask again
  EXECUTE format('UPDATE stripe_billing.%I SET refetch = false WHERE id = $1 AND refetch', r.tab) USING r.id;
  RETURN true;
END
$$;

-- new: stripe_billing._retry_due()
CREATE FUNCTION stripe_billing._retry_due() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  retried integer;
BEGIN
  -- (the state's row first, as a page takes it: see locks.c)
  UPDATE stripe_billing.sync_state SET last_retry_at = now()
   WHERE last_retry_at IS NULL OR last_retry_at < now() - interval '5 minutes';
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  SELECT count(*) INTO retried FROM stripe_billing.stripe_retry_failed_events(100);
  RETURN retried;
END
$$;

-- new: stripe_billing._send_usage_due()
CREATE FUNCTION stripe_billing._send_usage_due() RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT stripe_billing.stripe_send_usage(
      CASE current_setting('stripe_billing.usage_api') WHEN 'v1' THEN 100 ELSE 1000 END)
$$;

-- changed: stripe_billing._worker_step(text, text)
CREATE OR REPLACE FUNCTION stripe_billing._worker_step(step text, error text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  backfilled record;
  reconciled record;
BEGIN
  CASE step
  WHEN 'ready' THEN
    RETURN NOT (SELECT paused FROM stripe_billing.sync_state);
  WHEN 'no_key' THEN
    UPDATE stripe_billing.sync_state
       SET last_error = 'stripe_billing.api_key is not set', last_error_at = now()
     WHERE last_error IS DISTINCT FROM 'stripe_billing.api_key is not set';
    RETURN false;
  WHEN 'failed' THEN
    UPDATE stripe_billing.sync_state
       SET last_error = error, last_error_at = now(), consecutive_failures = consecutive_failures + 1;
    RETURN false;
  WHEN 'poll' THEN
    -- first start in this database: the cursor is taken now, then the
    -- account's objects are backfilled while events are pulled from it
    -- (the backfill's rows first, as stripe_backfill takes them before the
    -- locks of what it applies: see locks.c)
    IF current_setting('stripe_billing.backfill_on_start')::boolean
       AND (SELECT event_cursor IS NULL AND lookback_after IS NULL FROM stripe_billing.sync_state)
       AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state) THEN
      PERFORM stripe_billing._backfill_begin(NULL);
    END IF;
    RETURN (stripe_billing._poll_page(true)).has_more;
  WHEN 'backfill' THEN
    SELECT * INTO backfilled FROM stripe_billing._backfill_step(NULL, true);
    IF backfilled.failed THEN
      RAISE WARNING '%', backfilled.message;
    END IF;
    RETURN backfilled.kind IS NOT NULL AND NOT backfilled.failed;
  WHEN 'reconcile' THEN
    IF stripe_billing._reconcile_due() THEN
      PERFORM stripe_billing._reconcile_begin('scheduled');
    END IF;
    SELECT * INTO reconciled FROM stripe_billing._reconcile_step();
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
  END CASE;
END
$$;

-- new: stripe_billing._procedure_step(text, jsonb)
CREATE FUNCTION stripe_billing._procedure_step(step text, arg jsonb DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_procedure_step'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._procedure_step_run(text, jsonb)
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
  WHEN 'backfill.begin' THEN
    PERFORM stripe_billing._backfill_begin(kinds);
    RETURN NULL;
  WHEN 'backfill.step' THEN
    SELECT * INTO r FROM stripe_billing._backfill_step(kinds);
    RETURN to_jsonb(r);
  WHEN 'reconcile.begin' THEN
    RETURN to_jsonb(stripe_billing._reconcile_begin(arg->>'reason'));
  WHEN 'reconcile.step' THEN
    SELECT * INTO r FROM stripe_billing._reconcile_step();
    RETURN to_jsonb(r);
  END CASE;
END
$$;

-- changed: stripe_billing.stripe_sync_now(integer)
CREATE OR REPLACE PROCEDURE stripe_billing.stripe_sync_now(INOUT events integer DEFAULT NULL)
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
END
$$;

-- changed: stripe_billing._backfill_page(text, text, timestamptz)
CREATE OR REPLACE FUNCTION stripe_billing._backfill_page(kind text, list_cursor text, since timestamptz,
                                              OUT objects integer, OUT requests integer,
                                              OUT next_cursor text, OUT has_more boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  l record;
  c record;
  data jsonb;
  items jsonb;
  customers text[];
  taken_at timestamptz;
  summaries jsonb;
  snapshot timestamptz;
  path text;
  params jsonb;
  ahead constant integer := 3;   -- entitlements: customers' requests kept in flight
BEGIN
  objects := 0;
  requests := 0;
  next_cursor := list_cursor;
  has_more := false;
  IF kind = 'entitlements' THEN
    -- no list spans customers: twenty customers a page, each applied as it
    -- comes, while the requests of the next few (ahead) travel, also past
    -- this page (the next call takes them); their users' features are
    -- derived at the end, at once
    SELECT array_agg(customer ORDER BY customer) INTO customers
      FROM (SELECT DISTINCT s.customer FROM stripe_billing.subscriptions s
             WHERE s.status NOT IN ('canceled', 'incomplete_expired') AND s.customer IS NOT NULL
               AND s.customer > coalesce(list_cursor, '')
             ORDER BY 1 LIMIT 20 + ahead) c;
    has_more := coalesce(cardinality(customers), 0) > 20;
    FOR i IN 1 .. least(coalesce(cardinality(customers), 0), ahead) LOOP
      PERFORM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                            jsonb_build_object('customer', customers[i], 'limit', 100));
    END LOOP;
    summaries := '[]';
    FOR i IN 1 .. least(coalesce(cardinality(customers), 0), 20) LOOP
      items := '[]';
      taken_at := NULL;
      LOOP
        SELECT * INTO l FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
            jsonb_strip_nulls(jsonb_build_object('customer', customers[i], 'limit', 100,
                                                 'starting_after', items->-1->>'id')),
            CASE WHEN items = '[]' AND i + ahead <= cardinality(customers)
                 THEN jsonb_build_object('customer', customers[i + ahead], 'limit', 100) ELSE 'null' END);
        requests := requests + 1;
        taken_at := coalesce(taken_at, l.snapshot);   -- (the first page's: the summary is no newer)
        items := items || coalesce(l.page->'data', '[]');
        EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
      END LOOP;
      summaries := summaries || jsonb_build_array(jsonb_build_object(
          'object', 'entitlements.active_entitlement_summary', 'customer', customers[i],
          'entitlements', jsonb_build_object('object', 'list', 'has_more', false, 'data', items)));
      snapshot := least(snapshot, taken_at);
      objects := objects + 1;
      next_cursor := customers[i];
    END LOOP;
    -- applied at once, as of the oldest answer (each summary is no newer):
    -- one unit, its locks taken together (see locks.c)
    IF objects > 0 THEN
      PERFORM stripe_billing._apply_snapshots(summaries, snapshot, 'backfill', derive => false);
      PERFORM stripe_billing._refresh_customers_features(customers[1:20],
                                                         'entitlements.active_entitlement_summary.backfill');
    END IF;
    RETURN;
  END IF;

  path := CASE kind WHEN 'products' THEN '/v1/products' WHEN 'prices' THEN '/v1/prices'
                    WHEN 'customers' THEN '/v1/customers' WHEN 'subscriptions' THEN '/v1/subscriptions'
                    WHEN 'invoices' THEN '/v1/invoices' END;
  params := jsonb_strip_nulls(jsonb_build_object(
      'limit', 100, 'starting_after', list_cursor,
      -- (products and prices: active and inactive alike when not asked for one)
      'status', CASE WHEN kind = 'subscriptions' THEN 'all' END,
      'created', CASE WHEN kind = 'invoices'
                      THEN jsonb_build_object('gte', floor(extract(epoch FROM since))::bigint) END));
  -- the next page travels while this one is applied (for subscriptions,
  -- and while their cut-short item lists are read)
  SELECT * INTO l FROM stripe_billing._list_page(path, params,
                                                 CASE WHEN kind = 'subscriptions' THEN 'null'::jsonb END);
  requests := 1;
  data := coalesce(l.page->'data', '[]');
  has_more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
  SELECT NULL::jsonb AS complete, 0 AS requests INTO c;
  IF kind = 'subscriptions' THEN
    IF has_more THEN
      PERFORM stripe_billing._list_prefetch(path, params || jsonb_build_object('starting_after', data->-1->>'id'));
    END IF;
    SELECT * INTO c FROM stripe_billing._complete_items(data);
    requests := requests + c.requests;
  END IF;
  PERFORM stripe_billing._apply_snapshots(data, l.snapshot, 'backfill', c.complete);
  objects := jsonb_array_length(data);
  next_cursor := coalesce(data->-1->>'id', list_cursor);
END
$$;

-- changed: stripe_billing.stripe_backfill(text[])
CREATE OR REPLACE PROCEDURE stripe_billing.stripe_backfill(kinds text[] DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause: a procedure with one may not commit; every type, call
-- and operator below is qualified, and each step runs through
-- _procedure_step, see stripe_sync_now)
AS $$
DECLARE
  step pg_catalog.jsonb;
  failures pg_catalog.text[] := '{}';
BEGIN
  PERFORM stripe_billing._procedure_step('backfill.begin', pg_catalog.jsonb_build_object('kinds', kinds));
  COMMIT;
  LOOP
    step := stripe_billing._procedure_step('backfill.step', pg_catalog.jsonb_build_object('kinds', kinds));
    EXIT WHEN step OPERATOR(pg_catalog.->>) 'kind' IS NULL;
    RAISE NOTICE '%', step OPERATOR(pg_catalog.->>) 'message';
    IF (step OPERATOR(pg_catalog.->>) 'failed')::pg_catalog.bool THEN
      failures := pg_catalog.array_append(failures, step OPERATOR(pg_catalog.->>) 'message');
    END IF;
    COMMIT;
  END LOOP;
  IF pg_catalog.cardinality(failures) OPERATOR(pg_catalog.>) 0 THEN
    RAISE EXCEPTION 'stripe_billing backfill: % kind(s) failed', pg_catalog.cardinality(failures)
          USING DETAIL = pg_catalog.array_to_string(failures, E'\n'),
                HINT = 'See stripe_billing.backfill_status; CALL stripe_billing.stripe_backfill() again resumes them.';
  END IF;
END
$$;

-- changed: stripe_billing._reconcile_compare(bigint, text, jsonb, timestamptz, jsonb)
CREATE OR REPLACE FUNCTION stripe_billing._reconcile_compare(run_id bigint, object_type text, data jsonb,
                                                  snapshot timestamptz, complete jsonb DEFAULT '{}',
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
        WHERE o->>'id' = ANY (ids)));
  IF object_type = 'subscription' THEN
    UPDATE stripe_billing.subscriptions SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
    UPDATE stripe_billing.subscription_items SET last_event_created = NULL
     WHERE subscription = ANY (ids) AND last_event_created < snapshot;
  ELSE
    UPDATE stripe_billing.customers SET last_event_created = NULL
     WHERE id = ANY (ids) AND last_event_created < snapshot;
  END IF;
  outcomes := stripe_billing._apply_snapshots(
      (SELECT jsonb_agg(o) FROM jsonb_array_elements(data) o WHERE o->>'id' = ANY (ids)),
      snapshot, 'reconcile', complete)->'outcomes';

  -- a customer whose metadata names a user and has no link gets it; one
  -- linked to another user keeps that link (an explicit link wins)
  IF object_type = 'customer' THEN
    PERFORM stripe_billing._link_customer(g.object_id, g.stripe_value, true, 'customer.reconcile')
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

-- changed: stripe_billing.stripe_reconcile()
CREATE OR REPLACE PROCEDURE stripe_billing.stripe_reconcile()
LANGUAGE plpgsql
-- (no SET clause, so that it may commit: every type, call and operator
-- below is qualified, and each step runs through _procedure_step, see
-- stripe_sync_now)
AS $$
DECLARE
  step pg_catalog.jsonb;
BEGIN
  PERFORM stripe_billing._procedure_step('reconcile.begin', '{"reason": "manual"}');
  COMMIT;
  LOOP
    step := stripe_billing._procedure_step('reconcile.step');
    EXIT WHEN step OPERATOR(pg_catalog.->>) 'run' IS NULL;
    RAISE NOTICE '%', step OPERATOR(pg_catalog.->>) 'message';
    COMMIT;
    IF (step OPERATOR(pg_catalog.->>) 'failed')::pg_catalog.bool THEN
      RAISE EXCEPTION '%', step OPERATOR(pg_catalog.->>) 'message'
            USING HINT = 'See stripe_billing.reconcile_status; CALL stripe_billing.stripe_reconcile() starts again.';
    END IF;
  END LOOP;
END
$$;

-- gone: stripe_billing._reapply_event(text)
DROP FUNCTION stripe_billing._reapply_event(text);

-- gone: stripe_billing._apply_polled(jsonb)
DROP FUNCTION stripe_billing._apply_polled(jsonb);

-- gone: stripe_billing._refetch_marked(integer)
DROP FUNCTION stripe_billing._refetch_marked(integer);

-- gone: stripe_billing._sync_duties()
DROP FUNCTION stripe_billing._sync_duties();

-- Internal functions are for the extension's own calls only, but the gate
-- of the committing procedures' steps (see _procedure_step).
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
GRANT EXECUTE ON FUNCTION stripe_billing._procedure_step(text, jsonb) TO PUBLIC;
