-- stripe_billing 0.1.0 -> 0.2.0.  Every function, table, index, view and
-- grant ends as a fresh 0.2.0 install makes it (test/upgrade.sh compares
-- the catalogs); the data stays.
\echo Use "ALTER EXTENSION stripe_billing UPDATE TO '0.2.0'" to load this file. \quit

-- Grants made on the functions this update recreates (their signatures
-- changed) are carried over to the new ones, at the end.
SELECT pg_catalog.set_config('stripe_billing_upgrade.' || p.proname, coalesce(p.proacl::text, ''), false)
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'stripe_billing'::regnamespace
   AND p.proname IN ('stripe_create_checkout', 'stripe_change_price', 'stripe_send_usage');

-- Deriving many users' features at once (the backfill's pages).
CREATE FUNCTION stripe_billing._refresh_users_features(targets text[], customer_ids text[] DEFAULT NULL,
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
  -- (delivered at commit, not at all on rollback)
  SELECT count(pg_notify('stripe_billing', json_build_object(
           'user_ref', d.user_ref, 'customer', d.customer, 'event_type', ev_type,
           'features', (SELECT coalesce(json_agg(json_build_object('feature', w.feature, 'valid_until', w.valid_until)
                                                 ORDER BY w.feature), '[]')
                          FROM wanted w WHERE w.user_ref = d.user_ref))::text))
    INTO notified   -- (unused: PERFORM cannot start with WITH)
    FROM due d
   WHERE d.user_ref IN (SELECT user_ref FROM revoked UNION SELECT user_ref FROM granted);
END
$$;

CREATE FUNCTION stripe_billing._derivation_deferred(customer_id text) RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_derivation_deferred'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION stripe_billing._refresh_customer_features(customer_id text, ev_type text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF stripe_billing._derivation_deferred(customer_id) THEN
    RETURN;
  END IF;
  PERFORM stripe_billing._refresh_user_features(c.user_ref, c.id, ev_type)
     FROM stripe_billing.customers c WHERE c.id = customer_id AND c.user_ref IS NOT NULL;
END
$$;

CREATE FUNCTION stripe_billing._refresh_customers_features(customer_ids text[], ev_type text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._refresh_users_features(array_agg(c.user_ref), array_agg(c.id), ev_type)
     FROM stripe_billing.customers c WHERE c.id = ANY (customer_ids) AND c.user_ref IS NOT NULL;
END
$$;

-- Listed snapshots: derive at the end of a batch, or leave it to the caller.
DROP FUNCTION stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb);
CREATE FUNCTION stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz, source text,
                                                replacements jsonb DEFAULT NULL, derive boolean DEFAULT true)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_apply_snapshots'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION stripe_billing._complete_items(subscriptions jsonb, OUT complete jsonb, OUT requests integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  cut jsonb[];         -- the subscriptions whose item list was cut short
  sub jsonb;
  items jsonb;
  l record;
  ahead constant integer := 2;   -- first item pages kept in flight (besides the next page)
BEGIN
  complete := '{}';
  requests := 0;
  SELECT coalesce(array_agg(e), '{}') INTO cut FROM jsonb_array_elements(subscriptions) e
   WHERE coalesce((e->'items'->>'has_more')::boolean, false);
  FOR i IN 1 .. least(cardinality(cut), ahead) LOOP
    PERFORM stripe_billing._list_prefetch('/v1/subscription_items',
                                          jsonb_build_object('subscription', cut[i]->>'id', 'limit', 100));
  END LOOP;
  FOR i IN 1 .. cardinality(cut) LOOP
    sub := cut[i];
    items := '[]';
    LOOP
      -- the first item page of a subscription further on travels meanwhile
      SELECT * INTO l FROM stripe_billing._list_page('/v1/subscription_items',
          jsonb_strip_nulls(jsonb_build_object('subscription', sub->>'id', 'limit', 100,
                                               'starting_after', items->-1->>'id')),
          CASE WHEN items = '[]' AND i + ahead <= cardinality(cut)
               THEN jsonb_build_object('subscription', cut[i + ahead]->>'id', 'limit', 100)
               ELSE 'null' END);
      requests := requests + 1;
      items := items || coalesce(l.page->'data', '[]');
      EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
    END LOOP;
    complete := complete || jsonb_build_object(sub->>'id', jsonb_set(sub, '{items}',
        (sub->'items') || jsonb_build_object('data', items, 'has_more', false)));
  END LOOP;
END
$$;

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
      PERFORM stripe_billing._apply_snapshots(jsonb_build_array(jsonb_build_object(
          'object', 'entitlements.active_entitlement_summary', 'customer', customers[i],
          'entitlements', jsonb_build_object('object', 'list', 'has_more', false, 'data', items))),
          taken_at, 'backfill', derive => false);
      objects := objects + 1;
      next_cursor := customers[i];
    END LOOP;
    PERFORM stripe_billing._refresh_customers_features(customers[1:20],
                                                       'entitlements.active_entitlement_summary.backfill');
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

-- Checkout: one trial per user (trial_granted), Stripe's limits, guests made customers.
CREATE FUNCTION stripe_billing._had_trial(target text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN EXISTS (SELECT FROM stripe_billing.customers c
                   JOIN stripe_billing.subscriptions s ON s.customer = c.id
                  WHERE c.user_ref = target AND (s.trial_start IS NOT NULL OR s.trial_end IS NOT NULL));
END
$$;

DROP FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                    boolean, text, jsonb, text);
CREATE FUNCTION stripe_billing.stripe_create_checkout(
    user_ref text, price text, success_url text, cancel_url text,
    quantity integer DEFAULT 1, mode text DEFAULT 'subscription', trial_days integer DEFAULT NULL,
    allow_promotion_codes boolean DEFAULT false, customer_email text DEFAULT NULL,
    metadata jsonb DEFAULT '{}', idempotency_key text DEFAULT NULL, allow_repeat_trial boolean DEFAULT false,
    OUT session_id text, OUT url text, OUT expires_at timestamptz, OUT trial_granted boolean)
AS 'MODULE_PATHNAME', 'stripe_create_checkout'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                            boolean, text, jsonb, text, boolean) FROM PUBLIC;

-- Proration preview, and a change at its proration_date.
CREATE FUNCTION stripe_billing._price_change_item(subscription_id text, new_price text,
                                                  proration_behavior text, quantity integer,
                                                  caller text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_ids text[];
BEGIN
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(new_price, '') = '' THEN PERFORM stripe_billing._bad_argument('new_price', 'must not be empty'); END IF;
  IF proration_behavior IS NULL OR proration_behavior NOT IN ('create_prorations', 'always_invoice', 'none') THEN
    PERFORM stripe_billing._bad_argument('proration_behavior',
        'must be ''create_prorations'', ''always_invoice'' or ''none''');
  END IF;
  IF quantity IS NOT NULL AND quantity < 1 THEN PERFORM stripe_billing._bad_argument('quantity', 'must be at least 1'); END IF;
  SELECT array_agg(i.id ORDER BY i.id) INTO item_ids
    FROM stripe_billing.subscription_items i WHERE i.subscription = subscription_id AND NOT i.deleted;
  IF coalesce(array_length(item_ids, 1), 0) <> 1 THEN
    RAISE EXCEPTION 'subscription % has % live items here; % changes single-item subscriptions',
                    subscription_id, coalesce(array_length(item_ids, 1), 0), caller
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Use stripe_api(''POST'', ''/v1/subscriptions/<id>'', ...) with items[] for others.';
  END IF;
  RETURN item_ids[1];
END
$$;

CREATE FUNCTION stripe_billing.stripe_preview_price_change(subscription_id text, new_price text,
                                                           quantity integer DEFAULT NULL,
                                                           proration_behavior text DEFAULT 'create_prorations')
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_preview_price_change');
  at timestamptz := date_trunc('second', clock_timestamp());
  preview jsonb;
BEGIN
  preview := stripe_billing.stripe_api('POST', '/v1/invoices/create_preview', jsonb_strip_nulls(jsonb_build_object(
      'customer', (SELECT s.customer FROM stripe_billing.subscriptions s WHERE s.id = subscription_id),
      'subscription', subscription_id,
      'subscription_details', jsonb_build_object(
          'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                       'id', item_id, 'price', new_price, 'quantity', quantity))),
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM at)::bigint))));
  RETURN jsonb_build_object(
      'amount_due', preview->'amount_due', 'total', preview->'total', 'currency', preview->'currency',
      'proration_date', to_jsonb(at),
      'lines', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'description', e.l->'description', 'amount', e.l->'amount', 'quantity', e.l->'quantity',
                    'price', coalesce(e.l->'pricing'->'price_details'->'price', e.l->'price'->'id'),
                    'proration', coalesce(e.l->'parent'->'subscription_item_details'->'proration', e.l->'proration'),
                    'period_start', to_jsonb(to_timestamp((e.l->'period'->>'start')::bigint)),
                    'period_end', to_jsonb(to_timestamp((e.l->'period'->>'end')::bigint)))
                  ORDER BY e.n), '[]')
                  FROM jsonb_array_elements(preview->'lines'->'data') WITH ORDINALITY AS e(l, n)));
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_preview_price_change(text, text, integer, text) FROM PUBLIC;

DROP FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text);
CREATE FUNCTION stripe_billing.stripe_change_price(subscription_id text, new_price text,
                                                   proration_behavior text DEFAULT 'create_prorations',
                                                   quantity integer DEFAULT NULL,
                                                   idempotency_key text DEFAULT NULL,
                                                   proration_date timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_change_price');
BEGIN
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_strip_nulls(jsonb_build_object(
          'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                       'id', item_id, 'price', new_price, 'quantity', quantity))),
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM proration_date)::bigint)),
      idempotency_key);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz) FROM PUBLIC;

-- Usage: an installation id in the identifiers, backoff, failures, Meter Events v2.
CREATE TABLE stripe_billing.installation (
    id         text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
INSERT INTO stripe_billing.installation (id)
VALUES (pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16));
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.installation', '');

CREATE FUNCTION stripe_billing.stripe_installation_id() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT id FROM stripe_billing.installation ORDER BY created_at, id LIMIT 1
$$;

ALTER TABLE stripe_billing.usage_outbox
    ADD COLUMN failed_at timestamptz,
    ADD COLUMN next_attempt_at timestamptz;
DROP INDEX stripe_billing.usage_outbox_pending_idx;
CREATE INDEX usage_outbox_pending_idx ON stripe_billing.usage_outbox (id)
    WHERE sent_at IS NULL AND failed_at IS NULL;

CREATE VIEW stripe_billing.usage_status AS
SELECT count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) AS pending,
       count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at > now()) AS waiting,
       count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
       now() - min(created_at) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) AS oldest_pending_age,
       max(sent_at) AS last_sent_at
  FROM stripe_billing.usage_outbox;

CREATE FUNCTION stripe_billing._usage_backoff(attempts integer) RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT make_interval(secs => least(3600, 2 ^ least(greatest(attempts, 1) - 1, 12)))
$$;

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

CREATE FUNCTION stripe_billing._send_usage_v1(row_id bigint, event jsonb) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  outcome text := 'sent';
  error text;
BEGIN
  BEGIN
    PERFORM stripe_billing.stripe_api('POST', '/v1/billing/meter_events',
        jsonb_build_object('event_name', event->>'event_name', 'identifier', event->>'identifier',
                           'timestamp', extract(epoch FROM (event->>'timestamp')::timestamptz)::bigint,
                           'payload', event->'payload'),
        event->>'identifier');
  EXCEPTION WHEN OTHERS THEN
    error := SQLERRM;
    outcome := CASE WHEN SQLSTATE = 'SBA01' AND SQLERRM ILIKE '%already exists%' THEN 'sent'
                    WHEN SQLSTATE IN ('SBA01', 'SBA02') THEN 'failed'
                    ELSE 'retry' END;
  END;
  PERFORM stripe_billing._usage_mark(ARRAY[row_id], outcome, error);
  RETURN outcome;
END
$$;

CREATE FUNCTION stripe_billing._meter_stream_send(bodies text[]) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_meter_stream_send'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

DROP FUNCTION stripe_billing.stripe_send_usage(integer);
CREATE FUNCTION stripe_billing.stripe_send_usage(max_rows integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  prefix text;
  ids bigint[];
  events jsonb[];
  bodies text[];
  results jsonb;
  r jsonb;
  batch bigint[];
  status integer;
  per_batch constant integer := 100;
  sent integer := 0;
BEGIN
  IF max_rows IS NULL OR max_rows < 1 THEN
    PERFORM stripe_billing._bad_argument('max_rows', 'must be at least 1');
  END IF;
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines stripe_billing.usage_api)
  prefix := 'sb_' || stripe_billing.stripe_installation_id() || '_';

  WITH stuck AS (
    SELECT o.id, o.user_ref, o.occurred_at, o.occurred_at < now() - interval '35 days' AS too_old
      FROM stripe_billing.usage_outbox o
     WHERE o.sent_at IS NULL AND o.failed_at IS NULL
       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
       AND (o.occurred_at < now() - interval '35 days'
            OR NOT EXISTS (SELECT FROM stripe_billing.customers c
                            WHERE c.user_ref = o.user_ref AND NOT c.deleted))
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
                           ELSE format('user %s has no Stripe customer yet', s.user_ref) END
    FROM stuck s
   WHERE o.id = s.id;

  SELECT array_agg(d.id ORDER BY d.id), array_agg(d.event ORDER BY d.id) INTO ids, events
    FROM (SELECT o.id, jsonb_build_object(
                 'event_name', o.event_name, 'identifier', prefix || o.id,
                 'timestamp', to_char(o.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 'payload', jsonb_build_object('stripe_customer_id', stripe_billing._customer_of(o.user_ref),
                                               'value', o.value::text)) AS event
            FROM stripe_billing.usage_outbox o
           WHERE o.sent_at IS NULL AND o.failed_at IS NULL
             AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
             AND o.occurred_at >= now() - interval '35 days'
             AND EXISTS (SELECT FROM stripe_billing.customers c WHERE c.user_ref = o.user_ref AND NOT c.deleted)
           ORDER BY o.id LIMIT max_rows
             FOR UPDATE OF o SKIP LOCKED) d;
  IF ids IS NULL THEN
    RETURN 0;
  END IF;

  IF current_setting('stripe_billing.usage_api') = 'v1' THEN
    FOR i IN 1 .. cardinality(ids) LOOP
      IF stripe_billing._send_usage_v1(ids[i], events[i]) = 'sent' THEN
        sent := sent + 1;
      END IF;
    END LOOP;
    RETURN sent;
  END IF;

  SELECT array_agg(jsonb_build_object('events', to_jsonb(events[g * per_batch + 1 : (g + 1) * per_batch]))::text
                   ORDER BY g)
    INTO bodies
    FROM generate_series(0, (cardinality(ids) - 1) / per_batch) g;
  BEGIN
    results := stripe_billing._meter_stream_send(bodies);
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
        IF stripe_billing._send_usage_v1(ids[i], events[i]) = 'sent' THEN
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
REVOKE ALL ON FUNCTION stripe_billing.stripe_send_usage(integer) FROM PUBLIC;

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

CREATE OR REPLACE FUNCTION stripe_billing._sync_duties() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  usage_sent integer;
  retried integer := 0;
  refetched integer;
BEGIN
  usage_sent := stripe_billing.stripe_send_usage(
      CASE current_setting('stripe_billing.usage_api') WHEN 'v1' THEN 100 ELSE 1000 END);
  IF (SELECT last_retry_at IS NULL OR last_retry_at < now() - interval '5 minutes' FROM stripe_billing.sync_state) THEN
    SELECT count(*) INTO retried FROM stripe_billing.stripe_retry_failed_events(100);
    UPDATE stripe_billing.sync_state SET last_retry_at = now();
  END IF;
  refetched := stripe_billing._refetch_marked(20);
  RETURN jsonb_build_object('usage_sent', usage_sent, 'failed_retried', retried, 'refetched', refetched);
END
$$;

CREATE OR REPLACE VIEW stripe_billing.sync_status AS
SELECT CASE WHEN s.paused THEN 'paused'
            WHEN s.event_cursor IS NULL AND s.lookback_after IS NULL THEN 'starting'
            WHEN EXISTS (SELECT FROM stripe_billing.backfill_state b WHERE b.state IN ('pending', 'running'))
              THEN 'backfill'
            WHEN EXISTS (SELECT FROM stripe_billing.reconcile_runs r WHERE r.state = 'running') THEN 'reconciling'
            ELSE 'streaming' END AS phase,
       s.event_cursor AS cursor, s.start_from, s.paused, s.last_poll_at, s.last_success_at,
       now() - s.last_event_created AS lag, s.events_applied, s.last_error, s.last_error_at,
       s.consecutive_failures, s.cursor_reset_at, s.cursor_reset_reason,
       (SELECT count(*) FROM stripe_billing.usage_outbox u WHERE u.sent_at IS NULL AND u.failed_at IS NULL) AS outbox_backlog,
       (SELECT count(*) FROM stripe_billing.events e WHERE e.outcome = 'failed') AS failed_events,
       (SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'stripe_billing sync'
         AND datname = current_database() LIMIT 1) AS worker_pid
  FROM stripe_billing.sync_state s;

-- The grants carried over (see the top); PUBLIC's stay revoked.
DO $$
DECLARE
  f record;
  grantee name;
BEGIN
  FOR f IN SELECT p.oid::regprocedure AS signature, p.proname, p.proowner FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'stripe_billing'::regnamespace
              AND p.proname IN ('stripe_create_checkout', 'stripe_change_price', 'stripe_send_usage')
  LOOP
    FOR grantee IN
      SELECT r.rolname
        FROM pg_catalog.aclexplode(NULLIF(pg_catalog.current_setting('stripe_billing_upgrade.' || f.proname, true),
                                                     '')::pg_catalog.aclitem[]) a
        JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
       WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> f.proowner
    LOOP
      EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', f.signature, grantee);
    END LOOP;
  END LOOP;
END
$$;

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
