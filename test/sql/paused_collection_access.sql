-- What a pause grants: a subscription whose collection is paused
-- (pause_collection, status still active or trialing) keeps its features
-- by default (Stripe's use: the service goes on unpaid), and none with
-- stripe_billing.paused_collection_access = 'revoke'; status paused (a
-- trial that ended without a payment method) grants nothing either way.
-- The typed columns follow pause_collection, and a resumed collection
-- grants again.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
SELECT stripe_grant_feature('price', 'price_p', 'reports');
SET stripe_billing.test_clock = '2026-01-15 00:00:00+00';

-- one subscription per user, each status x pause
CREATE FUNCTION pg_temp.sub_event(n int, status text, pause jsonb, created bigint) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', 'evt_pa_' || n || '_' || created, 'object', 'event',
           'type', 'customer.subscription.updated', 'created', created, 'livemode', false,
           'data', jsonb_build_object('object', jsonb_build_object(
             'id', 'sub_pa_' || n, 'object', 'subscription', 'customer', 'cus_pa_' || n, 'status', status,
             'pause_collection', pause, 'metadata', jsonb_build_object('user_ref', 'user_pa_' || n),
             'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
               'id', 'si_pa_' || n, 'quantity', 1, 'current_period_start', 1767225600,
               'current_period_end', 1769904000, 'price', jsonb_build_object('id', 'price_p')))))))
$$;
CREATE TEMP TABLE cases AS
SELECT row_number() OVER (ORDER BY s.o, p.o)::int AS n, s.status, p.pause
  FROM (VALUES (1, 'active'), (2, 'trialing'), (3, 'past_due'), (4, 'paused')) s(o, status),
       (VALUES (1, NULL::jsonb), (2, '{"behavior": "void", "resumes_at": null}'),
               (3, '{"behavior": "mark_uncollectible", "resumes_at": 1769000000}')) p(o, pause);
SELECT count(*) FILTER (WHERE stripe_apply_event(pg_temp.sub_event(n, status, pause, 1768000000)) = 'applied')
       AS applied
  FROM cases;

-- the typed columns
SELECT c.n, s.status, s.pause_behavior, s.pause_resumes_at
  FROM cases c JOIN subscriptions s ON s.id = 'sub_pa_' || c.n ORDER BY c.n;

-- keep (the default), then revoke, then keep again: who has reports
CREATE FUNCTION pg_temp.access() RETURNS TABLE (n int, status text, behavior text, has_reports boolean)
LANGUAGE sql AS $$
  SELECT c.n, c.status, c.pause->>'behavior', stripe_has_entitlement('user_pa_' || c.n, 'reports')
    FROM cases c ORDER BY c.n
$$;
SHOW stripe_billing.paused_collection_access;
SELECT * FROM pg_temp.access();
SET stripe_billing.paused_collection_access = 'revoke';
SELECT stripe_refresh_entitlements();
SELECT * FROM pg_temp.access();
SET stripe_billing.paused_collection_access = 'keep';
SELECT stripe_refresh_entitlements();
SELECT n, has_reports FROM pg_temp.access() WHERE behavior IS NOT NULL ORDER BY n;

-- with revoke: the event that resumes collection grants at once, the one
-- that pauses again takes it, in the transaction that applies them
SET stripe_billing.paused_collection_access = 'revoke';
SELECT stripe_refresh_entitlements();
SELECT stripe_apply_event(pg_temp.sub_event(2, 'active', NULL, 1768000100));
SELECT pause_behavior IS NULL AS collecting, stripe_has_entitlement('user_pa_2', 'reports') AS has_reports
  FROM subscriptions WHERE id = 'sub_pa_2';
SELECT stripe_apply_event(pg_temp.sub_event(2, 'active', '{"behavior": "keep_as_draft"}', 1768000200));
SELECT pause_behavior, pause_resumes_at, stripe_has_entitlement('user_pa_2', 'reports') AS has_reports
  FROM subscriptions WHERE id = 'sub_pa_2';

-- only keep and revoke are values
SET stripe_billing.paused_collection_access = 'sometimes';

DROP EXTENSION stripe_billing;
