
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
-- Each row names its Stripe account: NULL for the platform's own, the
-- connected account's id (acct_...) for one of Stripe Connect's (from the
-- event's account, or the call's).  Ids Stripe makes are unique across
-- accounts; a product's or a plan's may be chosen by its account, so those
-- are keyed by (id, account).
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX customers_user_ref_idx ON stripe_billing.customers (user_ref);
COMMENT ON COLUMN stripe_billing.customers.user_ref IS
    'the application''s user: from a completed Checkout session''s client_reference_id, metadata user_ref/user_id/userId, or stripe_link_customer()';

CREATE TABLE stripe_billing.products (
    id                 text NOT NULL,
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text,            -- the connected account (acct_...); NULL: the platform's own
    -- an id the account chose (a product "basic", a plan "pro_monthly") is
    -- unique within its account only
    CONSTRAINT products_id_account_key UNIQUE NULLS NOT DISTINCT (id, account)
);

-- Prices, and legacy plans (a plan is a recurring price).
CREATE TABLE stripe_billing.prices (
    id                 text NOT NULL,
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text,            -- the connected account (acct_...); NULL: the platform's own
    -- an id the account chose (a product "basic", a plan "pro_monthly") is
    -- unique within its account only
    CONSTRAINT prices_id_account_key UNIQUE NULLS NOT DISTINCT (id, account)
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
    updated_at           timestamptz NOT NULL DEFAULT now(),
    account            text,            -- the connected account (acct_...); NULL: the platform's own
    -- pause_collection, typed: void | keep_as_draft | mark_uncollectible
    -- while collection is paused (the status stays active), else NULL
    pause_behavior       text,
    pause_resumes_at     timestamptz    -- when collection resumes by itself (NULL: when unpaused)
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
    last_event_id        text,
    last_event_created   timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
);
-- (no raw: each item's JSON is in its subscription's raw, items.data)
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
    updated_at           timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
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
    updated_at         timestamptz NOT NULL DEFAULT now(),
    account            text             -- the connected account (acct_...); NULL: the platform's own
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

-- Stripe Connect's connected accounts: from account.updated events, the
-- application's authorization and deauthorization, the backfill
-- (/v1/accounts), and the first event or call that names an unknown one.
CREATE TABLE stripe_billing.accounts (
    id                 text PRIMARY KEY CHECK (id ~ '^acct_[A-Za-z0-9]{1,250}$'),
    business_name      text,
    country            text,
    default_currency   text,
    charges_enabled    boolean,
    payouts_enabled    boolean,
    details_submitted  boolean,
    requirements_due   text[],          -- requirements.currently_due
    type               text,            -- standard | express | custom (type, or the controller's)
    controller         jsonb,
    created            timestamptz,
    authorized_at      timestamptz,     -- the latest account.application.authorized
    deauthorized_at    timestamptz,     -- the platform lost access (a later deauthorization): kept, not polled
    raw                jsonb,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    last_event_id      text,
    last_event_created timestamptz,
    refetch            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.accounts', '');
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
    FOREACH t IN ARRAY ARRAY['customers', 'products', 'prices', 'subscriptions',
                             'invoices', 'payments', 'checkout_sessions', 'entitlement_summaries',
                             'accounts'] LOOP
      EXECUTE format('ALTER TABLE stripe_billing.%I ALTER COLUMN raw SET COMPRESSION lz4', t);
    END LOOP;
  END IF;
END
$$;

CREATE INDEX events_failed_idx ON stripe_billing.events (created, id) WHERE outcome = 'failed';
-- (connected accounts' events only: the platform's pay nothing for it)
CREATE INDEX events_account_received_idx ON stripe_billing.events (received_at, account)
    WHERE account IS NOT NULL;
CREATE INDEX events_ignored_idx ON stripe_billing.events (type, created, id) WHERE outcome = 'ignored';
