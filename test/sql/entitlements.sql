-- Entitlements: which users have which features, when, and from where.
-- A truth table over every status x time (before the period end, inside the
-- past_due grace, inside the access slack, after both) x cancel_at_period_end
-- x mapping source, with the clock set by stripe_billing.test_clock.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
SET stripe_billing.past_due_grace = '6h';
SET stripe_billing.access_slack = '1d';

-- the feature mapping: one grant per kind of source
SELECT stripe_grant_feature('price', 'price_grant', 'reports');
SELECT stripe_grant_feature('lookup_key', 'pro_key', 'reports');
SELECT stripe_grant_feature('product', 'prod_grant', 'reports');
SELECT stripe_grant_feature('product', 'prod_grant', 'reports');  -- again: no-op
SELECT * FROM feature_grants ORDER BY source_type;

-- One user per (status, cancel_at_period_end, source), each with one
-- subscription whose only item matches that source alone.  Period end:
-- 2025-07-01 00:00 UTC (1751328000).
CREATE TEMP TABLE cases AS
SELECT row_number() OVER () AS n, status, cape, source
  FROM unnest(ARRAY['active', 'trialing', 'past_due', 'canceled', 'unpaid', 'incomplete',
                    'incomplete_expired', 'paused']) WITH ORDINALITY AS s(status, so),
       unnest(ARRAY[false, true]) AS c(cape),
       unnest(ARRAY['price', 'lookup_key', 'product']) WITH ORDINALITY AS src(source, ro)
 ORDER BY so, cape, ro;

SELECT count(*) AS cases,
       count(*) FILTER (WHERE stripe_apply_event(jsonb_build_object(
         'id', 'evt_case_' || n, 'object', 'event', 'type', 'customer.subscription.updated',
         'api_version', '2025-03-31.basil', 'created', 1750000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_case_' || n, 'object', 'subscription', 'customer', 'cus_case_' || n,
            'status', status, 'cancel_at_period_end', cape,
            'metadata', jsonb_build_object('user_ref', 'user_' || n),
            'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(
              jsonb_build_object('id', 'si_case_' || n, 'quantity', 1,
                'current_period_start', 1748736000, 'current_period_end', 1751328000,
                'price', jsonb_build_object(
                   'id', CASE source WHEN 'price' THEN 'price_grant' ELSE 'price_case_' || n END,
                   'lookup_key', CASE source WHEN 'lookup_key' THEN 'pro_key' END,
                   'product', CASE source WHEN 'product' THEN 'prod_grant' ELSE 'prod_none' END))))))))
         = 'applied') AS applied
  FROM cases;

-- The rule, written out independently of the implementation: active and
-- trialing until period end + slack (the period end itself when cancelling
-- at period end); past_due until period end + grace; nothing otherwise.
CREATE FUNCTION pg_temp.expected(status text, cape boolean, at timestamptz) RETURNS boolean
LANGUAGE sql AS $$
  SELECT CASE
    WHEN status IN ('active', 'trialing') AND cape THEN at < '2025-07-01 00:00+00'
    WHEN status IN ('active', 'trialing') THEN at < '2025-07-02 00:00+00'
    WHEN status = 'past_due' AND cape THEN at < '2025-07-01 00:00+00'
    WHEN status = 'past_due' THEN at < '2025-07-01 06:00+00'
    ELSE false END
$$;

CREATE FUNCTION pg_temp.check_at(at timestamptz) RETURNS TABLE (n bigint, has boolean) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('stripe_billing.test_clock', at::text, true);
  RETURN QUERY SELECT c.n, stripe_billing.stripe_has_entitlement('user_' || c.n, 'reports') FROM cases c;
END $$;

BEGIN;
CREATE TEMP TABLE verdicts AS
SELECT p.phase, p.at, c.status, c.cape, c.source, v.has, pg_temp.expected(c.status, c.cape, p.at) AS expected
  FROM (VALUES ('1 before period end', '2025-06-30 00:00+00'::timestamptz),
               ('2 inside grace', '2025-07-01 03:00+00'),
               ('3 inside slack only', '2025-07-01 12:00+00'),
               ('4 after slack', '2025-07-02 06:00+00')) AS p(phase, at)
  CROSS JOIN LATERAL pg_temp.check_at(p.at) v
  JOIN cases c USING (n);
COMMIT;

SELECT status, cape AS cancel_at_period_end, source,
       string_agg(CASE WHEN has THEN 'Y' ELSE '-' END, ' ' ORDER BY phase) AS "before grace slack after"
  FROM verdicts GROUP BY status, cape, source
 ORDER BY min(phase), array_position(ARRAY['active', 'trialing', 'past_due', 'canceled', 'unpaid',
          'incomplete', 'incomplete_expired', 'paused'], status), cape, source;
SELECT count(*) AS checks, count(*) FILTER (WHERE has) AS granted,
       count(*) FILTER (WHERE has IS DISTINCT FROM expected) AS wrong
  FROM verdicts;

-- what a user sees of their features, and the status of their subscription
SET stripe_billing.test_clock = '2025-06-30 00:00+00';
SELECT * FROM stripe_user_features('user_1');
SELECT * FROM stripe_user_features('user_4');   -- active, cancel at period end
SELECT * FROM stripe_user_features('user_7');   -- trialing
SELECT * FROM stripe_user_features('user_13');  -- past_due
SELECT * FROM stripe_user_features('user_19');  -- canceled: nothing
SELECT n, stripe_subscription_status('user_' || n) FROM cases WHERE n IN (1, 7, 13, 19, 44);
SELECT stripe_subscription_status('nobody');

-- Stripe Entitlements grant by lookup key, whatever the subscriptions say
SELECT stripe_link_customer('user_ent', 'cus_ent');
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_ent_1', 'object', 'event',
         'type', 'entitlements.active_entitlement_summary.updated', 'created', 1750000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'object', 'entitlements.active_entitlement_summary', 'customer', 'cus_ent',
            'entitlements', jsonb_build_object('has_more', false, 'data', jsonb_build_array(
               jsonb_build_object('id', 'ent_1', 'feature', 'feat_sso', 'lookup_key', 'sso'),
               jsonb_build_object('id', 'ent_2', 'feature', 'feat_reports', 'lookup_key', 'reports')))))));
SET stripe_billing.test_clock = '2099-01-01 00:00+00';
SELECT stripe_has_entitlement('user_ent', 'sso') AS sso, stripe_has_entitlement('user_ent', 'reports') AS reports,
       stripe_has_entitlement('user_ent', 'billing') AS billing;
SELECT * FROM stripe_user_features('user_ent');
-- a newer summary replaces the set
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_ent_2', 'object', 'event',
         'type', 'entitlements.active_entitlement_summary.updated', 'created', 1750000100, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'object', 'entitlements.active_entitlement_summary', 'customer', 'cus_ent',
            'entitlements', jsonb_build_object('has_more', false, 'data', jsonb_build_array(
               jsonb_build_object('id', 'ent_1', 'feature', 'feat_sso', 'lookup_key', 'sso')))))));
SELECT stripe_has_entitlement('user_ent', 'sso') AS sso, stripe_has_entitlement('user_ent', 'reports') AS reports;
RESET stripe_billing.test_clock;

-- a change made earlier in the same transaction is seen at once, and a
-- rollback takes it back
SET stripe_billing.test_clock = '2025-06-30 00:00+00';
BEGIN;
SELECT stripe_has_entitlement('user_1', 'reports') AS before_cancel;
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_cancel_1', 'object', 'event',
         'type', 'customer.subscription.deleted', 'created', 1750000500, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_case_1', 'object', 'subscription', 'customer', 'cus_case_1', 'status', 'canceled',
            'items', jsonb_build_object('data', '[]'::jsonb)))));
SELECT stripe_has_entitlement('user_1', 'reports') AS after_cancel;
ROLLBACK;
SELECT stripe_has_entitlement('user_1', 'reports') AS after_rollback;

-- revoking a grant takes the feature away; granting it back returns it
SELECT stripe_revoke_feature('price', 'price_grant', 'reports');
SELECT stripe_has_entitlement('user_1', 'reports') AS price_user, stripe_has_entitlement('user_2', 'reports') AS lookup_user;
SELECT stripe_revoke_feature('price', 'price_grant', 'reports');
SELECT stripe_grant_feature('price', 'price_grant', 'reports');
SELECT stripe_has_entitlement('user_1', 'reports') AS price_user;
-- moving a customer to another user moves the features
SELECT stripe_link_customer('user_moved', 'cus_case_1');
SELECT stripe_has_entitlement('user_1', 'reports') AS old_user, stripe_has_entitlement('user_moved', 'reports') AS new_user;
SELECT stripe_link_customer('user_1', 'cus_case_1');

-- bad input: false, never an error (inside a policy an error fails the query)
SELECT stripe_has_entitlement(NULL, 'reports') AS null_user, stripe_has_entitlement('user_1', NULL) AS null_feature,
       stripe_has_entitlement('', 'reports') AS empty_user, stripe_has_entitlement('user_1', '') AS empty_feature,
       stripe_has_entitlement(repeat('u', 1000), 'reports') AS long_user,
       stripe_has_entitlement(E'user_1\x1freports', 'x') AS separator_in_user;
SELECT stripe_grant_feature('sku', 'x', 'reports');
SELECT stripe_grant_feature('price', '', 'reports');
SELECT stripe_grant_feature('price', 'p', NULL);

-- an application role with no rights on the billing tables can check, list
-- and see status, but not change grants
CREATE ROLE regress_sb_app;
SET ROLE regress_sb_app;
SELECT stripe_billing.stripe_has_entitlement('user_1', 'reports') AS has,
       stripe_billing.stripe_subscription_status('user_1') AS status;
SELECT * FROM stripe_billing.stripe_user_features('user_1');
SELECT count(*) FROM stripe_billing.user_features;
SELECT stripe_billing.stripe_grant_feature('price', 'price_x', 'reports');
SET stripe_billing.test_clock = '2030-01-01';
RESET ROLE;
DROP ROLE regress_sb_app;
RESET stripe_billing.test_clock;

-- the functions' properties, as RLS needs them
SELECT proname, provolatile, proparallel, prosecdef FROM pg_proc
 WHERE pronamespace = 'stripe_billing'::regnamespace
   AND proname IN ('stripe_has_entitlement', 'stripe_user_features', 'stripe_subscription_status', 'stripe_now')
 ORDER BY proname;

DROP EXTENSION stripe_billing;
