-- stripe_billing 0.1.0: install script.
\echo Use "CREATE EXTENSION stripe_billing" to load this file. \quit

-- Everything the extension owns lives here; every name below is qualified.
CREATE SCHEMA stripe_billing;
COMMENT ON SCHEMA stripe_billing IS 'Stripe billing state, kept by the stripe_billing extension';
-- Roles may call the public functions; tables stay unreadable unless granted.
GRANT USAGE ON SCHEMA stripe_billing TO PUBLIC;

--------------------------------------------------------------------------
-- Webhook signatures
--------------------------------------------------------------------------

CREATE FUNCTION stripe_billing.stripe_verify_signature(
    payload text, signature_header text, secret text,
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_verify_signature'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_verify_signature(
    payload bytea, signature_header text, secret text,
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_verify_signature'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_verify_signature(
    payload text, signature_header text, secrets text[],
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_verify_signature_any'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_verify_signature(
    payload bytea, signature_header text, secrets text[],
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_verify_signature_any'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION stripe_billing.stripe_verify_signature(text, text, text, integer, timestamptz)
    IS 'true when the Stripe-Signature header signs the payload with the secret';

-- Raising variants: the error says why (SQLSTATE SBS01..SBS05, SBC01).
CREATE FUNCTION stripe_billing.stripe_check_signature(
    payload text, signature_header text, secret text,
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS void
AS 'MODULE_PATHNAME', 'stripe_check_signature'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_check_signature(
    payload bytea, signature_header text, secret text,
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS void
AS 'MODULE_PATHNAME', 'stripe_check_signature'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_check_signature(
    payload text, signature_header text, secrets text[],
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS void
AS 'MODULE_PATHNAME', 'stripe_check_signature_any'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION stripe_billing.stripe_check_signature(
    payload bytea, signature_header text, secrets text[],
    tolerance_seconds integer DEFAULT 300, now timestamptz DEFAULT now())
RETURNS void
AS 'MODULE_PATHNAME', 'stripe_check_signature_any'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION stripe_billing.stripe_check_signature(text, text, text, integer, timestamptz)
    IS 'raises why the Stripe-Signature header does not sign the payload';

--------------------------------------------------------------------------
-- The event ledger
--------------------------------------------------------------------------

-- Every event received, whatever its type, keyed by its Stripe id.
CREATE TABLE stripe_billing.events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    api_version text,
    livemode    boolean NOT NULL,
    created     timestamptz NOT NULL,
    source      text NOT NULL CHECK (source <> ''),
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome     text NOT NULL
                CHECK (outcome IN ('applied', 'ignored', 'stale', 'failed')),
    error       text,
    payload     jsonb,
    body        bytea,
    -- the event as jsonb or, for a verified webhook body that jsonb refused,
    -- its raw bytes (then the outcome is failed): one of the two, never both
    CONSTRAINT events_payload_or_body CHECK ((payload IS NULL) <> (body IS NULL))
);
COMMENT ON TABLE stripe_billing.events IS
    'Ledger of every Stripe event received: one row per event id';
COMMENT ON COLUMN stripe_billing.events.payload IS
    'the whole event, as jsonb; NULL when jsonb refused the webhook body (see body)';
COMMENT ON COLUMN stripe_billing.events.body IS
    'the raw bytes of a verified webhook body that jsonb refused (the event is failed, its error says why); NULL otherwise';
CREATE INDEX events_type_created_idx ON stripe_billing.events (type, created);

-- The ledger is data, not configuration: pg_dump must keep it.
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.events', '');

-- Records (and, for mapped types, applies) one event: 'applied', 'ignored',
-- 'duplicate', ... .  Unsigned input: not for PUBLIC.
CREATE FUNCTION stripe_billing.stripe_apply_event(event jsonb, source text DEFAULT 'manual')
RETURNS text
AS 'MODULE_PATHNAME', 'stripe_apply_event'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_apply_event(jsonb, text) FROM PUBLIC;

-- The webhook route's one call: verify with stripe_billing.webhook_secret,
-- then apply.  Safe for PUBLIC: only Stripe can sign.
CREATE FUNCTION stripe_billing.stripe_handle_webhook(payload text, signature_header text)
RETURNS text
AS 'MODULE_PATHNAME', 'stripe_handle_webhook'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stripe_billing.stripe_handle_webhook(payload bytea, signature_header text)
RETURNS text
AS 'MODULE_PATHNAME', 'stripe_handle_webhook_bytea'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

--------------------------------------------------------------------------
-- Billing tables
--
-- Each row is the newest snapshot of one Stripe object seen in an event,
-- typed columns for what applications query plus the raw object.  Every row
-- remembers the created time and id of the event that last wrote it:
--   * an older event never overwrites a newer one (outcome 'stale');
--   * an event of the same second overwrites (the later arrival wins) and
--     sets refetch, so the worker can fetch the object's true current state;
--   * terminal states stick: a deleted customer/product/price, a canceled or
--     incomplete_expired subscription (and a paid/void invoice, a succeeded
--     or canceled payment) is never revived by a non-terminal snapshot;
--   * deletes are tombstones (deleted = true), so late updates cannot
--     resurrect a row.
-- Only the extension writes these tables; grant SELECT to app roles.
--------------------------------------------------------------------------

CREATE TABLE stripe_billing.customers (
    id                 text PRIMARY KEY,
    user_ref           text,
    email              text,
    name               text,
    deleted            boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_user_ref_idx ON stripe_billing.customers (user_ref);
COMMENT ON COLUMN stripe_billing.customers.user_ref IS
    'the application''s user: from a completed Checkout session''s client_reference_id, metadata user_ref/user_id/userId, or stripe_link_customer()';

CREATE TABLE stripe_billing.products (
    id                 text PRIMARY KEY,
    name               text,
    description        text,
    active             boolean,
    deleted            boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Prices, and legacy plans (a plan is a recurring price).
CREATE TABLE stripe_billing.prices (
    id                 text PRIMARY KEY,
    product            text,
    active             boolean,
    currency           text,
    unit_amount        bigint,          -- minor units
    type               text,            -- one_time | recurring
    recurring_interval text,
    recurring_interval_count integer,
    usage_type         text,            -- licensed | metered
    lookup_key         text,
    nickname           text,
    deleted            boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prices_lookup_key_idx ON stripe_billing.prices (lookup_key);

CREATE TABLE stripe_billing.subscriptions (
    id                   text PRIMARY KEY,
    customer             text NOT NULL,
    status               text NOT NULL,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    cancel_at            timestamptz,
    canceled_at          timestamptz,
    ended_at             timestamptz,
    current_period_start timestamptz,   -- the subscription's, or its items' (2025-03-31.basil+)
    current_period_end   timestamptz,
    trial_start          timestamptz,
    trial_end            timestamptz,
    pause_collection     jsonb,
    latest_invoice       text,
    metadata             jsonb NOT NULL DEFAULT '{}',
    created              timestamptz,
    raw                  jsonb NOT NULL,
    last_event_id        text,
    last_event_created   timestamptz,
    refetch              boolean NOT NULL DEFAULT false,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_idx ON stripe_billing.subscriptions (customer);

CREATE TABLE stripe_billing.subscription_items (
    id                   text PRIMARY KEY,
    subscription         text NOT NULL,
    price                text,
    product              text,
    price_lookup_key     text,
    quantity             bigint,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    deleted              boolean NOT NULL DEFAULT false,
    raw                  jsonb NOT NULL,
    last_event_id        text,
    last_event_created   timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_items_subscription_idx ON stripe_billing.subscription_items (subscription);

CREATE TABLE stripe_billing.invoices (
    id                   text PRIMARY KEY,
    customer             text,
    subscription         text,          -- invoice.subscription, or parent.subscription_details.subscription
    status               text,
    amount_due           bigint,
    amount_paid          bigint,
    amount_remaining     bigint,
    currency             text,
    attempt_count        integer,
    next_payment_attempt timestamptz,
    hosted_invoice_url   text,
    invoice_pdf          text,
    period_start         timestamptz,
    period_end           timestamptz,
    billing_reason       text,
    deleted              boolean NOT NULL DEFAULT false,
    created              timestamptz,
    raw                  jsonb NOT NULL,
    last_event_id        text,
    last_event_created   timestamptz,
    refetch              boolean NOT NULL DEFAULT false,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_customer_idx ON stripe_billing.invoices (customer);
CREATE INDEX invoices_subscription_idx ON stripe_billing.invoices (subscription);

-- The payment history: payment intents, charges, refunds, invoice payments.
CREATE TABLE stripe_billing.payments (
    id                 text PRIMARY KEY,
    kind               text NOT NULL
                       CHECK (kind IN ('payment_intent', 'charge', 'refund', 'invoice_payment')),
    customer           text,
    invoice            text,
    payment_intent     text,
    charge             text,
    amount             bigint,          -- minor units
    amount_refunded    bigint,
    currency           text,
    status             text,
    failure_code       text,
    failure_message    text,
    created            timestamptz,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_customer_idx ON stripe_billing.payments (customer);
CREATE INDEX payments_invoice_idx ON stripe_billing.payments (invoice);
CREATE INDEX payments_payment_intent_idx ON stripe_billing.payments (payment_intent);

CREATE TABLE stripe_billing.checkout_sessions (
    id                 text PRIMARY KEY,
    user_ref           text,            -- client_reference_id
    customer           text,
    customer_email     text,
    mode               text,
    status             text,
    payment_status     text,
    subscription       text,
    payment_intent     text,
    amount_total       bigint,
    currency           text,
    url                text,
    expires_at         timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_user_ref_idx ON stripe_billing.checkout_sessions (user_ref);

-- Stripe Entitlements: the latest active entitlement summary per customer
-- (refetch when its embedded list was cut short, has_more) ...
CREATE TABLE stripe_billing.entitlement_summaries (
    customer           text PRIMARY KEY,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- ... and its entitlements, replaced as a set.
CREATE TABLE stripe_billing.active_entitlements (
    customer       text NOT NULL,
    feature_id     text NOT NULL,
    lookup_key     text NOT NULL,
    entitlement_id text,
    PRIMARY KEY (customer, feature_id)
);
CREATE INDEX active_entitlements_lookup_key_idx ON stripe_billing.active_entitlements (lookup_key);

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.customers', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.products', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.prices', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.subscription_items', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.invoices', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.payments', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.checkout_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.entitlement_summaries', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.active_entitlements', '');

-- Payloads and raw objects are a few KB of JSON, compressed on every write:
-- lz4 does that several times faster than pglz, where the server has it.
DO $$
DECLARE
  t text;
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.events ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE stripe_billing.events ALTER COLUMN body SET COMPRESSION lz4;
    FOREACH t IN ARRAY ARRAY['customers', 'products', 'prices', 'subscriptions', 'subscription_items',
                             'invoices', 'payments', 'checkout_sessions', 'entitlement_summaries'] LOOP
      EXECUTE format('ALTER TABLE stripe_billing.%I ALTER COLUMN raw SET COMPRESSION lz4', t);
    END LOOP;
  END IF;
END
$$;

CREATE INDEX events_failed_idx ON stripe_billing.events (created, id) WHERE outcome = 'failed';
CREATE INDEX events_ignored_idx ON stripe_billing.events (type, created, id) WHERE outcome = 'ignored';

--------------------------------------------------------------------------
-- Mapping events onto the tables (internal; called by stripe_apply_event,
-- which has checked the object's shape, inside a subtransaction)
--------------------------------------------------------------------------

-- Unix seconds (a jsonb number or null) as timestamptz.
CREATE FUNCTION stripe_billing._ts(v jsonb) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.to_timestamp((v OPERATOR(pg_catalog.#>>) '{}')::bigint) $$;

-- An expandable field: an id string, or an expanded object's id.
CREATE FUNCTION stripe_billing._id(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE WHEN pg_catalog.jsonb_typeof(v) OPERATOR(pg_catalog.=) 'object'
              THEN v OPERATOR(pg_catalog.->>) 'id'
              ELSE v OPERATOR(pg_catalog.#>>) '{}' END
$$;

-- The application's user named in metadata, if any.
CREATE FUNCTION stripe_billing._user_ref(metadata jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  -- (one expression, qualified: it is inlined into the mappings)
  SELECT coalesce(CASE WHEN metadata OPERATOR(pg_catalog.->>) 'user_ref' OPERATOR(pg_catalog.<>) ''
                       THEN metadata OPERATOR(pg_catalog.->>) 'user_ref' END,
                  CASE WHEN metadata OPERATOR(pg_catalog.->>) 'user_id' OPERATOR(pg_catalog.<>) ''
                       THEN metadata OPERATOR(pg_catalog.->>) 'user_id' END,
                  CASE WHEN metadata OPERATOR(pg_catalog.->>) 'userId' OPERATOR(pg_catalog.<>) ''
                       THEN metadata OPERATOR(pg_catalog.->>) 'userId' END)
$$;

-- May a snapshot taken at new_created overwrite a row written at
-- row_created?  Not when older, nor a non-terminal one over a terminal row.
CREATE FUNCTION stripe_billing._may_overwrite(row_created timestamptz, new_created timestamptz,
                                              row_terminal boolean, new_terminal boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT row_created IS NULL
      OR (row_created OPERATOR(pg_catalog.<=) new_created
          AND NOT (coalesce(row_terminal, false) AND NOT new_terminal))
$$;

-- Links a customer to the application's user.  fill_only: keep an existing
-- link (metadata); otherwise replace it (Checkout, explicit links).  The
-- users on both sides of a change get their features recomputed.
CREATE FUNCTION stripe_billing._link_customer(customer_id text, new_user_ref text, fill_only boolean,
                                              ev_type text DEFAULT 'customer.link')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  old_user_ref text;
BEGIN
  SELECT c.user_ref INTO old_user_ref FROM stripe_billing.customers c WHERE c.id = customer_id FOR UPDATE;
  IF FOUND AND (old_user_ref IS NOT DISTINCT FROM new_user_ref OR (fill_only AND old_user_ref IS NOT NULL)) THEN
    RETURN;
  END IF;
  INSERT INTO stripe_billing.customers AS t (id, user_ref)
  VALUES (customer_id, new_user_ref)
  ON CONFLICT (id) DO UPDATE SET user_ref = EXCLUDED.user_ref, updated_at = now();
  PERFORM stripe_billing._refresh_user_features(old_user_ref, customer_id, ev_type);
  PERFORM stripe_billing._refresh_user_features(new_user_ref, customer_id, ev_type);
END
$$;

CREATE FUNCTION stripe_billing._apply_customer(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'customer.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    -- a deleted customer's payload may be bare: keep what we knew
    o := coalesce((SELECT raw FROM stripe_billing.customers WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.customers AS t
         (id, user_ref, email, name, deleted, metadata, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', stripe_billing._user_ref(o->'metadata'), o->>'email', o->>'name', deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         user_ref = coalesce(t.user_ref, EXCLUDED.user_ref),
         email = EXCLUDED.email, name = EXCLUDED.name, deleted = EXCLUDED.deleted,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  PERFORM stripe_billing._refresh_customer_features(o->>'id', ev_type);
  RETURN 'applied';
END
$$;

CREATE FUNCTION stripe_billing._apply_product(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'product.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.products WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.products AS t
         (id, name, description, active, deleted, metadata, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', o->>'name', o->>'description', (o->>'active')::boolean, deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         name = EXCLUDED.name, description = EXCLUDED.description, active = EXCLUDED.active,
         deleted = EXCLUDED.deleted, metadata = EXCLUDED.metadata,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- Prices and plans: a plan is written as a recurring price.
CREATE FUNCTION stripe_billing._apply_price(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  is_plan boolean := o->>'object' = 'plan';
  deleting boolean := ev_type IN ('price.deleted', 'plan.deleted') OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.prices WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.prices AS t
         (id, product, active, currency, unit_amount, type, recurring_interval, recurring_interval_count,
          usage_type, lookup_key, nickname, deleted, metadata, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', stripe_billing._id(o->'product'), (o->>'active')::boolean, o->>'currency',
          CASE WHEN is_plan THEN (o->>'amount')::bigint ELSE (o->>'unit_amount')::bigint END,
          CASE WHEN is_plan THEN 'recurring' ELSE o->>'type' END,
          CASE WHEN is_plan THEN o->>'interval' ELSE o->'recurring'->>'interval' END,
          CASE WHEN is_plan THEN (o->>'interval_count')::integer ELSE (o->'recurring'->>'interval_count')::integer END,
          CASE WHEN is_plan THEN o->>'usage_type' ELSE o->'recurring'->>'usage_type' END,
          o->>'lookup_key', o->>'nickname', deleting, coalesce(o->'metadata', '{}'),
          stripe_billing._ts(o->'created'), o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         product = EXCLUDED.product, active = EXCLUDED.active, currency = EXCLUDED.currency,
         unit_amount = EXCLUDED.unit_amount, type = EXCLUDED.type,
         recurring_interval = EXCLUDED.recurring_interval,
         recurring_interval_count = EXCLUDED.recurring_interval_count,
         usage_type = EXCLUDED.usage_type, lookup_key = EXCLUDED.lookup_key, nickname = EXCLUDED.nickname,
         deleted = EXCLUDED.deleted, metadata = EXCLUDED.metadata,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- A subscription and its items.  Period bounds come from the subscription
-- (before 2025-03-31.basil) or from its items (after).
CREATE FUNCTION stripe_billing._apply_subscription(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
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
          current_period_start, current_period_end, deleted, raw, last_event_id, last_event_created)
  SELECT i->>'id', sid,
         coalesce(i->'price'->>'id', i->'plan'->>'id'),
         coalesce(stripe_billing._id(i->'price'->'product'), stripe_billing._id(i->'plan'->'product')),
         i->'price'->>'lookup_key', (i->>'quantity')::bigint,
         coalesce(stripe_billing._ts(i->'current_period_start'), period_start),
         coalesce(stripe_billing._ts(i->'current_period_end'), period_end),
         false, i, ev_id, ev_created
    FROM jsonb_array_elements(items) i
  ON CONFLICT (id) DO UPDATE SET
         subscription = EXCLUDED.subscription, price = EXCLUDED.price, product = EXCLUDED.product,
         price_lookup_key = EXCLUDED.price_lookup_key, quantity = EXCLUDED.quantity,
         current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
         deleted = false, raw = EXCLUDED.raw,
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

CREATE FUNCTION stripe_billing._apply_invoice(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- (a null status is allowed: not deleted)
  deleting boolean := ev_type = 'invoice.deleted' OR coalesce(o->>'status' = 'deleted', false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.invoices WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.invoices AS t
         (id, customer, subscription, status, amount_due, amount_paid, amount_remaining, currency,
          attempt_count, next_payment_attempt, hosted_invoice_url, invoice_pdf, period_start, period_end,
          billing_reason, deleted, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', stripe_billing._id(o->'customer'),
          coalesce(stripe_billing._id(o->'subscription'),
                   stripe_billing._id(o->'parent'->'subscription_details'->'subscription')),
          o->>'status', (o->>'amount_due')::bigint, (o->>'amount_paid')::bigint,
          (o->>'amount_remaining')::bigint, o->>'currency', (o->>'attempt_count')::integer,
          stripe_billing._ts(o->'next_payment_attempt'), o->>'hosted_invoice_url', o->>'invoice_pdf',
          stripe_billing._ts(o->'period_start'), stripe_billing._ts(o->'period_end'), o->>'billing_reason',
          deleting, stripe_billing._ts(o->'created'), o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, subscription = EXCLUDED.subscription, status = EXCLUDED.status,
         amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
         amount_remaining = EXCLUDED.amount_remaining, currency = EXCLUDED.currency,
         attempt_count = EXCLUDED.attempt_count, next_payment_attempt = EXCLUDED.next_payment_attempt,
         hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
         period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
         billing_reason = EXCLUDED.billing_reason, deleted = EXCLUDED.deleted,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.deleted OR coalesce(t.status IN ('paid', 'void'), false),
                                      EXCLUDED.deleted OR coalesce(EXCLUDED.status IN ('paid', 'void'), false));
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- One row of the payment history (payment intent, charge, refund or
-- invoice payment), as a record of stripe_billing.payments' columns.
CREATE FUNCTION stripe_billing._upsert_payment(p stripe_billing.payments, terminal_statuses text[])
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.payments AS t
         (id, kind, customer, invoice, payment_intent, charge, amount, amount_refunded, currency, status,
          failure_code, failure_message, created, raw, last_event_id, last_event_created)
  VALUES (p.id, p.kind, p.customer, p.invoice, p.payment_intent, p.charge, p.amount, p.amount_refunded,
          p.currency, p.status, p.failure_code, p.failure_message, p.created, p.raw,
          p.last_event_id, p.last_event_created)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer,
         invoice = coalesce(EXCLUDED.invoice, t.invoice),   -- may come from an invoice payment
         payment_intent = EXCLUDED.payment_intent, charge = EXCLUDED.charge,
         amount = EXCLUDED.amount, amount_refunded = EXCLUDED.amount_refunded,
         currency = EXCLUDED.currency, status = EXCLUDED.status,
         failure_code = EXCLUDED.failure_code, failure_message = EXCLUDED.failure_message,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status = ANY (terminal_statuses),
                                      EXCLUDED.status = ANY (terminal_statuses));
  RETURN FOUND;
END
$$;

CREATE FUNCTION stripe_billing._apply_payment(o jsonb, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  p stripe_billing.payments;
  written boolean;
BEGIN
  p.id := o->>'id';
  p.kind := o->>'object';
  p.customer := stripe_billing._id(o->'customer');
  p.currency := o->>'currency';
  p.status := o->>'status';
  p.created := stripe_billing._ts(o->'created');
  p.raw := o;
  p.last_event_id := ev_id;
  p.last_event_created := ev_created;

  CASE p.kind
  WHEN 'payment_intent' THEN
    p.payment_intent := p.id;
    p.amount := (o->>'amount')::bigint;
    p.failure_code := o->'last_payment_error'->>'code';
    p.failure_message := o->'last_payment_error'->>'message';
    -- since 2025-03-31.basil only an invoice payment says which invoice
    p.invoice := coalesce(stripe_billing._id(o->'invoice'),
                          (SELECT ip.invoice FROM stripe_billing.payments ip
                            WHERE ip.kind = 'invoice_payment' AND ip.payment_intent = p.id LIMIT 1));
    written := stripe_billing._upsert_payment(p, '{succeeded,canceled}');
  WHEN 'charge' THEN
    p.charge := p.id;
    p.payment_intent := stripe_billing._id(o->'payment_intent');
    p.amount := (o->>'amount')::bigint;
    p.amount_refunded := (o->>'amount_refunded')::bigint;
    p.failure_code := o->>'failure_code';
    p.failure_message := o->>'failure_message';
    p.invoice := coalesce(stripe_billing._id(o->'invoice'),
                          (SELECT ip.invoice FROM stripe_billing.payments ip
                            WHERE ip.kind = 'invoice_payment'
                              AND (ip.charge = p.id OR ip.payment_intent = p.payment_intent) LIMIT 1));
    written := stripe_billing._upsert_payment(p, '{succeeded,failed}');
    IF written THEN
      -- refunds listed in the charge snapshot
      PERFORM stripe_billing._apply_payment(r || jsonb_build_object('object', 'refund'), ev_id, ev_created)
         FROM jsonb_array_elements(coalesce(o->'refunds'->'data', '[]')) r;
    END IF;
  WHEN 'refund' THEN
    p.charge := stripe_billing._id(o->'charge');
    p.payment_intent := stripe_billing._id(o->'payment_intent');
    p.amount := (o->>'amount')::bigint;
    p.failure_code := o->>'failure_reason';
    written := stripe_billing._upsert_payment(p, '{succeeded,failed,canceled}');
  WHEN 'invoice_payment' THEN
    p.invoice := stripe_billing._id(o->'invoice');
    p.payment_intent := stripe_billing._id(o->'payment'->'payment_intent');
    p.charge := stripe_billing._id(o->'payment'->'charge');
    p.amount := (o->>'amount_paid')::bigint;
    written := stripe_billing._upsert_payment(p, '{paid,canceled}');
    -- tell the payment it paid this invoice
    UPDATE stripe_billing.payments SET invoice = p.invoice, updated_at = now()
     WHERE id IN (p.payment_intent, p.charge) AND invoice IS NULL;
  END CASE;
  RETURN CASE WHEN written THEN 'applied' ELSE 'stale' END;
END
$$;

CREATE FUNCTION stripe_billing._apply_checkout_session(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  user_ref text := coalesce(nullif(o->>'client_reference_id', ''), stripe_billing._user_ref(o->'metadata'));
  customer_id text := stripe_billing._id(o->'customer');
BEGIN
  INSERT INTO stripe_billing.checkout_sessions AS t
         (id, user_ref, customer, customer_email, mode, status, payment_status, subscription, payment_intent,
          amount_total, currency, url, expires_at, metadata, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', user_ref, customer_id,
          coalesce(o->>'customer_email', o->'customer_details'->>'email'), o->>'mode', o->>'status',
          o->>'payment_status', stripe_billing._id(o->'subscription'), stripe_billing._id(o->'payment_intent'),
          (o->>'amount_total')::bigint, o->>'currency', o->>'url', stripe_billing._ts(o->'expires_at'),
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         user_ref = coalesce(EXCLUDED.user_ref, t.user_ref), customer = EXCLUDED.customer,
         customer_email = EXCLUDED.customer_email, mode = EXCLUDED.mode, status = EXCLUDED.status,
         payment_status = EXCLUDED.payment_status, subscription = EXCLUDED.subscription,
         payment_intent = EXCLUDED.payment_intent, amount_total = EXCLUDED.amount_total,
         currency = EXCLUDED.currency, url = EXCLUDED.url, expires_at = EXCLUDED.expires_at,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status IN ('complete', 'expired'),
                                      EXCLUDED.status IN ('complete', 'expired'));
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  -- a completed Checkout is where the application's user meets the customer
  IF o->>'status' = 'complete' AND customer_id IS NOT NULL AND user_ref IS NOT NULL THEN
    PERFORM stripe_billing._link_customer(customer_id, user_ref, false, ev_type);
  END IF;
  RETURN 'applied';
END
$$;

-- A customer's active entitlement summary replaces its set.
CREATE FUNCTION stripe_billing._apply_entitlement_summary(o jsonb, ev_type text, ev_id text, ev_created timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customer_id text := o->>'customer';
  cut_short boolean := coalesce((o->'entitlements'->>'has_more')::boolean, false);
BEGIN
  INSERT INTO stripe_billing.entitlement_summaries AS t (customer, raw, last_event_id, last_event_created, refetch)
  VALUES (customer_id, o, ev_id, ev_created, cut_short)
  ON CONFLICT (customer) DO UPDATE SET
         raw = EXCLUDED.raw, last_event_id = EXCLUDED.last_event_id,
         last_event_created = EXCLUDED.last_event_created,
         refetch = EXCLUDED.refetch OR coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  DELETE FROM stripe_billing.active_entitlements WHERE customer = customer_id;
  INSERT INTO stripe_billing.active_entitlements (customer, feature_id, lookup_key, entitlement_id)
  SELECT customer_id, stripe_billing._id(e->'feature'), e->>'lookup_key', e->>'id'
    FROM jsonb_array_elements(o->'entitlements'->'data') e
  ON CONFLICT (customer, feature_id) DO NOTHING;
  PERFORM stripe_billing._refresh_customer_features(customer_id, ev_type);
  RETURN 'applied';
END
$$;

--------------------------------------------------------------------------
-- Links, retries and replays
--------------------------------------------------------------------------

-- Links the application's user to a Stripe customer (replacing any link).
CREATE FUNCTION stripe_billing.stripe_link_customer(user_ref text, customer_id text)
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
  PERFORM stripe_billing._link_customer(customer_id, user_ref, false);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_link_customer(text, text) FROM PUBLIC;

-- Applies one recorded event again and records the new outcome.
CREATE FUNCTION stripe_billing._reapply_event(id text) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_reapply_event'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._reapply_event(text) FROM PUBLIC;

-- Re-applies failed events, oldest first; returns each one's new outcome.
-- Events kept as a raw body only (jsonb refused it) cannot be applied: they
-- are skipped and stay failed.
CREATE FUNCTION stripe_billing.stripe_retry_failed_events(max_events integer DEFAULT NULL)
RETURNS TABLE (event_id text, event_type text, outcome text, error text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  e record;
BEGIN
  FOR e IN SELECT ev.id, ev.type FROM stripe_billing.events ev
            WHERE ev.outcome = 'failed' AND ev.payload IS NOT NULL ORDER BY ev.created, ev.id
            LIMIT max_events FOR UPDATE SKIP LOCKED
  LOOP
    event_id := e.id;
    event_type := e.type;
    outcome := stripe_billing._reapply_event(e.id);
    error := (SELECT ev.error FROM stripe_billing.events ev WHERE ev.id = e.id);
    RETURN NEXT;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_retry_failed_events(integer) FROM PUBLIC;

-- Re-applies ignored events of a type (all types if NULL), oldest first,
-- e.g. after an upgrade maps a type that was not mapped when received.
CREATE FUNCTION stripe_billing.stripe_replay_events(event_type text)
RETURNS TABLE (event_id text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  e record;
BEGIN
  FOR e IN SELECT ev.id FROM stripe_billing.events ev
            WHERE ev.outcome = 'ignored' AND (event_type IS NULL OR ev.type = event_type)
            ORDER BY ev.created, ev.id FOR UPDATE SKIP LOCKED
  LOOP
    event_id := e.id;
    outcome := stripe_billing._reapply_event(e.id);
    RETURN NEXT;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_replay_events(text) FROM PUBLIC;

--------------------------------------------------------------------------
-- Entitlements
--
-- A user has feature F when a subscription of one of their customers grants
-- it (through feature_grants: a price id, a price lookup key or a product
-- id) or Stripe Entitlements lists F for the customer.  The answer is
-- derived per user into user_features whenever an event or a grant changes
-- it, inside that transaction; stripe_has_entitlement serves it from a
-- per-backend cache that a change to user_features invalidates.
--------------------------------------------------------------------------

-- Which subscription items grant which features (managed by the app).
CREATE TABLE stripe_billing.feature_grants (
    source_type text NOT NULL CHECK (source_type IN ('price', 'lookup_key', 'product')),
    source      text NOT NULL CHECK (source <> ''),
    feature     text NOT NULL CHECK (feature <> ''),
    PRIMARY KEY (source_type, source, feature)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.feature_grants', '');

-- Derived: each user's features and when access ends (NULL: no end known).
-- COLLATE "C": exact matches only, and the C lookups' scan keys agree.
CREATE TABLE stripe_billing.user_features (
    user_ref    text COLLATE "C" NOT NULL,
    feature     text COLLATE "C" NOT NULL,
    valid_until timestamptz,
    PRIMARY KEY (user_ref, feature)
);
-- Derived, but dumped: a restored database answers every check at once.
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.user_features', '');

-- One row per user whose features were ever derived.  A derivation first
-- writes its user's row: derivations of one user then run one at a time,
-- each waiting for the previous one to commit, and (in READ COMMITTED)
-- reading with a snapshot that sees it; in REPEATABLE READ or SERIALIZABLE
-- a derivation that cannot see a concurrent one's commit fails with 40001
-- instead of writing a state that misses it.
CREATE TABLE stripe_billing.user_derivations (
    user_ref    text COLLATE "C" PRIMARY KEY,
    derived_at  timestamptz NOT NULL,
    derivations bigint NOT NULL DEFAULT 1
);

-- Any change to user_features invalidates every backend's entitlement cache.
CREATE FUNCTION stripe_billing._invalidate_entitlement_cache() RETURNS trigger
AS 'MODULE_PATHNAME', 'stripe_invalidate_entitlement_cache'
LANGUAGE C;
CREATE TRIGGER user_features_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON stripe_billing.user_features
    FOR EACH ROW EXECUTE FUNCTION stripe_billing._invalidate_entitlement_cache();
CREATE TRIGGER user_features_invalidate_truncate
    AFTER TRUNCATE ON stripe_billing.user_features
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_billing._invalidate_entitlement_cache();

-- When a subscription item's access ends: never later than period end plus
-- access_slack, whatever the status says (a lost cancellation must not grant
-- free months); for past_due, period end plus the past_due grace; when
-- cancelling at period end, the period end; and a scheduled cancel_at.
-- NULL: no end known (no period end).
CREATE FUNCTION stripe_billing._access_ends(status text, cancel_at_period_end boolean,
                                            cancel_at timestamptz, period_end timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
  SELECT least(period_end OPERATOR(pg_catalog.+)
                 pg_catalog.current_setting('stripe_billing.access_slack')::interval,
               CASE WHEN status OPERATOR(pg_catalog.=) 'past_due'
                    THEN period_end OPERATOR(pg_catalog.+)
                         pg_catalog.current_setting('stripe_billing.past_due_grace')::interval END,
               CASE WHEN cancel_at_period_end THEN period_end END,
               cancel_at)
$$;

-- Recomputes one user's features; writes only what changed.  (PL/pgSQL,
-- not SQL: on the hot path of every event, its plan stays cached.)
CREATE FUNCTION stripe_billing._refresh_user_features(target text, customer_id text DEFAULT NULL,
                                                      ev_type text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  notified text;
BEGIN
  IF target IS NULL THEN
    RETURN;
  END IF;
  -- one derivation of a user at a time (see user_derivations); the next
  -- statement's snapshot then sees the previous derivation's commit
  INSERT INTO stripe_billing.user_derivations AS d (user_ref, derived_at) VALUES (target, now())
  ON CONFLICT (user_ref) DO UPDATE SET derived_at = EXCLUDED.derived_at, derivations = d.derivations + 1;
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
  -- (delivered at commit, not at all on rollback)
  SELECT pg_notify('stripe_billing', json_build_object(
           'user_ref', target, 'customer', customer_id, 'event_type', ev_type,
           'features', (SELECT coalesce(json_agg(json_build_object('feature', feature, 'valid_until', valid_until)
                                                 ORDER BY feature), '[]') FROM wanted))::text)
    INTO notified   -- (unused: PERFORM cannot start with WITH)
   WHERE EXISTS (SELECT FROM revoked) OR EXISTS (SELECT FROM granted);
END
$$;

-- Recomputes the features of the users linked to a customer.
CREATE FUNCTION stripe_billing._refresh_customer_features(customer_id text, ev_type text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._refresh_user_features(c.user_ref, c.id, ev_type)
     FROM stripe_billing.customers c WHERE c.id = customer_id AND c.user_ref IS NOT NULL;
END
$$;

-- Recomputes every user's features (after a grant changes, or the grace
-- settings do); returns the number of users looked at.
CREATE FUNCTION stripe_billing.stripe_refresh_entitlements() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint := 0;
  u text;
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
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
REVOKE ALL ON FUNCTION stripe_billing.stripe_refresh_entitlements() FROM PUBLIC;

-- Grants a feature to subscription items with this price id, price lookup
-- key or product id ('price', 'lookup_key', 'product').
CREATE FUNCTION stripe_billing.stripe_grant_feature(source_type text, source text, feature text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  IF source_type IS NULL OR source_type NOT IN ('price', 'lookup_key', 'product') THEN
    RAISE EXCEPTION 'source_type must be ''price'', ''lookup_key'' or ''product'', not %',
                    coalesce(quote_literal(source_type), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(source, '') = '' THEN
    RAISE EXCEPTION 'source must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(feature, '') = '' THEN
    RAISE EXCEPTION 'feature must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  INSERT INTO stripe_billing.feature_grants VALUES (source_type, source, feature) ON CONFLICT DO NOTHING;
  IF FOUND THEN
    PERFORM stripe_billing.stripe_refresh_entitlements();
  END IF;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_grant_feature(text, text, text) FROM PUBLIC;

-- Takes a grant back; true if there was one.
CREATE FUNCTION stripe_billing.stripe_revoke_feature(source_type text, source text, feature text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  DELETE FROM stripe_billing.feature_grants g
   WHERE g.source_type = stripe_revoke_feature.source_type AND g.source = stripe_revoke_feature.source
     AND g.feature = stripe_revoke_feature.feature;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM stripe_billing.stripe_refresh_entitlements();
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_revoke_feature(text, text, text) FROM PUBLIC;

-- Does the user have the feature now?  Served from a per-backend cache of
-- user_features; false for NULL or empty arguments, never an error.
CREATE FUNCTION stripe_billing.stripe_has_entitlement(user_ref text, feature text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_has_entitlement'
LANGUAGE C STABLE PARALLEL SAFE;

-- The user's features valid now, with when access ends (NULL: no end known).
CREATE FUNCTION stripe_billing.stripe_user_features(user_ref text)
RETURNS TABLE (feature text, valid_until timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT f.feature, f.valid_until FROM stripe_billing.user_features f
   WHERE f.user_ref = stripe_user_features.user_ref
     AND (f.valid_until IS NULL OR f.valid_until > stripe_billing.stripe_now())
   ORDER BY f.feature
$$;

-- The status of the user's most relevant subscription (active first, then
-- trialing, past_due, ...), or NULL when they have none.
CREATE FUNCTION stripe_billing.stripe_subscription_status(user_ref text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT s.status
    FROM stripe_billing.customers c
    JOIN stripe_billing.subscriptions s ON s.customer = c.id
   WHERE c.user_ref = stripe_subscription_status.user_ref
   ORDER BY array_position(ARRAY['active', 'trialing', 'past_due', 'unpaid', 'paused', 'incomplete',
                                 'canceled', 'incomplete_expired'], s.status) NULLS LAST,
            s.current_period_end DESC NULLS LAST
   LIMIT 1
$$;

-- The time entitlement checks use: now(), or stripe_billing.test_clock.
CREATE FUNCTION stripe_billing.stripe_now() RETURNS timestamptz
AS 'MODULE_PATHNAME', 'stripe_now'
LANGUAGE C STABLE PARALLEL SAFE;

--------------------------------------------------------------------------
-- Stripe API calls
--
-- stripe_api (C) makes the request: HTTPS to stripe_billing.api_base with
-- the configured key and version, an Idempotency-Key on every POST and
-- DELETE, retries of what Stripe says may be retried, Stripe's errors as
-- SQLSTATEs SBA01..SBA07, and the returned object applied to the local
-- tables at once.  The functions below build the calls apps need.  None is
-- executable by PUBLIC: grant them to the application's backend role.
--------------------------------------------------------------------------

CREATE FUNCTION stripe_billing.stripe_api(method text, path text, params jsonb DEFAULT '{}',
                                          idempotency_key text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_api'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_api(text, text, jsonb, text) FROM PUBLIC;

-- The user's Stripe customer (the most recently created live one), or NULL.
-- (PL/pgSQL, not SQL: its plan is cached across transactions.)
CREATE FUNCTION stripe_billing._customer_of(target text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN (SELECT c.id FROM stripe_billing.customers c
           WHERE c.user_ref = target AND NOT c.deleted
           ORDER BY c.created DESC NULLS LAST, c.id LIMIT 1);
END
$$;

-- Raises an invalid_parameter_value error naming the argument.
CREATE FUNCTION stripe_billing._bad_argument(argument text, problem text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION '% %', argument, problem USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- A Stripe id that goes into a request path, checked: letters, digits and
-- '_' only (libcurl resolves dot segments, so '../customers/x' would reach
-- another endpoint).  Raises invalid_parameter_value naming the argument.
CREATE FUNCTION stripe_billing._path_id(argument text, id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF coalesce(id, '') = '' THEN
    PERFORM stripe_billing._bad_argument(argument, 'must not be empty');
  END IF;
  IF id !~ '^[A-Za-z0-9_]+$' OR length(id) > 255 THEN
    PERFORM stripe_billing._bad_argument(argument,
        format('must be a Stripe id (letters, digits and _, at most 255), not %s', quote_literal(left(id, 100))));
  END IF;
  RETURN id;
END
$$;

-- A Checkout session for the user: subscription or one-time payment (C: the
-- form is built directly, the returned session recorded in checkout_sessions).
CREATE FUNCTION stripe_billing.stripe_create_checkout(
    user_ref text, price text, success_url text, cancel_url text,
    quantity integer DEFAULT 1, mode text DEFAULT 'subscription', trial_days integer DEFAULT NULL,
    allow_promotion_codes boolean DEFAULT false, customer_email text DEFAULT NULL,
    metadata jsonb DEFAULT '{}', idempotency_key text DEFAULT NULL,
    OUT session_id text, OUT url text, OUT expires_at timestamptz)
AS 'MODULE_PATHNAME', 'stripe_create_checkout'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                            boolean, text, jsonb, text) FROM PUBLIC;

-- A customer portal session for the user; returns its URL.
CREATE FUNCTION stripe_billing.stripe_create_portal_session(user_ref text, return_url text DEFAULT NULL,
                                                            idempotency_key text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customer_id text := stripe_billing._customer_of(user_ref);
BEGIN
  IF customer_id IS NULL THEN
    RAISE EXCEPTION 'user % has no Stripe customer', coalesce(quote_literal(user_ref), 'NULL')
          USING ERRCODE = 'no_data_found',
                HINT = 'A completed Checkout session, customer metadata or stripe_link_customer() links one.';
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/billing_portal/sessions',
                                   jsonb_strip_nulls(jsonb_build_object('customer', customer_id,
                                                                        'return_url', return_url)),
                                   idempotency_key)->>'url';
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_portal_session(text, text, text) FROM PUBLIC;

-- Cancels a subscription at the period end (default) or now.
CREATE FUNCTION stripe_billing.stripe_cancel_subscription(subscription_id text, at_period_end boolean DEFAULT true,
                                                          idempotency_key text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(at_period_end, true) THEN
    RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                     '{"cancel_at_period_end": true}', idempotency_key);
  END IF;
  RETURN stripe_billing.stripe_api('DELETE', '/v1/subscriptions/' || subscription_id, '{}', idempotency_key);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_cancel_subscription(text, boolean, text) FROM PUBLIC;

-- Takes back a cancellation scheduled for the period end.
CREATE FUNCTION stripe_billing.stripe_resume_subscription(subscription_id text, idempotency_key text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                   '{"cancel_at_period_end": false}', idempotency_key);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_resume_subscription(text, text) FROM PUBLIC;

-- Moves a single-item subscription to another price.
CREATE FUNCTION stripe_billing.stripe_change_price(subscription_id text, new_price text,
                                                   proration_behavior text DEFAULT 'create_prorations',
                                                   quantity integer DEFAULT NULL,
                                                   idempotency_key text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
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
    RAISE EXCEPTION 'subscription % has % live items here; stripe_change_price changes single-item subscriptions',
                    subscription_id, coalesce(array_length(item_ids, 1), 0)
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Use stripe_api(''POST'', ''/v1/subscriptions/<id>'', ...) with items[] for others.';
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_build_object('items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                             'id', item_ids[1], 'price', new_price, 'quantity', quantity))),
                         'proration_behavior', proration_behavior),
      idempotency_key);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text) FROM PUBLIC;

-- Metered usage waiting to be sent as Billing Meter Events; written in the
-- app's transaction, so usage commits or rolls back with the app's work.
CREATE TABLE stripe_billing.usage_outbox (
    id          bigserial PRIMARY KEY,
    user_ref    text NOT NULL,
    event_name  text NOT NULL,
    value       bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX usage_outbox_pending_idx ON stripe_billing.usage_outbox (id) WHERE sent_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.usage_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.usage_outbox_id_seq', '');

-- Records usage for the user; returns the outbox row id.  No HTTP.
CREATE FUNCTION stripe_billing.stripe_report_usage(user_ref text, event_name text, value bigint,
                                                   occurred_at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  row_id bigint;
BEGIN
  IF coalesce(user_ref, '') = '' THEN PERFORM stripe_billing._bad_argument('user_ref', 'must not be empty'); END IF;
  IF coalesce(event_name, '') = '' THEN PERFORM stripe_billing._bad_argument('event_name', 'must not be empty'); END IF;
  IF value IS NULL THEN PERFORM stripe_billing._bad_argument('value', 'must not be NULL'); END IF;
  IF occurred_at IS NULL THEN PERFORM stripe_billing._bad_argument('occurred_at', 'must not be NULL'); END IF;
  INSERT INTO stripe_billing.usage_outbox (user_ref, event_name, value, occurred_at)
  VALUES (user_ref, event_name, value, occurred_at)
  RETURNING id INTO row_id;
  RETURN row_id;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_report_usage(text, text, bigint, timestamptz) FROM PUBLIC;

-- Sends pending usage rows, oldest first, each as a meter event whose
-- identifier (and idempotency key) is sb_usage_<id>, so a row sent but not
-- marked (a crash in between) is not counted twice; returns how many were
-- sent.  Failures stay pending with their error.
CREATE FUNCTION stripe_billing.stripe_send_usage(max_rows integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r record;
  customer_id text;
  sent integer := 0;
BEGIN
  FOR r IN SELECT * FROM stripe_billing.usage_outbox
            WHERE sent_at IS NULL ORDER BY id LIMIT max_rows FOR UPDATE SKIP LOCKED
  LOOP
    customer_id := stripe_billing._customer_of(r.user_ref);
    IF customer_id IS NULL THEN
      UPDATE stripe_billing.usage_outbox
         SET attempts = attempts + 1, last_error = format('user %s has no Stripe customer yet', r.user_ref)
       WHERE id = r.id;
      CONTINUE;
    END IF;
    BEGIN
      PERFORM stripe_billing.stripe_api('POST', '/v1/billing/meter_events',
          jsonb_build_object('event_name', r.event_name, 'identifier', 'sb_usage_' || r.id,
                             'timestamp', extract(epoch FROM r.occurred_at)::bigint,
                             'payload', jsonb_build_object('stripe_customer_id', customer_id,
                                                           'value', r.value::text)),
          'sb_usage_' || r.id);
      UPDATE stripe_billing.usage_outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL
       WHERE id = r.id;
      sent := sent + 1;
    EXCEPTION WHEN OTHERS THEN
      -- Stripe already has this identifier: an earlier send got through
      IF SQLSTATE = 'SBA01' AND SQLERRM ILIKE '%already exists%' THEN
        UPDATE stripe_billing.usage_outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL
         WHERE id = r.id;
        sent := sent + 1;
      ELSE
        UPDATE stripe_billing.usage_outbox SET attempts = attempts + 1, last_error = SQLERRM WHERE id = r.id;
      END IF;
    END;
  END LOOP;
  RETURN sent;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_send_usage(integer) FROM PUBLIC;

--------------------------------------------------------------------------
-- Sync: pulling /v1/events (the background worker, or stripe_sync_now)
--------------------------------------------------------------------------

-- The worker's state: one row.
CREATE TABLE stripe_billing.sync_state (
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
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
    cursor_reset_reason  text
);
INSERT INTO stripe_billing.sync_state DEFAULT VALUES;
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.sync_state', '');

-- pg_dump keeps the row (cursor, pause, counters), and a restore inserts it
-- into a table where CREATE EXTENSION already put one: the restored row
-- then replaces it instead of failing on the primary key (so a restore
-- succeeds in one transaction).
CREATE FUNCTION stripe_billing._sync_state_restore() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  DELETE FROM stripe_billing.sync_state WHERE singleton = NEW.singleton;
  RETURN NEW;
END
$$;
CREATE TRIGGER sync_state_restore BEFORE INSERT ON stripe_billing.sync_state
    FOR EACH ROW EXECUTE FUNCTION stripe_billing._sync_state_restore();

-- Applies one page of events newer than the cursor, oldest first, and moves
-- the cursor, all in the caller's transaction (so a crash loses or repeats
-- nothing).  Returns the number of events in the page and whether Stripe
-- has more.
-- The page of events just newer than the cursor; with prefetch_next, the
-- next page's request starts in the background (see api.c).
CREATE FUNCTION stripe_billing._events_page(event_cursor text, prefetch_next boolean) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_events_page'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Applies one polled event in a subtransaction of its own; an event too
-- malformed to be kept (SBE01: no usable id) is skipped with a WARNING
-- instead of failing its page for ever.  True when it was applied.
CREATE FUNCTION stripe_billing._apply_polled(event jsonb) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_apply_event(event, 'poll');
  RETURN true;
EXCEPTION WHEN SQLSTATE 'SBE01' THEN
  RAISE WARNING 'stripe_billing: a polled event was skipped: %', SQLERRM
        USING DETAIL = format('Its id: %s.', coalesce(left(event->>'id', 100), '(none)'));
  RETURN false;
END
$$;

-- An expired cursor: the newest event becomes the cursor (not applied), the
-- lookback starts there, and a reconciliation repairs what the gap missed;
-- sync_status says when and why.
CREATE FUNCTION stripe_billing._restart_cursor(reason text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  newest jsonb := stripe_billing.stripe_api('GET', '/v1/events', '{"limit": 1}')->'data'->0;
BEGIN
  RAISE WARNING 'stripe_billing: %; polling restarts from the newest event, %, and a reconciliation starts',
        reason, coalesce(newest->>'id', '(none yet)');
  UPDATE stripe_billing.sync_state
     SET event_cursor = newest->>'id',
         start_from = CASE WHEN newest IS NULL THEN now()::text ELSE 'now' END,
         last_event_created = stripe_billing._ts(newest->'created'),
         lookback_after = coalesce(stripe_billing._ts(newest->'created'), now()),
         cursor_reset_at = now(), cursor_reset_reason = reason,
         last_success_at = now(), consecutive_failures = 0;
  PERFORM stripe_billing._reconcile_begin('cursor expired');
END
$$;

-- A page of events jsonb refused as a whole: asked for again as text and
-- split without decoding its strings (_split_list_page).  Returns the page
-- as jsonb when it parses now (the first answer was spoiled on the way);
-- otherwise applies its events oldest first, each one jsonb refuses (a
-- \u0000 in a string, a number beyond jsonb's range) recorded as failed
-- with its text and the reason, moves the cursor and returns NULL.  A body
-- that is not a JSON list raises (SBA07: polled again later).
CREATE FUNCTION stripe_billing._poll_unparsed_page(event_cursor text) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  body text := stripe_billing._events_page_text(event_cursor);
  split record;
  e jsonb;
  id text;
  newest text;
  kept integer := 0;
BEGIN
  BEGIN
    RETURN body::jsonb;
  EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    NULL;
  END;
  split := stripe_billing._split_list_page(body);
  FOR i IN REVERSE cardinality(split.items) .. 1 LOOP
    BEGIN
      e := split.items[i]::jsonb;
      PERFORM stripe_billing._apply_polled(e);
      id := e->>'id';
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
      BEGIN
        id := stripe_billing._record_unparsed_event(split.items[i],
                                                    'the event is not valid jsonb: ' || SQLERRM, 'poll');
        kept := kept + 1;
      EXCEPTION WHEN SQLSTATE 'SBE01' THEN
        RAISE WARNING 'stripe_billing: a polled event was skipped: %', SQLERRM;
        id := NULL;
      END;
    END;
    newest := coalesce(id, newest);
  END LOOP;
  RAISE WARNING 'stripe_billing: % polled event(s) jsonb refuses kept as failed', kept
        USING DETAIL = format('In the page after %s.', event_cursor);
  UPDATE stripe_billing.sync_state s
     SET event_cursor = coalesce(newest, s.event_cursor),
         events_applied = s.events_applied + cardinality(split.items),
         last_event_created = coalesce((SELECT l.created FROM stripe_billing.events l WHERE l.id = newest),
                                       s.last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL;
  RETURN NULL;
END
$$;

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

-- The page of events just newer than the cursor, as text.
CREATE FUNCTION stripe_billing._events_page_text(event_cursor text) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_page_text'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stripe_billing._poll_page(prefetch_next boolean DEFAULT false,
                                          OUT events integer, OUT has_more boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  st stripe_billing.sync_state;
  page jsonb;
  first_page jsonb;
  oldest jsonb;
  outcome text;
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
  -- the page is newest first: apply it oldest first
  BEGIN
    FOR i IN REVERSE events - 1 .. 0 LOOP
      -- (an assignment is a simple expression: no executor per event, as PERFORM has)
      outcome := stripe_billing.stripe_apply_event(page->i, 'poll');
    END LOOP;
  EXCEPTION WHEN SQLSTATE 'SBE01' THEN
    -- an event too malformed to be kept (no usable id): a page retried
    -- forever would stall the worker, so apply the page again one event at
    -- a time (one subtransaction each, on this rare path only) without it
    FOR i IN REVERSE events - 1 .. 0 LOOP
      PERFORM stripe_billing._apply_polled(page->i);
    END LOOP;
  END;
  UPDATE stripe_billing.sync_state
     SET event_cursor = coalesce(page->0->>'id', event_cursor),
         events_applied = events_applied + events,
         last_event_created = coalesce(stripe_billing._ts(page->0->'created'), last_event_created),
         last_success_at = now(), consecutive_failures = 0, last_error = NULL;
END
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
CREATE FUNCTION stripe_billing._poll_lookback() RETURNS integer
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
  applied integer := 0;
BEGIN
  SELECT * INTO st FROM stripe_billing.sync_state;
  IF lookback <= interval '0' OR st.event_cursor IS NULL OR st.last_event_created IS NULL
     OR st.lookback_after IS NULL THEN
    RETURN 0;
  END IF;
  LOOP
    -- (a late event behind the cursor was created no later than the cursor's
    -- second; never before polling started)
    page := stripe_billing.stripe_api('GET', '/v1/events', jsonb_strip_nulls(jsonb_build_object(
        'limit', 100, 'starting_after', older_than,
        'created', jsonb_build_object(
            'gt', greatest(floor(extract(epoch FROM st.last_event_created - lookback))::bigint - 1,
                           floor(extract(epoch FROM st.lookback_after))::bigint),
            'lte', extract(epoch FROM st.last_event_created)::bigint))));
    FOR e IN SELECT d.value FROM jsonb_array_elements(page->'data') WITH ORDINALITY d(value, n) ORDER BY d.n LOOP
      IF NOT behind THEN
        behind := e->>'id' = st.event_cursor;
      ELSIF NOT EXISTS (SELECT FROM stripe_billing.events l WHERE l.id = e->>'id') THEN
        late := late || jsonb_build_array(e);
      END IF;
    END LOOP;
    EXIT WHEN NOT coalesce((page->>'has_more')::boolean, false)
           OR coalesce(jsonb_array_length(page->'data'), 0) = 0;
    older_than := page->'data'->-1->>'id';
  END LOOP;

  FOR i IN REVERSE jsonb_array_length(late) - 1 .. 0 LOOP
    IF stripe_billing._apply_polled(late->i) THEN
      applied := applied + 1;
    END IF;
  END LOOP;
  IF applied > 0 THEN
    UPDATE stripe_billing.sync_state SET events_applied = events_applied + applied;
    RAISE LOG 'stripe_billing: % late-listed event(s) applied', applied;
  END IF;
  RETURN applied;
END
$$;

-- Fetches the current state of rows marked by same-second ties (and
-- entitlement summaries cut short) and applies it; returns how many.
CREATE FUNCTION stripe_billing._refetch_marked(max_rows integer) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r record;
  n integer := 0;
  list jsonb;
  items jsonb;
  summary jsonb;
BEGIN
  FOR r IN SELECT tab, id, path FROM (
             SELECT 'customers' AS tab, id, '/v1/customers/' || id AS path
               FROM stripe_billing.customers WHERE refetch AND NOT deleted
             UNION ALL SELECT 'subscriptions', id, '/v1/subscriptions/' || id
               FROM stripe_billing.subscriptions WHERE refetch
             UNION ALL SELECT 'invoices', id, '/v1/invoices/' || id
               FROM stripe_billing.invoices WHERE refetch AND NOT deleted
             UNION ALL SELECT 'products', id, '/v1/products/' || id
               FROM stripe_billing.products WHERE refetch AND NOT deleted
             UNION ALL SELECT 'prices', id, '/v1/prices/' || id
               FROM stripe_billing.prices WHERE refetch AND NOT deleted
             UNION ALL SELECT 'checkout_sessions', id, '/v1/checkout/sessions/' || id
               FROM stripe_billing.checkout_sessions WHERE refetch
           ) marked LIMIT max_rows
  LOOP
    -- an id that cannot be a path segment is not asked for (ids come from
    -- events; custom product and plan ids may hold '-')
    IF r.id !~ '^[A-Za-z0-9_-]{1,255}$' THEN
      RAISE WARNING 'stripe_billing: % % cannot be re-fetched: its id is not a Stripe id', r.tab, quote_literal(left(r.id, 100));
      EXECUTE format('UPDATE stripe_billing.%I SET refetch = false WHERE id = $1', r.tab) USING r.id;
      CONTINUE;
    END IF;
    BEGIN
      PERFORM stripe_billing.stripe_api('GET', r.path);   -- applied as a snapshot
      n := n + 1;
    EXCEPTION WHEN OTHERS THEN
      -- gone at Stripe (or not readable with this key): nothing to heal
      IF SQLSTATE = 'SBA01' AND SQLERRM ILIKE '%no such%' THEN
        EXECUTE format('UPDATE stripe_billing.%I SET refetch = false WHERE id = $1', r.tab) USING r.id;
      ELSE
        RAISE;
      END IF;
    END;
    -- a snapshot of the same second as the tie cannot settle it: do not ask again
    EXECUTE format('UPDATE stripe_billing.%I SET refetch = false WHERE id = $1 AND refetch', r.tab) USING r.id;
  END LOOP;

  FOR r IN SELECT customer FROM stripe_billing.entitlement_summaries WHERE refetch LIMIT max_rows LOOP
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
    PERFORM stripe_billing._apply_entitlement_summary(summary, 'entitlements.refetch', 'refetch', now());
    UPDATE stripe_billing.entitlement_summaries SET refetch = false WHERE customer = r.customer;
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;

-- The worker's duties besides polling, each bounded: flush usage, retry
-- failed events (every 5 minutes), re-fetch marked rows.
CREATE FUNCTION stripe_billing._sync_duties() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  usage_sent integer;
  retried integer := 0;
  refetched integer;
BEGIN
  usage_sent := stripe_billing.stripe_send_usage(100);
  IF (SELECT last_retry_at IS NULL OR last_retry_at < now() - interval '5 minutes' FROM stripe_billing.sync_state) THEN
    SELECT count(*) INTO retried FROM stripe_billing.stripe_retry_failed_events(100);
    UPDATE stripe_billing.sync_state SET last_retry_at = now();
  END IF;
  refetched := stripe_billing._refetch_marked(20);
  RETURN jsonb_build_object('usage_sent', usage_sent, 'failed_retried', retried, 'refetched', refetched);
END
$$;

-- The background worker's one entry point (so stripe_billing.worker_role
-- needs EXECUTE on this function only): 'ready' (true unless paused),
-- 'no_key' and 'failed' (record why in sync_state), 'poll' (one page; true
-- when more wait), 'backfill' and 'reconcile' (one page, when there is
-- one; true when more wait), 'lookback' (late-listed events) and 'duties'.
-- Runs as the extension's owner.
CREATE FUNCTION stripe_billing._worker_step(step text, error text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  more boolean;
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
    IF current_setting('stripe_billing.backfill_on_start')::boolean
       AND (SELECT event_cursor IS NULL AND lookback_after IS NULL FROM stripe_billing.sync_state)
       AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state) THEN
      more := (stripe_billing._poll_page(true)).has_more;
      PERFORM stripe_billing._backfill_begin(NULL);
      RETURN more;
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
  WHEN 'duties' THEN
    PERFORM stripe_billing._sync_duties();
    RETURN false;
  END CASE;
END
$$;

-- Runs a poll cycle now in this session (all pages, in this transaction);
-- returns the number of events received.
CREATE FUNCTION stripe_billing.stripe_sync_now() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  total integer := 0;
  p record;
BEGIN
  LOOP
    p := stripe_billing._poll_page();
    total := total + p.events;
    EXIT WHEN NOT p.has_more;
  END LOOP;
  total := total + stripe_billing._poll_lookback();
  PERFORM stripe_billing._sync_duties();
  RETURN total;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_now() FROM PUBLIC;

-- Where polling starts when there is no cursor yet: 'now', or a time within
-- Stripe's 30 days of events.  Resets the cursor.
CREATE FUNCTION stripe_billing.stripe_sync_start_from(start_from text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF start_from IS NULL OR (start_from <> 'now' AND start_from::timestamptz < now() - interval '30 days') THEN
    PERFORM stripe_billing._bad_argument('start_from', 'must be ''now'' or a time within the last 30 days');
  END IF;
  UPDATE stripe_billing.sync_state
     SET start_from = CASE WHEN stripe_sync_start_from.start_from = 'now' THEN 'now'
                           ELSE stripe_sync_start_from.start_from::timestamptz::text END,
         event_cursor = NULL, lookback_after = NULL;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_start_from(text) FROM PUBLIC;

CREATE FUNCTION stripe_billing.stripe_sync_pause() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = true $$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_pause() FROM PUBLIC;

CREATE FUNCTION stripe_billing.stripe_sync_resume() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = false $$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_sync_resume() FROM PUBLIC;

--------------------------------------------------------------------------
-- Listing Stripe's current objects: the backfill (an account that existed
-- before the install) and reconciliation (drift between Stripe and here)
--------------------------------------------------------------------------

-- One GET of a list endpoint, spaced under max_requests_per_second; the
-- page is returned, not applied, with its time (Stripe's Date header).  The
-- next request (next_params; NULL: the next page; JSON null: none) starts
-- in the background meanwhile (see listing.c).
CREATE FUNCTION stripe_billing._list_page(path text, params jsonb, next_params jsonb DEFAULT NULL,
                                          OUT page jsonb, OUT snapshot timestamptz)
AS 'MODULE_PATHNAME', 'stripe_list_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Starts a request a later _list_page makes, in the background.
CREATE FUNCTION stripe_billing._list_prefetch(path text, params jsonb) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_list_prefetch'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Applies listed objects as snapshots taken at snapshot (see listing.c).
CREATE FUNCTION stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz, source text,
                                                replacements jsonb DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_apply_snapshots'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Stripe embeds at most 10 items in a listed subscription: the rest of each
-- cut-short list is read from /v1/subscription_items, so the snapshot holds
-- every item.  Returns the completed subscriptions by id (to stand for the
-- listed ones: the page itself is not rebuilt) and how many requests it took.
CREATE FUNCTION stripe_billing._complete_items(subscriptions jsonb, OUT complete jsonb, OUT requests integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  cut jsonb;           -- the subscriptions whose item list was cut short
  sub jsonb;
  items jsonb;
  l record;
BEGIN
  complete := '{}';
  requests := 0;
  SELECT jsonb_agg(e) INTO cut FROM jsonb_array_elements(subscriptions) e
   WHERE coalesce((e->'items'->>'has_more')::boolean, false);
  FOR sub IN SELECT * FROM jsonb_array_elements(coalesce(cut, '[]')) LOOP
    items := '[]';
    LOOP
      -- (nothing started in the background: the subscriptions' next page is)
      SELECT * INTO l FROM stripe_billing._list_page('/v1/subscription_items',
          jsonb_strip_nulls(jsonb_build_object('subscription', sub->>'id', 'limit', 100,
                                               'starting_after', items->-1->>'id')), 'null');
      requests := requests + 1;
      items := items || coalesce(l.page->'data', '[]');
      EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
    END LOOP;
    complete := complete || jsonb_build_object(sub->>'id', jsonb_set(sub, '{items}',
        (sub->'items') || jsonb_build_object('data', items, 'has_more', false)));
  END LOOP;
END
$$;

-- The backfill's progress, one row per kind (kept by pg_dump).
CREATE TABLE stripe_billing.backfill_state (
    kind          text PRIMARY KEY,
    ordinal       integer NOT NULL,     -- dependency order
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'done', 'failed')),
    list_cursor   text,                 -- starting_after: the last object (customer, for entitlements) done
    pages         bigint NOT NULL DEFAULT 0,
    objects       bigint NOT NULL DEFAULT 0,
    requests      bigint NOT NULL DEFAULT 0,
    since         timestamptz,          -- invoices: created since then
    started_at    timestamptz,
    finished_at   timestamptz,
    last_error    text,
    last_error_at timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.backfill_state', '');

CREATE VIEW stripe_billing.backfill_status AS
SELECT kind, state, pages, objects, requests, started_at, finished_at, last_error
  FROM stripe_billing.backfill_state
 ORDER BY ordinal;

-- The kinds a backfill lists, in dependency order.
CREATE FUNCTION stripe_billing._backfill_kinds() RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['products', 'prices', 'customers', 'subscriptions', 'invoices', 'entitlements'] $$;

-- Starts a backfill of the given kinds (all when NULL).  While one of them
-- is unfinished (a crash, a cancel, a failure), the backfill resumes: those
-- go on from their cursors, those done stay done.  When all are done, they
-- start over (a new backfill).
CREATE FUNCTION stripe_billing._backfill_begin(kinds text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  known text[] := stripe_billing._backfill_kinds();
  bad text;
  again boolean;
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings read below)
  IF kinds IS NOT NULL THEN
    IF cardinality(kinds) = 0 THEN
      PERFORM stripe_billing._bad_argument('kinds', 'must not be empty (NULL means every kind)');
    END IF;
    SELECT k INTO bad FROM unnest(kinds) k WHERE k IS NULL OR NOT k = ANY (known) LIMIT 1;
    IF FOUND THEN
      PERFORM stripe_billing._bad_argument('kinds', format('%s is not a kind of object to backfill (%s)',
                                                           coalesce(quote_literal(bad), 'NULL'),
                                                           array_to_string(known, ', ')));
    END IF;
  END IF;
  again := NOT EXISTS (SELECT FROM stripe_billing.backfill_state s
                        WHERE s.kind = ANY (coalesce(kinds, known)) AND s.state <> 'done');
  INSERT INTO stripe_billing.backfill_state AS b (kind, ordinal, since)
  SELECT k, array_position(known, k),
         CASE WHEN k = 'invoices'
              THEN now() - current_setting('stripe_billing.backfill_invoices_since')::interval END
    FROM unnest(coalesce(kinds, known)) k
  ON CONFLICT (kind) DO UPDATE
     SET state = 'pending', list_cursor = NULL, pages = 0, objects = 0, requests = 0, since = EXCLUDED.since,
         started_at = NULL, finished_at = NULL, last_error = NULL, last_error_at = NULL
   WHERE again AND b.state = 'done';
  UPDATE stripe_billing.backfill_state
     SET state = 'pending'
   WHERE state = 'failed' AND kind = ANY (coalesce(kinds, known));
END
$$;

-- One page of a kind: lists it (entitlements: per customer with a live
-- subscription) and applies it as snapshots.
CREATE FUNCTION stripe_billing._backfill_page(kind text, list_cursor text, since timestamptz,
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
    -- this page: the next call takes them
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
            CASE WHEN i + ahead <= cardinality(customers)
                 THEN jsonb_build_object('customer', customers[i + ahead], 'limit', 100) ELSE 'null' END);
        requests := requests + 1;
        taken_at := coalesce(taken_at, l.snapshot);   -- (the first page's: the summary is no newer)
        items := items || coalesce(l.page->'data', '[]');
        EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
      END LOOP;
      PERFORM stripe_billing._apply_snapshots(jsonb_build_array(jsonb_build_object(
          'object', 'entitlements.active_entitlement_summary', 'customer', customers[i],
          'entitlements', jsonb_build_object('object', 'list', 'has_more', false, 'data', items))),
          taken_at, 'backfill');
      objects := objects + 1;
      next_cursor := customers[i];
    END LOOP;
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
  -- once their cut-short item lists are read)
  SELECT * INTO l FROM stripe_billing._list_page(path, params,
                                                 CASE WHEN kind = 'subscriptions' THEN 'null'::jsonb END);
  requests := 1;
  data := coalesce(l.page->'data', '[]');
  has_more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
  SELECT NULL::jsonb AS complete, 0 AS requests INTO c;
  IF kind = 'subscriptions' THEN
    SELECT * INTO c FROM stripe_billing._complete_items(data);
    requests := requests + c.requests;
    IF has_more THEN
      PERFORM stripe_billing._list_prefetch(path, params || jsonb_build_object('starting_after', data->-1->>'id'));
    END IF;
  END IF;
  PERFORM stripe_billing._apply_snapshots(data, l.snapshot, 'backfill', c.complete);
  objects := jsonb_array_length(data);
  next_cursor := coalesce(data->-1->>'id', list_cursor);
END
$$;

-- Refreshes the statistics of the tables a kind fills.
CREATE FUNCTION stripe_billing._backfill_analyze(kind text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  CASE kind
  WHEN 'products' THEN ANALYZE stripe_billing.products;
  WHEN 'prices' THEN ANALYZE stripe_billing.prices;
  WHEN 'customers' THEN ANALYZE stripe_billing.customers, stripe_billing.user_derivations;
  WHEN 'subscriptions' THEN
    ANALYZE stripe_billing.subscriptions, stripe_billing.subscription_items, stripe_billing.user_features,
            stripe_billing.user_derivations;
  WHEN 'invoices' THEN ANALYZE stripe_billing.invoices;
  WHEN 'entitlements' THEN
    ANALYZE stripe_billing.entitlement_summaries, stripe_billing.active_entitlements, stripe_billing.user_features;
  END CASE;
END
$$;

-- Backfills one page of the first unfinished kind (of kinds; NULL: any),
-- committed with its kind's cursor by the caller.  A failure is recorded
-- (failed, last_error) and returned, not raised: other kinds go on.  The
-- worker (retry_failed) takes a failed kind up again a minute later.
-- Returns the kind (NULL: nothing left), a progress line and whether it
-- failed.
CREATE FUNCTION stripe_billing._backfill_step(kinds text[], retry_failed boolean DEFAULT false,
                                              OUT kind text, OUT message text, OUT failed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  b stripe_billing.backfill_state;
  p record;
  pages bigint;
BEGIN
  failed := false;
  SELECT * INTO b FROM stripe_billing.backfill_state s
   WHERE (s.state IN ('pending', 'running')
          OR (retry_failed AND s.state = 'failed' AND s.last_error_at < now() - interval '1 minute'))
     AND (kinds IS NULL OR s.kind = ANY (kinds))
   ORDER BY s.ordinal LIMIT 1
   FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  kind := b.kind;
  BEGIN
    p := stripe_billing._backfill_page(b.kind, b.list_cursor, b.since);
    UPDATE stripe_billing.backfill_state s
       SET state = CASE WHEN p.has_more THEN 'running' ELSE 'done' END,
           list_cursor = p.next_cursor, pages = s.pages + 1, objects = s.objects + p.objects,
           requests = s.requests + p.requests, started_at = coalesce(s.started_at, now()),
           finished_at = CASE WHEN NOT p.has_more THEN now() END, last_error = NULL, last_error_at = NULL
     WHERE s.kind = b.kind
    RETURNING format('stripe_billing backfill: %s, page %s: %s objects (%s in all)%s', s.kind, s.pages, p.objects,
                     s.objects, CASE WHEN p.has_more THEN '' ELSE ', done' END), s.pages
      INTO message, pages;
    -- tables filled from empty: statistics at 1, 4, 16 ... pages, so that
    -- the plans of the mapping and the derivations follow their growth
    -- (a plan made for an empty table would scan it whole for every row)
    IF pages IN (1, 4, 16, 64, 256, 1024, 4096) THEN
      PERFORM stripe_billing._backfill_analyze(b.kind);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- errors of the moment, not the data (a deadlock, a serialization
    -- failure, a shutdown) are raised: the page rolls back and is done
    -- again, the kind resuming from its cursor (a cancel is not caught at all)
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58') THEN
      RAISE;
    END IF;
    UPDATE stripe_billing.backfill_state s
       SET state = 'failed', started_at = coalesce(s.started_at, now()), last_error = SQLERRM, last_error_at = now()
     WHERE s.kind = b.kind;
    message := format('stripe_billing backfill: %s failed: %s', b.kind, SQLERRM);
    failed := true;
  END;
END
$$;

-- Lists the account's current objects and applies them, page by page, each
-- page committed with its kind's cursor: stopped at any moment, a second
-- call resumes where it stopped.  Not in a transaction block (it commits).
CREATE PROCEDURE stripe_billing.stripe_backfill(kinds text[] DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause: a procedure with one may not commit; every call below is
-- qualified, and the steps pin their own search_path)
AS $$
DECLARE
  step record;
  failures text[] := '{}';
BEGIN
  PERFORM stripe_billing._backfill_begin(kinds);
  COMMIT;
  LOOP
    SELECT * INTO step FROM stripe_billing._backfill_step(kinds);
    EXIT WHEN step.kind IS NULL;
    RAISE NOTICE '%', step.message;
    IF step.failed THEN
      failures := pg_catalog.array_append(failures, step.message);
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
REVOKE ALL ON PROCEDURE stripe_billing.stripe_backfill(text[]) FROM PUBLIC;

-- Reconciliation runs: their progress and summary.
CREATE TABLE stripe_billing.reconcile_runs (
    id          bigserial PRIMARY KEY,
    reason      text NOT NULL,         -- manual, scheduled, cursor expired
    state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    phase       text NOT NULL DEFAULT 'subscriptions' CHECK (phase IN ('subscriptions', 'customers')),
    list_cursor text,
    checked     bigint NOT NULL DEFAULT 0,   -- objects compared
    drifted     bigint NOT NULL DEFAULT 0,   -- objects that differed
    fixed       bigint NOT NULL DEFAULT 0,   -- objects set to Stripe's state
    requests    bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    last_error  text
);
-- (one run at a time)
CREATE UNIQUE INDEX reconcile_runs_running_idx ON stripe_billing.reconcile_runs ((true)) WHERE state = 'running';
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_runs', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.reconcile_runs_id_seq', '');

-- Each difference found, field by field.
CREATE TABLE stripe_billing.reconcile_log (
    id           bigserial PRIMARY KEY,
    run          bigint NOT NULL REFERENCES stripe_billing.reconcile_runs ON DELETE CASCADE,
    object_type  text NOT NULL,            -- subscription, customer
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

-- The last run.
CREATE VIEW stripe_billing.reconcile_status AS
SELECT id AS run, reason, state, phase, checked, drifted, fixed, requests, started_at, finished_at, last_error
  FROM stripe_billing.reconcile_runs
 ORDER BY id DESC
 LIMIT 1;

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

-- Starts a reconciliation (or returns the one running).
CREATE FUNCTION stripe_billing._reconcile_begin(reason text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  run_id bigint;
BEGIN
  INSERT INTO stripe_billing.reconcile_runs (reason) VALUES (reason)
  ON CONFLICT ((true)) WHERE state = 'running' DO NOTHING
  RETURNING id INTO run_id;
  RETURN coalesce(run_id, (SELECT id FROM stripe_billing.reconcile_runs WHERE state = 'running'));
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

  -- rows written before the list give way to it
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

-- One page of the running reconciliation: subscriptions (status=all), then
-- customers.  A failure ends the run (failed) and is returned, not raised.
-- Returns the run (NULL: none running) and a progress line.
CREATE FUNCTION stripe_billing._reconcile_step(OUT run bigint, OUT message text, OUT failed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r stripe_billing.reconcile_runs;
  l record;
  c record;
  data jsonb;
  complete jsonb;
  n integer := 1;
  more boolean;
BEGIN
  failed := false;
  SELECT * INTO r FROM stripe_billing.reconcile_runs WHERE state = 'running' ORDER BY id LIMIT 1
     FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  run := r.id;
  BEGIN
    SELECT * INTO l FROM stripe_billing._list_page(
        CASE r.phase WHEN 'subscriptions' THEN '/v1/subscriptions' ELSE '/v1/customers' END,
        jsonb_strip_nulls(jsonb_build_object('limit', 100, 'starting_after', r.list_cursor,
                                             'status', CASE WHEN r.phase = 'subscriptions' THEN 'all' END)));
    data := coalesce(l.page->'data', '[]');
    complete := '{}';
    IF r.phase = 'subscriptions' THEN
      SELECT * INTO c FROM stripe_billing._complete_items(data);
      complete := c.complete;
      n := n + c.requests;
    END IF;
    c := stripe_billing._reconcile_compare(r.id, CASE r.phase WHEN 'subscriptions' THEN 'subscription'
                                                               ELSE 'customer' END, data, l.snapshot, complete);
    more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
    UPDATE stripe_billing.reconcile_runs g
       SET checked = g.checked + c.checked, drifted = g.drifted + c.drifted, fixed = g.fixed + c.fixed,
           requests = g.requests + n,
           list_cursor = CASE WHEN more THEN data->-1->>'id' END,
           phase = CASE WHEN NOT more AND g.phase = 'subscriptions' THEN 'customers' ELSE g.phase END,
           state = CASE WHEN NOT more AND g.phase = 'customers' THEN 'done' ELSE 'running' END,
           finished_at = CASE WHEN NOT more AND g.phase = 'customers' THEN now() END
     WHERE g.id = r.id;
    message := format('stripe_billing reconcile: %s %s checked, %s differed, %s fixed',
                      c.checked, r.phase, c.drifted, c.fixed);
  EXCEPTION WHEN OTHERS THEN
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58') THEN
      RAISE;     -- (of the moment: the page is done again)
    END IF;
    UPDATE stripe_billing.reconcile_runs
       SET state = 'failed', last_error = SQLERRM, finished_at = now()
     WHERE id = r.id;
    message := format('stripe_billing reconcile: failed: %s', SQLERRM);
    failed := true;
  END;
END
$$;

-- Compares subscriptions (every status) and customers at Stripe with the
-- local rows, repairs what differs and logs it in reconcile_log; page by
-- page, each committed.  Not in a transaction block (it commits).
CREATE PROCEDURE stripe_billing.stripe_reconcile()
LANGUAGE plpgsql
-- (no SET clause, so that it may commit: every call below is qualified)
AS $$
DECLARE
  step record;
BEGIN
  PERFORM stripe_billing._reconcile_begin('manual');
  COMMIT;
  LOOP
    SELECT * INTO step FROM stripe_billing._reconcile_step();
    EXIT WHEN step.run IS NULL;
    RAISE NOTICE '%', step.message;
    COMMIT;
    IF step.failed THEN
      RAISE EXCEPTION '%', step.message
            USING HINT = 'See stripe_billing.reconcile_status; CALL stripe_billing.stripe_reconcile() starts again.';
    END IF;
  END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_reconcile() FROM PUBLIC;

-- Is a scheduled reconciliation due?  Every reconcile_interval since the
-- last run, the end of a backfill or the first poll, never during a backfill.
CREATE FUNCTION stripe_billing._reconcile_due() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT current_setting('stripe_billing.reconcile_interval')::interval > interval '0'
     AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state WHERE state IN ('pending', 'running'))
     AND now() - greatest((SELECT max(started_at) FROM stripe_billing.reconcile_runs),
                          (SELECT max(finished_at) FROM stripe_billing.backfill_state),
                          (SELECT lookback_after FROM stripe_billing.sync_state))
         >= current_setting('stripe_billing.reconcile_interval')::interval
$$;

-- The worker's state at a glance; phase: starting, backfill (objects are
-- being listed; events are pulled meanwhile), reconciling, streaming or
-- paused.
CREATE VIEW stripe_billing.sync_status AS
SELECT CASE WHEN s.paused THEN 'paused'
            WHEN s.event_cursor IS NULL AND s.lookback_after IS NULL THEN 'starting'
            WHEN EXISTS (SELECT FROM stripe_billing.backfill_state b WHERE b.state IN ('pending', 'running'))
              THEN 'backfill'
            WHEN EXISTS (SELECT FROM stripe_billing.reconcile_runs r WHERE r.state = 'running') THEN 'reconciling'
            ELSE 'streaming' END AS phase,
       s.event_cursor AS cursor, s.start_from, s.paused, s.last_poll_at, s.last_success_at,
       now() - s.last_event_created AS lag, s.events_applied, s.last_error, s.last_error_at,
       s.consecutive_failures, s.cursor_reset_at, s.cursor_reset_reason,
       (SELECT count(*) FROM stripe_billing.usage_outbox u WHERE u.sent_at IS NULL) AS outbox_backlog,
       (SELECT count(*) FROM stripe_billing.events e WHERE e.outcome = 'failed') AS failed_events,
       (SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'stripe_billing sync'
         AND datname = current_database() LIMIT 1) AS worker_pid
  FROM stripe_billing.sync_state s;

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
