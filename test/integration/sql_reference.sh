#!/usr/bin/env bash
# The reference (docs/reference.md) is complete: it names every function of
# schema stripe_billing whose name does not start with "_" (the internal
# ones), as name(; every column of every table and view of the schema (as
# `column`) in the section under the heading that names its relation (as
# `relation`); every setting (as `stripe_billing.name`); and every SQLSTATE
# of the extension's own (as `SBxnn`, from the MAKE_SQLSTATE definitions in
# src/).  Runs against the suite's cluster (PGHOST/PGDATABASE), in a
# database of its own.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
reference=docs/reference.md
[ -f "$reference" ] || { echo "FAIL  $reference is missing"; exit 1; }
db=sb_sql_reference
dropdb --if-exists "$db" 2>/dev/null
createdb "$db" || exit 1
trap 'dropdb --if-exists "$db" 2>/dev/null' EXIT
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c "CREATE EXTENSION stripe_billing" 2>/dev/null || exit 1
fail=0

functions=$(psql -X -At -d "$db" -c "SELECT DISTINCT proname FROM pg_proc
    WHERE pronamespace = 'stripe_billing'::regnamespace AND proname NOT LIKE '\_%' ORDER BY 1")
missing=()
for f in $functions; do grep -qE "(^|[^a-z_])$f\(" "$reference" || missing+=("$f"); done
if [ ${#missing[@]} -eq 0 ] && [ "$(wc -w <<<"$functions")" -gt 20 ]; then
    echo "PASS  the reference names all $(wc -w <<<"$functions") public functions"
else
    echo "FAIL  public functions missing from the reference: ${missing[*]:-(none; but only $(wc -w <<<"$functions") found)}"; fail=1
fi

columns=$(psql -X -At -F . -d "$db" -c "SELECT c.relname, a.attname FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relnamespace = 'stripe_billing'::regnamespace AND c.relkind IN ('r', 'v') ORDER BY 1, a.attnum")
relations=$(cut -d. -f1 <<<"$columns" | sort -u)
missing=()
for r in $relations; do
    # the lines from a heading that names the relation to the next heading
    section=$(awk -v r="$r" 'BEGIN { pat = "`(stripe_billing\\.)?" r "`" }
                             /^#/ { inside = ($0 ~ pat) } inside' "$reference")
    if [ -z "$section" ]; then
        missing+=("$r (no heading names it)")
        continue
    fi
    for rc in $(grep "^$r\." <<<"$columns"); do
        grep -qF "\`${rc#*.}\`" <<<"$section" || missing+=("$rc")
    done
done
if [ ${#missing[@]} -eq 0 ] && [ "$(wc -l <<<"$relations")" -gt 20 ]; then
    echo "PASS  the reference names every column of the $(wc -l <<<"$relations") tables and views ($(wc -l <<<"$columns") columns), each under its relation"
else
    echo "FAIL  columns the reference does not name under their relation: ${missing[*]:-(none; but only $(wc -l <<<"$relations") relations found)}"; fail=1
fi

# pg_settings lists the settings once the library is loaded, but never the
# two secrets (GUC_NO_SHOW_ALL), which are named here
settings=$(psql -X -q -At -d "$db" -c "LOAD 'stripe_billing'" -c "SELECT name FROM pg_settings
    WHERE name LIKE 'stripe\_billing.%' UNION ALL SELECT unnest(ARRAY['stripe_billing.api_key',
    'stripe_billing.webhook_secret']) ORDER BY 1")
missing=()
for s in $settings; do grep -qF "\`$s\`" "$reference" || missing+=("$s"); done
if [ ${#missing[@]} -eq 0 ] && [ "$(wc -w <<<"$settings")" -gt 20 ]; then
    echo "PASS  the reference names all $(wc -w <<<"$settings") settings"
else
    echo "FAIL  settings missing from the reference: ${missing[*]:-(none; but only $(wc -w <<<"$settings") found)}"; fail=1
fi

sqlstates=$(grep -rhoE "MAKE_SQLSTATE\('S', *'B', *'[A-Z0-9]', *'[A-Z0-9]', *'[A-Z0-9]'\)" src |
    sed -E "s/[^']*'(.)'[^']*'(.)'[^']*'(.)'[^']*'(.)'[^']*'(.)'.*/\1\2\3\4\5/" | sort -u)
missing=()
for c in $sqlstates; do grep -qF "\`$c\`" "$reference" || missing+=("$c"); done
if [ ${#missing[@]} -eq 0 ] && [ "$(wc -w <<<"$sqlstates")" -gt 10 ]; then
    echo "PASS  the reference names all $(wc -w <<<"$sqlstates") SQLSTATEs of the extension's own"
else
    echo "FAIL  SQLSTATEs missing from the reference: ${missing[*]:-(none; but only $(wc -w <<<"$sqlstates") found in src/)}"; fail=1
fi
exit $fail
