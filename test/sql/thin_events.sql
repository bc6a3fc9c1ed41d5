-- Thin events (event destinations): a notification is recorded at once as
-- pending (nothing fetched in the webhook's transaction), its shape is
-- checked, its type decides what the worker will do, Stripe-Signature's
-- diagnostics items say which of body and secret went wrong, and what a
-- fetch brings is applied as a snapshot under the ordering rules; meter
-- error reports mark the usage rows they concern.  (The fetches
-- themselves, against the fake Stripe: integration test thin_events.)
CREATE EXTENSION stripe_billing;
CREATE EXTENSION pgcrypto;
SET search_path = stripe_billing, public;
SET TimeZone = 'UTC';
\set VERBOSITY default

-- Signs like Stripe does; with a destination, the diagnostics items too
-- (secret= masked as whsec_****<last 4>, destination=, payload= the last 8
-- hex digits of the body's SHA-256).
CREATE FUNCTION pg_temp.stripe_header(payload bytea, secret text,
                                      t bigint DEFAULT floor(extract(epoch FROM now()))::bigint,
                                      destination text DEFAULT NULL, signed_body bytea DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
  SELECT 't=' || t || ',v1=' || encode(hmac(convert_to(t::text || '.', 'UTF8') || payload,
                                            convert_to(secret, 'UTF8'), 'sha256'), 'hex')
         || CASE WHEN destination IS NULL THEN '' ELSE
              ',secret=whsec_****' || right(secret, 4) || ',destination=' || destination
              || ',payload=' || right(encode(digest(coalesce(signed_body, payload), 'sha256'), 'hex'), 8) END
$$;
CREATE FUNCTION pg_temp.try_apply(event jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN stripe_billing.stripe_apply_event(event, 'test');
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

\set thin '{"id": "evt_test_65thin1", "object": "v2.core.event", "type": "v1.customer.subscription.updated", "livemode": false, "created": "2026-01-01T12:00:00.123Z", "related_object": {"id": "sub_thin1", "type": "subscription", "url": "/v1/subscriptions/sub_thin1"}}'

-- a destination's secret sits in the same list; the route records the
-- notification, pending, and fetches nothing
SET stripe_billing.webhook_secret = 'whsec_snapshot_endpoint, whsec_thin_destination';
SELECT stripe_handle_webhook(:'thin', pg_temp.stripe_header(convert_to(:'thin', 'UTF8'), 'whsec_thin_destination'));
SELECT stripe_handle_webhook(:'thin', pg_temp.stripe_header(convert_to(:'thin', 'UTF8'), 'whsec_thin_destination'));
SELECT id, type, created, source, outcome, account, error, payload->'related_object'->>'url' AS related_url
  FROM events;
SELECT count(*) AS subscription_rows FROM subscriptions;

-- the notifications the official SDK's own tests sign and parse
-- (test/fixtures/thin/stripe-node): recorded as it reads them
\set sdk_notes `for f in test/fixtures/thin/stripe-node/*.json; do printf '%s\t%s\n' "$(basename "$f" .json)" "$(base64 -w0 "$f")"; done`
SELECT f[1] AS fixture,
       stripe_handle_webhook(convert_from(decode(f[2], 'base64'), 'UTF8'),
                             pg_temp.stripe_header(decode(f[2], 'base64'), 'whsec_thin_destination')) AS outcome
  FROM regexp_split_to_table(:'sdk_notes', '\n') line, string_to_array(line, E'\t') f
 WHERE line <> '' ORDER BY 1;
SELECT id, type, created, outcome, account, payload->>'context' AS context, payload->'related_object'->>'url' AS related_url
  FROM events WHERE id IN ('evt_123', 'evt_456', 'evt_unknown') ORDER BY id;

-- what each type is recorded as: pending when the worker will fetch it
-- (types of the kinds mapped, meter error reports, Accounts v2), applied
-- for a destination's ping, ignored otherwise (kept, replayable); the
-- context's connected account is the row's
SELECT e->>'type' AS type, e->'related_object'->>'type' AS related, e->>'context' AS context,
       pg_temp.try_apply(e) AS outcome
  FROM (SELECT jsonb_build_object('id', 'evt_test_65k' || n, 'object', 'v2.core.event', 'type', t,
                                  'livemode', false, 'created', '2026-01-01T12:00:01Z')
               || CASE WHEN r IS NULL THEN '{}'
                       ELSE jsonb_build_object('related_object', jsonb_build_object('id', 'x_' || n, 'type', r,
                                                                                    'url', '/v1/x/x_' || n)) END
               || CASE WHEN c IS NULL THEN '{}' ELSE jsonb_build_object('context', c) END AS e, n
          FROM (VALUES (1, 'v1.customer.created', 'customer', NULL),
                       (2, 'v1.customer.subscription.item_price_changed', 'subscription', NULL),
                       (3, 'v1.invoice.paid', 'invoice', 'acct_1Creator'),
                       (4, 'v1.invoice.upcoming', 'invoice', NULL),
                       (5, 'v1.charge.refund.updated', 'refund', NULL),
                       (6, 'v1.charge.dispute.created', 'dispute', NULL),
                       (7, 'v1.customer.discount.created', 'discount', NULL),
                       (8, 'v1.entitlements.active_entitlement_summary.updated', NULL, NULL),
                       (9, 'v1.account.application.deauthorized', NULL, 'acct_1Creator'),
                       (10, 'v1.billing.meter.error_report_triggered', 'billing.meter', NULL),
                       (11, 'v1.billing.meter.no_meter_found', NULL, NULL),
                       (12, 'v2.core.account.updated', 'v2.core.account', NULL),
                       (13, 'v2.core.account[requirements].updated', 'v2.core.account', NULL),
                       (14, 'v2.core.account_person.created', 'v2.core.account_person', NULL),
                       (15, 'v2.core.event_destination.ping', 'v2.core.event_destination', NULL),
                       (16, 'v2.money_management.payout_method.created', 'v2.money_management.payout_method', NULL),
                       (17, 'v1.setup_intent.succeeded', 'setup_intent', NULL),
                       (18, 'v1.plan.created', 'plan', 'org_1Parent/acct_1Creator'),
                       (19, 'v1.product.deleted', 'product', 'org_1Parent')) v(n, t, r, c)) x
 ORDER BY n;
SELECT id, account FROM events WHERE payload ? 'context' ORDER BY id;
-- what the worker does with each (stripe_billing._thin_mapping)
SELECT t AS type, m.action, m.kind
  FROM (VALUES ('v1.customer.deleted', 'customer'), ('v1.plan.updated', 'plan'),
               ('v1.checkout.session.completed', 'checkout.session'), ('v1.invoice_payment.paid', 'invoice_payment'),
               ('v1.entitlements.active_entitlement_summary.updated', NULL),
               ('v1.account.application.authorized', NULL), ('v1.account.updated', 'account'),
               ('v2.core.account[configuration.merchant].capability_status_updated', 'v2.core.account'),
               ('v2.core.account.closed', NULL), ('v2.core.account_link.returned', 'v2.core.account_link'),
               ('v1.billing.meter.no_meter_found', NULL), ('v2.core.event_destination.ping', NULL),
               ('v1.customer.tax_id.created', 'tax_id'), ('customer.created', 'customer')) v(t, r),
       _thin_mapping(t, r) m;

-- a thin event's shape: every problem raises SBE01 naming the field, and
-- nothing is recorded
SELECT label, pg_temp.try_apply(e) AS outcome
  FROM (VALUES
    ('no type',                :'thin'::jsonb - 'type'),
    ('no created',             :'thin'::jsonb - 'created'),
    ('created Unix seconds',   jsonb_set(:'thin', '{created}', '1767268800')),
    ('created without zone',   jsonb_set(:'thin', '{created}', '"2026-01-01T12:00:00"')),
    ('created month 13',       jsonb_set(:'thin', '{created}', '"2026-13-01T12:00:00Z"')),
    ('created 30 February',    jsonb_set(:'thin', '{created}', '"2026-02-30T12:00:00Z"')),
    ('created a date',         jsonb_set(:'thin', '{created}', '"2026-01-01"')),
    ('created bad offset',     jsonb_set(:'thin', '{created}', '"2026-01-01T12:00:00+25:00"')),
    ('no livemode',            :'thin'::jsonb - 'livemode'),
    ('context number',         jsonb_set(:'thin', '{context}', '7')),
    ('context with a space',   jsonb_set(:'thin', '{context}', '"acct_1 x"')),
    ('context empty segment',  jsonb_set(:'thin', '{context}', '"acct_1A//acct_1B"')),
    ('context CR LF',          jsonb_set(:'thin', '{context}', to_jsonb(E'acct_1A\r\nX-Evil: 1'::text))),
    ('related_object string',  jsonb_set(:'thin', '{related_object}', '"sub_1"')),
    ('related url number',     jsonb_set(:'thin', '{related_object,url}', '1')),
    ('related type empty',     jsonb_set(:'thin', '{related_object,type}', '""')),
    ('object neither',         jsonb_set(:'thin', '{object}', '"v2.core.events"'))
  ) v(label, e);
-- RFC 3339 times as API v2 writes them, with or without a fraction, in any offset
SELECT t AS created_given, pg_temp.try_apply(jsonb_build_object('id', 'evt_test_65t' || n, 'object', 'v2.core.event',
                                              'type', 'v1.product.updated', 'livemode', false, 'created', t)) AS outcome
  FROM (VALUES (1, '2026-01-01T12:00:00Z'), (2, '2026-01-01T12:00:00.5z'), (3, '2026-01-01t14:00:00.123456789+02:00'),
               (4, '2024-02-29T00:00:00-05:30')) v(n, t);
SELECT id, created FROM events WHERE id LIKE 'evt_test_65t_' ORDER BY id;
-- a live-mode notification in a test-mode database is refused (SBE02)
SELECT pg_temp.try_apply(jsonb_set(jsonb_set(:'thin', '{livemode}', 'true'), '{id}', '"evt_live_65"')) AS live;

-- Stripe-Signature's diagnostics items: when no signature matches, the
-- error says whether the body differs from what Stripe sent (payload=) or
-- the configured secrets are not the destination's (secret=, masked),
-- quoting only what Stripe sent; unknown items stay ignored
\set body '{"id": "evt_test_65diag", "object": "v2.core.event", "type": "v2.core.event_destination.ping", "livemode": false, "created": "2026-01-01T12:00:00Z"}'
SELECT stripe_check_signature(:'body' || ' ', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_thin_destination',
                                                                     destination => 'ed_test_1'), 'whsec_thin_destination');
SELECT stripe_check_signature(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_other_secret_9876',
                                                             destination => 'ed_test_2'),
                              ARRAY['whsec_snapshot_endpoint', 'whsec_thin_destination']);
-- the body is Stripe's and a secret looks like the masked one (same last
-- four), yet it signed with another
SELECT stripe_check_signature(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_xxxxxx_nation',
                                                             destination => 'ed_test_3'), 'whsec_thin_destination');
-- the body altered and the secret wrong: the body is said first
SELECT stripe_check_signature(:'body' || ' ', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_other_destination',
                                                                     destination => 'ed_test_4'), 'whsec_thin_destination');
-- without the items, as before
SELECT stripe_check_signature(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_other_destination'),
                              'whsec_thin_destination');
-- a payload= that is not 8 hex digits, or a secret= without a mask, tells nothing (and is never shown)
SELECT stripe_check_signature(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_other_destination')
                                       || ',payload=xyz,secret=whsec_other_destination', 'whsec_thin_destination');
-- valid with the items, and with unknown ones
SELECT stripe_verify_signature(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_thin_destination',
                                                              destination => 'ed_test_5') || ',foo=bar,v0=abc',
                               'whsec_thin_destination') AS valid;
-- the webhook route says the same
SELECT stripe_handle_webhook(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_other_secret_9876',
                                                            destination => 'ed_test_6'));
SELECT stripe_handle_webhook(:'body', pg_temp.stripe_header(convert_to(:'body', 'UTF8'), 'whsec_thin_destination',
                                                            destination => 'ed_test_6')) AS ping;

-- related objects' urls: a path under /v1 or /v2 of stripe_billing.api_base only
CREATE FUNCTION pg_temp.try_path(url text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN _thin_related_path(url);
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT url, pg_temp.try_path(url) AS path
  FROM (VALUES ('/v1/subscriptions/sub_1'), ('/v2/core/accounts/acct_1'), ('https://api.stripe.com/v1/customers/cus_1'),
               ('https://api.stripe.com.evil.example/v1/customers/cus_1'), ('https://evil.example/v1/customers/cus_1'),
               ('//evil.example/v1/customers/cus_1'), ('/v1/customers/../accounts'), ('/v1/customers/cus_1?expand=x'),
               ('/v3/things/1'), ('/v1'), ('v1/customers/cus_1'), (E'/v1/customers/cus_1\r\nHost: evil')) v(url);
-- what an answer says
SELECT a AS answer, v.*
  FROM (VALUES ('{"status": 200, "body": {"id": "x"}}'::jsonb), ('{"status": 200, "body": null}'),
               ('{"status": 404, "body": {"error": {"code": "resource_missing", "message": "No such event"}}, "request_id": "req_1"}'),
               ('{"status": 0, "error": "Connection refused"}'), ('{"status": 429}'), ('{"status": 503}'),
               ('{"status": 401}'), ('{"status": 400, "body": {"error": {"message": "Bad"}}}'),
               ('{"status": 403, "body": {"error": {"code": "account_invalid"}}}'),
               ('{"status": 500, "should_retry": "false"}'), ('{"status": 400, "should_retry": "true"}')) x(a),
       _thin_verdict(a) v;

-- times of v2 objects: RFC 3339, or Unix seconds as some SDKs type a meter report's window
SELECT _thin_time('2026-01-01T12:00:00.5Z') AS rfc3339, _thin_time('1767268800') AS unix_seconds,
       _thin_time('yesterday') AS neither, _thin_time('2026-02-30T00:00:00Z') AS no_such_day;

-- a fetched object is a snapshot as of the fetch: applied on the thin
-- event's row under the ordering rules, as the event's account's
\set sub_created '{"id": "evt_sub_v1", "object": "event", "type": "customer.subscription.created", "created": 1767268800, "livemode": false, "data": {"object": {"id": "sub_thin1", "object": "subscription", "customer": "cus_thin1", "status": "incomplete", "items": {"object": "list", "has_more": false, "data": []}}}}'
SELECT stripe_apply_event(:'sub_created') AS snapshot_event;
SELECT _apply_thin_object('evt_test_65thin1', (:'sub_created'::jsonb)->'data'->'object' || '{"status": "active"}',
                          '2026-01-01 12:00:10+00', 'customer.subscription.updated', NULL) AS fetched;
SELECT id, status, last_event_id, last_event_created FROM subscriptions;
SELECT outcome, error FROM events WHERE id = 'evt_test_65thin1';
-- a snapshot event older than the fetch is stale; terminal states stick
SELECT stripe_apply_event(jsonb_set(jsonb_set(jsonb_set(:'sub_created', '{id}', '"evt_sub_v2"'), '{created}', '1767268805'),
                                    '{data,object,status}', '"past_due"')) AS older_event;
SELECT stripe_apply_event(:'thin'::jsonb || '{"id": "evt_test_65thin2", "type": "v1.customer.subscription.deleted"}') AS noted,
       _apply_thin_object('evt_test_65thin2', (:'sub_created'::jsonb)->'data'->'object' || '{"status": "canceled"}',
                          '2026-01-01 12:00:20+00', 'customer.subscription.deleted', NULL) AS fetched_canceled;
SELECT stripe_apply_event(:'thin'::jsonb || '{"id": "evt_test_65thin3"}') AS noted,
       _apply_thin_object('evt_test_65thin3', (:'sub_created'::jsonb)->'data'->'object' || '{"status": "active"}',
                          '2026-01-01 12:00:30+00', 'customer.subscription.updated', NULL) AS late_active;
SELECT id, status, last_event_id FROM subscriptions;
-- a tombstone (a product gone at Stripe when fetched), and a connected account's object
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_test_65p1', 'object', 'v2.core.event', 'type', 'v1.product.deleted',
                                             'livemode', false, 'created', '2026-01-01T12:00:00Z', 'context', 'acct_1Creator',
                                             'related_object', '{"id": "prod_thin1", "type": "product", "url": "/v1/products/prod_thin1"}'::jsonb)) AS noted,
       _apply_thin_object('evt_test_65p1', '{"id": "prod_thin1", "object": "product", "deleted": true}',
                          '2026-01-01 12:00:40+00', 'product.deleted', 'acct_1Creator') AS tombstone;
SELECT id, deleted, account, last_event_id FROM products WHERE id = 'prod_thin1';
-- objects the fetch may not apply: another mode's, an unmapped kind
SELECT stripe_apply_event(:'thin'::jsonb || '{"id": "evt_test_65thin4"}') AS noted,
       _apply_thin_object('evt_test_65thin4', '{"id": "cus_live", "object": "customer", "livemode": true}',
                          '2026-01-01 12:00:50+00', 'customer.updated', NULL) AS live_object;
SELECT stripe_apply_event(:'thin'::jsonb || '{"id": "evt_test_65thin5"}') AS noted,
       _apply_thin_object('evt_test_65thin5', '{"id": "seti_1", "object": "setup_intent"}',
                          '2026-01-01 12:00:50+00', 'setup_intent.succeeded', NULL) AS unmapped;
SELECT id, outcome, error FROM events WHERE id IN ('evt_test_65thin4', 'evt_test_65thin5') ORDER BY id;

-- Accounts v2 (Connect) fill stripe_billing.accounts; fields it leaves out keep what was known
SELECT _apply_v2_account('{"id": "acct_1V2", "object": "v2.core.account", "display_name": "Creator",
                           "created": "2025-06-01T10:00:00.000Z", "dashboard": "express",
                           "identity": {"country": "FR"}, "defaults": {"currency": "eur"},
                           "configuration": {"merchant": {"capabilities": {"card_payments": {"status": "active"},
                                                                            "stripe_balance": {"payouts": {"status": "restricted"}}}}},
                           "requirements": {"entries": [{"description": "identity.business_details.phone",
                                                          "minimum_deadline": {"status": "currently_due"}},
                                                         {"description": "later", "minimum_deadline": {"status": "eventually_due"}}]}}',
                         'v2.core.account.created', 'evt_test_65a1', '2026-01-01 12:00:00+00') AS created,
       _apply_v2_account('{"id": "acct_1V2", "object": "v2.core.account", "display_name": "Creator SAS",
                           "created": "2025-06-01T10:00:00.000Z"}',
                         'v2.core.account.updated', 'evt_test_65a2', '2026-01-01 12:01:00+00') AS updated;
SELECT id, business_name, country, default_currency, charges_enabled, payouts_enabled, requirements_due, type, created
  FROM accounts WHERE id = 'acct_1V2';

-- meter error reports mark the usage rows they concern
SELECT stripe_link_customer('u_ok', 'cus_u_ok'), stripe_link_customer('u_lost', 'cus_u_lost');
SELECT stripe_report_usage(u, m, 1, '2026-01-01 12:00:00+00')
  FROM (VALUES ('u_ok', 'api_calls'), ('u_ok', 'api_calls'), ('u_lost', 'api_calls'), ('u_lost', 'api_calls'),
               ('u_lost', 'api_calls'), ('u_ok', 'exports'), ('u_ok', 'exports')) v(u, m);
UPDATE usage_outbox SET sent_at = '2026-01-01 12:00:05+00', attempts = 1;
UPDATE usage_outbox SET sent_at = '2026-01-01 13:00:00+00' WHERE id = 5;    -- (outside the window)
CREATE FUNCTION pg_temp.report(code text, ids bigint[], meter text DEFAULT NULL) RETURNS integer LANGUAGE sql AS $$
  SELECT _thin_mark_usage('evt_test_65m_' || code,
           jsonb_build_object('data', jsonb_build_object(
             'validation_start', '2026-01-01T12:00:00.000Z', 'validation_end', '2026-01-01T12:00:10.000Z',
             'reason', jsonb_build_object('error_count', 9, 'error_types', jsonb_build_array(jsonb_build_object(
               'code', code, 'error_count', 9,
               'sample_errors', (SELECT jsonb_agg(jsonb_build_object(
                                   'error_message', format('Refused %s', i),
                                   'request', jsonb_build_object('identifier',
                                                                 'sb_' || stripe_installation_id() || '_' || i)))
                                   FROM unnest(ids) i)))))),
           meter, NULL)
$$;
-- a value error names its row only; a customer error the user's rows of the
-- meter in the window; an identifier of another installation nothing
SELECT pg_temp.report('meter_event_invalid_value', ARRAY[1::bigint]) AS invalid_value,
       pg_temp.report('meter_event_customer_not_found', ARRAY[3::bigint], 'api_calls') AS customer_not_found,
       _thin_mark_usage('evt_test_65m_other', '{"data": {"reason": {"error_types": [{"code": "timestamp_too_far_in_past",
                          "sample_errors": [{"error_message": "x", "request": {"identifier": "sb_0123456789abcdef_2"}},
                                            {"error_message": "y", "request": {"identifier": "not_ours"}}]}]}}}',
                        NULL, NULL) AS other_installation;
-- a meter error (no_meter): every row of its meter in the window
SELECT pg_temp.report('no_meter', ARRAY[6::bigint]) AS no_meter;
SELECT id, user_ref, event_name, stripe_error_code, stripe_error, stripe_error_match, stripe_error_event
  FROM usage_outbox ORDER BY id;
SELECT pending, sent, failed, stripe_errors FROM usage_status;

-- the worker's view: the pending count and the oldest one's age
SELECT thin_pending, thin_oldest_pending_age > interval '0' AS has_age FROM sync_status WHERE account IS NULL;

-- a fetch that cannot be made (no API key here) is the event's attempt:
-- tried again after its backoff, still pending, unless the event is past
-- Stripe's 30 days (failed); an id that cannot be a path, or a context
-- naming no account, fail without a request
UPDATE events SET outcome = 'ignored' WHERE outcome = 'pending';
SELECT stripe_apply_event(:'thin'::jsonb || jsonb_build_object('id', 'evt_test_65recent', 'created',
                            to_char(now() - interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))) AS recent,
       stripe_apply_event(:'thin'::jsonb || jsonb_build_object('id', 'evt_test_65old', 'created',
                            to_char(now() - interval '31 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))) AS old,
       stripe_apply_event(:'thin'::jsonb || jsonb_build_object('id', 'evt test 65/../x', 'created',
                            to_char(now() - interval '2 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))) AS bad_id,
       stripe_apply_event(:'thin'::jsonb || jsonb_build_object('id', 'evt_test_65org', 'context', 'org_1Parent', 'created',
                            to_char(now() - interval '3 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))) AS org_context;
SELECT _thin_fetch_one() AS first, _thin_fetch_one() AS second, _thin_fetch_one() AS third,
       _thin_fetch_one() AS fourth, _thin_fetch_one() AS none_due;
SELECT e.id, e.outcome, e.error, f.attempts, f.next_attempt_at > now() AS backing_off, f.last_error,
       f.done_at IS NOT NULL AS done
  FROM events e JOIN thin_fetches f ON f.event_id = e.id ORDER BY e.created, e.id;
SELECT thin_pending FROM sync_status WHERE account IS NULL;

-- retries fetch a failed thin event again (pending); replays of ignored
-- ones keep those whose type is still not fetched; the worker's own
-- retries leave thin events alone
UPDATE events SET outcome = 'failed', error = 'a mapping failure' WHERE id = 'evt_test_65thin5';
SELECT _retry_due() AS worker_retried;
SELECT outcome FROM events WHERE id = 'evt_test_65thin5';
SELECT event_id, outcome FROM stripe_retry_failed_events() WHERE event_id LIKE 'evt_test_65%' ORDER BY 1;
SELECT event_id, outcome FROM stripe_replay_events('v1.setup_intent.succeeded');

DROP EXTENSION stripe_billing;
DROP EXTENSION pgcrypto;
