#!/usr/bin/env bash
# The Stripe API calls made from SQL, against the loopback fake Stripe
# (test/integration/fake_stripe): the exact form a Checkout sends, idempotency, portal and
# subscription changes mirrored in the local tables at once, the usage
# outbox, keep-alive, errors and faults (SQLSTATEs, retries, Retry-After,
# statement_timeout and pg_cancel_backend during a hung request), a session
# going on after each kind of failed transfer (a body over
# stripe_billing.max_response_size, an HTML or cut-short JSON 200, a dropped
# connection, a cancel), paths and idempotency keys refused before any
# request (dot segments, header injection), an upstream echoing the key
# (scrubbed from raised and stored errors), the api_base and api_key guards,
# Stripe Connect (every call made as a connected account sends its
# Stripe-Account header and otherwise the same request, what it returns is
# recorded as that account's, Checkout's direct and destination charges,
# usage of several accounts each sent with its header, a bad account
# refused before any request), and no API key in any message or the server
# log.
#
# Starts its own fake and its own throwaway cluster, so it needs only the
# installed extension:
#     bash test/integration/api_calls.sh
# The cluster preloads stripe_billing, as in production; the tests run in
# database api_calls, so the sync worker (watching postgres, where the
# extension is not installed) never calls the fake.  SB_API_NO_PRELOAD=1
# runs them without shared_preload_libraries instead.
# One PASS/FAIL line per check; exits 0 only when every check passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. test/lib/cluster.sh

rand() { head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
RUN=$(rand)
KEY="sk_test_apicalls${RUN}$(rand)"
KEY_BODY=${KEY#sk_test_}           # what a leak would show, masked or not
VERSION='2025-04-30.basil'         # not the fake's default: proves the header comes from the setting
started=$(date +%s)

. test/lib/fake_stripe.sh
# (a failure shows the end of the server's, the client's and the fake's logs)
work_begin api
work_logs pg/server.log client.log fake.log

# ---- the fake Stripe ----
fake_start "$work" "$KEY" || { echo "FAIL: the fake Stripe did not start"; exit 1; }
P=${FAKE_URL##*:}
BASE=$FAKE_URL

fk() { node test/integration/api/fake.js "$P" "$@"; }               # METHOD PATH [BODY] [EXPR]
reqcount() { fk GET /_fake/stats '' 'r.requests'; }       # /v1 requests so far (= last seq)
# recs MARK [PATH_PREFIX]: the recorded requests after MARK, into $work/recs.json
recs() { fk GET "/_fake/requests?path=${2:-}" '' "since(r, $1)" >"$work/recs.json"; }
jx() { node test/integration/api/fake.js "@$work/recs.json" "$1"; }   # EXPR on the saved records
faults() { fk POST /_fake/faults "{\"rules\": $1}" >/dev/null; }
nofaults() { fk DELETE /_fake/faults >/dev/null; }

# ---- the cluster ----
preload="shared_preload_libraries = 'stripe_billing'"
[ "${SB_API_NO_PRELOAD:-0}" = 1 ] && preload="# no shared_preload_libraries"
cluster_start "$work/pg" "$preload" \
    "stripe_billing.database = 'postgres'" \
    "stripe_billing.api_key = '$KEY'" \
    "stripe_billing.api_base = '$BASE'" \
    "stripe_billing.api_version = '$VERSION'" \
    "stripe_billing.request_timeout = 10000" \
    "log_statement = 'all'" \
    "log_min_messages = debug1" || { echo "FAIL: the cluster did not start"; exit 1; }
# at exit the fake first: that also frees any backend still waiting on a hung request
at_exit fake_stop
createdb api_calls || { echo "FAIL: createdb"; exit 1; }
export PGDATABASE=api_calls

client_log=$work/client.log
: >"$client_log"
# sql SCRIPT: runs SCRIPT in a new session (stops at the first error;
# ONERR=0 sql SCRIPT runs on after errors, in the same session).
# Sets OUT (rows, then any error, verbose), STATE (the first error's
# SQLSTATE, or empty), STATES (every error's, space-separated), MSG and
# DETAIL (of the first error), MS (wall time).
sql() {
    local t0 t1
    t0=$(date +%s%N)
    OUT=$(timeout 25 psql -X -At -q -v ON_ERROR_STOP="${ONERR:-1}" -v VERBOSITY=verbose 2>&1 <<<"$1")
    t1=$(date +%s%N)
    MS=$(((t1 - t0) / 1000000))
    STATES=$(sed -nE 's/^.*(ERROR|FATAL):  ([0-9A-Z]{5}): .*$/\2/p' <<<"$OUT" | paste -sd ' ')
    STATE=$(sed -nE 's/^.*(ERROR|FATAL):  ([0-9A-Z]{5}): .*$/\2/p' <<<"$OUT" | head -1)
    MSG=$(sed -nE 's/^.*(ERROR|FATAL):  [0-9A-Z]{5}: (.*)$/\2/p' <<<"$OUT" | head -1)
    DETAIL=$(sed -nE 's/^DETAIL:  (.*)$/\1/p' <<<"$OUT" | head -1)
    printf -- '--- %s\n%s\n' "$1" "$OUT" >>"$client_log"
}
rows() { grep -vE '^(psql:|ERROR:|DETAIL:|HINT:|LOCATION:|CONTEXT:|STATEMENT:|WARNING:|NOTICE:)' <<<"$OUT"; }

# ---- verdicts ----
. test/lib/verdicts.sh
noerr() { [ -z "$STATE" ] || bad "$1: error $STATE: $MSG${DETAIL:+ ($DETAIL)}"; }
state_is() { [ "$STATE" == "$1" ] || bad "$2: expected SQLSTATE $1, got '${STATE:-no error}'${MSG:+: $MSG}"; }
no_key_in() { if grep -qF "$KEY_BODY" <<<"$1"; then bad "$2 contains the API key"; fi; }

# ---- the extension ----
sql "CREATE EXTENSION stripe_billing;
CREATE FUNCTION public.apply_all_events() RETURNS integer LANGUAGE plpgsql AS \$f\$
DECLARE e jsonb; n integer := 0;
BEGIN
  -- /v1/events lists newest first: apply oldest first
  FOR e IN SELECT x FROM jsonb_array_elements(
             stripe_billing.stripe_api('GET', '/v1/events', '{\"limit\": 100}')->'data') WITH ORDINALITY AS t(x, i)
           ORDER BY i DESC LOOP
    PERFORM stripe_billing.stripe_apply_event(e);
    n := n + 1;
  END LOOP;
  RETURN n;
END \$f\$;
SELECT count(*) FROM pg_proc WHERE pronamespace = 'stripe_billing'::regnamespace AND proname IN
  ('stripe_api', 'stripe_create_checkout', 'stripe_create_portal_session', 'stripe_cancel_subscription',
   'stripe_resume_subscription', 'stripe_change_price', 'stripe_report_usage', 'stripe_send_usage');"
noerr "CREATE EXTENSION"
eq "$(rows)" 8 "API functions found in schema stripe_billing"
verdict "the extension installs in a fresh database with the 8 API functions"
if [ "$failed" -gt 0 ]; then echo "$OUT"; exit 1; fi

# fake object ids the checks share
fk POST /_fake/objects '{"object": {"id": "cus_x", "object": "customer", "email": "x@example.com"}}' >/dev/null

###########################################################################
# 1. Request shape
###########################################################################
note='café ☕ & a=b+c %20 ü'
mark=$(reqcount)
sql "SELECT session_id, url, extract(epoch FROM expires_at)::bigint
FROM stripe_billing.stripe_create_checkout('u_sub', 'price_basic',
  'https://app.example/ok?session={CHECKOUT_SESSION_ID}&x=1', 'https://app.example/cancel',
  quantity => 2, trial_days => 14, allow_promotion_codes => true, customer_email => 'sub@example.com',
  metadata => '{\"plan\": \"pro\", \"note\": \"$note\", \"seats\": 5, \"beta\": true}',
  idempotency_key => 'caller-key-$RUN');
SELECT user_ref, status, mode, metadata->>'note' FROM stripe_billing.checkout_sessions
WHERE user_ref = 'u_sub';"
noerr "stripe_create_checkout"
IFS='|' read -r cs_sub cs_url cs_exp <<<"$(rows | sed -n 1p)"
local_row=$(rows | sed -n 2p)
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path).join(",")')" "POST /v1/checkout/sessions" "requests sent"
same_lines "the form" "mode=subscription
line_items[0][price]=price_basic
line_items[0][quantity]=2
success_url=https://app.example/ok?session={CHECKOUT_SESSION_ID}&x=1
cancel_url=https://app.example/cancel
client_reference_id=u_sub
metadata[user_ref]=u_sub
metadata[plan]=pro
metadata[note]=$note
metadata[seats]=5
metadata[beta]=true
customer_email=sub@example.com
allow_promotion_codes=true
subscription_data[metadata][user_ref]=u_sub
subscription_data[trial_period_days]=14" "$(jx 'r.length ? pairs(r[0]) : ""')"
verdict "checkout (subscription, trial_days, promotion codes, customer_email, unicode/number/boolean metadata) sends exactly the documented form fields"

eq "$(jx 'r[0] && r[0].headers.authorization')" "Bearer <redacted>" "Authorization header (as recorded)"
eq "$(jx 'r[0] && r[0].status')" "200" "the fake's answer (200 = the Bearer key was accepted)"
eq "$(jx 'r[0] && r[0].headers["stripe-version"]')" "$VERSION" "Stripe-Version header"
eq "$(jx 'r[0] && r[0].idempotency_key')" "caller-key-$RUN" "Idempotency-Key header"
eq "$(jx 'r[0] && String(r[0].headers["content-type"]).split(";")[0]')" "application/x-www-form-urlencoded" "Content-Type"
verdict "checkout headers: Authorization Bearer, Stripe-Version = stripe_billing.api_version, the caller's Idempotency-Key as given"

fake_session=$(fk GET "/_fake/objects/$cs_sub" '' '[r.id, r.url, r.expires_at, r.metadata.note].join("|")' 2>&1)
eq "$cs_sub|$cs_url|$cs_exp|$note" "$fake_session" "session_id|url|expires_at returned vs the fake's session (and its metadata note)"
eq "$local_row" "u_sub|open|subscription|$note" "checkout_sessions row (user_ref|status|mode|metadata note)"
verdict "checkout returns the fake's session_id, url and expires_at, and records the session (user_ref, open) in checkout_sessions"

mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_pay', 'price_onetime',
  'https://app.example/paid', 'https://app.example/back', mode => 'payment');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_pay2', 'price_onetime',
  'https://app.example/paid', 'https://app.example/back', mode => 'payment');
SELECT user_ref || ':' || status FROM stripe_billing.checkout_sessions WHERE user_ref IN ('u_pay', 'u_pay2') ORDER BY user_ref;"
noerr "stripe_create_checkout (payment)"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" \
   "POST /v1/checkout/sessions 200,POST /v1/checkout/sessions 200" "requests sent"
same_lines "the payment form" "mode=payment
line_items[0][price]=price_onetime
line_items[0][quantity]=1
success_url=https://app.example/paid
cancel_url=https://app.example/back
client_reference_id=u_pay
metadata[user_ref]=u_pay
payment_intent_data[metadata][user_ref]=u_pay
customer_creation=always" "$(jx 'r.length ? pairs(r[0]) : ""')"
eq "$(jx 'r.length == 2 && !!r[0].idempotency_key && !!r[1].idempotency_key && r[0].idempotency_key != r[1].idempotency_key')" \
   true "generated Idempotency-Keys present and distinct per call"
eq "$(rows | sed -n 3,4p | tr '\n' ' ')" "u_pay:open u_pay2:open " "checkout_sessions rows"
verdict "checkout (payment mode, defaults) sends exactly the documented form, with a fresh generated Idempotency-Key per call"

# Stripe's metadata is flat (metadata[team][id]=t1 gets 400 "Invalid string",
# param metadata[team], from Stripe and the fake alike): a nested value is
# refused before any request, naming the key.
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_nest', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel',
  metadata => '{\"plan\": \"pro\", \"note\": \"café ☕\", \"team\": {\"id\": \"t1\"}}');"
[ -n "$STATE" ] || bad "nested metadata was accepted"
[[ "$STATE" != SB* ]] || bad "expected a local refusal, got Stripe's error $STATE: $MSG"
[[ "$MSG" == *metadata* && "$MSG" == *team* ]] || bad "the message should name metadata and team: '$MSG'"
eq "$(reqcount)" "$mark" "requests made"
refusal="${STATE:-no error}: $MSG"
sql "SELECT count(*) FROM stripe_billing.checkout_sessions WHERE user_ref = 'u_nest'"
eq "$(rows)" 0 "checkout_sessions rows for the refused session"
verdict "checkout with nested metadata {team: {id: t1}} is refused before any request ($refusal)"

mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_bad', 'price_nope',
  'https://app.example/ok', 'https://app.example/cancel');"
state_is SBA01 "unknown price"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.status).join(",")')" 400 "the fake's answers (no retry of a 400)"
[[ "$MSG" == *"No such price: 'price_nope'"* ]] || bad "the message should be Stripe's: '$MSG'"
for part in invalid_request_error resource_missing 'line_items[0][price]' 400 "$(jx 'r.length ? r[0].request_id : "req_?"')"; do
    [[ "$DETAIL" == *"$part"* ]] || bad "DETAIL should name $part: '$DETAIL'"
done
verdict "Stripe's 400 (unknown price) becomes SBA01 with Stripe's message; DETAIL names type, code, param, HTTP status and request id"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_link_customer('u1', 'cus_x');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u1', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', customer_email => 'ignored@example.com');"
noerr "checkout for a linked user"
recs "$mark" /v1/
eq "$(jx 'r.length ? pairs(r[0]).filter(l => /^customer/.test(l)).join(",") : "no request"')" "customer=cus_x" "customer fields sent"
eq "$(fk GET "/_fake/objects/$(rows | tail -1)" '' 'r.customer' 2>&1)" cus_x "the fake's session customer"
verdict "checkout for a user with a known customer sends customer=cus_x and no customer_email"

# Stripe's limits, refused before any request with the argument named:
# a bracket in a key would change the form's structure; Stripe allows 50
# keys (user_ref is ours), keys up to 40 and values up to 500 characters,
# and client_reference_id (user_ref) up to 200.
many_keys=$(node -e 'const m = {}; for (let i = 0; i < 50; i++) m["k" + i] = "v"; console.log(JSON.stringify(m))')
for case in "metadata key \"a[b]\"|u_lim|{\"a[b]\": \"x\"}" \
            "metadata key \"a]\"|u_lim|{\"a]\": \"x\"}" \
            "metadata key \"$(printf 'k%.0s' {1..41})\"|u_lim|{\"$(printf 'k%.0s' {1..41})\": \"x\"}" \
            "metadata.long|u_lim|{\"long\": \"$(printf 'v%.0s' {1..501})\"}" \
            "metadata must have at most 49 keys|u_lim|$many_keys" \
            "user_ref|$(printf 'u%.0s' {1..201})|{}"; do
    IFS='|' read -r named user meta <<<"$case"
    mark=$(reqcount)
    sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('$user', 'price_basic',
      'https://app.example/ok', 'https://app.example/cancel', metadata => '$meta');"
    state_is 22023 "checkout refused for $named"
    [[ "$MSG" == "$named"* ]] || bad "the message should start with '$named': '$MSG'"
    eq "$(reqcount)" "$mark" "requests made ($named)"
done
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('$(printf 'u%.0s' {1..200})', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel',
  metadata => '$(node -e 'const m = {user_ref: "theirs"}; for (let i = 0; i < 49; i++) m["k" + i] = "v"; m["k0"] = "v".repeat(500); m["k".repeat(40)] = "x"; delete m.k48; console.log(JSON.stringify(m))')');"
noerr "checkout at every limit (200-character user_ref, 49 keys besides user_ref, a 40-character key, a 500-character value)"
verdict "checkout refuses metadata keys with [ or ], over 40 characters, values over 500, more than 49 keys, a user_ref over 200, naming each, before any request; exactly at the limits it is sent"

# payment mode: a user with no known customer gets one made by Checkout, so
# that the payment links them; a known customer is used as it is
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u1', 'price_onetime',
  'https://app.example/paid', 'https://app.example/back', mode => 'payment');"
noerr "checkout (payment) for a linked user"
recs "$mark" /v1/
eq "$(jx 'r.length ? pairs(r[0]).filter(l => /^customer/.test(l)).join(",") : "no request"')" "customer=cus_x" "customer fields sent (linked user)"
cs_pay=$(rows)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_guest', 'price_onetime',
  'https://app.example/paid', 'https://app.example/back', mode => 'payment', customer_email => 'guest@example.com');"
noerr "checkout (payment) for a new user"
cs_guest=$(rows)
completed=$(fk POST "/_fake/checkout/sessions/$cs_guest/complete" '{}' 'r.session.customer' 2>&1)
sql "SELECT public.apply_all_events();
SELECT c.id FROM stripe_billing.customers c WHERE c.user_ref = 'u_guest';"
noerr "applying the payment's events"
[[ "$completed" == cus_* ]] || bad "the completed payment session has no customer: '$completed'"
eq "$(rows | tail -1)" "$completed" "the customer linked to u_guest"
verdict "checkout in payment mode sends customer_creation=always for a user without a customer (the payment then links them: u_guest -> $completed), and customer=cus_x without it for a linked user"

###########################################################################
# 2. Idempotency
###########################################################################
ikey="idem-$RUN"
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_idem', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', idempotency_key => '$ikey');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_idem', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', idempotency_key => '$ikey');
SELECT count(*) FROM stripe_billing.checkout_sessions WHERE user_ref = 'u_idem';"
noerr "the same checkout twice"
first=$(rows | sed -n 1p) second=$(rows | sed -n 2p)
[ -n "$first" ] && [ "$first" == "$second" ] || bad "session ids differ: '$first' vs '$second'"
eq "$(rows | sed -n 3p)" 1 "checkout_sessions rows"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.idempotency_key).join(",")')" "$ikey,$ikey" "Idempotency-Keys sent"
eq "$(IK=$ikey fk GET /_fake/requests '' 'r.filter(x => x.idempotency_key == env.IK && x.status == 200).length' 2>&1)" 2 "answered requests with the key"
verdict "the same idempotency_key twice returns the same session_id (replayed by Stripe)"

sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_idem', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', quantity => 3, idempotency_key => '$ikey');"
state_is SBA06 "same key, other params"
[[ "$MSG" == *"Keys for idempotent requests"* ]] || bad "message should be Stripe's: '$MSG'"
[[ "$DETAIL" == *idempotency_error* && "$DETAIL" == *400* ]] || bad "DETAIL should name idempotency_error and 400: '$DETAIL'"
verdict "the same idempotency_key with other parameters fails with SBA06"

###########################################################################
# 3. Portal and subscription changes, mirrored locally at once
###########################################################################
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_life', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel');"
noerr "checkout for u_life"
cs_life=$(rows)
sub=$(fk POST "/_fake/checkout/sessions/$cs_life/complete" '{}' 'r.session.subscription' 2>&1)
mark=$(reqcount)
sql "SELECT public.apply_all_events();
SELECT s.status, c.id, c.user_ref, i.id, i.price, s.cancel_at_period_end
FROM stripe_billing.subscriptions s
JOIN stripe_billing.customers c ON c.id = s.customer
JOIN stripe_billing.subscription_items i ON i.subscription = s.id AND NOT i.deleted
WHERE s.id = '$sub';
SELECT status FROM stripe_billing.checkout_sessions WHERE id = '$cs_life';"
noerr "applying the fake's events"
IFS='|' read -r st cus user item price cape <<<"$(rows | sed -n 2p)"
eq "$st|$user|$price|$cape" "active|u_life|price_basic|f" "local subscription (status|user_ref|item price|cancel_at_period_end)"
eq "$(rows | sed -n 3p)" complete "local checkout session status"
[ "$(rows | sed -n 1p)" -ge 7 ] 2>/dev/null || bad "events applied: '$(rows | sed -n 1p)'"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + JSON.stringify(x.query)).join(",")')" \
   'GET /v1/events {"limit":"100"}' "the events request (GET params in the query string)"
eq "$(jx 'r.length ? r[0].raw_body : ""')" "" "GET request body"
verdict "a subscription set up by the fake's checkout completion and stripe_api('GET', '/v1/events') is known locally"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_create_portal_session('u_life', 'https://app.example/account');"
noerr "stripe_create_portal_session"
portal=$(rows)
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path).join(",")')" "POST /v1/billing_portal/sessions" "requests sent"
same_lines "the portal form" "customer=$cus
return_url=https://app.example/account" "$(jx 'r.length ? pairs(r[0]) : ""')"
[[ "$portal" == "$BASE/portal/"* ]] || bad "the url returned: '$portal'"
eq "$(jx 'r.length && !!r[0].idempotency_key')" true "Idempotency-Key sent"
verdict "stripe_create_portal_session sends customer and return_url and returns the portal url"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_create_portal_session('u_nobody');"
[ -n "$STATE" ] || bad "no error for a user without a customer"
eq "$(reqcount)" "$mark" "requests made"
verdict "stripe_create_portal_session for a user without a customer fails before any request (${STATE:-no error}: $MSG)"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_cancel_subscription('$sub')->>'cancel_at_period_end';
SELECT cancel_at_period_end, status, cancel_at IS NOT NULL FROM stripe_billing.subscriptions WHERE id = '$sub';"
noerr "stripe_cancel_subscription"
eq "$(rows | tr '\n' ' ')" "true t|active|t " "returned cancel_at_period_end, then the local row (cancel_at_period_end|status|cancel_at set)"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path).join(",")')" "POST /v1/subscriptions/$sub" "requests sent"
same_lines "the form" "cancel_at_period_end=true" "$(jx 'r.length ? pairs(r[0]) : ""')"
eq "$(jx 'r.length && !!r[0].idempotency_key')" true "Idempotency-Key sent"
verdict "stripe_cancel_subscription (at period end) posts cancel_at_period_end=true; the local row shows it at once"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_resume_subscription('$sub', idempotency_key => 'resume-$RUN')->>'cancel_at_period_end';
SELECT cancel_at_period_end, status FROM stripe_billing.subscriptions WHERE id = '$sub';"
noerr "stripe_resume_subscription"
eq "$(rows | tr '\n' ' ')" "false f|active " "returned cancel_at_period_end, then the local row"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.idempotency_key).join(",")')" "POST /v1/subscriptions/$sub resume-$RUN" "requests sent"
same_lines "the form" "cancel_at_period_end=false" "$(jx 'r.length ? pairs(r[0]) : ""')"
verdict "stripe_resume_subscription posts cancel_at_period_end=false; the local row shows it at once"

# livemode guards an API answer as it guards an event: a live database
# (given, here, a test key) does not apply the test-mode subscription Stripe
# returns (issue 22: it did), and says so
sql "SET stripe_billing.livemode = on;
SELECT stripe_billing.stripe_cancel_subscription('$sub', idempotency_key => 'live-cancel-$RUN')->>'cancel_at_period_end';
SELECT cancel_at_period_end FROM stripe_billing.subscriptions WHERE id = '$sub';"
noerr "stripe_cancel_subscription with livemode on"
eq "$(rows | tr '\n' ' ')" "true f " "returned cancel_at_period_end, then the local row, not written"
grep -q "WARNING:  01000: the subscription returned by Stripe was not applied locally: Stripe subscription $sub is a test-mode object but this database accepts live-mode objects" <<<"$OUT" ||
    bad "no warning naming the refused object: $(grep WARNING <<<"$OUT" | head -2)"
sql "SELECT stripe_billing.stripe_resume_subscription('$sub')->>'cancel_at_period_end';"
noerr "stripe_resume_subscription after it"
verdict "livemode on: the test-mode subscription Stripe returned is not applied locally (SBE02, a warning naming it), the local row unchanged"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_change_price('$sub', 'price_pro', 'none', quantity => 3)->'items'->'data'->0->'price'->>'id';
SELECT string_agg(id || ':' || price || ':' || quantity, ',') FROM stripe_billing.subscription_items
WHERE subscription = '$sub' AND NOT deleted;"
noerr "stripe_change_price"
eq "$(rows | tr '\n' ' ')" "price_pro $item:price_pro:3 " "returned item price, then the local live items (id:price:quantity)"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" "POST /v1/subscriptions/$sub 200" "requests sent"
same_lines "the form" "items[0][id]=$item
items[0][price]=price_pro
items[0][quantity]=3
proration_behavior=none" "$(jx 'r.length ? pairs(r[0]) : ""')"
verdict "stripe_change_price posts items[0][id|price|quantity] and proration_behavior=none; the local item shows price_pro at once"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_change_price('$sub', 'price_basic', 'sometimes');"
[ -n "$STATE" ] || bad "no error for proration_behavior 'sometimes'"
[[ "$MSG" == *proration_behavior* ]] || bad "the message should name proration_behavior: '$MSG'"
eq "$(reqcount)" "$mark" "requests made"
verdict "stripe_change_price refuses an unknown proration_behavior before any request ($STATE: $MSG)"

# The preview asks Stripe (create_preview, every field), returns its figures,
# and changes nothing; the change with its proration_date bills just that.
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_preview_price_change('$sub', 'price_basic', quantity => 1,
                                                      proration_behavior => 'always_invoice');
SELECT string_agg(id || ':' || price || ':' || quantity, ',') FROM stripe_billing.subscription_items
 WHERE subscription = '$sub' AND NOT deleted;
SELECT count(*) FROM stripe_billing.invoices WHERE id LIKE 'upcoming%';"
noerr "stripe_preview_price_change"
preview=$(rows | sed -n 1p)
eq "$(rows | sed -n 2,3p | tr '\n' ' ')" "$item:price_pro:3 0 " "local items after the preview (unchanged), and preview invoices kept locally"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" "POST /v1/invoices/create_preview 200" "requests sent"
pdate=$(jq -r '.proration_date' <<<"$preview")
pepoch=$(date -d "$pdate" +%s)
same_lines "the preview form" "customer=$cus
subscription=$sub
subscription_details[items][0][id]=$item
subscription_details[items][0][price]=price_basic
subscription_details[items][0][quantity]=1
subscription_details[proration_behavior]=always_invoice
subscription_details[proration_date]=$pepoch" "$(jx 'r.length ? pairs(r[0]) : ""')"
# the same preview asked directly of the fake: the figures must be Stripe's
direct=$(curl -sS -u "$KEY:" -H "Idempotency-Key: direct-preview-$RUN" "$BASE/v1/invoices/create_preview" -d customer="$cus" -d subscription="$sub" \
    -d "subscription_details[items][0][id]=$item" -d "subscription_details[items][0][price]=price_basic" \
    -d "subscription_details[items][0][quantity]=1" -d "subscription_details[proration_behavior]=always_invoice" \
    -d "subscription_details[proration_date]=$pepoch")
eq "$(jq -c '[.amount_due, .total, .currency, [.lines[] | [.amount, .price, .proration]]]' <<<"$preview")" \
   "$(jq -c '[.amount_due, .total, .currency, [.lines.data[] | [.amount, .pricing.price_details.price, .parent.subscription_item_details.proration]]]' <<<"$direct")" \
   "the preview's figures vs the fake's own (amount_due, total, currency, lines)"
[ "$(jq '.lines | length' <<<"$preview")" -ge 2 ] || bad "the preview has fewer than two lines: $preview"
[ "$(jq '[.lines[] | select(.proration)] | length' <<<"$preview")" -ge 2 ] || bad "no proration lines in the preview: $preview"
verdict "stripe_preview_price_change posts create_preview with every field, returns Stripe's amount_due, total, currency and lines (amount $(jq -c .amount_due <<<"$preview")), and changes nothing locally"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_change_price('$sub', 'price_basic', 'always_invoice', quantity => 1,
                                              proration_date => '$pdate')->>'latest_invoice';"
noerr "stripe_change_price with the preview's proration_date"
invoice=$(rows)
recs "$mark" /v1/
same_lines "the form" "items[0][id]=$item
items[0][price]=price_basic
items[0][quantity]=1
proration_behavior=always_invoice
proration_date=$pepoch" "$(jx 'r.length ? pairs(r[0]) : ""')"
eq "$(fk GET "/_fake/objects/$invoice" '' 'r.amount_due' 2>&1)" "$(jq .amount_due <<<"$preview")" "the change's invoice amount vs the preview's"
verdict "stripe_change_price with the preview's proration_date sends it, and the invoice Stripe makes is the preview's amount"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_cancel_subscription('$sub', at_period_end => false)->>'status';
SELECT status, ended_at IS NOT NULL FROM stripe_billing.subscriptions WHERE id = '$sub';"
noerr "stripe_cancel_subscription (now)"
eq "$(rows | tr '\n' ' ')" "canceled canceled|t " "returned status, then the local row (status|ended_at set)"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" "DELETE /v1/subscriptions/$sub 200" "requests sent"
eq "$(jx 'r.length && !!r[0].idempotency_key')" true "Idempotency-Key sent with DELETE"
verdict "stripe_cancel_subscription(at_period_end => false) sends DELETE; the local row is canceled at once"

###########################################################################
# 3b. One trial per user
###########################################################################
# checkout_trial USER [ARGS]: a subscription checkout with trial_days 14;
# sets CS, GRANTED and FORM (the trial fields sent)
checkout_trial() {
    local mark
    mark=$(reqcount)
    sql "SELECT session_id, trial_granted FROM stripe_billing.stripe_create_checkout('$1', 'price_basic',
      'https://app.example/ok', 'https://app.example/cancel', trial_days => 14${2:+, $2});"
    noerr "checkout with trial_days for $1"
    IFS='|' read -r CS GRANTED <<<"$(rows)"
    recs "$mark" /v1/
    FORM=$(jx 'r.length ? pairs(r[0]).filter(l => /trial_period/.test(l)).join(",") : "no request"')
}
# subscribe_and_cancel SESSION: completes it at the fake, cancels the
# subscription now, and applies the events
subscribe_and_cancel() {
    local s
    s=$(fk POST "/_fake/checkout/sessions/$1/complete" '{}' 'r.session.subscription' 2>&1)
    sql "SELECT public.apply_all_events();
SELECT stripe_billing.stripe_cancel_subscription('$s', at_period_end => false)->>'status';
SELECT public.apply_all_events();
SELECT status || ':' || (trial_end IS NOT NULL) FROM stripe_billing.subscriptions WHERE id = '$s';"
    noerr "subscribing and cancelling ($1)"
    ENDED=$(rows | tail -1)
}
trial='subscription_data[trial_period_days]=14'
checkout_trial u_trial_new
eq "$GRANTED|$FORM" "t|$trial" "a new user: trial_granted, and the trial field sent"
subscribe_and_cancel "$CS"
eq "$ENDED" "canceled:true" "u_trial_new's subscription (status:had a trial)"
checkout_trial u_trial_new
eq "$GRANTED|$FORM" "f|" "the same user after a canceled trial subscription"
checkout_trial u_trial_new "allow_repeat_trial => true"
eq "$GRANTED|$FORM" "t|$trial" "the same user with allow_repeat_trial"
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_paid', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel');"
noerr "checkout without a trial for u_paid"
subscribe_and_cancel "$(rows)"
eq "$ENDED" "canceled:false" "u_paid's subscription (status:had a trial)"
checkout_trial u_paid
eq "$GRANTED|$FORM" "t|$trial" "a user whose past subscription was paid, without a trial"
verdict "one trial per user: granted to a new user and to one whose past subscription had none; left out (trial_granted false) after a trial subscription, even canceled; granted again with allow_repeat_trial"

###########################################################################
# 3c. Checkout's discount: a promotion code or a coupon (issue 27)
###########################################################################
# At the fake: coupons SPRING20 (20 % for 3 months) and WINTER (no longer
# valid), promotion codes SPRING (promo_spring) and OLD (inactive). Here:
# what events told (the codes, WINTER, and a coupon GONE deleted).
fk POST /_fake/objects '{"objects": [
  {"id": "SPRING20", "object": "coupon", "percent_off": 20, "duration": "repeating", "duration_in_months": 3, "valid": true},
  {"id": "WINTER", "object": "coupon", "percent_off": 50, "valid": false},
  {"id": "promo_spring", "object": "promotion_code", "code": "SPRING", "active": true, "promotion": {"type": "coupon", "coupon": "SPRING20"}},
  {"id": "promo_old", "object": "promotion_code", "code": "OLD", "active": false, "promotion": {"type": "coupon", "coupon": "SPRING20"}}]}' >/dev/null
sql "SELECT stripe_billing.stripe_apply_event(jsonb_build_object('id', 'evt_dc_' || n, 'object', 'event', 'type', t,
           'created', 1700000000 + n, 'livemode', false, 'data', jsonb_build_object('object', o::jsonb)))
   FROM (VALUES (1, 'promotion_code.created', '{\"id\": \"promo_spring\", \"object\": \"promotion_code\", \"code\": \"SPRING\", \"active\": true, \"promotion\": {\"type\": \"coupon\", \"coupon\": \"SPRING20\"}}'),
                (2, 'promotion_code.updated', '{\"id\": \"promo_old\", \"object\": \"promotion_code\", \"code\": \"OLD\", \"active\": false, \"promotion\": {\"type\": \"coupon\", \"coupon\": \"SPRING20\"}}'),
                (3, 'promotion_code.created', '{\"id\": \"promo_late\", \"object\": \"promotion_code\", \"code\": \"LATE\", \"active\": true, \"expires_at\": 1700000100, \"promotion\": {\"type\": \"coupon\", \"coupon\": \"SPRING20\"}}'),
                (4, 'coupon.updated', '{\"id\": \"WINTER\", \"object\": \"coupon\", \"percent_off\": 50, \"valid\": false}'),
                (5, 'coupon.deleted', '{\"id\": \"GONE\", \"object\": \"coupon\", \"percent_off\": 10, \"valid\": true}')) v(n, t, o);"
noerr "applying the coupons' and codes' events"

# the code a customer types (any case), its promo_ id, a coupon id: each the form's one discount
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_disc', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', promotion_code => 'spring');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_disc2', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', promotion_code => 'promo_spring');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_disc3', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', coupon => 'SPRING20');
SELECT user_ref || ' ' || amount_total || ' ' || (raw->'discounts')::text FROM stripe_billing.checkout_sessions
 WHERE user_ref IN ('u_disc', 'u_disc2', 'u_disc3') ORDER BY user_ref;"
noerr "checkout with a discount"
cs_disc=$(rows | sed -n 1p)
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" \
   "POST /v1/checkout/sessions 200,POST /v1/checkout/sessions 200,POST /v1/checkout/sessions 200" "requests sent"
eq "$(jx 'r.map(x => pairs(x).filter(l => /^(discounts|allow_promotion)/.test(l)).join("&")).join(",")')" \
   "discounts[0][promotion_code]=promo_spring,discounts[0][promotion_code]=promo_spring,discounts[0][coupon]=SPRING20" \
   "the discount fields sent"
same_lines "the form with a promotion code" "mode=subscription
line_items[0][price]=price_basic
line_items[0][quantity]=1
success_url=https://app.example/ok
cancel_url=https://app.example/cancel
client_reference_id=u_disc
metadata[user_ref]=u_disc
discounts[0][promotion_code]=promo_spring
subscription_data[metadata][user_ref]=u_disc" "$(jx 'r.length ? pairs(r[0]) : ""')"
same_lines "the sessions recorded" 'u_disc 800 [{"coupon": null, "promotion_code": "promo_spring"}]
u_disc2 800 [{"coupon": null, "promotion_code": "promo_spring"}]
u_disc3 800 [{"coupon": "SPRING20", "promotion_code": null}]' "$(rows | sed -n 4,6p)"
verdict "checkout sends the promotion code a customer types (any case: SPRING's promo_ id), a promo_ id as it is, or a coupon id, as the session's one discount (discounts[0][...]); the sessions are recorded with it (800 of 1000)"

# a promo_ id unknown here is Stripe's to judge: sent, and Stripe's 400 names the field
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_disc4', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', promotion_code => 'promo_unknownhere');"
state_is SBA01 "an unknown promo_ id"
[[ "$DETAIL" == *"discounts[0][promotion_code]"* && "$DETAIL" == *resource_missing* ]] || bad "DETAIL should name the param: '$DETAIL'"
eq "$(reqcount)" "$((mark + 1))" "requests made"
verdict "checkout sends a promo_ id not known here as it is; Stripe's refusal (resource_missing, discounts[0][promotion_code]) is SBA01"

# refused before any request, naming the argument
for case in "coupon|coupon => 'SPRING20', promotion_code => 'SPRING'|cannot be given with promotion_code" \
            "promotion_code|promotion_code => 'SPRING', allow_promotion_codes => true|cannot be given with allow_promotion_codes" \
            "coupon|coupon => 'SPRING20', allow_promotion_codes => true|cannot be given with allow_promotion_codes" \
            "promotion_code|promotion_code => 'NOPE'|is no active promotion code" \
            "promotion_code|promotion_code => 'OLD'|is no active promotion code" \
            "promotion_code|promotion_code => 'promo_old'|is not active" \
            "promotion_code|promotion_code => 'LATE'|is expired" \
            "promotion_code|promotion_code => 'two words'|must be a promotion code" \
            "coupon|coupon => 'WINTER'|is no longer valid" \
            "coupon|coupon => 'GONE'|is deleted" \
            "coupon|coupon => E'A\\nB'|must be a coupon id"; do
    IFS='|' read -r named args says <<<"$case"
    mark=$(reqcount)
    sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_disc_bad', 'price_basic',
      'https://app.example/ok', 'https://app.example/cancel', $args);"
    state_is 22023 "checkout refused ($args)"
    [[ "$MSG" == "$named"* && "$MSG" == *"$says"* ]] || bad "the message should start with '$named' and say '$says': '$MSG'"
    eq "$(reqcount)" "$mark" "requests made ($args)"
done
sql "SELECT count(*) FROM stripe_billing.checkout_sessions WHERE user_ref = 'u_disc_bad'"
eq "$(rows)" 0 "sessions recorded for the refused calls"
verdict "checkout refuses, naming the argument, before any request: coupon and promotion_code together, either with allow_promotion_codes, an unknown or inactive code, an inactive or expired promo_ id known here, a coupon known here as no longer valid or deleted, ids with spaces or control characters"

# paid: the subscription's discount and its ids, from the fake's events
fk POST "/_fake/checkout/sessions/$cs_disc/complete" '{}' >/dev/null
sql "SELECT public.apply_all_events();
SELECT d.coupon || ' ' || d.promotion_code || ' ' || (d.subscription = s.id) || ' ' || (s.discounts = ARRAY[d.id]) || ' ' ||
       c.user_ref || ' ' || (d.ends_at > d.starts_at + interval '85 days')
  FROM stripe_billing.discounts d
  JOIN stripe_billing.subscriptions s ON s.customer = d.customer
  JOIN stripe_billing.customers c ON c.id = s.customer
 WHERE c.user_ref = 'u_disc';"
noerr "applying the paid session's events"
eq "$(rows | sed -n 2p)" "SPRING20 promo_spring true true u_disc true" "the discount row (coupon, code, subscription, its discounts, user, 3 months)"
verdict "the paid session's customer.discount.created is a discounts row of the subscription, whose discounts names it"

###########################################################################
# 3d. Re-fetch of the rest of the billing model's ties (issue 27)
###########################################################################
# Objects at the fake, each applied here twice in one second (a tie marks
# refetch): _refetch_one reads each again from its endpoint (a discount from
# the subscription that holds it) and the tie is settled with the fake's state.
sub_disc=$(fk GET "/_fake/objects/$cs_disc" '' 'r.subscription' 2>&1)
di_disc=$(fk GET "/_fake/objects/$sub_disc" '' 'r.discounts[0]' 2>&1)
fk POST /_fake/objects '{"objects": [
  {"id": "ch_tie", "object": "charge", "customer": "cus_x", "amount": 700, "currency": "usd", "status": "succeeded"},
  {"id": "dp_tie", "object": "dispute", "charge": "ch_tie", "amount": 700, "currency": "usd", "status": "under_review"},
  {"id": "cn_tie", "object": "credit_note", "invoice": "in_tie", "customer": "cus_x", "amount": 300, "currency": "usd", "status": "void"},
  {"id": "pm_tie", "object": "payment_method", "customer": "cus_x", "type": "card", "card": {"brand": "visa", "last4": "1111", "exp_month": 2, "exp_year": 2031}},
  {"id": "txi_tie", "object": "tax_id", "customer": "cus_x", "type": "eu_vat", "value": "DE999", "country": "DE"}]}' >/dev/null
# (the ties earlier checks left are settled first: 3d's alone are counted)
sql "SELECT count(*) FROM generate_series(1, 100) g WHERE stripe_billing._refetch_one();
SELECT stripe_billing.stripe_apply_event('{\"id\": \"evt_ch_tie\", \"object\": \"event\", \"type\": \"charge.succeeded\",
  \"created\": 1700000400, \"livemode\": false, \"data\": {\"object\": {\"id\": \"ch_tie\", \"object\": \"charge\",
  \"customer\": \"cus_x\", \"amount\": 700, \"currency\": \"usd\", \"status\": \"succeeded\"}}}');"
noerr "settling earlier ties, the disputed charge"
# (the subscription that holds the discount was last changed by the paid
# session's events, moments ago: its answer to the discount's re-fetch must
# come a later second than those, or it is a same-second tie of its own and
# is re-fetched once more)
sub_settled() {
    [ "$(psql -X -At -c "SELECT clock_timestamp() >= date_trunc('second', last_event_created) + interval '1 second'
                         FROM stripe_billing.subscriptions WHERE id = '$sub_disc'")" = t ]
}
wait_until 5 sub_settled || bad "the subscription $sub_disc was changed within the last second for 5 s"
sql "SELECT count(*) FROM (SELECT stripe_billing.stripe_apply_event(jsonb_build_object('id', 'evt_tie_' || n || '_' || k, 'object', 'event',
           'type', t, 'created', floor(extract(epoch FROM now()))::bigint, 'livemode', false,
           'data', jsonb_build_object('object', o::jsonb)))
   FROM (VALUES (1, 'coupon.updated', '{\"id\": \"SPRING20\", \"object\": \"coupon\", \"percent_off\": 99, \"valid\": true}'),
                (2, 'promotion_code.updated', '{\"id\": \"promo_spring\", \"object\": \"promotion_code\", \"code\": \"STALE\", \"active\": true}'),
                (3, 'charge.dispute.updated', '{\"id\": \"dp_tie\", \"object\": \"dispute\", \"charge\": \"ch_tie\", \"status\": \"needs_response\"}'),
                (4, 'credit_note.updated', '{\"id\": \"cn_tie\", \"object\": \"credit_note\", \"status\": \"issued\", \"amount\": 300}'),
                (5, 'payment_method.updated', '{\"id\": \"pm_tie\", \"object\": \"payment_method\", \"customer\": \"cus_x\", \"type\": \"card\", \"card\": {\"last4\": \"0000\"}}'),
                (6, 'customer.tax_id.updated', '{\"id\": \"txi_tie\", \"object\": \"tax_id\", \"customer\": \"cus_x\", \"value\": \"STALE\"}'),
                (7, 'customer.discount.updated', '{\"id\": \"$di_disc\", \"object\": \"discount\", \"subscription\": \"$sub_disc\", \"source\": {\"coupon\": \"STALE\"}}')) v(n, t, o),
        generate_series(1, 2) k) x;
SELECT string_agg(t, ' ' ORDER BY t) FROM (
  SELECT 'coupon' AS t FROM stripe_billing.coupons WHERE refetch UNION ALL SELECT 'promotion_code' FROM stripe_billing.promotion_codes WHERE refetch
  UNION ALL SELECT 'dispute' FROM stripe_billing.disputes WHERE refetch UNION ALL SELECT 'credit_note' FROM stripe_billing.credit_notes WHERE refetch
  UNION ALL SELECT 'payment_method' FROM stripe_billing.payment_methods WHERE refetch UNION ALL SELECT 'tax_id' FROM stripe_billing.tax_ids WHERE refetch
  UNION ALL SELECT 'discount' FROM stripe_billing.discounts WHERE refetch) m;"
noerr "the ties"
eq "$(rows | sed -n 2p)" "coupon credit_note discount dispute payment_method promotion_code tax_id" "rows marked refetch"
mark=$(reqcount)
sql "SELECT count(*) FROM generate_series(1, 20) g WHERE stripe_billing._refetch_one();
SELECT (SELECT count(*) FROM stripe_billing.coupons WHERE refetch) + (SELECT count(*) FROM stripe_billing.promotion_codes WHERE refetch)
     + (SELECT count(*) FROM stripe_billing.disputes WHERE refetch) + (SELECT count(*) FROM stripe_billing.credit_notes WHERE refetch)
     + (SELECT count(*) FROM stripe_billing.payment_methods WHERE refetch) + (SELECT count(*) FROM stripe_billing.tax_ids WHERE refetch)
     + (SELECT count(*) FROM stripe_billing.discounts WHERE refetch);
SELECT (SELECT percent_off::text FROM stripe_billing.coupons WHERE id = 'SPRING20' AND account IS NULL) || ' ' ||
       (SELECT code FROM stripe_billing.promotion_codes WHERE id = 'promo_spring') || ' ' ||
       (SELECT status || ':' || customer FROM stripe_billing.disputes WHERE id = 'dp_tie') || ' ' ||
       (SELECT status FROM stripe_billing.credit_notes WHERE id = 'cn_tie') || ' ' ||
       (SELECT card_last4 FROM stripe_billing.payment_methods WHERE id = 'pm_tie') || ' ' ||
       (SELECT value FROM stripe_billing.tax_ids WHERE id = 'txi_tie') || ' ' ||
       (SELECT coupon FROM stripe_billing.discounts WHERE id = '$di_disc');"
noerr "_refetch_one"
eq "$(rows | sed -n 1,2p | paste -sd ' ')" "7 0" "re-fetches made, rows still marked"
eq "$(rows | sed -n 3p)" "20 SPRING under_review:cus_x void 1111 DE999 SPRING20" "the rows after (coupon, code, dispute, credit note, card, tax id, discount)"
recs "$mark" /v1/
same_lines "the requests" "GET /v1/coupons/SPRING20
GET /v1/promotion_codes/promo_spring
GET /v1/disputes/dp_tie
GET /v1/credit_notes/cn_tie
GET /v1/payment_methods/pm_tie
GET /v1/tax_ids/txi_tie
GET /v1/subscriptions/$sub_disc expand=discounts" "$(jx 'r.map(x => x.method + " " + x.path + (x.query.expand ? " expand=" + x.query.expand : "")).join("\n")')"
verdict "a same-second tie of a coupon, promotion code, dispute, credit note, card, tax id and discount is re-fetched (a discount from the subscription that holds it, expand[]=discounts) and settled with Stripe's state; nothing stays marked"

###########################################################################
# 4. Usage outbox
###########################################################################
now=$(date +%s)
t1=$((now - 60)) t2=$((now - 3600))
mark=$(reqcount)
sql "BEGIN;
SELECT stripe_billing.stripe_report_usage('u_life', 'api_calls', 5);
ROLLBACK;
SELECT count(*) FROM stripe_billing.usage_outbox;
SELECT stripe_billing.stripe_send_usage();"
noerr "reporting in a rolled back transaction"
eq "$(rows | tail -2 | tr '\n' ' ')" "0 0 " "outbox rows, then rows sent"
eq "$(reqcount)" "$mark" "requests made"
verdict "usage reported in a rolled back transaction leaves nothing to send"

sql "SELECT stripe_billing.stripe_report_usage('u_life', 'api_calls', 7, to_timestamp($t1));
SELECT stripe_billing.stripe_report_usage('u_life', 'api_calls', 11, occurred_at => to_timestamp($t2));"
noerr "stripe_report_usage"
id1=$(rows | sed -n 1p) id2=$(rows | sed -n 2p)
sql "SELECT stripe_billing.stripe_installation_id();"
inst=$(rows)
[[ "$inst" =~ ^[0-9a-f]{16}$ ]] || bad "the installation id: '$inst'"
mark=$(reqcount)
sql "SET stripe_billing.usage_api = 'v1';
SELECT stripe_billing.stripe_send_usage();
SELECT count(*) FROM stripe_billing.usage_outbox WHERE id IN ($id1, $id2) AND sent_at IS NOT NULL;"
noerr "stripe_send_usage"
eq "$(rows | tr '\n' ' ')" "2 2 " "rows sent, then rows marked sent"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status).join(",")')" \
   "POST /v1/billing/meter_events 200,POST /v1/billing/meter_events 200" "requests sent"
same_lines "the meter event forms" "event_name=api_calls
payload[stripe_customer_id]=$cus
payload[value]=7
identifier=sb_${inst}_$id1
timestamp=$t1
event_name=api_calls
payload[stripe_customer_id]=$cus
payload[value]=11
identifier=sb_${inst}_$id2
timestamp=$t2" "$(jx 'r.flatMap(pairs)')"
eq "$(jx 'r.map(x => x.idempotency_key).join(",")')" "sb_${inst}_$id1,sb_${inst}_$id2" "Idempotency-Keys sent"
eq "$(fk GET /_fake/meter_events '' 'r.map(m => m.identifier).sort().join(",")' 2>&1)" \
   "$(printf "sb_${inst}_%s\n" "$id1" "$id2" | LC_ALL=C sort | paste -sd,)" "meter events the fake received"
verdict "with usage_api = 'v1', committed usage rows are sent once as meter events (identifier sb_<installation>_<id>, customer, value, timestamp) and marked sent"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_send_usage();"
noerr "stripe_send_usage (again)"
eq "$(rows)" 0 "rows sent"
eq "$(reqcount)" "$mark" "requests made"
verdict "a second stripe_send_usage sends nothing"

###########################################################################
# 5. Keep-alive
###########################################################################
mark=$(reqcount)
before=$(fk GET /_fake/stats '' 'r.connections_opened')
sql "$(for _ in $(seq 50); do echo "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic')->>'id';"; done)
SELECT unit_amount FROM stripe_billing.prices WHERE id = 'price_basic';"
noerr "50 calls"
after=$(fk GET /_fake/stats '' 'r.connections_opened')
eq "$(rows | grep -c '^price_basic$')" 50 "answers"
eq "$(rows | tail -1)" 1000 "the price applied to the local prices table"
recs "$mark" /v1/
eq "$(jx 'r.length')" 50 "requests recorded"
conns=$(jx 'new Set(r.map(x => x.connection_id)).size')
opened=$((after - before - 1))   # the stats call itself opens one connection
[ "$conns" -le 2 ] && [ "$opened" -le 2 ] && [ "$opened" -ge 1 ] ||
    bad "connections: $opened opened by the session, $conns distinct among its requests (expected 1, at most 2)"
verdict "50 stripe_api calls in one session reuse the connection ($opened opened, $conns used)"

###########################################################################
# 6. Errors and faults
###########################################################################
# fault FAULT_RULES SQL: runs SQL with the rules set; leaves the records in recs.json
fault() {
    nofaults
    faults "$1"
    local m
    m=$(reqcount)
    sql "$2"
    recs "$m" /v1/
    nofaults
}
attempts() { jx 'r.length'; }
reqids_in_detail() { jx "r.some(x => env.D.includes(x.request_id))"; }

fault '[{"kind": "500", "path": "/v1/prices/price_basic", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA05 "500 twice"
eq "$(attempts)" 2 "attempts (one retry)"
[[ "$DETAIL" == *500* && "$DETAIL" == *api_error* ]] || bad "DETAIL should name api_error and 500: '$DETAIL'"
eq "$(D=$DETAIL reqids_in_detail)" true "DETAIL names a request id"
no_key_in "$MSG $DETAIL" "the error"
verdict "a 500 answered twice fails with SBA05 after one retry"

fault '[{"kind": "500", "path": "/v1/prices/price_basic", "count": 1, "should_retry": false}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA05 "500 with Stripe-Should-Retry: false"
eq "$(attempts)" 1 "attempts"
verdict "a 500 with Stripe-Should-Retry: false is not retried"

fault '[{"kind": "503", "path": "/v1/customers", "method": "POST", "count": 1}]' \
    "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"retry@example.com\", \"metadata\": {\"user_ref\": \"u_retry\"}}')->>'id';"
noerr "POST after one 503"
new_cus=$(rows)
eq "$(jx 'r.map(x => x.status).join(",")')" "503,200" "attempts"
eq "$(jx 'r.length == 2 && !!r[0].idempotency_key && r[0].idempotency_key == r[1].idempotency_key')" true "the same Idempotency-Key on both attempts"
sql "SELECT email, user_ref FROM stripe_billing.customers WHERE id = '$new_cus';"
eq "$(rows)" "retry@example.com|u_retry" "the customer applied locally"
verdict "a POST retried after a 503 reuses its Idempotency-Key; the created customer is applied locally"

fault '[{"kind": "429", "path": "/v1/prices/price_basic", "count": 2, "retry_after": 1}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA04 "429 twice"
eq "$(attempts)" 2 "attempts"
[ "$MS" -ge 1000 ] || bad "failed after $MS ms, before Retry-After (1 s) passed"
no_key_in "$MSG $DETAIL" "the error"
verdict "a 429 answered twice fails with SBA04, after waiting Retry-After between the attempts ($MS ms)"

fault '[{"kind": "429", "path": "/v1/prices/price_basic", "count": 1, "retry_after": 1}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic')->>'id';"
noerr "429 once"
eq "$(rows)" price_basic "the answer"
eq "$(jx 'r.map(x => x.status).join(",")')" "429,200" "attempts"
[ "$MS" -ge 1000 ] || bad "retried after $MS ms, before Retry-After (1 s) passed"
verdict "a 429 answered once succeeds on the retry, made after Retry-After ($MS ms)"

fault '[{"kind": "401", "path": "/v1/prices/price_basic", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA03 "401"
eq "$(attempts)" 1 "attempts (no retry)"
[[ "$MSG" == *"Invalid API Key provided"* ]] || bad "message should be Stripe's: '$MSG'"
[[ "$DETAIL" == *401* ]] || bad "DETAIL should name HTTP 401: '$DETAIL'"
no_key_in "$OUT" "the error"
verdict "a 401 fails with SBA03 at once, without the key in the message"

fault '[{"kind": "truncate", "path": "/v1/prices/price_basic", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA07 "truncated body"
no_key_in "$OUT" "the error"
verdict "a truncated response fails with SBA07 ($(attempts) attempts: $MSG)"

sql "SET stripe_billing.api_base = 'http://127.0.0.1:1';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA07 "connection refused"
no_key_in "$OUT" "the error"
verdict "a refused connection fails with SBA07 ($MSG)"

fault '[{"kind": "hang", "path": "/v1/prices/price_basic", "count": 2}]' \
    "SET stripe_billing.request_timeout = 300;
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBA07 "request_timeout"
# (the cluster's request_timeout is 10 s: a SET not in effect takes over
# 10 s; 8 s leaves room for a loaded machine)
[ "$MS" -lt 8000 ] || bad "took $MS ms"
verdict "stripe_billing.request_timeout 300 ms against a hung request fails with SBA07, not after the cluster's 10 s ($MS ms, $(attempts) attempts)"

fault '[{"kind": "hang", "path": "/v1/prices/price_basic", "count": 2}]' \
    "SET statement_timeout = '200ms';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
[ -n "$STATE" ] || bad "no error"
# (uninterrupted, the hung request would last the 10 s request_timeout)
[ "$MS" -lt 5000 ] || bad "the error came after $MS ms"
verdict "statement_timeout 200ms interrupts a hung request well before the 10 s request_timeout ($MS ms, ${STATE:-no error}: $MSG)"

nofaults
faults '[{"kind": "hang", "path": "/v1/prices/price_pro", "count": 2}]'
mark=$(reqcount)
# (the second statement runs in the same session, after the cancel)
PGAPPNAME=sb_api_cancel timeout 25 psql -X -At -v VERBOSITY=verbose \
    -c "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_pro')" \
    -c "SELECT 'after:' || (stripe_billing.stripe_api('GET', '/v1/prices/price_basic')->>'id')" >"$work/cancel.out" 2>&1 &
bg=$!
requested() { [ "$(reqcount)" -gt "$mark" ]; }
wait_until 30 requested || bad "the fake did not see the request to hang within 30 s"
t0=$(date +%s%N)
psql -X -At -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'sb_api_cancel'" >"$work/canceller.out" 2>&1
wait "$bg"
MS=$((($(date +%s%N) - t0) / 1000000))
nofaults
cat "$work/cancel.out" >>"$client_log"
eq "$(cat "$work/canceller.out")" 1 "backends signalled"
grep -qE 'ERROR:  57014: canceling statement due to user request' "$work/cancel.out" ||
    bad "the hung call's session saw: $(tr '\n' ' ' <"$work/cancel.out")"
# (uncancelled, the hung request would last the 10 s request_timeout)
[ "$MS" -lt 5000 ] || bad "the call ended $MS ms after pg_cancel_backend"
verdict "pg_cancel_backend from another session ends a hung call well before the 10 s request_timeout ($MS ms)"

grep -qx 'after:price_basic' "$work/cancel.out" ||
    bad "the cancelled session's next call: $(grep -v 57014 "$work/cancel.out" | tr '\n' ' ')"
grep -qE 'ERROR:  57014' "$work/cancel.out" || bad "the first call was not cancelled: the check would prove nothing"
verdict "the session whose hung call pg_cancel_backend ended gets the answer of its next call"

###########################################################################
# 7. A session goes on after each kind of failed transfer
###########################################################################
# after_fault RULES FAILING_SQL [SETUP]: in ONE session, SETUP, then
# FAILING_SQL with the rules set, then a plain call; leaves the records of
# the failing call in recs.json and sets AFTER (the plain call's answer)
after_fault() {
    nofaults
    faults "$1"
    local m
    m=$(reqcount)
    ONERR=0 sql "${3:-}
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic', NULL);
$2
SELECT 'after:' || (stripe_billing.stripe_api('GET', '/v1/prices/price_basic')->>'id');"
    recs "$m" /v1/
    nofaults
    AFTER=$(rows | sed -n 's/^after://p')
}

faults '[{"kind": "huge", "path": "/v1/prices/price_onetime", "bytes": 60000}]'
sql "SET stripe_billing.max_response_size = '64kB';
SELECT (r->>'object') || ':' || (length(r->>'padding') > 59000) FROM stripe_billing.stripe_api('GET', '/v1/prices/price_onetime') r;"
nofaults
noerr "a 60000-byte answer under a 64kB cap"
eq "$(rows)" "list:true" "the answer (object:padding over 59000 bytes)"
verdict "stripe_billing.max_response_size = 64kB: a 60000-byte answer is taken whole"

# the fake's huge body with a Content-Length (libcurl stops on the header),
# then chunked (the body callback stops at the cap)
for chunked in false true; do
    after_fault "[{\"kind\": \"huge\", \"path\": \"/v1/prices/price_onetime\", \"bytes\": 200000, \"count\": 2, \"chunked\": $chunked}]" \
        "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_onetime');" \
        "SET stripe_billing.max_response_size = '64kB';"
    eq "$STATES" SBA07 "errors of the session"
    [[ "$MSG" == *"GET /v1/prices/price_onetime exceeds stripe_billing.max_response_size (64 kB)"* ]] ||
        bad "the message should name the request and the 64 kB cap: '$MSG'"
    grep -qE '^HINT:  .*stripe_billing\.max_response_size' <<<"$OUT" || bad "no HINT naming stripe_billing.max_response_size"
    eq "$(jx 'r.map(x => x.path + " " + x.status).join(",")')" \
       "/v1/prices/price_basic 200,/v1/prices/price_onetime huge,/v1/prices/price_basic 200" "requests (the huge answer not retried)"
    eq "$AFTER" price_basic "the session's next call"
    if [ $chunked = false ]; then how="with a Content-Length"; else how="chunked, without Content-Length"; fi
    verdict "an answer over stripe_billing.max_response_size ($how) fails with SBA07 naming the setting, is not retried, and the session's next call works"
done

after_fault '[{"kind": "html", "path": "/v1/prices/price_onetime", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_onetime');"
eq "$STATES" SBA07 "errors of the session"
[[ "$MSG" == *"not JSON"* && "$MSG" == *"HTTP 200"* ]] || bad "the message should say the HTTP 200 answer is not JSON: '$MSG'"
eq "$(jx 'r.map(x => x.status).join(",")')" "200,html,html,200" "answers (the not-JSON 200 retried once, as a network failure)"
eq "$AFTER" price_basic "the session's next call"
verdict "an HTML page with HTTP 200 fails with SBA07 (not 22P02) after one retry, and the session's next call works"

after_fault '[{"kind": "half_json", "path": "/v1/prices/price_onetime", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_onetime');"
eq "$STATES" SBA07 "errors of the session"
eq "$(jx 'r.map(x => x.status).join(",")')" "200,half_json,half_json,200" "answers"
eq "$AFTER" price_basic "the session's next call"
verdict "an HTTP 200 whose JSON is cut short fails with SBA07, and the session's next call works"

after_fault '[{"kind": "truncate", "path": "/v1/prices/price_onetime", "count": 2}]' \
    "SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_onetime');"
eq "$STATES" SBA07 "errors of the session"
eq "$AFTER" price_basic "the session's next call"
verdict "a body cut off by the connection closing fails with SBA07, and the session's next call works"

after_fault '[{"kind": "hang", "path": "/v1/prices/price_onetime", "count": 1}]' \
    "SET statement_timeout = '200ms';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_onetime');
RESET statement_timeout;"
eq "$STATES" 57014 "errors of the session"
eq "$AFTER" price_basic "the session's next call"
verdict "after statement_timeout ends a hung call, the session's next call works"

nofaults
faults '[{"kind": "html", "path": "/v1/customers", "method": "POST", "count": 1}]'
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"html@example.com\"}')->>'email';"
recs "$mark" /v1/
nofaults
noerr "POST after one HTML 200"
eq "$(rows)" html@example.com "the answer"
eq "$(jx 'r.map(x => x.status).join(",")')" "html,200" "answers"
eq "$(jx 'r.length == 2 && !!r[0].idempotency_key && r[0].idempotency_key == r[1].idempotency_key')" true "the same Idempotency-Key on both attempts"
verdict "a POST answered by an HTML 200 is retried with the same Idempotency-Key, and succeeds"

###########################################################################
# 8. Paths and idempotency keys: refused before any request
###########################################################################
fk POST /_fake/objects '{"object": {"id": "cus_victim", "object": "customer", "email": "victim@example.com"}}' >/dev/null
mark=$(reqcount)
for call in "stripe_cancel_subscription('../customers/cus_victim', false)" \
            "stripe_resume_subscription('../customers/cus_victim')" \
            "stripe_change_price('sub_x/../../customers/cus_victim', 'price_pro')"; do
    sql "SELECT stripe_billing.$call;"
    state_is 22023 "$call"
    [[ "$MSG" == *subscription_id* ]] || bad "$call: the message should name subscription_id: '$MSG'"
done
eq "$(reqcount)" "$mark" "requests reaching the fake"
eq "$(fk GET /_fake/objects/cus_victim '' 'String(!!r.deleted)' 2>&1)" false "cus_victim deleted"
verdict "subscription ids with dot segments (cancel, resume, change_price) are refused with 22023 naming subscription_id, before any request"

mark=$(reqcount)
n=0
for path in '/v1/subscriptions/../customers/cus_victim' '/v1/subscriptions/%2e%2e/customers/cus_victim' \
            '/v1/subscriptions/%2E%2e/customers/cus_victim' '/v1/subscriptions/.%2E/customers/cus_victim' \
            '/v1/customers/cus_victim/..' '/v1/customers/cus_victim/.' '/v1/./customers/cus_victim' \
            '/v1/customers/%2e' '/v1//customers/cus_victim' '/v1/customers/' '/v1/customers/cus_victim%zz' \
            '/v1/customers/cus_victim%2' '/v1/customers/cus\victim' '/v1/customers/cus_victim;x' 'v1/customers' \
            '/v1/customers/cus victim' '/v1/customers/cus_victim?expand=x' $'/v1/customers/cus_vict\xc3\xafm'; do
    sql "SELECT stripe_billing.stripe_api('DELETE', '$path');"
    state_is 22023 "path $path"
    [[ "$MSG" == *path* ]] || bad "path $path: the message should name path: '$MSG'"
    n=$((n + 1))
done
eq "$(reqcount)" "$mark" "requests reaching the fake"
eq "$(fk GET /_fake/objects/cus_victim '' 'String(!!r.deleted)' 2>&1)" false "cus_victim deleted"
sql "SELECT stripe_billing.stripe_api('GET', '/v1/customers/cus_victim')->>'id';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic%5F');"
eq "$(rows | head -1)" cus_victim "the answer to a plain path"
state_is SBA01 "a path with a valid %5F escape (sent: Stripe's 404)"
verdict "stripe_api refuses $n paths (dot segments, also %2e-encoded, empty segments, bad %XX, reserved characters) with 22023 naming path, before any request"

mark=$(reqcount)
sql "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"inject@example.com\"}', E'k1\\r\\nStripe-Account: acct_victim');"
state_is 22023 "an idempotency_key with CR LF"
[[ "$MSG" == *idempotency_key* ]] || bad "the message should name idempotency_key: '$MSG'"
grep -q $'\r' <<<"$OUT" && bad "the error holds a raw CR"
grep -q '^Stripe-Account' <<<"$OUT" && bad "the error holds a raw LF"
for key in "E'k2\\nx'" "E'tab\\tkey'" "'ключ'" "repeat('k', 256)" "E'k3\\x7f'"; do
    sql "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{}', $key);"
    state_is 22023 "idempotency_key $key"
    [[ "$MSG" == *idempotency_key* ]] || bad "idempotency_key $key: the message should name idempotency_key: '$MSG'"
done
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_inject', 'price_basic',
  'https://app.example/ok', 'https://app.example/cancel', idempotency_key => E'ck\\r\\nStripe-Account: acct_victim');"
state_is 22023 "stripe_create_checkout with an idempotency_key with CR LF"
[[ "$MSG" == *idempotency_key* ]] || bad "checkout: the message should name idempotency_key: '$MSG'"
eq "$(reqcount)" "$mark" "requests reaching the fake"
verdict "idempotency keys with CR/LF, other control characters, non-ASCII or over 255 characters are refused with 22023 before any request (stripe_api, stripe_create_checkout)"

# A key that would smuggle a second request onto the kept-alive connection:
# refused, and the same session's next call on that connection gets its own answer.
mark=$(reqcount)
ONERR=0 sql "SELECT 'one:' || (stripe_billing.stripe_api('GET', '/v1/prices/price_basic')->>'id');
SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"smuggle@example.com\"}',
  E'k4\\r\\nContent-Length: 0\\r\\n\\r\\nGET /v1/prices/price_pro HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Bearer sk_test_smuggled\\r\\n\\r\\n');
SELECT 'two:' || (stripe_billing.stripe_api('GET', '/v1/prices/price_onetime')->>'id');"
recs "$mark" /v1/
eq "$STATES" 22023 "errors of the session"
eq "$(rows | paste -sd ' ')" "one:price_basic two:price_onetime" "the answers"
eq "$(jx 'r.map(x => x.method + " " + x.path).join(",")')" "GET /v1/prices/price_basic,GET /v1/prices/price_onetime" "requests the fake received"
eq "$(jx 'new Set(r.map(x => x.connection_id)).size')" 1 "connections used"
verdict "a key that would smuggle a second request is refused; the next call on the same connection gets its own answer"

mark=$(reqcount)
ikey255=$(printf 'k%.0s' $(seq 255))
sql "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"k255@example.com\"}', '$ikey255')->>'email';
SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"kpunct@example.com\"}', 'a b~!\"#\$%&''()*+,-./:;<=>?@[\\]^_\`{|}$RUN')->>'email';
SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"kempty@example.com\"}', '')->>'email';"
noerr "printable keys"
eq "$(rows | paste -sd ' ')" "k255@example.com kpunct@example.com kempty@example.com" "the answers"
recs "$mark" /v1/
eq "$(jx 'r.length == 3 && r[0].idempotency_key')" "$ikey255" "the 255-character key sent"
eq "$(jx 'r.length == 3 && r[1].idempotency_key')" "a b~!\"#\$%&'()*+,-./:;<=>?@[\\]^_\`{|}$RUN" "the punctuation key sent"
eq "$(jx 'r.length == 3 && /^sb_[0-9a-f]{32}$/.test(r[2].idempotency_key)')" true "an empty key replaced by a fresh one"
verdict "idempotency keys of 255 printable ASCII characters (punctuation, spaces) are sent as given; an empty one means a fresh key"

###########################################################################
# 9. An upstream that echoes the API key: scrubbed from every error text
###########################################################################
mark=$(reqcount)
faults '[{"kind": "echo_auth", "path": "/v1/prices/price_basic", "count": 2}]'
sql "CREATE TEMP TABLE caught (m text, d text);
DO \$\$
DECLARE m text; d text;
BEGIN
  PERFORM stripe_billing.stripe_api('GET', '/v1/prices/price_basic');
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
  INSERT INTO caught VALUES (m, d);
END \$\$;
SELECT m || ' // ' || d FROM caught;
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
nofaults
caught=$(rows | head -1)
state_is SBA01 "the echoed error"
eq "$(recs "$mark" /v1/; jx 'r.map(x => x.status).join(",")')" "echo_auth,echo_auth" "answers"
[[ "$caught" == *'header "Authorization: Bearer ********'* && "$caught" == *'param Authorization: Bearer ********'* ]] ||
    bad "the caught message and detail should quote the (masked) header: '$caught'"
no_key_in "$caught" "the message and detail PL/pgSQL caught"
[[ "$MSG" == *Authorization* ]] || bad "the session's error should quote the header: '$MSG'"
no_key_in "$(grep -E '^(psql:.*)?(ERROR|DETAIL|HINT|LOCATION):' <<<"$OUT")" "the error the session saw (verbose)"
verdict "Stripe's error echoing the Authorization header reaches PL/pgSQL (message, detail) and psql with the key masked"

sql "SELECT stripe_billing.stripe_report_usage('u_life', 'api_calls', 3);"
noerr "stripe_report_usage"
echo_row=$(rows)
faults '[{"kind": "echo_auth", "path": "/v1/billing/meter_events", "count": 1}]'
sql "SET stripe_billing.usage_api = 'v1';
SELECT stripe_billing.stripe_send_usage();
SELECT last_error FROM stripe_billing.usage_outbox WHERE id = ${echo_row:-0} AND failed_at IS NOT NULL;"
nofaults
noerr "stripe_send_usage against the echoing fault"
last_error=$(rows | sed -n 2p)
[[ "$last_error" == *'Authorization: Bearer ********'* ]] || bad "last_error should quote the (masked) header: '$last_error'"
no_key_in "$last_error" "usage_outbox.last_error"
sql "SET stripe_billing.usage_api = 'v1';
SELECT stripe_billing.stripe_send_usage();
SELECT stripe_billing.stripe_retry_failed_usage(ARRAY[${echo_row:-0}::bigint]);
SELECT stripe_billing.stripe_send_usage();"
eq "$(rows | tr '\n' ' ')" "0 1 1 " "rows sent while failed, rows made pending again, rows sent then"
verdict "a usage row Stripe refuses (400, echoing the header) is failed with the error in usage_outbox.last_error, key masked, and sent after stripe_retry_failed_usage"

###########################################################################
# 10. api_base: https only, except loopback
###########################################################################
mark=$(reqcount)
for base in 'http://example.com' 'http://localhost.example.com' 'http://127.0.0.1.example.com' \
            'http://127.0.0.1@example.com' 'http://localhost:1@example.com' 'ftp://127.0.0.1'; do
    sql "SET stripe_billing.api_base = '$base';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
    state_is SBC03 "api_base $base"
    [ "$MS" -lt 5000 ] || bad "api_base $base: refused only after $MS ms"
done
eq "$(reqcount)" "$mark" "requests reaching the fake"
verdict "api_base http:// to a non-loopback host (and look-alikes) fails with SBC03 before any network"

mark=$(reqcount)
sql "SET stripe_billing.api_base = 'http://localhost:$P';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_pro')->>'id';"
noerr "api_base http://localhost:$P"
eq "$(rows)" price_pro "the answer"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.headers.host).join(",")')" "GET /v1/prices/price_pro localhost:$P" "requests recorded"
verdict "api_base http://localhost:<port> works"

###########################################################################
# 10b. Requests started in the background (the backfill's lookahead)
###########################################################################
ents() { recs "$1" /v1/entitlements; jx "r.map(x => x.query.customer).join(' ')"; }
# Four prefetched requests are all kept and each taken once: once the fake
# has seen the four, every entitlements request meets a fault (an empty
# page saying more wait), so a request asked again would show.  The session
# takes its pages once the test has armed the fault (a row in prefetch_go),
# waiting 8 s at most: a prefetched answer is taken only while under 10 s old.
sql "CREATE TABLE prefetch_go (at timestamptz DEFAULT now())"
noerr "CREATE TABLE prefetch_go"
mark=$(reqcount)
psql -X -At -q -v ON_ERROR_STOP=1 >"$work/prefetch.out" 2>&1 <<'SQL' &
SET stripe_billing.max_requests_per_second = 1000;
DO $$ DECLARE c text; t0 timestamptz := clock_timestamp(); BEGIN
  FOREACH c IN ARRAY '{cus_pf1,cus_pf2,cus_pf3,cus_pf4}'::text[] LOOP
    PERFORM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                          jsonb_build_object('customer', c, 'limit', 100));
    PERFORM pg_sleep(0.01);   -- (the rate: one a millisecond)
  END LOOP;
  WHILE NOT EXISTS (SELECT FROM prefetch_go) AND clock_timestamp() < t0 + interval '8 s' LOOP
    PERFORM pg_sleep(0.05);
  END LOOP;
  IF NOT EXISTS (SELECT FROM prefetch_go) THEN
    RAISE EXCEPTION 'the test did not arm the fault within 8 s';
  END IF;
END $$;
SELECT string_agg(c || ' ' || (l.page->'has_more')::text || ' ' || (l.snapshot IS NOT NULL), ',')
  FROM unnest('{cus_pf1,cus_pf2,cus_pf3,cus_pf4}'::text[]) c,
       stripe_billing._list_page('/v1/entitlements/active_entitlements',
                                 jsonb_build_object('customer', c, 'limit', 100), 'null') l;
SQL
sql_pid=$!
four_seen() { [ "$(ents "$mark" | wc -w)" -ge 4 ]; }
# (within the session's 8 s, which begin after this wait does)
wait_until 6 four_seen || bad "the fake had not seen the four requests within 6 s: $(ents "$mark")"
faults '[{"kind": "empty_has_more", "path": "/v1/entitlements/active_entitlements", "count": 10}]'
sql "INSERT INTO prefetch_go DEFAULT VALUES"
noerr "the go for the prefetching session"
wait "$sql_pid" || bad "psql failed: $(cat "$work/prefetch.out")"
nofaults
eq "$(cat "$work/prefetch.out")" "cus_pf1 false true,cus_pf2 false true,cus_pf3 false true,cus_pf4 false true" \
   "the four pages"
eq "$(ents "$mark")" "cus_pf1 cus_pf2 cus_pf3 cus_pf4" "requests the fake saw"
sql "DROP TABLE prefetch_go"
verdict "four requests started in the background are each answered once, none asked again"

# An answer left untaken past ten seconds is not used (asked again): it is
# no longer the present.
mark=$(reqcount)
sql "SELECT FROM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                               '{\"customer\": \"cus_pf_old\", \"limit\": 100}');
SELECT FROM pg_sleep(10.5);
SELECT jsonb_array_length(page->'data')
  FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
                                 '{\"customer\": \"cus_pf_old\", \"limit\": 100}', 'null');"
noerr "an old background request"
eq "$(rows | grep -v '^$')" "0" "the page"
eq "$(ents "$mark")" "cus_pf_old cus_pf_old" "requests the fake saw"
verdict "an answer started in the background and left untaken for ten seconds is asked again"

# An answer started in the background and over max_response_size is raised
# when taken (SBA07), not asked again: it would be just as large.
mark=$(reqcount)
faults '[{"kind": "huge", "path": "/v1/entitlements/active_entitlements", "bytes": 200000, "count": 1}]'
sql "SET stripe_billing.max_response_size = '64kB';
SELECT FROM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                          '{\"customer\": \"cus_pf_huge\", \"limit\": 100}');
SELECT FROM pg_sleep(0.2);
SELECT jsonb_array_length(page->'data')
  FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
                                 '{\"customer\": \"cus_pf_huge\", \"limit\": 100}', 'null');"
nofaults
state_is SBA07 "a prefetched answer over max_response_size"
eq "$(ents "$mark")" "cus_pf_huge" "requests the fake saw"
verdict "an answer started in the background and over max_response_size fails with SBA07 when taken, not asked again"

###########################################################################
# 10c. Stripe Connect: calls made as a connected account
###########################################################################
CONN="acct_1Conn$RUN"      # the connected account of direct charges
DEST="acct_1Dest$RUN"      # the connected account of destination charges
# same(a, b): two recorded requests alike but for Stripe-Account and
# Idempotency-Key (method, path, query, body, every other header)
SAME='(a, b) => { const h = (x) => JSON.stringify(Object.entries(x.headers).filter(([k]) => k !== "stripe-account" && k !== "idempotency-key").sort()); return a.method === b.method && a.path === b.path && JSON.stringify(a.query) === JSON.stringify(b.query) && a.raw_body === b.raw_body && h(a) === h(b); }'
# pair_check: the saved records are the platform's request then the
# account's: alike, and only the second carries Stripe-Account: $CONN
pair_check() {
    eq "$(jx "r.length === 2 && ($SAME)(r[0], r[1])")" true "$1: the two requests alike but for Stripe-Account and Idempotency-Key"
    eq "$(jx 'r.map(x => x.headers["stripe-account"] || "none").join(",")')" "none,$CONN" "$1: Stripe-Account sent (platform, account)"
}

# the two accounts at the fake (each with the default catalogue), and
# $CONN's customer of u_conn
fk POST /_fake/accounts "{\"accounts\": [{\"id\": \"$CONN\"}, {\"id\": \"$DEST\"}]}" >/dev/null
fk POST /_fake/objects "{\"account\": \"$CONN\", \"object\": {\"id\": \"cus_conn\", \"object\": \"customer\", \"email\": \"conn@example.com\", \"metadata\": {\"user_ref\": \"u_conn\"}}}" >/dev/null

# stripe_api: the same POST on the platform and on the account; each
# customer made is recorded locally as its account's
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"twin@example.com\", \"metadata\": {\"user_ref\": \"u_twin\"}}', 'twin-p-$RUN') IS NOT NULL;
SELECT stripe_billing.stripe_api('POST', '/v1/customers', '{\"email\": \"twin@example.com\", \"metadata\": {\"user_ref\": \"u_twin\"}}', 'twin-a-$RUN', '$CONN') IS NOT NULL;
SELECT stripe_billing.stripe_api('GET', '/v1/customers/cus_conn', account => '$CONN')->>'id';
SELECT coalesce(account, 'platform') FROM stripe_billing.customers WHERE user_ref = 'u_twin' ORDER BY account NULLS FIRST;
SELECT account FROM stripe_billing.customers WHERE id = 'cus_conn' AND user_ref = 'u_conn';"
noerr "stripe_api on the platform and on $CONN"
recs "$mark" /v1/customers
fk GET "/_fake/requests?path=/v1/customers" '' "since(r, $mark).filter(x => x.method === 'POST')" >"$work/recs.json"
pair_check "POST /v1/customers"
eq "$(rows | sed -n 3,6p | paste -sd ' ')" "cus_conn platform $CONN $CONN" "the answer, then the customers' accounts (u_twin's two, cus_conn)"
verdict "stripe_api(..., account => acct_…) sends Stripe-Account and otherwise the same request; what Stripe returns is recorded as that account's"

# the events pages (the worker's, per account): the same GETs, with the
# header (the pages after a cursor: each account's own newest event, so
# the two requests differ in ending_before too)
fk POST /_fake/events "{\"account\": \"$CONN\", \"events\": [{\"type\": \"customer.updated\",
    \"data\": {\"object\": {\"id\": \"cus_conn\", \"object\": \"customer\", \"metadata\": {\"user_ref\": \"u_conn\"}}}}]}" >/dev/null
sql "SELECT stripe_billing.stripe_api('GET', '/v1/events', '{\"limit\": 1}')->'data'->0->>'id';
SELECT stripe_billing.stripe_api('GET', '/v1/events', '{\"limit\": 1}', account => '$CONN')->'data'->0->>'id';"
newest=$(rows | sed -n 1p)
newest_conn=$(rows | sed -n 2p)
for call in "_events_page('%s', false%s)" "_events_page_text('%s'%s)" "_events_text('{\"limit\": 2}'%.0s%s)"; do
    mark=$(reqcount)
    # shellcheck disable=SC2059
    sql "SELECT stripe_billing.$(printf "$call" "$newest" '') IS NOT NULL;
         SELECT stripe_billing.$(printf "$call" "$newest_conn" ", account => '$CONN'") IS NOT NULL;"
    noerr "${call%%(*}"
    recs "$mark" /v1/events
    if [ "${call%%(*}" = _events_text ]; then
        pair_check "${call%%(*}"
    else
        eq "$(jx "r.length === 2 && r[0].query.ending_before === '$newest' && r[1].query.ending_before === '$newest_conn'
                  && ($SAME)(r[0], Object.assign({}, r[1], {query: Object.assign({}, r[1].query, {ending_before: '$newest'})}))")" \
           true "${call%%(*}: the two requests alike but for Stripe-Account, Idempotency-Key and each account's cursor"
        eq "$(jx 'r.map(x => x.headers["stripe-account"] || "none").join(",")')" "none,$CONN" "${call%%(*}: Stripe-Account sent (platform, account)"
    fi
done
verdict "the events pages (_events_page, _events_page_text, _events_text) of an account send its Stripe-Account, otherwise the same GET /v1/events"

# a request started in the background for one account never answers another's
mark=$(reqcount)
sql "SELECT FROM stripe_billing._list_prefetch('/v1/entitlements/active_entitlements',
                                               '{\"customer\": \"cus_pf_conn\", \"limit\": 100}', '$CONN');
SELECT FROM pg_sleep(0.3);
SELECT 'platform:' || jsonb_array_length(page->'data') FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
                                   '{\"customer\": \"cus_pf_conn\", \"limit\": 100}', 'null');
SELECT 'account:' || jsonb_array_length(page->'data') FROM stripe_billing._list_page('/v1/entitlements/active_entitlements',
                                   '{\"customer\": \"cus_pf_conn\", \"limit\": 100}', 'null', '$CONN');"
noerr "prefetch per account"
eq "$(rows | paste -sd ' ')" "platform:0 account:0" "the pages"
recs "$mark" /v1/entitlements
eq "$(jx 'r.map(x => x.headers["stripe-account"] || "none").join(",")')" "$CONN,none" \
   "requests the fake saw (the account's in the background, the platform's own; the account's page taken from the background)"
verdict "a list request started in the background for $CONN is not the platform's answer to the same path and query, and answers $CONN's"

# Checkout: the same session on the platform and on the account (a user
# with no customer on either), each recorded as its account's
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_conn_new', 'price_basic', 'https://app.example/ok',
       'https://app.example/cancel', customer_email => 'new@example.com', idempotency_key => 'cs-p-$RUN');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_conn_new', 'price_basic', 'https://app.example/ok',
       'https://app.example/cancel', customer_email => 'new@example.com', idempotency_key => 'cs-a-$RUN', account => '$CONN');
SELECT coalesce(account, 'platform') FROM stripe_billing.checkout_sessions WHERE user_ref = 'u_conn_new' ORDER BY account NULLS FIRST;"
noerr "checkout on the platform and on $CONN"
recs "$mark" /v1/
pair_check "POST /v1/checkout/sessions"
eq "$(rows | sed -n 3,4p | paste -sd ' ')" "platform $CONN" "the sessions' accounts"
verdict "stripe_create_checkout(..., account => acct_…) sends Stripe-Account and otherwise the same form; the session is recorded as that account's"

# direct charges: the account's customer, the platform's application fee
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_conn', 'price_basic', 'https://app.example/ok',
       'https://app.example/cancel', application_fee_percent => 12.5, account => '$CONN');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_conn', 'price_onetime', 'https://app.example/ok',
       'https://app.example/cancel', mode => 'payment', application_fee_amount => 250, account => '$CONN');"
noerr "direct-charge checkouts"
cs_direct=$(rows | sed -n 1p)
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status + " " + x.headers["stripe-account"]).join(",")')" \
   "POST /v1/checkout/sessions 200 $CONN,POST /v1/checkout/sessions 200 $CONN" "requests sent"
same_lines "the direct subscription's form" "mode=subscription
line_items[0][price]=price_basic
line_items[0][quantity]=1
success_url=https://app.example/ok
cancel_url=https://app.example/cancel
client_reference_id=u_conn
metadata[user_ref]=u_conn
customer=cus_conn
subscription_data[metadata][user_ref]=u_conn
subscription_data[application_fee_percent]=12.5" "$(jx 'r.length ? pairs(r[0]) : ""')"
same_lines "the direct payment's form" "mode=payment
line_items[0][price]=price_onetime
line_items[0][quantity]=1
success_url=https://app.example/ok
cancel_url=https://app.example/cancel
client_reference_id=u_conn
metadata[user_ref]=u_conn
customer=cus_conn
payment_intent_data[metadata][user_ref]=u_conn
payment_intent_data[application_fee_amount]=250" "$(jx 'r.length > 1 ? pairs(r[1]) : ""')"
verdict "direct charges on $CONN: the account's customer (cus_conn), subscription_data[application_fee_percent] or payment_intent_data[application_fee_amount], with Stripe-Account"

# destination charges: on the platform, funds to $DEST, settled by it
mark=$(reqcount)
sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_dest', 'price_basic', 'https://app.example/ok',
       'https://app.example/cancel', transfer_destination => '$DEST', on_behalf_of => '$DEST');
SELECT session_id FROM stripe_billing.stripe_create_checkout('u_dest', 'price_onetime', 'https://app.example/ok',
       'https://app.example/cancel', mode => 'payment', application_fee_amount => 100, transfer_destination => '$DEST',
       on_behalf_of => '$DEST');
SELECT count(*) FROM stripe_billing.checkout_sessions WHERE user_ref = 'u_dest' AND account IS NULL;"
noerr "destination-charge checkouts"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status + " " + (x.headers["stripe-account"] || "none")).join(",")')" \
   "POST /v1/checkout/sessions 200 none,POST /v1/checkout/sessions 200 none" "requests sent"
eq "$(jx 'r.length ? pairs(r[0]).filter(l => /transfer_data|on_behalf_of|application_fee/.test(l)).join(",") : ""')" \
   "subscription_data[on_behalf_of]=$DEST,subscription_data[transfer_data][destination]=$DEST" "the subscription's Connect fields"
eq "$(jx 'r.length > 1 ? pairs(r[1]).filter(l => /transfer_data|on_behalf_of|application_fee/.test(l)).join(",") : ""')" \
   "payment_intent_data[application_fee_amount]=100,payment_intent_data[on_behalf_of]=$DEST,payment_intent_data[transfer_data][destination]=$DEST" "the payment's Connect fields"
eq "$(rows | tail -1)" 2 "the platform's sessions recorded"
verdict "destination charges: the platform's session (no Stripe-Account) with ..._data[transfer_data][destination] and ..._data[on_behalf_of] = $DEST, and an application fee"

# what Stripe refuses is refused first, naming the argument
mark=$(reqcount)
n=0
for case in "application_fee_percent|application_fee_percent => 10" \
            "application_fee_amount|mode => 'payment', application_fee_amount => 10" \
            "application_fee_amount|application_fee_amount => 10, account => '$CONN'" \
            "application_fee_percent|mode => 'payment', application_fee_percent => 10, account => '$CONN'" \
            "application_fee_percent|application_fee_percent => 12.345, account => '$CONN'" \
            "transfer_destination|transfer_destination => '$DEST', account => '$CONN'" \
            "on_behalf_of|on_behalf_of => '$DEST', account => '$CONN'" \
            "on_behalf_of|transfer_destination => '$DEST', on_behalf_of => '$CONN'" \
            "transfer_destination|transfer_destination => 'cus_x'" \
            "transfer_destination|transfer_destination => E'acct_x\\r\\nX-Evil: 1'" \
            "on_behalf_of|on_behalf_of => 'acct_../v1'"; do
    IFS='|' read -r named args <<<"$case"
    sql "SELECT session_id FROM stripe_billing.stripe_create_checkout('u_refused', 'price_basic', 'https://app.example/ok',
           'https://app.example/cancel', $args);"
    state_is 22023 "checkout with $args"
    [[ "$MSG" == "$named "* ]] || bad "checkout with $args: the message should start with '$named': '$MSG'"
    grep -q $'\r' <<<"$OUT" && bad "checkout with $args: the error holds a raw CR"
    grep -q '^X-Evil' <<<"$OUT" && bad "checkout with $args: the error holds a raw LF"
    n=$((n + 1))
done
eq "$(reqcount)" "$mark" "requests made"
verdict "checkout refuses $n Connect combinations Stripe refuses (a fee without a connected account, in the other mode, over two decimals; a destination or on_behalf_of with account; on_behalf_of not the destination; ids not acct_…), with 22023 naming the argument, before any request"

# portal and subscription changes on the account: its customer and
# subscription, looked up within it
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_create_portal_session('u_conn', 'https://app.example/account', account => '$CONN');"
noerr "portal on $CONN"
recs "$mark" /v1/
eq "$(jx 'r.map(x => x.method + " " + x.path + " " + x.status + " " + x.headers["stripe-account"]).join(",")')" \
   "POST /v1/billing_portal/sessions 200 $CONN" "requests sent"
same_lines "the portal form" "customer=cus_conn
return_url=https://app.example/account" "$(jx 'r.length ? pairs(r[0]) : ""')"
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_create_portal_session('u_conn', 'https://app.example/account');"
state_is P0002 "the platform's portal for u_conn (a customer on $CONN only)"
eq "$(reqcount)" "$mark" "requests made"
verdict "stripe_create_portal_session(..., account => acct_…) uses the user's customer on that account, with Stripe-Account; on the platform the user has none (P0002, no request)"

sub_conn=$(fk POST "/_fake/checkout/sessions/$cs_direct/complete" "{\"account\": \"$CONN\"}" 'r.session.subscription' 2>&1)
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_api('GET', '/v1/subscriptions/$sub_conn', account => '$CONN')->>'status';
SELECT s.account || ' ' || i.account || ' ' || i.price FROM stripe_billing.subscriptions s
  JOIN stripe_billing.subscription_items i ON i.subscription = s.id WHERE s.id = '$sub_conn';
SELECT i.id FROM stripe_billing.subscription_items i WHERE i.subscription = '$sub_conn';"
noerr "the account's subscription"
eq "$(rows | sed -n 2p)" "$CONN $CONN price_basic" "the local subscription and item (account, item account, price)"
item_conn=$(rows | sed -n 3p)
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_cancel_subscription('$sub_conn', account => '$CONN')->>'cancel_at_period_end';
SELECT cancel_at_period_end, account FROM stripe_billing.subscriptions WHERE id = '$sub_conn';
SELECT stripe_billing.stripe_resume_subscription('$sub_conn', account => '$CONN')->>'cancel_at_period_end';
SELECT stripe_billing.stripe_preview_price_change('$sub_conn', 'price_pro', account => '$CONN')->>'currency';
SELECT stripe_billing.stripe_change_price('$sub_conn', 'price_pro', 'none', account => '$CONN') IS NOT NULL;
SELECT price || ' ' || account FROM stripe_billing.subscription_items WHERE subscription = '$sub_conn' AND NOT deleted;
SELECT stripe_billing.stripe_cancel_subscription('$sub_conn', false, account => '$CONN')->>'status';
SELECT status || ' ' || account FROM stripe_billing.subscriptions WHERE id = '$sub_conn';"
noerr "subscription changes on $CONN"
eq "$(rows | paste -sd ' ')" "true t|$CONN false usd t price_pro $CONN canceled canceled $CONN" \
   "answers and local rows (cancel, row, resume, preview, change, item, cancel now, row)"
recs "$mark" /v1/
eq "$(SUB=$sub_conn jx 'r.map(x => x.method + " " + x.path.replace(env.SUB, "SUB") + " " + x.status + " " + x.headers["stripe-account"]).join(",")' | sed "s/ $CONN/ CONN/g")" \
   "POST /v1/subscriptions/SUB 200 CONN,POST /v1/subscriptions/SUB 200 CONN,POST /v1/invoices/create_preview 200 CONN,POST /v1/subscriptions/SUB 200 CONN,DELETE /v1/subscriptions/SUB 200 CONN" \
   "requests sent"
eq "$(jx 'r.length > 2 ? pairs(r[2]).filter(l => !/proration_date/.test(l)).join(",") : ""')" \
   "customer=cus_conn,subscription=$sub_conn,subscription_details[items][0][id]=$item_conn,subscription_details[items][0][price]=price_pro,subscription_details[proration_behavior]=create_prorations" \
   "the preview's form (the account's customer)"
same_lines "the change's form" "items[0][id]=$item_conn
items[0][price]=price_pro
proration_behavior=none" "$(jx 'r.length > 3 ? pairs(r[3]) : ""')"
verdict "cancel, resume, preview and change price on $CONN send its Stripe-Account, the subscription's item and customer looked up within it; the local rows stay $CONN's"
mark=$(reqcount)
sql "SELECT stripe_billing.stripe_change_price('$sub_conn', 'price_basic');"
state_is 22023 "a price change of $CONN's subscription on the platform"
[[ "$MSG" == "account must be the account of subscription $sub_conn, $CONN, not NULL"* ]] || bad "the message should name account: '$MSG'"
eq "$(reqcount)" "$mark" "requests made"
verdict "a price change of $CONN's subscription without its account is refused with 22023 naming account, before any request"

# bad accounts, header injection included: refused by every function that
# calls Stripe with 22023 naming account, before any request
mark=$(reqcount)
outbox=$(sql "SELECT count(*) FROM stripe_billing.usage_outbox;"; rows)
n=0
for acct in "'cus_1'" "'acct_'" "E'acct_x\\r\\nX-Evil: 1'" "'acct_../v1'"; do
    for call in "stripe_api('GET', '/v1/customers/cus_x', account => %s)" \
                "stripe_api('POST', '/v1/customers', '{}', account => %s)" \
                "stripe_create_checkout('u1', 'price_basic', 'https://app.example/ok', 'https://app.example/cancel', account => %s)" \
                "stripe_create_portal_session('u_conn', account => %s)" \
                "stripe_cancel_subscription('$sub_conn', account => %s)" \
                "stripe_resume_subscription('$sub_conn', account => %s)" \
                "stripe_preview_price_change('$sub_conn', 'price_basic', account => %s)" \
                "stripe_change_price('$sub_conn', 'price_basic', account => %s)" \
                "stripe_report_usage('u_conn', 'api_calls', 1, account => %s)" \
                "_list_page('/v1/customers', '{}', account => %s)" \
                "_list_prefetch('/v1/customers', '{}', account => %s)" \
                "_events_page('$newest', true, account => %s)"; do
        # shellcheck disable=SC2059
        sql "SELECT stripe_billing.$(printf "$call" "$acct");"
        state_is 22023 "$(printf "$call" "$acct")"
        [[ "$MSG" == "account must be a connected account's id (acct_ and letters or digits), not '"* ]] ||
            bad "$(printf "$call" "$acct"): the message should name account: '$MSG'"
        grep -q $'\r' <<<"$OUT" && bad "$(printf "$call" "$acct"): the error holds a raw CR"
        grep -q '^X-Evil' <<<"$OUT" && bad "$(printf "$call" "$acct"): the error holds a raw LF"
        n=$((n + 1))
    done
done
eq "$(reqcount)" "$mark" "requests reaching the fake"
sql "SELECT count(*) FROM stripe_billing.usage_outbox;"
eq "$(rows)" "$outbox" "usage rows"
verdict "$n calls with a bad account ('cus_1', 'acct_', CR LF header injection, 'acct_../v1') are refused with 22023 naming account, before any request or row"

# usage of three accounts (the platform's, $CONN's, $DEST's): each row goes
# with its account's header, for the user's customer on that account
for c in cus_uplat:platform cus_uconn:$CONN cus_udest:$DEST; do
    fk POST /_fake/objects "{\"account\": \"${c#*:}\", \"object\": {\"id\": \"${c%%:*}\", \"object\": \"customer\", \"metadata\": {\"user_ref\": \"u_two\"}}}" >/dev/null
done
sql "SELECT stripe_billing.stripe_api('GET', '/v1/customers/cus_uplat') IS NOT NULL;
SELECT stripe_billing.stripe_api('GET', '/v1/customers/cus_uconn', account => '$CONN') IS NOT NULL;
SELECT stripe_billing.stripe_api('GET', '/v1/customers/cus_udest', account => '$DEST') IS NOT NULL;"
noerr "the customers of u_two"
# usage_check API: reports five rows (two of $CONN's), sends them with
# usage_api = API, and compares each request with its rows
usage_check() {
    local mark
    sql "SELECT stripe_billing.stripe_report_usage('u_two', 'api_calls', 11);
SELECT stripe_billing.stripe_report_usage('u_two', 'api_calls', 12, account => '$CONN');
SELECT stripe_billing.stripe_report_usage('u_two', 'api_calls', 13, account => '$DEST');
SELECT stripe_billing.stripe_report_usage('u_two', 'api_calls', 14, account => '$CONN');
SELECT stripe_billing.stripe_report_usage('u_two', 'api_calls', 15);"
    noerr "stripe_report_usage on three accounts"
    local ids
    ids=$(rows | paste -sd ,)
    # what each row must be sent as: identifier, account, customer, value
    sql "SELECT 'sb_' || stripe_billing.stripe_installation_id() || '_' || o.id || ' ' || coalesce(o.account, 'none')
            || ' ' || c.id || ' ' || o.value
       FROM stripe_billing.usage_outbox o JOIN stripe_billing.customers c
         ON c.user_ref = o.user_ref AND c.account IS NOT DISTINCT FROM o.account
      WHERE o.id IN ($ids);"
    local expected
    expected=$(rows)
    mark=$(reqcount)
    sql "SET stripe_billing.usage_api = '$1';
SET stripe_billing.meter_events_base = '$BASE';
SELECT stripe_billing.stripe_send_usage();
SELECT count(*) FROM stripe_billing.usage_outbox WHERE id IN ($ids) AND sent_at IS NOT NULL;"
    noerr "stripe_send_usage ($1)"
    eq "$(rows | paste -sd ' ')" "5 5" "rows sent, rows marked sent ($1)"
    fk GET /_fake/requests '' "since(r, $mark)" >"$work/recs.json"
    if [ "$1" = v1 ]; then
        same_lines "the meter events sent, with their Stripe-Account ($1)" "$expected" \
            "$(jx 'r.filter(x => x.path === "/v1/billing/meter_events").map(x => { const f = new URLSearchParams(x.raw_body); return [f.get("identifier"), x.headers["stripe-account"] || "none", f.get("payload[stripe_customer_id]"), f.get("payload[value]")].join(" "); })')"
        eq "$(jx 'r.map(x => x.path).join(",")')" "$(printf '/v1/billing/meter_events,%.0s' 1 2 3 4 5 | sed 's/,$//')" "requests ($1)"
    else
        same_lines "the meter events sent, with their Stripe-Account ($1)" "$expected" \
            "$(jx 'r.filter(x => x.path === "/v2/billing/meter_event_stream").flatMap(x => x.json.events.map(e => [e.identifier, x.headers["stripe-account"] || "none", e.payload.stripe_customer_id, e.payload.value].join(" ")))')"
        # one session per account, each before its stream request, both with its header
        eq "$(jx 'r.map(x => x.path.replace("/v2/billing/", "") + " " + (x.headers["stripe-account"] || "none")).join(",")' |
              sed "s/$CONN/CONN/g; s/$DEST/DEST/g")" \
           "meter_event_session none,meter_event_stream none,meter_event_session CONN,meter_event_stream CONN,meter_event_session DEST,meter_event_stream DEST" \
           "requests ($1: the account of the oldest row first)"
    fi
}
usage_check v1
verdict "usage_api = 'v1': usage rows of three accounts are each sent with their account's Stripe-Account (none for the platform's) and the user's customer on that account"
usage_check v2
verdict "usage_api = 'v2': usage rows of three accounts go one account at a time, each with a meter event session of its own and its Stripe-Account on the session and the stream, for the user's customer on that account"

###########################################################################
# 11. No key
###########################################################################
mark=$(reqcount)
sql "SET stripe_billing.api_key = '';
SELECT stripe_billing.stripe_api('GET', '/v1/prices/price_basic');"
state_is SBC02 "no api key"
eq "$(reqcount)" "$mark" "requests made"
verdict "no api key configured fails with SBC02 before any request"

###########################################################################
# 12. Secrets
###########################################################################
recs 0 /v1/
eq "$(jx 'r.filter(x => x.method != "GET" && !x.idempotency_key).map(x => x.seq + " " + x.method + " " + x.path).join(", ")')" "" \
   "POST/DELETE requests without an Idempotency-Key"
eq "$(jx 'r.filter(x => x.method != "GET").length > 10')" true "POST/DELETE requests recorded"
verdict "every POST and DELETE sent carried an Idempotency-Key ($(jx 'r.filter(x => x.method != "GET").length') of them)"

no_key_in "$(cat "$client_log")" "what the client saw"
grep -qE 'SBA0[1-7]' "$client_log" || bad "no SBA error reached the client: the check would prove nothing"
verdict "the API key appears in no message a client saw ($(grep -c 'ERROR:' "$client_log") errors)"

# the whole log: once the server has stopped, every process has written its last line
cluster_stop "$work/pg" || bad "the cluster did not stop"
log=$work/pg/server.log
if grep -qF "$KEY_BODY" "$log"; then
    bad "server.log has the key: $(grep -F "$KEY_BODY" "$log" | head -3 | cut -c1-300)"
fi
for expect in 'stripe_create_checkout' 'Invalid API Key provided' 'Sorry, something went wrong' \
              'canceling statement due to user request' 'header "Authorization: Bearer ********' \
              'exceeds stripe_billing.max_response_size'; do
    grep -qF "$expect" "$log" || bad "server.log lacks '$expect': the check would prove nothing"
done
verdict "the API key is absent from the server log ($(wc -l <"$log") lines, log_statement = all, debug1)"

echo "$checks checks, $failed failed, $(($(date +%s) - started)) s"
[ "$failed" -eq 0 ] && [ "$checks" -ge 57 ]
