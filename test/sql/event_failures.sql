-- Events whose object does not fit: recorded as 'failed' with an error
-- naming the field, inside a subtransaction, so the caller's transaction
-- goes on and nothing received is lost; retried and replayed later.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;

-- A valid minimal object per mapped type, and a way to wrap it in an event.
CREATE TEMP TABLE good (type text PRIMARY KEY, object jsonb NOT NULL);
INSERT INTO good VALUES
  ('customer.updated', '{"id": "cus_1", "object": "customer", "email": "a@b.c", "metadata": {}}'),
  ('product.updated', '{"id": "prod_1", "object": "product", "name": "P", "active": true}'),
  ('price.updated', '{"id": "price_1", "object": "price", "product": "prod_1", "unit_amount": 100, "recurring": {"interval": "month", "interval_count": 1}}'),
  ('plan.updated', '{"id": "plan_1", "object": "plan", "product": "prod_1", "amount": 100, "interval": "month"}'),
  ('customer.subscription.updated', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"object": "list", "has_more": false, "data": [{"id": "si_1", "quantity": 1, "current_period_start": 1700000000, "current_period_end": 1702592000, "price": {"id": "price_1", "product": "prod_1"}}]}}'),
  ('invoice.paid', '{"id": "in_1", "object": "invoice", "customer": "cus_1", "status": "paid", "amount_paid": 100, "attempt_count": 1, "parent": {"subscription_details": {"subscription": "sub_1"}}}'),
  ('invoice_payment.paid', '{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_1", "amount_paid": 100, "payment": {"type": "payment_intent", "payment_intent": "pi_1"}}'),
  ('payment_intent.succeeded', '{"id": "pi_1", "object": "payment_intent", "customer": "cus_1", "amount": 100, "status": "succeeded", "last_payment_error": null}'),
  ('charge.refunded', '{"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "amount": 100, "amount_refunded": 100, "status": "succeeded", "refunds": {"data": [{"id": "re_1", "amount": 100, "status": "succeeded"}]}}'),
  ('refund.created', '{"id": "re_2", "object": "refund", "charge": "ch_1", "amount": 50, "status": "pending"}'),
  ('checkout.session.completed', '{"id": "cs_1", "object": "checkout.session", "client_reference_id": "u1", "customer": "cus_1", "mode": "subscription", "status": "complete", "expires_at": 1700086400}'),
  ('entitlements.active_entitlement_summary.updated', '{"object": "entitlements.active_entitlement_summary", "customer": "cus_1", "entitlements": {"data": [{"id": "ent_1", "feature": "feat_1", "lookup_key": "reports"}], "has_more": false}}'),
  -- the rest of the billing model
  ('coupon.updated', '{"id": "SUMMER25", "object": "coupon", "percent_off": 25.5, "duration": "repeating", "duration_in_months": 3, "valid": true}'),
  ('promotion_code.updated', '{"id": "promo_1", "object": "promotion_code", "code": "SUMMER", "promotion": {"type": "coupon", "coupon": "SUMMER25"}, "active": true, "restrictions": {"minimum_amount": 1000, "minimum_amount_currency": "usd"}}'),
  ('customer.discount.created', '{"id": "di_1", "object": "discount", "customer": "cus_1", "subscription": "sub_1", "source": {"type": "coupon", "coupon": "SUMMER25"}, "start": 1700000000, "end": null}'),
  ('charge.dispute.created', '{"id": "dp_1", "object": "dispute", "charge": "ch_1", "amount": 100, "status": "needs_response", "evidence_details": {"due_by": 1700600000}}'),
  ('credit_note.created', '{"id": "cn_1", "object": "credit_note", "invoice": "in_1", "customer": "cus_1", "status": "issued", "amount": 100, "refunds": [{"refund": "re_1", "amount_refunded": 100}]}'),
  ('payment_method.attached', '{"id": "pm_1", "object": "payment_method", "customer": "cus_1", "type": "card", "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}}'),
  ('customer.tax_id.created', '{"id": "txi_1", "object": "tax_id", "customer": "cus_1", "type": "eu_vat", "value": "DE123456789", "verification": {"status": "pending"}}');

CREATE FUNCTION pg_temp.ev(id text, type text, object jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', 1700000000,
                            'livemode', false, 'data', jsonb_build_object('object', object))
$$;

-- Bad shapes, for every mapped type: each required field missing, and
-- fields of the wrong JSON type at every depth.
CREATE TEMP TABLE bad (n serial, type text, label text, object jsonb);
INSERT INTO bad (type, label, object)
SELECT g.type, 'no ' || f, g.object #- string_to_array(f, '.')
  FROM good g, LATERAL unnest(CASE g.type
      WHEN 'customer.subscription.updated' THEN ARRAY['id', 'customer', 'status', 'items', 'items.data', 'items.data.0.id', 'object']
      WHEN 'invoice_payment.paid' THEN ARRAY['id', 'invoice']
      WHEN 'entitlements.active_entitlement_summary.updated' THEN ARRAY['customer', 'entitlements', 'entitlements.data', 'entitlements.data.0.feature', 'entitlements.data.0.lookup_key']
      WHEN 'charge.dispute.created' THEN ARRAY['id', 'charge']
      ELSE ARRAY['id'] END) AS f;
INSERT INTO bad (type, label, object) VALUES
  ('customer.updated', 'email number', '{"id": "cus_1", "object": "customer", "email": 5}'),
  ('customer.updated', 'metadata array', '{"id": "cus_1", "object": "customer", "metadata": []}'),
  ('customer.updated', 'id number', '{"id": 17, "object": "customer"}'),
  ('customer.updated', 'deleted string', '{"id": "cus_1", "object": "customer", "deleted": "yes"}'),
  ('product.updated', 'active string', '{"id": "prod_1", "object": "product", "active": "true"}'),
  ('price.updated', 'unit_amount fraction', '{"id": "price_1", "object": "price", "unit_amount": 1.5}'),
  ('price.updated', 'unit_amount string', '{"id": "price_1", "object": "price", "unit_amount": "100"}'),
  ('price.updated', 'recurring.interval_count string', '{"id": "price_1", "object": "price", "recurring": {"interval_count": "1"}}'),
  ('price.updated', 'product object without id', '{"id": "price_1", "object": "price", "product": {"object": "product"}}'),
  ('plan.updated', 'amount string', '{"id": "plan_1", "object": "plan", "amount": "100"}'),
  ('customer.subscription.updated', 'status number', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": 1, "items": {"data": []}}'),
  ('customer.subscription.updated', 'items.data object', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": {}}}'),
  ('customer.subscription.updated', 'item quantity string', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1"}, {"id": "si_2", "quantity": "2"}]}}'),
  ('customer.subscription.updated', 'item not an object', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": ["si_1"]}}'),
  ('customer.subscription.updated', 'item price.id missing', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1", "price": {"product": "prod_1"}}]}}'),
  ('customer.subscription.updated', 'current_period_end string', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "current_period_end": "soon", "items": {"data": []}}'),
  ('customer.subscription.updated', 'cancel_at_period_end number', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "cancel_at_period_end": 0, "items": {"data": []}}'),
  ('customer.subscription.updated', 'customer array', '{"id": "sub_1", "object": "subscription", "customer": ["cus_1"], "status": "active", "items": {"data": []}}'),
  ('invoice.paid', 'amount_due string', '{"id": "in_1", "object": "invoice", "amount_due": "100"}'),
  ('invoice.paid', 'parent.subscription_details string', '{"id": "in_1", "object": "invoice", "parent": {"subscription_details": "sub_1"}}'),
  ('invoice.paid', 'attempt_count boolean', '{"id": "in_1", "object": "invoice", "attempt_count": true}'),
  ('payment_intent.succeeded', 'last_payment_error string', '{"id": "pi_1", "object": "payment_intent", "last_payment_error": "declined"}'),
  ('payment_intent.succeeded', 'amount object', '{"id": "pi_1", "object": "payment_intent", "amount": {"value": 1}}'),
  ('charge.refunded', 'refunds.data[0].amount string', '{"id": "ch_1", "object": "charge", "refunds": {"data": [{"id": "re_1", "amount": "100"}]}}'),
  ('refund.created', 'charge number', '{"id": "re_2", "object": "refund", "charge": 5}'),
  ('checkout.session.completed', 'expires_at string', '{"id": "cs_1", "object": "checkout.session", "expires_at": "tomorrow"}'),
  ('checkout.session.completed', 'client_reference_id number', '{"id": "cs_1", "object": "checkout.session", "client_reference_id": 42}'),
  ('entitlements.active_entitlement_summary.updated', 'entitlements.has_more string', '{"object": "entitlements.active_entitlement_summary", "customer": "cus_1", "entitlements": {"data": [], "has_more": "no"}}'),
  -- values the mapping's casts would refuse without naming the field:
  -- Unix times beyond timestamptz (or bigint), amounts beyond bigint,
  -- counts beyond integer, an item listed twice
  ('customer.subscription.updated', 'current_period_end beyond timestamptz', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "current_period_end": 9.22337e18, "items": {"data": []}}'),
  ('customer.subscription.updated', 'trial_start before timestamptz', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "trial_start": -210866803201, "items": {"data": []}}'),
  ('customer.subscription.updated', 'item current_period_start beyond bigint', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1"}, {"id": "si_2", "current_period_start": 1e30}]}}'),
  ('customer.subscription.updated', 'item quantity beyond bigint', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1", "quantity": 9223372036854775808}]}}'),
  ('customer.subscription.updated', 'item listed twice', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1"}, {"id": "si_2"}, {"id": "si_1"}]}}'),
  ('customer.updated', 'created beyond timestamptz', '{"id": "cus_1", "object": "customer", "created": 9224318016000}'),
  ('product.updated', 'created fraction in exponent form', '{"id": "prod_1", "object": "product", "created": 1.5e0}'),
  ('price.updated', 'unit_amount beyond bigint', '{"id": "price_1", "object": "price", "unit_amount": -9223372036854775809}'),
  ('price.updated', 'recurring.interval_count beyond integer', '{"id": "price_1", "object": "price", "recurring": {"interval_count": 2147483648}}'),
  ('plan.updated', 'interval_count beyond integer', '{"id": "plan_1", "object": "plan", "interval_count": -2147483649}'),
  ('invoice.paid', 'attempt_count beyond integer', '{"id": "in_1", "object": "invoice", "attempt_count": 2147483648}'),
  ('invoice.paid', 'next_payment_attempt beyond timestamptz', '{"id": "in_1", "object": "invoice", "next_payment_attempt": 1e16}'),
  ('invoice.paid', 'amount_remaining beyond bigint', '{"id": "in_1", "object": "invoice", "amount_remaining": 1e19}'),
  ('invoice_payment.paid', 'amount_paid beyond bigint', '{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_1", "amount_paid": 1e19}'),
  ('payment_intent.succeeded', 'created beyond timestamptz', '{"id": "pi_1", "object": "payment_intent", "created": 99999999999999}'),
  ('charge.refunded', 'amount_refunded beyond bigint', '{"id": "ch_1", "object": "charge", "amount_refunded": 1e20}'),
  ('charge.refunded', 'refunds.data[1].created beyond timestamptz', '{"id": "ch_1", "object": "charge", "refunds": {"data": [{"id": "re_1"}, {"id": "re_2", "created": 1e15}]}}'),
  ('refund.created', 'amount beyond bigint', '{"id": "re_2", "object": "refund", "amount": 1e19}'),
  ('checkout.session.completed', 'expires_at beyond timestamptz', '{"id": "cs_1", "object": "checkout.session", "expires_at": 1e13}'),
  ('checkout.session.completed', 'amount_total beyond bigint', '{"id": "cs_1", "object": "checkout.session", "amount_total": 1e19}'),
  -- the rest of the billing model, and what it added to customers,
  -- subscriptions and invoices
  ('coupon.updated', 'percent_off string', '{"id": "SUMMER25", "object": "coupon", "percent_off": "25.5"}'),
  ('coupon.updated', 'duration_in_months beyond integer', '{"id": "SUMMER25", "object": "coupon", "duration_in_months": 2147483648}'),
  ('coupon.updated', 'redeem_by beyond timestamptz', '{"id": "SUMMER25", "object": "coupon", "redeem_by": 1e16}'),
  ('promotion_code.updated', 'promotion.coupon number', '{"id": "promo_1", "object": "promotion_code", "promotion": {"coupon": 25}}'),
  ('promotion_code.updated', 'restrictions.minimum_amount string', '{"id": "promo_1", "object": "promotion_code", "restrictions": {"minimum_amount": "1000"}}'),
  ('customer.discount.created', 'start string', '{"id": "di_1", "object": "discount", "start": "now"}'),
  ('customer.discount.created', 'source string', '{"id": "di_1", "object": "discount", "source": "SUMMER25"}'),
  ('customer.discount.created', 'coupon object without id', '{"id": "di_1", "object": "discount", "coupon": {"object": "coupon"}}'),
  ('charge.dispute.created', 'charge number', '{"id": "dp_1", "object": "dispute", "charge": 5}'),
  ('charge.dispute.created', 'expanded charge.customer number', '{"id": "dp_1", "object": "dispute", "charge": {"id": "ch_1", "object": "charge", "customer": 5}}'),
  ('charge.dispute.created', 'evidence_details.due_by string', '{"id": "dp_1", "object": "dispute", "charge": "ch_1", "evidence_details": {"due_by": "soon"}}'),
  ('credit_note.created', 'refunds[0].refund number', '{"id": "cn_1", "object": "credit_note", "refunds": [{"refund": 5}]}'),
  ('credit_note.created', 'amount beyond bigint', '{"id": "cn_1", "object": "credit_note", "amount": 1e19}'),
  ('payment_method.attached', 'card.exp_month string', '{"id": "pm_1", "object": "payment_method", "card": {"exp_month": "12"}}'),
  ('payment_method.attached', 'card.exp_year beyond integer', '{"id": "pm_1", "object": "payment_method", "card": {"exp_year": 2147483648}}'),
  ('customer.tax_id.created', 'verification.status number', '{"id": "txi_1", "object": "tax_id", "verification": {"status": 1}}'),
  ('customer.tax_id.created', 'owner.customer array', '{"id": "txi_1", "object": "tax_id", "owner": {"customer": ["cus_1"]}}'),
  ('customer.updated', 'invoice_settings.default_payment_method number', '{"id": "cus_1", "object": "customer", "invoice_settings": {"default_payment_method": 5}}'),
  ('customer.updated', 'discount.end string', '{"id": "cus_1", "object": "customer", "discount": {"id": "di_1", "end": "later"}}'),
  ('customer.subscription.updated', 'discounts object', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": []}, "discounts": {"id": "di_1"}}'),
  ('customer.subscription.updated', 'discounts[1] number', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": []}, "discounts": ["di_1", 2]}'),
  ('invoice.paid', 'discounts[0] object without id', '{"id": "in_1", "object": "invoice", "discounts": [{"object": "discount"}]}');

-- All in ONE transaction: each bad event is recorded failed and the
-- transaction stays usable for the next one.
BEGIN;
SELECT b.type, b.label, stripe_apply_event(pg_temp.ev('evt_bad_' || b.n, b.type, b.object)) AS outcome
  FROM bad b ORDER BY b.n;
SELECT b.label, e.outcome, e.error FROM bad b JOIN events e ON e.id = 'evt_bad_' || b.n ORDER BY b.n;
-- the good objects still apply in the same transaction
SELECT g.type, stripe_apply_event(pg_temp.ev('evt_good_' || g.type, g.type, g.object)) AS outcome
  FROM good g ORDER BY g.type;
COMMIT;

-- ids and keys too long for an index (over 255 bytes; 500 for a user_ref
-- from metadata) are refused by the shape check too, naming the field,
-- instead of an index error that would abort the caller's statement
CREATE TEMP TABLE long_ids (n serial, type text, label text, object jsonb);
INSERT INTO long_ids (type, label, object)
SELECT v.type, v.label, replace(v.object, 'LONG', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g))::jsonb
  FROM (VALUES
    ('customer.updated', 'id', '{"id": "LONG", "object": "customer"}'),
    ('customer.updated', 'metadata.user_ref', '{"id": "cus_1", "object": "customer", "metadata": {"user_ref": "LONG"}}'),
    ('product.updated', 'id', '{"id": "LONG", "object": "product"}'),
    ('price.updated', 'lookup_key', '{"id": "price_1", "object": "price", "lookup_key": "LONG"}'),
    ('customer.subscription.updated', 'customer.id', '{"id": "sub_1", "object": "subscription", "customer": {"id": "LONG", "object": "customer"}, "status": "active", "items": {"data": []}}'),
    ('customer.subscription.updated', 'items.data[1].id', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": [{"id": "si_1"}, {"id": "LONG"}]}}'),
    ('customer.subscription.updated', 'metadata.userId', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "metadata": {"userId": "LONG"}, "items": {"data": []}}'),
    ('invoice.paid', 'parent.subscription_details.subscription', '{"id": "in_1", "object": "invoice", "parent": {"subscription_details": {"subscription": "LONG"}}}'),
    ('invoice_payment.paid', 'payment.payment_intent', '{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_1", "payment": {"payment_intent": "LONG"}}'),
    ('payment_intent.succeeded', 'customer', '{"id": "pi_1", "object": "payment_intent", "customer": "LONG"}'),
    ('charge.refunded', 'refunds.data[0].id', '{"id": "ch_1", "object": "charge", "refunds": {"data": [{"id": "LONG"}]}}'),
    ('refund.created', 'payment_intent', '{"id": "re_1", "object": "refund", "payment_intent": "LONG"}'),
    ('checkout.session.completed', 'client_reference_id', '{"id": "cs_1", "object": "checkout.session", "client_reference_id": "LONG"}'),
    ('entitlements.active_entitlement_summary.updated', 'entitlements.data[0].lookup_key', '{"object": "entitlements.active_entitlement_summary", "customer": "cus_1", "entitlements": {"data": [{"feature": "feat_1", "lookup_key": "LONG"}]}}'),
    ('coupon.updated', 'id', '{"id": "LONG", "object": "coupon"}'),
    ('customer.discount.created', 'source.coupon', '{"id": "di_1", "object": "discount", "source": {"coupon": "LONG"}}'),
    ('charge.dispute.created', 'charge.id', '{"id": "dp_1", "object": "dispute", "charge": {"id": "LONG", "object": "charge"}}'),
    ('customer.subscription.updated', 'discounts[0]', '{"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active", "items": {"data": []}, "discounts": ["LONG"]}')
  ) AS v(type, label, object);
BEGIN;
SELECT l.type, l.label, stripe_apply_event(pg_temp.ev('evt_long_' || l.n, l.type, l.object)) AS outcome
  FROM long_ids l ORDER BY l.n;
SELECT l.label, e.outcome, e.error FROM long_ids l JOIN events e ON e.id = 'evt_long_' || l.n ORDER BY l.n;
COMMIT;
-- at the limits: fine
SELECT stripe_apply_event(pg_temp.ev('evt_limits', 'customer.subscription.updated', jsonb_build_object(
         'id', repeat('s', 255), 'object', 'subscription', 'customer', 'cus_limits', 'status', 'active',
         'trial_start', -210866803200, 'trial_end', 9224318015999, 'metadata', jsonb_build_object('user_ref', repeat('u', 500)),
         'items', jsonb_build_object('data', jsonb_build_array(
             jsonb_build_object('id', 'si_limits', 'quantity', 9223372036854775807, 'current_period_end', 17e8))))));
SELECT length(id), extract(year FROM trial_start) AS trial_start_year, extract(year FROM trial_end) AS trial_end_year,
       current_period_end FROM subscriptions WHERE id = repeat('s', 255);
SELECT id, quantity FROM subscription_items WHERE id = 'si_limits';
SELECT stripe_apply_event(pg_temp.ev('evt_limits_invoice', 'invoice.paid',
         '{"id": "in_limits", "object": "invoice", "status": "open", "attempt_count": 2147483647, "amount_due": -9223372036854775808}'));
SELECT attempt_count, amount_due FROM invoices WHERE id = 'in_limits';
DELETE FROM subscription_items WHERE id = 'si_limits';
DELETE FROM subscriptions WHERE id = repeat('s', 255);
DELETE FROM invoices WHERE id = 'in_limits';
SELECT octet_length(user_ref) FROM customers WHERE id = 'cus_limits';
DELETE FROM customers WHERE id = 'cus_limits';
DELETE FROM events WHERE id LIKE 'evt_limits%';

-- nothing is lost: every event is in the ledger, the bad ones with their error
SELECT outcome, count(*) FROM events GROUP BY outcome ORDER BY outcome;
SELECT count(*) AS bad_events, count(*) FILTER (WHERE e.outcome = 'failed' AND e.error LIKE 'invalid Stripe object: field "data.object.%') AS failed_naming_field
  FROM bad b JOIN events e ON e.id = 'evt_bad_' || b.n;
SELECT count(*) AS long_id_events, count(*) FILTER (WHERE e.outcome = 'failed' AND e.error LIKE 'invalid Stripe object: field "data.object.' || l.label || '" must be at most %') AS failed_naming_field
  FROM long_ids l JOIN events e ON e.id = 'evt_long_' || l.n;
-- and failed events wrote nothing: the tables hold only the good objects
SELECT (SELECT count(*) FROM customers) AS customers, (SELECT count(*) FROM subscriptions) AS subscriptions,
       (SELECT count(*) FROM subscription_items) AS items, (SELECT count(*) FROM payments) AS payments;

-- retrying a failed event re-applies it; here a (test-only) trigger makes
-- the mapping fail on data until it is dropped
CREATE FUNCTION pg_temp.refuse_gold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.metadata->>'tier' = 'gold' THEN
    RAISE EXCEPTION 'gold customers are not accepted yet' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_gold BEFORE INSERT OR UPDATE ON customers
  FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse_gold();
SELECT stripe_apply_event(pg_temp.ev('evt_gold', 'customer.updated',
         '{"id": "cus_gold", "object": "customer", "metadata": {"tier": "gold"}}'));
SELECT id, outcome, error FROM events WHERE id = 'evt_gold';
SELECT * FROM stripe_retry_failed_events() WHERE event_id = 'evt_gold';
DROP TRIGGER refuse_gold ON customers;
SELECT * FROM stripe_retry_failed_events() WHERE event_id = 'evt_gold';
SELECT id, outcome, error FROM events WHERE id = 'evt_gold';
SELECT id, metadata FROM customers WHERE id = 'cus_gold';
-- program limits (class 54) hit by the data, here an index of the
-- application's own that an email is too long for, are about the event:
-- recorded failed like any data error, not raised to the caller
CREATE INDEX regress_customers_email_idx ON customers (email);
SELECT stripe_apply_event(pg_temp.ev('evt_long_email', 'customer.updated',
         jsonb_build_object('id', 'cus_long_email', 'object', 'customer',
                            'email', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g))));
SELECT id, outcome, error LIKE 'index row size % exceeds btree version 4 maximum 2704 for index "regress_customers_email_idx"%' AS index_error
  FROM events WHERE id = 'evt_long_email';
DROP INDEX regress_customers_email_idx;
SELECT * FROM stripe_retry_failed_events() WHERE event_id = 'evt_long_email';
DELETE FROM customers WHERE id = 'cus_long_email';
-- the shape failures stay failed on retry (their payload cannot change)
SELECT outcome, count(*) FROM stripe_retry_failed_events() GROUP BY outcome;
SELECT * FROM stripe_retry_failed_events(0);

-- errors about the moment, not the event (here a statement timeout while
-- mapping) abort the caller's statement: the event is not recorded failed
CREATE FUNCTION pg_temp.slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION pg_temp.slow();
SET statement_timeout = '200ms';
\set VERBOSITY terse
SELECT stripe_apply_event(pg_temp.ev('evt_slow', 'product.created', '{"id": "prod_slow", "object": "product"}'));
\set VERBOSITY default
RESET statement_timeout;
DROP TRIGGER slow ON products;
SELECT count(*) AS recorded FROM events WHERE id = 'evt_slow';
SELECT stripe_apply_event(pg_temp.ev('evt_slow', 'product.created', '{"id": "prod_slow", "object": "product"}'));

-- replay: events recorded 'ignored' (by a version that did not map their
-- type yet) are applied once replayed
INSERT INTO events (id, type, livemode, created, source, outcome, payload)
SELECT 'evt_old_' || g, 'customer.created', false, to_timestamp(1700000000 + g), 'webhook', 'ignored',
       pg_temp.ev('evt_old_' || g, 'customer.created',
                  jsonb_build_object('id', 'cus_old_' || g, 'object', 'customer', 'email', g || '@old.example'))
       || jsonb_build_object('created', 1700000000 + g)
  FROM generate_series(1, 3) g;
SELECT * FROM stripe_replay_events('customer.created');
SELECT id, email FROM customers WHERE id LIKE 'cus_old_%' ORDER BY id;
SELECT * FROM stripe_replay_events('customer.created');
SELECT count(*) AS still_ignored FROM events WHERE outcome = 'ignored';

-- a mapped type whose object has no "object" field is recorded failed,
-- naming the field
SELECT stripe_apply_event(pg_temp.ev('evt_no_kind', 'customer.updated', '{"id": "cus_x"}'));
SELECT error FROM events WHERE id = 'evt_no_kind';
-- a mapped type carrying a kind of object its kinds do not include is
-- ignored (as charge.dispute.* was until 0.4.0 mapped disputes)
SELECT stripe_apply_event(pg_temp.ev('evt_review', 'charge.updated', '{"id": "prv_1", "object": "review"}'));
-- invoice.upcoming is a preview without an id: kept, ignored
SELECT stripe_apply_event(pg_temp.ev('evt_upcoming', 'invoice.upcoming', '{"object": "invoice", "amount_due": 100}'));

DROP EXTENSION stripe_billing;
