-- Lifecycle streams in any delivery order: a subscription (checkout, trial,
-- paid, failed payment, past_due, paid again, cancel at period end, deleted)
-- and a one-time payment (checkout, payment intent, charge, refund), built
-- from the fixtures with new ids and times.  Each stream is delivered in
-- every permutation of 6 of its events, with random duplicate deliveries,
-- and the final state must equal the state of in-order delivery.
CREATE EXTENSION stripe_billing;

--------------------------------------------------------------------------
-- Building the events (shapes of the supabase-stripe-sync-engine event
-- fixtures and the stripe-openapi objects, cut down)
--------------------------------------------------------------------------

-- An event around an object; previous_attributes only for *.updated.
CREATE FUNCTION pg_temp.evt(id text, type text, created bigint, api_version text, obj jsonb,
                            previous jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
           'id', id, 'object', 'event', 'api_version', api_version, 'created', created,
           'livemode', false, 'pending_webhooks', 1,
           'request', jsonb_build_object('id', NULL, 'idempotency_key', NULL),
           'type', type,
           'data', jsonb_build_object('object', obj)
                   || CASE WHEN previous IS NULL THEN '{}'::jsonb
                           ELSE jsonb_build_object('previous_attributes', previous) END)
$$;

-- sub_life (2025-03-31.basil shape: period bounds on the items), one item
-- si_life on price_pro ('pro', prod_pro) throughout.
CREATE FUNCTION pg_temp.life_sub(status text, period_start bigint, period_end bigint,
                                 latest_invoice text, extra jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', 'sub_life', 'object', 'subscription',
    'billing_cycle_anchor', 1749945602, 'cancel_at', NULL, 'cancel_at_period_end', false,
    'canceled_at', NULL, 'cancellation_details', jsonb_build_object('comment', NULL, 'feedback', NULL, 'reason', NULL),
    'collection_method', 'charge_automatically', 'created', 1748736002, 'currency', 'usd',
    'customer', 'cus_life', 'default_payment_method', 'pm_life', 'ended_at', NULL,
    'latest_invoice', latest_invoice, 'livemode', false, 'metadata', '{}'::jsonb,
    'pause_collection', NULL, 'start_date', 1748736002, 'status', status,
    'trial_start', 1748736002, 'trial_end', 1749945602,
    'items', jsonb_build_object(
      'object', 'list', 'has_more', false, 'total_count', 1,
      'url', '/v1/subscription_items?subscription=sub_life',
      'data', jsonb_build_array(jsonb_build_object(
        'id', 'si_life', 'object', 'subscription_item', 'created', 1748736002,
        'current_period_start', period_start, 'current_period_end', period_end,
        'discounts', '[]'::jsonb, 'metadata', '{}'::jsonb, 'quantity', 1,
        'subscription', 'sub_life', 'tax_rates', '[]'::jsonb,
        'price', jsonb_build_object(
          'id', 'price_pro', 'object', 'price', 'active', true, 'billing_scheme', 'per_unit',
          'created', 1748000000, 'currency', 'usd', 'livemode', false, 'lookup_key', 'pro',
          'metadata', '{}'::jsonb, 'nickname', 'Pro monthly', 'product', 'prod_pro',
          'recurring', jsonb_build_object('interval', 'month', 'interval_count', 1,
                                          'meter', NULL, 'usage_type', 'licensed',
                                          'trial_period_days', 14),
          'tax_behavior', 'unspecified', 'type', 'recurring',
          'unit_amount', 2000, 'unit_amount_decimal', '2000'))))) || extra
$$;

-- An invoice of sub_life (basil shape: parent.subscription_details).
CREATE FUNCTION pg_temp.life_invoice(id text, created bigint, billing_reason text, status text,
                                     amount_due bigint, amount_paid bigint, attempt_count int,
                                     next_payment_attempt bigint, period_start bigint, period_end bigint)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', id, 'object', 'invoice', 'account_country', 'US', 'account_name', 'Regress Inc.',
    'amount_due', amount_due, 'amount_paid', amount_paid, 'amount_remaining', amount_due - amount_paid,
    'attempt_count', attempt_count, 'attempted', attempt_count > 0, 'auto_advance', status = 'open',
    'billing_reason', billing_reason, 'collection_method', 'charge_automatically',
    'created', created, 'currency', 'usd', 'customer', 'cus_life',
    'customer_email', 'ada@example.com', 'hosted_invoice_url', 'https://invoice.stripe.com/i/acct_regress/test_' || id,
    'invoice_pdf', 'https://pay.stripe.com/invoice/acct_regress/test_' || id || '/pdf',
    'livemode', false, 'metadata', '{}'::jsonb, 'next_payment_attempt', next_payment_attempt,
    'number', upper(id), 'parent', jsonb_build_object(
      'type', 'subscription_details', 'quote_details', NULL,
      'subscription_details', jsonb_build_object('metadata', '{}'::jsonb, 'subscription', 'sub_life')),
    'period_start', period_start, 'period_end', period_end, 'status', status,
    'subtotal', amount_due, 'total', amount_due)
$$;

CREATE TEMP TABLE stream (stream text, pos int, ev jsonb, PRIMARY KEY (stream, pos));

-- The subscription stream, in true order (2025-06-01 .. 2025-07-15 UTC).
-- Events on the same object have distinct seconds; 3/4 and 8/9 share one.
INSERT INTO stream VALUES
('subscription', 1, pg_temp.evt('evt_life_01', 'checkout.session.completed', 1748736000, '2025-03-31.basil',
  jsonb_build_object(
    'id', 'cs_test_life', 'object', 'checkout.session', 'amount_subtotal', 0, 'amount_total', 0,
    'client_reference_id', 'user_42', 'created', 1748735700, 'currency', 'usd',
    'customer', 'cus_life', 'customer_creation', 'always', 'customer_email', NULL,
    'customer_details', jsonb_build_object('email', 'ada@example.com', 'name', 'Ada Lovelace'),
    'expires_at', 1748822100, 'invoice', 'in_life_trial', 'livemode', false, 'metadata', '{}'::jsonb,
    'mode', 'subscription', 'payment_intent', NULL, 'payment_status', 'no_payment_required',
    'status', 'complete', 'subscription', 'sub_life', 'success_url', 'https://example.com/welcome',
    'url', NULL))),
('subscription', 2, pg_temp.evt('evt_life_02', 'customer.created', 1748736001, '2025-03-31.basil',
  jsonb_build_object(
    'id', 'cus_life', 'object', 'customer', 'balance', 0, 'created', 1748736001, 'currency', NULL,
    'delinquent', false, 'description', NULL, 'email', 'ada@example.com',
    'invoice_prefix', 'LIFE0001', 'livemode', false, 'metadata', '{}'::jsonb,
    'name', 'Ada Lovelace', 'phone', NULL, 'preferred_locales', '["en"]'::jsonb, 'tax_exempt', 'none'))),
('subscription', 3, pg_temp.evt('evt_life_03', 'customer.subscription.created', 1748736002, '2025-03-31.basil',
  pg_temp.life_sub('trialing', 1748736002, 1749945602, 'in_life_trial'))),
('subscription', 4, pg_temp.evt('evt_life_04', 'invoice.paid', 1748736002, '2025-03-31.basil',
  pg_temp.life_invoice('in_life_trial', 1748736002, 'subscription_create', 'paid', 0, 0, 0, NULL,
                       1748736002, 1748736002))),
('subscription', 5, pg_temp.evt('evt_life_05', 'customer.subscription.updated', 1749945602, '2025-03-31.basil',
  pg_temp.life_sub('active', 1749945602, 1752537602, 'in_life_cycle'),
  '{"status": "trialing", "latest_invoice": "in_life_trial"}')),
('subscription', 6, pg_temp.evt('evt_life_06', 'invoice.payment_failed', 1749949202, '2025-03-31.basil',
  pg_temp.life_invoice('in_life_cycle', 1749945602, 'subscription_cycle', 'open', 2000, 0, 1, 1750208402,
                       1748736002, 1749945602))),
('subscription', 7, pg_temp.evt('evt_life_07', 'customer.subscription.updated', 1749949203, '2025-03-31.basil',
  pg_temp.life_sub('past_due', 1749945602, 1752537602, 'in_life_cycle'),
  '{"status": "active"}')),
('subscription', 8, pg_temp.evt('evt_life_08', 'invoice.paid', 1750208402, '2025-03-31.basil',
  pg_temp.life_invoice('in_life_cycle', 1749945602, 'subscription_cycle', 'paid', 2000, 2000, 2, NULL,
                       1748736002, 1749945602))),
('subscription', 9, pg_temp.evt('evt_life_09', 'customer.subscription.updated', 1750208402, '2025-03-31.basil',
  pg_temp.life_sub('active', 1749945602, 1752537602, 'in_life_cycle'),
  '{"status": "past_due"}')),
('subscription', 10, pg_temp.evt('evt_life_10', 'customer.subscription.updated', 1751000000, '2025-03-31.basil',
  pg_temp.life_sub('active', 1749945602, 1752537602, 'in_life_cycle',
    '{"cancel_at_period_end": true, "cancel_at": 1752537602, "canceled_at": 1751000000,
      "cancellation_details": {"comment": null, "feedback": "too_expensive", "reason": "cancellation_requested"}}'),
  '{"cancel_at_period_end": false, "cancel_at": null, "canceled_at": null}')),
('subscription', 11, pg_temp.evt('evt_life_11', 'customer.subscription.deleted', 1752537602, '2025-03-31.basil',
  pg_temp.life_sub('canceled', 1749945602, 1752537602, 'in_life_cycle',
    '{"cancel_at_period_end": true, "cancel_at": 1752537602, "canceled_at": 1751000000,
      "ended_at": 1752537602,
      "cancellation_details": {"comment": null, "feedback": "too_expensive", "reason": "cancellation_requested"}}')));

-- The one-time payment stream (old shape, api_version 2020-08-27), in true
-- order; 4/5 share a second.
INSERT INTO stream VALUES
('one-time', 1, pg_temp.evt('evt_once_1', 'checkout.session.completed', 1749200000, '2020-08-27',
  jsonb_build_object(
    'id', 'cs_test_once', 'object', 'checkout.session', 'allow_promotion_codes', NULL,
    'amount_subtotal', 4900, 'amount_total', 4900, 'cancel_url', 'https://example.com/cancel',
    'client_reference_id', 'user_7', 'created', 1749199900, 'currency', 'usd',
    'customer', 'cus_once', 'customer_email', NULL,
    'customer_details', jsonb_build_object('email', 'grace@example.com', 'name', 'Grace Hopper',
                                           'tax_exempt', 'none', 'tax_ids', '[]'::jsonb),
    'expires_at', 1749286300, 'livemode', false, 'metadata', '{}'::jsonb, 'mode', 'payment',
    'payment_intent', 'pi_once', 'payment_method_types', '["card"]'::jsonb, 'payment_status', 'paid',
    'setup_intent', NULL, 'status', 'complete', 'submit_type', 'pay', 'subscription', NULL,
    'success_url', 'https://example.com/thanks', 'url', NULL))),
('one-time', 2, pg_temp.evt('evt_once_2', 'customer.created', 1749200001, '2020-08-27',
  jsonb_build_object(
    'id', 'cus_once', 'object', 'customer', 'address', NULL, 'balance', 0, 'created', 1749200001,
    'currency', NULL, 'default_source', NULL, 'delinquent', false, 'description', NULL,
    'email', 'grace@example.com', 'invoice_prefix', 'ONCE0001', 'livemode', false,
    'metadata', '{}'::jsonb, 'name', 'Grace Hopper', 'phone', NULL, 'tax_exempt', 'none'))),
('one-time', 3, pg_temp.evt('evt_once_3', 'payment_intent.created', 1749200002, '2020-08-27',
  jsonb_build_object(
    'id', 'pi_once', 'object', 'payment_intent', 'amount', 4900, 'amount_capturable', 0,
    'amount_received', 0, 'canceled_at', NULL, 'capture_method', 'automatic',
    'charges', jsonb_build_object('object', 'list', 'data', '[]'::jsonb, 'has_more', false,
                                  'total_count', 0, 'url', '/v1/charges?payment_intent=pi_once'),
    'client_secret', 'pi_once_secret_regress', 'confirmation_method', 'automatic',
    'created', 1749200002, 'currency', 'usd', 'customer', 'cus_once', 'description', NULL,
    'invoice', NULL, 'last_payment_error', NULL, 'livemode', false, 'metadata', '{}'::jsonb,
    'payment_method', NULL, 'payment_method_types', '["card"]'::jsonb,
    'status', 'requires_payment_method'))),
('one-time', 4, pg_temp.evt('evt_once_4', 'payment_intent.succeeded', 1749200010, '2020-08-27',
  jsonb_build_object(
    'id', 'pi_once', 'object', 'payment_intent', 'amount', 4900, 'amount_capturable', 0,
    'amount_received', 4900, 'canceled_at', NULL, 'capture_method', 'automatic',
    'charges', jsonb_build_object('object', 'list', 'has_more', false, 'total_count', 1,
                                  'url', '/v1/charges?payment_intent=pi_once',
                                  'data', '[{"id": "ch_once", "object": "charge", "amount": 4900, "status": "succeeded"}]'::jsonb),
    'client_secret', 'pi_once_secret_regress', 'confirmation_method', 'automatic',
    'created', 1749200002, 'currency', 'usd', 'customer', 'cus_once', 'description', NULL,
    'invoice', NULL, 'last_payment_error', NULL, 'livemode', false, 'metadata', '{}'::jsonb,
    'payment_method', 'pm_once', 'payment_method_types', '["card"]'::jsonb,
    'status', 'succeeded'))),
('one-time', 5, pg_temp.evt('evt_once_5', 'charge.succeeded', 1749200010, '2020-08-27',
  jsonb_build_object(
    'id', 'ch_once', 'object', 'charge', 'amount', 4900, 'amount_captured', 4900, 'amount_refunded', 0,
    'balance_transaction', 'txn_once', 'captured', true, 'created', 1749200010, 'currency', 'usd',
    'customer', 'cus_once', 'description', NULL, 'failure_code', NULL, 'failure_message', NULL,
    'invoice', NULL, 'livemode', false, 'metadata', '{}'::jsonb, 'paid', true,
    'payment_intent', 'pi_once', 'payment_method', 'pm_once', 'refunded', false,
    'refunds', jsonb_build_object('object', 'list', 'data', '[]'::jsonb, 'has_more', false,
                                  'total_count', 0, 'url', '/v1/charges/ch_once/refunds'),
    'status', 'succeeded'))),
('one-time', 6, pg_temp.evt('evt_once_6', 'charge.refunded', 1749300000, '2020-08-27',
  jsonb_build_object(
    'id', 'ch_once', 'object', 'charge', 'amount', 4900, 'amount_captured', 4900, 'amount_refunded', 1500,
    'balance_transaction', 'txn_once', 'captured', true, 'created', 1749200010, 'currency', 'usd',
    'customer', 'cus_once', 'description', NULL, 'failure_code', NULL, 'failure_message', NULL,
    'invoice', NULL, 'livemode', false, 'metadata', '{}'::jsonb, 'paid', true,
    'payment_intent', 'pi_once', 'payment_method', 'pm_once', 'refunded', false,
    'refunds', jsonb_build_object('object', 'list', 'has_more', false, 'total_count', 1,
                                  'url', '/v1/charges/ch_once/refunds',
                                  'data', jsonb_build_array(jsonb_build_object(
                                    'id', 're_once', 'object', 'refund', 'amount', 1500,
                                    'balance_transaction', 'txn_re_once', 'charge', 'ch_once',
                                    'created', 1749300000, 'currency', 'usd', 'metadata', '{}'::jsonb,
                                    'payment_intent', 'pi_once', 'reason', 'requested_by_customer',
                                    'status', 'succeeded'))),
    'status', 'succeeded'),
  '{"amount_refunded": 0}'));

SELECT stream, count(*) AS events, count(DISTINCT ev->>'id') AS ids,
       bool_and((ev->>'created')::bigint >= coalesce(prev, 0)) AS true_order
  FROM (SELECT stream, ev, lag((ev->>'created')::bigint) OVER (PARTITION BY stream ORDER BY pos) AS prev
          FROM stream) s
 GROUP BY stream ORDER BY stream;

-- the streams use both API shapes
SELECT stream, ev->>'api_version' AS api_version, count(*) AS events
  FROM stream GROUP BY 1, 2 ORDER BY 1, 2;

--------------------------------------------------------------------------
-- Delivering an order from a clean slate
--------------------------------------------------------------------------

-- Every billing row (but updated_at) by primary key, and the ledger (but
-- outcome, error and received_at: an event may be 'stale' in one order and
-- 'applied' in another), as one md5.
CREATE FUNCTION pg_temp.state_fingerprint() RETURNS text LANGUAGE sql AS $$
  SELECT md5(concat_ws(E'\n',
    'customers:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                       FROM stripe_billing.customers t),
    'products:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                      FROM stripe_billing.products t),
    'prices:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                    FROM stripe_billing.prices t),
    'subscriptions:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                           FROM stripe_billing.subscriptions t),
    'subscription_items:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                                FROM stripe_billing.subscription_items t),
    'invoices:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                      FROM stripe_billing.invoices t),
    'payments:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                      FROM stripe_billing.payments t),
    'checkout_sessions:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id)
                               FROM stripe_billing.checkout_sessions t),
    'entitlement_summaries:' || (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.customer)
                                   FROM stripe_billing.entitlement_summaries t),
    'active_entitlements:' || (SELECT string_agg(to_jsonb(t)::text, E'\n' ORDER BY t.customer, t.feature_id)
                                 FROM stripe_billing.active_entitlements t),
    'events:' || (SELECT string_agg((to_jsonb(e) - 'outcome' - 'error' - 'received_at')::text, E'\n' ORDER BY e.id)
                    FROM stripe_billing.events e)))
$$;

CREATE FUNCTION pg_temp.billing_rows() RETURNS bigint LANGUAGE sql AS $$
  SELECT (SELECT count(*) FROM stripe_billing.customers) + (SELECT count(*) FROM stripe_billing.products)
       + (SELECT count(*) FROM stripe_billing.prices) + (SELECT count(*) FROM stripe_billing.subscriptions)
       + (SELECT count(*) FROM stripe_billing.subscription_items) + (SELECT count(*) FROM stripe_billing.invoices)
       + (SELECT count(*) FROM stripe_billing.payments) + (SELECT count(*) FROM stripe_billing.checkout_sessions)
       + (SELECT count(*) FROM stripe_billing.entitlement_summaries)
       + (SELECT count(*) FROM stripe_billing.active_entitlements) + (SELECT count(*) FROM stripe_billing.events)
$$;

-- Applies the events in order (with_dups: after each event, deliver it again
-- with probability 0.3 and an earlier one of the order with probability 0.2)
-- and returns the final state's fingerprint.  The work runs in a block that
-- ends by raising LCFP0 with the fingerprint as its message: catching it
-- rolls the block back, so every order starts from the same clean slate.
CREATE FUNCTION pg_temp.deliver(events jsonb[], with_dups boolean,
  OUT fingerprint text, OUT deliveries int, OUT redeliveries int, OUT duplicate_outcomes int,
  OUT stale_outcomes int, OUT failed_outcomes int, OUT rows_left bigint)
LANGUAGE plpgsql AS $$
DECLARE
  n int := cardinality(events);
  outcome text;
BEGIN
  deliveries := 0; redeliveries := 0; duplicate_outcomes := 0; stale_outcomes := 0; failed_outcomes := 0;
  BEGIN
    FOR i IN 1 .. n LOOP
      outcome := stripe_billing.stripe_apply_event(events[i]);
      deliveries := deliveries + 1;
      stale_outcomes := stale_outcomes + (outcome = 'stale')::int;
      failed_outcomes := failed_outcomes + (outcome NOT IN ('applied', 'stale'))::int;
      IF with_dups THEN
        IF random() < 0.3 THEN
          outcome := stripe_billing.stripe_apply_event(events[i]);
          deliveries := deliveries + 1; redeliveries := redeliveries + 1;
          duplicate_outcomes := duplicate_outcomes + (outcome = 'duplicate')::int;
        END IF;
        IF i > 1 AND random() < 0.2 THEN
          outcome := stripe_billing.stripe_apply_event(events[1 + floor(random() * (i - 1))::int]);
          deliveries := deliveries + 1; redeliveries := redeliveries + 1;
          duplicate_outcomes := duplicate_outcomes + (outcome = 'duplicate')::int;
        END IF;
      END IF;
    END LOOP;
    RAISE EXCEPTION USING ERRCODE = 'LCFP0', MESSAGE = pg_temp.state_fingerprint();
  EXCEPTION WHEN SQLSTATE 'LCFP0' THEN
    fingerprint := SQLERRM;
  END;
  rows_left := pg_temp.billing_rows();
END
$$;

-- The events of a stream at the given positions, in that order.
CREATE FUNCTION pg_temp.events_at(stream_name text, positions int[]) RETURNS jsonb[]
LANGUAGE sql AS $$
  SELECT array_agg(s.ev ORDER BY u.ord)
    FROM unnest(positions) WITH ORDINALITY AS u(pos, ord)
    JOIN stream s ON s.stream = stream_name AND s.pos = u.pos
$$;

CREATE TEMP TABLE in_order AS
SELECT s.stream, d.*
  FROM (SELECT stream, array_agg(pos ORDER BY pos) AS positions FROM stream GROUP BY stream) s,
       LATERAL pg_temp.deliver(pg_temp.events_at(s.stream, s.positions), false) d;

-- in order, every event applies once; the block left nothing behind
SELECT stream, deliveries, stale_outcomes, failed_outcomes, rows_left, pg_temp.billing_rows() AS rows_now
  FROM in_order ORDER BY stream;

-- the fingerprint sees the difference a missing or a changed event makes
SELECT i.stream,
       (pg_temp.deliver(pg_temp.events_at(i.stream, (SELECT array_agg(pos ORDER BY pos) FROM stream s
                                                      WHERE s.stream = i.stream AND pos > 1)), false)).fingerprint
         <> i.fingerprint AS without_first_differs,
       (pg_temp.deliver(pg_temp.events_at(i.stream, (SELECT array_agg(pos ORDER BY pos) FROM stream s
                                                      WHERE s.stream = i.stream
                                                        AND pos < (SELECT max(pos) FROM stream m WHERE m.stream = i.stream))),
                        false)).fingerprint
         <> i.fingerprint AS without_last_differs,
       (pg_temp.deliver((SELECT array_agg(CASE WHEN pos = 1 THEN jsonb_set(ev, '{data,object,client_reference_id}', '"user_0"')
                                              ELSE ev END ORDER BY pos)
                           FROM stream s WHERE s.stream = i.stream), false)).fingerprint
         <> i.fingerprint AS changed_user_ref_differs
  FROM in_order i ORDER BY i.stream;

-- all the events of a stream (11, 6) in reverse order end in the same state
SELECT i.stream, r.deliveries, r.stale_outcomes, r.failed_outcomes,
       r.fingerprint = i.fingerprint AS reversed_matches_in_order
  FROM in_order i,
       LATERAL pg_temp.deliver(pg_temp.events_at(i.stream, (SELECT array_agg(pos ORDER BY pos DESC) FROM stream s
                                                            WHERE s.stream = i.stream)), false) r
 ORDER BY i.stream;

--------------------------------------------------------------------------
-- Every permutation of 6 events, with random duplicates
--------------------------------------------------------------------------

CREATE TEMP TABLE perms AS
WITH RECURSIVE p(perm) AS (
  SELECT ARRAY[]::int[]
  UNION ALL
  SELECT p.perm || i FROM p, generate_series(1, 6) i
   WHERE cardinality(p.perm) < 6 AND i <> ALL (p.perm)
)
SELECT row_number() OVER (ORDER BY perm) AS n, perm FROM p WHERE cardinality(perm) = 6;
SELECT count(*) AS permutations, count(DISTINCT perm) AS distinct_permutations FROM perms;

CREATE TEMP TABLE results (label text, stream text, n bigint, positions int[],
                           fingerprint text, deliveries int, redeliveries int, duplicate_outcomes int,
                           stale_outcomes int, failed_outcomes int, rows_left bigint);

-- Permutes positions first .. first+5 of a stream; the positions before
-- them are delivered before, in order, and those after them after.
CREATE FUNCTION pg_temp.run_case(label text, stream_name text, first int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  p record;
  last_pos int := (SELECT max(pos) FROM stream WHERE stream = stream_name);
  positions int[];
BEGIN
  PERFORM setseed(0.42);
  FOR p IN SELECT n, perm FROM perms ORDER BY n LOOP
    positions := ARRAY(SELECT generate_series(1, first - 1))
              || ARRAY(SELECT first - 1 + x FROM unnest(p.perm) WITH ORDINALITY u(x, o) ORDER BY o)
              || ARRAY(SELECT generate_series(first + 6, last_pos));
    INSERT INTO results
    SELECT label, stream_name, p.n, positions, d.*
      FROM pg_temp.deliver(pg_temp.events_at(stream_name, positions), true) d;
  END LOOP;
END
$$;

SELECT pg_temp.run_case('subscription: first 6 permuted', 'subscription', 1);
SELECT pg_temp.run_case('subscription: last 6 permuted', 'subscription', 6);
SELECT pg_temp.run_case('one-time: all 6 permuted', 'one-time', 1);

-- every order ends in the in-order state
SELECT r.label, count(*) AS orders, count(DISTINCT r.positions) AS distinct_orders,
       sum(r.redeliveries) > 0 AS duplicates_delivered,
       bool_and(r.duplicate_outcomes = r.redeliveries) AS redeliveries_all_duplicate,
       count(*) FILTER (WHERE r.stale_outcomes > 0) AS orders_with_stale,
       sum(r.failed_outcomes) AS failed,
       max(r.rows_left) AS rows_left,
       count(*) FILTER (WHERE r.fingerprint = i.fingerprint) AS orders_matching_in_order
  FROM results r JOIN in_order i USING (stream)
 GROUP BY r.label ORDER BY r.label;

-- (empty unless an order differs: the first few, to debug)
SELECT r.label, r.positions
  FROM results r JOIN in_order i USING (stream)
 WHERE r.fingerprint <> i.fingerprint
 ORDER BY r.label, r.n LIMIT 5;

SELECT pg_temp.billing_rows() AS rows_now;

--------------------------------------------------------------------------
-- The in-order final state, for real
--------------------------------------------------------------------------

-- (one statement per event: a row's order of evaluation is then certain)
CREATE FUNCTION pg_temp.apply_stream(stream_name text)
RETURNS TABLE (pos int, type text, outcome text) LANGUAGE plpgsql AS $$
DECLARE
  s record;
BEGIN
  FOR s IN SELECT * FROM stream WHERE stream = stream_name ORDER BY stream.pos LOOP
    pos := s.pos;
    type := s.ev->>'type';
    outcome := stripe_billing.stripe_apply_event(s.ev);
    RETURN NEXT;
  END LOOP;
END
$$;

SELECT * FROM pg_temp.apply_stream('subscription');
-- what deliver() saw is what a real delivery leaves
SELECT pg_temp.state_fingerprint() = fingerprint AS real_run_matches_in_order
  FROM in_order WHERE stream = 'subscription';
SELECT * FROM pg_temp.apply_stream('one-time');

SELECT id, customer, status, cancel_at_period_end, cancel_at, canceled_at, ended_at,
       current_period_start, current_period_end, trial_start, trial_end, latest_invoice,
       last_event_id, refetch
  FROM stripe_billing.subscriptions ORDER BY id;
SELECT id, subscription, price, product, price_lookup_key, quantity, current_period_start,
       current_period_end, deleted, last_event_id
  FROM stripe_billing.subscription_items ORDER BY id;
SELECT id, customer, subscription, status, billing_reason, amount_due, amount_paid, amount_remaining,
       attempt_count, next_payment_attempt, last_event_id, refetch
  FROM stripe_billing.invoices ORDER BY id;
SELECT id, user_ref, email, name, deleted, created, last_event_id, refetch
  FROM stripe_billing.customers ORDER BY id;
SELECT id, user_ref, customer, mode, status, payment_status, subscription, payment_intent, amount_total,
       last_event_id
  FROM stripe_billing.checkout_sessions ORDER BY id;
SELECT id, kind, customer, payment_intent, charge, amount, amount_refunded, status, last_event_id, refetch
  FROM stripe_billing.payments ORDER BY id;
SELECT (SELECT count(*) FROM stripe_billing.products) AS products,
       (SELECT count(*) FROM stripe_billing.prices) AS prices,
       (SELECT count(*) FROM stripe_billing.entitlement_summaries) AS entitlement_summaries,
       (SELECT count(*) FROM stripe_billing.active_entitlements) AS active_entitlements;

SELECT pg_temp.billing_rows() AS rows_now;

-- The fingerprint sees a change to any billing table and to the ledger's
-- events, but not to outcomes, received_at or updated_at.  (Each statement
-- runs in a block rolled back like deliver()'s.)
CREATE FUNCTION pg_temp.changes_fingerprint(statement text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  before text := pg_temp.state_fingerprint();
  after text;
BEGIN
  BEGIN
    EXECUTE statement;
    RAISE EXCEPTION USING ERRCODE = 'LCFP0', MESSAGE = pg_temp.state_fingerprint();
  EXCEPTION WHEN SQLSTATE 'LCFP0' THEN
    after := SQLERRM;
  END;
  RETURN after <> before;
END
$$;

SELECT statement, pg_temp.changes_fingerprint(statement) AS changes_fingerprint
  FROM (VALUES
    ('UPDATE stripe_billing.customers SET user_ref = NULL WHERE id = ''cus_once'''),
    ('INSERT INTO stripe_billing.products (id) VALUES (''prod_pro'')'),
    ('INSERT INTO stripe_billing.prices (id) VALUES (''price_pro'')'),
    ('UPDATE stripe_billing.subscriptions SET refetch = true'),
    ('UPDATE stripe_billing.subscription_items SET quantity = 2'),
    ('UPDATE stripe_billing.invoices SET attempt_count = 1 WHERE id = ''in_life_cycle'''),
    ('UPDATE stripe_billing.payments SET amount_refunded = 0 WHERE id = ''ch_once'''),
    ('DELETE FROM stripe_billing.payments WHERE id = ''re_once'''),
    ('UPDATE stripe_billing.checkout_sessions SET status = ''open'' WHERE id = ''cs_test_life'''),
    ('INSERT INTO stripe_billing.entitlement_summaries (customer, raw) VALUES (''cus_life'', ''{}'')'),
    ('INSERT INTO stripe_billing.active_entitlements VALUES (''cus_life'', ''feat_pro'', ''pro'', NULL)'),
    ('DELETE FROM stripe_billing.events WHERE id = ''evt_once_3'''),
    ('UPDATE stripe_billing.events SET outcome = ''stale'', received_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.customers SET updated_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.subscriptions SET updated_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.subscription_items SET updated_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.invoices SET updated_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.payments SET updated_at = ''2000-01-01'''),
    ('UPDATE stripe_billing.checkout_sessions SET updated_at = ''2000-01-01''')
  ) AS c(statement);

DROP EXTENSION stripe_billing;
