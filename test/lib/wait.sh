# Waiting for a condition, for tests, their libraries and the suite.  A test
# waits for what it expects with a generous limit, never with a fixed sleep
# followed by a check: on a loaded machine (the suite beside other work on
# two cores) a step may take many times its usual time.
#
#   . test/lib/wait.sh
#   wait_until SECONDS COMMAND...   # polls every $POLL s (default 0.1)
#   now_ms                          # milliseconds since the epoch
[ -n "${_sb_wait_sh:-}" ] && return 0
_sb_wait_sh=1

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
