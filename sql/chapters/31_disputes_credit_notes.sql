
--------------------------------------------------------------------------
-- Disputes and credit notes
--
-- A dispute (charge.dispute.*) names its charge, not its customer: the
-- customer is the charge's, from an expanded charge (the backfill lists
-- disputes so) or from the charge's row in payments, and a charge applied
-- after its dispute fills it in.  What an open dispute does to that
-- customer's features is stripe_billing.dispute_access: keep (the
-- default) or revoke (see _refresh_user_features).  Refunds are payments
-- rows (refund.*, charge.refund.updated, a charge's refunds).
--------------------------------------------------------------------------

-- Open disputes: needs_response, under_review, and the appeal of a lost
-- one (2026-10-28.endive on), appeal_needs_response and
-- appeal_under_review.  Inquiries (warning_*) are not open disputes.
-- Terminal: won, warning_closed, prevented (lost is not: it may be
-- appealed).
CREATE TABLE stripe_billing.disputes (
    id                 text PRIMARY KEY,
    charge             text,
    payment_intent     text,
    customer           text,            -- the charge's customer (see above)
    amount             bigint,          -- minor units
    currency           text,
    reason             text,
    status             text,
    is_charge_refundable boolean,
    evidence_due_by    timestamptz,     -- evidence_details.due_by
    intended_submission_method text,    -- manual | smart_disputes | ... (2026-10-28.endive on)
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX disputes_charge_idx ON stripe_billing.disputes (charge);
-- (what the derivation looks for: a customer's open disputes)
CREATE INDEX disputes_open_customer_idx ON stripe_billing.disputes (customer)
    WHERE status IN ('needs_response', 'under_review', 'appeal_needs_response', 'appeal_under_review');

CREATE TABLE stripe_billing.credit_notes (
    id                 text PRIMARY KEY,
    invoice            text,
    customer           text,
    number             text,
    status             text,            -- issued | void
    type               text,            -- pre_payment | post_payment | mixed
    reason             text,
    amount             bigint,          -- minor units: the total credited
    subtotal           bigint,
    total              bigint,
    discount_amount    bigint,
    out_of_band_amount bigint,
    currency           text,
    refunds            text[] NOT NULL DEFAULT '{}',  -- refunds[].refund, or refund (before 2025-03-31.basil)
    memo               text,
    effective_at       timestamptz,
    voided_at          timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX credit_notes_invoice_idx ON stripe_billing.credit_notes (invoice);
CREATE INDEX credit_notes_customer_idx ON stripe_billing.credit_notes (customer);

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.disputes', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.credit_notes', '');

DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.disputes ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE stripe_billing.credit_notes ALTER COLUMN raw SET COMPRESSION lz4;
  END IF;
END
$$;

-- A dispute.  Its customer: the expanded charge's, else the charge's row
-- in payments, else the one it had (the locks of both were taken: see
-- locks.c).  Both the customer it had and the one it has get their users'
-- features derived: whether it is open may change them.
CREATE FUNCTION stripe_billing._apply_dispute(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  charge_id text := stripe_billing._id(o->'charge');
  old_customer text;
  customer_id text;
BEGIN
  SELECT d.customer INTO old_customer FROM stripe_billing.disputes d WHERE d.id = o->>'id';
  customer_id := coalesce(stripe_billing._id(o->'charge'->'customer'),
                          (SELECT p.customer FROM stripe_billing.payments p WHERE p.id = charge_id),
                          old_customer);
  INSERT INTO stripe_billing.disputes AS t
         (id, charge, payment_intent, customer, amount, currency, reason, status, is_charge_refundable,
          evidence_due_by, intended_submission_method, metadata, created, raw, last_event_id,
          last_event_created, account)
  VALUES (o->>'id', charge_id, stripe_billing._id(o->'payment_intent'), customer_id, (o->>'amount')::bigint,
          o->>'currency', o->>'reason', o->>'status', (o->>'is_charge_refundable')::boolean,
          stripe_billing._ts(o->'evidence_details'->'due_by'), o->>'intended_submission_method',
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         charge = EXCLUDED.charge, payment_intent = EXCLUDED.payment_intent, customer = EXCLUDED.customer,
         amount = EXCLUDED.amount, currency = EXCLUDED.currency, reason = EXCLUDED.reason,
         status = EXCLUDED.status, is_charge_refundable = EXCLUDED.is_charge_refundable,
         evidence_due_by = EXCLUDED.evidence_due_by,
         intended_submission_method = EXCLUDED.intended_submission_method, metadata = EXCLUDED.metadata,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status IN ('won', 'warning_closed', 'prevented'),
                                      EXCLUDED.status IN ('won', 'warning_closed', 'prevented'));
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  PERFORM stripe_billing._refresh_customer_features(customer_id, ev_type);
  IF old_customer IS DISTINCT FROM customer_id THEN
    PERFORM stripe_billing._refresh_customer_features(old_customer, ev_type);
  END IF;
  RETURN 'applied';
END
$$;

-- The disputes of a charge applied before it learn its customer (a charge
-- unit holds its own key and its customer's, as a dispute unit of it
-- does); that customer's users' features are derived again.
CREATE FUNCTION stripe_billing._charge_disputes_customer(charge_id text, customer_id text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF charge_id IS NULL OR customer_id IS NULL THEN
    RETURN;
  END IF;
  UPDATE stripe_billing.disputes SET customer = customer_id, updated_at = now()
   WHERE charge = charge_id AND customer IS NULL;
  IF FOUND THEN
    PERFORM stripe_billing._refresh_customer_features(customer_id, 'charge.dispute.customer');
  END IF;
END
$$;

-- A credit note: void is terminal.  Its refunds: refunds[].refund, or
-- the one refund it named before.
CREATE FUNCTION stripe_billing._apply_credit_note(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                  ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.credit_notes AS t
         (id, invoice, customer, number, status, type, reason, amount, subtotal, total, discount_amount,
          out_of_band_amount, currency, refunds, memo, effective_at, voided_at, metadata, created, raw,
          last_event_id, last_event_created, account)
  VALUES (o->>'id', stripe_billing._id(o->'invoice'), stripe_billing._id(o->'customer'), o->>'number',
          o->>'status', o->>'type', o->>'reason', (o->>'amount')::bigint, (o->>'subtotal')::bigint,
          (o->>'total')::bigint, (o->>'discount_amount')::bigint, (o->>'out_of_band_amount')::bigint,
          o->>'currency',
          CASE WHEN jsonb_typeof(o->'refunds') = 'array'
               THEN ARRAY(SELECT stripe_billing._id(r->'refund') FROM jsonb_array_elements(o->'refunds') r
                           WHERE stripe_billing._id(r->'refund') IS NOT NULL)
               ELSE array_remove(ARRAY[stripe_billing._id(o->'refund')], NULL) END,
          o->>'memo', stripe_billing._ts(o->'effective_at'), stripe_billing._ts(o->'voided_at'),
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         invoice = EXCLUDED.invoice, customer = EXCLUDED.customer, number = EXCLUDED.number,
         status = EXCLUDED.status, type = EXCLUDED.type, reason = EXCLUDED.reason, amount = EXCLUDED.amount,
         subtotal = EXCLUDED.subtotal, total = EXCLUDED.total, discount_amount = EXCLUDED.discount_amount,
         out_of_band_amount = EXCLUDED.out_of_band_amount, currency = EXCLUDED.currency,
         refunds = EXCLUDED.refunds, memo = EXCLUDED.memo, effective_at = EXCLUDED.effective_at,
         voided_at = EXCLUDED.voided_at, metadata = EXCLUDED.metadata,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status = 'void', EXCLUDED.status = 'void');
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;
