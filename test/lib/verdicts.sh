# Checks made of several assertions, one PASS/FAIL line each, for the
# integration tests that count checks (test/integration/api_calls.sh, ...).
#
#   . test/lib/verdicts.sh
#   eq ACTUAL EXPECTED WHAT; bad WHY ...      # record a problem
#   verdict TEXT                              # PASS/FAIL line, then start over
#   same_lines WHAT EXPECTED ACTUAL           # equal as sorted sets of lines
# $checks and $failed count the verdicts.
checks=0
failed=0
why=()
bad() { why+=("$*"); }
# eq ACTUAL EXPECTED WHAT
eq() { [ "$1" == "$2" ] || bad "$3: got '$1', expected '$2'"; }
verdict() {
    checks=$((checks + 1))
    if [ ${#why[@]} -eq 0 ]; then
        echo "PASS: $1"
    else
        failed=$((failed + 1))
        echo "FAIL: $1"
        printf '      - %s\n' "${why[@]}"
    fi
    why=()
}
same_lines() {
    local d
    d=$(diff <(LC_ALL=C sort <<<"$2") <(LC_ALL=C sort <<<"$3")) ||
        bad "$1 differs (< expected, > sent): $(tr '\n' ' ' <<<"$d")"
}
