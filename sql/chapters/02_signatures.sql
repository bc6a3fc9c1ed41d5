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
