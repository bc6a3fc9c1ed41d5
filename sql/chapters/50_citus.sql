
--------------------------------------------------------------------------
-- Citus
--
-- On a Citus cluster the billing state (the ledger, the billing tables, the
-- outbox, the cursor) stays on the coordinator, where the background worker
-- runs, and user_features, all that entitlement checks read, becomes a
-- reference table: Citus keeps a copy of it on every node, which the
-- coordinator's transactions write with two-phase commit, and copies it to
-- a node added later before that node gets shards.  A check in the policy
-- of a distributed table, run on a worker node, then reads its own node's
-- copy (see src/citus.c).  README, "Scaling out with Citus".
--------------------------------------------------------------------------

-- Is this a Citus worker node (the billing state is not here)?
CREATE FUNCTION stripe_billing._citus_worker_node() RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_citus_worker_node'
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._citus_worker_node() FROM PUBLIC;

-- Is user_features a Citus reference table?
CREATE FUNCTION stripe_billing._user_features_replicated() RETURNS boolean
AS 'MODULE_PATHNAME', 'stripe_user_features_replicated'
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION stripe_billing._user_features_replicated() FROM PUBLIC;

-- The derivation of _refresh_users_features (whose callers have taken the
-- users' turns) when user_features is a reference table.  Citus runs no
-- statement that writes a reference table and reads the local billing
-- tables, so what the users have is read first (from the coordinator's
-- copy, a plan Citus makes fast), what they should have is computed
-- against it by a statement that reads local tables only, and the
-- difference is written by statements that carry it as parameters, each of
-- which reaches every node.  Nothing is written when nothing changed: a
-- write of a reference table costs a two-phase commit with every node.
-- The local statement keeps a generic plan, as in _refresh_users_features
-- (planned for each call, it cost five times the derivation); those of
-- user_features are EXECUTEd, planned with their values each time, since
-- Citus cannot make generic plans of them.
CREATE FUNCTION stripe_billing._refresh_replicated_features(targets text[], customer_ids text[],
                                                            ev_type text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  have_users text[];
  have_features text[];
  have_ends timestamptz[];
  notified bigint;
  gone_users text[];
  gone_features text[];
  set_users text[];
  set_features text[];
  set_ends timestamptz[];
  -- (the same grants as _refresh_users_features: paused collection, disputes)
  disputes_revoke boolean := coalesce(current_setting('stripe_billing.dispute_access', true), 'keep') = 'revoke';
BEGIN
  EXECUTE 'SELECT array_agg(f.user_ref), array_agg(f.feature), array_agg(f.valid_until)
             FROM stripe_billing.user_features f WHERE f.user_ref = ANY ($1)'
     INTO have_users, have_features, have_ends USING targets;
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
  have AS (
    SELECT h.user_ref COLLATE "C" AS user_ref, h.feature COLLATE "C" AS feature, h.valid_until
      FROM unnest(have_users, have_features, have_ends) h(user_ref, feature, valid_until)
  ),
  changes AS (
    SELECT coalesce(w.user_ref, h.user_ref) AS user_ref, coalesce(w.feature, h.feature) AS feature,
           w.valid_until, w.user_ref IS NULL AS gone
      FROM wanted w FULL JOIN have h ON h.user_ref = w.user_ref AND h.feature = w.feature
     WHERE w.user_ref IS NULL OR h.user_ref IS NULL OR w.valid_until IS DISTINCT FROM h.valid_until
  ),
  -- (sent at commit, so only if the writes below succeed; see
  -- _refresh_user_features)
  notifications AS (
    SELECT pg_notify('stripe_billing', json_build_object(
             'user_ref', d.user_ref, 'customer', d.customer, 'event_type', ev_type,
             'derivation', (SELECT ud.derivations FROM stripe_billing.user_derivations ud
                             WHERE ud.user_ref = d.user_ref),
             'features', (SELECT count(*) FROM wanted w WHERE w.user_ref = d.user_ref))::text)
      FROM due d
     WHERE d.user_ref IN (SELECT user_ref FROM changes)
  )
  SELECT array_agg(user_ref) FILTER (WHERE gone), array_agg(feature) FILTER (WHERE gone),
         array_agg(user_ref) FILTER (WHERE NOT gone), array_agg(feature) FILTER (WHERE NOT gone),
         array_agg(valid_until) FILTER (WHERE NOT gone), (SELECT count(*) FROM notifications)
    INTO gone_users, gone_features, set_users, set_features, set_ends, notified   -- (unused)
    FROM changes;
  IF gone_users IS NOT NULL THEN
    EXECUTE 'DELETE FROM stripe_billing.user_features u
              WHERE (u.user_ref, u.feature) IN (SELECT * FROM unnest($1, $2))'
      USING gone_users, gone_features;
  END IF;
  -- (one row, the usual change, as VALUES: Citus sends it to the nodes at
  -- once, where rows from a SELECT take a copy to each node first)
  IF cardinality(set_users) = 1 THEN
    EXECUTE 'INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
             VALUES ($1, $2, $3)
             ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until'
      USING set_users[1], set_features[1], set_ends[1];
  ELSIF set_users IS NOT NULL THEN
    EXECUTE 'INSERT INTO stripe_billing.user_features AS u (user_ref, feature, valid_until)
             SELECT * FROM unnest($1, $2, $3)
             ON CONFLICT (user_ref, feature) DO UPDATE SET valid_until = EXCLUDED.valid_until'
      USING set_users, set_features, set_ends;
  END IF;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing._refresh_replicated_features(text[], text[], text) FROM PUBLIC;

-- Makes user_features a Citus reference table, so that entitlement checks
-- on every node read a copy of it.  CREATE EXTENSION does it on a Citus
-- coordinator that has nodes; run it once by hand on the coordinator when
-- the extension was created before Citus, or before the nodes were added.
-- Returns false when there was nothing to do.
CREATE FUNCTION stripe_billing.stripe_citus_setup() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Citus asks for this before it distributes a table with triggers.  Ours
-- sends a relcache invalidation on its own node, and reads and writes
-- nothing: none of the cross-node visibility or deadlock issues the
-- setting's name warns about.
SET citus.enable_unsafe_triggers = on
AS $$
DECLARE
  kind text;
  had_rows boolean;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
    RAISE EXCEPTION 'Citus is not installed in this database'
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF stripe_billing._citus_worker_node() THEN
    RAISE EXCEPTION 'stripe_citus_setup() runs on the Citus coordinator, not on a worker node'
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT p.partmethod::text || p.repmodel::text INTO kind
    FROM pg_dist_partition p WHERE p.logicalrelid = 'stripe_billing.user_features'::regclass;
  IF kind = 'nt' THEN
    RETURN false;     -- a reference table already
  ELSIF kind IS NOT NULL THEN
    RAISE EXCEPTION 'stripe_billing.user_features is a Citus table, but not a reference table'
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Run SELECT undistribute_table(''stripe_billing.user_features''), then this again.';
  END IF;
  -- checks on the coordinator (and the derivations) read its own copy
  IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid = 0) THEN
    RAISE EXCEPTION 'the Citus coordinator is not in the cluster''s metadata'
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = 'stripe_billing.user_features becomes a reference table, with a copy on every node, '
                     'the coordinator included.',
            HINT = 'Run SELECT citus_set_coordinator_host(''<host>'', <port>) on the coordinator first.';
  END IF;
  had_rows := EXISTS (SELECT FROM stripe_billing.user_features);
  PERFORM create_reference_table('stripe_billing.user_features');
  -- the rows were copied to the placements; the table itself is now a shell
  IF had_rows THEN
    PERFORM truncate_local_data_after_distributing_table('stripe_billing.user_features');
  END IF;
  RETURN true;
END
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_citus_setup() FROM PUBLIC;

-- On a Citus coordinator with nodes, CREATE EXTENSION is the whole setup.
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
     AND NOT stripe_billing._citus_worker_node() THEN
    IF EXISTS (SELECT FROM pg_dist_node) THEN
      PERFORM stripe_billing.stripe_citus_setup();
    ELSE
      -- (a WARNING: an extension script shows no NOTICE)
      RAISE WARNING 'this Citus coordinator has no nodes yet: stripe_billing.user_features stays a local table'
        USING HINT = 'Once the nodes are added, run SELECT stripe_billing.stripe_citus_setup().';
    END IF;
  END IF;
END
$$;
