
--------------------------------------------------------------------------
-- Thin events (event destinations)
--
-- A thin event is a signed notification without object state ({"object":
-- "v2.core.event", id, type, created, context, related_object}).  The
-- webhook route only records it, outcome 'pending' (events.c), and never
-- waits on Stripe; the worker (or CALL stripe_sync_now()) fetches it, GET
-- /v2/core/events/{id} and then the related object, in the event's context
-- (Stripe-Context), and applies what it fetched as a snapshot taken at the
-- fetch (Stripe's Date header), through the same mapping and ordering rules
-- as any event.  A fetch that fails is retried with a backoff; an event
-- Stripe no longer has (404: it keeps them 30 days) is failed with the
-- reason.  Meter error reports mark the usage rows they concern.  With
-- stripe_billing.thin_events on, the worker also lists GET /v2/core/events,
-- so that a thin event whose notification was lost is recorded all the
-- same.
--------------------------------------------------------------------------

-- The pending thin events, oldest first, for the worker.
CREATE INDEX events_pending_idx ON stripe_billing.events (created, id) WHERE outcome = 'pending';

-- The fetches of each thin event: how many attempts, when the next one is
-- due after a failure (a backoff: 1 s, doubling, at most an hour) and why
-- the last one failed; done_at: when the event's outcome was settled.
CREATE TABLE stripe_billing.thin_fetches (
    event_id        text PRIMARY KEY,
    attempts        integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    last_error      text,
    done_at         timestamptz
);
COMMENT ON TABLE stripe_billing.thin_fetches IS
    'The worker''s fetches of thin events (stripe_billing.events rows of object v2.core.event): attempts, backoff, last error';
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.thin_fetches', '');

-- Listing GET /v2/core/events (stripe_billing.thin_events): the cursor is
-- the newest created time listed; each listing starts poll_lookback before
-- it (events listed late), never before where listing started
-- (lookback_after) nor past Stripe's 30 days, and goes down page by page
-- (page: the next page's token, while a listing is under way; newest: the
-- newest time it has listed so far).
CREATE TABLE stripe_billing.thin_poll_state (
    account          text,            -- NULL: the platform's
    cursor_created   timestamptz,
    lookback_after   timestamptz,
    page             text,
    listing_newest   timestamptz,
    last_poll_at     timestamptz,
    last_success_at  timestamptz,
    events_listed    bigint NOT NULL DEFAULT 0,
    CONSTRAINT thin_poll_state_account_key UNIQUE NULLS NOT DISTINCT (account)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.thin_poll_state', '');

-- What the worker does with a thin event of this type and related object
-- type (see kinds.c): ignored, ping, object, snapshot_event, application or
-- meter_errors, and the kind of object it applies.
CREATE FUNCTION stripe_billing._thin_mapping(type text, related_type text, OUT action text, OUT kind text)
AS 'MODULE_PATHNAME', 'stripe_thin_mapping'
LANGUAGE C IMMUTABLE
SET search_path = pg_catalog, pg_temp;

-- One GET in a thin event's context, its answer whatever it is (thin.c).
CREATE FUNCTION stripe_billing._thin_get(path text, params jsonb, context text) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_thin_get'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- The path of a related object's url: under /v1 or /v2 of api_base only.
CREATE FUNCTION stripe_billing._thin_related_path(url text) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_thin_related_path'
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;

-- Applies a fetched object as a snapshot for a thin event and records its
-- outcome (events.c).
CREATE FUNCTION stripe_billing._apply_thin_object(event_id text, object jsonb, snapshot timestamptz,
                                                  ev_type text, account text) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_apply_thin_object'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- A connected account as Accounts v2 shows it (v2.core.account.* thin
-- events, Connect): what stripe_billing.accounts keeps of it.  Fields the
-- object leaves out (it shows identity, defaults, requirements and
-- configurations when asked to) keep what was known; the dashboard stands
-- for the type (full: standard, express, none: custom).
CREATE FUNCTION stripe_billing._apply_v2_account(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                 ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.accounts AS t
         (id, business_name, country, default_currency, charges_enabled, payouts_enabled,
          requirements_due, type, controller, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', coalesce(o->>'display_name', o->'identity'->'business_details'->>'registered_name'),
          o->'identity'->>'country', o->'defaults'->>'currency',
          (o->'configuration'->'merchant'->'capabilities'->'card_payments'->>'status') = 'active',
          (o->'configuration'->'merchant'->'capabilities'->'stripe_balance'->'payouts'->>'status') = 'active',
          CASE WHEN o->'requirements' ? 'entries' THEN
            ARRAY(SELECT r->>'description' FROM jsonb_array_elements(o->'requirements'->'entries') r
                   WHERE r->'minimum_deadline'->>'status' IN ('currently_due', 'past_due')) END,
          CASE o->>'dashboard' WHEN 'full' THEN 'standard' WHEN 'express' THEN 'express' WHEN 'none' THEN 'custom' END,
          CASE WHEN o ? 'dashboard' THEN jsonb_strip_nulls(jsonb_build_object(
                 'dashboard', o->'dashboard', 'responsibilities', o->'defaults'->'responsibilities')) END,
          (o->>'created')::timestamptz, o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         business_name = coalesce(EXCLUDED.business_name, t.business_name),
         country = coalesce(EXCLUDED.country, t.country),
         default_currency = coalesce(EXCLUDED.default_currency, t.default_currency),
         charges_enabled = coalesce(EXCLUDED.charges_enabled, t.charges_enabled),
         payouts_enabled = coalesce(EXCLUDED.payouts_enabled, t.payouts_enabled),
         requirements_due = coalesce(EXCLUDED.requirements_due, t.requirements_due),
         type = coalesce(EXCLUDED.type, t.type), controller = coalesce(EXCLUDED.controller, t.controller),
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- How long a thin event waits after its n-th failed fetch: 1 s, doubling,
-- at most an hour.
CREATE FUNCTION stripe_billing._thin_backoff(attempts integer) RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT make_interval(secs => least(3600, 2 ^ least(greatest(attempts, 1) - 1, 12)))
$$;

-- What an answer of _thin_get says: ok (a JSON object), gone (404: Stripe
-- no longer has it), retry (no answer, an answer that is not JSON, 401,
-- 408, 409, 429, 5xx, or Stripe-Should-Retry: true) or refused (any other:
-- asking again would get the same), and a message saying so.
CREATE FUNCTION stripe_billing._thin_verdict(answer jsonb, OUT verdict text, OUT message text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  status integer := (answer->>'status')::integer;
  err jsonb := answer->'body'->'error';
BEGIN
  message := CASE WHEN status = 0 THEN coalesce(answer->>'error', 'no answer')
                  ELSE format('HTTP %s%s%s%s', status, ': ' || (err->>'message'), ' (' || (err->>'code') || ')',
                              ', request ' || (answer->>'request_id')) END;
  verdict := CASE WHEN status / 100 = 2 AND jsonb_typeof(answer->'body') = 'object' THEN 'ok'
                  WHEN status / 100 = 2 THEN 'retry'
                  WHEN status = 404 THEN 'gone'
                  WHEN answer->>'should_retry' = 'true' THEN 'retry'
                  WHEN answer->>'should_retry' = 'false' THEN 'refused'
                  WHEN status = 403 AND err->>'code' = 'account_invalid' THEN 'refused'
                  WHEN status IN (0, 401, 403, 408, 409, 429) OR status >= 500 THEN 'retry'
                  ELSE 'refused' END;
  IF status / 100 = 2 AND verdict = 'retry' THEN
    message := format('HTTP %s: the answer is not a JSON object', status);
  END IF;
END
$$;

-- A time of a v2 object: RFC 3339 (as API v2 writes times), or Unix
-- seconds (as some SDKs type the meter reports' windows); NULL when it is
-- neither.
CREATE FUNCTION stripe_billing._thin_time(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF value ~ '^\d{1,11}$' THEN
    RETURN to_timestamp(value::bigint);
  END IF;
  IF value !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$' THEN
    RETURN NULL;
  END IF;
  RETURN value::timestamptz;
EXCEPTION WHEN data_exception THEN
  RETURN NULL;
END
$$;

-- The sample errors of a meter error report (a fetched
-- v1.billing.meter.error_report_triggered or no_meter_found event): each
-- one's code, message, and the usage row its request identifier names (our
-- identifiers are sb_<installation>_<row id>), or NULL.
CREATE FUNCTION stripe_billing._thin_samples(ev jsonb, OUT code text, OUT message text, OUT row_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT t->>'code', s->>'error_message',
         CASE WHEN left(s->'request'->>'identifier', length(p.prefix)) = p.prefix
                   AND substr(s->'request'->>'identifier', length(p.prefix) + 1) ~ '^[0-9]{1,18}$'
              THEN substr(s->'request'->>'identifier', length(p.prefix) + 1)::bigint END
    FROM (SELECT 'sb_' || stripe_billing.stripe_installation_id() || '_' AS prefix) p,
         jsonb_array_elements(CASE WHEN jsonb_typeof(ev->'data'->'reason'->'error_types') = 'array'
                                   THEN ev->'data'->'reason'->'error_types' ELSE '[]' END) t,
         jsonb_array_elements(CASE WHEN jsonb_typeof(t->'sample_errors') = 'array'
                                   THEN t->'sample_errors' ELSE '[]' END) s
$$;

-- Marks the usage rows a meter error report concerns (the fetched event
-- ev, of the meter whose event name is meter_event_name when known), with
-- Stripe's code and message, and returns how many:
--   identifier  the rows its sample errors name, of the event's account;
--   customer    for codes about the customer (meter_event_customer_not_found,
--               meter_event_no_customer_defined): the other rows of the
--               same user and meter sent within the report's validation
--               window (a minute's margin each side), which fail for the
--               same cause;
--   meter       for codes about the meter (archived_meter, no_meter): every
--               row of that meter sent within the window.
-- Codes about one event's value or time mark only the rows named.  A row
-- keeps the latest report that marked it.
CREATE FUNCTION stripe_billing._thin_mark_usage(event_id text, ev jsonb, meter_event_name text, account text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  vstart timestamptz := stripe_billing._thin_time(ev->'data'->>'validation_start');
  vend timestamptz := stripe_billing._thin_time(ev->'data'->>'validation_end');
  margin constant interval := interval '1 minute';
  named integer;
  widened integer := 0;
BEGIN
  UPDATE stripe_billing.usage_outbox o
     SET stripe_error_code = s.code, stripe_error = s.message, stripe_error_event = event_id,
         stripe_error_at = now(), stripe_error_match = 'identifier'
    FROM (SELECT DISTINCT ON (x.row_id) x.row_id, x.code, x.message FROM stripe_billing._thin_samples(ev) x
           WHERE x.row_id IS NOT NULL ORDER BY x.row_id, x.code) s
   WHERE o.id = s.row_id AND o.account IS NOT DISTINCT FROM _thin_mark_usage.account;
  GET DIAGNOSTICS named = ROW_COUNT;

  IF vstart IS NOT NULL AND vend IS NOT NULL THEN
    WITH cause AS (
      -- (the rows named, with what their code says of the others)
      SELECT DISTINCT ON (o.user_ref, o.event_name, x.code) o.user_ref, o.event_name, x.code, x.message,
             CASE WHEN x.code IN ('meter_event_customer_not_found', 'meter_event_no_customer_defined')
                  THEN 'customer' ELSE 'meter' END AS scope
        FROM stripe_billing._thin_samples(ev) x JOIN stripe_billing.usage_outbox o ON o.id = x.row_id
       WHERE o.account IS NOT DISTINCT FROM _thin_mark_usage.account
         AND x.code IN ('meter_event_customer_not_found', 'meter_event_no_customer_defined',
                        'archived_meter', 'no_meter')
       ORDER BY o.user_ref, o.event_name, x.code
    )
    UPDATE stripe_billing.usage_outbox o
       SET stripe_error_code = c.code, stripe_error = c.message, stripe_error_event = event_id,
           stripe_error_at = now(), stripe_error_match = c.scope
      FROM cause c
     WHERE o.account IS NOT DISTINCT FROM _thin_mark_usage.account
       AND o.event_name = coalesce(meter_event_name, c.event_name)
       AND (c.scope = 'meter' OR o.user_ref = c.user_ref)
       AND o.sent_at BETWEEN vstart - margin AND vend + margin
       AND o.stripe_error_event IS DISTINCT FROM event_id;
    GET DIAGNOSTICS widened = ROW_COUNT;
  END IF;
  RETURN named + widened;
END
$$;

-- Fetches one thin event, and applies what it fetched; returns what to
-- record: {"retry": true, "error": ...} to try again later, or
-- {"done": true} once the outcome is set on the ledger row (locked by the
-- caller, _thin_fetch_one).
CREATE FUNCTION stripe_billing._thin_process(event_id text, event_type text, payload jsonb, account text,
                                             created timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  m record := stripe_billing._thin_mapping(event_type, payload->'related_object'->>'type');
  ctx text := payload->>'context';
  ev jsonb;
  answer jsonb;
  v record;
  related jsonb;
  path text;
  snapshot_id text;
  meter_name text;
  snapshot_type text := CASE WHEN event_type LIKE 'v1.%' THEN substr(event_type, 4) ELSE event_type END;
  done constant jsonb := '{"done": true}';
BEGIN
  IF m.action IN ('ignored', 'ping') THEN
    -- (a thin event recorded pending, replayed or retried when its type is not fetched)
    UPDATE stripe_billing.events e SET outcome = CASE m.action WHEN 'ping' THEN 'applied' ELSE 'ignored' END,
           error = NULL
     WHERE e.id = event_id;
    RETURN done;
  END IF;
  IF ctx IS NOT NULL AND account IS NULL THEN
    UPDATE stripe_billing.events e
       SET outcome = 'failed', error = format('its context %s names no connected account', ctx)
     WHERE e.id = event_id;
    RETURN done;
  END IF;
  IF event_id !~ '^[A-Za-z0-9_]{1,255}$' THEN
    UPDATE stripe_billing.events e
       SET outcome = 'failed', error = 'its id is not a Stripe id (letters, digits and "_"): it cannot be fetched'
     WHERE e.id = event_id;
    RETURN done;
  END IF;

  -- the event
  answer := stripe_billing._thin_get('/v2/core/events/' || event_id, NULL::jsonb, ctx);
  v := stripe_billing._thin_verdict(answer);
  IF v.verdict = 'retry' THEN
    RETURN jsonb_build_object('retry', true, 'error', format('GET /v2/core/events/%s: %s', event_id, v.message));
  ELSIF v.verdict = 'gone' THEN
    UPDATE stripe_billing.events e
       SET outcome = 'failed',
           error = format('Stripe no longer has this event (GET /v2/core/events/%s: %s); it keeps events 30 days',
                          event_id, v.message)
     WHERE e.id = event_id;
    RETURN done;
  ELSIF v.verdict = 'refused' THEN
    UPDATE stripe_billing.events e
       SET outcome = 'failed', error = format('GET /v2/core/events/%s: %s', event_id, v.message)
     WHERE e.id = event_id;
    RETURN done;
  END IF;
  ev := answer->'body';
  related := CASE WHEN jsonb_typeof(ev->'related_object') = 'object' THEN ev->'related_object'
                  WHEN jsonb_typeof(payload->'related_object') = 'object' THEN payload->'related_object' END;

  CASE m.action
  WHEN 'meter_errors' THEN
    -- the meter's event name (error_report_triggered names the meter)
    IF related->>'url' IS NOT NULL THEN
      BEGIN
        answer := stripe_billing._thin_get(stripe_billing._thin_related_path(related->>'url'), NULL::jsonb, ctx);
      EXCEPTION WHEN invalid_parameter_value THEN
        answer := NULL;
      END;
      v := stripe_billing._thin_verdict(answer);
      IF v.verdict = 'retry' THEN
        RETURN jsonb_build_object('retry', true, 'error', format('GET %s: %s', related->>'url', v.message));
      ELSIF v.verdict = 'ok' THEN
        meter_name := answer->'body'->>'event_name';
      END IF;
    END IF;
    PERFORM stripe_billing._thin_mark_usage(event_id, ev, meter_name, account);
    UPDATE stripe_billing.events e SET outcome = 'applied', error = NULL WHERE e.id = event_id;

  WHEN 'application' THEN
    -- (the application's events name their account and time, no object to fetch)
    PERFORM stripe_billing._apply_thin_object(event_id,
              jsonb_build_object('object', 'application', 'id', coalesce(related->>'id', 'application')),
              created, snapshot_type, account);

  WHEN 'snapshot_event' THEN
    -- no related object (an entitlement summary): the snapshot event's object, as of that event
    snapshot_id := ev->>'snapshot_event';
    IF snapshot_id IS NULL OR snapshot_id !~ '^[A-Za-z0-9_]{1,255}$' THEN
      UPDATE stripe_billing.events e
         SET outcome = 'ignored',
             error = 'it names no related object and no snapshot event: there is nothing to fetch'
       WHERE e.id = event_id;
      RETURN done;
    END IF;
    answer := stripe_billing._thin_get('/v1/events/' || snapshot_id, NULL::jsonb, ctx);
    v := stripe_billing._thin_verdict(answer);
    IF v.verdict = 'retry' THEN
      RETURN jsonb_build_object('retry', true, 'error', format('GET /v1/events/%s: %s', snapshot_id, v.message));
    ELSIF v.verdict <> 'ok' OR jsonb_typeof(answer->'body'->'data'->'object') IS DISTINCT FROM 'object'
          OR jsonb_typeof(answer->'body'->'created') IS DISTINCT FROM 'number' THEN
      UPDATE stripe_billing.events e
         SET outcome = 'failed', error = format('GET /v1/events/%s: %s', snapshot_id,
                                                CASE WHEN v.verdict = 'ok' THEN 'not an event with data.object'
                                                     ELSE v.message END)
       WHERE e.id = event_id;
      RETURN done;
    END IF;
    PERFORM stripe_billing._apply_thin_object(event_id, answer->'body'->'data'->'object',
              to_timestamp((answer->'body'->>'created')::bigint), snapshot_type, account);

  ELSE    -- 'object': the related object, as of the fetch
    BEGIN
      path := stripe_billing._thin_related_path(coalesce(related->>'url', ''));
    EXCEPTION WHEN invalid_parameter_value OR null_value_not_allowed THEN
      UPDATE stripe_billing.events e
         SET outcome = 'failed', error = format('its related object cannot be fetched: %s', SQLERRM)
       WHERE e.id = event_id;
      RETURN done;
    END;
    answer := stripe_billing._thin_get(path,
                CASE WHEN m.kind = 'v2.core.account' THEN
                  '{"include": ["configuration.merchant", "defaults", "identity", "requirements"]}'::jsonb END, ctx);
    v := stripe_billing._thin_verdict(answer);
    IF v.verdict = 'retry' THEN
      RETURN jsonb_build_object('retry', true, 'error', format('GET %s: %s', path, v.message));
    ELSIF v.verdict = 'gone' AND m.kind IN ('customer', 'product', 'price', 'plan', 'invoice')
          AND related->>'id' IS NOT NULL THEN
      -- deleted since: a tombstone, as of the fetch
      PERFORM stripe_billing._apply_thin_object(event_id,
                jsonb_build_object('id', related->>'id', 'object', m.kind, 'deleted', true),
                to_timestamp((answer->>'date')::bigint), snapshot_type, account);
    ELSIF v.verdict = 'gone' THEN
      UPDATE stripe_billing.events e
         SET outcome = 'stale',
             error = format('its related object is gone at Stripe (GET %s: %s): nothing to apply', path, v.message)
       WHERE e.id = event_id;
    ELSIF v.verdict = 'refused' THEN
      UPDATE stripe_billing.events e SET outcome = 'failed', error = format('GET %s: %s', path, v.message)
       WHERE e.id = event_id;
    ELSE
      PERFORM stripe_billing._apply_thin_object(event_id, answer->'body', to_timestamp((answer->>'date')::bigint),
                                                snapshot_type, account);
    END IF;
  END CASE;
  RETURN done;
END
$$;

-- Fetches the oldest pending thin event that is due (none waiting for its
-- backoff), in the caller's transaction: its ledger row is locked first
-- (another session's fetch of it is skipped), then what it fetched is
-- applied, taking the objects' keys (locks.c); false when none is due.  A
-- fetch that fails on the network, a 429 or 5xx is tried again after a
-- backoff; one past Stripe's 30 days is failed instead.  Errors about the
-- moment (cancel, serialization) are raised; any other is the event's
-- attempt, retried after its backoff.
CREATE FUNCTION stripe_billing._thin_fetch_one() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  e record;
  result jsonb;
BEGIN
  SELECT l.id, l.type, l.payload, l.account, l.created INTO e
    FROM stripe_billing.events l
    LEFT JOIN stripe_billing.thin_fetches f ON f.event_id = l.id
   WHERE l.outcome = 'pending' AND (f.next_attempt_at IS NULL OR f.next_attempt_at <= now())
   ORDER BY l.created, l.id
   LIMIT 1
     FOR UPDATE OF l SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  BEGIN
    result := stripe_billing._thin_process(e.id, e.type, e.payload, e.account, e.created);
  EXCEPTION WHEN OTHERS THEN
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58', 'XX') OR SQLSTATE = '55P03' THEN
      RAISE;
    END IF;
    result := jsonb_build_object('retry', true, 'error', SQLERRM);
  END;
  IF result ? 'retry' THEN
    IF e.created < now() - interval '30 days' THEN
      UPDATE stripe_billing.events l
         SET outcome = 'failed',
             error = format('not fetched within Stripe''s 30 days of events: %s', result->>'error')
       WHERE l.id = e.id;
      result := '{"done": true}';
    ELSE
      RAISE LOG 'stripe_billing: fetching thin event % failed, tried again later: %', e.id, result->>'error';
    END IF;
  END IF;
  INSERT INTO stripe_billing.thin_fetches AS f
         (event_id, attempts, last_attempt_at, next_attempt_at, last_error, done_at)
  VALUES (e.id, 1, now(), CASE WHEN result ? 'retry' THEN now() + stripe_billing._thin_backoff(1) END,
          result->>'error', CASE WHEN result ? 'done' THEN clock_timestamp() END)
  ON CONFLICT (event_id) DO UPDATE
     SET attempts = f.attempts + 1, last_attempt_at = now(),
         next_attempt_at = CASE WHEN result ? 'retry' THEN now() + stripe_billing._thin_backoff(f.attempts + 1) END,
         last_error = EXCLUDED.last_error, done_at = EXCLUDED.done_at;
  RETURN true;
END
$$;

-- Lists GET /v2/core/events (when stripe_billing.thin_events is on) and
-- records each thin event the ledger lacks, as pending (or ignored), so
-- that one whose notification was lost is fetched all the same: from the
-- cursor (the newest time listed) less poll_lookback (events Stripe lists
-- late; never before where listing started, nor past Stripe's 30 days),
-- newest first, page by page (up to 10 a call: the page token is kept in
-- between), a duplicate of a recorded event changing nothing.  The
-- platform's events (connected accounts' are polled through /v1/events).
-- Returns whether pages wait.
CREATE FUNCTION stripe_billing._thin_poll() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  lookback interval := current_setting('stripe_billing.poll_lookback')::interval;
  st stripe_billing.thin_poll_state;
  answer jsonb;
  v record;
  params jsonb;
  data jsonb;
  next_url text;
  newest timestamptz;
BEGIN
  IF NOT current_setting('stripe_billing.thin_events')::boolean THEN
    RETURN false;
  END IF;
  INSERT INTO stripe_billing.thin_poll_state (account) VALUES (NULL) ON CONFLICT (account) DO NOTHING;
  SELECT * INTO st FROM stripe_billing.thin_poll_state s WHERE s.account IS NULL FOR UPDATE;
  UPDATE stripe_billing.thin_poll_state s SET last_poll_at = now() WHERE s.account IS NULL;
  IF st.cursor_created IS NULL THEN
    -- first listing: from now on (the events before came by webhook, and
    -- /v1/events covers the snapshot events of the same changes)
    UPDATE stripe_billing.thin_poll_state s
       SET cursor_created = now(), lookback_after = now(), last_success_at = now()
     WHERE s.account IS NULL;
    RETURN false;
  END IF;
  FOR page_no IN 1 .. 10 LOOP
    params := CASE WHEN st.page IS NOT NULL THEN jsonb_build_object('page', st.page)
                   ELSE jsonb_build_object('limit', 100, 'created', jsonb_build_object('gte',
                          to_char(greatest(st.cursor_created - lookback, st.lookback_after,
                                           now() - interval '30 days' + interval '1 hour') AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) END;
    answer := stripe_billing._thin_get('/v2/core/events', params, NULL);
    v := stripe_billing._thin_verdict(answer);
    IF v.verdict <> 'ok' AND st.page IS NOT NULL AND v.verdict <> 'retry' THEN
      -- a page token Stripe no longer takes: the listing starts again
      RAISE WARNING 'stripe_billing: listing thin events again from the cursor: GET /v2/core/events: %', v.message;
      UPDATE stripe_billing.thin_poll_state s SET page = NULL, listing_newest = NULL WHERE s.account IS NULL;
      RETURN true;
    ELSIF v.verdict <> 'ok' THEN
      RAISE EXCEPTION 'listing thin events failed: GET /v2/core/events: %', v.message USING ERRCODE = 'SBA07';
    END IF;
    data := CASE WHEN jsonb_typeof(answer->'body'->'data') = 'array' THEN answer->'body'->'data' ELSE '[]' END;
    IF jsonb_array_length(data) > 0 THEN
      -- (newest first, as listed: recorded oldest first, a malformed one skipped with a WARNING)
      PERFORM stripe_billing._apply_page(data, 'poll');
      newest := greatest(st.listing_newest,
                         (SELECT max(l.created) FROM stripe_billing.events l
                           WHERE l.id IN (SELECT d->>'id' FROM jsonb_array_elements(data) d)));
    ELSE
      newest := st.listing_newest;
    END IF;
    next_url := answer->'body'->>'next_page_url';
    IF next_url IS NULL THEN
      UPDATE stripe_billing.thin_poll_state s
         SET cursor_created = greatest(s.cursor_created, newest), page = NULL, listing_newest = NULL,
             events_listed = s.events_listed + jsonb_array_length(data), last_success_at = now()
       WHERE s.account IS NULL;
      RETURN false;
    END IF;
    st.page := substring(next_url FROM '^/v2/core/events\?page=([A-Za-z0-9_.~=-]{1,2000})$');
    IF st.page IS NULL THEN
      RAISE EXCEPTION 'listing thin events failed: next_page_url % is not a page of /v2/core/events',
                      quote_literal(left(next_url, 200)) USING ERRCODE = 'SBA07';
    END IF;
    st.listing_newest := newest;
    UPDATE stripe_billing.thin_poll_state s
       SET page = st.page, listing_newest = newest, events_listed = s.events_listed + jsonb_array_length(data)
     WHERE s.account IS NULL;
  END LOOP;
  RETURN true;
END
$$;
