# Building the extension for one PostgreSQL, and running its pg_regress and
# isolation tests, for test/run.sh, test/suite.sh and test/valgrind.sh.
#
#   . test/lib/build.sh
#   build_for BINDIR              # clean, build with -Werror, install
#   installcheck BINDIR LOG [make arguments ...]
#                                 # runs them, prints the report lines,
#                                 # sets CHECK_OK and CHECK_BAD (a failed
#                                 # run without a failed test counts one)

build_for() {
    make -s clean >/dev/null
    make -s PG_CONFIG="$1/pg_config" COPT=-Werror >/dev/null &&
        make -s PG_CONFIG="$1/pg_config" install >/dev/null
}

installcheck() {
    local bindir=$1 log=$2
    shift 2
    make -s PG_CONFIG="$bindir/pg_config" "$@" installcheck >"$log" 2>&1
    grep -E '\.\.\. |^(not )?ok [0-9]+ |tests? (passed|failed)' "$log"
    # (15 prints "name ... ok"; 16 and later "ok 1 - name" and "not ok 2 - name")
    CHECK_OK=$(grep -cE '\.\.\. ok|^ok [0-9]+ ' "$log")
    CHECK_BAD=$(grep -cE '\.\.\. FAILED|\.\.\. failed|^not ok [0-9]+ ' "$log")
    if [ "$CHECK_OK" -eq 0 ] || [ "$CHECK_BAD" -gt 0 ] || ! grep -q 'All .* tests passed' "$log"; then
        [ "$CHECK_BAD" -gt 0 ] || CHECK_BAD=1
        for f in regression.diffs output_iso/regression.diffs; do
            [ -f "$f" ] && head -100 "$f"
        done
    fi
    return 0
}
