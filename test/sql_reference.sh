#!/usr/bin/env bash
# The README's SQL reference is complete: every function of schema
# stripe_billing whose name does not start with "_" (the internal ones) is
# named in its "SQL reference" section, and every column of every table and
# view of the schema is named (as `column`) in the README.  Runs against the
# suite's cluster (PGHOST/PGDATABASE), in a database of its own.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
db=sb_sql_reference
dropdb --if-exists "$db" 2>/dev/null
createdb "$db" || exit 1
trap 'dropdb --if-exists "$db" 2>/dev/null' EXIT
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION stripe_billing" 2>/dev/null || exit 1
fail=0
ref=$(sed -n '/^## SQL reference/,/^## Benchmarks/p' README.md)
functions=$(psql -X -At -d "$db" -c "SELECT DISTINCT proname FROM pg_proc
    WHERE pronamespace = 'stripe_billing'::regnamespace AND proname NOT LIKE '\_%' ORDER BY 1")
missing=()
for f in $functions; do grep -qE "(^|[^a-z_])$f\(" <<<"$ref" || missing+=("$f"); done
if [ ${#missing[@]} -eq 0 ] && [ "$(wc -w <<<"$functions")" -gt 20 ]; then
    echo "PASS  the SQL reference names all $(wc -w <<<"$functions") public functions"
else
    echo "FAIL  public functions missing from the SQL reference: ${missing[*]:-(none; but only $(wc -w <<<"$functions") found)}"; fail=1
fi
columns=$(psql -X -At -F . -d "$db" -c "SELECT c.relname, a.attname FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relnamespace = 'stripe_billing'::regnamespace AND c.relkind IN ('r', 'v') ORDER BY 1, a.attnum")
missing=()
for rc in $columns; do grep -qF "\`${rc#*.}\`" README.md || missing+=("$rc"); done
relations=$(cut -d. -f1 <<<"$columns" | sort -u)
for r in $relations; do grep -qE "\`(stripe_billing\.)?$r\`" README.md || missing+=("$r (the relation)"); done
if [ ${#missing[@]} -eq 0 ]; then
    echo "PASS  the README names every column of the $(wc -l <<<"$relations") tables and views ($(wc -l <<<"$columns") columns)"
else
    echo "FAIL  columns the README does not name: ${missing[*]}"; fail=1
fi
exit $fail
