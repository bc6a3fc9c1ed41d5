-- Stripe Connect: a connected account's events carry their account, every
-- row they write names it, ids an account chooses are keyed by account,
-- grants apply to their account's subscriptions only, and a user's
-- features combine every account's subscriptions.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
\set VERBOSITY terse

-- an event of account acct (NULL: the platform's)
CREATE FUNCTION pg_temp.ev(id text, type text, created bigint, object jsonb, acct text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                           'livemode', false, 'account', acct, 'data', jsonb_build_object('object', object)))
$$;
-- a subscription of customer cus with one item of product prod (price price_<prod>)
CREATE FUNCTION pg_temp.sub(id text, cus text, prod text, status text DEFAULT 'active') RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'subscription', 'customer', cus, 'status', status,
    'metadata', '{}'::jsonb,
    'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(
      jsonb_build_object('id', 'si_' || id, 'quantity', 1, 'current_period_start', 1700000000,
                         'current_period_end', 4102444800,
                         'price', jsonb_build_object('id', 'price_' || prod, 'product', prod)))))
$$;

-- Two connected accounts each have a product "basic" (an id they chose)
-- and so has the platform: three products, one per account.
SELECT stripe_apply_event(pg_temp.ev('evt_c1', 'product.created', 1700000001,
         '{"id": "basic", "object": "product", "name": "A basic", "active": true}', 'acct_A'));
SELECT stripe_apply_event(pg_temp.ev('evt_c2', 'product.created', 1700000002,
         '{"id": "basic", "object": "product", "name": "B basic", "active": true}', 'acct_B'));
SELECT stripe_apply_event(pg_temp.ev('evt_c3', 'product.created', 1700000003,
         '{"id": "basic", "object": "product", "name": "Platform basic", "active": true}'));
SELECT id, account, name FROM products ORDER BY account NULLS FIRST;
-- an update of A's basic touches A's only
SELECT stripe_apply_event(pg_temp.ev('evt_c4', 'product.updated', 1700000004,
         '{"id": "basic", "object": "product", "name": "A basic v2", "active": true}', 'acct_A'));
SELECT id, account, name FROM products ORDER BY account NULLS FIRST;
-- the ledger names the account; accounts seen are noted
SELECT id, account FROM events ORDER BY id;
SELECT id, business_name FROM accounts ORDER BY id;

-- Grants per account: a grant by product id "basic" of acct_A grants
-- nothing to acct_B's "basic" subscribers.
SELECT stripe_grant_feature('product', 'basic', 'a_reports', account => 'acct_A');
SELECT stripe_grant_feature('product', 'basic', 'platform_reports');
SELECT source_type, source, feature, account FROM feature_grants ORDER BY feature;
SELECT stripe_link_customer('user_a', 'cus_a1');     -- subscribed on acct_A
SELECT stripe_link_customer('user_b', 'cus_b1');     -- subscribed on acct_B
SELECT stripe_apply_event(pg_temp.ev('evt_s1', 'customer.subscription.created', 1700000010,
         pg_temp.sub('sub_a1', 'cus_a1', 'basic'), 'acct_A'));
SELECT stripe_apply_event(pg_temp.ev('evt_s2', 'customer.subscription.created', 1700000011,
         pg_temp.sub('sub_b1', 'cus_b1', 'basic'), 'acct_B'));
SELECT id, account FROM subscriptions ORDER BY id;
SELECT id, account, product FROM subscription_items ORDER BY id;
SELECT user_ref, feature FROM user_features ORDER BY 1, 2;

-- A user subscribed on two accounts, and on the platform, has the features
-- of all three.
SELECT stripe_grant_feature('product', 'basic', 'b_reports', account => 'acct_B');
SELECT stripe_link_customer('user_a', 'cus_a2');     -- user_a on acct_B too
SELECT stripe_link_customer('user_a', 'cus_a3');     -- and on the platform
SELECT stripe_apply_event(pg_temp.ev('evt_s3', 'customer.subscription.created', 1700000012,
         pg_temp.sub('sub_a2', 'cus_a2', 'basic'), 'acct_B'));
SELECT stripe_apply_event(pg_temp.ev('evt_s4', 'customer.subscription.created', 1700000013,
         pg_temp.sub('sub_a3', 'cus_a3', 'basic')));
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_has_entitlement('user_a', 'b_reports') AS a_b, stripe_has_entitlement('user_b', 'a_reports') AS b_a,
       stripe_has_entitlement('user_b', 'b_reports') AS b_b;
-- revoking acct_B's grant leaves acct_A's and the platform's
SELECT stripe_revoke_feature('product', 'basic', 'b_reports', account => 'acct_B');
SELECT stripe_revoke_feature('product', 'basic', 'b_reports');     -- (the platform has no such grant)
SELECT user_ref, feature FROM user_features ORDER BY 1, 2;

-- The account's own events: account.updated fills its row; the
-- application's deauthorization marks it (kept), a later authorization
-- clears it, an older deauthorization arriving late changes nothing.
SELECT stripe_apply_event(pg_temp.ev('evt_a1', 'account.updated', 1700000020,
         '{"id": "acct_A", "object": "account", "business_profile": {"name": "Shop A"}, "country": "FR",
           "default_currency": "eur", "charges_enabled": true, "payouts_enabled": false,
           "details_submitted": true, "requirements": {"currently_due": ["external_account"]},
           "type": "express", "created": 1690000000}', 'acct_A'));
SELECT id, business_name, country, default_currency, charges_enabled, payouts_enabled, details_submitted,
       requirements_due, type, created FROM accounts WHERE id = 'acct_A';
SELECT stripe_apply_event(pg_temp.ev('evt_a2', 'account.application.deauthorized', 1700000030,
         '{"id": "ca_platform", "object": "application", "name": "Platform"}', 'acct_A'));
SELECT id, deauthorized_at IS NOT NULL AS deauthorized FROM accounts WHERE id = 'acct_A';
SELECT stripe_apply_event(pg_temp.ev('evt_a3', 'account.application.authorized', 1700000040,
         '{"id": "ca_platform", "object": "application", "name": "Platform"}', 'acct_A'));
SELECT stripe_apply_event(pg_temp.ev('evt_a4', 'account.application.deauthorized', 1700000035,
         '{"id": "ca_platform", "object": "application", "name": "Platform"}', 'acct_A'));
SELECT id, deauthorized_at IS NOT NULL AS deauthorized FROM accounts WHERE id = 'acct_A';
-- an application event without an account fails (recorded, with why)
SELECT stripe_apply_event(pg_temp.ev('evt_a5', 'account.application.deauthorized', 1700000050,
         '{"id": "ca_platform", "object": "application"}'));
SELECT outcome, error FROM events WHERE id = 'evt_a5';

-- A malformed account is refused before anything is recorded.
SELECT stripe_apply_event(pg_temp.ev('evt_bad1', 'product.created', 1700000060,
         '{"id": "p", "object": "product"}', 'acct_A; drop'));
SELECT stripe_apply_event(jsonb_set(pg_temp.ev('evt_bad2', 'product.created', 1700000060,
         '{"id": "p", "object": "product"}'), '{account}', '42'));
SELECT count(*) FROM events WHERE id LIKE 'evt_bad%';
-- and so is a grant's
SELECT stripe_grant_feature('product', 'basic', 'x', account => 'acct_');
SELECT stripe_grant_feature('product', 'basic', 'x', account => 'cus_123');

-- The listed snapshots of an account (a backfill of it) name it too.
SELECT _apply_snapshots('[{"id": "basic", "object": "product", "name": "A basic listed", "active": true}]',
                        '2030-01-01', 'backfill', account => 'acct_A') - 'outcomes' AS counts;
SELECT id, account, name FROM products ORDER BY account NULLS FIRST;
SELECT _apply_snapshots('[]', now(), 'backfill', account => 'nope');

-- Where a connected account's polling starts: its own sync_state row (the
-- platform's untouched); a bad account refused, naming it.
SELECT stripe_sync_start_from('now', account => 'acct_A');
SELECT stripe_sync_start_from((now() - interval '1 day')::text, account => 'acct_A');
SELECT stripe_sync_start_from('now', account => 'acct_A; drop');
SELECT coalesce(account, 'platform') AS account, start_from = 'now' AS from_now, event_cursor
  FROM sync_state ORDER BY account NULLS FIRST;
DROP EXTENSION stripe_billing;
