-- The event ledger: stripe_apply_event records every event once, whatever
-- its type, and refuses malformed or wrong-mode events with errors naming
-- the field.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
\set VERBOSITY default

\set ev '{"id": "evt_ledger_1", "object": "event", "type": "test.thing.happened", "api_version": "2025-03-31.basil", "created": 1700000000, "livemode": false, "data": {"object": {"id": "thing_1", "object": "thing"}}}'

SELECT stripe_apply_event(:'ev');
SELECT stripe_apply_event(:'ev');
SELECT stripe_apply_event(:'ev', 'poll');
SELECT id, type, api_version, livemode, created, source, outcome, error,
       payload = :'ev'::jsonb AS payload_kept, received_at <= clock_timestamp() AS received
  FROM events;

-- a rolled-back delivery leaves no trace; the next delivery applies
BEGIN;
SELECT stripe_apply_event(jsonb_set(:'ev', '{id}', '"evt_ledger_2"'), 'webhook');
ROLLBACK;
SELECT count(*) FROM events WHERE id = 'evt_ledger_2';
SELECT stripe_apply_event(jsonb_set(:'ev', '{id}', '"evt_ledger_2"'), 'webhook');

-- a real Stripe payload, api_version null (stripe/openapi fixture)
\set plan_created `cat test/fixtures/events/stripe-openapi/plan.created.json`
SELECT stripe_apply_event(:'plan_created');
SELECT id, type, api_version, created FROM events WHERE type = 'plan.created';

-- Malformed events: one error per problem, naming the field; nothing recorded.
CREATE FUNCTION pg_temp.try_apply(event jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN stripe_billing.stripe_apply_event(event);
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT label, pg_temp.try_apply(e) AS outcome
  FROM (VALUES
    ('array',                '[1, 2]'::jsonb),
    ('string',               '"evt_1"'),
    ('null json',            'null'),
    ('no id',                :'ev'::jsonb - 'id'),
    ('id number',            jsonb_set(:'ev', '{id}', '42')),
    ('id empty',             jsonb_set(:'ev', '{id}', '""')),
    ('id null',              jsonb_set(:'ev', '{id}', 'null')),
    ('object not event',     jsonb_set(:'ev', '{object}', '"customer"')),
    ('no type',              :'ev'::jsonb - 'type'),
    ('type array',           jsonb_set(:'ev', '{type}', '["a"]')),
    ('no created',           :'ev'::jsonb - 'created'),
    ('created string',       jsonb_set(:'ev', '{created}', '"1700000000"')),
    ('created fraction',     jsonb_set(:'ev', '{created}', '1700000000.5')),
    ('created negative',     jsonb_set(:'ev', '{created}', '-1')),
    ('created huge',         jsonb_set(:'ev', '{created}', '1e30')),
    ('no livemode',          :'ev'::jsonb - 'livemode'),
    ('livemode string',      jsonb_set(:'ev', '{livemode}', '"false"')),
    ('api_version number',   jsonb_set(:'ev', '{api_version}', '2025')),
    ('no data',              :'ev'::jsonb - 'data'),
    ('data string',          jsonb_set(:'ev', '{data}', '"x"')),
    ('no data.object',       jsonb_set(:'ev', '{data}', '{}')),
    ('data.object array',    jsonb_set(:'ev', '{data,object}', '[]')),
    ('data.object null',     jsonb_set(:'ev', '{data,object}', 'null')),
    -- ids and types are capped (255 bytes): a longer one would not fit the index
    ('id too long',          jsonb_set(:'ev', '{id}', to_jsonb((SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g)))),
    ('id 256 bytes',         jsonb_set(:'ev', '{id}', to_jsonb(repeat('é', 128)))),
    ('type too long',        jsonb_set(jsonb_set(:'ev', '{id}', '"evt_long_type"'), '{type}',
                                       to_jsonb((SELECT string_agg(md5(g::text), '.') FROM generate_series(1, 100) g))))
  ) AS c(label, e);
SELECT pg_temp.try_apply(NULL);
SELECT stripe_apply_event(:'ev', '');
SELECT count(*) AS recorded FROM events;
-- 255 bytes is fine
SELECT stripe_apply_event(jsonb_set(jsonb_set(:'ev', '{id}', to_jsonb(repeat('é', 127) || 'x')), '{type}', to_jsonb(repeat('t', 255))));
SELECT length(id), octet_length(id), octet_length(type), outcome FROM events WHERE id LIKE 'é%';
DELETE FROM events WHERE id LIKE 'é%';

-- each row keeps the event as jsonb (payload) or, for a verified webhook
-- body that jsonb refused, its raw bytes (body): exactly one of them
\set VERBOSITY terse
INSERT INTO events (id, type, livemode, created, source, outcome)
VALUES ('evt_neither', 'x', false, now(), 'manual', 'failed');
INSERT INTO events (id, type, livemode, created, source, outcome, payload, body)
VALUES ('evt_both', 'x', false, now(), 'manual', 'failed', '{}', '\x7b7d');
\set VERBOSITY default

-- livemode must match stripe_billing.livemode (off: test mode)
\set live_ev '{"id": "evt_live_1", "object": "event", "type": "customer.created", "created": 1700000000, "livemode": true, "data": {"object": {"id": "cus_1", "object": "customer"}}}'
SELECT stripe_apply_event(:'live_ev');
SET stripe_billing.livemode = on;
SELECT stripe_apply_event(:'live_ev');
SELECT stripe_apply_event(jsonb_set(:'ev', '{id}', '"evt_test_in_live"'));
RESET stripe_billing.livemode;

-- unsigned input is not for everyone: app roles cannot apply events or
-- write the ledger, and see it only if granted
CREATE ROLE regress_sb_app;
SET ROLE regress_sb_app;
SELECT stripe_apply_event(jsonb_set(:'ev', '{id}', '"evt_from_app"'));
INSERT INTO events (id, type, livemode, created, source, outcome, payload)
VALUES ('evt_x', 'x', false, now(), 'manual', 'ignored', '{}');
SELECT count(*) FROM events;
RESET ROLE;
GRANT SELECT ON events TO regress_sb_app;
SET ROLE regress_sb_app;
SELECT count(*) FROM events;
UPDATE events SET outcome = 'applied';
RESET ROLE;
REVOKE SELECT ON events FROM regress_sb_app;
DROP ROLE regress_sb_app;

SELECT id, source, outcome FROM events ORDER BY id;
DROP EXTENSION stripe_billing;
