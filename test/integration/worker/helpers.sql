-- Helpers for test/integration/worker.sh, loaded (psql -f) into the worker's database
-- and into the clean database it is compared with.  Schema wtest only.
CREATE SCHEMA wtest;

-- The fake's events as GET /_fake/events lists them: ord 1 is the oldest.
CREATE TABLE wtest.fake_events (
    ord integer PRIMARY KEY,
    id  text NOT NULL UNIQUE
);

-- The clean run: fetches, through stripe_api and /v1/events pages, every
-- event after after_id, and applies them one by one in the fake's own order
-- (wtest.fake_events, not the pages' order), all in the caller's
-- transaction.  Returns the newest id applied.
CREATE FUNCTION wtest.apply_in_order(after_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  cur text := after_id;
  page jsonb;
  r record;
  expected bigint;
  newest text := after_id;
BEGIN
  CREATE TEMP TABLE fetched (id text PRIMARY KEY, ev jsonb NOT NULL) ON COMMIT DROP;
  LOOP
    page := stripe_billing.stripe_api('GET', '/v1/events',
                                      jsonb_build_object('limit', 100, 'ending_before', cur));
    EXIT WHEN jsonb_array_length(page->'data') = 0;
    INSERT INTO fetched SELECT e->>'id', e FROM jsonb_array_elements(page->'data') e;
    cur := page->'data'->0->>'id';
    EXIT WHEN NOT coalesce((page->>'has_more')::boolean, false);
  END LOOP;
  SELECT count(*) INTO expected FROM wtest.fake_events
   WHERE ord > (SELECT ord FROM wtest.fake_events WHERE id = after_id);
  IF expected <> (SELECT count(*) FROM fetched)
     OR EXISTS (SELECT FROM fetched f LEFT JOIN wtest.fake_events w USING (id) WHERE w.id IS NULL) THEN
    RAISE EXCEPTION 'clean run: /v1/events after % gave % events, the fake lists %',
      after_id, (SELECT count(*) FROM fetched), expected;
  END IF;
  FOR r IN SELECT f.id, f.ev FROM fetched f JOIN wtest.fake_events w USING (id) ORDER BY w.ord LOOP
    PERFORM stripe_billing.stripe_apply_event(r.ev, 'poll');
    newest := r.id;
  END LOOP;
  RETURN newest;
END
$$;

-- md5 and row count of a stripe_billing table's rows, every column but the
-- timing ones (updated_at, received_at) and refetch: the worker's to-do mark
-- for ties, which its re-fetch clears and the clean replay (no worker) keeps.
CREATE FUNCTION wtest.digest(tbl text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  cols text;
  result text;
BEGIN
  SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute
   WHERE attrelid = format('stripe_billing.%I', tbl)::regclass AND attnum > 0 AND NOT attisdropped
     AND attname NOT IN ('updated_at', 'received_at', 'refetch');
  EXECUTE format('SELECT md5(coalesce(string_agg(r, E''\n'' ORDER BY r), '''')) || '' rows='' || count(*)'
                 ' FROM (SELECT ROW(%s)::text AS r FROM stripe_billing.%I) s', cols, tbl)
     INTO result;
  RETURN result;
END
$$;

-- One line per billing table (and the ledger when asked): "table digest".
CREATE FUNCTION wtest.state(with_ledger boolean) RETURNS SETOF text
LANGUAGE sql AS $$
  SELECT t || ' ' || wtest.digest(t)
    FROM unnest(ARRAY['customers', 'products', 'prices', 'subscriptions', 'subscription_items',
                      'invoices', 'payments', 'checkout_sessions', 'entitlement_summaries',
                      'active_entitlements', 'user_features']
                || CASE WHEN with_ledger THEN ARRAY['events'] ELSE ARRAY[]::text[] END) t
   ORDER BY t
$$;

-- For the events first_id .. last_id of the fake's list: does each object's
-- row name, as last_event_id, the newest of them that touched it (in the
-- fake's order)?  Returns how many objects, how many rows disagree, and how
-- many same-second groups of events on one object (where only arrival
-- order decides).
CREATE FUNCTION wtest.last_event_check(first_id text, last_id text,
                                       OUT objects bigint, OUT mismatched bigint, OUT ties bigint)
LANGUAGE sql AS $$
  WITH ev AS (
    SELECT f.ord, f.id, e.created, e.payload->'data'->'object' AS o
      FROM wtest.fake_events f JOIN stripe_billing.events e USING (id)
     WHERE f.ord BETWEEN (SELECT ord FROM wtest.fake_events WHERE id = first_id)
                     AND (SELECT ord FROM wtest.fake_events WHERE id = last_id)
  ), touched AS (
    SELECT ord, id, created, o->>'object' AS kind, o->>'id' AS oid FROM ev
    UNION ALL
    SELECT ord, id, created, 'subscription_item', i->>'id'
      FROM ev, jsonb_array_elements(o->'items'->'data') i
     WHERE o->>'object' = 'subscription'
  ), newest AS (
    SELECT DISTINCT ON (kind, oid) kind, oid, id FROM touched ORDER BY kind, oid, ord DESC
  ), actual AS (
    SELECT 'customer' AS kind, id AS oid, last_event_id FROM stripe_billing.customers
    UNION ALL SELECT 'subscription', id, last_event_id FROM stripe_billing.subscriptions
    UNION ALL SELECT 'subscription_item', id, last_event_id FROM stripe_billing.subscription_items
    UNION ALL SELECT 'invoice', id, last_event_id FROM stripe_billing.invoices
  )
  SELECT count(*),
         count(*) FILTER (WHERE a.last_event_id IS DISTINCT FROM n.id),
         (SELECT count(*) FROM (SELECT FROM touched GROUP BY kind, oid, created HAVING count(*) > 1) g)
    FROM newest n LEFT JOIN actual a USING (kind, oid)
$$;
