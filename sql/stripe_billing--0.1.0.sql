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
    payload     jsonb NOT NULL
);
COMMENT ON TABLE stripe_billing.events IS
    'Ledger of every Stripe event received: one row per event id';
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
