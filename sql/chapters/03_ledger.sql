
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
    outcome     text NOT NULL     -- pending: a thin event the worker has yet to fetch
                CHECK (outcome IN ('applied', 'ignored', 'stale', 'failed', 'pending')),
    error       text,
    payload     jsonb,
    body        bytea,
    -- the event as jsonb or, for a verified webhook body that jsonb refused,
    -- its raw bytes (then the outcome is failed): one of the two, never both
    CONSTRAINT events_payload_or_body CHECK ((payload IS NULL) <> (body IS NULL)),
    account     text             -- a connected account's event (its account); NULL: the platform's
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

-- Records and applies many events in array order, each as stripe_apply_event
-- does, in one subtransaction plus one per failing event (a subtransaction
-- per event would overflow PostgreSQL's cache past 64).  Not for PUBLIC.
CREATE FUNCTION stripe_billing.stripe_apply_events(events jsonb[], source text DEFAULT 'manual')
RETURNS TABLE (event_id text, outcome text)
AS 'MODULE_PATHNAME', 'stripe_apply_events'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_apply_events(jsonb[], text) FROM PUBLIC;

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
