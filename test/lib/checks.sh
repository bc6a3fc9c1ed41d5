# Reporting and waiting for integration tests made of named checks.
#
#   . test/lib/checks.sh
#   begin; ...; conclude NAME SUMMARY [PROBLEM...]   # PASS/FAIL line; counts
#   wait_until SECONDS COMMAND...                    # polls every $POLL s
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

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_until SECONDS COMMAND...: runs COMMAND every $POLL s (default 0.1)
# until it succeeds; fails after SECONDS.
wait_until() {
    local deadline=$(($(now_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(now_ms)" -ge "$deadline" ] && return 1
        sleep "${POLL:-0.1}"
    done
}
