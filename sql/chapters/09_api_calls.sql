
--------------------------------------------------------------------------
-- Stripe API calls
--
-- stripe_api (C) makes the request: HTTPS to stripe_billing.api_base with
-- the configured key and version, an Idempotency-Key on every POST and
-- DELETE, retries of what Stripe says may be retried, Stripe's errors as
-- SQLSTATEs SBA01..SBA07, and the returned object applied to the local
-- tables at once.  The functions below build the calls apps need.  None is
-- executable by PUBLIC: grant them to the application's backend role.
-- Each takes account last: NULL for the platform's own Stripe account, a
-- connected account's id (Stripe Connect) to call as that account (the
-- Stripe-Account header, checked before any request); what Stripe returns
-- is then recorded as that account's, and the customers and subscriptions
-- they look up here are that account's.
--------------------------------------------------------------------------

CREATE FUNCTION stripe_billing.stripe_api(method text, path text, params jsonb DEFAULT '{}',
                                          idempotency_key text DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_api'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_api(text, text, jsonb, text, text) FROM PUBLIC;

-- Stripe's error behind an SBA01..SBA06 error, read from its DETAIL, whose
-- form is stable (see api.c): "<method> <path>: HTTP <status>, type <type>,
-- code <code>, param <param>, request <request id>.", "(none)" standing for
-- what Stripe did not send.  Stripe's errors are classified by their code
-- and type, never by their message, which Stripe may reword.  All NULL for
-- another text.
CREATE FUNCTION stripe_billing._api_error(detail text, OUT http_status integer, OUT type text,
                                          OUT code text, OUT param text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT m[1]::integer, nullif(m[2], '(none)'), nullif(m[3], '(none)'), nullif(m[4], '(none)')
    FROM (SELECT regexp_match(detail, '^\S+ \S+: HTTP (\d{3}), type (\S+), code (\S+), param (\S+), request \S+\.$') AS m) s
$$;

-- Whether any subscription of the user on the account (NULL: the
-- platform's own) ever had a trial, whatever its status (one trial per
-- user and account: stripe_create_checkout).  (PL/pgSQL, not SQL: a SQL
-- function with SET is planned again at every call.)
CREATE FUNCTION stripe_billing._had_trial(target text, account text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN EXISTS (SELECT FROM stripe_billing.customers c
                   JOIN stripe_billing.subscriptions s ON s.customer = c.id
                  WHERE c.user_ref = target AND c.account IS NOT DISTINCT FROM _had_trial.account
                    AND (s.trial_start IS NOT NULL OR s.trial_end IS NOT NULL));
END
$$;

-- The user's Stripe customer on the account (NULL: the platform's own; a
-- user may have one on several accounts): the most recently created live
-- one, or NULL.  (PL/pgSQL, not SQL: its plan is cached across
-- transactions.)
CREATE FUNCTION stripe_billing._customer_of(target text, account text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN (SELECT c.id FROM stripe_billing.customers c
           WHERE c.user_ref = target AND c.account IS NOT DISTINCT FROM _customer_of.account AND NOT c.deleted
           ORDER BY c.created DESC NULLS LAST, c.id LIMIT 1);
END
$$;

-- Raises an invalid_parameter_value error naming the argument.
CREATE FUNCTION stripe_billing._bad_argument(argument text, problem text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION '% %', argument, problem USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- A Stripe id that goes into a request path, checked: letters, digits and
-- '_' only (libcurl resolves dot segments, so '../customers/x' would reach
-- another endpoint).  Raises invalid_parameter_value naming the argument.
CREATE FUNCTION stripe_billing._path_id(argument text, id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF coalesce(id, '') = '' THEN
    PERFORM stripe_billing._bad_argument(argument, 'must not be empty');
  END IF;
  IF id !~ '^[A-Za-z0-9_]+$' OR length(id) > 255 THEN
    PERFORM stripe_billing._bad_argument(argument,
        format('must be a Stripe id (letters, digits and _, at most 255), not %s', quote_literal(left(id, 100))));
  END IF;
  RETURN id;
END
$$;

-- A Checkout session for the user: subscription or one-time payment (C: the
-- form is built directly, the returned session recorded in checkout_sessions).
-- Connect: with account, a direct charge on that connected account (its
-- customer, its price), the platform's share application_fee_percent
-- (subscription) or application_fee_amount (payment); on the platform, a
-- destination charge to transfer_destination, settled by on_behalf_of.
-- A discount: promotion_code (its promo_ id, or the code a customer types)
-- or coupon (an id); not with allow_promotion_codes (_checkout_discount).
CREATE FUNCTION stripe_billing.stripe_create_checkout(
    user_ref text, price text, success_url text, cancel_url text,
    quantity integer DEFAULT 1, mode text DEFAULT 'subscription', trial_days integer DEFAULT NULL,
    allow_promotion_codes boolean DEFAULT false, customer_email text DEFAULT NULL,
    metadata jsonb DEFAULT '{}', idempotency_key text DEFAULT NULL, allow_repeat_trial boolean DEFAULT false,
    application_fee_percent numeric DEFAULT NULL, application_fee_amount bigint DEFAULT NULL,
    transfer_destination text DEFAULT NULL, on_behalf_of text DEFAULT NULL, account text DEFAULT NULL,
    promotion_code text DEFAULT NULL, coupon text DEFAULT NULL,
    OUT session_id text, OUT url text, OUT expires_at timestamptz, OUT trial_granted boolean)
AS 'MODULE_PATHNAME', 'stripe_create_checkout'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_checkout(text, text, text, text, integer, text, integer,
                                                            boolean, text, jsonb, text, boolean,
                                                            numeric, bigint, text, text, text,
                                                            text, text) FROM PUBLIC;

-- A customer portal session for the user (their customer on the account);
-- returns its URL.
CREATE FUNCTION stripe_billing.stripe_create_portal_session(user_ref text, return_url text DEFAULT NULL,
                                                            idempotency_key text DEFAULT NULL,
                                                            account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customer_id text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  customer_id := stripe_billing._customer_of(user_ref, account);
  IF customer_id IS NULL THEN
    RAISE EXCEPTION 'user % has no Stripe customer%', coalesce(quote_literal(user_ref), 'NULL'),
                    CASE WHEN account IS NOT NULL THEN ' on account ' || account ELSE '' END
          USING ERRCODE = 'no_data_found',
                HINT = 'A completed Checkout session, customer metadata or stripe_link_customer() links one.';
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/billing_portal/sessions',
                                   jsonb_strip_nulls(jsonb_build_object('customer', customer_id,
                                                                        'return_url', return_url)),
                                   idempotency_key, account)->>'url';
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_create_portal_session(text, text, text, text) FROM PUBLIC;

-- Cancels a subscription (of the account) at the period end (default) or now.
CREATE FUNCTION stripe_billing.stripe_cancel_subscription(subscription_id text, at_period_end boolean DEFAULT true,
                                                          idempotency_key text DEFAULT NULL,
                                                          account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(at_period_end, true) THEN
    RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                     '{"cancel_at_period_end": true}', idempotency_key, account);
  END IF;
  RETURN stripe_billing.stripe_api('DELETE', '/v1/subscriptions/' || subscription_id, '{}', idempotency_key,
                                   account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_cancel_subscription(text, boolean, text, text) FROM PUBLIC;

-- Takes back a cancellation scheduled for the period end.
CREATE FUNCTION stripe_billing.stripe_resume_subscription(subscription_id text, idempotency_key text DEFAULT NULL,
                                                          account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                   '{"cancel_at_period_end": false}', idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_resume_subscription(text, text, text) FROM PUBLIC;

-- The one live item of a subscription (of the account) whose price is to
-- change, the arguments of the change checked first (naming the bad one).
CREATE FUNCTION stripe_billing._price_change_item(subscription_id text, new_price text,
                                                  proration_behavior text, quantity integer,
                                                  caller text, account text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_ids text[];
  known_on text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  IF coalesce(new_price, '') = '' THEN PERFORM stripe_billing._bad_argument('new_price', 'must not be empty'); END IF;
  IF proration_behavior IS NULL OR proration_behavior NOT IN ('create_prorations', 'always_invoice', 'none') THEN
    PERFORM stripe_billing._bad_argument('proration_behavior',
        'must be ''create_prorations'', ''always_invoice'' or ''none''');
  END IF;
  IF quantity IS NOT NULL AND quantity < 1 THEN PERFORM stripe_billing._bad_argument('quantity', 'must be at least 1'); END IF;
  -- (a subscription known here as another account's: the call names the wrong account)
  SELECT s.account INTO known_on FROM stripe_billing.subscriptions s
   WHERE s.id = subscription_id AND s.account IS DISTINCT FROM _price_change_item.account;
  IF FOUND THEN
    PERFORM stripe_billing._bad_argument('account',
        format('must be the account of subscription %s, %s, not %s', subscription_id,
               coalesce(known_on, 'NULL (the platform''s)'), coalesce(account, 'NULL (the platform''s)')));
  END IF;
  SELECT array_agg(i.id ORDER BY i.id) INTO item_ids
    FROM stripe_billing.subscription_items i
   WHERE i.subscription = subscription_id AND i.account IS NOT DISTINCT FROM _price_change_item.account
     AND NOT i.deleted;
  IF coalesce(array_length(item_ids, 1), 0) <> 1 THEN
    RAISE EXCEPTION 'subscription % has % live items here; % changes single-item subscriptions',
                    subscription_id, coalesce(array_length(item_ids, 1), 0), caller
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Use stripe_api(''POST'', ''/v1/subscriptions/<id>'', ...) with items[] for others.';
  END IF;
  RETURN item_ids[1];
END
$$;

-- What a price change would bill, as Stripe computes it (POST
-- /v1/invoices/create_preview with the item swapped, at proration_date =
-- now, to the second); nothing changes, here or at Stripe.  Returns
-- {amount_due, total, currency, proration_date, lines: [{description,
-- amount, quantity, price, proration, period_start, period_end}]}; pass
-- proration_date to stripe_change_price to be charged exactly that.  (The
-- preview itself: _preview_item_changes, chapter 21.)
CREATE FUNCTION stripe_billing.stripe_preview_price_change(subscription_id text, new_price text,
                                                           quantity integer DEFAULT NULL,
                                                           proration_behavior text DEFAULT 'create_prorations',
                                                           account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_preview_price_change', account);
BEGIN
  RETURN stripe_billing._preview_item_changes(subscription_id,
      jsonb_build_array(jsonb_strip_nulls(jsonb_build_object('id', item_id, 'price', new_price, 'quantity', quantity))),
      proration_behavior, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_preview_price_change(text, text, integer, text, text) FROM PUBLIC;

-- Moves a single-item subscription to another price: now (with
-- proration_date, a preview's, Stripe prorates as of then, as the preview
-- showed), or at => 'period_end': from the current period's end, without
-- prorations, through a subscription schedule (see
-- _change_price_at_period_end; proration_behavior is then not used, and
-- proration_date must be NULL); a change pending from an earlier call is
-- replaced, stripe_cancel_pending_change takes it back.  Returns the
-- subscription (now) or its schedule (period_end).
CREATE FUNCTION stripe_billing.stripe_change_price(subscription_id text, new_price text,
                                                   proration_behavior text DEFAULT 'create_prorations',
                                                   quantity integer DEFAULT NULL,
                                                   idempotency_key text DEFAULT NULL,
                                                   proration_date timestamptz DEFAULT NULL,
                                                   at text DEFAULT 'now',
                                                   account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item_id text := stripe_billing._price_change_item(subscription_id, new_price, proration_behavior, quantity,
                                                    'stripe_change_price', account);
BEGIN
  IF at IS NULL OR at NOT IN ('now', 'period_end') THEN
    PERFORM stripe_billing._bad_argument('at', 'must be ''now'' or ''period_end''');
  END IF;
  IF at = 'period_end' THEN
    IF proration_date IS NOT NULL THEN
      PERFORM stripe_billing._bad_argument('proration_date',
          'must be NULL when at is ''period_end'' (the new price starts at the period end, without prorations)');
    END IF;
    RETURN stripe_billing._change_price_at_period_end(subscription_id, new_price, quantity, idempotency_key,
                                                      account);
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_strip_nulls(jsonb_build_object(
          'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                       'id', item_id, 'price', new_price, 'quantity', quantity))),
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM proration_date)::bigint)),
      idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_change_price(text, text, text, integer, text, timestamptz, text, text)
    FROM PUBLIC;
