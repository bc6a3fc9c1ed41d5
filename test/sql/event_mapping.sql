-- Every fixture event (test/fixtures/events) and every current-shape
-- API object (test/fixtures/objects/stripe-openapi) applied, and the
-- rows they produce.  The supabase fixtures reuse event ids across files, so
-- each gets a fresh id; the one live-mode fixture is applied as test mode.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;

\set events_b64 `for f in test/fixtures/events/*/*.json; do printf '%s\t%s\n' "$(basename "$f" .json)" "$(base64 -w0 "$f")"; done`
\set objects_b64 `for f in test/fixtures/objects/stripe-openapi/*.json; do printf '%s\t%s\n' "$(basename "$f" .json)" "$(base64 -w0 "$f")"; done`

CREATE TEMP TABLE fixture_events AS
SELECT split_part(line, E'\t', 1) AS name,
       convert_from(decode(split_part(line, E'\t', 2), 'base64'), 'UTF8')::jsonb AS event
  FROM string_to_table(:'events_b64', E'\n') AS line;
SELECT count(*) AS fixture_events, count(DISTINCT event->>'id') AS distinct_ids FROM fixture_events;

-- old-shape payloads (api_version 2020-03-02 ... 2023-10-16), oldest first
SELECT name, event->>'type' AS type,
       stripe_apply_event(event || jsonb_build_object('id', 'evt_fx_' || name, 'livemode', false)) AS outcome
  FROM fixture_events ORDER BY (event->>'created')::bigint, name;

-- current-shape objects (2025-03-31.basil and later), wrapped in the event
-- Stripe would send for them
CREATE TEMP TABLE fixture_objects AS
SELECT split_part(line, E'\t', 1) AS name,
       convert_from(decode(split_part(line, E'\t', 2), 'base64'), 'UTF8')::jsonb AS object
  FROM string_to_table(:'objects_b64', E'\n') AS line;

SELECT o.name, t.type,
       stripe_apply_event(jsonb_build_object(
           'id', 'evt_obj_' || o.name, 'object', 'event', 'type', t.type,
           'api_version', '2025-03-31.basil', 'created', 1800000000, 'livemode', false,
           'data', jsonb_build_object('object', o.object))) AS outcome
  FROM fixture_objects o
  JOIN (VALUES ('customer', 'customer.updated'), ('deleted_customer', 'customer.deleted'),
               ('product', 'product.updated'), ('deleted_product', 'product.deleted'),
               ('price', 'price.updated'), ('deleted_price', 'price.deleted'), ('plan', 'plan.updated'),
               ('subscription', 'customer.subscription.updated'), ('invoice', 'invoice.paid'),
               ('invoice_payment', 'invoice_payment.paid'), ('payment_intent', 'payment_intent.succeeded'),
               ('charge', 'charge.succeeded'), ('checkout.session', 'checkout.session.completed'),
               ('entitlements.active_entitlement_summary', 'entitlements.active_entitlement_summary.updated'),
               ('billing.meter', 'billing.meter.created'), ('coupon', 'coupon.created'),
               ('subscription_schedule', 'subscription_schedule.updated'))
       AS t(name, type) USING (name)
 ORDER BY o.name;

SELECT count(*) AS recorded, count(*) FILTER (WHERE outcome = 'applied') AS applied,
       count(*) FILTER (WHERE outcome = 'ignored') AS ignored,
       count(*) FILTER (WHERE outcome NOT IN ('applied', 'ignored')) AS other
  FROM events;
SELECT id, type, outcome, error FROM events WHERE outcome NOT IN ('applied') ORDER BY id;

-- the rows
SELECT id, user_ref, email, name, deleted, metadata, created, last_event_id, refetch FROM customers ORDER BY id;
SELECT id, name, active, deleted, created, last_event_id FROM products ORDER BY id;
SELECT id, product, active, currency, unit_amount, type, recurring_interval, recurring_interval_count,
       usage_type, lookup_key, nickname, deleted, last_event_id FROM prices ORDER BY id;
SELECT id, customer, status, cancel_at_period_end, cancel_at, canceled_at, ended_at,
       current_period_start, current_period_end, trial_start, trial_end, latest_invoice, metadata,
       last_event_id
  FROM subscriptions ORDER BY id;
SELECT id, subscription, price, product, price_lookup_key, quantity, current_period_start,
       current_period_end, deleted
  FROM subscription_items ORDER BY id;
SELECT id, customer, subscription, status, amount_due, amount_paid, amount_remaining, currency,
       attempt_count, next_payment_attempt, period_start, period_end, billing_reason, deleted,
       hosted_invoice_url IS NOT NULL AS has_url, last_event_id
  FROM invoices ORDER BY id;
SELECT id, kind, customer, invoice, payment_intent, charge, amount, amount_refunded, currency, status,
       failure_code, failure_message, last_event_id
  FROM payments ORDER BY kind, id;
SELECT id, user_ref, customer, customer_email, mode, status, payment_status, subscription,
       payment_intent, amount_total, currency, expires_at, last_event_id
  FROM checkout_sessions ORDER BY id;
SELECT customer, refetch, last_event_id FROM entitlement_summaries ORDER BY customer;
SELECT customer, feature_id, lookup_key, entitlement_id FROM active_entitlements ORDER BY customer, feature_id;

-- subscription schedules and their phases' prices; paused collection
SELECT id, customer, subscription, released_subscription, status, end_behavior, current_phase_start,
       current_phase_end, released_at, canceled_at, completed_at, created, last_event_id
  FROM subscription_schedules ORDER BY id;
SELECT schedule, start_date, end_date, price, quantity, trial_end, proration_behavior
  FROM subscription_schedule_phases ORDER BY schedule, start_date, price;
SELECT id, pause_collection, pause_behavior, pause_resumes_at FROM subscriptions ORDER BY id;

-- the raw objects are kept beside the typed columns
SELECT count(*) FILTER (WHERE raw IS NULL) AS without_raw, count(*) AS subscriptions FROM subscriptions;

-- an invoice's status may be null (Stripe's spec allows it): applied, not
-- deleted; a later paid snapshot applies; a null status after it is stale
-- (paid is terminal); invoice.deleted still deletes
CREATE FUNCTION pg_temp.invoice_event(id text, type text, created bigint, invoice jsonb) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                            'livemode', false, 'data', jsonb_build_object('object', invoice))
$$;
SELECT stripe_apply_event(pg_temp.invoice_event('evt_in_null_1', 'invoice.created', 1800000001,
         '{"id": "in_null_status", "object": "invoice", "customer": "cus_null_status", "status": null, "amount_due": 500}'));
SELECT id, status, deleted, amount_due FROM invoices WHERE id = 'in_null_status';
SELECT stripe_apply_event(pg_temp.invoice_event('evt_in_null_2', 'invoice.paid', 1800000002,
         '{"id": "in_null_status", "object": "invoice", "customer": "cus_null_status", "status": "paid", "amount_due": 500}'));
SELECT stripe_apply_event(pg_temp.invoice_event('evt_in_null_3', 'invoice.updated', 1800000003,
         '{"id": "in_null_status", "object": "invoice", "customer": "cus_null_status", "status": null, "amount_due": 500}'));
SELECT id, status, deleted, last_event_id FROM invoices WHERE id = 'in_null_status';
SELECT stripe_apply_event(pg_temp.invoice_event('evt_in_null_4', 'invoice.deleted', 1800000004,
         '{"id": "in_null_status", "object": "invoice", "status": null}'));
SELECT id, status, deleted, last_event_id FROM invoices WHERE id = 'in_null_status';
SELECT id, outcome, error FROM events WHERE id LIKE 'evt_in_null_%' ORDER BY id;

DROP EXTENSION stripe_billing;
