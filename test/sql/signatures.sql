-- Webhook signatures: the official SDKs' scheme, checked against the
-- vectors the stripe SDK made (test/fixtures/signature_vectors.json)
-- and against pgcrypto's HMAC as an independent signer.
CREATE EXTENSION stripe_billing;
CREATE EXTENSION pgcrypto;
SET search_path = stripe_billing, public;

\set fixtures test/fixtures
\set vectors_json `cat test/fixtures/signature_vectors.json`
\set file_sub `base64 -w0 test/fixtures/events/supabase-stripe-sync-engine/customer.subscription.updated.json`
\set file_checkout `base64 -w0 test/fixtures/events/supabase-stripe-sync-engine/checkout.session.completed.json`
\set file_summary `base64 -w0 test/fixtures/events/supabase-stripe-sync-engine/entitlements.active_entitlement_summary.updated.json`

CREATE TEMP TABLE fixture_files (path text PRIMARY KEY, body bytea NOT NULL);
INSERT INTO fixture_files VALUES
  ('events/supabase-stripe-sync-engine/customer.subscription.updated.json', decode(:'file_sub', 'base64')),
  ('events/supabase-stripe-sync-engine/checkout.session.completed.json', decode(:'file_checkout', 'base64')),
  ('events/supabase-stripe-sync-engine/entitlements.active_entitlement_summary.updated.json', decode(:'file_summary', 'base64'));

-- One row per vector; a vector without a payload signs the inline one.
CREATE TEMP TABLE vectors AS
SELECT n, v->>'header' AS header, v->>'payload_file' AS payload_file,
       (v->>'payload_bytes')::int AS payload_bytes,
       coalesce(convert_to(v->>'payload_inline', 'UTF8'), f.body,
                convert_to(doc->'vectors'->0->>'payload_inline', 'UTF8')) AS payload,
       doc->>'secret' AS secret, to_timestamp((doc->>'timestamp')::bigint) AS signed_at
  FROM (SELECT :'vectors_json'::jsonb AS doc) d,
       jsonb_array_elements(doc->'vectors') WITH ORDINALITY AS t(v, n)
       LEFT JOIN fixture_files f ON f.path = v->>'payload_file';

-- every vector verifies, as text and as bytea, at signing time and 300 s later
SELECT n, coalesce(payload_file, 'inline') AS payload,
       length(payload) = coalesce(payload_bytes, length(payload)) AS right_size,
       stripe_verify_signature(payload, header, secret, 300, signed_at) AS bytea_ok,
       stripe_verify_signature(convert_from(payload, 'UTF8'), header, secret, 300, signed_at) AS text_ok,
       stripe_verify_signature(payload, header, secret, 300, signed_at + interval '300 s') AS at_tolerance
  FROM vectors ORDER BY n;

-- and fails one second past the tolerance, with another secret, or tampered
SELECT n,
       stripe_verify_signature(payload, header, secret, 300, signed_at + interval '301 s') AS expired,
       stripe_verify_signature(payload, header, 'whsec_wrong', 300, signed_at) AS wrong_secret,
       stripe_verify_signature(overlay(payload placing '\x20'::bytea from length(payload) - 2 for 1),
                               header, secret, 300, signed_at) AS tampered,
       stripe_verify_signature(payload || '\x0a'::bytea, header, secret, 300, signed_at) AS extra_byte
  FROM vectors ORDER BY n;

-- Cases built by signing with pgcrypto: a helper makes "t=...,v1=..." headers.
CREATE FUNCTION pg_temp.sign(payload bytea, secret text, t bigint) RETURNS text
LANGUAGE sql AS $$
  SELECT 'v1=' || encode(hmac(convert_to(t::text || '.', 'UTF8') || payload,
                              convert_to(secret, 'UTF8'), 'sha256'), 'hex')
$$;
-- Why a check fails: SQLSTATE and message, or ok.
CREATE FUNCTION pg_temp.why(payload bytea, header text, secrets text[],
                            tolerance int DEFAULT 300,
                            now timestamptz DEFAULT to_timestamp(1700000000))
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM stripe_billing.stripe_check_signature(payload, header, secrets, tolerance, now);
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TEMP TABLE p AS SELECT convert_to('{"id":"evt_1","object":"event"}', 'UTF8') AS body;

SELECT label, stripe_verify_signature(body, header, 'whsec_a', 300, to_timestamp(1700000000)) AS verified,
       pg_temp.why(body, header, ARRAY['whsec_a']) AS why
  FROM p CROSS JOIN LATERAL (VALUES
    ('valid',               't=1700000000,' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('no t',                pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('t not a number',      't=17x,' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('only v0',             't=1700000000,v0=' || substr(pg_temp.sign(body, 'whsec_a', 1700000000), 4)),
    ('v0 and v1',           't=1700000000,v0=00,' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('v1 first, t last',    pg_temp.sign(body, 'whsec_a', 1700000000) || ',t=1700000000'),
    ('uppercase hex',       't=1700000000,v1=' || upper(substr(pg_temp.sign(body, 'whsec_a', 1700000000), 4))),
    ('signed other t',      't=1700000001,' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('rotation: 2 v1s',     't=1700000000,v1=' || repeat('0', 64) || ',' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('short v1',            't=1700000000,v1=abc'),
    ('spaces around items', 't=1700000000, ' || pg_temp.sign(body, 'whsec_a', 1700000000)),
    ('too old',             't=1699999000,' || pg_temp.sign(body, 'whsec_a', 1699999000)),
    ('future',              't=1800000000,' || pg_temp.sign(body, 'whsec_a', 1800000000)),
    ('wrong secret',        't=1700000000,' || pg_temp.sign(body, 'whsec_b', 1700000000)),
    ('empty',               ''),
    ('null',                NULL)
  ) AS c(label, header);

-- several secrets (rotation on our side): any one may sign
SELECT secrets, stripe_verify_signature(body, 't=1700000000,' || pg_temp.sign(body, 'whsec_new', 1700000000),
                                        secrets, 300, to_timestamp(1700000000)) AS verified,
       pg_temp.why(body, 't=1700000000,' || pg_temp.sign(body, 'whsec_new', 1700000000), secrets) AS why
  FROM p, (VALUES (ARRAY['whsec_old', 'whsec_new']), (ARRAY['whsec_new']), (ARRAY['whsec_old']),
                  (ARRAY[NULL, '', 'whsec_new']), (ARRAY[]::text[]), (NULL)) AS s(secrets);

-- tolerance 0 disables the age check, as in the SDKs; NULL means 300
SELECT stripe_verify_signature(body, 't=1000,' || pg_temp.sign(body, 'whsec_a', 1000), 'whsec_a', 0) AS tolerance_0,
       stripe_verify_signature(body, 't=1000,' || pg_temp.sign(body, 'whsec_a', 1000), 'whsec_a', NULL) AS tolerance_null,
       pg_temp.why(body, 't=1000,' || pg_temp.sign(body, 'whsec_a', 1000), ARRAY['whsec_a'], 0, now()) AS why_0
  FROM p;

-- NULL or empty payload: false, or a clear error when checking
SELECT stripe_verify_signature(NULL::text, 't=1,v1=00', 'whsec_a') AS null_payload,
       stripe_verify_signature('', 't=1,v1=00', 'whsec_a') AS empty_payload,
       stripe_verify_signature('x', 't=1,v1=00', NULL::text) AS null_secret,
       stripe_verify_signature('x', 't=1,v1=00', '') AS empty_secret,
       pg_temp.why('', 't=1,v1=00', ARRAY['whsec_a']) AS why_empty_payload,
       pg_temp.why('x', 't=1,v1=00', NULL) AS why_no_secret;

-- the raw bytes are signed: invalid UTF-8 and a 300 KB body both verify
SELECT stripe_verify_signature(b, 't=1700000000,' || pg_temp.sign(b, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS invalid_utf8_ok,
       stripe_verify_signature(b || '\x00'::bytea, 't=1700000000,' || pg_temp.sign(b, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS invalid_utf8_tampered
  FROM (SELECT '\xc328ff00fe7b7d'::bytea AS b) x;

SELECT length(b) AS bytes,
       stripe_verify_signature(b, 't=1700000000,' || pg_temp.sign(b, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS big_ok,
       stripe_verify_signature(convert_from(b, 'UTF8'), 't=1700000000,' || pg_temp.sign(b, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS big_text_ok,
       stripe_verify_signature(overlay(b placing 'Y' from 150000 for 1), 't=1700000000,' || pg_temp.sign(b, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS big_tampered
  FROM (SELECT convert_to('{"data":"' || repeat('é', 150000) || '"}', 'UTF8') AS b) x;

-- caps: any role may call these, so at most 16 secrets and 64 v1
-- signatures are compared (a clear error past that, not minutes of HMACs)
SELECT stripe_verify_signature(body, 't=1700000000,' || pg_temp.sign(body, 'whsec_a', 1700000000),
                               array_append(array_fill('whsec_x'::text, ARRAY[15]), 'whsec_a'),
                               300, to_timestamp(1700000000)) AS sixteen_secrets_ok,
       stripe_verify_signature(body, 't=1700000000,' || repeat('v1=' || repeat('0', 64) || ',', 63)
                                     || pg_temp.sign(body, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) AS sixty_four_signatures_ok
  FROM p;
\set VERBOSITY default
SELECT stripe_verify_signature(body, 't=1700000000,' || pg_temp.sign(body, 'whsec_a', 1700000000),
                               array_append(array_fill('whsec_x'::text, ARRAY[16]), 'whsec_a'),
                               300, to_timestamp(1700000000)) FROM p;
SELECT stripe_verify_signature(body, 't=1700000000,' || repeat('v1=' || repeat('0', 64) || ',', 64)
                               || pg_temp.sign(body, 'whsec_a', 1700000000),
                               'whsec_a', 300, to_timestamp(1700000000)) FROM p;
SELECT stripe_check_signature(body, 't=1700000000,' || repeat('v1=' || repeat('0', 64) || ',', 25000),
                              ARRAY['whsec_a'], 300, to_timestamp(1700000000)) FROM p;

-- the raising variant's errors, as a client sees them
SELECT stripe_check_signature('payload', 't=1700000000,v1=' || repeat('0', 64), 'whsec_a', 300, to_timestamp(1700000000));
SELECT stripe_check_signature(body, 't=1699999000,' || pg_temp.sign(body, 'whsec_a', 1699999000), 'whsec_a', 300, to_timestamp(1700000000)) FROM p;
SELECT stripe_check_signature(body, 't=1700000000,' || pg_temp.sign(body, 'whsec_a', 1700000000), 'whsec_a', 300, to_timestamp(1700000000)) FROM p;

DROP EXTENSION stripe_billing;
DROP EXTENSION pgcrypto;
