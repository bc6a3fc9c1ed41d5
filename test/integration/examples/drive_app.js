'use strict';
// Drives an example app (examples/node, examples/python) the way Stripe and
// a browser would, and checks every answer:
//   node test/integration/examples/drive_app.js BASE_URL WEBHOOK_SECRET FAKE_URL
// Webhooks are signed by the official stripe SDK and delivered shuffled,
// each valid one three times, with tampered copies (body changed after
// signing, another secret, no header, an old signature); then the gated
// page for each user, and Checkout. Prints one PASS/FAIL line per check
// and exits 0 only when all pass.
const crypto = require('crypto');
const Stripe = require('stripe');

const [base, secret, fakeUrl] = process.argv.slice(2);
const stripe = Stripe('sk_test_unused');
const now = Math.floor(Date.now() / 1000);
let failed = 0;
function verdict(ok, text, problems) {
  console.log(`${ok ? 'PASS' : 'FAIL'}: ${text}`);
  if (!ok) { failed += 1; for (const p of problems) console.log(`      - ${p}`); }
}

function subscription(user, status, created) {
  return {
    id: `evt_ex_${user}_${status}_${created}`, object: 'event', api_version: '2025-03-31.basil',
    type: status === 'canceled' ? 'customer.subscription.deleted' : 'customer.subscription.updated',
    created, livemode: false, pending_webhooks: 1, request: { id: null, idempotency_key: null },
    data: { object: {
      id: `sub_ex_${user}`, object: 'subscription', customer: `cus_ex_${user}`, status,
      cancel_at_period_end: false, created: now - 86400, metadata: { user_ref: user },
      items: { object: 'list', has_more: false, data: [{
        id: `si_ex_${user}`, object: 'subscription_item', quantity: 1,
        current_period_start: now - 86400, current_period_end: now + 29 * 86400,
        price: { id: 'price_reports', object: 'price', product: 'prod_reports', lookup_key: null } }] },
    } },
  };
}

async function post(path, body, headers) {
  const r = await fetch(base + path, { method: 'POST', body, headers });
  return { status: r.status, body: await r.text() };
}
async function get(path, headers) {
  const r = await fetch(base + path, { headers });
  return { status: r.status, body: await r.text() };
}

async function main() {
  // user_a: updated, then updated again (newer); user_b: active, then canceled
  const events = [subscription('user_a', 'active', now - 30), subscription('user_a', 'active', now - 20),
                  subscription('user_b', 'active', now - 30), subscription('user_b', 'canceled', now - 10)];
  const deliveries = [];
  for (const e of events) {
    const payload = JSON.stringify(e, null, 2);
    const header = stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp: now });
    for (let i = 0; i < 3; i++) deliveries.push({ id: e.id, payload, header, want: 'ok' });
    deliveries.push({ id: e.id, payload: payload.replace('"active"', '"trialing"').replace('"canceled"', '"active"'),
                      header, want: 400, kind: 'a body changed after signing' });
    deliveries.push({ id: e.id, payload, want: 400, kind: 'another secret',
                      header: stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_other', timestamp: now }) });
    deliveries.push({ id: e.id, payload, want: 400, kind: 'no signature header', header: null });
    deliveries.push({ id: e.id, payload, want: 400, kind: 'a signature an hour old',
                      header: stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp: now - 3600 }) });
  }
  for (let i = deliveries.length - 1; i > 0; i--) {   // shuffled
    const j = crypto.randomInt(i + 1);
    [deliveries[i], deliveries[j]] = [deliveries[j], deliveries[i]];
  }
  const problems = [];
  const outcomes = {};
  for (const d of deliveries) {
    const headers = { 'content-type': 'application/json' };
    if (d.header) headers['stripe-signature'] = d.header;
    const r = await post('/stripe/webhook', d.payload, headers);
    if (d.want === 'ok') {
      const outcome = r.status === 200 ? JSON.parse(r.body).outcome : null;
      if (!['applied', 'stale', 'duplicate'].includes(outcome)) problems.push(`${d.id}: HTTP ${r.status} ${r.body}`);
      (outcomes[d.id] = outcomes[d.id] || []).push(outcome);
    } else if (r.status !== d.want || r.body !== '{"error":"invalid webhook"}') {
      problems.push(`${d.id} with ${d.kind}: HTTP ${r.status} ${r.body}, expected ${d.want} {"error":"invalid webhook"}`);
    }
  }
  for (const [id, seen] of Object.entries(outcomes)) {
    const firsts = seen.filter((o) => o !== 'duplicate').length;
    if (firsts !== 1 || seen.length !== 3) problems.push(`${id}: outcomes ${seen.join(',')} (one applied or stale, two duplicates expected)`);
  }
  verdict(problems.length === 0,
    `${deliveries.length} webhook deliveries signed by the stripe SDK, shuffled: each valid one answered 200 and applied or stale once, duplicate after; every tampered, foreign, unsigned or old copy answered 400 with no detail`, problems);

  const access = {};
  for (const user of ['user_a', 'user_b', 'user_c']) {
    const r = await get('/reports', { 'x-user': user });
    access[user] = r.status === 200 ? JSON.parse(r.body).reports.length : `HTTP ${r.status}`;
  }
  const anonymous = await get('/reports', {});
  verdict(access.user_a === 3 && access.user_b === 0 && access.user_c === 0 && anonymous.status === 401,
    `the gated page through the app's own query layer: user_a (paying) sees ${access.user_a} reports, user_b (canceled, whatever the delivery order) ${access.user_b}, user_c (unknown) ${access.user_c}, no user ${anonymous.status}`,
    [JSON.stringify(access), `no user: ${anonymous.status}`]);

  const ok = await post('/checkout', JSON.stringify({ price: 'price_basic', trial_days: 14 }),
                        { 'content-type': 'application/json', 'x-user': 'user_c' });
  const session = ok.status === 200 ? JSON.parse(ok.body) : {};
  const bad = await post('/checkout', JSON.stringify({ price: 'price_basic', metadata: { 'a[b]': 'x' } }),
                         { 'content-type': 'application/json', 'x-user': 'user_c' });
  const unknown = await post('/checkout', JSON.stringify({ price: 'price_nope' }),
                             { 'content-type': 'application/json', 'x-user': 'user_c' });
  verdict(ok.status === 200 && String(session.url).startsWith(fakeUrl + '/pay/') && session.trial_granted === true &&
          bad.status === 400 && bad.body === '{"error":"invalid request"}' &&
          unknown.status === 400 && unknown.body === '{"error":"the payment provider refused the request"}',
    `Checkout: a session (${session.url}, trial granted); metadata Stripe would refuse answered 400 before any request; an unknown price answered 400 (Stripe's refusal), neither with internals`,
    [`ok: ${ok.status} ${ok.body}`, `bad: ${bad.status} ${bad.body}`, `unknown: ${unknown.status} ${unknown.body}`]);
  process.exit(failed ? 1 : 0);
}
main().catch((e) => { console.log(`FAIL: the driver: ${e.stack}`); process.exit(1); });
