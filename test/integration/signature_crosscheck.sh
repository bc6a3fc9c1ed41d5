#!/usr/bin/env bash
# Cross-check with an independent client: the official stripe SDK (npm) signs
# fresh random payloads with random secrets and times, and judges each case
# itself; stripe_verify_signature must agree on every one.
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
