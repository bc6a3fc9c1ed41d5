-- Stripe Connect's API calls without the network (the requests themselves
-- are tested against the fake Stripe by test/integration/api_calls.sh):
-- every function that calls Stripe refuses a bad account (22023) before
-- any request, Checkout refuses the Connect combinations Stripe refuses,
-- naming the argument, and the customer, trial, subscription and usage
-- rows a call reads or writes are its account's.  No API key is set: a
-- call that passed its checks would reach the request and fail there
-- (SBC02), so a 22023 here is raised before any request.
CREATE EXTENSION stripe_billing;
SET search_path = stripe_billing, public;
RESET stripe_billing.api_key;

-- SQLSTATE and message of a statement, or 'ok'
CREATE FUNCTION pg_temp.try(statement text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE statement;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- Bad accounts, header injection included, refused by every function
-- that calls Stripe, before any request; the message never holds the CR
-- or LF it refuses.
CREATE TEMP TABLE refusals AS
SELECT to_json(a) AS account, c AS call, n, pg_temp.try(format(c, quote_literal(a))) AS outcome
  FROM unnest(ARRAY['cus_1', 'acct_', E'acct_x\r\nX-Evil: 1', 'acct_../v1', 'ACCT_1', 'acct_1 ']) a,
       unnest(ARRAY[
         'SELECT stripe_api(''GET'', ''/v1/customers'', account => %s)',
         'SELECT stripe_create_checkout(''u1'', ''price_1'', ''https://a.example/ok'', ''https://a.example/no'', account => %s)',
         'SELECT stripe_create_portal_session(''u1'', account => %s)',
         'SELECT stripe_cancel_subscription(''sub_1'', account => %s)',
         'SELECT stripe_resume_subscription(''sub_1'', account => %s)',
         'SELECT stripe_preview_price_change(''sub_1'', ''price_2'', account => %s)',
         'SELECT stripe_change_price(''sub_1'', ''price_2'', account => %s)',
         'SELECT stripe_report_usage(''u1'', ''api_calls'', 1, account => %s)',
         'SELECT _list_page(''/v1/customers'', ''{}'', account => %s)',
         'SELECT _list_prefetch(''/v1/customers'', ''{}'', account => %s)',
         'SELECT _events_page(''evt_1'', false, account => %s)',
         'SELECT _events_page_text(''evt_1'', account => %s)',
         'SELECT _events_text(''{}'', account => %s)',
         'SELECT _meter_stream_send(''{}'', account => %s)']) WITH ORDINALITY AS calls(c, n);
SELECT account, call, outcome FROM refusals ORDER BY account::text, n;
SELECT count(*) AS calls, count(*) FILTER (WHERE outcome NOT LIKE '22023: account must be %') AS not_refused,
       count(*) FILTER (WHERE outcome ~ '[\r\n]') AS messages_with_cr_or_lf
  FROM refusals;
SELECT count(*) AS rows_written FROM usage_outbox;

-- A good account passes the checks and reaches the request (no key here).
SELECT pg_temp.try('SELECT stripe_api(''GET'', ''/v1/customers'', account => ''acct_1A2b3C'')');
SELECT pg_temp.try('SELECT stripe_cancel_subscription(''sub_1'', account => ''acct_1A2b3C'')');

-- Checkout's Connect arguments: what Stripe refuses is refused first,
-- naming the argument; what it takes reaches the request.
SELECT o AS options, pg_temp.try(format(
         'SELECT stripe_create_checkout(''u1'', ''price_1'', ''https://a.example/ok'', ''https://a.example/no'', %s)',
         o)) AS outcome
  FROM unnest(ARRAY[
    -- direct charges (account)
    'account => ''acct_A'', application_fee_percent => 12.5',
    'account => ''acct_A'', mode => ''payment'', application_fee_amount => 250',
    'account => ''acct_A'', mode => ''payment'', application_fee_percent => 10',
    'account => ''acct_A'', application_fee_amount => 250',
    'account => ''acct_A'', application_fee_percent => 100.01',
    'account => ''acct_A'', application_fee_percent => -1',
    'account => ''acct_A'', application_fee_percent => 12.345',
    'account => ''acct_A'', application_fee_percent => ''NaN''',
    'account => ''acct_A'', mode => ''payment'', application_fee_amount => -1',
    'account => ''acct_A'', transfer_destination => ''acct_B''',
    'account => ''acct_A'', on_behalf_of => ''acct_A''',
    -- destination charges (the platform)
    'transfer_destination => ''acct_B''',
    'transfer_destination => ''acct_B'', on_behalf_of => ''acct_B''',
    'mode => ''payment'', transfer_destination => ''acct_B'', on_behalf_of => ''acct_B'', application_fee_amount => 100',
    'transfer_destination => ''acct_B'', application_fee_percent => 5',
    'on_behalf_of => ''acct_B''',
    'transfer_destination => ''acct_B'', on_behalf_of => ''acct_C''',
    'transfer_destination => ''cus_B''',
    'transfer_destination => E''acct_B\r\nX-Evil: 1''',
    'on_behalf_of => ''acct_''',
    'application_fee_percent => 5',
    'mode => ''payment'', application_fee_amount => 100']) o;

-- A user with a customer on the platform and on two connected accounts:
-- each call finds the one of its account.
SELECT stripe_link_customer('u_multi', 'cus_platform');
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_ca', 'object', 'event', 'type', 'customer.created',
         'created', 1700000001, 'livemode', false, 'account', 'acct_A',
         'data', jsonb_build_object('object', '{"id": "cus_on_a", "object": "customer", "created": 1700000001,
                                                "metadata": {"user_ref": "u_multi"}}'::jsonb)));
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_cb', 'object', 'event', 'type', 'customer.created',
         'created', 1700000002, 'livemode', false, 'account', 'acct_B',
         'data', jsonb_build_object('object', '{"id": "cus_on_b", "object": "customer", "created": 1700000002,
                                                "metadata": {"user_ref": "u_multi"}}'::jsonb)));
SELECT a AS account, _customer_of('u_multi', a) AS customer
  FROM unnest(ARRAY[NULL, 'acct_A', 'acct_B', 'acct_C']) a;
SELECT _customer_of('u_multi') AS platform_default;
-- the portal of an account without the user's customer says which account
SELECT pg_temp.try('SELECT stripe_create_portal_session(''u_multi'', account => ''acct_C'')');

-- One trial per user and account: a trial on acct_A leaves the platform's
-- and acct_B's to take.
SELECT stripe_apply_event(jsonb_build_object('id', 'evt_sa', 'object', 'event',
         'type', 'customer.subscription.created', 'created', 1700000003, 'livemode', false, 'account', 'acct_A',
         'data', jsonb_build_object('object', '{"id": "sub_on_a", "object": "subscription", "customer": "cus_on_a",
             "status": "trialing", "trial_start": 1700000000, "trial_end": 1701000000, "metadata": {},
             "items": {"object": "list", "has_more": false, "data": [{"id": "si_on_a", "quantity": 1,
               "current_period_start": 1700000000, "current_period_end": 1701000000,
               "price": {"id": "price_a", "product": "prod_a"}}]}}'::jsonb)));
SELECT a AS account, _had_trial('u_multi', a) AS had_trial FROM unnest(ARRAY[NULL, 'acct_A', 'acct_B']) a;

-- A price change names the subscription's account: another is refused,
-- naming account, before any request.
SELECT pg_temp.try('SELECT stripe_change_price(''sub_on_a'', ''price_b'')');
SELECT pg_temp.try('SELECT stripe_preview_price_change(''sub_on_a'', ''price_b'', account => ''acct_B'')');
SELECT pg_temp.try('SELECT stripe_change_price(''sub_on_a'', ''price_b'', account => ''acct_A'')');

-- Usage rows carry their account; the column takes connected accounts' ids only.
SELECT stripe_report_usage('u_multi', 'api_calls', 1) IS NOT NULL AS platform_row,
       stripe_report_usage('u_multi', 'api_calls', 2, account => 'acct_A') IS NOT NULL AS acct_a_row;
SELECT value, account FROM usage_outbox ORDER BY id;
SELECT pg_temp.try('INSERT INTO usage_outbox (user_ref, event_name, value, occurred_at, account)
                    VALUES (''u'', ''e'', 1, now(), E''acct_x\r\nX-Evil: 1'')');
-- a row waits for the user's customer on its own account
SELECT stripe_report_usage('u_multi', 'api_calls', 3, account => 'acct_C') IS NOT NULL AS acct_c_row;
SELECT stripe_send_usage();
SELECT value, account, last_error FROM usage_outbox ORDER BY id;
DROP EXTENSION stripe_billing;
