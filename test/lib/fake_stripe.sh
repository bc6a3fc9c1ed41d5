# The loopback fake Stripe API (test/integration/fake_stripe) for tests, demos and
# benchmarks.
#
#   . test/lib/fake_stripe.sh
#   fake_start DIR KEY        # starts it; sets FAKE_URL and FAKE_PID
#   fake_stop                 # (also safe in an EXIT trap, and twice)
#
# fake_start registers fake_stop with at_exit (test/lib/work.sh).
. test/lib/work.sh
FAKE_PID=
FAKE_URL=

# Starts the fake on a free loopback port, answering to API key KEY.
fake_start() {
    local dir=$1 key=$2
    rm -f "$dir/fake.port"
    at_exit fake_stop
    node test/integration/fake_stripe/server.js --port 0 --key "$key" --port-file "$dir/fake.port" \
        >"$dir/fake.log" 2>&1 &
    FAKE_PID=$!
    # (node starts in well under a second; under load, some seconds)
    wait_until 60 eval "[ -s '$dir/fake.port' ] || ! kill -0 $FAKE_PID 2>/dev/null"
    [ -s "$dir/fake.port" ] || { echo "the fake Stripe did not start:"; cat "$dir/fake.log"; return 1; }
    FAKE_URL="http://127.0.0.1:$(cat "$dir/fake.port")"
}

# Stops the fake, if it runs (it ends at once on SIGTERM, even with requests
# hung by a fault: test/integration/fake_stripe/selftest.js checks it).
fake_stop() {
    local pid=$FAKE_PID
    FAKE_PID=
    stop_pid "$pid"
}
