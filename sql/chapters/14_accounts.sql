
--------------------------------------------------------------------------
-- Stripe Connect: connected accounts
--
-- Every ledger and billing row names its account (NULL: the platform's
-- own); the events of a connected account carry it at their top level,
-- and every call made for one sends it as Stripe-Account.  The accounts
-- themselves are rows of stripe_billing.accounts.
--------------------------------------------------------------------------

-- Raises invalid_parameter_value, naming the argument, unless account is
-- NULL (the platform's own) or a connected account's id: it goes into the
-- Stripe-Account header.  The value is quoted cut at 100 characters, each
-- one that is not printable ASCII shown as '?' (it may be the very CR or LF
-- refused), as the C functions quote it (sb_check_account).
CREATE FUNCTION stripe_billing._check_account(argument text, account text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF account IS NOT NULL AND account !~ '^acct_[A-Za-z0-9]{1,250}$' THEN
    PERFORM stripe_billing._bad_argument(argument,
      format('must be a connected account''s id (acct_ and letters or digits), not ''%s''',
             replace(left(regexp_replace(account, '[^\x20-\x7e]', '?', 'g'), 100), '''', '''''')));
  END IF;
END
$$;

-- A connected account, from account.updated (or a listed account).
CREATE FUNCTION stripe_billing._apply_account(o jsonb, ev_type text, ev_id text, ev_created timestamptz,
                                              ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO stripe_billing.accounts AS t
         (id, business_name, country, default_currency, charges_enabled, payouts_enabled, details_submitted,
          requirements_due, type, controller, created, raw, last_event_id, last_event_created)
  VALUES (o->>'id', o->'business_profile'->>'name', o->>'country', o->>'default_currency',
          (o->>'charges_enabled')::boolean, (o->>'payouts_enabled')::boolean,
          (o->>'details_submitted')::boolean,
          ARRAY(SELECT jsonb_array_elements_text(coalesce(o->'requirements'->'currently_due', '[]'))),
          coalesce(o->>'type', o->'controller'->>'type'), o->'controller', stripe_billing._ts(o->'created'),
          o, ev_id, ev_created)
  ON CONFLICT (id) DO UPDATE SET
         business_name = EXCLUDED.business_name, country = EXCLUDED.country,
         default_currency = EXCLUDED.default_currency, charges_enabled = EXCLUDED.charges_enabled,
         payouts_enabled = EXCLUDED.payouts_enabled, details_submitted = EXCLUDED.details_submitted,
         requirements_due = EXCLUDED.requirements_due, type = EXCLUDED.type, controller = EXCLUDED.controller,
         created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now()
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created, false, false);
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;

-- The platform's access to a connected account (account.application.
-- authorized or .deauthorized, whose object is the platform's application):
-- the newer of the two events wins.  A deauthorized account keeps its rows;
-- the worker stops polling it.
CREATE FUNCTION stripe_billing._apply_account_application(o jsonb, ev_type text, ev_id text,
                                                          ev_created timestamptz, ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF ev_account IS NULL THEN
    RAISE EXCEPTION 'invalid Stripe object: an % event must name its account', ev_type
          USING ERRCODE = 'SBE03';
  END IF;
  IF ev_type = 'account.application.deauthorized' THEN
    UPDATE stripe_billing.accounts
       SET deauthorized_at = ev_created, updated_at = now()
     WHERE id = ev_account AND (authorized_at IS NULL OR authorized_at < ev_created)
       AND (deauthorized_at IS NULL OR deauthorized_at < ev_created);
  ELSIF ev_type = 'account.application.authorized' THEN
    UPDATE stripe_billing.accounts
       SET authorized_at = ev_created,
           deauthorized_at = CASE WHEN deauthorized_at <= ev_created THEN NULL ELSE deauthorized_at END,
           updated_at = now()
     WHERE id = ev_account AND (authorized_at IS NULL OR authorized_at < ev_created);
  ELSE
    RETURN 'ignored';
  END IF;
  RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END
$$;
