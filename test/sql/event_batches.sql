-- Many events in one call: stripe_apply_events (and a worker's page,
-- _apply_page) apply them in order, each as stripe_apply_event would, with
-- one subtransaction for the lot plus one per failing event.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;

CREATE FUNCTION pg_temp.ev(id text, type text, created bigint, object jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                            'livemode', false, 'data', jsonb_build_object('object', object))
$$;
CREATE FUNCTION pg_temp.sub(id text, status text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'subscription', 'customer', 'cus_b', 'status', status,
    'metadata', '{"user_ref": "user_b"}'::jsonb,
    'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(
      jsonb_build_object('id', 'si_' || id, 'quantity', 1, 'current_period_start', 1700000000,
                         'current_period_end', 4102444800, 'price', '{"id": "price_b", "product": "prod_b"}'::jsonb))))
$$;
SELECT stripe_grant_feature('price', 'price_b', 'reports');

-- In order: applied, stale (an older snapshot), ignored, failed (no
-- customer), duplicate (the same id twice), applied after the failure.
SELECT * FROM stripe_apply_events(ARRAY[
  pg_temp.ev('evt_b1', 'customer.subscription.created', 1700000010, pg_temp.sub('sub_b1', 'active')),
  pg_temp.ev('evt_b2', 'customer.subscription.updated', 1700000005, pg_temp.sub('sub_b1', 'canceled')),
  pg_temp.ev('evt_b3', 'setup_intent.created', 1700000011, '{"id": "seti_1", "object": "setup_intent"}'),
  pg_temp.ev('evt_b4', 'customer.subscription.updated', 1700000012, pg_temp.sub('sub_b2', 'active') - 'customer'),
  pg_temp.ev('evt_b1', 'customer.subscription.created', 1700000010, pg_temp.sub('sub_b1', 'active')),
  pg_temp.ev('evt_b5', 'customer.subscription.created', 1700000013, pg_temp.sub('sub_b3', 'trialing'))
], 'batch');
SELECT id, type, source, outcome, error FROM events ORDER BY id;
SELECT id, status FROM subscriptions ORDER BY id;
SELECT user_ref, feature FROM user_features ORDER BY 1, 2;

-- The failure was rolled back with its run: the events before it are there once.
SELECT count(*) FROM subscription_items;

-- Refused before anything is applied: a NULL element, a malformed event,
-- another mode, an empty source, a two-dimensional array.
SELECT * FROM stripe_apply_events(ARRAY[pg_temp.ev('evt_b6', 'coupon.created', 1, '{}'), NULL]);
SELECT * FROM stripe_apply_events(ARRAY[pg_temp.ev('evt_b7', 'coupon.created', 1, '{}'), '{"type": "x"}']);
SELECT * FROM stripe_apply_events(ARRAY[jsonb_set(pg_temp.ev('evt_b8', 'coupon.created', 1, '{}'), '{livemode}', 'true')]);
SELECT * FROM stripe_apply_events(ARRAY[pg_temp.ev('evt_b9', 'coupon.created', 1, '{}')], '');
SELECT * FROM stripe_apply_events(ARRAY[[pg_temp.ev('evt_b10', 'coupon.created', 1, '{}')]]);
SELECT count(*) FROM events WHERE id IN ('evt_b6', 'evt_b7', 'evt_b8', 'evt_b9', 'evt_b10');
SELECT * FROM stripe_apply_events('{}');

-- A worker's page is newest first: applied oldest first; a malformed event
-- is skipped with a WARNING.
SELECT _apply_page(jsonb_build_array(
  pg_temp.ev('evt_p3', 'customer.subscription.updated', 1700000030, pg_temp.sub('sub_b3', 'canceled')),
  '{"object": "event", "type": "coupon.created"}'::jsonb,
  pg_temp.ev('evt_p1', 'customer.subscription.updated', 1700000020, pg_temp.sub('sub_b3', 'active'))), 'poll');
SELECT id, source, outcome FROM events WHERE id LIKE 'evt_p%' ORDER BY id;
SELECT id, status, last_event_id FROM subscriptions WHERE id = 'sub_b3';
SELECT user_ref, feature FROM user_features ORDER BY 1, 2;

-- Not for PUBLIC.
SELECT has_function_privilege('public', 'stripe_billing.stripe_apply_events(jsonb[], text)', 'EXECUTE') AS public_may_call;

DROP EXTENSION stripe_billing;
