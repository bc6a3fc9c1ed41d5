-- For test/integration/backfill.sh: the local tables as account_rows.js prints Stripe's
-- account, "kind, id, state", in the same text form.
CREATE SCHEMA IF NOT EXISTS btest;
CREATE OR REPLACE VIEW btest.local_rows AS
SELECT 'product' AS kind, id, active::text AS state FROM stripe_billing.products WHERE NOT deleted
UNION ALL
SELECT 'price', id, product || ' ' || active || ' ' || coalesce(unit_amount::text, '') FROM stripe_billing.prices
 WHERE NOT deleted
UNION ALL
SELECT 'customer', id, coalesce(user_ref, '') || ' ' || coalesce(default_payment_method, '')
  FROM stripe_billing.customers WHERE NOT deleted
UNION ALL
SELECT 'subscription', s.id, s.customer || ' ' || s.status || ' ' || s.cancel_at_period_end || ' ' ||
       coalesce((SELECT string_agg(x, ', ' ORDER BY x COLLATE "C")
                   FROM (SELECT i.price || ' x' || i.quantity FROM stripe_billing.subscription_items i
                          WHERE i.subscription = s.id AND NOT i.deleted) t(x)), '') ||
       ' {' || array_to_string(s.discounts, ',') || '}'
  FROM stripe_billing.subscriptions s
UNION ALL
SELECT 'invoice', id, customer || ' ' || status || ' ' || amount_paid FROM stripe_billing.invoices WHERE NOT deleted
UNION ALL
SELECT 'coupon', id, valid || ' ' || coalesce(percent_off::text, '') || ' ' || coalesce(amount_off::text, '')
  FROM stripe_billing.coupons WHERE NOT deleted
UNION ALL
SELECT 'promotion_code', id, code || ' ' || coupon || ' ' || active FROM stripe_billing.promotion_codes
UNION ALL
SELECT 'discount', id, coalesce(customer, '') || ' ' || coalesce(subscription, '') || ' ' || coupon || ' ' ||
       coalesce(promotion_code, '')
  FROM stripe_billing.discounts WHERE NOT deleted
UNION ALL
SELECT 'tax_id', id, customer || ' ' || type || ' ' || value FROM stripe_billing.tax_ids WHERE NOT deleted
UNION ALL
SELECT 'credit_note', id, invoice || ' ' || customer || ' ' || status || ' ' || amount FROM stripe_billing.credit_notes
UNION ALL
SELECT 'dispute', id, charge || ' ' || coalesce(customer, '') || ' ' || status FROM stripe_billing.disputes
UNION ALL
SELECT 'payment_method', id, customer || ' ' || card_brand || ' ' || card_last4 || ' ' || card_exp_month || '/' || card_exp_year
  FROM stripe_billing.payment_methods WHERE NOT detached
UNION ALL
SELECT 'entitlements', e.customer,
       coalesce((SELECT string_agg(a.lookup_key, ', ' ORDER BY a.lookup_key COLLATE "C")
                   FROM stripe_billing.active_entitlements a WHERE a.customer = e.customer), '')
  FROM stripe_billing.entitlement_summaries e;

CREATE TABLE IF NOT EXISTS btest.stripe_rows (kind text, id text, state text);

-- Rows that differ: "local" ones not at Stripe, "stripe" ones not here.
CREATE OR REPLACE VIEW btest.differences AS
SELECT 'local' AS side, * FROM (SELECT * FROM btest.local_rows EXCEPT SELECT * FROM btest.stripe_rows) l
UNION ALL
SELECT 'stripe', * FROM (SELECT * FROM btest.stripe_rows EXCEPT SELECT * FROM btest.local_rows) s;
