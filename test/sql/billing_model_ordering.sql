-- The kinds of the rest of the billing model in any delivery order: a
-- coupon, its promotion code and the discount they make; an invoice and
-- its credit note; a customer's cards, default payment method and tax id;
-- a disputed charge of an entitled user, with disputes revoking access.
-- Each stream is delivered in every permutation of its events, with
-- random duplicate deliveries, and the final state (rows, features,
-- ledger) must equal the state of in-order delivery.  Events on one object
-- have distinct seconds (a same-second tie is event_ordering's); a
-- deletion event carries the whole object, as Stripe's do (a bare one, an
-- API answer's, keeps what was known when it arrives: event_mapping).
CREATE EXTENSION stripe_billing;
SET stripe_billing.dispute_access = 'revoke';
SELECT stripe_billing.stripe_grant_feature('price', 'price_pro', 'reports');

CREATE FUNCTION pg_temp.evt(id text, type text, created bigint, obj jsonb) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'api_version', '2026-11-18.endive', 'created', created,
                            'livemode', false, 'type', type, 'data', jsonb_build_object('object', obj))
$$;

CREATE TEMP TABLE stream (stream text, pos int, ev jsonb, PRIMARY KEY (stream, pos));

-- A coupon, its promotion code, the discount a customer redeemed with it
-- (2025-09-30.clover shapes: source.coupon, promotion.coupon); the coupon
-- and the discount end deleted (tombstones).
INSERT INTO stream VALUES
('discounts', 1, pg_temp.evt('evt_dc_1', 'coupon.created', 1760000001,
  '{"id": "SUMMER25", "object": "coupon", "percent_off": 25, "duration": "repeating", "duration_in_months": 3,
    "valid": true, "times_redeemed": 0, "created": 1760000001, "metadata": {}}')),
('discounts', 2, pg_temp.evt('evt_dc_2', 'promotion_code.created', 1760000002,
  '{"id": "promo_summer", "object": "promotion_code", "code": "SUMMER", "active": true, "times_redeemed": 0,
    "promotion": {"type": "coupon", "coupon": "SUMMER25"}, "restrictions": {"first_time_transaction": true},
    "created": 1760000002, "metadata": {}}')),
('discounts', 3, pg_temp.evt('evt_dc_3', 'customer.discount.created', 1760000003,
  '{"id": "di_summer", "object": "discount", "customer": "cus_dc", "subscription": "sub_dc",
    "promotion_code": "promo_summer", "source": {"type": "coupon", "coupon": "SUMMER25"},
    "start": 1760000003, "end": 1767862403}')),
('discounts', 4, pg_temp.evt('evt_dc_4', 'promotion_code.updated', 1760000004,
  '{"id": "promo_summer", "object": "promotion_code", "code": "SUMMER", "active": false, "times_redeemed": 1,
    "max_redemptions": 1, "promotion": {"type": "coupon", "coupon": "SUMMER25"},
    "restrictions": {"first_time_transaction": true}, "created": 1760000002, "metadata": {}}')),
('discounts', 5, pg_temp.evt('evt_dc_5', 'customer.discount.deleted', 1760000005,
  '{"id": "di_summer", "object": "discount", "customer": "cus_dc", "subscription": "sub_dc",
    "promotion_code": "promo_summer", "source": {"type": "coupon", "coupon": "SUMMER25"},
    "start": 1760000003, "end": 1767862403, "deleted": true}')),
('discounts', 6, pg_temp.evt('evt_dc_6', 'coupon.deleted', 1760000006,
  '{"id": "SUMMER25", "object": "coupon", "percent_off": 25, "duration": "repeating", "duration_in_months": 3,
    "valid": false, "times_redeemed": 1, "created": 1760000001, "metadata": {}}'));

-- An invoice with a discount, its credit note issued, edited, voided.
INSERT INTO stream VALUES
('credit_notes', 1, pg_temp.evt('evt_cn_1', 'invoice.finalized', 1760100001,
  '{"id": "in_cn", "object": "invoice", "customer": "cus_cn", "status": "open", "amount_due": 1500,
    "amount_paid": 0, "currency": "usd", "discounts": ["di_cn"], "created": 1760100000}')),
('credit_notes', 2, pg_temp.evt('evt_cn_2', 'invoice.paid', 1760100002,
  '{"id": "in_cn", "object": "invoice", "customer": "cus_cn", "status": "paid", "amount_due": 1500,
    "amount_paid": 1500, "currency": "usd", "discounts": ["di_cn"], "created": 1760100000}')),
('credit_notes', 3, pg_temp.evt('evt_cn_3', 'credit_note.created', 1760100003,
  '{"id": "cn_1", "object": "credit_note", "invoice": "in_cn", "customer": "cus_cn", "number": "CN-0001",
    "status": "issued", "type": "post_payment", "reason": "product_unsatisfactory", "amount": 500,
    "subtotal": 500, "total": 500, "currency": "usd", "memo": null,
    "refunds": [{"refund": "re_cn", "amount_refunded": 500, "type": "refund"}], "created": 1760100003}')),
('credit_notes', 4, pg_temp.evt('evt_cn_4', 'credit_note.updated', 1760100004,
  '{"id": "cn_1", "object": "credit_note", "invoice": "in_cn", "customer": "cus_cn", "number": "CN-0001",
    "status": "issued", "type": "post_payment", "reason": "product_unsatisfactory", "amount": 500,
    "subtotal": 500, "total": 500, "currency": "usd", "memo": "Sorry about that",
    "refunds": [{"refund": "re_cn", "amount_refunded": 500, "type": "refund"}], "created": 1760100003}')),
('credit_notes', 5, pg_temp.evt('evt_cn_5', 'credit_note.voided', 1760100005,
  '{"id": "cn_1", "object": "credit_note", "invoice": "in_cn", "customer": "cus_cn", "number": "CN-0001",
    "status": "void", "type": "post_payment", "reason": "product_unsatisfactory", "amount": 500,
    "subtotal": 500, "total": 500, "currency": "usd", "memo": "Sorry about that", "voided_at": 1760100005,
    "refunds": [{"refund": "re_cn", "amount_refunded": 500, "type": "refund"}], "created": 1760100003}'));

-- A customer's card attached, made its default, updated by the card
-- network, detached; a tax id added then deleted.
INSERT INTO stream VALUES
('payment_methods', 1, pg_temp.evt('evt_pm_1', 'payment_method.attached', 1760200001,
  '{"id": "pm_old", "object": "payment_method", "customer": "cus_pm", "type": "card", "created": 1760200000,
    "card": {"brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": 2026, "funding": "credit", "country": "US"},
    "metadata": {}}')),
('payment_methods', 2, pg_temp.evt('evt_pm_2', 'customer.updated', 1760200002,
  '{"id": "cus_pm", "object": "customer", "email": "pm@example.com", "created": 1760000000,
    "invoice_settings": {"default_payment_method": "pm_old"}, "metadata": {"user_ref": "user_pm"}}')),
('payment_methods', 3, pg_temp.evt('evt_pm_3', 'payment_method.automatically_updated', 1760200003,
  '{"id": "pm_old", "object": "payment_method", "customer": "cus_pm", "type": "card", "created": 1760200000,
    "card": {"brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": 2029, "funding": "credit", "country": "US"},
    "metadata": {}}')),
('payment_methods', 4, pg_temp.evt('evt_pm_4', 'customer.tax_id.created', 1760200004,
  '{"id": "txi_pm", "object": "tax_id", "customer": "cus_pm", "type": "eu_vat", "value": "DE123456789",
    "country": "DE", "verification": {"status": "verified"}, "created": 1760200004}')),
('payment_methods', 5, pg_temp.evt('evt_pm_5', 'payment_method.detached', 1760200005,
  '{"id": "pm_old", "object": "payment_method", "customer": null, "type": "card", "created": 1760200000,
    "card": {"brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": 2029, "funding": "credit", "country": "US"},
    "metadata": {}}')),
('payment_methods', 6, pg_temp.evt('evt_pm_6', 'customer.tax_id.deleted', 1760200006,
  '{"id": "txi_pm", "object": "tax_id", "customer": "cus_pm", "type": "eu_vat", "value": "DE123456789",
    "country": "DE", "verification": {"status": "verified"}, "created": 1760200004}'));

-- user_dp subscribes to price_pro (the feature "reports"), pays, disputes
-- the charge, loses, and appeals (2026-10-28.endive): an open dispute
-- again, so the user ends without the feature.  The dispute names its
-- charge only: its customer comes from the charge, in whatever order.
INSERT INTO stream VALUES
('dispute', 1, pg_temp.evt('evt_dp_1', 'customer.created', 1760300001,
  '{"id": "cus_dp", "object": "customer", "email": "dp@example.com", "created": 1760300001,
    "metadata": {"user_ref": "user_dp"}}')),
('dispute', 2, pg_temp.evt('evt_dp_2', 'customer.subscription.created', 1760300002,
  '{"id": "sub_dp", "object": "subscription", "customer": "cus_dp", "status": "active", "created": 1760300002,
    "metadata": {}, "discounts": [],
    "items": {"object": "list", "has_more": false, "data": [{"id": "si_dp", "quantity": 1,
      "current_period_start": 1760300002, "current_period_end": 4102444800,
      "price": {"id": "price_pro", "product": "prod_pro", "lookup_key": "pro"}}]}}')),
('dispute', 3, pg_temp.evt('evt_dp_3', 'charge.succeeded', 1760300003,
  '{"id": "ch_dp", "object": "charge", "customer": "cus_dp", "payment_intent": "pi_dp", "amount": 2000,
    "amount_refunded": 0, "currency": "usd", "status": "succeeded", "created": 1760300003,
    "refunds": {"object": "list", "data": [], "has_more": false}}')),
('dispute', 4, pg_temp.evt('evt_dp_4', 'charge.dispute.created', 1760300004,
  '{"id": "dp_dp", "object": "dispute", "charge": "ch_dp", "payment_intent": "pi_dp", "amount": 2000,
    "currency": "usd", "reason": "fraudulent", "status": "needs_response", "is_charge_refundable": false,
    "evidence_details": {"due_by": 1761000000}, "created": 1760300004, "metadata": {}}')),
('dispute', 5, pg_temp.evt('evt_dp_5', 'charge.dispute.closed', 1760300005,
  '{"id": "dp_dp", "object": "dispute", "charge": "ch_dp", "payment_intent": "pi_dp", "amount": 2000,
    "currency": "usd", "reason": "fraudulent", "status": "lost", "is_charge_refundable": false,
    "evidence_details": {"due_by": 1761000000}, "created": 1760300004, "metadata": {}}')),
('dispute', 6, pg_temp.evt('evt_dp_6', 'charge.dispute.updated', 1760300006,
  '{"id": "dp_dp", "object": "dispute", "charge": "ch_dp", "payment_intent": "pi_dp", "amount": 2000,
    "currency": "usd", "reason": "fraudulent", "status": "appeal_needs_response", "is_charge_refundable": false,
    "intended_submission_method": "manual", "evidence_details": {"due_by": 1761600000, "submission_method": "manual"},
    "created": 1760300004, "metadata": {}}'));

SELECT stream, count(*) AS events, count(DISTINCT ev->>'id') AS ids,
       bool_and((ev->>'created')::bigint > coalesce(prev, 0)) AS distinct_seconds_in_order
  FROM (SELECT stream, ev, lag((ev->>'created')::bigint) OVER (PARTITION BY stream ORDER BY pos) AS prev
          FROM stream) s
 GROUP BY stream ORDER BY stream;

-- Every row of the tables these streams write (but updated_at), the
-- derived features, and the ledger (but outcome, error, received_at), as
-- one md5.
CREATE FUNCTION pg_temp.state_fingerprint() RETURNS text LANGUAGE sql AS $$
  SELECT md5(concat_ws(E'\n',
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id, t.account) FROM stripe_billing.coupons t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.promotion_codes t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.discounts t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.credit_notes t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.payment_methods t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.tax_ids t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.disputes t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.customers t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.subscriptions t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.subscription_items t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.invoices t),
    (SELECT string_agg((to_jsonb(t) - 'updated_at')::text, E'\n' ORDER BY t.id) FROM stripe_billing.payments t),
    'features:' || (SELECT string_agg(to_jsonb(f)::text, E'\n' ORDER BY f.user_ref, f.feature)
                      FROM stripe_billing.user_features f),
    'events:' || (SELECT string_agg((to_jsonb(e) - 'outcome' - 'error' - 'received_at')::text, E'\n' ORDER BY e.id)
                    FROM stripe_billing.events e)))
$$;

-- Applies the events in order (with_dups: after each event, deliver it
-- again with probability 0.3 and an earlier one with probability 0.2) and
-- returns the final fingerprint; the block rolls back (LCFP0), so every
-- order starts from the same clean slate.
CREATE FUNCTION pg_temp.deliver(events jsonb[], with_dups boolean,
  OUT fingerprint text, OUT deliveries int, OUT redeliveries int, OUT duplicate_outcomes int,
  OUT stale_outcomes int, OUT failed_outcomes int)
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
END
$$;

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
SELECT stream, deliveries, stale_outcomes, failed_outcomes FROM in_order ORDER BY stream;

-- the fingerprint sees a missing last event, and the features
SELECT i.stream,
       (pg_temp.deliver(pg_temp.events_at(i.stream, (SELECT array_agg(pos ORDER BY pos) FROM stream s
                                                      WHERE s.stream = i.stream
                                                        AND pos < (SELECT max(pos) FROM stream m WHERE m.stream = i.stream))),
                        false)).fingerprint <> i.fingerprint AS without_last_differs
  FROM in_order i ORDER BY i.stream;

-- Every permutation of the stream's n events, with random duplicates.
CREATE TEMP TABLE results (stream text, perm int[], fingerprint text, deliveries int, redeliveries int,
                           duplicate_outcomes int, stale_outcomes int, failed_outcomes int);
CREATE FUNCTION pg_temp.run_stream(stream_name text, n int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  p int[];
  last_pos int := (SELECT max(pos) FROM stream WHERE stream = stream_name);
BEGIN
  PERFORM setseed(0.27);
  FOR p IN
    WITH RECURSIVE q(perm) AS (
      SELECT ARRAY[]::int[]
      UNION ALL
      SELECT q.perm || i FROM q, generate_series(1, n) i WHERE cardinality(q.perm) < n AND i <> ALL (q.perm))
    SELECT perm FROM q WHERE cardinality(perm) = n ORDER BY perm
  LOOP
    INSERT INTO results
    SELECT stream_name, p, d.*
      FROM pg_temp.deliver(pg_temp.events_at(stream_name, p || ARRAY(SELECT generate_series(n + 1, last_pos))), true) d;
  END LOOP;
END
$$;
SELECT pg_temp.run_stream('discounts', 6);
SELECT pg_temp.run_stream('credit_notes', 5);
SELECT pg_temp.run_stream('payment_methods', 6);
SELECT pg_temp.run_stream('dispute', 6);

-- every order ends in the in-order state
SELECT r.stream, count(*) AS orders, count(DISTINCT r.perm) AS distinct_orders,
       sum(r.redeliveries) > 0 AS duplicates_delivered,
       bool_and(r.duplicate_outcomes = r.redeliveries) AS redeliveries_all_duplicate,
       count(*) FILTER (WHERE r.stale_outcomes > 0) AS orders_with_stale,
       sum(r.failed_outcomes) AS failed,
       count(*) FILTER (WHERE r.fingerprint = i.fingerprint) AS orders_matching_in_order
  FROM results r JOIN in_order i USING (stream)
 GROUP BY r.stream ORDER BY r.stream;
-- (empty unless an order differs: the first few, to debug)
SELECT r.stream, r.perm FROM results r JOIN in_order i USING (stream)
 WHERE r.fingerprint <> i.fingerprint ORDER BY r.stream, r.perm LIMIT 5;

-- The in-order final state, for real.
SELECT s.stream, s.pos, s.ev->>'type' AS type, stripe_billing.stripe_apply_event(s.ev) AS outcome
  FROM stream s ORDER BY s.stream, s.pos;
SELECT id, percent_off, valid, deleted, last_event_id FROM stripe_billing.coupons;
SELECT id, code, coupon, active, times_redeemed, max_redemptions, first_time_transaction, last_event_id
  FROM stripe_billing.promotion_codes;
SELECT id, customer, subscription, coupon, promotion_code, starts_at, ends_at, deleted, last_event_id
  FROM stripe_billing.discounts;
SELECT id, status, discounts FROM stripe_billing.invoices;
SELECT id, invoice, status, amount, refunds, memo, voided_at, last_event_id FROM stripe_billing.credit_notes;
SELECT id, customer, card_brand, card_last4, card_exp_month, card_exp_year, detached, last_event_id
  FROM stripe_billing.payment_methods;
SELECT id, default_payment_method, user_ref FROM stripe_billing.customers ORDER BY id;
SELECT id, customer, type, value, verification_status, deleted FROM stripe_billing.tax_ids;
SELECT id, charge, customer, status, intended_submission_method, evidence_due_by, last_event_id
  FROM stripe_billing.disputes;
SELECT * FROM stripe_billing.stripe_user_features('user_dp');
-- the dispute closed won: the feature is back
SELECT stripe_billing.stripe_apply_event(pg_temp.evt('evt_dp_7', 'charge.dispute.closed', 1760300007,
  '{"id": "dp_dp", "object": "dispute", "charge": "ch_dp", "amount": 2000, "currency": "usd",
    "status": "won", "created": 1760300004}'));
SELECT feature FROM stripe_billing.stripe_user_features('user_dp');

-- The rules, kind by kind (each on a fresh object): an older snapshot is
-- stale; one of the same second applies and marks refetch; a newer one
-- clears it; the terminal state (a tombstone, void, detached, won) sticks
-- against a same-second and a newer non-terminal snapshot; a redelivery is
-- a duplicate.  (A promotion code has no terminal state; a lost dispute is
-- not terminal: it may be appealed.)
CREATE FUNCTION pg_temp.rules(tab text, obj jsonb, live_type text, terminal_type text, terminal jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  id text := obj->>'id';
  n int := 0;
  out text := '';
  refetch boolean;
  step record;
BEGIN
  FOR step IN SELECT * FROM (VALUES
      (100, live_type, obj), (50, live_type, obj), (100, live_type, obj), (200, live_type, obj),
      (300, terminal_type, terminal), (300, live_type, obj), (400, live_type, obj)) v(t, type, o) LOOP
    n := n + 1;
    out := out || ' ' || stripe_billing.stripe_apply_event(
             pg_temp.evt('evt_rule_' || tab || n, step.type, 1770000000 + step.t, step.o));
    EXECUTE format('SELECT refetch FROM stripe_billing.%I WHERE id = $1', tab) INTO refetch USING id;
    out := out || CASE WHEN refetch THEN '(refetch)' ELSE '' END;
  END LOOP;
  -- a redelivery
  out := out || ' ' || stripe_billing.stripe_apply_event(pg_temp.evt('evt_rule_' || tab || '3', live_type, 1770000100, obj));
  RETURN ltrim(out);
END
$$;
SELECT tab, pg_temp.rules(tab, obj::jsonb, live, term, terminal::jsonb) AS outcomes FROM (VALUES
  ('coupons', '{"id": "RULES", "object": "coupon", "percent_off": 10, "valid": true}', 'coupon.updated',
   'coupon.deleted', '{"id": "RULES", "object": "coupon", "percent_off": 10, "valid": false}'),
  ('promotion_codes', '{"id": "promo_rules", "object": "promotion_code", "code": "R", "active": true}',
   'promotion_code.updated', 'promotion_code.updated', '{"id": "promo_rules", "object": "promotion_code", "code": "R", "active": false}'),
  ('discounts', '{"id": "di_rules", "object": "discount", "customer": "cus_rules", "source": {"coupon": "RULES"}}',
   'customer.discount.updated', 'customer.discount.deleted', '{"id": "di_rules", "object": "discount", "customer": "cus_rules", "source": {"coupon": "RULES"}}'),
  ('disputes', '{"id": "dp_rules", "object": "dispute", "charge": "ch_rules", "status": "lost"}',
   'charge.dispute.updated', 'charge.dispute.closed', '{"id": "dp_rules", "object": "dispute", "charge": "ch_rules", "status": "won"}'),
  ('credit_notes', '{"id": "cn_rules", "object": "credit_note", "status": "issued", "amount": 100}',
   'credit_note.updated', 'credit_note.voided', '{"id": "cn_rules", "object": "credit_note", "status": "void", "amount": 100}'),
  ('payment_methods', '{"id": "pm_rules", "object": "payment_method", "customer": "cus_rules", "type": "card"}',
   'payment_method.updated', 'payment_method.detached', '{"id": "pm_rules", "object": "payment_method", "customer": null, "type": "card"}'),
  ('tax_ids', '{"id": "txi_rules", "object": "tax_id", "customer": "cus_rules", "type": "eu_vat", "value": "DE1"}',
   'customer.tax_id.updated', 'customer.tax_id.deleted', '{"id": "txi_rules", "object": "tax_id", "customer": "cus_rules", "type": "eu_vat", "value": "DE1"}')
  ) v(tab, obj, live, term, terminal) ORDER BY tab;
-- the terminal states, and what a tombstone kept
SELECT 'coupon' AS kind, deleted::text AS state, percent_off::text AS kept FROM stripe_billing.coupons WHERE id = 'RULES'
UNION ALL SELECT 'promotion_code', active::text, code FROM stripe_billing.promotion_codes WHERE id = 'promo_rules'
UNION ALL SELECT 'discount', deleted::text, coupon FROM stripe_billing.discounts WHERE id = 'di_rules'
UNION ALL SELECT 'dispute', status, charge FROM stripe_billing.disputes WHERE id = 'dp_rules'
UNION ALL SELECT 'credit_note', status, amount::text FROM stripe_billing.credit_notes WHERE id = 'cn_rules'
UNION ALL SELECT 'payment_method', detached::text, customer FROM stripe_billing.payment_methods WHERE id = 'pm_rules'
UNION ALL SELECT 'tax_id', deleted::text, value FROM stripe_billing.tax_ids WHERE id = 'txi_rules'
 ORDER BY 1;

-- ids an account chooses: a coupon of the same id in two accounts is two rows
SELECT stripe_billing.stripe_apply_event(pg_temp.evt('evt_acct_coupon_' || a, 'coupon.created', 1770001000,
         '{"id": "SAMEID", "object": "coupon", "percent_off": 15}') || jsonb_build_object('account', a))
  FROM unnest(ARRAY['acct_1Aaaa', 'acct_1Bbbb']) a;
SELECT stripe_billing.stripe_apply_event(pg_temp.evt('evt_plat_coupon', 'coupon.created', 1770001000,
         '{"id": "SAMEID", "object": "coupon", "percent_off": 20}'));
SELECT id, coalesce(account, 'platform') AS account, percent_off FROM stripe_billing.coupons WHERE id = 'SAMEID' ORDER BY 2;

DROP EXTENSION stripe_billing;
