
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

CREATE FUNCTION stripe_billing._apply_customer(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                               ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'customer.deleted' OR coalesce((o->>'deleted')::boolean, false);
  -- (its own discount, as the payload has it: a bare deleted one has none)
  discount jsonb := o->'discount';
BEGIN
  IF deleting THEN
    -- a deleted customer's payload may be bare: keep what we knew
    o := coalesce((SELECT raw FROM stripe_billing.customers WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.customers AS t
         (id, user_ref, email, name, deleted, metadata, created, raw, last_event_id, last_event_created, account,
          default_payment_method)
  VALUES (o->>'id', stripe_billing._user_ref(o->'metadata'), o->>'email', o->>'name', deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account,
          stripe_billing._id(o->'invoice_settings'->'default_payment_method'))
  ON CONFLICT (id) DO UPDATE SET
         user_ref = coalesce(t.user_ref, EXCLUDED.user_ref), account = EXCLUDED.account,
         email = EXCLUDED.email, name = EXCLUDED.name, deleted = EXCLUDED.deleted,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), default_payment_method = EXCLUDED.default_payment_method
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  -- the customer's discount is a snapshot of its own, as of this event (one
  -- without an id, before API version 2020-08-27, is not kept)
  IF jsonb_typeof(discount) = 'object' AND discount->>'id' IS NOT NULL THEN
    PERFORM stripe_billing._apply_discount(discount || jsonb_build_object('object', 'discount'), ev_type, ev_id,
                                           ev_created, ev_account);
  END IF;
  PERFORM stripe_billing._refresh_customer_features(o->>'id', ev_type);
  RETURN 'applied';
END
$$;

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

-- Prices and plans: a plan is written as a recurring price.
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

-- A subscription and its items.  Period bounds come from the subscription
-- (before 2025-03-31.basil) or from its items (after).
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
          latest_invoice, metadata, created, raw, last_event_id, last_event_created, refetch, account,
          pause_behavior, pause_resumes_at, discounts)
  VALUES (sid, customer_id, o->>'status', coalesce((o->>'cancel_at_period_end')::boolean, false),
          stripe_billing._ts(o->'cancel_at'), stripe_billing._ts(o->'canceled_at'), stripe_billing._ts(o->'ended_at'),
          period_start, period_end, stripe_billing._ts(o->'trial_start'), stripe_billing._ts(o->'trial_end'),
          CASE WHEN jsonb_typeof(o->'pause_collection') = 'object' THEN o->'pause_collection' END,
          stripe_billing._id(o->'latest_invoice'), coalesce(o->'metadata', '{}'),
          stripe_billing._ts(o->'created'), o, ev_id, ev_created, NOT complete_list, ev_account,
          o->'pause_collection'->>'behavior', stripe_billing._ts(o->'pause_collection'->'resumes_at'),
          -- discounts (ids or expanded), or the one discount before 2025-03-31.basil
          CASE WHEN o ? 'discounts' THEN stripe_billing._discount_ids(o->'discounts')
               ELSE array_remove(ARRAY[stripe_billing._id(o->'discount')], NULL) END)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, status = EXCLUDED.status, account = EXCLUDED.account,
         discounts = EXCLUDED.discounts,
         cancel_at_period_end = EXCLUDED.cancel_at_period_end, cancel_at = EXCLUDED.cancel_at,
         canceled_at = EXCLUDED.canceled_at, ended_at = EXCLUDED.ended_at,
         current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
         trial_start = EXCLUDED.trial_start, trial_end = EXCLUDED.trial_end,
         pause_collection = EXCLUDED.pause_collection, latest_invoice = EXCLUDED.latest_invoice,
         pause_behavior = EXCLUDED.pause_behavior, pause_resumes_at = EXCLUDED.pause_resumes_at,
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
          billing_reason, deleted, created, raw, last_event_id, last_event_created, account, discounts)
  VALUES (o->>'id', stripe_billing._id(o->'customer'),
          coalesce(stripe_billing._id(o->'subscription'),
                   stripe_billing._id(o->'parent'->'subscription_details'->'subscription')),
          o->>'status', (o->>'amount_due')::bigint, (o->>'amount_paid')::bigint,
          (o->>'amount_remaining')::bigint, o->>'currency', (o->>'attempt_count')::integer,
          stripe_billing._ts(o->'next_payment_attempt'), o->>'hosted_invoice_url', o->>'invoice_pdf',
          stripe_billing._ts(o->'period_start'), stripe_billing._ts(o->'period_end'), o->>'billing_reason',
          deleting, stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account,
          CASE WHEN o ? 'discounts' THEN stripe_billing._discount_ids(o->'discounts')
               ELSE array_remove(ARRAY[stripe_billing._id(o->'discount')], NULL) END)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, subscription = EXCLUDED.subscription, status = EXCLUDED.status,
         account = EXCLUDED.account, discounts = EXCLUDED.discounts,
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
    -- (its disputes applied before it: their customer, see _apply_dispute)
    PERFORM stripe_billing._charge_disputes_customer(p.id, p.customer);
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

-- A customer's active entitlement summary replaces its set.
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

-- The kinds of Stripe object mapped, as kinds.c declares them: the event
-- types that carry each, the function above that applies it, the fields
-- its shape is checked for (every field that function reads; the
-- regression test object_kinds holds them to it), and the event types
-- announced to the application when recorded (_notify_event).
CREATE FUNCTION stripe_billing._object_kinds(OUT kind text, OUT event_types text[],
                                             OUT ignored_event_types text[], OUT apply_function text,
                                             OUT fields text[], OUT notice_event_types text[])
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stripe_object_kinds'
LANGUAGE C STRICT STABLE
SET search_path = pg_catalog, pg_temp;
