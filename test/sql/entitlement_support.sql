-- stripe_has_entitlement's planner support: a call that asks the same
-- question for every row of a query that reads a table becomes an InitPlan
-- (answered once per query), with the answers a per-row call gives; a call
-- whose arguments vary by row, or may (volatile), stays a call per row.
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('lookup_key', 'pro', 'reports');
SELECT stripe_billing.stripe_apply_event(jsonb_build_object(
         'id', 'evt_paid', 'object', 'event', 'type', 'customer.subscription.created',
         'created', 1700000000, 'livemode', false,
         'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_paid', 'object', 'subscription', 'customer', 'cus_paid', 'status', 'active',
            'metadata', jsonb_build_object('user_ref', 'paid'),
            'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
               'id', 'si_paid', 'quantity', 1,
               'current_period_start', 1700000000, 'current_period_end', 4102444800,
               'price', jsonb_build_object('id', 'price_pro', 'lookup_key', 'pro', 'product', 'prod_pro'))))))));
CREATE TABLE docs (id int, owner text);
INSERT INTO docs SELECT g, CASE WHEN g % 2 = 0 THEN 'paid' ELSE 'free' END FROM generate_series(1, 100) g;

-- 'InitPlan' when the plan evaluates the check once, else 'per row'
CREATE FUNCTION pg_temp.plan_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  line text;
  initplan boolean := false;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
    initplan := initplan OR line LIKE '%InitPlan%';
  END LOOP;
  RETURN CASE WHEN initplan THEN 'InitPlan' ELSE 'per row' END;
END
$$;

SET app.user_ref = 'paid';
SELECT q, pg_temp.plan_of(q) AS plan
  FROM unnest(ARRAY[
    $q$SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement('paid', 'reports')$q$,
    $q$SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')$q$,
    $q$SELECT count(*) FILTER (WHERE stripe_billing.stripe_has_entitlement(current_setting('app.user_ref'), 'reports')) FROM docs$q$,
    $q$SELECT count(*) FROM docs, stripe_billing.stripe_has_entitlement('paid', 'reports') e WHERE e$q$,
    $q$SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement(owner, 'reports')$q$,
    $q$SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement(CASE WHEN random() < 2 THEN 'paid' END, 'reports')$q$,
    $q$SELECT count(*) FROM docs d WHERE EXISTS (SELECT FROM docs e WHERE e.id = d.id + 1 AND stripe_billing.stripe_has_entitlement(d.owner, 'reports'))$q$
  ]) q;
-- the same answers as a call per row would give
SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement('paid', 'reports');
SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement('free', 'reports');
SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports');
SELECT count(*) FILTER (WHERE stripe_billing.stripe_has_entitlement(current_setting('app.user_ref'), 'reports')) FROM docs;
SELECT count(*) FROM docs, stripe_billing.stripe_has_entitlement('paid', 'reports') e WHERE e;
SELECT stripe_billing.stripe_has_entitlement('paid', 'reports') AS granted, count(*) FROM docs GROUP BY 1;
SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement(owner, 'reports');
SELECT count(*) FROM docs d WHERE EXISTS (SELECT FROM docs e WHERE e.id = d.id + 1 AND stripe_billing.stripe_has_entitlement(d.owner, 'reports'));
-- a query without a table calls it as written
SELECT stripe_billing.stripe_has_entitlement('paid', 'reports'), pg_temp.plan_of($q$SELECT stripe_billing.stripe_has_entitlement('paid', 'reports')$q$);

-- a generic plan: the parameter is the query's, so one InitPlan serves
-- each execution with its own value
SET plan_cache_mode = force_generic_plan;
PREPARE docs_of(text) AS SELECT count(*) FROM docs WHERE stripe_billing.stripe_has_entitlement($1, 'reports');
EXECUTE docs_of('paid');
EXECUTE docs_of('free');
SELECT pg_temp.plan_of($q$EXECUTE docs_of('paid')$q$);
DEALLOCATE docs_of;
RESET plan_cache_mode;

-- a policy, as an application role: the documented bare form
CREATE ROLE regress_sb_support_app;
GRANT SELECT ON docs TO regress_sb_support_app;
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY docs_paid ON docs FOR SELECT
  USING (owner = current_setting('app.user_ref', true)
         AND stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports'));
SET ROLE regress_sb_support_app;
SELECT pg_temp.plan_of('SELECT count(*) FROM docs');
SELECT count(*) FROM docs;
SET app.user_ref = 'free';
SELECT count(*) FROM docs;
RESET ROLE;

DROP TABLE docs;
DROP ROLE regress_sb_support_app;
DROP EXTENSION stripe_billing;
