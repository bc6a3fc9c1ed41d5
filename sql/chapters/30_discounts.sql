
--------------------------------------------------------------------------
-- Discounts: coupons, promotion codes, and the discounts they make
--
-- A coupon's id is its account's choice ("SUMMER25"), so coupons are keyed
-- by (id, account), as products and prices are; a promotion code's id is
-- Stripe's (promo_...), its customer-facing code the account's (unique
-- among the account's active codes only, so not a key).  A discount is a
-- coupon (or promotion code) applied to a customer, a subscription (or an
-- item), an invoice or a Checkout session (di_...): from
-- customer.discount.* events and, embedded, from customers (their
-- discount).  Subscriptions and invoices keep the ids of theirs in
-- discounts (text[]).  The ordering rules are the other tables': newer
-- wins, a same-second tie marks refetch, deletes are tombstones.
--------------------------------------------------------------------------

CREATE TABLE stripe_billing.coupons (
    id                 text NOT NULL,
    name               text,
    percent_off        numeric,         -- 25.5: a percentage
    amount_off         bigint,          -- minor units of currency
    currency           text,
    duration           text,            -- once | repeating | forever
    duration_in_months integer,
    max_redemptions    bigint,
    times_redeemed     bigint,
    redeem_by          timestamptz,
    valid              boolean,         -- false once it can no longer be redeemed
    deleted            boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text,            -- the connected account (acct_...); NULL: the platform's own
    -- an id the account chose is unique within its account only
    CONSTRAINT coupons_id_account_key UNIQUE NULLS NOT DISTINCT (id, account)
);

CREATE TABLE stripe_billing.promotion_codes (
    id                 text PRIMARY KEY,
    code               text,            -- what the customer types
    coupon             text,            -- promotion.coupon (2025-09-30.clover on), or coupon's id
    customer           text,            -- redeemable by this customer only
    active             boolean,
    expires_at         timestamptz,
    max_redemptions    bigint,
    times_redeemed     bigint,
    first_time_transaction boolean,     -- restrictions.first_time_transaction
    minimum_amount     bigint,          -- restrictions.minimum_amount
    minimum_amount_currency text,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created            timestamptz,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
-- (codes are case-insensitive at Stripe: Checkout looks them up so)
CREATE INDEX promotion_codes_code_idx ON stripe_billing.promotion_codes (upper(code), account);

CREATE TABLE stripe_billing.discounts (
    id                 text PRIMARY KEY,
    customer           text,
    subscription       text,
    subscription_item  text,
    invoice            text,
    invoice_item       text,
    checkout_session   text,
    coupon             text,            -- source.coupon (2025-09-30.clover on), or coupon's id
    promotion_code     text,
    starts_at          timestamptz,     -- Stripe's start
    ends_at            timestamptz,     -- Stripe's end (NULL: forever)
    deleted            boolean NOT NULL DEFAULT false,
    raw                jsonb,
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX discounts_customer_idx ON stripe_billing.discounts (customer);
CREATE INDEX discounts_subscription_idx ON stripe_billing.discounts (subscription);

-- The discounts of a subscription and of an invoice, by id ({} when none;
-- the rows are in discounts when their objects were seen).  (Added here,
-- at the end of the tables, as the 0.3.0 -> 0.4.0 update adds them.)
ALTER TABLE stripe_billing.subscriptions ADD COLUMN discounts text[] NOT NULL DEFAULT '{}';
ALTER TABLE stripe_billing.invoices ADD COLUMN discounts text[] NOT NULL DEFAULT '{}';

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.coupons', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.promotion_codes', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.discounts', '');

DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.coupons ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE stripe_billing.promotion_codes ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE stripe_billing.discounts ALTER COLUMN raw SET COMPRESSION lz4;
  END IF;
END
$$;

-- The ids of an array of discounts (ids, or expanded and deleted discount
-- objects); {} for none.
CREATE FUNCTION stripe_billing._discount_ids(discounts jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(array_agg(stripe_billing._id(d) ORDER BY n) FILTER (WHERE stripe_billing._id(d) IS NOT NULL),
                  '{}')
    FROM pg_catalog.jsonb_array_elements(CASE WHEN pg_catalog.jsonb_typeof(discounts) OPERATOR(pg_catalog.=) 'array'
                                              THEN discounts ELSE '[]' END) WITH ORDINALITY AS e(d, n)
$$;

CREATE FUNCTION stripe_billing._apply_coupon(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                             ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'coupon.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  IF deleting THEN
    -- a deleted coupon's payload may be bare: keep what we knew
    o := coalesce((SELECT raw FROM stripe_billing.coupons
                    WHERE id = o->>'id' AND account IS NOT DISTINCT FROM ev_account), '{}') || o;
  END IF;
  INSERT INTO stripe_billing.coupons AS t
         (id, name, percent_off, amount_off, currency, duration, duration_in_months, max_redemptions,
          times_redeemed, redeem_by, valid, deleted, metadata, created, raw, last_event_id, last_event_created,
          account)
  VALUES (o->>'id', o->>'name', (o->>'percent_off')::numeric, (o->>'amount_off')::bigint, o->>'currency',
          o->>'duration', (o->>'duration_in_months')::integer, (o->>'max_redemptions')::bigint,
          (o->>'times_redeemed')::bigint, stripe_billing._ts(o->'redeem_by'), (o->>'valid')::boolean, deleting,
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id, account) DO UPDATE SET
         name = EXCLUDED.name, percent_off = EXCLUDED.percent_off, amount_off = EXCLUDED.amount_off,
         currency = EXCLUDED.currency, duration = EXCLUDED.duration,
         duration_in_months = EXCLUDED.duration_in_months, max_redemptions = EXCLUDED.max_redemptions,
         times_redeemed = EXCLUDED.times_redeemed, redeem_by = EXCLUDED.redeem_by, valid = EXCLUDED.valid,
         deleted = EXCLUDED.deleted, metadata = EXCLUDED.metadata,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- A promotion code.  Its coupon: promotion.coupon (2025-09-30.clover on),
-- or the coupon object it embedded before.  (No terminal state: an
-- inactive code may be made active again.)
CREATE FUNCTION stripe_billing._apply_promotion_code(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                                     ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.promotion_codes AS t
         (id, code, coupon, customer, active, expires_at, max_redemptions, times_redeemed,
          first_time_transaction, minimum_amount, minimum_amount_currency, metadata, created, raw,
          last_event_id, last_event_created, account)
  VALUES (o->>'id', o->>'code',
          coalesce(stripe_billing._id(o->'promotion'->'coupon'), stripe_billing._id(o->'coupon')),
          stripe_billing._id(o->'customer'), (o->>'active')::boolean, stripe_billing._ts(o->'expires_at'),
          (o->>'max_redemptions')::bigint, (o->>'times_redeemed')::bigint,
          (o->'restrictions'->>'first_time_transaction')::boolean,
          (o->'restrictions'->>'minimum_amount')::bigint, o->'restrictions'->>'minimum_amount_currency',
          coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'), o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         code = EXCLUDED.code, coupon = EXCLUDED.coupon, customer = EXCLUDED.customer, active = EXCLUDED.active,
         expires_at = EXCLUDED.expires_at, max_redemptions = EXCLUDED.max_redemptions,
         times_redeemed = EXCLUDED.times_redeemed, first_time_transaction = EXCLUDED.first_time_transaction,
         minimum_amount = EXCLUDED.minimum_amount, minimum_amount_currency = EXCLUDED.minimum_amount_currency,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- A discount, from customer.discount.* (or a customer's embedded one).
-- Its coupon: source.coupon (2025-09-30.clover on), or the coupon object
-- it embedded before.  customer.discount.deleted (or deleted: true) is a
-- tombstone.
CREATE FUNCTION stripe_billing._apply_discount(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                               ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  deleting boolean := ev_type = 'customer.discount.deleted' OR coalesce((o->>'deleted')::boolean, false);
BEGIN
  INSERT INTO stripe_billing.discounts AS t
         (id, customer, subscription, subscription_item, invoice, invoice_item, checkout_session, coupon,
          promotion_code, starts_at, ends_at, deleted, raw, last_event_id, last_event_created, account)
  VALUES (o->>'id', stripe_billing._id(o->'customer'), stripe_billing._id(o->'subscription'),
          stripe_billing._id(o->'subscription_item'), stripe_billing._id(o->'invoice'),
          stripe_billing._id(o->'invoice_item'), stripe_billing._id(o->'checkout_session'),
          coalesce(stripe_billing._id(o->'source'->'coupon'), stripe_billing._id(o->'coupon')),
          stripe_billing._id(o->'promotion_code'), stripe_billing._ts(o->'start'), stripe_billing._ts(o->'end'),
          deleting, o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         -- (a deleted discount's payload names what it was applied to, as
         -- the live one did: nothing to merge)
         customer = coalesce(EXCLUDED.customer, t.customer),
         subscription = coalesce(EXCLUDED.subscription, t.subscription),
         subscription_item = coalesce(EXCLUDED.subscription_item, t.subscription_item),
         invoice = coalesce(EXCLUDED.invoice, t.invoice), invoice_item = coalesce(EXCLUDED.invoice_item, t.invoice_item),
         checkout_session = coalesce(EXCLUDED.checkout_session, t.checkout_session),
         coupon = coalesce(EXCLUDED.coupon, t.coupon), promotion_code = coalesce(EXCLUDED.promotion_code, t.promotion_code),
         starts_at = coalesce(EXCLUDED.starts_at, t.starts_at), ends_at = EXCLUDED.ends_at,
         deleted = EXCLUDED.deleted, raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, t.deleted, EXCLUDED.deleted);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- The discount a Checkout session is created with (stripe_create_checkout):
-- a promotion code (its promo_ id, or the code a customer types, looked up
-- among the account's active codes known here) or a coupon id.  Returns
-- the form field and its value; refuses, naming the argument, what Stripe
-- would refuse and what cannot be right: both, either with
-- allow_promotion_codes, an unknown or inactive code, a coupon known here
-- as deleted or no longer valid.
CREATE FUNCTION stripe_billing._checkout_discount(promotion_code text, coupon text, allow_promotion_codes boolean,
                                                  for_account text, OUT field text, OUT value text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  p stripe_billing.promotion_codes;
  c stripe_billing.coupons;
BEGIN
  promotion_code := nullif(promotion_code, '');
  coupon := nullif(coupon, '');
  IF promotion_code IS NULL AND coupon IS NULL THEN
    RETURN;
  END IF;
  IF promotion_code IS NOT NULL AND coupon IS NOT NULL THEN
    PERFORM stripe_billing._bad_argument('coupon', 'cannot be given with promotion_code: a session takes one discount');
  END IF;
  IF coalesce(allow_promotion_codes, false) THEN
    PERFORM stripe_billing._bad_argument(CASE WHEN coupon IS NULL THEN 'promotion_code' ELSE 'coupon' END,
        'cannot be given with allow_promotion_codes: Stripe takes a discount or lets the customer enter a code, not both');
  END IF;
  IF coupon IS NOT NULL THEN
    IF length(coupon) > 255 OR coupon ~ '[^\x21-\x7e]' THEN
      PERFORM stripe_billing._bad_argument('coupon',
          format('must be a coupon id (at most 255 printable characters, no spaces), not %s',
                 quote_literal(left(regexp_replace(coupon, '[^\x20-\x7e]', '?', 'g'), 100))));
    END IF;
    SELECT * INTO c FROM stripe_billing.coupons k
     WHERE k.id = coupon AND k.account IS NOT DISTINCT FROM for_account;
    IF FOUND AND (c.deleted OR NOT coalesce(c.valid, true)) THEN
      PERFORM stripe_billing._bad_argument('coupon', format('%s is %s', quote_literal(coupon),
          CASE WHEN c.deleted THEN 'deleted' ELSE 'no longer valid' END));
    END IF;
    field := 'discounts[0][coupon]';
    value := coupon;
    RETURN;
  END IF;
  IF length(promotion_code) > 500 OR promotion_code ~ '[^\x21-\x7e]' THEN
    PERFORM stripe_billing._bad_argument('promotion_code',
        format('must be a promotion code or its promo_ id (printable characters, no spaces), not %s',
               quote_literal(left(regexp_replace(promotion_code, '[^\x20-\x7e]', '?', 'g'), 100))));
  END IF;
  SELECT * INTO p FROM stripe_billing.promotion_codes k
   WHERE k.id = promotion_code AND k.account IS NOT DISTINCT FROM for_account;
  IF NOT FOUND THEN
    -- the code a customer types (the newest active one of the account)
    SELECT * INTO p FROM stripe_billing.promotion_codes k
     WHERE upper(k.code) = upper(promotion_code) AND k.account IS NOT DISTINCT FROM for_account AND k.active
     ORDER BY k.created DESC NULLS LAST, k.id LIMIT 1;
    IF NOT FOUND AND promotion_code !~ '^promo_[A-Za-z0-9]+$' THEN
      PERFORM stripe_billing._bad_argument('promotion_code',
          format('%s is no active promotion code of %s known here (its promo_ id is sent as it is)',
                 quote_literal(promotion_code), coalesce('account ' || for_account, 'the platform')));
    END IF;
  END IF;
  IF p.id IS NOT NULL AND (NOT coalesce(p.active, true) OR p.expires_at <= stripe_billing.stripe_now()) THEN
    PERFORM stripe_billing._bad_argument('promotion_code',
        format('%s is %s', quote_literal(promotion_code),
               CASE WHEN NOT coalesce(p.active, true) THEN 'not active' ELSE 'expired' END));
  END IF;
  field := 'discounts[0][promotion_code]';
  value := coalesce(p.id, promotion_code);
END
$$;
