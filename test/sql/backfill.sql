-- The backfill's and reconciliation's SQL surface (their requests are
-- tested against the fake Stripe by test/integration/backfill.sh)
CREATE EXTENSION stripe_billing;
\set VERBOSITY terse

-- kinds are checked before any request, naming the argument
CALL stripe_billing.stripe_backfill(ARRAY['customer']);
CALL stripe_billing.stripe_backfill(ARRAY['customers', NULL]);
CALL stripe_billing.stripe_backfill(ARRAY[]::text[]);
SELECT count(*) FROM stripe_billing.backfill_status;

-- it commits page by page: not inside a transaction block
BEGIN;
CALL stripe_billing.stripe_backfill(ARRAY['products']);
ROLLBACK;

-- without a key, a kind fails (recorded, the call raises at the end)
CALL stripe_billing.stripe_backfill(ARRAY['products']);
SELECT kind, state, pages, last_error IS NOT NULL AS has_error FROM stripe_billing.backfill_status;
-- and a second call resumes it (failed -> pending, then failed again)
CALL stripe_billing.stripe_backfill(ARRAY['products']);
SELECT kind, state FROM stripe_billing.backfill_status;

-- one reconciliation at a time; without a key it fails and says so
CALL stripe_billing.stripe_reconcile();
SELECT reason, state, phase, checked, last_error IS NOT NULL AS has_error FROM stripe_billing.reconcile_status;
SELECT stripe_billing._reconcile_begin('manual') = stripe_billing._reconcile_begin('manual') AS same_run;
SELECT count(*) FROM stripe_billing.reconcile_runs WHERE state = 'running';

-- app roles may not run them, nor write their tables
CREATE ROLE sb_backfill_app;
SET ROLE sb_backfill_app;
CALL stripe_billing.stripe_backfill();
CALL stripe_billing.stripe_reconcile();
DELETE FROM stripe_billing.reconcile_log;
UPDATE stripe_billing.backfill_state SET state = 'done';
RESET ROLE;
DROP ROLE sb_backfill_app;

-- a list page's elements, split without decoding their strings
SELECT has_more, cardinality(items), items[1], items[2]
  FROM stripe_billing._split_list_page('{"object": "list", "data": [{"id": "evt_2", "o": {"n": "a\u0000b", "x": [1, {"y": 2}]}}, {"id": "evt_1"}], "has_more": true, "url": "/v1/events"}');
SELECT has_more, cardinality(items) FROM stripe_billing._split_list_page('{"data": [], "has_more": false}');
SELECT has_more, items FROM stripe_billing._split_list_page('{"has_more": false, "other": {"data": [1]}, "data": [{"k": 1e999999}]}');
SELECT * FROM stripe_billing._split_list_page('{"data": [1, 2]}');
SELECT * FROM stripe_billing._split_list_page('{"data": [{"id": "x"}');
SELECT * FROM stripe_billing._split_list_page('[{"id": "x"}]');

-- snapshots: objects of the list's time through the event mapping
SELECT stripe_billing._apply_snapshots('[{"id": "prod_snap", "object": "product", "name": "Snap", "active": true}]',
                                       '2026-01-01 00:00:00+00', 'backfill')->>'applied' AS applied;
-- an older snapshot is stale, and a failing object does not stop the others
SELECT stripe_billing._apply_snapshots('[{"id": "prod_snap", "object": "product", "name": "Old", "active": true},
                                         {"id": "prod_bad", "object": "product", "active": "yes"},
                                         {"id": "prod_snap2", "object": "product", "name": "Two", "active": false}]',
                                       '2025-12-31 00:00:00+00', 'backfill') - 'outcomes' AS counts;
SELECT id, name, last_event_id FROM stripe_billing.products WHERE id LIKE 'prod_snap%' ORDER BY id;
-- a batch derives its users' features at its end, once per user
SELECT stripe_billing.stripe_grant_feature('price', 'price_snap', 'snap_feature');
SELECT stripe_billing._apply_snapshots(
  '[{"id": "cus_snap", "object": "customer", "metadata": {"user_ref": "user_snap"}},
    {"id": "sub_snap", "object": "subscription", "customer": "cus_snap", "status": "active",
     "current_period_start": 1767225600, "current_period_end": 4102444800, "metadata": {},
     "items": {"object": "list", "has_more": false,
               "data": [{"id": "si_snap", "object": "subscription_item", "quantity": 1,
                         "price": {"id": "price_snap", "object": "price", "product": "prod_snap"}}]}}]',
  '2026-01-01 00:00:00+00', 'backfill')->>'applied' AS applied;
SELECT * FROM stripe_billing.stripe_user_features('user_snap');
SELECT derivations FROM stripe_billing.user_derivations WHERE user_ref = 'user_snap';
-- derive => false leaves it to the caller
SELECT stripe_billing._apply_snapshots(
  '[{"id": "cus_snap2", "object": "customer", "metadata": {"user_ref": "user_snap2"}},
    {"id": "sub_snap2", "object": "subscription", "customer": "cus_snap2", "status": "active",
     "current_period_start": 1767225600, "current_period_end": 4102444800, "metadata": {},
     "items": {"object": "list", "has_more": false,
               "data": [{"id": "si_snap2", "object": "subscription_item", "quantity": 1,
                         "price": {"id": "price_snap", "object": "price", "product": "prod_snap"}}]}}]',
  '2026-01-01 00:00:00+00', 'backfill', derive => false)->>'applied' AS applied;
SELECT count(*) FROM stripe_billing.stripe_user_features('user_snap2');
SELECT stripe_billing._refresh_customers_features(ARRAY['cus_snap2'], 'test');
SELECT * FROM stripe_billing.stripe_user_features('user_snap2');
-- a batch whose last object fails leaves no deferral behind: the next
-- event derives at once
SELECT stripe_billing._apply_snapshots('[{"id": "prod_bad", "object": "product", "active": "yes"}]',
                                       '2026-01-01 00:00:00+00', 'backfill') - 'outcomes' AS counts;
SELECT derivations FROM stripe_billing.user_derivations WHERE user_ref = 'user_snap';
SELECT stripe_billing.stripe_apply_event(
  '{"id": "evt_snap4", "object": "event", "livemode": false, "type": "customer.subscription.deleted", "created": 1767398400,
    "data": {"object": {"id": "sub_snap", "object": "subscription", "customer": "cus_snap", "status": "canceled",
     "current_period_start": 1767225600, "current_period_end": 4102444800, "metadata": {},
     "items": {"object": "list", "has_more": false,
               "data": [{"id": "si_snap", "object": "subscription_item", "quantity": 1,
                         "price": {"id": "price_snap", "object": "price", "product": "prod_snap"}}]}}}}');
SELECT count(*) AS features_left FROM stripe_billing.stripe_user_features('user_snap');
SELECT derivations FROM stripe_billing.user_derivations WHERE user_ref = 'user_snap';
-- an object of the other mode than the database's is refused (SBE02),
-- reported, and the others applied: livemode guards every path, not only
-- events
SELECT stripe_billing._apply_snapshots('[{"id": "prod_live", "object": "product", "name": "Live", "active": true, "livemode": true},
                                         {"id": "prod_test", "object": "product", "name": "Test", "active": true, "livemode": false}]',
                                       '2026-01-02 00:00:00+00', 'backfill') - 'outcomes' AS counts;
SELECT id FROM stripe_billing.products WHERE id IN ('prod_live', 'prod_test') ORDER BY id;
SELECT stripe_billing._apply_snapshots('{}', now(), 'backfill');
SELECT stripe_billing._apply_snapshots('[]', now(), 'Backfill!');
DROP EXTENSION stripe_billing;
