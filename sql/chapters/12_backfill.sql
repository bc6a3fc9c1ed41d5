
--------------------------------------------------------------------------
-- Listing Stripe's current objects: the backfill (an account that existed
-- before the install) and reconciliation (drift between Stripe and here)
--------------------------------------------------------------------------

-- One GET of a list endpoint, of the account (NULL: the platform's),
-- spaced under max_requests_per_second; the page is returned, not applied,
-- with its time (Stripe's Date header).  The next request (next_params;
-- NULL: the next page; JSON null: none) starts in the background meanwhile
-- (see listing.c).
CREATE FUNCTION stripe_billing._list_page(path text, params jsonb, next_params jsonb DEFAULT NULL,
                                          account text DEFAULT NULL,
                                          OUT page jsonb, OUT snapshot timestamptz)
AS 'MODULE_PATHNAME', 'stripe_list_page'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Starts a request a later _list_page makes (of the same account), in the
-- background.
CREATE FUNCTION stripe_billing._list_prefetch(path text, params jsonb, account text DEFAULT NULL) RETURNS void
AS 'MODULE_PATHNAME', 'stripe_list_prefetch'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Applies listed objects (of the account: NULL, the platform's) as
-- snapshots taken at snapshot (see listing.c); derive false: the caller
-- derives their customers' users' features.
CREATE FUNCTION stripe_billing._apply_snapshots(objects jsonb, snapshot timestamptz, source text,
                                                replacements jsonb DEFAULT NULL, derive boolean DEFAULT true,
                                                account text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stripe_apply_snapshots'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;

-- Stripe embeds at most 10 items in a listed subscription: the rest of each
-- cut-short list is read from /v1/subscription_items, so the snapshot holds
-- every item.  Returns the completed subscriptions by id (to stand for the
-- listed ones: the page itself is not rebuilt) and how many requests it took.
CREATE FUNCTION stripe_billing._complete_items(subscriptions jsonb, for_account text DEFAULT NULL,
                                               OUT complete jsonb, OUT requests integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  cut jsonb[];         -- the subscriptions whose item list was cut short
  sub jsonb;
  items jsonb;
  l record;
  ahead constant integer := 2;   -- first item pages kept in flight (besides the next page)
BEGIN
  complete := '{}';
  requests := 0;
  SELECT coalesce(array_agg(e), '{}') INTO cut FROM jsonb_array_elements(subscriptions) e
   WHERE coalesce((e->'items'->>'has_more')::boolean, false);
  FOR i IN 1 .. least(cardinality(cut), ahead) LOOP
    PERFORM stripe_billing._list_prefetch('/v1/subscription_items',
                                          jsonb_build_object('subscription', cut[i]->>'id', 'limit', 100),
                                          account => for_account);
  END LOOP;
  FOR i IN 1 .. cardinality(cut) LOOP
    sub := cut[i];
    items := '[]';
    LOOP
      -- the first item page of a subscription further on travels meanwhile
      SELECT * INTO l FROM stripe_billing._list_page('/v1/subscription_items',
          jsonb_strip_nulls(jsonb_build_object('subscription', sub->>'id', 'limit', 100,
                                               'starting_after', items->-1->>'id')),
          CASE WHEN items = '[]' AND i + ahead <= cardinality(cut)
               THEN jsonb_build_object('subscription', cut[i + ahead]->>'id', 'limit', 100)
               ELSE 'null' END, account => for_account);
      requests := requests + 1;
      items := items || coalesce(l.page->'data', '[]');
      EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
    END LOOP;
    complete := complete || jsonb_build_object(sub->>'id', jsonb_set(sub, '{items}',
        (sub->'items') || jsonb_build_object('data', items, 'has_more', false)));
  END LOOP;
END
$$;

-- The backfill's progress, one row per kind (kept by pg_dump).
CREATE TABLE stripe_billing.backfill_state (
    kind          text NOT NULL,
    ordinal       integer NOT NULL,     -- dependency order
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'done', 'failed')),
    list_cursor   text,                 -- starting_after: the last object (customer, for entitlements) done
    pages         bigint NOT NULL DEFAULT 0,
    objects       bigint NOT NULL DEFAULT 0,
    requests      bigint NOT NULL DEFAULT 0,
    since         timestamptz,          -- invoices: created since then
    started_at    timestamptz,
    finished_at   timestamptz,
    last_error    text,
    last_error_at timestamptz,
    account       text,                 -- the connected account backfilled (NULL: the platform)
    CONSTRAINT backfill_state_kind_account_key UNIQUE NULLS NOT DISTINCT (kind, account)
);
SELECT pg_catalog.pg_extension_config_dump('stripe_billing.backfill_state', '');

CREATE VIEW stripe_billing.backfill_status AS
SELECT kind, state, pages, objects, requests, started_at, finished_at, last_error, account
  FROM stripe_billing.backfill_state
 ORDER BY account NULLS FIRST, ordinal;

-- The kinds a backfill lists, in dependency order (the connected accounts,
-- /v1/accounts, are the platform's only).  Coupons and promotion codes
-- before the customers and subscriptions whose discounts name them (a
-- customer's tax ids and own discount come with it, a subscription's
-- discounts with it), subscription schedules after the subscriptions they
-- manage, credit notes after their invoices, disputes (with their charges)
-- and the payment methods of customers with a live subscription after
-- those (chapter 33).
CREATE FUNCTION stripe_billing._backfill_kinds() RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ARRAY['products', 'prices',
               'coupons', 'promotion_codes',
               'customers', 'subscriptions', 'subscription_schedules', 'invoices',
               'credit_notes', 'disputes', 'payment_methods',
               'entitlements', 'accounts']
$$;

-- Starts a backfill of the given kinds (all when NULL).  While one of them
-- is unfinished (a crash, a cancel, a failure), the backfill resumes: those
-- go on from their cursors, those done stay done.  When all are done, they
-- start over (a new backfill).
CREATE FUNCTION stripe_billing._backfill_begin(kinds text[], for_account text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  known text[] := CASE WHEN for_account IS NULL THEN stripe_billing._backfill_kinds()
                       ELSE array_remove(stripe_billing._backfill_kinds(), 'accounts') END;
  bad text;
  again boolean;
BEGIN
  PERFORM stripe_billing.stripe_now();   -- (loads the library, which defines the settings read below)
  PERFORM stripe_billing._check_account('account', for_account);
  IF kinds IS NOT NULL THEN
    IF cardinality(kinds) = 0 THEN
      PERFORM stripe_billing._bad_argument('kinds', 'must not be empty (NULL means every kind)');
    END IF;
    SELECT k INTO bad FROM unnest(kinds) k WHERE k IS NULL OR NOT k = ANY (known) LIMIT 1;
    IF FOUND THEN
      PERFORM stripe_billing._bad_argument('kinds', format('%s is not a kind of object to backfill (%s)',
                                                           coalesce(quote_literal(bad), 'NULL'),
                                                           array_to_string(known, ', ')));
    END IF;
  END IF;
  again := NOT EXISTS (SELECT FROM stripe_billing.backfill_state s
                        WHERE s.kind = ANY (coalesce(kinds, known)) AND s.state <> 'done'
                          AND s.account IS NOT DISTINCT FROM for_account);
  INSERT INTO stripe_billing.backfill_state AS b (kind, ordinal, since, account)
  SELECT k, array_position(stripe_billing._backfill_kinds(), k),
         CASE WHEN k = 'invoices'
              THEN now() - current_setting('stripe_billing.backfill_invoices_since')::interval END,
         for_account
    FROM unnest(coalesce(kinds, known)) k
  ON CONFLICT (kind, account) DO UPDATE
     SET state = 'pending', list_cursor = NULL, pages = 0, objects = 0, requests = 0, since = EXCLUDED.since,
         started_at = NULL, finished_at = NULL, last_error = NULL, last_error_at = NULL
   WHERE again AND b.state = 'done';
  UPDATE stripe_billing.backfill_state s
     SET state = 'pending'
   WHERE s.state = 'failed' AND s.kind = ANY (coalesce(kinds, known))
     AND s.account IS NOT DISTINCT FROM for_account;
END
$$;

-- One page of a kind: lists it (entitlements: per customer with a live
-- subscription) and applies it as snapshots.
CREATE FUNCTION stripe_billing._backfill_page(kind text, list_cursor text, since timestamptz,
                                              for_account text DEFAULT NULL,
                                              OUT objects integer, OUT requests integer,
                                              OUT next_cursor text, OUT has_more boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  l record;
  c record;
  data jsonb;
  items jsonb;
  customers text[];
  taken_at timestamptz;
  summaries jsonb;
  snapshot timestamptz;
  path text;
  params jsonb;
  ahead constant integer := 3;   -- entitlements: customers' requests kept in flight
BEGIN
  objects := 0;
  requests := 0;
  next_cursor := list_cursor;
  has_more := false;
  IF kind = 'payment_methods' THEN
    -- (per customer, as entitlements: chapter 33)
    SELECT * INTO l FROM stripe_billing._backfill_payment_methods_page(list_cursor, for_account);
    objects := l.objects; requests := l.requests; next_cursor := l.next_cursor; has_more := l.has_more;
    RETURN;
  END IF;
  IF kind = 'entitlements' THEN
    -- no list spans customers: twenty customers a page, each applied as it
    -- comes, while the requests of the next few (ahead) travel, also past
    -- this page (the next call takes them); their users' features are
    -- derived at the end, at once
    SELECT array_agg(customer ORDER BY customer) INTO customers
      FROM (SELECT DISTINCT s.customer FROM stripe_billing.subscriptions s
             WHERE s.status NOT IN ('canceled', 'incomplete_expired') AND s.customer IS NOT NULL
               AND s.account IS NOT DISTINCT FROM for_account
               AND s.customer > coalesce(list_cursor, '')
             ORDER BY 1 LIMIT 20 + ahead) c;
    has_more := coalesce(cardinality(customers), 0) > 20;
    FOR i IN 1 .. least(coalesce(cardinality(customers), 0), ahead) LOOP
      PERFORM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                            jsonb_build_object('customer', customers[i], 'limit', 100),
                                            account => for_account);
    END LOOP;
    summaries := '[]';
    FOR i IN 1 .. least(coalesce(cardinality(customers), 0), 20) LOOP
      items := '[]';
      taken_at := NULL;
      LOOP
        SELECT * INTO l FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
            jsonb_strip_nulls(jsonb_build_object('customer', customers[i], 'limit', 100,
                                                 'starting_after', items->-1->>'id')),
            CASE WHEN items = '[]' AND i + ahead <= cardinality(customers)
                 THEN jsonb_build_object('customer', customers[i + ahead], 'limit', 100) ELSE 'null' END,
            account => for_account);
        requests := requests + 1;
        taken_at := coalesce(taken_at, l.snapshot);   -- (the first page's: the summary is no newer)
        items := items || coalesce(l.page->'data', '[]');
        EXIT WHEN NOT coalesce((l.page->>'has_more')::boolean, false) OR jsonb_array_length(l.page->'data') = 0;
      END LOOP;
      summaries := summaries || jsonb_build_array(jsonb_build_object(
          'object', 'entitlements.active_entitlement_summary', 'customer', customers[i],
          'entitlements', jsonb_build_object('object', 'list', 'has_more', false, 'data', items)));
      snapshot := least(snapshot, taken_at);
      objects := objects + 1;
      next_cursor := customers[i];
    END LOOP;
    -- applied at once, as of the oldest answer (each summary is no newer):
    -- one unit, its locks taken together (see locks.c)
    IF objects > 0 THEN
      PERFORM stripe_billing._apply_snapshots(summaries, snapshot, 'backfill', derive => false,
                                              account => for_account);
      PERFORM stripe_billing._refresh_customers_features(customers[1:20],
                                                         'entitlements.active_entitlement_summary.backfill');
    END IF;
    RETURN;
  END IF;

  path := CASE kind WHEN 'products' THEN '/v1/products' WHEN 'prices' THEN '/v1/prices'
                    WHEN 'customers' THEN '/v1/customers' WHEN 'subscriptions' THEN '/v1/subscriptions'
                    WHEN 'invoices' THEN '/v1/invoices' WHEN 'accounts' THEN '/v1/accounts'
                    WHEN 'subscription_schedules' THEN '/v1/subscription_schedules'
                    -- (coupons, promotion codes, credit notes, disputes: chapter 33)
                    ELSE (stripe_billing._backfill_model_list(kind)).path END;
  params := jsonb_strip_nulls(jsonb_build_object(
      'limit', 100, 'starting_after', list_cursor,
      -- (products and prices: active and inactive alike when not asked for one)
      'status', CASE WHEN kind = 'subscriptions' THEN 'all' END,
      'created', CASE WHEN kind = 'invoices'
                      THEN jsonb_build_object('gte', floor(extract(epoch FROM since))::bigint) END))
      -- (what comes embedded or expanded: chapter 33)
      || (stripe_billing._backfill_model_list(kind)).params;
  -- the next page travels while this one is applied (for subscriptions,
  -- and while their cut-short item lists are read)
  SELECT * INTO l FROM stripe_billing._list_page(path, params,
                                                 CASE WHEN kind = 'subscriptions' THEN 'null'::jsonb END,
                                                 account => for_account);
  requests := 1;
  data := coalesce(l.page->'data', '[]');
  has_more := coalesce((l.page->>'has_more')::boolean, false) AND jsonb_array_length(data) > 0;
  SELECT NULL::jsonb AS complete, 0 AS requests INTO c;
  IF kind = 'subscriptions' THEN
    IF has_more THEN
      PERFORM stripe_billing._list_prefetch(path, params || jsonb_build_object('starting_after', data->-1->>'id'),
                                            account => for_account);
    END IF;
    SELECT * INTO c FROM stripe_billing._complete_items(data, for_account);
    requests := requests + c.requests;
  END IF;
  PERFORM stripe_billing._apply_snapshots(data, l.snapshot, 'backfill', c.complete, account => for_account);
  -- a customer's tax ids, a subscription's discounts (chapter 33)
  requests := requests + stripe_billing._backfill_embedded(kind, data, l.snapshot, for_account);
  objects := jsonb_array_length(data);
  next_cursor := coalesce(data->-1->>'id', list_cursor);
END
$$;

-- Refreshes the statistics of the tables a kind fills.
CREATE FUNCTION stripe_billing._backfill_analyze(kind text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  CASE kind
  WHEN 'products' THEN ANALYZE stripe_billing.products;
  WHEN 'prices' THEN ANALYZE stripe_billing.prices;
  WHEN 'customers' THEN
    ANALYZE stripe_billing.customers, stripe_billing.user_derivations, stripe_billing.tax_ids, stripe_billing.discounts;
  WHEN 'subscriptions' THEN
    ANALYZE stripe_billing.subscriptions, stripe_billing.subscription_items, stripe_billing.user_features,
            stripe_billing.user_derivations, stripe_billing.discounts;
  WHEN 'invoices' THEN ANALYZE stripe_billing.invoices;
  WHEN 'entitlements' THEN
    ANALYZE stripe_billing.entitlement_summaries, stripe_billing.active_entitlements, stripe_billing.user_features;
  WHEN 'accounts' THEN ANALYZE stripe_billing.accounts;
  -- the rest of the billing model (chapter 33)
  WHEN 'coupons' THEN ANALYZE stripe_billing.coupons;
  WHEN 'promotion_codes' THEN ANALYZE stripe_billing.promotion_codes;
  WHEN 'credit_notes' THEN ANALYZE stripe_billing.credit_notes;
  WHEN 'disputes' THEN ANALYZE stripe_billing.disputes;
  WHEN 'payment_methods' THEN ANALYZE stripe_billing.payment_methods;
  WHEN 'subscription_schedules' THEN
    ANALYZE stripe_billing.subscription_schedules, stripe_billing.subscription_schedule_phases;
  END CASE;
END
$$;

-- Backfills one page of the first unfinished kind (of kinds; NULL: any),
-- committed with its kind's cursor by the caller.  A failure is recorded
-- (failed, last_error) and returned, not raised: other kinds go on.  The
-- worker (retry_failed) takes a failed kind up again a minute later.
-- Returns the kind (NULL: nothing left), a progress line and whether it
-- failed.
CREATE FUNCTION stripe_billing._backfill_step(kinds text[], retry_failed boolean DEFAULT false,
                                              for_account text DEFAULT NULL, any_account boolean DEFAULT false,
                                              OUT kind text, OUT message text, OUT failed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  b stripe_billing.backfill_state;
  p record;
  pages bigint;
BEGIN
  failed := false;
  SELECT * INTO b FROM stripe_billing.backfill_state s
   WHERE (s.state IN ('pending', 'running')
          OR (retry_failed AND s.state = 'failed' AND s.last_error_at < now() - interval '1 minute'))
     AND (kinds IS NULL OR s.kind = ANY (kinds))
     AND (any_account OR s.account IS NOT DISTINCT FROM for_account)
   ORDER BY s.account NULLS FIRST, s.ordinal LIMIT 1
   FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  kind := b.kind;
  BEGIN
    p := stripe_billing._backfill_page(b.kind, b.list_cursor, b.since, b.account);
    UPDATE stripe_billing.backfill_state s
       SET state = CASE WHEN p.has_more THEN 'running' ELSE 'done' END,
           list_cursor = p.next_cursor, pages = s.pages + 1, objects = s.objects + p.objects,
           requests = s.requests + p.requests, started_at = coalesce(s.started_at, now()),
           finished_at = CASE WHEN NOT p.has_more THEN now() END, last_error = NULL, last_error_at = NULL
     WHERE s.kind = b.kind AND s.account IS NOT DISTINCT FROM b.account
    RETURNING format('stripe_billing backfill%s: %s, page %s: %s objects (%s in all)%s',
                     ' of ' || s.account, s.kind, s.pages, p.objects,
                     s.objects, CASE WHEN p.has_more THEN '' ELSE ', done' END), s.pages
      INTO message, pages;
    -- tables filled from empty: statistics at 1, 4, 16 ... pages, so that
    -- the plans of the mapping and the derivations follow their growth
    -- (a plan made for an empty table would scan it whole for every row)
    IF pages IN (1, 4, 16, 64, 256, 1024, 4096) THEN
      PERFORM stripe_billing._backfill_analyze(b.kind);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    -- errors of the moment, not the data (a deadlock, a serialization
    -- failure, a shutdown) are raised: the page rolls back and is done
    -- again, the kind resuming from its cursor (a cancel is not caught at all)
    IF left(SQLSTATE, 2) IN ('40', '53', '57', '58') THEN
      RAISE;
    END IF;
    UPDATE stripe_billing.backfill_state s
       SET state = 'failed', started_at = coalesce(s.started_at, now()), last_error = SQLERRM, last_error_at = now()
     WHERE s.kind = b.kind AND s.account IS NOT DISTINCT FROM b.account;
    message := format('stripe_billing backfill%s: %s failed: %s', ' of ' || b.account, b.kind, SQLERRM);
    failed := true;
  END;
END
$$;

-- Lists the Stripe account's current objects (the platform's, or a connected
-- account's) and applies them, page by page, each page committed with its
-- kind's cursor: stopped at any moment, a second call resumes where it
-- stopped.  Not in a transaction block (it commits).
CREATE PROCEDURE stripe_billing.stripe_backfill(kinds text[] DEFAULT NULL, account text DEFAULT NULL)
LANGUAGE plpgsql
-- (no SET clause: a procedure with one may not commit; every type, call
-- and operator below is qualified, and each step runs through
-- _procedure_step, see stripe_sync_now)
AS $$
DECLARE
  step pg_catalog.jsonb;
  failures pg_catalog.text[] := '{}';
BEGIN
  PERFORM stripe_billing._procedure_step('backfill.begin',
                                         pg_catalog.jsonb_build_object('kinds', kinds, 'account', account));
  COMMIT;
  LOOP
    step := stripe_billing._procedure_step('backfill.step',
                                           pg_catalog.jsonb_build_object('kinds', kinds, 'account', account));
    EXIT WHEN step OPERATOR(pg_catalog.->>) 'kind' IS NULL;
    RAISE NOTICE '%', step OPERATOR(pg_catalog.->>) 'message';
    IF (step OPERATOR(pg_catalog.->>) 'failed')::pg_catalog.bool THEN
      failures := pg_catalog.array_append(failures, step OPERATOR(pg_catalog.->>) 'message');
    END IF;
    COMMIT;
  END LOOP;
  IF pg_catalog.cardinality(failures) OPERATOR(pg_catalog.>) 0 THEN
    RAISE EXCEPTION 'stripe_billing backfill: % kind(s) failed', pg_catalog.cardinality(failures)
          USING DETAIL = pg_catalog.array_to_string(failures, E'\n'),
                HINT = 'See stripe_billing.backfill_status; the same CALL again resumes them.';
  END IF;
END
$$;
REVOKE ALL ON PROCEDURE stripe_billing.stripe_backfill(text[], text) FROM PUBLIC;

