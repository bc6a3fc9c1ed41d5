
--------------------------------------------------------------------------
-- The rest of the billing model in the backfill, the re-fetch and the
-- reconciliation
--
-- The backfill lists, in dependency order (_backfill_kinds): coupons and
-- promotion codes before the customers and subscriptions whose discounts
-- name them; customers with their tax ids (expand[]=data.tax_ids) and
-- their own discount (always embedded); subscriptions with their discounts
-- (expand[]=data.discounts); credit notes after the invoices they credit;
-- disputes with their charge (expand[]=data.charge: the customer a dispute
-- may revoke); the payment methods of each customer with a live
-- subscription (no list spans customers), as entitlements are listed.
--------------------------------------------------------------------------

-- What a listed page brought embedded, applied as snapshots as of the
-- page: a customer's tax ids (a list cut short, has_more, is read on from
-- /v1/customers/<id>/tax_ids), a subscription's discounts.  Returns the
-- requests it made.
CREATE FUNCTION stripe_billing._backfill_embedded(kind text, data jsonb, snapshot timestamptz,
                                                  for_account text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  objects jsonb := '[]';
  c jsonb;
  l record;
  items jsonb;
  requests integer := 0;
BEGIN
  IF kind = 'customers' THEN
    FOR c IN SELECT e FROM jsonb_array_elements(data) e WHERE jsonb_typeof(e->'tax_ids') = 'object' LOOP
      items := coalesce(c->'tax_ids'->'data', '[]');
      -- (an id that cannot be a path segment is not asked for)
      WHILE coalesce((c->'tax_ids'->>'has_more')::boolean, false) AND c->>'id' ~ '^[A-Za-z0-9_]{1,255}$' LOOP
        SELECT * INTO l FROM stripe_billing._list_page('/v1/customers/' || (c->>'id') || '/tax_ids',
            jsonb_strip_nulls(jsonb_build_object('limit', 100, 'starting_after', items->-1->>'id')),
            'null', account => for_account);
        requests := requests + 1;
        items := items || coalesce(l.page->'data', '[]');
        c := jsonb_set(c, '{tax_ids,has_more}',
                       to_jsonb(coalesce((l.page->>'has_more')::boolean, false)
                                AND jsonb_array_length(coalesce(l.page->'data', '[]')) > 0));
      END LOOP;
      objects := objects || items;
    END LOOP;
  ELSIF kind = 'subscriptions' THEN
    SELECT coalesce(jsonb_agg(d), '[]') INTO objects
      FROM jsonb_array_elements(data) s, jsonb_array_elements(coalesce(s->'discounts', '[]')) d
     WHERE jsonb_typeof(s->'discounts') = 'array' AND jsonb_typeof(d) = 'object';
  END IF;
  IF jsonb_array_length(objects) > 0 THEN
    PERFORM stripe_billing._apply_snapshots(objects, snapshot, 'backfill', account => for_account);
  END IF;
  RETURN requests;
END
$$;

-- One page of the payment_methods kind: the payment methods of twenty
-- customers with a live subscription (of the account), after list_cursor,
-- each listed from /v1/payment_methods?customer= while the next few
-- customers' first requests travel (as entitlements are: _backfill_page),
-- applied at once as of the oldest first answer.
CREATE FUNCTION stripe_billing._backfill_payment_methods_page(list_cursor text, for_account text DEFAULT NULL,
                                                              OUT objects integer, OUT requests integer,
                                                              OUT next_cursor text, OUT has_more boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  customers text[];
  l record;
  items jsonb;
  methods jsonb := '[]';
  taken_at timestamptz;
  snapshot timestamptz;
  ahead constant integer := 3;
BEGIN
  objects := 0;
  requests := 0;
  next_cursor := list_cursor;
  SELECT array_agg(customer ORDER BY customer) INTO customers
    FROM (SELECT DISTINCT s.customer FROM stripe_billing.subscriptions s
           WHERE s.status NOT IN ('canceled', 'incomplete_expired') AND s.customer IS NOT NULL
             AND s.account IS NOT DISTINCT FROM for_account
             AND s.customer > coalesce(list_cursor, '')
           ORDER BY 1 LIMIT 20 + ahead) c;
  has_more := coalesce(cardinality(customers), 0) > 20;
  FOR i IN 1 .. least(coalesce(cardinality(customers), 0), ahead) LOOP
    PERFORM stripe_billing._list_prefetch('/v1/payment_methods',
                                          jsonb_build_object('customer', customers[i], 'limit', 100),
                                          account => for_account);
  END LOOP;
  FOR i IN 1 .. least(coalesce(cardinality(customers), 0), 20) LOOP
    items := '[]';
    taken_at := NULL;
    LOOP
      SELECT * INTO l FROM stripe_billing._list_page('/v1/payment_methods',
          jsonb_strip_nulls(jsonb_build_object('customer', customers[i], 'limit', 100,
                                               'starting_after', items->-1->>'id')),
          CASE WHEN items = '[]' AND i + ahead <= cardinality(customers)
               THEN jsonb_build_object('customer', customers[i + ahead], 'limit', 100) ELSE 'null' END,
          account => for_account);
      requests := requests + 1;
      taken_at := coalesce(taken_at, l.snapshot);
      items := items || coalesce(l.page->'data', '[]');
      EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
    END LOOP;
    methods := methods || items;
    snapshot := least(snapshot, taken_at);
    next_cursor := customers[i];
  END LOOP;
  objects := jsonb_array_length(methods);
  IF objects > 0 THEN
    PERFORM stripe_billing._apply_snapshots(methods, snapshot, 'backfill', account => for_account);
  END IF;
END
$$;

-- The list a kind of the rest of the billing model is backfilled from, and
-- what it asks for besides the page (NULL: not one of them).
CREATE FUNCTION stripe_billing._backfill_model_list(kind text, OUT path text, OUT params jsonb)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE kind WHEN 'coupons' THEN '/v1/coupons' WHEN 'promotion_codes' THEN '/v1/promotion_codes'
                   WHEN 'credit_notes' THEN '/v1/credit_notes' WHEN 'disputes' THEN '/v1/disputes' END,
         CASE kind
           -- (the customers a dispute may revoke the features of: its charge's)
           WHEN 'disputes' THEN '{"expand": ["data.charge"]}'::jsonb
           -- (a customer's tax ids, a subscription's discounts: _backfill_embedded)
           WHEN 'customers' THEN '{"expand": ["data.tax_ids"]}'::jsonb
           WHEN 'subscriptions' THEN '{"expand": ["data.discounts"]}'::jsonb
           ELSE '{}'::jsonb END
$$;

-- A discount has no endpoint of its own: its tie is settled by re-reading
-- what holds it, a subscription (expand[]=discounts), an invoice
-- (expand[]=discounts) or a customer (its own discount), whose answer
-- stripe_api applies; the discount is applied from it, or, when it holds
-- it no more, tombstoned as of now.  (For _refetch_one, which holds the
-- discount's keys.)
CREATE FUNCTION stripe_billing._refetch_discount(discount_id text, for_account text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  d stripe_billing.discounts;
  answer jsonb;
  found_it jsonb;
  holder text;
BEGIN
  SELECT * INTO d FROM stripe_billing.discounts WHERE id = discount_id;
  holder := CASE WHEN d.subscription IS NOT NULL THEN '/v1/subscriptions/' || d.subscription
                 WHEN d.invoice IS NOT NULL THEN '/v1/invoices/' || d.invoice
                 WHEN d.customer IS NOT NULL AND d.checkout_session IS NULL AND d.invoice_item IS NULL
                   THEN '/v1/customers/' || d.customer END;
  IF holder IS NULL OR holder !~ '^/v1/[a-z]+/[A-Za-z0-9_]{1,255}$' THEN
    RETURN;   -- (nothing to read it from)
  END IF;
  answer := stripe_billing.stripe_api('GET', holder,
                                      CASE WHEN d.customer IS NOT NULL AND d.subscription IS NULL AND d.invoice IS NULL
                                           THEN '{}' ELSE '{"expand": ["discounts"]}' END::jsonb,
                                      account => for_account);
  SELECT e INTO found_it
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(answer->'discounts') = 'array' THEN answer->'discounts'
                                   ELSE jsonb_build_array(answer->'discount') END) e
   WHERE jsonb_typeof(e) = 'object' AND e->>'id' = discount_id;
  IF found_it IS NOT NULL THEN
    PERFORM stripe_billing._apply_snapshots(jsonb_build_array(found_it), now(), 'refetch', account => for_account);
  ELSE
    UPDATE stripe_billing.discounts SET deleted = true, last_event_id = NULL, last_event_created = now(),
                                        refetch = false, updated_at = now()
     WHERE id = discount_id AND NOT deleted;
  END IF;
END
$$;

-- How a listed dispute (its charge expanded) differs from the local row:
-- missing here, its status (open or not: what dispute_access revokes on),
-- its customer.  The reconciliation's third phase (13_reconcile.sql): a
-- missed charge.dispute.closed would leave features revoked.
CREATE FUNCTION stripe_billing._dispute_drift(o jsonb)
RETURNS TABLE (field text, local_value text, stripe_value text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT 'row', NULL, 'present'
   WHERE NOT EXISTS (SELECT FROM stripe_billing.disputes WHERE id = o->>'id')
  UNION ALL
  SELECT f.field, f.local_value, f.stripe_value
    FROM stripe_billing.disputes l,
         LATERAL (VALUES
           ('status', l.status, o->>'status'),
           ('customer', l.customer, coalesce(stripe_billing._id(o->'charge'->'customer'), l.customer))
         ) f(field, local_value, stripe_value)
   WHERE l.id = o->>'id' AND f.local_value IS DISTINCT FROM f.stripe_value
$$;
