# The loopback fake Stripe API (test/integration/fake_stripe) for tests, demos and
# benchmarks.
#
#   . test/lib/fake_stripe.sh
#   fake_start DIR KEY        # starts it; sets FAKE_URL and FAKE_PID
#   fake_stop                 # (also safe in an EXIT trap)
FAKE_PID=
FAKE_URL=

# Starts the fake on a free loopback port, answering to API key KEY.
fake_start() {
    local dir=$1 key=$2
    rm -f "$dir/fake.port"
    node test/integration/fake_stripe/server.js --port 0 --key "$key" --port-file "$dir/fake.port" \
        >"$dir/fake.log" 2>&1 &
    FAKE_PID=$!
    for _ in $(seq 100); do
        [ -s "$dir/fake.port" ] && break
        sleep 0.05
    done
    [ -s "$dir/fake.port" ] || { echo "the fake Stripe did not start:"; cat "$dir/fake.log"; return 1; }
    FAKE_URL="http://127.0.0.1:$(cat "$dir/fake.port")"
}

# Stops the fake, if it runs.
fake_stop() {
    [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null
    FAKE_PID=
}
