
--------------------------------------------------------------------------
-- Entitlements
--
-- A user has feature F when a subscription of one of their customers grants
-- it (through feature_grants: a price id, a price lookup key or a product
-- id) or Stripe Entitlements lists F for the customer, unless an open
-- dispute of the customer's revokes its features (stripe_billing.
-- dispute_access = 'revoke'; the default, 'keep', changes nothing).  The answer is
-- derived per user into user_features whenever an event or a grant changes
-- it, inside that transaction; stripe_has_entitlement serves it from a
-- per-backend cache that a change to user_features invalidates.
--------------------------------------------------------------------------

-- Which subscription items grant which features (managed by the app): the
-- items of the account's subscriptions only (NULL: the platform's own).
CREATE TABLE stripe_billing.feature_grants (
    source_type text NOT NULL CHECK (source_type IN ('price', 'lookup_key', 'product')),
    source      text NOT NULL CHECK (source <> ''),
    feature     text NOT NULL CHECK (feature <> ''),
    account     text CHECK (account ~ '^acct_[A-Za-z0-9]{1,250}$'),
    CONSTRAINT feature_grants_key UNIQUE NULLS NOT DISTINCT (source_type, source, feature, account)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.feature_grants', '');

-- Derived: each user's features and when access ends (NULL: no end known).
-- COLLATE "C": exact matches only, and the C lookups' scan keys agree.
CREATE TABLE stripe_billing.user_features (
    user_ref    text COLLATE "C" NOT NULL,
    feature     text COLLATE "C" NOT NULL,
    valid_until timestamptz,
    PRIMARY KEY (user_ref, feature)
);
-- Derived, but dumped: a restored database answers every check at once.
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.user_features', '');

-- One row per user whose features were ever derived.  A derivation first
-- writes its user's row: derivations of one user then run one at a time,
-- each waiting for the previous one to commit, and (in READ COMMITTED)
-- reading with a snapshot that sees it; in REPEATABLE READ or SERIALIZABLE
-- a derivation that cannot see a concurrent one's commit fails with 40001
-- instead of writing a state that misses it.
CREATE TABLE stripe_billing.user_derivations (
    user_ref    text COLLATE "C" PRIMARY KEY,
    derived_at  timestamptz NOT NULL,
    derivations bigint NOT NULL DEFAULT 1
);

-- Any change to user_features invalidates every backend's entitlement cache.
CREATE FUNCTION stripe_billing._invalidate_entitlement_cache() RETURNS trigger
AS 'MODULE_PATHNAME', 'stripe_invalidate_entitlement_cache'
LANGUAGE C;
CREATE TRIGGER user_features_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON stripe_billing.user_features
    FOR EACH ROW EXECUTE FUNCTION stripe_billing._invalidate_entitlement_cache();
CREATE TRIGGER user_features_invalidate_truncate
    AFTER TRUNCATE ON stripe_billing.user_features
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_billing._invalidate_entitlement_cache();

-- When a subscription item's access ends: never later than period end plus
-- access_slack, whatever the status says (a lost cancellation must not grant
-- free months); for past_due, period end plus the past_due grace; when
-- cancelling at period end, the period end; and a scheduled cancel_at.
-- NULL: no end known (no period end).
CREATE FUNCTION stripe_billing._access_ends(status text, cancel_at_period_end boolean,
                                            cancel_at timestamptz, period_end timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
  SELECT least(period_end OPERATOR(pg_catalog.+)
                 pg_catalog.current_setting('stripe_billing.access_slack')::interval,
               CASE WHEN status OPERATOR(pg_catalog.=) 'past_due'
                    THEN period_end OPERATOR(pg_catalog.+)
                         pg_catalog.current_setting('stripe_billing.past_due_grace')::interval END,
               CASE WHEN cancel_at_period_end THEN period_end END,
               cancel_at)
$$;

-- Does a subscription of this status grant its items' features?  active,
-- trialing and past_due do (the last within _access_ends' grace); paused
-- (a trial that ended without a payment method), unpaid, incomplete and
-- the ended ones do not.  A subscription whose collection is paused
-- (pause_collection: Stripe keeps it active, the service goes on unpaid)
-- keeps them, unless stripe_billing.paused_collection_access is 'revoke'.
CREATE FUNCTION stripe_billing._status_grants(status text, pause_behavior text)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
  SELECT status OPERATOR(pg_catalog.=) ANY ('{active,trialing,past_due}'::pg_catalog.text[])
     AND (pause_behavior IS NULL
          OR pg_catalog.current_setting('stripe_billing.paused_collection_access') OPERATOR(pg_catalog.<>) 'revoke')
$$;

-- Recomputes the features of users (several at once: a listed page's);
-- writes only what changed.  customer_ids[i], when given, is the customer
-- that made targets[i] due (for the notification).  (PL/pgSQL, not SQL: on
-- the hot path of every event, its plans stay cached; and generic: a plan
-- made for each array of users cost more than the derivation.)
CREATE FUNCTION stripe_billing._refresh_users_features(targets text[], customer_ids text[] DEFAULT NULL,
                                                       ev_type text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  notified bigint;
  -- an open dispute revokes its customer's features (chapter 31)
  disputes_revoke boolean := coalesce(current_setting('stripe_billing.dispute_access', true), 'keep') = 'revoke';
BEGIN
  -- one derivation of a user at a time (see user_derivations), taken in
  -- user order so that two derivations of several users cannot deadlock;
  -- the next statement's snapshot then sees the previous derivations' commits
  INSERT INTO stripe_billing.user_derivations AS d (user_ref, derived_at)
  SELECT DISTINCT t.u COLLATE "C", now() FROM unnest(targets) t(u) WHERE t.u IS NOT NULL ORDER BY 1
  ON CONFLICT (user_ref) DO UPDATE SET derived_at = EXCLUDED.derived_at, derivations = d.derivations + 1;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  IF stripe_billing._user_features_replicated() THEN   -- on Citus (see 50_citus.sql)
    PERFORM stripe_billing._refresh_replicated_features(targets, customer_ids, ev_type);
    RETURN;
  END IF;
  WITH due AS (
    SELECT DISTINCT ON (t.u COLLATE "C") t.u COLLATE "C" AS user_ref, t.c AS customer
      FROM unnest(targets, customer_ids) WITH ORDINALITY t(u, c, n)
     WHERE t.u IS NOT NULL
     ORDER BY t.u COLLATE "C", t.n
  ),
  grants AS (
    SELECT c.user_ref, g.feature,
           stripe_billing._access_ends(s.status, s.cancel_at_period_end, s.cancel_at,
                                       coalesce(i.current_period_end, s.current_period_end)) AS ends
      FROM stripe_billing.customers c
      JOIN stripe_billing.subscriptions s ON s.customer = c.id
      JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
      JOIN stripe_billing.feature_grants g
        ON ((g.source_type = 'price' AND g.source = i.price)
            OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
            OR (g.source_type = 'product' AND g.source = i.product))
       AND g.account IS NOT DISTINCT FROM s.account
     WHERE c.user_ref = ANY (targets) AND NOT c.deleted
       AND stripe_billing._status_grants(s.status, s.pause_behavior)
       AND NOT (disputes_revoke AND EXISTS (
             SELECT FROM stripe_billing.disputes d WHERE d.customer = c.id
                AND d.status IN ('needs_response', 'under_review', 'appeal_needs_response', 'appeal_under_review')))
    UNION ALL
    SELECT c.user_ref, e.lookup_key, NULL
      FROM stripe_billing.customers c
      JOIN stripe_billing.active_entitlements e ON e.customer = c.id
     WHERE c.user_ref = ANY (targets) AND NOT c.deleted
       AND NOT (disputes_revoke AND EXISTS (
             SELECT FROM stripe_billing.disputes d WHERE d.customer = c.id
                AND d.status IN ('needs_response', 'under_review', 'appeal_needs_response', 'appeal_under_review')))
  ),
  wanted AS (
    SELECT user_ref COLLATE "C" AS user_ref, feature COLLATE "C" AS feature,
           CASE WHEN bool_or(ends IS NULL) THEN NULL ELSE max(ends) END AS valid_until
      FROM grants GROUP BY 1, 2
  ),
  revoked AS (
    DELETE FROM stripe_billing.user_features u
     WHERE u.user_ref = ANY (targets)
       AND NOT EXISTS (SELECT FROM wanted w WHERE w.user_ref = u.user_ref AND w.feature = u.feature)
    RETURNING u.user_ref
  ),
  granted AS (
    INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
    SELECT user_ref, feature, valid_until FROM wanted
    ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until
    WHERE u.valid_until IS DISTINCT FROM EXCLUDED.valid_until
    RETURNING u.user_ref
  )
  -- apps LISTEN stripe_billing to react when a user's access changes
  -- (delivered at commit, not at all on rollback); see the notification in
  -- _refresh_user_features
  SELECT count(pg_notify('stripe_billing', json_build_object(
           'user_ref', d.user_ref, 'customer', d.customer, 'event_type', ev_type,
           'derivation', (SELECT ud.derivations FROM stripe_billing.user_derivations ud
                           WHERE ud.user_ref = d.user_ref),
           'features', (SELECT count(*) FROM wanted w WHERE w.user_ref = d.user_ref))::text))
    INTO notified   -- (unused: PERFORM cannot start with WITH)
    FROM due d
   WHERE d.user_ref IN (SELECT user_ref FROM revoked UNION SELECT user_ref FROM granted);
END
$$;

-- Recomputes one user's features; writes only what changed.  The same
-- derivation as _refresh_users_features, for one user: on the hot path of
-- every event it costs half as much as the general one (whose plan for an
-- array of users carries more steps).  test/integration/backfill.sh checks
-- that the two agree.
CREATE FUNCTION stripe_billing._refresh_user_features(target text, customer_id text DEFAULT NULL,
                                                      ev_type text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  notified text;
  derivation bigint;
  -- an open dispute revokes its customer's features (chapter 31)
  disputes_revoke boolean := coalesce(current_setting('stripe_billing.dispute_access', true), 'keep') = 'revoke';
BEGIN
  IF target IS NULL THEN
    RETURN;
  END IF;
  -- one derivation of a user at a time (see user_derivations); the next
  -- statement's snapshot then sees the previous derivation's commit
  INSERT INTO stripe_billing.user_derivations AS d (user_ref, derived_at) VALUES (target, now())
  ON CONFLICT (user_ref) DO UPDATE SET derived_at = EXCLUDED.derived_at, derivations = d.derivations + 1
  RETURNING d.derivations INTO derivation;
  IF stripe_billing._user_features_replicated() THEN   -- on Citus (see 50_citus.sql)
    PERFORM stripe_billing._refresh_replicated_features(ARRAY[target], ARRAY[customer_id], ev_type);
    RETURN;
  END IF;
  WITH grants AS (
    SELECT g.feature,
           stripe_billing._access_ends(s.status, s.cancel_at_period_end, s.cancel_at,
                                       coalesce(i.current_period_end, s.current_period_end)) AS ends
      FROM stripe_billing.customers c
      JOIN stripe_billing.subscriptions s ON s.customer = c.id
      JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
      JOIN stripe_billing.feature_grants g
        ON ((g.source_type = 'price' AND g.source = i.price)
            OR (g.source_type = 'lookup_key' AND g.source = i.price_lookup_key)
            OR (g.source_type = 'product' AND g.source = i.product))
       AND g.account IS NOT DISTINCT FROM s.account
     WHERE c.user_ref = target AND NOT c.deleted
       AND stripe_billing._status_grants(s.status, s.pause_behavior)
       AND NOT (disputes_revoke AND EXISTS (
             SELECT FROM stripe_billing.disputes d WHERE d.customer = c.id
                AND d.status IN ('needs_response', 'under_review', 'appeal_needs_response', 'appeal_under_review')))
    UNION ALL
    SELECT e.lookup_key, NULL
      FROM stripe_billing.customers c
      JOIN stripe_billing.active_entitlements e ON e.customer = c.id
     WHERE c.user_ref = target AND NOT c.deleted
       AND NOT (disputes_revoke AND EXISTS (
             SELECT FROM stripe_billing.disputes d WHERE d.customer = c.id
                AND d.status IN ('needs_response', 'under_review', 'appeal_needs_response', 'appeal_under_review')))
  ),
  wanted AS (
    SELECT feature, CASE WHEN bool_or(ends IS NULL) THEN NULL ELSE max(ends) END AS valid_until
      FROM grants GROUP BY feature
  ),
  revoked AS (
    DELETE FROM stripe_billing.user_features u
     WHERE u.user_ref = target AND u.feature NOT IN (SELECT feature FROM wanted)
    RETURNING 1
  ),
  granted AS (
    INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
    SELECT target, feature, valid_until FROM wanted
    ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until
    WHERE u.valid_until IS DISTINCT FROM EXCLUDED.valid_until
    RETURNING 1
  )
  -- apps LISTEN stripe_billing to react when a user's access changes
  -- (delivered at commit, not at all on rollback).  The payload names the
  -- user, never their features: NOTIFY payloads end at 8000 bytes, and a
  -- notification must never make billing state fail.  Its parts are
  -- bounded (each is an index key, at most some 2700 bytes; the feature
  -- count and the derivation number are integers), and the listener reads
  -- the rest (stripe_user_features): any role can NOTIFY this channel, so
  -- a payload is a hint to re-read, not a fact.
  SELECT pg_notify('stripe_billing', json_build_object(
           'user_ref', target, 'customer', customer_id, 'event_type', ev_type,
           'derivation', derivation, 'features', (SELECT count(*) FROM wanted))::text)
    INTO notified   -- (unused: PERFORM cannot start with WITH)
   WHERE EXISTS (SELECT FROM revoked) OR EXISTS (SELECT FROM granted);
END
$$;

-- Whether a batch (of listed snapshots, or a run of events) is being
-- mapped, which then derives its customers' users at its end, at once;
-- when so, notes customer_id.
CREATE FUNCTION stripe_billing._derivation_deferred(customer_id text) RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_derivation_deferred'
LANGUAGE C STRICT VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Recomputes the features of the users linked to a customer (unless a
-- batch defers it).
CREATE FUNCTION stripe_billing._refresh_customer_features(customer_id text, ev_type text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF stripe_billing._derivation_deferred(customer_id) THEN
    RETURN;
  END IF;
  PERFORM stripe_billing._refresh_user_features(c.user_ref, c.id, ev_type)
     FROM stripe_billing.customers c WHERE c.id = customer_id AND c.user_ref IS NOT NULL;
END
$$;

-- Recomputes the features of the users linked to these customers, at once.
CREATE FUNCTION stripe_billing._refresh_customers_features(customer_ids text[], ev_type text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing._refresh_users_features(array_agg(c.user_ref), array_agg(c.id), ev_type)
     FROM stripe_billing.customers c WHERE c.id = ANY (customer_ids) AND c.user_ref IS NOT NULL;
END
$$;

-- Recomputes every user's features (after a grant changes, or the grace
-- or paused collection settings do); returns the number of users looked at.
CREATE FUNCTION stripe_billing.stripe_refresh_entitlements() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint := 0;
  u text;
  unlinked text[];
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  -- every user's key first (past a thousand users, the apply lock alone):
  -- see locks.c
  PERFORM stripe_billing._lock_keys(NULL, NULL, ARRAY(
      SELECT c.user_ref FROM stripe_billing.customers c WHERE c.user_ref IS NOT NULL
      UNION SELECT f.user_ref FROM stripe_billing.user_features f));
  -- users who lost every customer link keep no features (read first: on
  -- Citus, user_features is a reference table, and a statement writing one
  -- may not read the local customers)
  unlinked := ARRAY(SELECT f.user_ref FROM stripe_billing.user_features f
                     WHERE NOT EXISTS (SELECT FROM stripe_billing.customers c WHERE c.user_ref = f.user_ref));
  IF unlinked <> '{}' THEN
    DELETE FROM stripe_billing.user_features f WHERE f.user_ref = ANY (unlinked);
  END IF;
  FOR u IN SELECT DISTINCT user_ref FROM stripe_billing.customers WHERE user_ref IS NOT NULL LOOP
    PERFORM stripe_billing._refresh_user_features(u, NULL, 'refresh');
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_refresh_entitlements() FROM PUBLIC;

-- Grants a feature to subscription items with this price id, price lookup
-- key or product id ('price', 'lookup_key', 'product'), of the account's
-- subscriptions (NULL: the platform's own).
CREATE FUNCTION stripe_billing.stripe_grant_feature(source_type text, source text, feature text,
                                                   account text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  IF source_type IS NULL OR source_type NOT IN ('price', 'lookup_key', 'product') THEN
    RAISE EXCEPTION 'source_type must be ''price'', ''lookup_key'' or ''product'', not %',
                    coalesce(quote_literal(source_type), 'NULL')
          USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(source, '') = '' THEN
    RAISE EXCEPTION 'source must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF coalesce(feature, '') = '' THEN
    RAISE EXCEPTION 'feature must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM stripe_billing._check_account('account', account);
  INSERT INTO stripe_billing.feature_grants VALUES (source_type, source, feature, account) ON CONFLICT DO NOTHING;
  IF FOUND THEN
    PERFORM stripe_billing.stripe_refresh_entitlements();
  END IF;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_grant_feature(text, text, text, text) FROM PUBLIC;

-- Takes a grant back; true if there was one.
CREATE FUNCTION stripe_billing.stripe_revoke_feature(source_type text, source text, feature text,
                                                    account text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings the derivation reads)
  PERFORM stripe_billing._check_account('account', account);
  DELETE FROM stripe_billing.feature_grants g
   WHERE g.source_type = stripe_revoke_feature.source_type AND g.source = stripe_revoke_feature.source
     AND g.feature = stripe_revoke_feature.feature
     AND g.account IS NOT DISTINCT FROM stripe_revoke_feature.account;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM stripe_billing.stripe_refresh_entitlements();
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_revoke_feature(text, text, text, text) FROM PUBLIC;

-- The planner's support for stripe_has_entitlement: a call that asks the
-- same question for every row of a query is made an InitPlan, answered once
-- per query (see src/entitlements.c).
CREATE FUNCTION stripe_billing._has_entitlement_support(internal) RETURNS internal
AS 'MODULE_PATHNAME', 'stripe_has_entitlement_support'
LANGUAGE C STRICT STABLE
SET search_path = pg_catalog, pg_temp;

-- Does the user have the feature now?  Served from a per-backend cache of
-- user_features; false for NULL or empty arguments, never an error.
CREATE FUNCTION stripe_billing.stripe_has_entitlement(user_ref text, feature text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_has_entitlement'
LANGUAGE C STABLE PARALLEL SAFE
SUPPORT stripe_billing._has_entitlement_support;

-- The user's features valid now, with when access ends (NULL: no end known).
CREATE FUNCTION stripe_billing.stripe_user_features(user_ref text)
RETURNS TABLE (feature text, valid_until timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT f.feature, f.valid_until FROM stripe_billing.user_features f
   WHERE f.user_ref = stripe_user_features.user_ref
     AND (f.valid_until IS NULL OR f.valid_until > stripe_billing.stripe_now())
   ORDER BY f.feature
$$;

-- The status of the user's most relevant subscription (active first, then
-- trialing, past_due, ...), or NULL when they have none.
CREATE FUNCTION stripe_billing.stripe_subscription_status(user_ref text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT s.status
    FROM stripe_billing.customers c
    JOIN stripe_billing.subscriptions s ON s.customer = c.id
   WHERE c.user_ref = stripe_subscription_status.user_ref
   ORDER BY array_position(ARRAY['active', 'trialing', 'past_due', 'unpaid', 'paused', 'incomplete',
                                 'canceled', 'incomplete_expired'], s.status) NULLS LAST,
            s.current_period_end DESC NULLS LAST
   LIMIT 1
$$;

-- The time entitlement checks use: now(), or stripe_billing.test_clock.
CREATE FUNCTION stripe_billing.stripe_now() RETURNS timestamptz
AS 'MODULE_PATHNAME', 'stripe_now'
LANGUAGE C STABLE PARALLEL SAFE;
