-- Ordering of snapshots per object row: stale, same-second ties, sticky
-- terminal states, tombstones, item removal, both payload shapes, linking
-- users to customers, and redelivery.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;

-- A subscription event (current shape: period bounds on the items).
CREATE FUNCTION pg_temp.sub_event(evt text, created bigint, status text,
                                  extra jsonb DEFAULT '{}', ev_type text DEFAULT 'customer.subscription.updated',
                                  item_ids text[] DEFAULT '{si_o}', has_more boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', ev_type, 'api_version', '2025-03-31.basil',
           'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'id', 'sub_o', 'object', 'subscription', 'customer', 'cus_o', 'status', status,
              'cancel_at_period_end', false, 'metadata', '{}'::jsonb,
              'items', jsonb_build_object('object', 'list', 'has_more', has_more, 'data',
                 (SELECT jsonb_agg(jsonb_build_object('id', i, 'object', 'subscription_item', 'quantity', 1,
                           'current_period_start', created, 'current_period_end', created + 2592000,
                           'price', jsonb_build_object('id', 'price_pro', 'object', 'price',
                                                       'product', 'prod_pro', 'lookup_key', 'pro'))
                           ORDER BY i)
                    FROM unnest(item_ids) i))) || extra))
$$;
CREATE FUNCTION pg_temp.customer_event(evt text, created bigint, ev_type text DEFAULT 'customer.updated',
                                       extra jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', ev_type, 'created', created, 'livemode', false,
           'data', jsonb_build_object('object',
              jsonb_build_object('id', 'cus_o', 'object', 'customer', 'email', evt || '@example.com',
                                 'metadata', '{}'::jsonb) || extra))
$$;
CREATE VIEW pg_temp.sub AS
  SELECT status, current_period_start, last_event_id, last_event_created, refetch FROM stripe_billing.subscriptions;

-- an older event never overwrites a newer one
SELECT stripe_apply_event(pg_temp.sub_event('evt_200', 1700000200, 'active'));
SELECT stripe_apply_event(pg_temp.sub_event('evt_100', 1700000100, 'trialing'));
SELECT * FROM pg_temp.sub;
SELECT stripe_apply_event(pg_temp.sub_event('evt_300', 1700000300, 'past_due'));
SELECT * FROM pg_temp.sub;

-- a redelivery changes nothing, not even updated_at
CREATE TEMP TABLE before AS SELECT * FROM subscriptions;
SELECT stripe_apply_event(pg_temp.sub_event('evt_300', 1700000300, 'past_due'));
SELECT stripe_apply_event(pg_temp.sub_event('evt_200', 1700000200, 'active'), 'poll');
SELECT count(*) AS changed_rows FROM (SELECT * FROM subscriptions EXCEPT SELECT * FROM before) d;

-- same second: the later arrival wins and the row is marked for a re-fetch
SELECT stripe_apply_event(pg_temp.sub_event('evt_300b', 1700000300, 'active'));
SELECT * FROM pg_temp.sub;
-- a newer snapshot clears the mark
SELECT stripe_apply_event(pg_temp.sub_event('evt_400', 1700000400, 'active', '{"cancel_at_period_end": true}'));
SELECT status, refetch, (SELECT cancel_at_period_end FROM subscriptions) FROM pg_temp.sub;

-- terminal states stick: canceled is never revived, by a tie or a later event
SELECT stripe_apply_event(pg_temp.sub_event('evt_500', 1700000500, 'canceled', '{}', 'customer.subscription.deleted'));
SELECT stripe_apply_event(pg_temp.sub_event('evt_500b', 1700000500, 'active'));
SELECT stripe_apply_event(pg_temp.sub_event('evt_600', 1700000600, 'active'));
SELECT * FROM pg_temp.sub;
-- but a newer terminal snapshot still applies (it is news about a canceled subscription)
SELECT stripe_apply_event(pg_temp.sub_event('evt_700', 1700000700, 'canceled', '{"metadata": {"note": "late"}}'));
SELECT status, last_event_id, metadata FROM subscriptions;
-- incomplete_expired is terminal too, and wins a tie against a non-terminal snapshot
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_ie1', 1700000100, 'incomplete'), '{data,object,id}', '"sub_ie"'));
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_ie2', 1700000200, 'incomplete_expired'), '{data,object,id}', '"sub_ie"'));
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_ie3', 1700000200, 'incomplete'), '{data,object,id}', '"sub_ie"'));
SELECT id, status, last_event_id, refetch FROM subscriptions WHERE id = 'sub_ie';

-- deletes are tombstones: the row stays, marked deleted, and is never resurrected
SELECT stripe_apply_event(pg_temp.customer_event('evt_c100', 1700000100, 'customer.created'));
SELECT stripe_apply_event(pg_temp.customer_event('evt_c300', 1700000300, 'customer.deleted', '{"deleted": true}'));
SELECT stripe_apply_event(pg_temp.customer_event('evt_c200', 1700000200));
SELECT stripe_apply_event(pg_temp.customer_event('evt_c300b', 1700000300));
SELECT stripe_apply_event(pg_temp.customer_event('evt_c400', 1700000400));
-- (the bare deleted payload keeps what was known, e.g. the email)
SELECT id, email, deleted, last_event_id FROM customers;

-- a deletion that arrives first: the late creation is stale
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_p2', 'object', 'event', 'type', 'product.deleted',
         'created', 1700000200, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'prod_x', 'object', 'product', 'active', false))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_p1', 'object', 'event', 'type', 'product.created',
         'created', 1700000100, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'prod_x', 'object', 'product', 'name', 'X', 'active', true))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_pr1', 'object', 'event', 'type', 'price.deleted',
         'created', 1700000100, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'price_x', 'object', 'price', 'product', 'prod_x'))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_pr2', 'object', 'event', 'type', 'price.updated',
         'created', 1700000200, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'price_x', 'object', 'price', 'product', 'prod_x', 'active', true))));
SELECT id, active, deleted, last_event_id FROM products;
SELECT id, active, deleted, last_event_id FROM prices;

-- items: a newer snapshot without an item tombstones it; a list cut short
-- (has_more) tombstones nothing and marks the subscription for a re-fetch
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_i1', 1700000100, 'active', '{}', 'customer.subscription.created', '{si_a,si_b}'),
                                    '{data,object,id}', '"sub_items"'));
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_i2', 1700000200, 'active', '{}', 'customer.subscription.updated', '{si_b}'),
                                    '{data,object,id}', '"sub_items"'));
SELECT id, deleted, last_event_id FROM subscription_items WHERE subscription = 'sub_items' ORDER BY id;
SELECT stripe_apply_event(jsonb_set(pg_temp.sub_event('evt_i3', 1700000300, 'active', '{}', 'customer.subscription.updated', '{si_c}', true),
                                    '{data,object,id}', '"sub_items"'));
SELECT id, deleted, last_event_id FROM subscription_items WHERE subscription = 'sub_items' ORDER BY id;
SELECT id, refetch FROM subscriptions WHERE id = 'sub_items';

-- both payload shapes: before 2025-03-31.basil the period is on the
-- subscription and the invoice names its subscription; after, the period is
-- on the items and the invoice names it under parent.subscription_details
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_old_sub', 'object', 'event', 'type', 'customer.subscription.created',
         'api_version', '2020-08-27', 'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_old', 'object', 'subscription', 'customer', 'cus_old', 'status', 'active',
            'current_period_start', 1700000000, 'current_period_end', 1702592000,
            'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(
               jsonb_build_object('id', 'si_old', 'object', 'subscription_item', 'quantity', 2,
                                  'plan', jsonb_build_object('id', 'plan_old', 'object', 'plan', 'product', 'prod_old'),
                                  'price', jsonb_build_object('id', 'price_old', 'object', 'price', 'product', 'prod_old'))))))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_new_sub', 'object', 'event', 'type', 'customer.subscription.created',
         'api_version', '2025-03-31.basil', 'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_new', 'object', 'subscription', 'customer', 'cus_new', 'status', 'active',
            'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(
               jsonb_build_object('id', 'si_new1', 'object', 'subscription_item', 'quantity', 1,
                                  'current_period_start', 1700000000, 'current_period_end', 1702592000,
                                  'price', jsonb_build_object('id', 'price_new', 'object', 'price', 'product', 'prod_new')),
               jsonb_build_object('id', 'si_new2', 'object', 'subscription_item', 'quantity', 1,
                                  'current_period_start', 1700500000, 'current_period_end', 1703092000,
                                  'price', jsonb_build_object('id', 'price_new2', 'object', 'price',
                                                              'product', jsonb_build_object('id', 'prod_new2', 'object', 'product')))))))));
SELECT id, customer, current_period_start, current_period_end FROM subscriptions WHERE id IN ('sub_old', 'sub_new') ORDER BY id;
SELECT id, subscription, price, product, quantity, current_period_start, current_period_end
  FROM subscription_items WHERE subscription IN ('sub_old', 'sub_new') ORDER BY id;
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_old_inv', 'object', 'event', 'type', 'invoice.paid',
         'api_version', '2020-08-27', 'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'in_old', 'object', 'invoice',
            'customer', 'cus_old', 'subscription', 'sub_old', 'status', 'paid', 'amount_paid', 1999, 'currency', 'usd'))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_new_inv', 'object', 'event', 'type', 'invoice.paid',
         'api_version', '2025-03-31.basil', 'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'in_new', 'object', 'invoice',
            'customer', 'cus_new', 'subscription', NULL, 'status', 'paid', 'amount_paid', 2999, 'currency', 'eur',
            'parent', jsonb_build_object('type', 'subscription_details',
                        'subscription_details', jsonb_build_object('subscription', 'sub_new'))))));
SELECT id, customer, subscription, status, amount_paid, currency FROM invoices ORDER BY id;
-- a paid invoice is not reopened by a same-second "updated" snapshot
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_new_inv2', 'object', 'event', 'type', 'invoice.updated',
         'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'in_new', 'object', 'invoice', 'status', 'open'))));

-- linking the application's user to customers
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_cs', 'object', 'event', 'type', 'checkout.session.completed',
         'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'cs_1', 'object', 'checkout.session',
            'client_reference_id', 'user_42', 'customer', 'cus_link', 'mode', 'subscription',
            'status', 'complete', 'payment_status', 'paid', 'subscription', 'sub_link'))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_meta_cus', 'object', 'event', 'type', 'customer.created',
         'created', 1700000001, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'cus_meta', 'object', 'customer',
            'metadata', jsonb_build_object('user_id', '7')))));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_meta_sub', 'object', 'event', 'type', 'customer.subscription.created',
         'created', 1700000001, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'sub_meta', 'object', 'subscription',
            'customer', 'cus_sub_meta', 'status', 'active', 'metadata', jsonb_build_object('userId', 'u-9'),
            'items', jsonb_build_object('data', '[]'::jsonb)))));
-- a customer created later keeps the link made by Checkout
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_link_cus', 'object', 'event', 'type', 'customer.created',
         'created', 1700000002, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'cus_link', 'object', 'customer', 'email', 'a@b.c'))));
SELECT id, user_ref, email FROM customers WHERE id IN ('cus_link', 'cus_meta', 'cus_sub_meta') ORDER BY id;
SELECT id, user_ref, customer, status FROM checkout_sessions;
-- explicit links replace; metadata only fills a missing link
SELECT stripe_link_customer('user_99', 'cus_meta');
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_meta_cus2', 'object', 'event', 'type', 'customer.updated',
         'created', 1700000010, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object('id', 'cus_meta', 'object', 'customer',
            'metadata', jsonb_build_object('user_ref', 'someone_else')))));
SELECT id, user_ref FROM customers WHERE id = 'cus_meta';
SELECT stripe_link_customer('', 'cus_meta');
SELECT stripe_link_customer('user_1', NULL);
CREATE ROLE regress_sb_app;
SET ROLE regress_sb_app;
SELECT stripe_billing.stripe_link_customer('user_1', 'cus_meta');
SELECT count(*) FROM stripe_billing.customers;
RESET ROLE;
DROP ROLE regress_sb_app;

-- Stripe Entitlements: a summary replaces the customer's set; a list cut
-- short is kept as far as it goes and marked for a re-fetch
CREATE FUNCTION pg_temp.summary_event(evt text, created bigint, keys text[], has_more boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', evt, 'object', 'event', 'type', 'entitlements.active_entitlement_summary.updated',
           'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
              'object', 'entitlements.active_entitlement_summary', 'customer', 'cus_ent', 'livemode', false,
              'entitlements', jsonb_build_object('object', 'list', 'has_more', has_more, 'data',
                 coalesce((SELECT jsonb_agg(jsonb_build_object('id', 'ent_' || k, 'object', 'entitlements.active_entitlement',
                                                               'feature', 'feat_' || k, 'lookup_key', k) ORDER BY k)
                             FROM unnest(keys) k), '[]'::jsonb)))))
$$;
SELECT stripe_apply_event(pg_temp.summary_event('evt_e1', 1700000100, '{reports,export}'));
SELECT stripe_apply_event(pg_temp.summary_event('evt_e2', 1700000200, '{reports,sso}', true));
SELECT stripe_apply_event(pg_temp.summary_event('evt_e0', 1700000050, '{}'));
SELECT customer, feature_id, lookup_key FROM active_entitlements ORDER BY lookup_key;
SELECT customer, refetch, last_event_id FROM entitlement_summaries;

-- everything runs in the caller's transaction: a rollback leaves no trace
BEGIN;
SELECT stripe_apply_event(pg_temp.sub_event('evt_rb', 1700009999, 'active', '{"id": "sub_rb"}'));
SELECT count(*) FROM subscriptions WHERE id = 'sub_rb';
ROLLBACK;
SELECT (SELECT count(*) FROM subscriptions WHERE id = 'sub_rb') AS rows,
       (SELECT count(*) FROM events WHERE id = 'evt_rb') AS ledger;

SELECT outcome, count(*) FROM events GROUP BY outcome ORDER BY outcome;
DROP VIEW pg_temp.sub;
DROP EXTENSION stripe_billing;
