
--------------------------------------------------------------------------
-- Subscription schedules: plan changes at a later date (a downgrade at
-- the period end), from subscription_schedule.* events, API answers, the
-- backfill and reconciliation (issue 27, part A)
--
-- A schedule is a list of phases, each with its prices from a start date
-- to an end date; Stripe moves the subscription to the next phase's
-- prices when it starts, and sends customer.subscription.updated then:
-- that event changes the subscription's items and its users' features.
-- Applying a schedule changes no feature.
--------------------------------------------------------------------------

CREATE TABLE stripe_billing.subscription_schedules (
    id                    text PRIMARY KEY,
    customer              text,
    subscription          text,          -- the subscription it manages (NULL once released)
    released_subscription text,          -- the one it managed, once released
    status                text NOT NULL, -- not_started | active | completed | released | canceled
    end_behavior          text,          -- release | cancel
    current_phase_start   timestamptz,   -- current_phase (while active)
    current_phase_end     timestamptz,
    released_at           timestamptz,
    canceled_at           timestamptz,
    completed_at          timestamptz,
    metadata              jsonb NOT NULL DEFAULT '{}',
    created               timestamptz,
    raw                   jsonb NOT NULL,
    last_event_id         text,
    last_event_created    timestamptz,
    refetch               boolean NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    account               text           -- the connected account (acct_...); NULL: the platform's own
);
CREATE INDEX subscription_schedules_subscription_idx ON stripe_billing.subscription_schedules (subscription);

-- Each phase's prices: one row per price of a phase (phases[].items[]),
-- replaced as a set with the schedule's row.
CREATE TABLE stripe_billing.subscription_schedule_phases (
    schedule           text NOT NULL,
    start_date         timestamptz NOT NULL,
    end_date           timestamptz,
    price              text NOT NULL,
    quantity           bigint,
    trial_end          timestamptz,
    proration_behavior text,             -- on entering the phase: create_prorations | always_invoice | none
    account            text,             -- the connected account (acct_...); NULL: the platform's own
    PRIMARY KEY (schedule, start_date, price)
);

SELECT pg_catalog.pg_extension_config_dump('stripe_billing.subscription_schedules', '');
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.subscription_schedule_phases', '');
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE stripe_billing.subscription_schedules ALTER COLUMN raw SET COMPRESSION lz4;
  END IF;
END
$$;

-- A schedule and its phases.  released, canceled and completed are
-- terminal: a late snapshot of an active schedule does not revive it.
CREATE FUNCTION stripe_billing._apply_subscription_schedule(o jsonb, ev_type text, ev_id text,
                                                            ev_created timestamptz, ev_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  sid text := o->>'id';
  phases jsonb := o->'phases';
BEGIN
  INSERT INTO stripe_billing.subscription_schedules AS t
         (id, customer, subscription, released_subscription, status, end_behavior,
          current_phase_start, current_phase_end, released_at, canceled_at, completed_at,
          metadata, created, raw, last_event_id, last_event_created, account)
  VALUES (sid, stripe_billing._id(o->'customer'), stripe_billing._id(o->'subscription'),
          stripe_billing._id(o->'released_subscription'), o->>'status', o->>'end_behavior',
          stripe_billing._ts(o->'current_phase'->'start_date'), stripe_billing._ts(o->'current_phase'->'end_date'),
          stripe_billing._ts(o->'released_at'), stripe_billing._ts(o->'canceled_at'),
          stripe_billing._ts(o->'completed_at'), coalesce(o->'metadata', '{}'), stripe_billing._ts(o->'created'),
          o, ev_id, ev_created, ev_account)
  ON CONFLICT (id) DO UPDATE SET
         customer = EXCLUDED.customer, subscription = EXCLUDED.subscription,
         released_subscription = EXCLUDED.released_subscription, status = EXCLUDED.status,
         end_behavior = EXCLUDED.end_behavior, current_phase_start = EXCLUDED.current_phase_start,
         current_phase_end = EXCLUDED.current_phase_end, released_at = EXCLUDED.released_at,
         canceled_at = EXCLUDED.canceled_at, completed_at = EXCLUDED.completed_at,
         metadata = EXCLUDED.metadata, created = coalesce(EXCLUDED.created, t.created), raw = EXCLUDED.raw,
         last_event_id = EXCLUDED.last_event_id, last_event_created = EXCLUDED.last_event_created,
         refetch = coalesce(t.last_event_created = EXCLUDED.last_event_created, false),
         updated_at = now(), account = EXCLUDED.account
  WHERE stripe_billing._may_overwrite(t.last_event_created, EXCLUDED.last_event_created,
                                      t.status IN ('released', 'canceled', 'completed'),
                                      EXCLUDED.status IN ('released', 'canceled', 'completed'));
  IF NOT FOUND THEN
    RETURN 'stale';
  END IF;
  -- the phases follow the snapshot just written, as a set
  DELETE FROM stripe_billing.subscription_schedule_phases WHERE schedule = sid;
  INSERT INTO stripe_billing.subscription_schedule_phases
         (schedule, start_date, end_date, price, quantity, trial_end, proration_behavior, account)
  SELECT sid, stripe_billing._ts(p->'start_date'), stripe_billing._ts(p->'end_date'),
         stripe_billing._id(i->'price'), (i->>'quantity')::bigint, stripe_billing._ts(p->'trial_end'),
         p->>'proration_behavior', ev_account
    FROM jsonb_array_elements(phases) p, jsonb_array_elements(p->'items') i
  ON CONFLICT DO NOTHING;
  RETURN 'applied';
END
$$;

-- The user's subscriptions (of every account), the most relevant first
-- (as stripe_subscription_status orders them), each with its items, its
-- paused collection and its pending change: the prices of the next phase
-- of its schedule (not_started or active), from when.  price and quantity
-- are the single live item's (NULL when there are several), pending_price
-- and pending_quantity the next phase's single price's.
CREATE FUNCTION stripe_billing.stripe_user_subscriptions(user_ref text)
RETURNS TABLE (subscription text, status text, price text, quantity bigint, items jsonb,
               current_period_end timestamptz, cancel_at_period_end boolean,
               collection_paused text, collection_resumes_at timestamptz,
               pending_price text, pending_quantity bigint, pending_items jsonb, pending_at timestamptz,
               schedule text, account text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT s.id, s.status,
         CASE WHEN jsonb_array_length(it.items) = 1 THEN it.items->0->>'price' END,
         CASE WHEN jsonb_array_length(it.items) = 1 THEN (it.items->0->>'quantity')::bigint END,
         it.items, s.current_period_end, s.cancel_at_period_end, s.pause_behavior, s.pause_resumes_at,
         CASE WHEN jsonb_array_length(nx.items) = 1 THEN nx.items->0->>'price' END,
         CASE WHEN jsonb_array_length(nx.items) = 1 THEN (nx.items->0->>'quantity')::bigint END,
         nx.items, nx.start_date, sc.id, s.account
    FROM stripe_billing.customers c
    JOIN stripe_billing.subscriptions s ON s.customer = c.id
    CROSS JOIN LATERAL (
      SELECT coalesce(jsonb_agg(jsonb_build_object('id', i.id, 'price', i.price, 'quantity', i.quantity)
                                ORDER BY i.price, i.id), '[]') AS items
        FROM stripe_billing.subscription_items i
       WHERE i.subscription = s.id AND NOT i.deleted) it
    LEFT JOIN LATERAL (
      SELECT x.id, x.current_phase_start FROM stripe_billing.subscription_schedules x
       WHERE x.subscription = s.id AND x.status IN ('not_started', 'active')
       ORDER BY x.created DESC NULLS LAST, x.id LIMIT 1) sc ON true
    LEFT JOIN LATERAL (
      SELECT ph.start_date,
             jsonb_agg(jsonb_build_object('price', ph.price, 'quantity', ph.quantity) ORDER BY ph.price) AS items
        FROM stripe_billing.subscription_schedule_phases ph
       WHERE ph.schedule = sc.id AND ph.start_date > coalesce(sc.current_phase_start, '-infinity')
       GROUP BY ph.start_date ORDER BY ph.start_date LIMIT 1) nx ON true
   WHERE c.user_ref = stripe_user_subscriptions.user_ref
   ORDER BY array_position(ARRAY['active', 'trialing', 'past_due', 'unpaid', 'paused', 'incomplete',
                                 'canceled', 'incomplete_expired'], s.status) NULLS LAST,
            s.current_period_end DESC NULLS LAST, s.id
$$;
REVOKE ALL ON FUNCTION stripe_billing.stripe_user_subscriptions(text) FROM PUBLIC;

-- How a listed schedule differs from the local rows (reconciliation): one
-- row per field (only 'row' when it is missing here).
CREATE FUNCTION stripe_billing._subscription_schedule_drift(o jsonb)
RETURNS TABLE (field text, local_value text, stripe_value text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 'row', NULL, 'present'
   WHERE NOT EXISTS (SELECT FROM stripe_billing.subscription_schedules WHERE id = o->>'id')
  UNION ALL
  SELECT f.field, f.local_value, f.stripe_value
    FROM stripe_billing.subscription_schedules l,
         LATERAL (VALUES
           ('status', l.status, o->>'status'),
           ('subscription', l.subscription, stripe_billing._id(o->'subscription')),
           ('phases',
            (SELECT string_agg(x, ', ' ORDER BY x)
               FROM (SELECT extract(epoch FROM ph.start_date)::bigint || ' ' || ph.price || ' x'
                            || coalesce(ph.quantity::text, '?')
                       FROM stripe_billing.subscription_schedule_phases ph WHERE ph.schedule = l.id) t(x)),
            (SELECT string_agg(x, ', ' ORDER BY x)
               FROM (SELECT (p->>'start_date') || ' ' || stripe_billing._id(i->'price') || ' x'
                            || coalesce(i->>'quantity', '?')
                       FROM jsonb_array_elements(o->'phases') p, jsonb_array_elements(p->'items') i) t(x)))
         ) f(field, local_value, stripe_value)
   WHERE l.id = o->>'id' AND f.local_value IS DISTINCT FROM f.stripe_value
$$;
