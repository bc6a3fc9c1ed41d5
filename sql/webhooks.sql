-- stripe_handle_webhook: verify with stripe_billing.webhook_secret, parse,
-- apply with source 'webhook'; every refusal says why.
CREATE EXTENSION stripe_billing;
CREATE EXTENSION pgcrypto;
SET search_path = stripe_billing, public;
\set VERBOSITY default

-- Signs like Stripe does, at a given time (default: now).
CREATE FUNCTION pg_temp.stripe_header(payload bytea, secret text,
                                      t bigint DEFAULT floor(extract(epoch FROM now()))::bigint)
RETURNS text LANGUAGE sql AS $$
  SELECT 't=' || t || ',v1=' || encode(hmac(convert_to(t::text || '.', 'UTF8') || payload,
                                            convert_to(secret, 'UTF8'), 'sha256'), 'hex')
$$;

\set ev '{"id": "evt_wh_1", "object": "event", "type": "customer.created", "api_version": "2025-03-31.basil", "created": 1700000000, "livemode": false, "data": {"object": {"id": "cus_wh_1", "object": "customer"}}}'

-- no secret configured: a server-side problem, its own SQLSTATE (SBC01)
SELECT stripe_handle_webhook(:'ev', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_a'));

SET stripe_billing.webhook_secret = 'whsec_a';
SELECT stripe_handle_webhook(:'ev', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_a'));
SELECT stripe_handle_webhook(:'ev', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_a'));
SELECT id, source, outcome FROM events;

-- refusals, each with its reason; nothing is recorded
SELECT stripe_handle_webhook(:'ev', NULL);
SELECT stripe_handle_webhook(:'ev', 'v1=abc');
SELECT stripe_handle_webhook(:'ev', 't=1700000000,v0=abc');
SELECT stripe_handle_webhook(:'ev', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_other'));
SELECT stripe_handle_webhook(:'ev' || ' ', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_a'));
\set VERBOSITY terse
SELECT stripe_handle_webhook(:'ev', pg_temp.stripe_header(convert_to(:'ev', 'UTF8'), 'whsec_a',
                                                          floor(extract(epoch FROM now()))::bigint - 400));
\set VERBOSITY default
SELECT stripe_handle_webhook(NULL::text, 't=1,v1=00');

-- the tolerance is a setting
SET stripe_billing.webhook_tolerance = '1h';
SELECT stripe_handle_webhook(jsonb_set(:'ev', '{id}', '"evt_wh_old"')::text,
                             pg_temp.stripe_header(convert_to(jsonb_set(:'ev', '{id}', '"evt_wh_old"')::text, 'UTF8'),
                                                   'whsec_a', extract(epoch FROM now())::bigint - 3000));
RESET stripe_billing.webhook_tolerance;

-- rotation: several comma-separated secrets, any one may sign
SET stripe_billing.webhook_secret = 'whsec_old, whsec_new';
SELECT stripe_handle_webhook(e, pg_temp.stripe_header(convert_to(e, 'UTF8'), s))
  FROM (VALUES (jsonb_set(:'ev', '{id}', '"evt_wh_old_secret"')::text, 'whsec_old'),
               (jsonb_set(:'ev', '{id}', '"evt_wh_new_secret"')::text, 'whsec_new')) AS v(e, s);

-- a bytea body: verified on its bytes, then it must be UTF-8 JSON
SELECT stripe_handle_webhook(b, pg_temp.stripe_header(b, 'whsec_new'))
  FROM (SELECT convert_to(jsonb_set(:'ev', '{id}', '"evt_wh_bytea"')::text, 'UTF8') AS b) x;
SELECT stripe_handle_webhook(b, pg_temp.stripe_header(b, 'whsec_new'))
  FROM (SELECT '\x7b22c328ff227d'::bytea AS b) x;
SELECT stripe_handle_webhook(b, pg_temp.stripe_header(b, 'whsec_new'))
  FROM (SELECT convert_to('{"id": "evt_broken", ', 'UTF8') AS b) x;
SELECT stripe_handle_webhook(b, pg_temp.stripe_header(b, 'whsec_new'))
  FROM (SELECT convert_to('{"id": "evt_no_type", "object": "event", "created": 1, "livemode": false, "data": {"object": {}}}', 'UTF8') AS b) x;

-- a real Stripe delivery, byte for byte, with the header the stripe SDK made
-- for it (signed long ago, so the age check is off here)
\set vectors_json `cat test/fixtures/signature_vectors.json`
\set file_sub `base64 -w0 test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json`
SET stripe_billing.webhook_secret = 'whsec_test_secret';
SET stripe_billing.webhook_tolerance = 0;
SELECT stripe_handle_webhook(decode(:'file_sub', 'base64'), v->>'header')
  FROM jsonb_array_elements(:'vectors_json'::jsonb->'vectors') v
 WHERE v->>'payload_file' LIKE '%customer.subscription.updated.json';
-- the checkout fixture is a live-mode event: refused in this test-mode database
\set file_checkout `base64 -w0 test/fixtures/events/supabase-stripe-sync-engine/checkout.session.completed.json`
SELECT stripe_handle_webhook(convert_from(decode(:'file_checkout', 'base64'), 'UTF8'), v->>'header')
  FROM jsonb_array_elements(:'vectors_json'::jsonb->'vectors') v
 WHERE v->>'payload_file' LIKE '%checkout.session.completed.json';
RESET stripe_billing.webhook_tolerance;

-- an app role with no rights on the tables can still hand webhooks over
CREATE ROLE regress_sb_app;
SET stripe_billing.webhook_secret = 'whsec_a';
SET ROLE regress_sb_app;
SELECT stripe_billing.stripe_handle_webhook(e, pg_temp.stripe_header(convert_to(e, 'UTF8'), 'whsec_a'))
  FROM (SELECT jsonb_set(:'ev', '{id}', '"evt_wh_app"')::text AS e) x;
SELECT count(*) FROM stripe_billing.events;
RESET ROLE;
DROP ROLE regress_sb_app;

SELECT id, type, source, outcome FROM events ORDER BY id;
DROP EXTENSION stripe_billing;
DROP EXTENSION pgcrypto;
