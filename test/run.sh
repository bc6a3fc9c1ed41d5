#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root:
#     bash test/run.sh                # PostgreSQL 15, 18 with assertions, Valgrind
#     bash test/run.sh 15             # one part alone (15, 18 or valgrind)
# Installs the Debian packages and npm modules it needs; builds
# PostgreSQL 18 (assertion-enabled) from Debian's source package with
# test/pg-build.sh, cached outside the clone; then, for each version,
# builds the extension with -Werror, installs it, and runs test/suite.sh
# (pg_regress, isolation and the integration tests, each on throwaway
# clusters); then test/valgrind.sh (regression and isolation tests with
# every backend under Valgrind, on a second build of 18).  An assertion
# failure or a crash in any server fails the run.  Prints the time of each
# part and ends with "N passed, N failed" (and ", N skipped" when a test
# could not run here: the Citus test on 15, or without ../shared/vendor).
set -uo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(15 18 valgrind)
for part in "${parts[@]}"; do
    case "$part" in
        15 | 18 | valgrind) ;;
        *) echo "test/run.sh: a part is 15, 18 or valgrind, not '$part'"; exit 2 ;;
    esac
done

. test/lib/build.sh
started=$(date +%s)
times=()
elapsed() { echo "$(($(date +%s) - $1)) s"; }

t=$(date +%s)
bash scripts/install-deps.sh || { echo "installing dependencies failed"; exit 1; }
times+=("dependencies and the 15 build: $(elapsed "$t")")

passed=0
failed=0
skipped=0
failures=()
export SB_CRASH_REPORT
SB_CRASH_REPORT=$(mktemp /tmp/stripe_billing_crashes.XXXXXX)
chmod 666 "$SB_CRASH_REPORT"
log=
# its own files go however it ends (each part removes its own)
trap 'rm -f "$SB_CRASH_REPORT" ${log:+"$log"}' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Adds a part's "N passed, N failed" (its last such line) to the totals.
count() {
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$2" | tail -1)
    if [ -z "$line" ]; then
        failed=$((failed + 1)); failures+=("$1 (no result)")
        return
    fi
    passed=$((passed + $(cut -d' ' -f1 <<<"$line")))
    skipped=$((skipped + $(sed -nE 's/.*, ([0-9]+) skipped$/\1/p' <<<"$line" | grep . || echo 0)))
    local bad
    bad=$(cut -d' ' -f3 <<<"$line")
    failed=$((failed + bad))
    [ "$bad" -eq 0 ] || failures+=("$1: $(grep -E '^failed: ' "$2" | tail -1 | cut -d' ' -f2-)")
}

for part in "${parts[@]}"; do
    t=$(date +%s)
    log=$(mktemp /tmp/stripe_billing_part.XXXXXX)
    : >"$SB_CRASH_REPORT"
    case "$part" in
        15 | 18)
            echo
            echo "==== PostgreSQL $part"
            if [ "$part" = 15 ]; then
                bindir=/usr/lib/postgresql/15/bin
            else
                bindir=$(bash test/pg-build.sh 18 | tail -1) || bindir=
            fi
            if [ -z "$bindir" ] || ! build_for "$bindir"; then
                echo "building for PostgreSQL $part failed"
                failed=$((failed + 1)); failures+=("build for $part")
            else
                echo "== $("$bindir/postgres" --version)$("$bindir/pg_config" --configure | grep -q enable-cassert && echo ', assertions on')"
                PG_BINDIR=$bindir bash test/suite.sh 2>&1 | tee "$log"
                count "PostgreSQL $part" "$log"
            fi
            ;;
        valgrind)
            echo
            echo "==== Valgrind"
            bash test/valgrind.sh 2>&1 | tee "$log"
            count valgrind "$log"
            ;;
    esac
    if [ -s "$SB_CRASH_REPORT" ]; then
        echo "== assertion failures or crashes in the servers' logs:"
        head -20 "$SB_CRASH_REPORT"
        failed=$((failed + 1)); failures+=("$part: a server crashed or failed an assertion")
    fi
    rm -f "$log"
    log=
    times+=("$part: $(elapsed "$t")")
done
make -s clean >/dev/null    # (the objects were built for the last version)

echo
echo "times: $(printf '%s; ' "${times[@]}")total $(elapsed "$started")"
[ ${#failures[@]} -gt 0 ] && echo "failed: $(printf '%s; ' "${failures[@]}")"
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
