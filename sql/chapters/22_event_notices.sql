
--------------------------------------------------------------------------
-- Notices: events that have no row (issue 27, part A)
--
-- invoice.upcoming (an invoice Stripe will make in some days) and
-- customer.subscription.trial_will_end (a trial ends in three days) leave
-- nothing in the billing tables to watch, so they reach the application
-- through the channel of feature changes, NOTIFY stripe_billing, when the
-- event is first recorded (the ledger calls _notify_event: kinds.c lists
-- the types), for it to email the customer.  A notice has an event_id (a
-- feature change has a derivation); like every payload on the channel it
-- is a hint, which any role could also send: the event itself is in
-- stripe_billing.events.
--------------------------------------------------------------------------

-- An id for a notice: a string, or an expanded object's id, of at most 255
-- bytes; NULL otherwise (never an error).
CREATE FUNCTION stripe_billing._notice_id(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE WHEN pg_catalog.octet_length(x) OPERATOR(pg_catalog.<=) 255 THEN x END
    FROM (SELECT CASE pg_catalog.jsonb_typeof(v)
                   WHEN 'string' THEN v OPERATOR(pg_catalog.#>>) '{}'
                   WHEN 'object' THEN CASE WHEN pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'id')
                                                OPERATOR(pg_catalog.=) 'string'
                                           THEN v OPERATOR(pg_catalog.->>) 'id' END END) s(x)
$$;

-- An integer for a notice (an amount, Unix seconds): NULL unless a JSON
-- integer of at most 15 digits (never an error).
CREATE FUNCTION stripe_billing._notice_int(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE WHEN pg_catalog.jsonb_typeof(v) OPERATOR(pg_catalog.=) 'number'
               AND (v OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.~) '^-?[0-9]{1,15}$'
              THEN (v OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.int8 END
$$;

-- Sends the notice of an event (see above), at commit: {"event_type",
-- "event_id", "user_ref" (the customer's linked user, if any), "customer",
-- "subscription", "account"}, and for invoice.upcoming "amount_due",
-- "currency" and "next_payment_attempt" (Unix seconds), for a trial's end
-- "trial_end" (Unix seconds).  Every part is bounded (ids of at most 255
-- bytes, the user_ref an indexed key, integers), so the payload stays far
-- below NOTIFY's 8000 bytes, and nothing the event holds makes it raise.
CREATE FUNCTION stripe_billing._notify_event(ev jsonb, ev_account text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  o jsonb := CASE WHEN jsonb_typeof(ev->'data'->'object') = 'object' THEN ev->'data'->'object' ELSE '{}' END;
  ev_type text := stripe_billing._notice_id(ev->'type');
  ev_id text := stripe_billing._notice_id(ev->'id');
  customer_id text := stripe_billing._notice_id(o->'customer');
  user_ref text := (SELECT c.user_ref FROM stripe_billing.customers c WHERE c.id = customer_id);
BEGIN
  IF ev_type = 'invoice.upcoming' THEN
    PERFORM pg_notify('stripe_billing', json_build_object(
        'event_type', ev_type, 'event_id', ev_id, 'user_ref', user_ref, 'customer', customer_id,
        'subscription', coalesce(stripe_billing._notice_id(o->'subscription'),
                                 stripe_billing._notice_id(o->'parent'->'subscription_details'->'subscription')),
        'account', ev_account, 'amount_due', stripe_billing._notice_int(o->'amount_due'),
        'currency', CASE WHEN jsonb_typeof(o->'currency') = 'string' AND octet_length(o->>'currency') <= 10
                         THEN o->>'currency' END,
        'next_payment_attempt', stripe_billing._notice_int(o->'next_payment_attempt'))::text);
  ELSE
    PERFORM pg_notify('stripe_billing', json_build_object(
        'event_type', ev_type, 'event_id', ev_id, 'user_ref', user_ref, 'customer', customer_id,
        'subscription', stripe_billing._notice_id(o->'id'), 'account', ev_account,
        'trial_end', stripe_billing._notice_int(o->'trial_end'))::text);
  END IF;
END
$$;
