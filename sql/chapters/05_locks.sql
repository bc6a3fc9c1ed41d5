
--------------------------------------------------------------------------
-- Locks: every unit of application (an event, a page or batch of events,
-- listed snapshots, an API answer, a link) takes its locks in one global
-- order, so that no two appliers deadlock (see locks.c)
--------------------------------------------------------------------------

-- Takes a unit's keys: objects as 'kind:id', customers (and the users
-- linked to them), users whose features it may derive.
CREATE FUNCTION stripe_billing._lock_keys(objects text[], customers text[], users text[]) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_keys'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Takes the keys that applying these Stripe objects (of the account: NULL,
-- the platform's) takes, for SQL that writes their rows before applying them.
CREATE FUNCTION stripe_billing._lock_objects(objects jsonb, account text DEFAULT NULL) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_lock_objects'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
