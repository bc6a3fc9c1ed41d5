-- What an open dispute does to its customer's features:
-- stripe_billing.dispute_access = 'keep' (the default) changes nothing;
-- 'revoke' takes away every feature the disputed customer gives (its
-- subscriptions' and its Stripe Entitlements), until the dispute closes,
-- and none that another customer of the same user gives.  Open: the
-- formal disputes and their appeals, not inquiries (warning_*).
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
SELECT stripe_grant_feature('price', 'price_pro', 'reports');

CREATE FUNCTION pg_temp.ev(id text, type text, created bigint, object jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                            'livemode', false, 'data', jsonb_build_object('object', object))
$$;
CREATE FUNCTION pg_temp.sub(id text, customer text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'subscription', 'customer', customer, 'status', 'active',
                            'items', jsonb_build_object('has_more', false, 'data', jsonb_build_array(
                              jsonb_build_object('id', 'si_' || id, 'quantity', 1,
                                                 'current_period_start', 1760000000, 'current_period_end', 4102444800,
                                                 'price', jsonb_build_object('id', 'price_pro')))))
$$;
CREATE FUNCTION pg_temp.dispute(id text, charge jsonb, status text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'dispute', 'charge', charge, 'amount', 2000, 'currency', 'usd',
                            'status', status, 'reason', 'fraudulent', 'created', 1760000100)
$$;

-- user_a pays through two customers (cus_a1, cus_a2), each subscribed to
-- price_pro; cus_a1 also has a Stripe Entitlements feature, "export".
SELECT stripe_apply_event(pg_temp.ev('evt_c1', 'customer.created', 1760000001,
         '{"id": "cus_a1", "object": "customer", "metadata": {"user_ref": "user_a"}}')),
       stripe_apply_event(pg_temp.ev('evt_c2', 'customer.created', 1760000002,
         '{"id": "cus_a2", "object": "customer", "metadata": {"user_ref": "user_a"}}')),
       stripe_apply_event(pg_temp.ev('evt_s1', 'customer.subscription.created', 1760000003, pg_temp.sub('sub_a1', 'cus_a1'))),
       stripe_apply_event(pg_temp.ev('evt_e1', 'entitlements.active_entitlement_summary.updated', 1760000004,
         '{"object": "entitlements.active_entitlement_summary", "customer": "cus_a1",
           "entitlements": {"has_more": false, "data": [{"id": "ent_1", "feature": "feat_export", "lookup_key": "export"}]}}')),
       stripe_apply_event(pg_temp.ev('evt_ch1', 'charge.succeeded', 1760000005,
         '{"id": "ch_a1", "object": "charge", "customer": "cus_a1", "amount": 2000, "currency": "usd", "status": "succeeded"}'));
SELECT feature FROM stripe_user_features('user_a');

-- keep (the default): an open dispute changes nothing
SHOW stripe_billing.dispute_access;
SELECT stripe_apply_event(pg_temp.ev('evt_d1', 'charge.dispute.created', 1760000100,
         pg_temp.dispute('dp_a1', '"ch_a1"', 'needs_response')));
SELECT id, charge, customer, status FROM disputes;
SELECT feature FROM stripe_user_features('user_a');

-- revoke: after stripe_refresh_entitlements (as for any setting the
-- derivation reads), cus_a1's features are gone: both its subscription's
-- (reports) and its Stripe Entitlements' (export); cus_a2 has none yet
SET stripe_billing.dispute_access = 'revoke';
SELECT stripe_refresh_entitlements();
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_has_entitlement('user_a', 'reports') AS reports, stripe_has_entitlement('user_a', 'export') AS export;
-- another customer of the same user still gives its features
SELECT stripe_apply_event(pg_temp.ev('evt_s2', 'customer.subscription.created', 1760000006, pg_temp.sub('sub_a2', 'cus_a2')));
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_apply_event(pg_temp.ev('evt_s2x', 'customer.subscription.deleted', 1760000007,
         pg_temp.sub('sub_a2', 'cus_a2') || '{"status": "canceled"}'));
SELECT feature FROM stripe_user_features('user_a');

-- under review: still open; won (closed): the features come back
SELECT stripe_apply_event(pg_temp.ev('evt_d2', 'charge.dispute.updated', 1760000200,
         pg_temp.dispute('dp_a1', '"ch_a1"', 'under_review')));
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_apply_event(pg_temp.ev('evt_d3', 'charge.dispute.closed', 1760000300,
         pg_temp.dispute('dp_a1', '"ch_a1"', 'won')));
SELECT feature FROM stripe_user_features('user_a');
-- won is terminal: a late under_review snapshot is stale
SELECT stripe_apply_event(pg_temp.ev('evt_d4', 'charge.dispute.updated', 1760000400,
         pg_temp.dispute('dp_a1', '"ch_a1"', 'under_review')));
SELECT feature FROM stripe_user_features('user_a');

-- an inquiry (warning_needs_response) is no dispute yet: nothing revoked;
-- a lost dispute is closed: nothing revoked; its appeal (2026-10-28.endive)
-- is open again
SELECT stripe_apply_event(pg_temp.ev('evt_d5', 'charge.dispute.created', 1760000500,
         pg_temp.dispute('dp_a2', '"ch_a1"', 'warning_needs_response')));
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_apply_event(pg_temp.ev('evt_d6', 'charge.dispute.updated', 1760000600,
         pg_temp.dispute('dp_a2', '"ch_a1"', 'lost')));
SELECT feature FROM stripe_user_features('user_a');
SELECT stripe_apply_event(pg_temp.ev('evt_d7', 'charge.dispute.updated', 1760000700,
         pg_temp.dispute('dp_a2', '"ch_a1"', 'appeal_under_review')));
SELECT feature FROM stripe_user_features('user_a');
-- lost is not terminal (an appeal follows it): a later lost applies
SELECT stripe_apply_event(pg_temp.ev('evt_d8', 'charge.dispute.closed', 1760000800,
         pg_temp.dispute('dp_a2', '"ch_a1"', 'lost')));
SELECT feature FROM stripe_user_features('user_a');

-- a dispute whose charge is expanded names the customer itself (the
-- backfill lists disputes so): no charge row needed
SELECT stripe_apply_event(pg_temp.ev('evt_c3', 'customer.created', 1760001001,
         '{"id": "cus_b", "object": "customer", "metadata": {"user_ref": "user_b"}}')),
       stripe_apply_event(pg_temp.ev('evt_s3', 'customer.subscription.created', 1760001002, pg_temp.sub('sub_b', 'cus_b'))),
       stripe_apply_event(pg_temp.ev('evt_d9', 'charge.dispute.created', 1760001003,
         pg_temp.dispute('dp_b', '{"id": "ch_b", "object": "charge", "customer": "cus_b", "amount": 2000}', 'needs_response')));
SELECT id, charge, customer, status FROM disputes WHERE id = 'dp_b';
SELECT feature FROM stripe_user_features('user_b');

-- a dispute applied before its charge: its customer is unknown until the
-- charge arrives, which then revokes
SELECT stripe_apply_event(pg_temp.ev('evt_c4', 'customer.created', 1760002001,
         '{"id": "cus_c", "object": "customer", "metadata": {"user_ref": "user_c"}}')),
       stripe_apply_event(pg_temp.ev('evt_s4', 'customer.subscription.created', 1760002002, pg_temp.sub('sub_c', 'cus_c'))),
       stripe_apply_event(pg_temp.ev('evt_d10', 'charge.dispute.created', 1760002004,
         pg_temp.dispute('dp_c', '"ch_c"', 'needs_response')));
SELECT id, charge, customer, status FROM disputes WHERE id = 'dp_c';
SELECT feature FROM stripe_user_features('user_c');
SELECT stripe_apply_event(pg_temp.ev('evt_ch2', 'charge.succeeded', 1760002003,
         '{"id": "ch_c", "object": "charge", "customer": "cus_c", "amount": 2000, "currency": "usd", "status": "succeeded"}'));
SELECT id, charge, customer, status FROM disputes WHERE id = 'dp_c';
SELECT feature FROM stripe_user_features('user_c');

-- back to keep: every user's features again after the refresh
SET stripe_billing.dispute_access = 'keep';
SELECT stripe_refresh_entitlements();
SELECT user_ref, feature FROM user_features ORDER BY 1, 2;
-- and a dispute changes nothing then
SELECT stripe_apply_event(pg_temp.ev('evt_d11', 'charge.dispute.updated', 1760002100,
         pg_temp.dispute('dp_c', '"ch_c"', 'under_review')));
SELECT feature FROM stripe_user_features('user_c');

\set VERBOSITY terse
-- the setting takes keep and revoke only, and only from a superuser
SET stripe_billing.dispute_access = 'suspend';
CREATE ROLE sb_dispute_app;
SET ROLE sb_dispute_app;
SET stripe_billing.dispute_access = 'revoke';
RESET ROLE;
DROP ROLE sb_dispute_app;

DROP EXTENSION stripe_billing;
