
--------------------------------------------------------------------------
-- Payment methods and tax ids
--
-- A payment method (payment_method.*) keeps what a dunning mail needs of a
-- card: brand, last four digits, expiry (Stripe never sends the number).
-- Detaching is terminal (Stripe never attaches a detached payment method
-- again): the row keeps the customer it had.  A customer's default
-- payment method is customers.default_payment_method
-- (invoice_settings.default_payment_method).  A customer's tax ids
-- (customer.tax_id.*) are rows of tax_ids; a deleted one is a tombstone.
--------------------------------------------------------------------------

CREATE TABLE stripe_billing.payment_methods (
    id                 text PRIMARY KEY,
    customer           text,            -- the customer it is (or was, once detached) attached to
    type               text,            -- card, sepa_debit, link, ...
    card_brand         text,            -- visa, mastercard, amex, ...
    card_last4         text,
    card_exp_month     integer,         -- 1..12
    card_exp_year      integer,
    card_funding       text,            -- credit | debit | prepaid | unknown
    card_country       text,
    detached           boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb NOT NULL,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX payment_methods_customer_idx ON stripe_billing.payment_methods (customer);

CREATE TABLE stripe_billing.tax_ids (
    id                 text PRIMARY KEY,
    customer           text,            -- customer, or owner.customer
    type               text,            -- eu_vat, gb_vat, us_ein, ...
    value              text,
    country            text,
    verification_status text,           -- pending | verified | unverified | unavailable
    deleted            boolean NOT NULL DEFAULT false,
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX tax_ids_customer_idx ON stripe_billing.tax_ids (customer);

-- A customer's default payment method (invoice_settings.default_payment_method).
-- (Added here, at the end of the table, as the 0.3.0 -> 0.4.0 update adds it.)
ALTER TABLE stripe_billing.customers ADD COLUMN default_payment_method text;

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.payment_methods', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.tax_ids', '');

DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.payment_methods ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE stripe_billing.tax_ids ALTER COLUMN raw SET COMPRESSION lz4;
  END IF;
END
$$;

-- A payment method.  payment_method.detached (its customer then null) is
-- terminal.  A payment method is attached to one customer in its life (a
-- detached one is never attached again), so the row keeps that customer,
-- from whichever snapshot names it: a detachment applied before the
-- attachment it ends learns it from that (stale) attachment.
CREATE FUNCTION stripe_billing._apply_payment_method(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                     ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  detaching boolean := ev_type = 'payment_method.detached';
  customer_id text := stripe_billing._id(o->'customer');
BEGIN
  INSERT INTO stripe_billing.payment_methods AS t
         (id, customer, type, card_brand, card_last4, card_exp_month, card_exp_year, card_funding, card_country,
          detached, metadata, created, raw, last_event_id, last_event_created, account)
  VALUES (o->>'id', customer_id, o->>'type', o->'card'->>'brand', o->'card'->>'last4',
          (o->'card'->>'exp_month')::integer, (o->'card'->>'exp_year')::integer, o->'card'->>'funding',
          o->'card'->>'country', detaching, coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o,
          ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         customer = coalesce(EXCLUDED.customer, t.customer),
         type = EXCLUDED.type, card_brand = EXCLUDED.card_brand, card_last4 = EXCLUDED.card_last4,
         card_exp_month = EXCLUDED.card_exp_month, card_exp_year = EXCLUDED.card_exp_year,
         card_funding = EXCLUDED.card_funding, card_country = EXCLUDED.card_country, detached = EXCLUDED.detached,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.detached,
                                      EXCLUDED.detached);
  IF FOUND THEN
    RETURN 'applied';
  END IF;
  UPDATE stripe_billing.payment_methods SET customer = customer_id, updated_at = now()
   WHERE id = o->>'id' AND customer IS NULL AND customer_id IS NOT NULL;
  RETURN 'stale';
END
$$;

-- A tax id: customer.tax_id.deleted (or deleted: true) is a tombstone over
-- what was known.
CREATE FUNCTION stripe_billing._apply_tax_id(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                             ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'customer.tax_id.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    o := coalesce((SELECT raw FROM stripe_billing.tax_ids WHERE id = o->>'id'), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.tax_ids AS t
         (id, customer, type, value, country, verification_status, deleted, created, raw, last_event_id,
          last_event_created, account)
  VALUES (o->>'id', coalesce(stripe_billing._id(o->'customer'), stripe_billing._id(o->'owner'->'customer')),
          o->>'type', o->>'value', o->>'country', o->'verification'->>'status', deleting,
          stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, type = EXCLUDED.type, value = EXCLUDED.value, country = EXCLUDED.country,
         verification_status = EXCLUDED.verification_status, deleted = EXCLUDED.deleted,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- Cards that expire within the next within_days days (and have not yet),
-- for dunning mail: attached cards of customers not deleted, with the
-- customer's user and email, whether the card is the customer's default
-- payment method, and whether the customer has a live subscription.  A
-- card expires at the end of its expiry month (UTC).  Runs with its
-- caller's rights: grant SELECT on payment_methods, customers and
-- subscriptions to the role that sends the mail.
CREATE FUNCTION stripe_billing.stripe_expiring_cards(within_days integer DEFAULT 30)
RETURNS TABLE (user_ref text, customer text, email text, payment_method text, brand text, last4 text,
               exp_month integer, exp_year integer, expires_at timestamptz, is_default boolean,
               live_subscription boolean, account text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  now_ timestamptz := stripe_billing.stripe_now();
BEGIN
  IF within_days IS NULL OR within_days < 0 THEN
    PERFORM stripe_billing._bad_argument('within_days', format('must be 0 or more, not %s',
                                                               coalesce(within_days::text, 'NULL')));
  END IF;
  RETURN QUERY
  SELECT c.user_ref, c.id, c.email, m.id, m.card_brand, m.card_last4, m.card_exp_month, m.card_exp_year, e.ends,
         c.default_payment_method IS NOT DISTINCT FROM m.id,
         EXISTS (SELECT FROM stripe_billing.subscriptions s
                  WHERE s.customer = c.id AND s.status IN ('active', 'trialing', 'past_due', 'unpaid')),
         m.account
    FROM stripe_billing.payment_methods m
    JOIN stripe_billing.customers c ON c.id = m.customer AND NOT c.deleted
   -- (the first instant of the next month, UTC: whatever the session's time zone)
   CROSS JOIN LATERAL (SELECT make_timestamptz(m.card_exp_year + m.card_exp_month / 12, m.card_exp_month % 12 + 1,
                                               1, 0, 0, 0, 'UTC') AS ends) e
   WHERE m.type = 'card' AND NOT m.detached
     AND m.card_exp_year BETWEEN 1 AND 9999 AND m.card_exp_month BETWEEN 1 AND 12
     AND e.ends > now_ AND e.ends <= now_ + make_interval(days => within_days)
   ORDER BY e.ends, c.id, m.id;
END
$$;
