#!/usr/bin/env bash
# Cross-check with an independent client: the official stripe SDK (npm) signs
# fresh random payloads with random secrets and times, and judges each case
# itself; stripe_verify_signature must agree on every one.  Then the same
# for thin notifications (below): parseEventNotification against
# stripe_handle_webhook.
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/lib/work.sh
work_begin signatures
cases=$work/cases.json
NODE_PATH=test/integration/node/node_modules node test/integration/signature_crosscheck.js 100 >"$cases"

psql -X -v ON_ERROR_STOP=1 -q <<SQL
CREATE EXTENSION IF NOT EXISTS stripe_billing;
\set cases \`cat $cases\`
CREATE TEMP TABLE verdicts AS
SELECT c->>'kind' AS kind, (c->>'sdk')::boolean AS sdk,
       stripe_billing.stripe_verify_signature(c->>'payload', c->>'header', c->>'secret', 300,
                                              to_timestamp((c->>'now')::bigint)) AS ext,
       stripe_billing.stripe_verify_signature(convert_to(c->>'payload', 'UTF8'), c->>'header',
                                              ARRAY[c->>'secret'], 300,
                                              to_timestamp((c->>'now')::bigint)) AS ext_bytea
  FROM jsonb_array_elements(:'cases'::jsonb) c;
SELECT kind, count(*) AS cases, count(*) FILTER (WHERE sdk) AS sdk_accepted,
       count(*) FILTER (WHERE ext = sdk AND ext_bytea = sdk) AS agreed
  FROM verdicts GROUP BY kind ORDER BY kind;
DO \$\$
DECLARE n int; d int; a int; r int;
BEGIN
  SELECT count(*), count(*) FILTER (WHERE ext IS DISTINCT FROM sdk OR ext_bytea IS DISTINCT FROM sdk),
         count(*) FILTER (WHERE sdk), count(*) FILTER (WHERE NOT sdk)
    INTO n, d, a, r FROM verdicts;
  IF n = 0 OR a = 0 OR r = 0 THEN
    RAISE EXCEPTION 'cross-check is vacuous: % cases, % accepted, % rejected by the SDK', n, a, r;
  END IF;
  IF d > 0 THEN
    RAISE EXCEPTION '% of % cases disagree with the stripe SDK', d, n;
  END IF;
  RAISE NOTICE 'signature cross-check: % cases (% accepted, % rejected by the SDK), all agree', n, a, r;
END \$\$;
SQL

# Thin events (event destinations): the SDK's parseEventNotification and
# stripe_handle_webhook judge the same signed notifications alike (valid, with
# Stripe's diagnostics items and unknown ones, future, too old, tampered,
# another secret, rotation, no v1, no header); what the SDK read of an
# accepted one (id, type, context, related object) is what the ledger
# recorded; and when Stripe's items are there, a refusal says which of the
# two went wrong (the body, or the secrets).  In a transaction rolled back.
thin=$work/thin.json
NODE_PATH=test/integration/node/node_modules node test/integration/thin_crosscheck.js 20 >"$thin"

psql -X -v ON_ERROR_STOP=1 -q <<SQL
CREATE EXTENSION IF NOT EXISTS stripe_billing;
\set cases \`cat $thin\`
BEGIN;
CREATE TEMP TABLE thin_cases ON COMMIT DROP AS
SELECT n, c FROM jsonb_array_elements(:'cases'::jsonb) WITH ORDINALITY x(c, n);
CREATE TEMP TABLE thin_verdicts (kind text, sdk boolean, ext boolean, outcome text, sqlstate text, detail text,
                                 diagnosis text, same_fields boolean) ON COMMIT DROP;
DO \$\$
DECLARE
  c jsonb;
  outcome text;
  st text;
  det text;
BEGIN
  FOR c IN SELECT t.c FROM thin_cases t ORDER BY t.n LOOP
    BEGIN
      PERFORM set_config('stripe_billing.webhook_secret', c->>'secret', true);
      outcome := stripe_billing.stripe_handle_webhook(c->>'payload', nullif(c->>'header', ''));
      st := NULL;
      det := NULL;
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, det = PG_EXCEPTION_DETAIL;
      outcome := NULL;
    END;
    INSERT INTO thin_verdicts
    SELECT c->>'kind', (c->>'sdk')::boolean, outcome IS NOT NULL, outcome, st, det, c->>'diagnosis',
           (SELECT e.id = c->>'sdk_id' AND e.type = c->>'sdk_type' AND e.account IS NOT DISTINCT FROM c->>'sdk_context'
                   AND e.payload->'related_object'->>'url' IS NOT DISTINCT FROM c->>'sdk_related_url'
              FROM stripe_billing.events e WHERE e.id = c->>'sdk_id');
  END LOOP;
END \$\$;
SELECT kind, count(*) AS cases, count(*) FILTER (WHERE sdk) AS sdk_accepted,
       count(*) FILTER (WHERE ext = sdk AND (sqlstate IS NULL OR sqlstate LIKE 'SBS%')) AS agreed,
       string_agg(DISTINCT outcome, ',') AS outcomes
  FROM thin_verdicts GROUP BY kind ORDER BY kind;
DO \$\$
DECLARE n int; d int; a int; r int; f int; diag int; wrong_diag int;
BEGIN
  SELECT count(*),
         count(*) FILTER (WHERE ext IS DISTINCT FROM sdk OR (sqlstate IS NOT NULL AND sqlstate NOT LIKE 'SBS%')),
         count(*) FILTER (WHERE sdk), count(*) FILTER (WHERE NOT sdk),
         count(*) FILTER (WHERE ext AND same_fields IS NOT TRUE),
         count(*) FILTER (WHERE diagnosis IS NOT NULL),
         count(*) FILTER (WHERE diagnosis = 'body' AND detail NOT LIKE 'The body differs from the one Stripe sent%'
                             OR diagnosis = 'secret' AND detail NOT LIKE 'None of the % configured secret(s) looks like the one Stripe signed with%')
    INTO n, d, a, r, f, diag, wrong_diag FROM thin_verdicts;
  IF n = 0 OR a = 0 OR r = 0 OR diag = 0 THEN
    RAISE EXCEPTION 'thin cross-check is vacuous: % cases, % accepted, % rejected by the SDK, % with items to diagnose', n, a, r, diag;
  END IF;
  IF d > 0 THEN
    RAISE EXCEPTION '% of % thin notifications judged otherwise than by the SDK''s parseEventNotification', d, n;
  END IF;
  IF f > 0 THEN
    RAISE EXCEPTION '% accepted notifications recorded otherwise than the SDK read them', f;
  END IF;
  IF wrong_diag > 0 THEN
    RAISE EXCEPTION '% refusals do not say which of body and secret went wrong', wrong_diag;
  END IF;
  RAISE NOTICE 'thin cross-check: % notifications (% accepted, % rejected by parseEventNotification), all agree; % refusals diagnosed (body or secret)',
               n, a, r, diag;
END \$\$;
ROLLBACK;
SQL
