
--------------------------------------------------------------------------
-- Subscription changes from SQL (issue 27, part A): a price change at the
-- period end (a subscription schedule) and its cancellation, pausing and
-- resuming collection, add-ons and seats (items), and a preview of item
-- changes.  As the calls of chapter 09: every argument is checked before
-- any request (22023 naming it), account is the last argument, every
-- mutating request carries an idempotency key (the caller's, or a fresh
-- one), and what Stripe returns is applied to the local tables at once.
-- None is executable by PUBLIC.
--------------------------------------------------------------------------

-- Checks the arguments every call on a subscription shares: the account
-- (NULL: the platform's), the subscription's id (it goes into a path), and
-- that the subscription, when known here, is the account's.
CREATE FUNCTION stripe_billing._check_subscription_call(subscription_id text, account text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  known_on text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_id', subscription_id);
  SELECT s.account INTO known_on FROM stripe_billing.subscriptions s
   WHERE s.id = subscription_id AND s.account IS DISTINCT FROM _check_subscription_call.account;
  IF FOUND THEN
    PERFORM stripe_billing._bad_argument('account',
        format('must be the account of subscription %s, %s, not %s', subscription_id,
               coalesce(known_on, 'NULL (the platform''s)'), coalesce(account, 'NULL (the platform''s)')));
  END IF;
END
$$;

-- Checks a proration_behavior argument.
CREATE FUNCTION stripe_billing._check_proration_behavior(proration_behavior text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF proration_behavior IS NULL OR proration_behavior NOT IN ('create_prorations', 'always_invoice', 'none') THEN
    PERFORM stripe_billing._bad_argument('proration_behavior',
        'must be ''create_prorations'', ''always_invoice'' or ''none''');
  END IF;
END
$$;

-- The live item subscription_item_id of a subscription known here (of the
-- account): its subscription, and how many live items that one has.
CREATE FUNCTION stripe_billing._live_item(subscription_item_id text, account text,
                                          OUT subscription text, OUT live_items integer)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  known_on text;
BEGIN
  PERFORM stripe_billing._check_account('account', account);
  PERFORM stripe_billing._path_id('subscription_item_id', subscription_item_id);
  SELECT i.subscription, i.account INTO subscription, known_on
    FROM stripe_billing.subscription_items i
   WHERE i.id = subscription_item_id AND NOT i.deleted;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'subscription_item_id % is not a live item of a subscription known here', subscription_item_id
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Items are known from their subscription''s events, or stripe_api(''GET'', ''/v1/subscriptions/<id>'').';
  END IF;
  IF known_on IS DISTINCT FROM account THEN
    PERFORM stripe_billing._bad_argument('account',
        format('must be the account of subscription item %s, %s, not %s', subscription_item_id,
               coalesce(known_on, 'NULL (the platform''s)'), coalesce(account, 'NULL (the platform''s)')));
  END IF;
  SELECT count(*) INTO live_items FROM stripe_billing.subscription_items i
   WHERE i.subscription = _live_item.subscription AND NOT i.deleted;
END
$$;

-- A price change at the current period's end (stripe_change_price's
-- at => 'period_end'), through the subscription's schedule: Stripe's
-- subscription is read with its schedule (one made elsewhere, or by an
-- earlier call whose answer is not here yet, is found that way); without
-- one, a schedule is made from the subscription (its current phase: the
-- current period, as it is); then the schedule's phases become the current
-- one, as it is, and one of the new price from its end, entered without
-- prorations, after which the schedule releases the subscription (which
-- stays on the new price).  A pending change made before is replaced.
-- Returns the schedule.
CREATE FUNCTION stripe_billing._change_price_at_period_end(subscription_id text, new_price text, quantity integer,
                                                           idempotency_key text, account text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  sub jsonb;
  sched jsonb;
  cur jsonb;
  qty jsonb;
BEGIN
  sub := stripe_billing.stripe_api('GET', '/v1/subscriptions/' || subscription_id, '{"expand": ["schedule"]}',
                                   NULL, account);
  IF jsonb_typeof(sub->'schedule') = 'object' THEN
    sched := sub->'schedule';
  ELSIF jsonb_typeof(sub->'schedule') = 'string' THEN
    sched := stripe_billing.stripe_api('GET', '/v1/subscription_schedules/'
                                              || stripe_billing._path_id('schedule', sub->>'schedule'),
                                       '{}', NULL, account);
  ELSE
    -- (the caller's key, when given, makes a retry of the call find the
    -- same schedule: Stripe replays its creation)
    sched := stripe_billing.stripe_api('POST', '/v1/subscription_schedules',
                                       jsonb_build_object('from_subscription', subscription_id),
                                       CASE WHEN idempotency_key <> '' THEN 'sb_schedule_' || md5(idempotency_key) END,
                                       account);
  END IF;
  SELECT p INTO cur FROM jsonb_array_elements(sched->'phases') p
   WHERE p->'start_date' = sched->'current_phase'->'start_date';
  IF cur IS NULL THEN
    RAISE EXCEPTION 'subscription schedule % of subscription % has no current phase (status %)',
                    sched->>'id', subscription_id, coalesce(sched->>'status', 'unknown')
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Change a schedule that has not started with stripe_api(''POST'', ''/v1/subscription_schedules/<id>'', ...).';
  END IF;
  qty := coalesce(to_jsonb(quantity), sub->'items'->'data'->0->'quantity');
  RETURN stripe_billing.stripe_api('POST', '/v1/subscription_schedules/' || stripe_billing._path_id('schedule', sched->>'id'),
      jsonb_build_object(
          'end_behavior', 'release',
          'proration_behavior', 'none',
          'phases', jsonb_build_array(
              -- the current phase as it is (its prices, dates and trial)
              jsonb_strip_nulls(jsonb_build_object(
                  'items', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                                                 'price', stripe_billing._id(e.i->'price'), 'quantity', e.i->'quantity'))
                                             ORDER BY e.n)
                              FROM jsonb_array_elements(cur->'items') WITH ORDINALITY e(i, n)),
                  'start_date', cur->'start_date', 'end_date', cur->'end_date', 'trial_end', cur->'trial_end')),
              -- then the new price, from the period's end
              jsonb_build_object(
                  'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object('price', new_price, 'quantity', qty))),
                  'proration_behavior', 'none'))),
      idempotency_key, account);
END
$$;

-- Takes back a price change pending at the period end: releases the
-- subscription's schedule (the subscription stays as it is now, and no
-- later phase of the schedule happens).  Stripe's subscription is read
-- with its schedule first; without one, nothing is pending: NULL, and no
-- other request.  Returns the released schedule.
CREATE FUNCTION stripe_billing.stripe_cancel_pending_change(subscription_id text, idempotency_key text DEFAULT NULL,
                                                            account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  sub jsonb;
BEGIN
  PERFORM stripe_billing._check_subscription_call(subscription_id, account);
  sub := stripe_billing.stripe_api('GET', '/v1/subscriptions/' || subscription_id, '{}', NULL, account);
  IF stripe_billing._id(sub->'schedule') IS NULL THEN
    RETURN NULL;
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/subscription_schedules/'
                                           || stripe_billing._path_id('schedule', stripe_billing._id(sub->'schedule'))
                                           || '/release',
                                   '{}', idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_cancel_pending_change(text, text, text) FROM PUBLIC;

-- Pauses collection: Stripe keeps the subscription active and stops
-- charging for it (behavior: its invoices are voided, kept as drafts, or
-- marked uncollectible) until resumes_at, or until unpaused.  Access
-- follows stripe_billing.paused_collection_access.
CREATE FUNCTION stripe_billing.stripe_pause_subscription(subscription_id text, behavior text DEFAULT 'void',
                                                         resumes_at timestamptz DEFAULT NULL,
                                                         idempotency_key text DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_subscription_call(subscription_id, account);
  IF behavior IS NULL OR behavior NOT IN ('void', 'keep_as_draft', 'mark_uncollectible') THEN
    PERFORM stripe_billing._bad_argument('behavior', 'must be ''void'', ''keep_as_draft'' or ''mark_uncollectible''');
  END IF;
  IF resumes_at <= clock_timestamp() THEN
    PERFORM stripe_billing._bad_argument('resumes_at', format('must be in the future, not %s', resumes_at));
  END IF;
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_build_object('pause_collection', jsonb_strip_nulls(jsonb_build_object(
          'behavior', behavior, 'resumes_at', floor(extract(epoch FROM resumes_at))::bigint))),
      idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_pause_subscription(text, text, timestamptz, text, text) FROM PUBLIC;

-- Resumes collection (pause_collection unset: an empty value).
CREATE FUNCTION stripe_billing.stripe_unpause_subscription(subscription_id text, idempotency_key text DEFAULT NULL,
                                                           account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_subscription_call(subscription_id, account);
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
                                   '{"pause_collection": null}', idempotency_key, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_unpause_subscription(text, text, text) FROM PUBLIC;

-- Sends item changes (Stripe's items[] of a subscription update) with the
-- proration arguments; what Stripe returns, the whole subscription, is
-- applied at once.
CREATE FUNCTION stripe_billing._change_items(subscription_id text, items jsonb, proration_behavior text,
                                             idempotency_key text, proration_date timestamptz, account text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN stripe_billing.stripe_api('POST', '/v1/subscriptions/' || subscription_id,
      jsonb_strip_nulls(jsonb_build_object(
          'items', items, 'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM proration_date)::bigint)),
      idempotency_key, account);
END
$$;

-- Adds an item (an add-on, a seat price) to a subscription; with
-- proration_date (a preview's), prorated as of then.
CREATE FUNCTION stripe_billing.stripe_add_item(subscription_id text, price text, quantity integer DEFAULT 1,
                                               proration_behavior text DEFAULT 'create_prorations',
                                               idempotency_key text DEFAULT NULL,
                                               proration_date timestamptz DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  existing text;
BEGIN
  PERFORM stripe_billing._check_subscription_call(subscription_id, account);
  IF coalesce(price, '') = '' THEN
    PERFORM stripe_billing._bad_argument('price', 'must not be empty');
  END IF;
  IF quantity IS NULL OR quantity < 1 THEN
    PERFORM stripe_billing._bad_argument('quantity', 'must be at least 1');
  END IF;
  PERFORM stripe_billing._check_proration_behavior(proration_behavior);
  SELECT i.id INTO existing FROM stripe_billing.subscription_items i
   WHERE i.subscription = subscription_id AND i.price = stripe_add_item.price AND NOT i.deleted;
  IF FOUND THEN
    PERFORM stripe_billing._bad_argument('price',
        format('%s is already the price of item %s of subscription %s: change its quantity with stripe_set_quantity',
               price, existing, subscription_id));
  END IF;
  RETURN stripe_billing._change_items(subscription_id,
      jsonb_build_array(jsonb_build_object('price', price, 'quantity', quantity)),
      proration_behavior, idempotency_key, proration_date, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_add_item(text, text, integer, text, text, timestamptz, text) FROM PUBLIC;

-- Removes an item of a subscription (not its only live one: cancel the
-- subscription instead).
CREATE FUNCTION stripe_billing.stripe_remove_item(subscription_item_id text,
                                                  proration_behavior text DEFAULT 'create_prorations',
                                                  idempotency_key text DEFAULT NULL,
                                                  proration_date timestamptz DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item record;
BEGIN
  item := stripe_billing._live_item(subscription_item_id, account);
  PERFORM stripe_billing._check_proration_behavior(proration_behavior);
  IF item.live_items < 2 THEN
    RAISE EXCEPTION 'subscription item % is the only live item of subscription %', subscription_item_id,
                    item.subscription
          USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = 'Cancel the subscription with stripe_cancel_subscription() instead.';
  END IF;
  RETURN stripe_billing._change_items(item.subscription,
      jsonb_build_array(jsonb_build_object('id', subscription_item_id, 'deleted', true)),
      proration_behavior, idempotency_key, proration_date, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_remove_item(text, text, text, timestamptz, text) FROM PUBLIC;

-- Sets the quantity of an item (seats).
CREATE FUNCTION stripe_billing.stripe_set_quantity(subscription_item_id text, quantity integer,
                                                   proration_behavior text DEFAULT 'create_prorations',
                                                   idempotency_key text DEFAULT NULL,
                                                   proration_date timestamptz DEFAULT NULL, account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  item record;
BEGIN
  item := stripe_billing._live_item(subscription_item_id, account);
  IF quantity IS NULL OR quantity < 1 THEN
    PERFORM stripe_billing._bad_argument('quantity', 'must be at least 1');
  END IF;
  PERFORM stripe_billing._check_proration_behavior(proration_behavior);
  RETURN stripe_billing._change_items(item.subscription,
      jsonb_build_array(jsonb_build_object('id', subscription_item_id, 'quantity', quantity)),
      proration_behavior, idempotency_key, proration_date, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_set_quantity(text, integer, text, text, timestamptz, text)
    FROM PUBLIC;

-- Checks item changes as stripe_preview_items takes them, Stripe's items[]
-- of a subscription update: each {"price", "quantity"} (a new item),
-- {"id", "quantity"} or {"id", "price"} (a change), or {"id", "deleted":
-- true} (a removal).  Raises 22023 naming the bad element or field
-- (items[1].quantity).
CREATE FUNCTION stripe_billing._check_item_changes(items jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  e record;
  name text;
  key text;
BEGIN
  IF items IS NULL OR jsonb_typeof(items) <> 'array' OR jsonb_array_length(items) = 0 THEN
    PERFORM stripe_billing._bad_argument('items', 'must be a non-empty JSON array of item changes');
  END IF;
  FOR e IN SELECT x.v, x.n - 1 AS k FROM jsonb_array_elements(items) WITH ORDINALITY x(v, n) LOOP
    name := format('items[%s]', e.k);
    IF jsonb_typeof(e.v) <> 'object' THEN
      PERFORM stripe_billing._bad_argument(name, 'must be an object');
    END IF;
    SELECT k INTO key FROM jsonb_object_keys(e.v) k WHERE k NOT IN ('id', 'price', 'quantity', 'deleted') LIMIT 1;
    IF FOUND THEN
      PERFORM stripe_billing._bad_argument(name || '.' || key, 'is not a field of an item change (id, price, quantity, deleted)');
    END IF;
    IF e.v ? 'id' AND (jsonb_typeof(e.v->'id') <> 'string' OR e.v->>'id' !~ '^[A-Za-z0-9_]{1,255}$') THEN
      PERFORM stripe_billing._bad_argument(name || '.id', 'must be a Stripe id (letters, digits and _, at most 255)');
    END IF;
    IF e.v ? 'price' AND (jsonb_typeof(e.v->'price') <> 'string' OR e.v->>'price' = '') THEN
      PERFORM stripe_billing._bad_argument(name || '.price', 'must be a non-empty string');
    END IF;
    IF e.v ? 'quantity' AND (jsonb_typeof(e.v->'quantity') <> 'number' OR e.v->>'quantity' !~ '^[0-9]{1,9}$'
                             OR (e.v->>'quantity')::integer < 1) THEN
      PERFORM stripe_billing._bad_argument(name || '.quantity', 'must be an integer of at least 1');
    END IF;
    IF e.v ? 'deleted' AND jsonb_typeof(e.v->'deleted') <> 'boolean' THEN
      PERFORM stripe_billing._bad_argument(name || '.deleted', 'must be a boolean');
    END IF;
    IF coalesce((e.v->>'deleted')::boolean, false) AND (NOT e.v ? 'id' OR e.v ? 'price' OR e.v ? 'quantity') THEN
      PERFORM stripe_billing._bad_argument(name, 'removes an item: it takes id and deleted only');
    END IF;
    IF NOT e.v ? 'id' AND NOT e.v ? 'price' THEN
      PERFORM stripe_billing._bad_argument(name, 'must name an item (id) or a price for a new one');
    END IF;
  END LOOP;
END
$$;

-- What item changes would bill, as Stripe computes it (POST
-- /v1/invoices/create_preview with the subscription's items changed, at
-- proration_date = now, to the second); nothing changes, here or at
-- Stripe.  The answer of stripe_preview_price_change and
-- stripe_preview_items.
CREATE FUNCTION stripe_billing._preview_item_changes(subscription_id text, items jsonb, proration_behavior text,
                                                     account text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  at timestamptz := date_trunc('second', clock_timestamp());
  preview jsonb;
BEGIN
  preview := stripe_billing.stripe_api('POST', '/v1/invoices/create_preview', jsonb_strip_nulls(jsonb_build_object(
      'customer', (SELECT s.customer FROM stripe_billing.subscriptions s
                    WHERE s.id = subscription_id AND s.account IS NOT DISTINCT FROM _preview_item_changes.account),
      'subscription', subscription_id,
      'subscription_details', jsonb_build_object(
          'items', items,
          'proration_behavior', proration_behavior,
          'proration_date', extract(epoch FROM at)::bigint))),
      NULL, account);
  RETURN jsonb_build_object(
      'amount_due', preview->'amount_due', 'total', preview->'total', 'currency', preview->'currency',
      'proration_date', to_jsonb(at),
      'lines', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'description', e.l->'description', 'amount', e.l->'amount', 'quantity', e.l->'quantity',
                    'price', coalesce(e.l->'pricing'->'price_details'->'price', e.l->'price'->'id'),
                    'proration', coalesce(e.l->'parent'->'subscription_item_details'->'proration', e.l->'proration'),
                    'period_start', to_jsonb(to_timestamp((e.l->'period'->>'start')::bigint)),
                    'period_end', to_jsonb(to_timestamp((e.l->'period'->>'end')::bigint)))
                  ORDER BY e.n), '[]')
                  FROM jsonb_array_elements(preview->'lines'->'data') WITH ORDINALITY AS e(l, n)));
END
$$;

-- What adding, removing or changing items would bill: items as Stripe's
-- items[] of a subscription update (see _check_item_changes), e.g.
-- '[{"price": "price_seat", "quantity": 3}]', '[{"id": "si_x", "quantity":
-- 5}]' or '[{"id": "si_x", "deleted": true}]'.  Returns what
-- stripe_preview_price_change returns; pass its proration_date to
-- stripe_add_item, stripe_remove_item or stripe_set_quantity to be charged
-- exactly that.
CREATE FUNCTION stripe_billing.stripe_preview_items(subscription_id text, items jsonb,
                                                    proration_behavior text DEFAULT 'create_prorations',
                                                    account text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._check_subscription_call(subscription_id, account);
  PERFORM stripe_billing._check_item_changes(items);
  PERFORM stripe_billing._check_proration_behavior(proration_behavior);
  RETURN stripe_billing._preview_item_changes(subscription_id, items, proration_behavior, account);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_preview_items(text, jsonb, text, text) FROM PUBLIC;
