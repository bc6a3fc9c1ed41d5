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

-- A verified body that jsonb refuses is still kept: its raw bytes in
-- "body", no payload, outcome failed with the reason.  Its id, type,
-- created, livemode and api_version are read from the body itself (escapes
-- decoded as jsonb would).  Only a body with no usable id (not JSON, id
-- missing, unusable or too long, ...) is refused, with SBE01 (answer 400).
CREATE FUNCTION pg_temp.deliver(body bytea) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN stripe_billing.stripe_handle_webhook(body, pg_temp.stripe_header(body, 'whsec_new'));
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
CREATE TEMP TABLE refused_bodies (n serial, label text, body bytea);
-- (standard_conforming_strings: \u0000 below is the six characters of the escape)
INSERT INTO refused_bodies (label, body) VALUES
  ('\u0000 in a string', convert_to('{"id": "evt_wh_nul", "object": "event", "type": "customer.updated", "api_version": "2025-03-31.basil", "created": 1700000001, "livemode": false, "data": {"object": {"id": "cus_wh_nul", "object": "customer", "name": "a\u0000b"}}}', 'UTF8')),
  ('invalid UTF-8 in a string', convert_to('{"id": "evt_wh_utf8", "object": "event", "type": "customer.updated", "created": 1700000002, "livemode": false, "data": {"object": {"id": "cus_wh_utf8", "object": "customer", "name": "a', 'UTF8')
      || '\xc328ff'::bytea || convert_to('b"}}}', 'UTF8')),
  ('lone surrogate', convert_to('{"id": "evt_wh_surrogate", "type": "invoice.paid", "created": 1700000003, "livemode": false, "data": {"object": {"id": "in_wh", "object": "invoice", "description": "\ud800"}}}', 'UTF8')),
  ('nested too deep', convert_to('{"id": "evt_wh_deep", "type": "customer.updated", "created": 1700000004, "livemode": false, "data": {"object": {"id": "cus_wh_deep", "object": "customer", "metadata": {"x": ' || repeat('[', 100000) || repeat(']', 100000) || '}}}}', 'UTF8')),
  ('number beyond numeric', convert_to('{"id": "evt_wh_big", "type": "customer.updated", "created": 1700000005, "livemode": false, "data": {"object": {"id": "cus_wh_big", "object": "customer", "balance": 1e1000000}}}', 'UTF8')),
  ('escaped header fields', convert_to('{"id": "evt_wh_\u0065sc\u00e9", "type": "customer.\u0075pdated", "api_version": null, "created": 17e8, "livemode": false, "data": {"object": {"object": "customer", "name": "\u0000"}}}', 'UTF8')),
  ('header keys repeated: the last wins', convert_to('{"id": "evt_wh_first", "type": "x", "created": 1, "livemode": true, "data": 1, "id": "evt_wh_last", "type": "customer.deleted", "created": 1700000006, "livemode": false, "data": {"object": {"a": "\u0000"}}}', 'UTF8')),
  -- refused: no usable id, or a header field that would be refused anyway
  ('not JSON: cut short', convert_to('{"id": "evt_wh_cut", "type": "customer.updated", "name": "\u0000', 'UTF8')),
  ('not JSON: invalid UTF-8 outside strings', convert_to('{"id": "evt_wh_x", ', 'UTF8') || '\xff'::bytea || convert_to('"type": "a"}', 'UTF8')),
  ('not an object', convert_to('["evt_wh_arr", "\u0000"]', 'UTF8')),
  ('no id', convert_to('{"type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('id number', convert_to('{"id": 42, "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('\u0000 in the id', convert_to('{"id": "evt_\u0000", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {}}}', 'UTF8')),
  ('invalid UTF-8 in the id', convert_to('{"id": "evt_', 'UTF8') || '\xff'::bytea || convert_to('", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {}}}', 'UTF8')),
  ('id too long', convert_to('{"id": "evt_' || repeat('a1b2', 64) || '", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('type too long', convert_to('{"id": "evt_wh_long_type", "type": "' || repeat('x', 256) || '", "created": 1700000000, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('no created', convert_to('{"id": "evt_wh_no_created", "type": "customer.updated", "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('created fraction', convert_to('{"id": "evt_wh_frac", "type": "customer.updated", "created": 1.5e0, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('created huge', convert_to('{"id": "evt_wh_huge", "type": "customer.updated", "created": 1e999999, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('livemode string', convert_to('{"id": "evt_wh_lm", "type": "customer.updated", "created": 1700000000, "livemode": "no", "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('object not event', convert_to('{"id": "cus_wh", "object": "customer", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": {"name": "\u0000"}}}', 'UTF8')),
  ('data.object array', convert_to('{"id": "evt_wh_arr_obj", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {"object": ["\u0000"]}}', 'UTF8')),
  ('no data.object (another field has an object)', convert_to('{"id": "evt_wh_no_obj", "type": "customer.updated", "created": 1700000000, "livemode": false, "data": {}, "request": {"object": {"id": "\u0000"}}}', 'UTF8')),
  ('live mode in a test-mode database', convert_to('{"id": "evt_wh_live", "type": "customer.updated", "created": 1700000000, "livemode": true, "data": {"object": {"name": "\u0000"}}}', 'UTF8'));
SELECT n, label, pg_temp.deliver(body) AS outcome FROM refused_bodies ORDER BY n;
-- the kept ones, byte for byte
SELECT r.label, e.id, e.type, e.api_version, e.created, e.livemode, e.source, e.outcome,
       e.payload IS NULL AS no_payload, e.body = r.body AS body_kept, e.error
  FROM refused_bodies r JOIN events e ON e.body = r.body ORDER BY r.n;
SELECT count(*) AS kept FROM events WHERE body IS NOT NULL;
-- Stripe's retry of the same body is a duplicate
SELECT n, pg_temp.deliver(body) AS outcome FROM refused_bodies WHERE n <= 3 ORDER BY n;
-- the text variant too
SELECT stripe_handle_webhook(e, pg_temp.stripe_header(convert_to(e, 'UTF8'), 'whsec_new'))
  FROM (SELECT '{"id": "evt_wh_text_nul", "type": "customer.updated", "created": 1700000007, "livemode": false, "data": {"object": {"object": "customer", "id": "cus_wh_text", "email": "\u0000@example.com"}}}'::text AS e) x;
SELECT id, outcome, payload IS NULL AS no_payload, strpos(convert_from(body, 'UTF8'), '"\u0000@example.com"') > 0 AS body_kept, error
  FROM events WHERE id = 'evt_wh_text_nul';
-- nothing of them was applied, and retrying failed events skips them: they
-- cannot be applied again (only their raw body is kept)
SELECT count(*) AS customers_written FROM customers WHERE id LIKE 'cus_wh_%' AND id <> 'cus_wh_1';
SELECT * FROM stripe_retry_failed_events();
SELECT count(*) AS still_failed FROM events WHERE body IS NOT NULL AND outcome = 'failed';
SELECT * FROM _reapply_events(ARRAY['evt_wh_nul']);

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
-- (a body jsonb refuses too)
SELECT stripe_billing.stripe_handle_webhook(e, pg_temp.stripe_header(convert_to(e, 'UTF8'), 'whsec_a'))
  FROM (SELECT '{"id": "evt_wh_app_nul", "type": "customer.updated", "created": 1700000008, "livemode": false, "data": {"object": {"name": "\u0000"}}}'::text AS e) x;
SELECT count(*) FROM stripe_billing.events;
RESET ROLE;
DROP ROLE regress_sb_app;

SELECT id, type, source, outcome FROM events ORDER BY id;
DROP EXTENSION stripe_billing;
DROP EXTENSION pgcrypto;
