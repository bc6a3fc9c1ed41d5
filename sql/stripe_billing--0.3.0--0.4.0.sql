-- stripe_billing 0.3.0 -> 0.4.0.
\echo Use "ALTER EXTENSION stripe_billing UPDATE TO '0.4.0'" to load this file. \quit
-- Grants made on the functions this update recreates (their signatures
-- changed: an account argument; Checkout's Connect arguments) are carried
-- over to the new ones, at the end.
SELECT pg_catalog.set_config('stripe_billing_upgrade.' || p.proname, coalesce(p.proacl::text, ''), false)
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'stripe_billing'::regnamespace
   AND p.proname IN ('stripe_grant_feature', 'stripe_revoke_feature',
                     'stripe_api', 'stripe_create_checkout', 'stripe_create_portal_session',
                     'stripe_cancel_subscription', 'stripe_resume_subscription',
                     'stripe_preview_price_change', 'stripe_change_price', 'stripe_report_usage');

-- Stripe Connect: every ledger and billing row names its account (NULL: the
-- platform's own, as every existing row stays); products and prices are
-- keyed by (id, account); grants are per account.
ALTER TABLE stripe_billing.events ADD COLUMN account text;
ALTER TABLE stripe_billing.customers ADD COLUMN account text;
ALTER TABLE stripe_billing.products ADD COLUMN account text;
ALTER TABLE stripe_billing.prices ADD COLUMN account text;
ALTER TABLE stripe_billing.subscriptions ADD COLUMN account text;
ALTER TABLE stripe_billing.subscription_items ADD COLUMN account text;
ALTER TABLE stripe_billing.invoices ADD COLUMN account text;
ALTER TABLE stripe_billing.payments ADD COLUMN account text;
ALTER TABLE stripe_billing.checkout_sessions ADD COLUMN account text;
ALTER TABLE stripe_billing.entitlement_summaries ADD COLUMN account text;
ALTER TABLE stripe_billing.products DROP CONSTRAINT products_pkey,
    ADD CONSTRAINT products_id_account_key UNIQUE NULLS NOT DISTINCT (id, account);
ALTER TABLE stripe_billing.products ALTER COLUMN id SET NOT NULL;
ALTER TABLE stripe_billing.prices DROP CONSTRAINT prices_pkey,
    ADD CONSTRAINT prices_id_account_key UNIQUE NULLS NOT DISTINCT (id, account);
ALTER TABLE stripe_billing.prices ALTER COLUMN id SET NOT NULL;
ALTER TABLE stripe_billing.feature_grants
    ADD COLUMN account text CHECK (account ~ '^acct_[A-Za-z0-9]{1,250}$'),
    DROP CONSTRAINT feature_grants_pkey,
    ADD CONSTRAINT feature_grants_key UNIQUE NULLS NOT DISTINCT (source_type, source, feature, account);
CREATE INDEX events_account_received_idx ON stripe_billing.events (account, received_at)
    WHERE account IS NOT NULL;
-- usage is an account's too (sent with its Stripe-Account header)
ALTER TABLE stripe_billing.usage_outbox ADD COLUMN account text CHECK (account ~ '^acct_[A-Za-z0-9]{1,250}$');

CREATE TABLE stripe_billing.accounts (
    id                 text PRIMARY KEY CHECK (id ~ '^acct_[A-Za-z0-9]{1,250}$'),
    business_name      text,
    country            text,
    default_currency   text,
    charges_enabled    boolean,
    payouts_enabled    boolean,
    details_submitted  boolean,
    requirements_due   text[],
    type               text,
    controller         jsonb,
    created            timestamptz,
    authorized_at      timestamptz,
    deauthorized_at    timestamptz,
    raw                jsonb,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.accounts', '');
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.accounts ALTER COLUMN raw SET COMPRESSION lz4;
  END IF;
END
$$;

-- new: stripe_billing._lock_keys(text[], text[], text[])
CREATE FUNCTION stripe_billing._lock_keys(objects text[], customers text[], users text[]) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_keys'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._lock_objects(jsonb, text)
CREATE FUNCTION stripe_billing._lock_objects(objects jsonb, account text DEFAULT NULL) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_objects'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._link_customer(text, text, boolean, text, text)
CREATE FUNCTION stripe_billing._link_customer(customer_id text, new_user_ref text, fill_only boolean,
                                              ev_type text DEFAULT 'customer.link', ev_account text DEFAULT NULL)
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
  INSERT INTO stripe_billing.customers AS t (id, user_ref, account)
  VALUES (customer_id, new_user_ref, ev_account)
  ON CONFLICT (id) DO UPDATE SET user_ref = EXCLUDED.user_ref, updated_at = now();
  PERFORM stripe_billing._refresh_user_features(old_user_ref, customer_id, ev_type);
  PERFORM stripe_billing._refresh_user_features(new_user_ref, customer_id, ev_type);
END
$$;

-- new: stripe_billing._apply_customer(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_customer(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                               ev_account text DEFAULT NULL)
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
         (id, user_ref, email, name, deleted, metadata, created, raw, last_event_id, last_event_created, account)
  VALUES (o->>'id', stripe_billing._user_ref(o->'metadata'), o->>'email', o->>'name', deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         user_ref = coalesce(t.user_ref, EXCLUDED.user_ref), account = EXCLUDED.account,
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

-- new: stripe_billing._apply_product(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_product(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'product.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.products
                    WHERE id = o->>'id' AND account IS NOT DISTINCT FROM ev_account), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.products AS t
         (id, name, description, active, deleted, metadata, created, raw, last_event_id, last_event_created, account)
  VALUES (o->>'id', o->>'name', o->>'description', (o->>'active')::boolean, deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id, account) DO UPDATE SET
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

-- new: stripe_billing._apply_price(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_price(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                            ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  is_plan boolean := o->>'object' = 'plan';
  deleting boolean := ev_type IN ('price.deleted', 'plan.deleted') OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.prices
                    WHERE id = o->>'id' AND account IS NOT DISTINCT FROM ev_account), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.prices AS t
         (id, product, active, currency, unit_amount, type, recurring_interval, recurring_interval_count,
          usage_type, lookup_key, nickname, deleted, metadata, created, raw, last_event_id, last_event_created,
          account)
  VALUES (o->>'id', stripe_billing._id(o->'product'), (o->>'active')::boolean, o->>'currency',
          CASE WHEN is_plan THEN (o->>'amount')::bigint ELSE (o->>'unit_amount')::bigint END,
          CASE WHEN is_plan THEN 'recurring' ELSE o->>'type' END,
          CASE WHEN is_plan THEN o->>'interval' ELSE o->'recurring'->>'interval' END,
          CASE WHEN is_plan THEN (o->>'interval_count')::integer ELSE (o->'recurring'->>'interval_count')::integer END,
          CASE WHEN is_plan THEN o->>'usage_type' ELSE o->'recurring'->>'usage_type' END,
          o->>'lookup_key', o->>'nickname', deleting, coalesce(o->'metadata', '{}'),
          stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id, account) DO UPDATE SET
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

-- new: stripe_billing._apply_subscription(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_subscription(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                   ev_account text DEFAULT NULL)
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
          latest_invoice, metadata, created, raw, last_event_id, last_event_created, refetch, account)
  VALUES (sid, customer_id, o->>'status', coalesce((o->>'cancel_at_period_end')::boolean, false),
          stripe_billing._ts(o->'cancel_at'), stripe_billing._ts(o->'canceled_at'), stripe_billing._ts(o->'ended_at'),
          period_start, period_end, stripe_billing._ts(o->'trial_start'), stripe_billing._ts(o->'trial_end'),
          CASE WHEN jsonb_typeof(o->'pause_collection') = 'object' THEN o->'pause_collection' END,
          stripe_billing._id(o->'latest_invoice'), coalesce(o->'metadata', '{}'),
          stripe_billing._ts(o->'created'), o, ev_id, ev_created, NOT complete_list, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, status = EXCLUDED.status, account = EXCLUDED.account,
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
          current_period_start, current_period_end, deleted, last_event_id, last_event_created, account)
  SELECT i->>'id', sid,
         coalesce(i->'price'->>'id', i->'plan'->>'id'),
         coalesce(stripe_billing._id(i->'price'->'product'), stripe_billing._id(i->'plan'->'product')),
         i->'price'->>'lookup_key', (i->>'quantity')::bigint,
         coalesce(stripe_billing._ts(i->'current_period_start'), period_start),
         coalesce(stripe_billing._ts(i->'current_period_end'), period_end),
         false, ev_id, ev_created, ev_account
    FROM jsonb_array_elements(items) i
  ON CONFLICT (id) DO UPDATE SET
         subscription = EXCLUDED.subscription, price = EXCLUDED.price, product = EXCLUDED.product,
         account = EXCLUDED.account,
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
    PERFORM stripe_billing._link_customer(customer_id, stripe_billing._user_ref(o->'metadata'), true, ev_type,
                                          ev_account);
  END IF;
  PERFORM stripe_billing._refresh_customer_features(customer_id, ev_type);
  RETURN 'applied';
END
$$;

-- new: stripe_billing._apply_invoice(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_invoice(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
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
          billing_reason, deleted, created, raw, last_event_id, last_event_created, account)
  VALUES (o->>'id', stripe_billing._id(o->'customer'),
          coalesce(stripe_billing._id(o->'subscription'),
                   stripe_billing._id(o->'parent'->'subscription_details'->'subscription')),
          o->>'status', (o->>'amount_due')::bigint, (o->>'amount_paid')::bigint,
          (o->>'amount_remaining')::bigint, o->>'currency', (o->>'attempt_count')::integer,
          stripe_billing._ts(o->'next_payment_attempt'), o->>'hosted_invoice_url', o->>'invoice_pdf',
          stripe_billing._ts(o->'period_start'), stripe_billing._ts(o->'period_end'), o->>'billing_reason',
          deleting, stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, subscription = EXCLUDED.subscription, status = EXCLUDED.status,
         account = EXCLUDED.account,
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

-- changed: stripe_billing._upsert_payment(stripe_billing.payments, text[])
CREATE OR REPLACE FUNCTION stripe_billing._upsert_payment(p stripe_billing.payments, terminal_statuses text[])
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.payments AS t
         (id, kind, customer, invoice, payment_intent, charge, amount, amount_refunded, currency, status,
          failure_code, failure_message, created, raw, last_event_id, last_event_created, account)
  VALUES (p.id, p.kind, p.customer, p.invoice, p.payment_intent, p.charge, p.amount, p.amount_refunded,
          p.currency, p.status, p.failure_code, p.failure_message, p.created, p.raw,
          p.last_event_id, p.last_event_created, p.account)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, account = EXCLUDED.account,
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

-- new: stripe_billing._apply_payment(jsonb, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_payment(o jsonb, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
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
  p.account := ev_account;

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
      PERFORM stripe_billing._apply_payment(r || jsonb_build_object('object', 'refund'), ev_id, ev_created,
                                            ev_account)
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

-- new: stripe_billing._apply_checkout_session(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_checkout_session(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                       ev_account text DEFAULT NULL)
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
          amount_total, currency, url, expires_at, metadata, created, raw, last_event_id, last_event_created,
          account)
  VALUES (o->>'id', user_ref, customer_id,
          coalesce(o->>'customer_email', o->'customer_details'->>'email'), o->>'mode', o->>'status',
          o->>'payment_status', stripe_billing._id(o->'subscription'), stripe_billing._id(o->'payment_intent'),
          (o->>'amount_total')::bigint, o->>'currency', o->>'url', stripe_billing._ts(o->'expires_at'),
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         user_ref = coalesce(EXCLUDED.user_ref, t.user_ref), customer = EXCLUDED.customer,
         account = EXCLUDED.account,
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
    PERFORM stripe_billing._link_customer(customer_id, user_ref, false, ev_type, ev_account);
  END IF;
  RETURN 'applied';
END
$$;

-- new: stripe_billing._apply_entitlement_summary(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_entitlement_summary(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                          ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customer_id text := o->>'customer';
  cut_short boolean := coalesce((o->'entitlements'->>'has_more')::boolean, false);
BEGIN
  INSERT INTO stripe_billing.entitlement_summaries AS t
         (customer, raw, last_event_id, last_event_created, refetch, account)
  VALUES (customer_id, o, ev_id, ev_created, cut_short, ev_account)
  ON CONFLICT (customer) DO UPDATE SET
         raw = EXCLUDED.raw, account = EXCLUDED.account, last_event_id = EXCLUDED.last_event_id,
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
        ON ((g.source_type = 'price' AND g.source = i.price)
            OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
            OR (g.source_type = 'product' AND g.source = i.product))
       AND g.account IS NOT DISTINCT FROM s.account
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
        ON ((g.source_type = 'price' AND g.source = i.price)
            OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
            OR (g.source_type = 'product' AND g.source = i.product))
       AND g.account IS NOT DISTINCT FROM s.account
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

-- new: stripe_billing.stripe_grant_feature(text, text, text, text)
CREATE FUNCTION stripe_billing.stripe_grant_feature(source_type text, source text, feature text,
                                                   account text DEFAULT NULL)
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
  PERFORM stripe_billing._check_account('account', account);
  INSERT INTO stripe_billing.feature_grants VALUES (source_type, source, feature, account) ON CONFLICT DO NOTHING;
  IF FOUND THEN
    PERFORM stripe_billing.stripe_refresh_entitlements();
  END IF;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_grant_feature(text, text, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_revoke_feature(text, text, text, text)
CREATE FUNCTION stripe_billing.stripe_revoke_feature(source_type text, source text, feature text,
                                                    account text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  PERFORM stripe_billing._check_account('account', account);
  DELETE FROM stripe_billing.feature_grants g
   WHERE g.source_type = stripe_revoke_feature.source_type AND g.source = stripe_revoke_feature.source
     AND g.feature = stripe_revoke_feature.feature
     AND g.account IS NOT DISTINCT FROM stripe_revoke_feature.account;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM stripe_billing.stripe_refresh_entitlements();
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_revoke_feature(text, text, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_api(text, text, jsonb, text, text)
CREATE FUNCTION stripe_billing.stripe_api(method text, path text, params jsonb DEFAULT '{}',
                                          idempotency_key text DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_api'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_api(text, text, jsonb, text, text) FROM PUBLIC;

-- new: stripe_billing._api_error(text)
CREATE FUNCTION stripe_billing._api_error(detail text, OUT http_status integer, OUT type text,
                                          OUT code text, OUT param text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT m[1]::integer, nullif(m[2], '(none)'), nullif(m[3], '(none)'), nullif(m[4], '(none)')
    FROM (SELECT regexp_match(detail, '^\S+ \S+: HTTP (\d{3}), type (\S+), code (\S+), param (\S+), request \S+\.$') AS m) s
$$;

-- new: stripe_billing._had_trial(text, text)
CREATE FUNCTION stripe_billing._had_trial(target text, account text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN EXISTS (SELECT FROM stripe_billing.customers c
                   JOIN stripe_billing.subscriptions s ON s.customer = c.id
                  WHERE c.user_ref = target AND c.account IS NOT DISTINCT FROM _had_trial.account
                    AND (s.trial_start IS NOT NULL OR s.trial_end IS NOT NULL));
END
$$;

-- new: stripe_billing._customer_of(text, text)
CREATE FUNCTION stripe_billing._customer_of(target text, account text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN (SELECT c.id FROM stripe_billing.customers c
           WHERE c.user_ref = target AND c.account IS NOT DISTINCT FROM _customer_of.account AND NOT c.deleted
           ORDER BY c.created DESC NULLS LAST, c.id LIMIT 1);
END
$$;

-- new: stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean, numeric, bigint, text, text, text)
CREATE FUNCTION stripe_billing.stripe_create_checkout(
    user_ref text, price text, success_url text, cancel_url text,
    quantity integer DEFAULT 1, mode text DEFAULT 'subscription', trial_days integer DEFAULT NULL,
    allow_promotion_codes boolean DEFAULT false, customer_email text DEFAULT NULL,
    metadata jsonb DEFAULT '{}', idempotency_key text DEFAULT NULL, allow_repeat_trial boolean DEFAULT false,
    application_fee_percent numeric DEFAULT NULL, application_fee_amount bigint DEFAULT NULL,
    transfer_destination text DEFAULT NULL, on_behalf_of text DEFAULT NULL, account text DEFAULT NULL,
    OUT session_id text, OUT url text, OUT expires_at timestamptz, OUT trial_granted boolean)
AS 'MODULE_PATHNAME', 'stripe_create_checkout'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                            boolean, text, jsonb, text, boolean,
                                                            numeric, bigint, text, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_create_portal_session(text, text, text, text)
CREATE FUNCTION stripe_billing.stripe_create_portal_session(user_ref text, return_url text DEFAULT NULL,
                                                            idempotency_key text DEFAULT NULL,
                                                            account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customer_id text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  customer_id := stripe_billing._customer_of(user_ref, account);
  IF customer_id IS NULL THEN
    RAISE EXCEPTION 'user % has no Stripe customer%', coalesce(quote_literal(user_ref), 'NULL'),
                    CASE WHEN account IS NOT NULL THEN ' on account ' || account ELSE '' END
          USING ERRCODE = 'no_data_found',
                HINT = 'A completed Checkout session, customer metadata or stripe_link_customer() links one.';
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/billing_portal/sessions',
                                   jsonb_strip_nulls(jsonb_build_object('customer', customer_id,
                                                                        'return_url', return_url)),
                                   idempotency_key, account)->>'url';
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_portal_session(text, text, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_cancel_subscription(text, boolean, text, text)
CREATE FUNCTION stripe_billing.stripe_cancel_subscription(subscription_id text, at_period_end boolean DEFAULT true,
                                                          idempotency_key text DEFAULT NULL,
                                                          account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(at_period_end, true) THEN
    RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                     '{"cancel_at_period_end": true}', idempotency_key, account);
  END IF;
  RETURN stripe_billing.stripe_api('DELETE', '/v1/subscriptions/' || subscription_id, '{}', idempotency_key,
                                   account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_cancel_subscription(text, boolean, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_resume_subscription(text, text, text)
CREATE FUNCTION stripe_billing.stripe_resume_subscription(subscription_id text, idempotency_key text DEFAULT NULL,
                                                          account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                   '{"cancel_at_period_end": false}', idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_resume_subscription(text, text, text) FROM PUBLIC;

-- new: stripe_billing._price_change_item(text, text, text, integer, text, text)
CREATE FUNCTION stripe_billing._price_change_item(subscription_id text, new_price text,
                                                  proration_behavior text, quantity integer,
                                                  caller text, account text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_ids text[];
  known_on text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(new_price, '') = '' THEN PERFORM stripe_billing._bad_argument('new_price', 'must not be empty'); END IF;
  IF proration_behavior IS NULL OR proration_behavior NOT IN ('create_prorations', 'always_invoice', 'none') THEN
    PERFORM stripe_billing._bad_argument('proration_behavior',
        'must be ''create_prorations'', ''always_invoice'' or ''none''');
  END IF;
  IF quantity IS NOT NULL AND quantity < 1 THEN PERFORM stripe_billing._bad_argument('quantity', 'must be at least 1'); END IF;
  -- (a subscription known here as another account's: the call names the wrong account)
  SELECT s.account INTO known_on FROM stripe_billing.subscriptions s
   WHERE s.id = subscription_id AND s.account IS DISTINCT FROM _price_change_item.account;
  IF FOUND THEN
    PERFORM stripe_billing._bad_argument('account',
        format('must be the account of subscription %s, %s, not %s', subscription_id,
               coalesce(known_on, 'NULL (the platform''s)'), coalesce(account, 'NULL (the platform''s)')));
  END IF;
  SELECT array_agg(i.id ORDER BY i.id) INTO item_ids
    FROM stripe_billing.subscription_items i
   WHERE i.subscription = subscription_id AND i.account IS NOT DISTINCT FROM _price_change_item.account
     AND NOT i.deleted;
  IF coalesce(array_length(item_ids, 1), 0) <> 1 THEN
    RAISE EXCEPTION 'subscription % has % live items here; % changes single-item subscriptions',
                    subscription_id, coalesce(array_length(item_ids, 1), 0), caller
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Use stripe_api(''POST'', ''/v1/subscriptions/<id>'', ...) with items[] for others.';
  END IF;
  RETURN item_ids[1];
END
$$;

-- new: stripe_billing.stripe_preview_price_change(text, text, integer, text, text)
CREATE FUNCTION stripe_billing.stripe_preview_price_change(subscription_id text, new_price text,
                                                           quantity integer DEFAULT NULL,
                                                           proration_behavior text DEFAULT 'create_prorations',
                                                           account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_preview_price_change', account);
  at timestamptz := date_trunc('second', clock_timestamp());
  preview jsonb;
BEGIN
  preview := stripe_billing.stripe_api('POST', '/v1/invoices/create_preview', jsonb_strip_nulls(jsonb_build_object(
      'customer', (SELECT s.customer FROM stripe_billing.subscriptions s
                    WHERE s.id = subscription_id AND s.account IS NOT DISTINCT FROM stripe_preview_price_change.account),
      'subscription', subscription_id,
      'subscription_details', jsonb_build_object(
          'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                       'id', item_id, 'price', new_price, 'quantity', quantity))),
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM at)::bigint))),
      NULL, account);
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
REVOKE ALL ON FUNCTION stripe_billing.stripe_preview_price_change(text, text, integer, text, text) FROM PUBLIC;

-- new: stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz, text)
CREATE FUNCTION stripe_billing.stripe_change_price(subscription_id text, new_price text,
                                                   proration_behavior text DEFAULT 'create_prorations',
                                                   quantity integer DEFAULT NULL,
                                                   idempotency_key text DEFAULT NULL,
                                                   proration_date timestamptz DEFAULT NULL,
                                                   account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_change_price', account);
BEGIN
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_strip_nulls(jsonb_build_object(
          'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                       'id', item_id, 'price', new_price, 'quantity', quantity))),
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM proration_date)::bigint)),
      idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz, text)
    FROM PUBLIC;

-- changed: stripe_billing.stripe_installation_id()
CREATE OR REPLACE FUNCTION stripe_billing.stripe_installation_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT id FROM stripe_billing.installation ORDER BY created_at, id LIMIT 1
$$;

-- new: stripe_billing.stripe_report_usage(text, text, bigint, timestamptz, text)
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

-- new: stripe_billing._send_usage_v1(bigint, jsonb, text)
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

-- new: stripe_billing._meter_stream_send(text[], text)
CREATE FUNCTION stripe_billing._meter_stream_send(bodies text[], account text DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_meter_stream_send'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._send_usage_stream(bigint[], jsonb[], text)
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

-- changed: stripe_billing.stripe_send_usage(integer)
CREATE OR REPLACE FUNCTION stripe_billing.stripe_send_usage(max_rows integer DEFAULT 1000)
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

-- new: stripe_billing._events_page(text, boolean, text)
CREATE FUNCTION stripe_billing._events_page(event_cursor text, prefetch_next boolean,
                                            account text DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_events_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

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

-- new: stripe_billing._events_text(jsonb, text)
CREATE FUNCTION stripe_billing._events_text(params jsonb, account text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_text'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._events_page_text(text, text)
CREATE FUNCTION stripe_billing._events_page_text(event_cursor text, account text DEFAULT NULL) RETURNS text
AS 'MODULE_PATHNAME', 'stripe_events_page_text'
LANGUAGE C VOLATILE
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

-- new: stripe_billing._list_page(text, jsonb, jsonb, text)
CREATE FUNCTION stripe_billing._list_page(path text, params jsonb, next_params jsonb DEFAULT NULL,
                                          account text DEFAULT NULL,
                                          OUT page jsonb, OUT snapshot timestamptz)
AS 'MODULE_PATHNAME', 'stripe_list_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._list_prefetch(text, jsonb, text)
CREATE FUNCTION stripe_billing._list_prefetch(path text, params jsonb, account text DEFAULT NULL) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_list_prefetch'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb, boolean, text)
CREATE FUNCTION stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz, source text,
                                                replacements jsonb DEFAULT NULL, derive boolean DEFAULT true,
                                                account text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_apply_snapshots'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

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

-- new: stripe_billing._check_account(text, text)
CREATE FUNCTION stripe_billing._check_account(argument text, account text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF account IS NOT NULL AND account !~ '^acct_[A-Za-z0-9]{1,250}$' THEN
    PERFORM stripe_billing._bad_argument(argument,
      format('must be a connected account''s id (acct_ and letters or digits), not ''%s''',
             replace(left(regexp_replace(account, '[^\x20-\x7e]', '?', 'g'), 100), '''', '''''')));
  END IF;
END
$$;

-- new: stripe_billing._apply_account(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_account(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.accounts AS t
         (id, business_name, country, default_currency, charges_enabled, payouts_enabled, details_submitted,
          requirements_due, type, controller, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', o->'business_profile'->>'name', o->>'country', o->>'default_currency',
          (o->>'charges_enabled')::boolean, (o->>'payouts_enabled')::boolean,
          (o->>'details_submitted')::boolean,
          ARRAY(SELECT jsonb_array_elements_text(coalesce(o->'requirements'->'currently_due', '[]'))),
          coalesce(o->>'type', o->'controller'->>'type'), o->'controller', stripe_billing._ts(o->'created'),
          o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         business_name = EXCLUDED.business_name, country = EXCLUDED.country,
         default_currency = EXCLUDED.default_currency, charges_enabled = EXCLUDED.charges_enabled,
         payouts_enabled = EXCLUDED.payouts_enabled, details_submitted = EXCLUDED.details_submitted,
         requirements_due = EXCLUDED.requirements_due, type = EXCLUDED.type, controller = EXCLUDED.controller,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- new: stripe_billing._apply_account_application(jsonb, text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._apply_account_application(o jsonb, ev_type text, ev_id text,
                                                          ev_created timestamptz, ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF ev_account IS NULL THEN
    RAISE EXCEPTION 'invalid Stripe object: an % event must name its account', ev_type
          USING ERRCODE = 'SBE03';
  END IF;
  IF ev_type = 'account.application.deauthorized' THEN
    UPDATE stripe_billing.accounts
       SET deauthorized_at = ev_created, updated_at = now()
     WHERE id = ev_account AND (authorized_at IS NULL OR authorized_at < ev_created)
       AND (deauthorized_at IS NULL OR deauthorized_at < ev_created);
  ELSIF ev_type = 'account.application.authorized' THEN
    UPDATE stripe_billing.accounts
       SET authorized_at = ev_created,
           deauthorized_at = CASE WHEN deauthorized_at <= ev_created THEN NULL ELSE deauthorized_at END,
           updated_at = now()
     WHERE id = ev_account AND (authorized_at IS NULL OR authorized_at < ev_created);
  ELSE
    RETURN 'ignored';
  END IF;
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- gone: stripe_billing._link_customer(text, text, boolean, text)
DROP FUNCTION stripe_billing._link_customer(text, text, boolean, text);

-- gone: stripe_billing._apply_customer(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_customer(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_product(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_product(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_price(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_price(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_subscription(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_subscription(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_invoice(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_invoice(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_payment(jsonb, text, timestamptz)
DROP FUNCTION stripe_billing._apply_payment(jsonb, text, timestamptz);

-- gone: stripe_billing._apply_checkout_session(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_checkout_session(jsonb, text, text, timestamptz);

-- gone: stripe_billing._apply_entitlement_summary(jsonb, text, text, timestamptz)
DROP FUNCTION stripe_billing._apply_entitlement_summary(jsonb, text, text, timestamptz);

-- gone: stripe_billing._reapply_event(text)
DROP FUNCTION stripe_billing._reapply_event(text);

-- gone: stripe_billing.stripe_grant_feature(text, text, text)
DROP FUNCTION stripe_billing.stripe_grant_feature(text, text, text);

-- gone: stripe_billing.stripe_revoke_feature(text, text, text)
DROP FUNCTION stripe_billing.stripe_revoke_feature(text, text, text);

-- gone: stripe_billing.stripe_api(text, text, jsonb, text)
DROP FUNCTION stripe_billing.stripe_api(text, text, jsonb, text);

-- gone: stripe_billing._had_trial(text)
DROP FUNCTION stripe_billing._had_trial(text);

-- gone: stripe_billing._customer_of(text)
DROP FUNCTION stripe_billing._customer_of(text);

-- gone: stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean)
DROP FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer, boolean, text, jsonb, text, boolean);

-- gone: stripe_billing.stripe_create_portal_session(text, text, text)
DROP FUNCTION stripe_billing.stripe_create_portal_session(text, text, text);

-- gone: stripe_billing.stripe_cancel_subscription(text, boolean, text)
DROP FUNCTION stripe_billing.stripe_cancel_subscription(text, boolean, text);

-- gone: stripe_billing.stripe_resume_subscription(text, text)
DROP FUNCTION stripe_billing.stripe_resume_subscription(text, text);

-- gone: stripe_billing._price_change_item(text, text, text, integer, text)
DROP FUNCTION stripe_billing._price_change_item(text, text, text, integer, text);

-- gone: stripe_billing.stripe_preview_price_change(text, text, integer, text)
DROP FUNCTION stripe_billing.stripe_preview_price_change(text, text, integer, text);

-- gone: stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz)
DROP FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz);

-- gone: stripe_billing.stripe_report_usage(text, text, bigint, timestamptz)
DROP FUNCTION stripe_billing.stripe_report_usage(text, text, bigint, timestamptz);

-- gone: stripe_billing._send_usage_v1(bigint, jsonb)
DROP FUNCTION stripe_billing._send_usage_v1(bigint, jsonb);

-- gone: stripe_billing._meter_stream_send(text[])
DROP FUNCTION stripe_billing._meter_stream_send(text[]);

-- gone: stripe_billing._events_page(text, boolean)
DROP FUNCTION stripe_billing._events_page(text, boolean);

-- gone: stripe_billing._apply_polled(jsonb)
DROP FUNCTION stripe_billing._apply_polled(jsonb);

-- gone: stripe_billing._events_page_text(text)
DROP FUNCTION stripe_billing._events_page_text(text);

-- gone: stripe_billing._refetch_marked(integer)
DROP FUNCTION stripe_billing._refetch_marked(integer);

-- gone: stripe_billing._sync_duties()
DROP FUNCTION stripe_billing._sync_duties();

-- gone: stripe_billing._list_page(text, jsonb, jsonb)
DROP FUNCTION stripe_billing._list_page(text, jsonb, jsonb);

-- gone: stripe_billing._list_prefetch(text, jsonb)
DROP FUNCTION stripe_billing._list_prefetch(text, jsonb);

-- gone: stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb, boolean)
DROP FUNCTION stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb, boolean);

-- The grants carried over (see the top); PUBLIC's stay revoked.
DO $$
DECLARE
  f record;
  grantee name;
BEGIN
  FOR f IN SELECT p.oid::regprocedure AS signature, p.proname, p.proowner FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'stripe_billing'::regnamespace
              AND p.proname IN ('stripe_grant_feature', 'stripe_revoke_feature',
                                'stripe_api', 'stripe_create_checkout', 'stripe_create_portal_session',
                                'stripe_cancel_subscription', 'stripe_resume_subscription',
                                'stripe_preview_price_change', 'stripe_change_price', 'stripe_report_usage')
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
