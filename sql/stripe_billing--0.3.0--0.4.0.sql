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
                     'stripe_preview_price_change', 'stripe_change_price', 'stripe_report_usage',
                     'stripe_backfill', 'stripe_reconcile', 'stripe_sync_start_from');

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
CREATE INDEX events_account_received_idx ON stripe_billing.events (received_at, account)
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


-- The worker polls each connected account apart: a sync_state row per
-- account (the platform's keeps account NULL), a backfill and a
-- reconciliation per account.
ALTER TABLE stripe_billing.sync_state DROP COLUMN singleton,
    ADD COLUMN account text, ADD COLUMN next_poll_at timestamptz,
    ADD CONSTRAINT sync_state_account_key UNIQUE NULLS NOT DISTINCT (account);
ALTER TABLE stripe_billing.backfill_state DROP CONSTRAINT backfill_state_pkey,
    ADD COLUMN account text,
    ADD CONSTRAINT backfill_state_kind_account_key UNIQUE NULLS NOT DISTINCT (kind, account);
ALTER TABLE stripe_billing.backfill_state ALTER COLUMN kind SET NOT NULL;
ALTER TABLE stripe_billing.reconcile_runs ADD COLUMN account text;
DROP INDEX stripe_billing.reconcile_runs_running_idx;
CREATE UNIQUE INDEX reconcile_runs_running_idx ON stripe_billing.reconcile_runs (account) NULLS NOT DISTINCT
    WHERE state = 'running';

-- The status views show each account's rows (columns added at the end).
CREATE OR REPLACE VIEW stripe_billing.sync_status AS
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
       s.account, s.next_poll_at
  FROM stripe_billing.sync_state s
 ORDER BY s.account NULLS FIRST;
CREATE OR REPLACE VIEW stripe_billing.backfill_status AS
SELECT kind, state, pages, objects, requests, started_at, finished_at, last_error, account
  FROM stripe_billing.backfill_state
 ORDER BY account NULLS FIRST, ordinal;
CREATE OR REPLACE VIEW stripe_billing.reconcile_status AS
SELECT DISTINCT ON (account)
       id AS run, reason, state, phase, checked, drifted, fixed, requests, started_at, finished_at, last_error,
       account
  FROM stripe_billing.reconcile_runs
 ORDER BY account NULLS FIRST, id DESC;
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

-- changed: stripe_billing._sync_state_restore()
CREATE OR REPLACE FUNCTION stripe_billing._sync_state_restore() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  DELETE FROM stripe_billing.sync_state s WHERE s.account IS NOT DISTINCT FROM NEW.account;
  RETURN NEW;
END
$$;

-- new: stripe_billing._events_page(text, boolean, text)
CREATE FUNCTION stripe_billing._events_page(event_cursor text, prefetch_next boolean,
                                            account text DEFAULT NULL) RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_events_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- new: stripe_billing._restart_cursor(text, text)
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

-- new: stripe_billing._poll_unparsed_page(text, text)
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

-- new: stripe_billing._poll_page(boolean, text)
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

-- new: stripe_billing._account_start_from(text)
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

-- new: stripe_billing._with_account(jsonb, text)
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

-- new: stripe_billing._poll_lookback(text)
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
   WHERE account IS NULL AND (last_retry_at IS NULL OR last_retry_at < now() - interval '5 minutes');
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

-- new: stripe_billing._poll_next_account()
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
  -- connected accounts due (Connect), a page a transaction, up to a
  -- thousand pages
  FOR i IN 1 .. 1000 LOOP
    p := stripe_billing._procedure_step('sync_now.accounts');
    COMMIT;
    EXIT WHEN NOT (p OPERATOR(pg_catalog.->>) 'more')::pg_catalog.bool;
  END LOOP;
END
$$;

-- new: stripe_billing.stripe_sync_start_from(text, text)
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

-- changed: stripe_billing.stripe_sync_pause()
CREATE OR REPLACE FUNCTION stripe_billing.stripe_sync_pause() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = true WHERE account IS NULL $$;

-- changed: stripe_billing.stripe_sync_resume()
CREATE OR REPLACE FUNCTION stripe_billing.stripe_sync_resume() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE stripe_billing.sync_state SET paused = false WHERE account IS NULL $$;

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

-- new: stripe_billing._complete_items(jsonb, text)
CREATE FUNCTION stripe_billing._complete_items(subscriptions jsonb, for_account text DEFAULT NULL,
                                               OUT complete jsonb, OUT requests integer)
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
                                          jsonb_build_object('subscription', cut[i]->>'id', 'limit', 100),
                                          account => for_account);
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
               ELSE 'null' END, account => for_account);
      requests := requests + 1;
      items := items || coalesce(l.page->'data', '[]');
      EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
    END LOOP;
    complete := complete || jsonb_build_object(sub->>'id', jsonb_set(sub, '{items}',
        (sub->'items') || jsonb_build_object('data', items, 'has_more', false)));
  END LOOP;
END
$$;

-- changed: stripe_billing._backfill_kinds()
CREATE OR REPLACE FUNCTION stripe_billing._backfill_kinds() RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['products', 'prices', 'customers', 'subscriptions', 'invoices', 'entitlements', 'accounts'] $$;

-- new: stripe_billing._backfill_begin(text[], text)
CREATE FUNCTION stripe_billing._backfill_begin(kinds text[], for_account text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  known text[] := CASE WHEN for_account IS NULL THEN stripe_billing._backfill_kinds()
                       ELSE array_remove(stripe_billing._backfill_kinds(), 'accounts') END;
  bad text;
  again boolean;
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings read below)
  PERFORM stripe_billing._check_account('account', for_account);
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
                        WHERE s.kind = ANY (coalesce(kinds, known)) AND s.state <> 'done'
                          AND s.account IS NOT DISTINCT FROM for_account);
  INSERT INTO stripe_billing.backfill_state AS b (kind, ordinal, since, account)
  SELECT k, array_position(stripe_billing._backfill_kinds(), k),
         CASE WHEN k = 'invoices'
              THEN now() - current_setting('stripe_billing.backfill_invoices_since')::interval END,
         for_account
    FROM unnest(coalesce(kinds, known)) k
  ON CONFLICT (kind, account) DO UPDATE
     SET state = 'pending', list_cursor = NULL, pages = 0, objects = 0, requests = 0, since = EXCLUDED.since,
         started_at = NULL, finished_at = NULL, last_error = NULL, last_error_at = NULL
   WHERE again AND b.state = 'done';
  UPDATE stripe_billing.backfill_state s
     SET state = 'pending'
   WHERE s.state = 'failed' AND s.kind = ANY (coalesce(kinds, known))
     AND s.account IS NOT DISTINCT FROM for_account;
END
$$;

-- new: stripe_billing._backfill_page(text, text, timestamptz, text)
CREATE FUNCTION stripe_billing._backfill_page(kind text, list_cursor text, since timestamptz,
                                              for_account text DEFAULT NULL,
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
               AND s.account IS NOT DISTINCT FROM for_account
               AND s.customer > coalesce(list_cursor, '')
             ORDER BY 1 LIMIT 20 + ahead) c;
    has_more := coalesce(cardinality(customers), 0) > 20;
    FOR i IN 1 .. least(coalesce(cardinality(customers), 0), ahead) LOOP
      PERFORM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                            jsonb_build_object('customer', customers[i], 'limit', 100),
                                            account => for_account);
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
                 THEN jsonb_build_object('customer', customers[i + ahead], 'limit', 100) ELSE 'null' END,
            account => for_account);
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
      PERFORM stripe_billing._apply_snapshots(summaries, snapshot, 'backfill', derive => false,
                                              account => for_account);
      PERFORM stripe_billing._refresh_customers_features(customers[1:20],
                                                         'entitlements.active_entitlement_summary.backfill');
    END IF;
    RETURN;
  END IF;

  path := CASE kind WHEN 'products' THEN '/v1/products' WHEN 'prices' THEN '/v1/prices'
                    WHEN 'customers' THEN '/v1/customers' WHEN 'subscriptions' THEN '/v1/subscriptions'
                    WHEN 'invoices' THEN '/v1/invoices' WHEN 'accounts' THEN '/v1/accounts' END;
  params := jsonb_strip_nulls(jsonb_build_object(
      'limit', 100, 'starting_after', list_cursor,
      -- (products and prices: active and inactive alike when not asked for one)
      'status', CASE WHEN kind = 'subscriptions' THEN 'all' END,
      'created', CASE WHEN kind = 'invoices'
                      THEN jsonb_build_object('gte', floor(extract(epoch FROM since))::bigint) END));
  -- the next page travels while this one is applied (for subscriptions,
  -- and while their cut-short item lists are read)
  SELECT * INTO l FROM stripe_billing._list_page(path, params,
                                                 CASE WHEN kind = 'subscriptions' THEN 'null'::jsonb END,
                                                 account => for_account);
  requests := 1;
  data := coalesce(l.page->'data', '[]');
  has_more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
  SELECT NULL::jsonb AS complete, 0 AS requests INTO c;
  IF kind = 'subscriptions' THEN
    IF has_more THEN
      PERFORM stripe_billing._list_prefetch(path, params || jsonb_build_object('starting_after', data->-1->>'id'),
                                            account => for_account);
    END IF;
    SELECT * INTO c FROM stripe_billing._complete_items(data, for_account);
    requests := requests + c.requests;
  END IF;
  PERFORM stripe_billing._apply_snapshots(data, l.snapshot, 'backfill', c.complete, account => for_account);
  objects := jsonb_array_length(data);
  next_cursor := coalesce(data->-1->>'id', list_cursor);
END
$$;

-- changed: stripe_billing._backfill_analyze(text)
CREATE OR REPLACE FUNCTION stripe_billing._backfill_analyze(kind text) RETURNS void
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
  WHEN 'accounts' THEN ANALYZE stripe_billing.accounts;
  END CASE;
END
$$;

-- new: stripe_billing._backfill_step(text[], boolean, text, boolean)
CREATE FUNCTION stripe_billing._backfill_step(kinds text[], retry_failed boolean DEFAULT false,
                                              for_account text DEFAULT NULL, any_account boolean DEFAULT false,
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
     AND (any_account OR s.account IS NOT DISTINCT FROM for_account)
   ORDER BY s.account NULLS FIRST, s.ordinal LIMIT 1
   FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  kind := b.kind;
  BEGIN
    p := stripe_billing._backfill_page(b.kind, b.list_cursor, b.since, b.account);
    UPDATE stripe_billing.backfill_state s
       SET state = CASE WHEN p.has_more THEN 'running' ELSE 'done' END,
           list_cursor = p.next_cursor, pages = s.pages + 1, objects = s.objects + p.objects,
           requests = s.requests + p.requests, started_at = coalesce(s.started_at, now()),
           finished_at = CASE WHEN NOT p.has_more THEN now() END, last_error = NULL, last_error_at = NULL
     WHERE s.kind = b.kind AND s.account IS NOT DISTINCT FROM b.account
    RETURNING format('stripe_billing backfill%s: %s, page %s: %s objects (%s in all)%s',
                     ' of ' || s.account, s.kind, s.pages, p.objects,
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
     WHERE s.kind = b.kind AND s.account IS NOT DISTINCT FROM b.account;
    message := format('stripe_billing backfill%s: %s failed: %s', ' of ' || b.account, b.kind, SQLERRM);
    failed := true;
  END;
END
$$;

-- new: stripe_billing.stripe_backfill(text[], text)
CREATE PROCEDURE stripe_billing.stripe_backfill(kinds text[] DEFAULT NULL, account text DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause: a procedure with one may not commit; every type, call
-- and operator below is qualified, and each step runs through
-- _procedure_step, see stripe_sync_now)
AS $$
DECLARE
  step pg_catalog.jsonb;
  failures pg_catalog.text[] := '{}';
BEGIN
  PERFORM stripe_billing._procedure_step('backfill.begin',
                                         pg_catalog.jsonb_build_object('kinds', kinds, 'account', account));
  COMMIT;
  LOOP
    step := stripe_billing._procedure_step('backfill.step',
                                           pg_catalog.jsonb_build_object('kinds', kinds, 'account', account));
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
                HINT = 'See stripe_billing.backfill_status; the same CALL again resumes them.';
  END IF;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_backfill(text[], text) FROM PUBLIC;

-- new: stripe_billing._reconcile_begin(text, text)
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

-- new: stripe_billing._reconcile_compare(bigint, text, jsonb, timestamptz, jsonb, text)
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

-- new: stripe_billing._reconcile_step(text, boolean)
CREATE FUNCTION stripe_billing._reconcile_step(for_account text DEFAULT NULL, any_account boolean DEFAULT false,
                                               OUT run bigint, OUT message text, OUT failed boolean)
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
  SELECT * INTO r FROM stripe_billing.reconcile_runs g
   WHERE g.state = 'running' AND (any_account OR g.account IS NOT DISTINCT FROM for_account)
   ORDER BY g.id LIMIT 1
     FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  run := r.id;
  BEGIN
    SELECT * INTO l FROM stripe_billing._list_page(
        CASE r.phase WHEN 'subscriptions' THEN '/v1/subscriptions' ELSE '/v1/customers' END,
        jsonb_strip_nulls(jsonb_build_object('limit', 100, 'starting_after', r.list_cursor,
                                             'status', CASE WHEN r.phase = 'subscriptions' THEN 'all' END)),
        account => r.account);
    data := coalesce(l.page->'data', '[]');
    complete := '{}';
    IF r.phase = 'subscriptions' THEN
      SELECT * INTO c FROM stripe_billing._complete_items(data, r.account);
      complete := c.complete;
      n := n + c.requests;
    END IF;
    c := stripe_billing._reconcile_compare(r.id, CASE r.phase WHEN 'subscriptions' THEN 'subscription'
                                                               ELSE 'customer' END, data, l.snapshot, complete,
                                           r.account);
    more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
    UPDATE stripe_billing.reconcile_runs g
       SET checked = g.checked + c.checked, drifted = g.drifted + c.drifted, fixed = g.fixed + c.fixed,
           requests = g.requests + n,
           list_cursor = CASE WHEN more THEN data->-1->>'id' END,
           phase = CASE WHEN NOT more AND g.phase = 'subscriptions' THEN 'customers' ELSE g.phase END,
           state = CASE WHEN NOT more AND g.phase = 'customers' THEN 'done' ELSE 'running' END,
           finished_at = CASE WHEN NOT more AND g.phase = 'customers' THEN now() END
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

-- new: stripe_billing.stripe_reconcile(text)
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

-- changed: stripe_billing._reconcile_due()
CREATE OR REPLACE FUNCTION stripe_billing._reconcile_due() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT current_setting('stripe_billing.reconcile_interval')::interval > interval '0'
     AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state WHERE state IN ('pending', 'running') AND account IS NULL)
     AND now() - greatest((SELECT max(started_at) FROM stripe_billing.reconcile_runs WHERE account IS NULL),
                          (SELECT max(finished_at) FROM stripe_billing.backfill_state WHERE account IS NULL),
                          (SELECT lookback_after FROM stripe_billing.sync_state WHERE account IS NULL))
         >= current_setting('stripe_billing.reconcile_interval')::interval
$$;

-- new: stripe_billing._reconcile_due_account()
CREATE FUNCTION stripe_billing._reconcile_due_account() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.id
    FROM stripe_billing.accounts a
    JOIN stripe_billing.sync_state s ON s.account = a.id
   WHERE current_setting('stripe_billing.reconcile_interval')::interval > interval '0'
     AND a.deauthorized_at IS NULL AND s.lookback_after IS NOT NULL
     AND NOT EXISTS (SELECT FROM stripe_billing.backfill_state b
                      WHERE b.account = a.id AND b.state IN ('pending', 'running'))
     AND NOT EXISTS (SELECT FROM stripe_billing.reconcile_runs r WHERE r.account = a.id AND r.state = 'running')
     AND now() - greatest((SELECT max(r.started_at) FROM stripe_billing.reconcile_runs r WHERE r.account = a.id),
                          (SELECT max(b.finished_at) FROM stripe_billing.backfill_state b WHERE b.account = a.id),
                          s.lookback_after)
         >= current_setting('stripe_billing.reconcile_interval')::interval
   ORDER BY a.id
   LIMIT 1
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

-- gone: stripe_billing._restart_cursor(text)
DROP FUNCTION stripe_billing._restart_cursor(text);

-- gone: stripe_billing._poll_unparsed_page(text)
DROP FUNCTION stripe_billing._poll_unparsed_page(text);

-- gone: stripe_billing._events_page_text(text)
DROP FUNCTION stripe_billing._events_page_text(text);

-- gone: stripe_billing._poll_page(boolean)
DROP FUNCTION stripe_billing._poll_page(boolean);

-- gone: stripe_billing._poll_lookback()
DROP FUNCTION stripe_billing._poll_lookback();

-- gone: stripe_billing._refetch_marked(integer)
DROP FUNCTION stripe_billing._refetch_marked(integer);

-- gone: stripe_billing._sync_duties()
DROP FUNCTION stripe_billing._sync_duties();

-- gone: stripe_billing.stripe_sync_start_from(text)
DROP FUNCTION stripe_billing.stripe_sync_start_from(text);

-- gone: stripe_billing._list_page(text, jsonb, jsonb)
DROP FUNCTION stripe_billing._list_page(text, jsonb, jsonb);

-- gone: stripe_billing._list_prefetch(text, jsonb)
DROP FUNCTION stripe_billing._list_prefetch(text, jsonb);

-- gone: stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb, boolean)
DROP FUNCTION stripe_billing._apply_snapshots(jsonb, timestamptz, text, jsonb, boolean);

-- gone: stripe_billing._complete_items(jsonb)
DROP FUNCTION stripe_billing._complete_items(jsonb);

-- gone: stripe_billing._backfill_begin(text[])
DROP FUNCTION stripe_billing._backfill_begin(text[]);

-- gone: stripe_billing._backfill_page(text, text, timestamptz)
DROP FUNCTION stripe_billing._backfill_page(text, text, timestamptz);

-- gone: stripe_billing._backfill_step(text[], boolean)
DROP FUNCTION stripe_billing._backfill_step(text[], boolean);

-- gone: stripe_billing.stripe_backfill(text[])
DROP PROCEDURE stripe_billing.stripe_backfill(text[]);

-- gone: stripe_billing._reconcile_begin(text)
DROP FUNCTION stripe_billing._reconcile_begin(text);

-- gone: stripe_billing._reconcile_compare(bigint, text, jsonb, timestamptz, jsonb)
DROP FUNCTION stripe_billing._reconcile_compare(bigint, text, jsonb, timestamptz, jsonb);

-- gone: stripe_billing._reconcile_step()
DROP FUNCTION stripe_billing._reconcile_step();

-- gone: stripe_billing.stripe_reconcile()
DROP PROCEDURE stripe_billing.stripe_reconcile();

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
                                'stripe_preview_price_change', 'stripe_change_price', 'stripe_report_usage',
                                'stripe_backfill', 'stripe_reconcile', 'stripe_sync_start_from')
  LOOP
    FOR grantee IN
      SELECT r.rolname
        FROM pg_catalog.aclexplode(NULLIF(pg_catalog.current_setting('stripe_billing_upgrade.' || f.proname, true),
                                                     '')::pg_catalog.aclitem[]) a
        JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
       WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> f.proowner
    LOOP
      EXECUTE pg_catalog.format('GRANT EXECUTE ON ROUTINE %s TO %I', f.signature, grantee);
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
