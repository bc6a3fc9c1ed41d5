-- A downgrade at the period end as its events arrive, in any delivery
-- order: a subscription on price_pro is given a schedule (made from it,
-- then a phase of price_basic x 2 from the period end), its collection is
-- paused, the period ends (the schedule enters the phase, the subscription
-- moves to price_basic, collection resumes), and the schedule releases it.
-- Every permutation of the six events after the first, with random
-- duplicate deliveries, must end in the state of in-order delivery: the
-- schedule (a released one stays released), its phases, the subscription,
-- its items and pause, the user's features and stripe_user_subscriptions.
CREATE EXTENSION stripe_billing;
SELECT stripe_billing.stripe_grant_feature('price', 'price_pro', 'advanced');
SELECT stripe_billing.stripe_grant_feature('price', 'price_basic', 'basic');

-- An event around an object.
CREATE FUNCTION pg_temp.evt(id text, type text, created bigint, obj jsonb) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'api_version', '2025-03-31.basil', 'created', created,
                            'livemode', false, 'type', type, 'data', jsonb_build_object('object', obj))
$$;

-- sub_dg (basil shape), one item on price (si_pro for price_pro, si_basic
-- for price_basic), linked to user_dg by its metadata.  Periods: January
-- 2026 (1767225600 .. 1769904000), February (.. 1772323200).
CREATE FUNCTION pg_temp.sub(price text, quantity int, period_start bigint, period_end bigint,
                            schedule text, pause jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', 'sub_dg', 'object', 'subscription', 'customer', 'cus_dg', 'status', 'active',
    'cancel_at_period_end', false, 'created', 1767225600, 'metadata', '{"user_ref": "user_dg"}'::jsonb,
    'pause_collection', pause, 'schedule', schedule,
    'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(jsonb_build_object(
      'id', CASE price WHEN 'price_pro' THEN 'si_pro' ELSE 'si_basic' END, 'object', 'subscription_item',
      'quantity', quantity, 'current_period_start', period_start, 'current_period_end', period_end,
      'price', jsonb_build_object('id', price, 'object', 'price', 'product', 'prod_' || price,
                                  'lookup_key', NULL)))))
$$;

-- sub_sched_dg: status, current phase (start, end), phases as
-- [[start, end, price, quantity], ...].
CREATE FUNCTION pg_temp.sched(status text, current_start bigint, current_end bigint, phases jsonb)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', 'sub_sched_dg', 'object', 'subscription_schedule', 'customer', 'cus_dg',
    'subscription', CASE WHEN status = 'released' THEN NULL ELSE 'sub_dg' END,
    'released_subscription', CASE WHEN status = 'released' THEN 'sub_dg' END,
    'released_at', CASE WHEN status = 'released' THEN 1772323200 END,
    'status', status, 'end_behavior', 'release', 'created', 1768000000, 'metadata', '{}'::jsonb,
    'current_phase', CASE WHEN current_start IS NOT NULL
                          THEN jsonb_build_object('start_date', current_start, 'end_date', current_end) END,
    'phases', (SELECT jsonb_agg(jsonb_build_object(
                 'start_date', p->0, 'end_date', p->1, 'proration_behavior', 'none', 'trial_end', NULL,
                 'items', jsonb_build_array(jsonb_build_object('price', p->2, 'quantity', p->3, 'plan', p->2)))
                 ORDER BY n)
                 FROM jsonb_array_elements(phases) WITH ORDINALITY e(p, n)))
$$;

CREATE TEMP TABLE stream (pos int PRIMARY KEY, ev jsonb);
INSERT INTO stream VALUES
(1, pg_temp.evt('evt_dg_1', 'customer.subscription.created', 1767225600,
                pg_temp.sub('price_pro', 1, 1767225600, 1769904000, NULL))),
(2, pg_temp.evt('evt_dg_2', 'subscription_schedule.created', 1768000000,
                pg_temp.sched('active', 1767225600, 1769904000, '[[1767225600, 1769904000, "price_pro", 1]]'))),
(3, pg_temp.evt('evt_dg_3', 'subscription_schedule.updated', 1768000001,
                pg_temp.sched('active', 1767225600, 1769904000,
                              '[[1767225600, 1769904000, "price_pro", 1], [1769904000, 1772323200, "price_basic", 2]]'))),
(4, pg_temp.evt('evt_dg_4', 'customer.subscription.updated', 1768500000,
                pg_temp.sub('price_pro', 1, 1767225600, 1769904000, 'sub_sched_dg',
                            '{"behavior": "void", "resumes_at": 1769904000}'))),
(5, pg_temp.evt('evt_dg_5', 'subscription_schedule.updated', 1769904000,
                pg_temp.sched('active', 1769904000, 1772323200,
                              '[[1767225600, 1769904000, "price_pro", 1], [1769904000, 1772323200, "price_basic", 2]]'))),
(6, pg_temp.evt('evt_dg_6', 'customer.subscription.updated', 1769904001,
                pg_temp.sub('price_basic', 2, 1769904000, 1772323200, 'sub_sched_dg'))),
(7, pg_temp.evt('evt_dg_7', 'subscription_schedule.released', 1772323200,
                pg_temp.sched('released', NULL, NULL,
                              '[[1767225600, 1769904000, "price_pro", 1], [1769904000, 1772323200, "price_basic", 2]]')));

-- The state: the rows of the tables involved (but updated_at) and what the
-- user sees, as one md5; and the same, readable, for in-order delivery.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
  SELECT concat_ws(E'\n',
    (SELECT string_agg((to_jsonb(t) - 'updated_at' - 'raw' - 'last_event_id' - 'last_event_created' - 'refetch')::text,
                       E'\n' ORDER BY t.id) FROM stripe_billing.subscription_schedules t),
    (SELECT string_agg(to_jsonb(t)::text, E'\n' ORDER BY t.start_date, t.price)
       FROM stripe_billing.subscription_schedule_phases t),
    (SELECT string_agg(jsonb_build_object('id', t.id, 'status', t.status, 'pause_behavior', t.pause_behavior,
                                          'pause_resumes_at', t.pause_resumes_at,
                                          'period_end', t.current_period_end)::text, E'\n' ORDER BY t.id)
       FROM stripe_billing.subscriptions t),
    (SELECT string_agg(jsonb_build_object('id', t.id, 'price', t.price, 'quantity', t.quantity,
                                          'deleted', t.deleted)::text, E'\n' ORDER BY t.id)
       FROM stripe_billing.subscription_items t),
    (SELECT string_agg(feature || ' until ' || valid_until, ', ' ORDER BY feature)
       FROM stripe_billing.user_features WHERE user_ref = 'user_dg'),
    (SELECT string_agg(to_jsonb(u)::text, E'\n') FROM stripe_billing.stripe_user_subscriptions('user_dg') u))
$$;

-- Applies the events in order (with_dups: after each, the same again with
-- probability 0.3, an earlier one with 0.2) and returns the end state's
-- fingerprint, then rolls its work back (the block raises SSLC0).
CREATE FUNCTION pg_temp.deliver(events jsonb[], with_dups boolean,
  OUT fingerprint text, OUT stale int, OUT failed int, OUT duplicates int, OUT redeliveries int)
LANGUAGE plpgsql AS $$
DECLARE
  outcome text;
BEGIN
  stale := 0; failed := 0; duplicates := 0; redeliveries := 0;
  BEGIN
    FOR i IN 1 .. cardinality(events) LOOP
      outcome := stripe_billing.stripe_apply_event(events[i]);
      stale := stale + (outcome = 'stale')::int;
      failed := failed + (outcome NOT IN ('applied', 'stale'))::int;
      IF with_dups AND random() < 0.3 THEN
        redeliveries := redeliveries + 1;
        duplicates := duplicates + (stripe_billing.stripe_apply_event(events[i]) = 'duplicate')::int;
      END IF;
      IF with_dups AND i > 1 AND random() < 0.2 THEN
        redeliveries := redeliveries + 1;
        duplicates := duplicates
                      + (stripe_billing.stripe_apply_event(events[1 + floor(random() * (i - 1))::int]) = 'duplicate')::int;
      END IF;
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = 'SSLC0', MESSAGE = md5(pg_temp.state());
  EXCEPTION WHEN SQLSTATE 'SSLC0' THEN
    fingerprint := SQLERRM;
  END;
END
$$;

-- in order: every event applies; the state, readable
BEGIN;
SELECT pos, ev->>'type' AS type, stripe_billing.stripe_apply_event(ev) AS outcome FROM stream ORDER BY pos;
SELECT pg_temp.state();
-- (the schedule released: nothing is pending; basic is granted)
SELECT subscription, status, price, quantity, collection_paused, pending_price, pending_at, schedule
  FROM stripe_billing.stripe_user_subscriptions('user_dg');
ROLLBACK;

-- the state while the change is pending (after the first four events)
BEGIN;
SELECT stripe_billing.stripe_apply_event(ev) FROM stream WHERE pos <= 4 ORDER BY pos;
SELECT subscription, status, price, quantity, collection_paused, collection_resumes_at, pending_price,
       pending_quantity, pending_at, schedule
  FROM stripe_billing.stripe_user_subscriptions('user_dg');
SELECT feature FROM stripe_billing.user_features WHERE user_ref = 'user_dg' ORDER BY feature;
ROLLBACK;

CREATE TEMP TABLE in_order AS
SELECT * FROM pg_temp.deliver(ARRAY(SELECT ev FROM stream ORDER BY pos), false);
SELECT stale, failed FROM in_order;

-- the fingerprint sees a missing event
SELECT (pg_temp.deliver(ARRAY(SELECT ev FROM stream WHERE pos <> 7 ORDER BY pos), false)).fingerprint
       <> (SELECT fingerprint FROM in_order) AS without_release_differs,
       (pg_temp.deliver(ARRAY(SELECT ev FROM stream WHERE pos <> 6 ORDER BY pos), false)).fingerprint
       <> (SELECT fingerprint FROM in_order) AS without_renewal_differs;

-- every order of events 2 .. 7 after the subscription's creation, with
-- random duplicates
CREATE TEMP TABLE perms AS
WITH RECURSIVE p(perm) AS (
  SELECT ARRAY[]::int[]
  UNION ALL
  SELECT p.perm || i FROM p, generate_series(2, 7) i WHERE cardinality(p.perm) < 6 AND i <> ALL (p.perm)
)
SELECT row_number() OVER (ORDER BY perm) AS n, perm FROM p WHERE cardinality(perm) = 6;

SELECT setseed(0.27);
CREATE TEMP TABLE results AS
SELECT p.n, d.*
  FROM perms p,
       LATERAL pg_temp.deliver(ARRAY[(SELECT ev FROM stream WHERE pos = 1)]
                               || ARRAY(SELECT s.ev FROM unnest(p.perm) WITH ORDINALITY u(pos, o)
                                          JOIN stream s USING (pos) ORDER BY u.o), true) d;

SELECT count(*) AS orders, sum(redeliveries) > 0 AS duplicates_delivered,
       bool_and(duplicates = redeliveries) AS redeliveries_all_duplicate,
       count(*) FILTER (WHERE stale > 0) AS orders_with_stale, sum(failed) AS failed,
       count(*) FILTER (WHERE fingerprint = (SELECT fingerprint FROM in_order)) AS orders_matching_in_order
  FROM results;

-- (empty unless an order differs: the first few, to debug)
SELECT r.n, p.perm FROM results r JOIN perms p USING (n)
 WHERE r.fingerprint <> (SELECT fingerprint FROM in_order) ORDER BY r.n LIMIT 5;

DROP EXTENSION stripe_billing;
