
--------------------------------------------------------------------------
-- Links, retries and replays
--------------------------------------------------------------------------

-- Links the application's user to a Stripe customer (replacing any link).
CREATE FUNCTION stripe_billing.stripe_link_customer(user_ref text, customer_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  IF coalesce(user_ref, '') = '' THEN
    RAISE EXCEPTION 'user_ref must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(customer_id, '') = '' THEN
    RAISE EXCEPTION 'customer_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- (the customer's key, its linked user's and the new one's: see locks.c)
  PERFORM stripe_billing._lock_keys(NULL, ARRAY[customer_id], ARRAY[user_ref]);
  PERFORM stripe_billing._link_customer(customer_id, user_ref, false);
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_link_customer(text, text) FROM PUBLIC;

-- Applies recorded events again, in the order given, each in a
-- subtransaction of its own, and records their new outcomes; the locks of
-- them all are taken first (see locks.c).  The caller locks their rows.
CREATE FUNCTION stripe_billing._reapply_events(ids text[])
RETURNS TABLE (event_id text, event_type text, outcome text, error text)
AS 'MODULE_PATHNAME', 'stripe_reapply_events'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._reapply_events(text[]) FROM PUBLIC;

-- Re-applies failed events, oldest first; returns each one's new outcome.
-- Events kept as a raw body only (jsonb refused it) cannot be applied: they
-- are skipped and stay failed.  Events another session is retrying are
-- left to it.
CREATE FUNCTION stripe_billing.stripe_retry_failed_events(max_events integer DEFAULT NULL)
RETURNS TABLE (event_id text, event_type text, outcome text, error text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
  SELECT r.event_id, r.event_type, r.outcome, r.error
    FROM stripe_billing._reapply_events(ARRAY(
           SELECT ev.id FROM stripe_billing.events ev
            WHERE ev.outcome = 'failed' AND ev.payload IS NOT NULL ORDER BY ev.created, ev.id
            LIMIT max_events FOR UPDATE SKIP LOCKED)) r;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_retry_failed_events(integer) FROM PUBLIC;

-- Re-applies ignored events of a type (all types if NULL), oldest first,
-- e.g. after an upgrade maps a type that was not mapped when received.
CREATE FUNCTION stripe_billing.stripe_replay_events(event_type text)
RETURNS TABLE (event_id text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
  SELECT r.event_id, r.outcome
    FROM stripe_billing._reapply_events(ARRAY(
           SELECT ev.id FROM stripe_billing.events ev
            WHERE ev.outcome = 'ignored' AND (stripe_replay_events.event_type IS NULL
                                              OR ev.type = stripe_replay_events.event_type)
            ORDER BY ev.created, ev.id FOR UPDATE SKIP LOCKED)) r;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_replay_events(text) FROM PUBLIC;
