# Reporting and waiting for integration tests made of named checks.
#
#   . test/lib/checks.sh
#   begin; ...; conclude NAME SUMMARY [PROBLEM...]   # PASS/FAIL line; counts
#   wait_until SECONDS COMMAND...                    # polls every $POLL s (test/lib/wait.sh)
. test/lib/wait.sh
passed=0
failed=0
phase_began=0   # $SECONDS when the running check began

begin() { phase_began=$SECONDS; }

# conclude NAME SUMMARY [PROBLEM...]: PASS when no problem was given.
conclude() {
    local name=$1 summary=$2 took="[$((SECONDS - phase_began)) s]"
    shift 2
    if [ $# -eq 0 ]; then
        echo "PASS  $name: $summary $took"
        passed=$((passed + 1))
    else
        local IFS=';'
        echo "FAIL  $name: $summary $took -- problems:$*"
        failed=$((failed + 1))
    fi
}

note() { echo "      $*"; }
