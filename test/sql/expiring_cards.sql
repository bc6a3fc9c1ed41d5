-- stripe_expiring_cards(within_days): the attached cards that expire (at
-- the end of their expiry month, UTC) within the next within_days days,
-- for dunning mail, with the customer's user and email, whether the card
-- is the customer's default payment method and whether the customer has a
-- live subscription; with the clock of stripe_billing.test_clock.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
SET stripe_billing.test_clock = '2026-03-15 00:00+00';

CREATE FUNCTION pg_temp.ev(id text, type text, created bigint, object jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                            'livemode', false, 'data', jsonb_build_object('object', object))
$$;
CREATE FUNCTION pg_temp.card(id text, customer text, exp_month int, exp_year int, type text DEFAULT 'card')
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'object', 'payment_method', 'customer', customer, 'type', type,
                            'card', CASE WHEN type = 'card' THEN jsonb_build_object(
                                      'brand', 'visa', 'last4', right(id, 4), 'exp_month', exp_month,
                                      'exp_year', exp_year) END)
$$;

SELECT count(*) FILTER (WHERE outcome = 'applied') AS applied FROM (
  SELECT stripe_apply_event(e) AS outcome FROM (VALUES
    (pg_temp.ev('evt_1', 'customer.created', 1770000001,
       '{"id": "cus_ann", "object": "customer", "email": "ann@example.com", "metadata": {"user_ref": "ann"},
         "invoice_settings": {"default_payment_method": "pm_ann_0326"}}')),
    (pg_temp.ev('evt_2', 'customer.created', 1770000002,
       '{"id": "cus_bob", "object": "customer", "email": "bob@example.com", "metadata": {"user_ref": "bob"}}')),
    (pg_temp.ev('evt_3', 'customer.created', 1770000003,
       '{"id": "cus_gone", "object": "customer", "email": "gone@example.com"}')),
    (pg_temp.ev('evt_4', 'customer.subscription.created', 1770000004,
       '{"id": "sub_ann", "object": "subscription", "customer": "cus_ann", "status": "past_due",
         "items": {"has_more": false, "data": []}}')),
    -- ann: March 2026 (expires at the end of this month), April 2026, and
    -- one that expired in February
    (pg_temp.ev('evt_5', 'payment_method.attached', 1770000005, pg_temp.card('pm_ann_0326', 'cus_ann', 3, 2026))),
    (pg_temp.ev('evt_6', 'payment_method.attached', 1770000006, pg_temp.card('pm_ann_0426', 'cus_ann', 4, 2026))),
    (pg_temp.ev('evt_7', 'payment_method.attached', 1770000007, pg_temp.card('pm_ann_0226', 'cus_ann', 2, 2026))),
    -- bob: December 2026, a SEPA debit (no card), and a March one detached
    (pg_temp.ev('evt_8', 'payment_method.attached', 1770000008, pg_temp.card('pm_bob_1226', 'cus_bob', 12, 2026))),
    (pg_temp.ev('evt_9', 'payment_method.attached', 1770000009, pg_temp.card('pm_bob_sepa', 'cus_bob', NULL, NULL, 'sepa_debit'))),
    (pg_temp.ev('evt_10', 'payment_method.attached', 1770000010, pg_temp.card('pm_bob_0326', 'cus_bob', 3, 2026))),
    (pg_temp.ev('evt_11', 'payment_method.detached', 1770000011, pg_temp.card('pm_bob_0326', NULL, 3, 2026))),
    -- a deleted customer's card expiring this month
    (pg_temp.ev('evt_12', 'payment_method.attached', 1770000012, pg_temp.card('pm_gone_0326', 'cus_gone', 3, 2026))),
    (pg_temp.ev('evt_13', 'customer.deleted', 1770000013, '{"id": "cus_gone", "object": "customer", "deleted": true}'))
  ) v(e)) a;

SELECT id, customer, card_exp_month, card_exp_year, detached FROM payment_methods ORDER BY id;

-- the next 30 days: ann's March card, her default, with her live
-- (past_due) subscription; not the expired one, not the detached one, not
-- the deleted customer's
SELECT * FROM stripe_expiring_cards(30);
-- the next 60 days: April's too
SELECT payment_method, expires_at, is_default FROM stripe_expiring_cards(60);
-- the default is 30 days
SELECT count(*) FROM stripe_expiring_cards();
-- a year: bob's December card too (bob has no subscription)
SELECT user_ref, payment_method, expires_at, live_subscription FROM stripe_expiring_cards(365);
-- 0 days: nothing (a card expiring this very instant has expired)
SELECT count(*) FROM stripe_expiring_cards(0);
-- on the last second of March the March card is still there; at midnight
-- (UTC, whatever the session's time zone) it has expired; a December card
-- expires at the new year
SET TimeZone = 'Pacific/Auckland';
SET stripe_billing.test_clock = '2026-03-31 23:59:59+00';
SELECT payment_method FROM stripe_expiring_cards(1);
SET stripe_billing.test_clock = '2026-04-01 00:00+00';
SELECT payment_method FROM stripe_expiring_cards(1);
SET stripe_billing.test_clock = '2026-12-31 23:59:59+00';
SELECT payment_method, expires_at AT TIME ZONE 'UTC' AS expires_at_utc FROM stripe_expiring_cards(1);
RESET TimeZone;

\set VERBOSITY terse
-- bad input, naming the argument
SELECT * FROM stripe_expiring_cards(-1);
SELECT * FROM stripe_expiring_cards(NULL);

-- it runs with its caller's rights: a role that may not read the tables
-- reads nothing through it
CREATE ROLE sb_expiring_reader;
SET ROLE sb_expiring_reader;
SELECT * FROM stripe_billing.stripe_expiring_cards(30);
RESET ROLE;
DROP ROLE sb_expiring_reader;

DROP EXTENSION stripe_billing;
