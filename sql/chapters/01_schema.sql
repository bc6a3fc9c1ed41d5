\echo Use "CREATE EXTENSION stripe_billing" to load this file. \quit

-- Everything the extension owns lives here; every name below is qualified.
CREATE SCHEMA stripe_billing;
COMMENT ON SCHEMA stripe_billing IS 'Stripe billing state, kept by the stripe_billing extension';
-- Roles may call the public functions; tables stay unreadable unless granted.
GRANT USAGE ON SCHEMA stripe_billing TO PUBLIC;

