#!/usr/bin/env bash
# What a packager reads agrees with itself: the LICENSE is the PostgreSQL
# License; META.json (PGXN) is valid JSON whose version, and its provided
# extension's version and file, are the control file's default_version and
# its install script; the install script the Makefile ships is that one.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
fail=0
check() { if eval "$2"; then echo "PASS  $1"; else echo "FAIL  $1"; fail=1; fi; }

version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" stripe_billing.control)
check "the control file names a version ($version)" '[ -n "$version" ]'
check "LICENSE is the PostgreSQL License" \
    'head -1 LICENSE | grep -qx "PostgreSQL License" && grep -q "Permission to use, copy, modify, and distribute this software" LICENSE'
meta=$(node -e 'const m = JSON.parse(require("fs").readFileSync("META.json", "utf8"));
  const p = m.provides.stripe_billing;
  console.log([m.name, m.version, p.version, p.file, m.license, m["meta-spec"].version].join(" "))' 2>&1)
check "META.json parses ($meta)" '[[ "$meta" == stripe_billing\ * ]]'
read -r name v pv file license spec <<<"$meta"
check "META.json's version and its extension's are the control file's ($v, $pv)" '[ "$v" = "$version" ] && [ "$pv" = "$version" ]'
check "META.json's file is the first chapter of the SQL source ($file)" '[ "$file" = "sql/chapters/01_schema.sql" ] && [ -f "$file" ]'
check "META.json's license is postgresql, meta-spec 1.0.0" '[ "$license" = postgresql ] && [ "$spec" = 1.0.0 ]'
built=$(make -s --no-print-directory -f - print-built <<<"include Makefile
print-built: ; @echo \$(DATA_built)" 2>/dev/null)
check "the Makefile builds that version's install script ($built)" '[ "$built" = "stripe_billing--$version.sql" ]'
exit $fail
