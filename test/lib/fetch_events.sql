-- Every event the fake (stripe_billing.api_base) lists, or with the setting
-- fetch.max only the newest that many, into a new table fetched (n, event),
-- n = 1 for the oldest: psql -f test/lib/fetch_events.sql
CREATE TABLE fetched (n bigint, event jsonb);
DO $$
DECLARE page jsonb; after text; k bigint := 0;
BEGIN
  LOOP
    page := stripe_billing.stripe_api('GET', '/v1/events',
              jsonb_strip_nulls(jsonb_build_object('limit', 100, 'starting_after', after)));
    INSERT INTO fetched SELECT k + o, e FROM jsonb_array_elements(page->'data') WITH ORDINALITY AS x(e, o);
    k := k + jsonb_array_length(page->'data');
    after := page->'data'->-1->>'id';
    EXIT WHEN NOT (page->>'has_more')::boolean
           OR k >= coalesce(nullif(current_setting('fetch.max', true), '')::bigint, k + 1);
  END LOOP;
END $$;
DELETE FROM fetched WHERE n > coalesce(nullif(current_setting('fetch.max', true), '')::bigint, n);
-- (listed newest first)
UPDATE fetched SET n = (SELECT max(n) + 1 FROM fetched) - n;
