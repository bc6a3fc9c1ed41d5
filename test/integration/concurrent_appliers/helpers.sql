-- Helpers for test/integration/concurrent_appliers.sh, loaded (psql -f) into the database
-- the worker and the webhooks write, and into the clean database the same
-- events are applied to one after another.  Schema ctest only.
CREATE SCHEMA ctest;

-- The run's events, as the fake lists them (ord 1 the oldest), and users.
CREATE TABLE ctest.run_events (
    ord      integer PRIMARY KEY,
    id       text NOT NULL UNIQUE,
    type     text NOT NULL,
    created  bigint NOT NULL,
    user_ref text
);
CREATE TABLE ctest.run_users (user_ref text PRIMARY KEY);

-- md5 and count of a billing table's rows of this run: rows last written by
-- one of the run's events (every object of a run is the run's own), or, for
-- user_features, the run's users' rows.  Every column but updated_at and
-- refetch (a same-second tie's mark depends on arrival order, and the worker
-- clears it when it fetches the object again).
CREATE FUNCTION ctest.digest(tbl text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  cols text;
  result text;
BEGIN
  SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute
   WHERE attrelid = format('stripe_billing.%I', tbl)::regclass AND attnum > 0 AND NOT attisdropped
     AND attname NOT IN ('updated_at', 'refetch');
  EXECUTE format('SELECT md5(coalesce(string_agg(r, E''\n'' ORDER BY r), '''')) || '' rows='' || count(*)'
                 ' FROM (SELECT ROW(%s)::text AS r FROM stripe_billing.%I t WHERE %s) s', cols, tbl,
                 CASE WHEN tbl = 'user_features' THEN 't.user_ref IN (SELECT user_ref FROM ctest.run_users)'
                      ELSE 't.last_event_id IN (SELECT id FROM ctest.run_events)' END)
     INTO result;
  RETURN result;
END
$$;

-- One line per billing table the lifecycles write: "table digest".
CREATE FUNCTION ctest.state() RETURNS SETOF text
LANGUAGE sql AS $$
  SELECT t || ' ' || ctest.digest(t)
    FROM unnest(ARRAY['checkout_sessions', 'customers', 'invoices', 'subscription_items',
                      'subscriptions', 'user_features']) t
   ORDER BY t
$$;

-- Each of the run's users as it ends: customers linked to it, their
-- subscriptions (all, canceled), stripe_has_entitlement(user, 'reports'),
-- user_features rows.
CREATE FUNCTION ctest.users(OUT user_ref text, OUT customers bigint, OUT subscriptions bigint,
                            OUT canceled bigint, OUT entitled boolean, OUT features bigint)
RETURNS SETOF record
LANGUAGE sql AS $$
  SELECT u.user_ref,
         (SELECT count(*) FROM stripe_billing.customers c WHERE c.user_ref = u.user_ref),
         (SELECT count(*) FROM stripe_billing.customers c JOIN stripe_billing.subscriptions s ON s.customer = c.id
           WHERE c.user_ref = u.user_ref),
         (SELECT count(*) FROM stripe_billing.customers c JOIN stripe_billing.subscriptions s ON s.customer = c.id
           WHERE c.user_ref = u.user_ref AND s.status = 'canceled'),
         stripe_billing.stripe_has_entitlement(u.user_ref, 'reports'),
         (SELECT count(*) FROM stripe_billing.user_features f WHERE f.user_ref = u.user_ref)
    FROM ctest.run_users u
   ORDER BY u.user_ref
$$;
