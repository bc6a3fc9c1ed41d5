-- This installation's id, 16 hex digits made at CREATE EXTENSION.  Meter
-- event identifiers carry it (sb_<installation>_<row id>), so that two
-- databases billing one Stripe account, or the extension dropped and
-- created again within Stripe's de-duplication window (24 hours), never
-- send one identifier for two usages.  Dumped: a restore adds the old row
-- beside the one its own CREATE EXTENSION made, and the oldest row is the id.
CREATE TABLE stripe_billing.installation (
    id         text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
INSERT INTO stripe_billing.installation (id)
VALUES (pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16));
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.installation', '');

-- This installation's id (see installation), for every role: the table is
-- not theirs to read.
CREATE FUNCTION stripe_billing.stripe_installation_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT id FROM stripe_billing.installation ORDER BY created_at, id LIMIT 1
$$;

-- Metered usage waiting to be sent as Billing Meter Events; written in the
-- app's transaction, so usage commits or rolls back with the app's work.
-- A row is pending until sent; after a failed attempt it waits until
-- next_attempt_at (backoff); a row Stripe refuses for good is failed, and
-- only stripe_retry_failed_usage makes it pending again.  Neither kind
-- blocks the rows behind it.  A row is an account's usage (NULL: the
-- platform's own; a connected account's id: sent with its Stripe-Account
-- header, for the user's customer on that account).
CREATE TABLE stripe_billing.usage_outbox (
    id              bigserial PRIMARY KEY,
    user_ref        text NOT NULL,
    event_name      text NOT NULL,
    value           bigint NOT NULL,
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    failed_at       timestamptz,            -- refused for good (last_error says why)
    next_attempt_at timestamptz,            -- after a failed attempt: not before then
    account         text CHECK (account ~ '^acct_[A-Za-z0-9]{1,250}$'),  -- NULL: the platform's own
    -- Stripe refused it after taking it (a meter error report, a thin event):
    -- its code and message, the event that said so, when, and how the report
    -- named this row (identifier, customer or meter: see _thin_mark_usage)
    stripe_error_code  text,
    stripe_error       text,
    stripe_error_event text,
    stripe_error_at    timestamptz,
    stripe_error_match text CHECK (stripe_error_match IN ('identifier', 'customer', 'meter'))
);
CREATE INDEX usage_outbox_pending_idx ON stripe_billing.usage_outbox (id)
    WHERE sent_at IS NULL AND failed_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.usage_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.usage_outbox_id_seq', '');

-- The outbox at a glance.
CREATE VIEW stripe_billing.usage_status AS
SELECT count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) AS pending,
       count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at > now()) AS waiting,
       count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
       now() - min(created_at) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) AS oldest_pending_age,
       max(sent_at) AS last_sent_at,
       count(*) FILTER (WHERE stripe_error_at IS NOT NULL) AS stripe_errors
  FROM stripe_billing.usage_outbox;

-- Records usage for the user (of their customer on the account: NULL, the
-- platform's own); returns the outbox row id.  No HTTP.
CREATE FUNCTION stripe_billing.stripe_report_usage(user_ref text, event_name text, value bigint,
                                                   occurred_at timestamptz DEFAULT now(),
                                                   account text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  row_id bigint;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  IF coalesce(user_ref, '') = '' THEN PERFORM stripe_billing._bad_argument('user_ref', 'must not be empty'); END IF;
  IF coalesce(event_name, '') = '' THEN PERFORM stripe_billing._bad_argument('event_name', 'must not be empty'); END IF;
  IF value IS NULL THEN PERFORM stripe_billing._bad_argument('value', 'must not be NULL'); END IF;
  IF occurred_at IS NULL THEN PERFORM stripe_billing._bad_argument('occurred_at', 'must not be NULL'); END IF;
  INSERT INTO stripe_billing.usage_outbox (user_ref, event_name, value, occurred_at, account)
  VALUES (user_ref, event_name, value, occurred_at, account)
  RETURNING id INTO row_id;
  RETURN row_id;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_report_usage(text, text, bigint, timestamptz, text) FROM PUBLIC;

-- How long a usage row waits after its n-th failed attempt: 1 s, doubling,
-- at most an hour.
CREATE FUNCTION stripe_billing._usage_backoff(attempts integer) RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT make_interval(secs => least(3600, 2 ^ least(greatest(attempts, 1) - 1, 12)))
$$;

-- Marks usage rows after an attempt: 'sent', 'failed' (for good, with the
-- error) or 'retry' (after a backoff, with the error).
CREATE FUNCTION stripe_billing._usage_mark(ids bigint[], outcome text, error text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE stripe_billing.usage_outbox
     SET attempts = attempts + 1,
         sent_at = CASE WHEN outcome = 'sent' THEN now() END,
         failed_at = CASE WHEN outcome = 'failed' THEN now() END,
         next_attempt_at = CASE WHEN outcome = 'retry' THEN now() + stripe_billing._usage_backoff(attempts + 1) END,
         last_error = CASE WHEN outcome <> 'sent' THEN error END
   WHERE id = ANY (ids)
$$;

-- Sends one usage row of the account (NULL: the platform's) by POST
-- /v1/billing/meter_events, whose answer is
-- about this row alone (validated at once), and marks it.  Returns the
-- outcome.  Stripe refusing the row (400, 404) fails it; an identifier
-- Stripe already recorded (resource_already_exists) means an earlier send
-- got through; anything else (409, 429, 5xx, no
-- answer, the key refused) is not the row's fault: it waits and is tried
-- again.
CREATE FUNCTION stripe_billing._send_usage_v1(row_id bigint, event jsonb, account text) RETURNS text
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
        event->>'identifier', account);
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

-- Posts batches of meter events to the meter event stream, as the
-- account's (NULL: the platform's), with its own meter event session (see
-- usage.c).
CREATE FUNCTION stripe_billing._meter_stream_send(bodies text[], account text DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_meter_stream_send'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Sends one account's due rows (ids, with their meter events, oldest
-- first) to the meter event stream, in batches of 100; a batch Stripe
-- refuses is sent again row by row through v1, so that only the rows at
-- fault fail.  Marks the rows; returns how many were sent.
CREATE FUNCTION stripe_billing._send_usage_stream(ids bigint[], events jsonb[], account text) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  bodies text[];
  results jsonb;
  r jsonb;
  batch bigint[];
  status integer;
  per_batch constant integer := 100;
  sent integer := 0;
BEGIN
  SELECT array_agg(jsonb_build_object('events', to_jsonb(events[g * per_batch + 1 : (g + 1) * per_batch]))::text
                   ORDER BY g)
    INTO bodies
    FROM generate_series(0, (cardinality(ids) - 1) / per_batch) g;
  BEGIN
    results := stripe_billing._meter_stream_send(bodies, account);
  EXCEPTION WHEN OTHERS THEN
    -- (no key, a refused base URL: nothing was sent; every row waits)
    PERFORM stripe_billing._usage_mark(ids, 'retry', SQLERRM);
    RETURN 0;
  END;
  FOR k IN 0 .. cardinality(bodies) - 1 LOOP
    r := results->k;
    status := (r->>'status')::integer;
    batch := ids[k * per_batch + 1 : (k + 1) * per_batch];
    IF status / 100 = 2 THEN
      PERFORM stripe_billing._usage_mark(batch, 'sent', NULL);
      sent := sent + cardinality(batch);
    ELSIF status / 100 = 4 AND status NOT IN (401, 403, 409, 429) THEN
      -- refused as a whole: each row on its own, to fail only those at fault
      FOR i IN k * per_batch + 1 .. k * per_batch + cardinality(batch) LOOP
        IF stripe_billing._send_usage_v1(ids[i], events[i], account) = 'sent' THEN
          sent := sent + 1;
        END IF;
      END LOOP;
    ELSE
      PERFORM stripe_billing._usage_mark(batch, 'retry',
          format('meter event stream: %s%s', r->>'message', ' (' || (r->>'code') || ')'));
    END IF;
  END LOOP;
  RETURN sent;
END
$$;

-- Sends up to max_rows due usage rows, oldest first, as meter events whose
-- identifier is sb_<installation>_<row id>, so that a row sent but not
-- marked (a crash in between) is not counted twice; returns how many were
-- sent.  Rows Stripe cannot take are put out of the way first: a user
-- without a customer yet waits (backoff); usage older than Stripe's 35 days
-- fails.  With stripe_billing.usage_api = 'v2' (the default) the rows go in
-- batches of 100 to the meter event stream, stripe_billing.usage_concurrency
-- requests at once; a batch Stripe refuses is sent again row by row through
-- v1, so that only the rows at fault fail.  With 'v1', one request per row.
-- Each row goes with its account's Stripe-Account header (NULL: the
-- platform's, none), for the user's customer on that account: the rows are
-- sent account by account (the account of the oldest row first), each with
-- the account's own meter event session.
CREATE FUNCTION stripe_billing.stripe_send_usage(max_rows integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  prefix text;
  ids bigint[];
  events jsonb[];
  accounts text[];
  g record;
  sent integer := 0;
BEGIN
  IF max_rows IS NULL OR max_rows < 1 THEN
    PERFORM stripe_billing._bad_argument('max_rows', 'must be at least 1');
  END IF;
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines stripe_billing.usage_api)
  prefix := 'sb_' || stripe_billing.stripe_installation_id() || '_';

  WITH stuck AS (
    SELECT o.id, o.user_ref, o.account, o.occurred_at, o.occurred_at < now() - interval '35 days' AS too_old
      FROM stripe_billing.usage_outbox o
     WHERE o.sent_at IS NULL AND o.failed_at IS NULL
       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
       AND (o.occurred_at < now() - interval '35 days'
            OR NOT EXISTS (SELECT FROM stripe_billing.customers c
                            WHERE c.user_ref = o.user_ref AND c.account IS NOT DISTINCT FROM o.account
                              AND NOT c.deleted))
     ORDER BY o.id LIMIT max_rows
       FOR UPDATE OF o SKIP LOCKED
  )
  UPDATE stripe_billing.usage_outbox o
     SET attempts = o.attempts + 1,
         failed_at = CASE WHEN s.too_old THEN now() END,
         next_attempt_at = CASE WHEN NOT s.too_old THEN now() + stripe_billing._usage_backoff(o.attempts + 1) END,
         last_error = CASE WHEN s.too_old
                           THEN format('occurred_at %s is older than the 35 days Stripe takes meter events for',
                                       s.occurred_at)
                           ELSE format('user %s has no Stripe customer yet%s', s.user_ref,
                                       ' on account ' || s.account) END
    FROM stuck s
   WHERE o.id = s.id;

  SELECT array_agg(d.id ORDER BY d.id), array_agg(d.event ORDER BY d.id), array_agg(d.account ORDER BY d.id)
    INTO ids, events, accounts
    FROM (SELECT o.id, o.account, jsonb_build_object(
                 'event_name', o.event_name, 'identifier', prefix || o.id,
                 'timestamp', to_char(o.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 'payload', jsonb_build_object('stripe_customer_id',
                                               stripe_billing._customer_of(o.user_ref, o.account),
                                               'value', o.value::text)) AS event
            FROM stripe_billing.usage_outbox o
           WHERE o.sent_at IS NULL AND o.failed_at IS NULL
             AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
             AND o.occurred_at >= now() - interval '35 days'
             AND EXISTS (SELECT FROM stripe_billing.customers c
                          WHERE c.user_ref = o.user_ref AND c.account IS NOT DISTINCT FROM o.account
                            AND NOT c.deleted)
           ORDER BY o.id LIMIT max_rows
             FOR UPDATE OF o SKIP LOCKED) d;
  IF ids IS NULL THEN
    RETURN 0;
  END IF;

  IF current_setting('stripe_billing.usage_api') = 'v1' THEN
    FOR i IN 1 .. cardinality(ids) LOOP
      IF stripe_billing._send_usage_v1(ids[i], events[i], accounts[i]) = 'sent' THEN
        sent := sent + 1;
      END IF;
    END LOOP;
    RETURN sent;
  END IF;

  -- one account at a time, each with its header and session
  FOR g IN SELECT u.account, array_agg(u.id ORDER BY u.n) AS ids, array_agg(u.event ORDER BY u.n) AS events
             FROM unnest(ids, events, accounts) WITH ORDINALITY u(id, event, account, n)
            GROUP BY u.account
            ORDER BY min(u.n)
  LOOP
    sent := sent + stripe_billing._send_usage_stream(g.ids, g.events, g.account);
  END LOOP;
  RETURN sent;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_send_usage(integer) FROM PUBLIC;

-- Makes failed usage rows pending again (all, or those of ids); returns how
-- many.
CREATE FUNCTION stripe_billing.stripe_retry_failed_usage(ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer;
BEGIN
  UPDATE stripe_billing.usage_outbox
     SET failed_at = NULL, next_attempt_at = NULL, attempts = 0
   WHERE failed_at IS NOT NULL AND (ids IS NULL OR id = ANY (ids));
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_retry_failed_usage(bigint[]) FROM PUBLIC;
