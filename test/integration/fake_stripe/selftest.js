'use strict';
// Self test of the fake Stripe server: starts it as a child process on a
// random port and drives every feature over HTTP.
//
//   node --test test/integration/fake_stripe/selftest.js

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { performance } = require('node:perf_hooks');

const KEY = 'sk_test_fake';
const SERVER = path.join(__dirname, 'server.js');
const DAY = 86400;

let child;
let port;
let stdout = '';
let portFile;

function startServer() {
  portFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fake-stripe-')), 'port');
  child = spawn(process.execPath, [SERVER, '--port', '0', '--key', KEY, '--port-file', portFile], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`server exited early with ${code}`)));
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const m = /^listening (\d+)\n/.exec(stdout);
      if (m) resolve(Number(m[1]));
    });
  });
}

// One HTTP exchange. `form` is an object of already-bracketed keys or a raw
// string; `json` is a control API (or /v2) body; `raw` is {type, text}, a
// body sent as is. By default every call opens its own connection
// (agent: false) so connection counts stay predictable.
function call(method, urlPath, { form, json, raw, headers = {}, auth = KEY, agent = false, timeout } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    let body = null;
    if (form !== undefined) {
      body = typeof form === 'string' ? form : new URLSearchParams(Object.entries(form)).toString();
      h['Content-Type'] = 'application/x-www-form-urlencoded';
    }
    if (json !== undefined) {
      body = JSON.stringify(json);
      h['Content-Type'] = 'application/json';
    }
    if (raw !== undefined) {
      body = raw.text;
      if (raw.type) h['Content-Type'] = raw.type;
    }
    if (auth) h.Authorization = `Bearer ${auth}`;
    if (body !== null) h['Content-Length'] = Buffer.byteLength(body);
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, body: parsed });
      });
    });
    if (timeout) {
      req.setTimeout(timeout, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
    }
    req.on('error', reject);
    req.end(body === null ? undefined : body);
  });
}

const stripe = (method, urlPath, form, opts = {}) => call(method, urlPath, { form, ...opts });
const ctl = async (method, urlPath, json) => (await call(method, urlPath, { json, auth: null })).body;

async function storedEvents() {
  return ctl('GET', '/_fake/events');
}

async function reset() {
  const body = await ctl('POST', '/_fake/reset');
  assert.deepEqual(body, { reset: true });
}

async function createSession(form) {
  const res = await stripe('POST', '/v1/checkout/sessions', form);
  assert.equal(res.status, 200, res.text);
  return res.body;
}

// A completed subscription checkout; returns {session, subscription, events}.
async function subscribe({ price = 'price_basic', trialDays } = {}) {
  const form = {
    mode: 'subscription',
    customer_email: 'sub@example.com',
    'line_items[0][price]': price,
    'line_items[0][quantity]': '1',
  };
  if (trialDays) form['subscription_data[trial_period_days]'] = String(trialDays);
  const session = await createSession(form);
  const done = await ctl('POST', `/_fake/checkout/sessions/${session.id}/complete`, {});
  const subscription = (await stripe('GET', `/v1/subscriptions/${done.session.subscription}`)).body;
  return { session: done.session, subscription, events: done.events };
}

async function eventTypes(ids) {
  const all = await storedEvents();
  const byId = new Map(all.map((e) => [e.id, e]));
  return ids.map((id) => byId.get(id).type);
}

function assertStripeError(res, status, fields) {
  assert.equal(res.status, status, res.text);
  assert.equal(res.headers['content-type'], 'application/json');
  for (const [key, value] of Object.entries(fields)) assert.equal(res.body.error[key], value, `error.${key} in ${res.text}`);
}

before(async () => {
  port = await startServer();
});

after(() => {
  if (child.exitCode === null) child.kill('SIGTERM');
  fs.rmSync(path.dirname(portFile), { recursive: true, force: true });
});

test('startup prints one listening line and writes the port file', () => {
  assert.equal(stdout, `listening ${port}\n`);
  assert.equal(fs.readFileSync(portFile, 'utf8').trim(), String(port));
});

test('authentication', async () => {
  const missing = await stripe('GET', '/v1/prices/price_basic', undefined, { auth: null });
  assertStripeError(missing, 401, { type: 'invalid_request_error' });
  assert.match(missing.body.error.message, /did not provide an API key/);

  const wrongKey = 'sk_test_thisiswrong_9876';
  const wrong = await stripe('GET', '/v1/prices/price_basic', undefined, { auth: wrongKey });
  assertStripeError(wrong, 401, { type: 'invalid_request_error', code: 'api_key_invalid' });
  assert.match(wrong.body.error.message, /^Invalid API Key provided: sk_test_\*+9876$/);
  assert.ok(!wrong.text.includes(wrongKey));
  assert.match(wrong.headers['request-id'], /^req_\w+$/);

  const ok = await stripe('GET', '/v1/prices/price_basic');
  assert.equal(ok.status, 200);

  const records = await ctl('GET', '/_fake/requests?path=/v1/prices');
  assert.deepEqual(records.slice(-3).map((r) => r.status), [401, 401, 200]);
  assert.equal(records.at(-1).headers.authorization, 'Bearer <redacted>');
  assert.equal(records.at(-2).headers.authorization, 'Bearer <redacted>');
  assert.ok(!JSON.stringify(records).includes(KEY));
});

test('authentication: Basic auth with the key as user name, as curl -u key: sends', async () => {
  const basic = (user) => ({ auth: null, headers: { Authorization: `Basic ${Buffer.from(`${user}:`).toString('base64')}` } });
  assert.equal((await stripe('GET', '/v1/prices/price_basic', undefined, basic(KEY))).status, 200);
  const wrong = await stripe('GET', '/v1/prices/price_basic', undefined, basic('sk_test_thisiswrong_9876'));
  assertStripeError(wrong, 401, { code: 'api_key_invalid' });
  assert.match(wrong.body.error.message, /^Invalid API Key provided: sk_test_\*+9876$/);
  const [record] = (await ctl('GET', '/_fake/requests?path=/v1/prices')).slice(-1);
  assert.equal(record.headers.authorization, 'Bearer <redacted>');
});

test('unrecognized URLs answer 404 like Stripe', async () => {
  const res = await stripe('GET', '/v1/xyz');
  assertStripeError(res, 404, { type: 'invalid_request_error' });
  assert.match(res.body.error.message, /^Unrecognized request URL \(GET: \/v1\/xyz\)/);
  const wrongMethod = await stripe('PUT', '/v1/customers');
  assert.match(wrongMethod.body.error.message, /^Unrecognized request URL \(PUT: \/v1\/customers\)/);
});

test('nested form bodies are parsed and every request is recorded', async () => {
  await reset();
  const raw = 'mode=subscription&line_items[0][price]=price_basic&line_items[0][quantity]=2' +
    '&metadata[user_ref]=u1&subscription_data[trial_period_days]=7&expand[]=x&expand[]=y&success_url=' +
    encodeURIComponent('https://app.example/ok?s={CHECKOUT_SESSION_ID}');
  const res = await stripe('POST', '/v1/checkout/sessions', raw, {
    headers: { 'Stripe-Version': '2024-06-20', 'Idempotency-Key': 'form-1' },
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers['content-type'], 'application/json');
  await stripe('GET', '/v1/events?limit=5&created[gte]=1&types[]=a&types[]=b');

  const [post] = await ctl('GET', '/_fake/requests?path=/v1/checkout/sessions');
  assert.deepEqual(post.form, {
    mode: 'subscription',
    line_items: [{ price: 'price_basic', quantity: '2' }],
    metadata: { user_ref: 'u1' },
    subscription_data: { trial_period_days: '7' },
    expand: ['x', 'y'],
    success_url: 'https://app.example/ok?s={CHECKOUT_SESSION_ID}',
  });
  assert.equal(post.raw_body, raw);
  assert.equal(post.method, 'POST');
  assert.equal(post.idempotency_key, 'form-1');
  assert.equal(post.stripe_version, '2024-06-20');
  assert.equal(post.headers['stripe-version'], '2024-06-20');
  assert.equal(post.request_id, res.headers['request-id']);
  assert.equal(post.status, 200);
  assert.ok(Number.isInteger(post.connection_id));

  const [get] = await ctl('GET', '/_fake/requests?path=/v1/events');
  assert.deepEqual(get.query, { limit: '5', created: { gte: '1' }, types: ['a', 'b'] });
  assert.equal(get.stripe_version, '2025-03-31.basil');
  assert.deepEqual(get.form, {});

  assert.equal((await ctl('GET', '/_fake/requests')).length, 2);
  assert.deepEqual(await ctl('DELETE', '/_fake/requests'), { deleted: 2 });
  assert.deepEqual(await ctl('GET', '/_fake/requests'), []);
});

test('customers: create, retrieve, update, delete', async () => {
  await reset();
  const created = await stripe('POST', '/v1/customers', {
    email: 'a@example.com', name: 'Ann', 'metadata[user_ref]': 'u1', 'metadata[plan]': 'basic',
  });
  assert.equal(created.status, 200);
  const customer = created.body;
  assert.match(customer.id, /^cus_[A-Za-z0-9]+$/);
  assert.equal(customer.object, 'customer');
  assert.equal(customer.livemode, false);
  assert.equal(customer.email, 'a@example.com');
  assert.deepEqual(customer.metadata, { user_ref: 'u1', plan: 'basic' });
  assert.ok(Math.abs(customer.created - Date.now() / 1000) < 5);
  assert.ok('invoice_settings' in customer, 'fixture template keys are kept');

  assert.deepEqual((await stripe('GET', `/v1/customers/${customer.id}`)).body, customer);

  const updated = await stripe('POST', `/v1/customers/${customer.id}`, {
    email: 'b@example.com', 'metadata[plan]': '', 'metadata[team]': 't1',
  });
  assert.equal(updated.status, 200);
  assert.equal(updated.body.email, 'b@example.com');
  assert.equal(updated.body.name, 'Ann');
  assert.deepEqual(updated.body.metadata, { user_ref: 'u1', team: 't1' });

  const events = (await stripe('GET', '/v1/events?type=customer.*')).body.data;
  assert.deepEqual(events.map((e) => e.type), ['customer.updated', 'customer.created']);
  assert.deepEqual(events[0].data.previous_attributes, {
    email: 'a@example.com',
    metadata: { plan: 'basic', team: null },
  });
  assert.equal(events[0].request.id, updated.headers['request-id']);
  assert.equal(events[1].data.object.email, 'a@example.com', 'events keep the snapshot');

  const deleted = await stripe('DELETE', `/v1/customers/${customer.id}`);
  assert.deepEqual(deleted.body, { id: customer.id, object: 'customer', deleted: true });
  assert.deepEqual((await stripe('GET', `/v1/customers/${customer.id}`)).body, deleted.body);
  assertStripeError(await stripe('POST', `/v1/customers/${customer.id}`, { name: 'x' }), 404, { code: 'resource_missing' });
  assert.equal((await stripe('GET', '/v1/events?limit=1')).body.data[0].type, 'customer.deleted');

  const missing = await stripe('GET', '/v1/customers/cus_nope');
  assertStripeError(missing, 404, { code: 'resource_missing', param: 'id', message: "No such customer: 'cus_nope'" });
});

test('checkout sessions: validation errors have no side effects', async () => {
  await reset();
  const cases = [
    [{}, 'parameter_missing', 'mode'],
    [{ mode: 'bogus' }, 'parameter_invalid', 'mode'],
    [{ mode: 'subscription' }, 'parameter_missing', 'line_items'],
    [{ mode: 'subscription', 'line_items[0][price]': 'price_nope', 'line_items[0][quantity]': '1' }, 'resource_missing', 'line_items[0][price]'],
    [{ mode: 'subscription', 'line_items[0][price]': 'price_basic' }, 'parameter_missing', 'line_items[0][quantity]'],
    [{ mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': 'two' }, 'parameter_invalid', 'line_items[0][quantity]'],
    [{ mode: 'payment', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1' }, 'parameter_invalid', 'line_items[0][price]'],
    [{ mode: 'subscription', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1' }, 'parameter_invalid', 'line_items'],
    [{ mode: 'subscription', customer: 'cus_nope', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1' }, 'resource_missing', 'customer'],
    [{ mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1', 'subscription_data[trial_period_days]': '0' }, 'parameter_invalid', 'subscription_data[trial_period_days]'],
    [{ mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1', 'subscription_data[trial_period_days]': '3' }, 'parameter_invalid', 'subscription_data'],
  ];
  for (const [form, code, param] of cases) {
    const res = await stripe('POST', '/v1/checkout/sessions', form);
    assertStripeError(res, 400, { type: 'invalid_request_error', code, param });
  }
  const unknownPrice = await stripe('POST', '/v1/checkout/sessions', cases[3][0]);
  assert.equal(unknownPrice.body.error.message, "No such price: 'price_nope'");
  assert.deepEqual(await storedEvents(), []);
  assertStripeError(await stripe('GET', '/v1/checkout/sessions/cs_test_nope'), 404, { code: 'resource_missing', param: 'id' });
});

test('checkout sessions: create and retrieve', async () => {
  await reset();
  const session = await createSession({
    mode: 'subscription',
    'line_items[0][price]': 'price_basic',
    'line_items[0][quantity]': '2',
    client_reference_id: 'user-42',
    customer_email: 'c@example.com',
    'metadata[user_ref]': 'u42',
    allow_promotion_codes: 'true',
    success_url: 'https://app.example/ok',
    cancel_url: 'https://app.example/cancel',
  });
  assert.match(session.id, /^cs_test_[A-Za-z0-9]+$/);
  assert.equal(session.object, 'checkout.session');
  assert.equal(session.url, `http://127.0.0.1:${port}/pay/${session.id}`);
  assert.equal(session.status, 'open');
  assert.equal(session.payment_status, 'unpaid');
  assert.equal(session.expires_at, session.created + DAY);
  assert.equal(session.mode, 'subscription');
  assert.equal(session.amount_total, 2000);
  assert.equal(session.currency, 'usd');
  assert.equal(session.client_reference_id, 'user-42');
  assert.equal(session.customer_email, 'c@example.com');
  assert.equal(session.customer, null);
  assert.equal(session.allow_promotion_codes, true);
  assert.deepEqual(session.metadata, { user_ref: 'u42' });
  assert.equal(session.success_url, 'https://app.example/ok');
  assert.equal(session.livemode, false);
  assert.deepEqual((await stripe('GET', `/v1/checkout/sessions/${session.id}`)).body, session);

  const customer = (await stripe('POST', '/v1/customers', { email: 'd@example.com' })).body;
  const setup = await createSession({ mode: 'setup', customer: customer.id });
  assert.equal(setup.customer, customer.id);
  assert.equal(setup.payment_status, 'no_payment_required');
  const both = await stripe('POST', '/v1/checkout/sessions', { mode: 'setup', customer: customer.id, customer_email: 'x@example.com' });
  assertStripeError(both, 400, { param: 'customer_email' });
});

test('completing a subscription checkout with a trial', async () => {
  await reset();
  const session = await createSession({
    mode: 'subscription',
    customer_email: 'trial@example.com',
    'line_items[0][price]': 'price_pro',
    'line_items[0][quantity]': '1',
    'metadata[user_ref]': 'u7',
    'subscription_data[trial_period_days]': '7',
    'subscription_data[metadata][plan]': 'pro',
  });
  assert.equal(session.amount_total, 0, 'nothing due today during a trial');
  const done = await ctl('POST', `/_fake/checkout/sessions/${session.id}/complete`, {});
  assert.deepEqual(await eventTypes(done.events), [
    'customer.created',
    'customer.subscription.created',
    'invoice.created',
    'invoice.finalized',
    'invoice.paid',
    'invoice.payment_succeeded',
    'checkout.session.completed',
  ]);
  const { session: completed } = done;
  assert.equal(completed.status, 'complete');
  assert.equal(completed.payment_status, 'no_payment_required');
  assert.match(completed.customer, /^cus_/);
  assert.match(completed.subscription, /^sub_/);
  assert.match(completed.invoice, /^in_/);

  const customer = (await stripe('GET', `/v1/customers/${completed.customer}`)).body;
  assert.equal(customer.email, 'trial@example.com');
  assert.deepEqual(customer.metadata, { user_ref: 'u7' });

  const sub = (await stripe('GET', `/v1/subscriptions/${completed.subscription}`)).body;
  assert.equal(sub.status, 'trialing');
  assert.equal(sub.customer, customer.id);
  assert.deepEqual(sub.metadata, { plan: 'pro' });
  assert.ok(!('current_period_start' in sub) && !('current_period_end' in sub), 'basil shape');
  const [item] = sub.items.data;
  assert.match(item.id, /^si_/);
  assert.equal(item.price.id, 'price_pro');
  assert.equal(item.plan.id, 'price_pro');
  assert.equal(item.current_period_end - item.current_period_start, 7 * DAY);
  assert.equal(sub.trial_end, item.current_period_end);
  assert.equal(sub.latest_invoice, completed.invoice);

  const invoice = await ctl('GET', `/_fake/objects/${completed.invoice}`);
  assert.equal(invoice.status, 'paid');
  assert.equal(invoice.amount_paid, 0);
  assert.equal(invoice.billing_reason, 'subscription_create');
  assert.equal(invoice.parent.subscription_details.subscription, sub.id);

  // Stripe's burst: everything in one second, newest first in the list.
  const listed = (await stripe('GET', '/v1/events?limit=100')).body.data;
  assert.deepEqual(listed.map((e) => e.id), [...done.events].reverse());
  assert.equal(new Set(listed.map((e) => e.created)).size, 1);
  const completedEvent = listed[0];
  assert.equal(completedEvent.object, 'event');
  assert.equal(completedEvent.api_version, '2025-03-31.basil');
  assert.equal(completedEvent.livemode, false);
  assert.equal(completedEvent.pending_webhooks, 0);
  assert.deepEqual(completedEvent.request, { id: null, idempotency_key: null });
  assert.equal(completedEvent.data.object.id, session.id);
  const draft = listed.find((e) => e.type === 'invoice.created');
  assert.equal(draft.data.object.status, 'draft');

  const again = await call('POST', `/_fake/checkout/sessions/${session.id}/complete`, { json: {}, auth: null });
  assert.equal(again.status, 400);
});

test('completing a subscription checkout without a trial', async () => {
  await reset();
  const { session, subscription } = await subscribe();
  assert.equal(session.payment_status, 'paid');
  assert.equal(subscription.status, 'active');
  const [item] = subscription.items.data;
  const start = new Date(item.current_period_start * 1000);
  const end = new Date(item.current_period_end * 1000);
  assert.equal((end.getUTCMonth() - start.getUTCMonth() + 12) % 12, 1, 'a monthly period');
  const invoice = await ctl('GET', `/_fake/objects/${session.invoice}`);
  assert.equal(invoice.amount_paid, 1000);
  assert.equal(invoice.lines.data[0].description, '1 × Basic (at $10.00 / month)');
});

test('completing payment checkouts', async () => {
  await reset();
  const form = {
    mode: 'payment',
    customer_email: 'buyer@example.com',
    'line_items[0][price]': 'price_onetime',
    'line_items[0][quantity]': '2',
    'payment_intent_data[metadata][order]': 'o1',
  };
  const failing = await createSession(form);
  const failed = await ctl('POST', `/_fake/checkout/sessions/${failing.id}/complete`, { payment_failed: true });
  assert.equal(failed.session.status, 'open');
  assert.deepEqual(await eventTypes(failed.events), ['payment_intent.created', 'charge.failed', 'payment_intent.payment_failed']);

  const session = await createSession(form);
  assert.equal(session.amount_total, 5000);
  const done = await ctl('POST', `/_fake/checkout/sessions/${session.id}/complete`, {});
  assert.deepEqual(await eventTypes(done.events), [
    'customer.created',
    'payment_intent.created',
    'payment_intent.succeeded',
    'charge.succeeded',
    'checkout.session.completed',
  ]);
  assert.equal(done.session.payment_status, 'paid');
  const intent = await ctl('GET', `/_fake/objects/${done.session.payment_intent}`);
  assert.equal(intent.status, 'succeeded');
  assert.equal(intent.amount, 5000);
  assert.deepEqual(intent.metadata, { order: 'o1' });
  const charge = await ctl('GET', `/_fake/objects/${intent.latest_charge}`);
  assert.equal(charge.status, 'succeeded');
  assert.equal(charge.payment_intent, intent.id);
});

test('hosted pay page completes the session and redirects', async () => {
  await reset();
  const session = await createSession({
    mode: 'subscription',
    'line_items[0][price]': 'price_basic',
    'line_items[0][quantity]': '1',
    success_url: 'https://app.example/ok?session={CHECKOUT_SESSION_ID}',
  });
  const pageRes = await call('GET', `/pay/${session.id}`, { auth: null });
  assert.equal(pageRes.status, 200);
  assert.match(pageRes.text, /<form method="post">/);
  const paid = await call('POST', `/pay/${session.id}`, { auth: null });
  assert.equal(paid.status, 303);
  assert.equal(paid.headers.location, `https://app.example/ok?session=${session.id}`);
  assert.equal((await stripe('GET', `/v1/checkout/sessions/${session.id}`)).body.status, 'complete');
});

test('billing portal sessions', async () => {
  await reset();
  assertStripeError(await stripe('POST', '/v1/billing_portal/sessions', {}), 400, { code: 'parameter_missing', param: 'customer' });
  assertStripeError(await stripe('POST', '/v1/billing_portal/sessions', { customer: 'cus_nope' }), 400, { code: 'resource_missing', param: 'customer' });
  const customer = (await stripe('POST', '/v1/customers', { email: 'p@example.com' })).body;
  const res = await stripe('POST', '/v1/billing_portal/sessions', { customer: customer.id, return_url: 'https://app.example/account' });
  assert.equal(res.status, 200);
  assert.equal(res.body.object, 'billing_portal.session');
  assert.match(res.body.id, /^bps_/);
  assert.equal(res.body.customer, customer.id);
  assert.equal(res.body.return_url, 'https://app.example/account');
  assert.equal(res.body.url, `http://127.0.0.1:${port}/portal/${res.body.id}`);
  assert.equal((await call('GET', `/portal/${res.body.id}`, { auth: null })).status, 200);
});

test('subscription updates and cancellation', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const url = `/v1/subscriptions/${subscription.id}`;

  const cancelLater = await stripe('POST', url, { cancel_at_period_end: 'true' });
  assert.equal(cancelLater.status, 200);
  assert.equal(cancelLater.body.cancel_at_period_end, true);
  assert.equal(cancelLater.body.cancel_at, item.current_period_end);
  let [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.updated');
  assert.equal(event.data.previous_attributes.cancel_at_period_end, false);
  assert.equal(event.data.previous_attributes.cancel_at, null);
  assert.equal(event.request.id, cancelLater.headers['request-id']);

  const eventCount = (await storedEvents()).length;
  assertStripeError(await stripe('POST', url, { proration_behavior: 'sometimes' }), 400, { code: 'parameter_invalid', param: 'proration_behavior' });
  assertStripeError(await stripe('POST', url, { cancel_at_period_end: 'maybe' }), 400, { code: 'parameter_invalid', param: 'cancel_at_period_end' });
  assertStripeError(await stripe('POST', url, { 'items[0][id]': 'si_nope', 'items[0][price]': 'price_pro' }), 400, { code: 'resource_missing', param: 'items[0][id]' });
  assertStripeError(await stripe('POST', url, { 'items[0][id]': item.id, 'items[0][price]': 'price_nope' }), 400, { code: 'resource_missing', param: 'items[0][price]' });
  assert.equal((await storedEvents()).length, eventCount, 'rejected updates emit nothing');

  const upgrade = await stripe('POST', url, {
    'items[0][id]': item.id,
    'items[0][price]': 'price_pro',
    proration_behavior: 'always_invoice',
    cancel_at_period_end: 'false',
    'metadata[tier]': 'pro',
  });
  assert.equal(upgrade.status, 200, upgrade.text);
  assert.equal(upgrade.body.items.data[0].id, item.id);
  assert.equal(upgrade.body.items.data[0].price.id, 'price_pro');
  assert.equal(upgrade.body.items.data[0].plan.amount, 5000);
  assert.equal(upgrade.body.cancel_at_period_end, false);
  assert.deepEqual(upgrade.body.metadata, { tier: 'pro' });
  const newEvents = (await storedEvents()).slice(eventCount);
  assert.deepEqual(newEvents.map((e) => e.type), [
    'customer.subscription.updated', 'invoice.created', 'invoice.finalized', 'invoice.paid', 'invoice.payment_succeeded',
  ]);
  [event] = (await stripe('GET', `/v1/events?type=customer.subscription.updated&limit=1`)).body.data;
  assert.equal(event.data.previous_attributes.items.data[0].price.id, 'price_basic');
  assert.deepEqual(event.data.previous_attributes.metadata, { tier: null });

  for (const behavior of ['create_prorations', 'none']) {
    assert.equal((await stripe('POST', url, { proration_behavior: behavior })).status, 200);
  }

  const canceled = await stripe('DELETE', url);
  assert.equal(canceled.status, 200);
  assert.equal(canceled.body.status, 'canceled');
  assert.ok(canceled.body.canceled_at > 0);
  assert.ok(canceled.body.ended_at > 0);
  [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.deleted');
  assert.equal(event.data.object.status, 'canceled');
  assertStripeError(await stripe('DELETE', url), 404, { code: 'resource_missing' });
  assertStripeError(await stripe('POST', url, { cancel_at_period_end: 'true' }), 400, { type: 'invalid_request_error' });
  assertStripeError(await stripe('GET', '/v1/subscriptions/sub_nope'), 404, { code: 'resource_missing', param: 'id' });
});

test('control API advances subscriptions through renewals and dunning', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const advance = (body) => ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, body);

  const pastDue = await advance({ status: 'past_due', new_period: true });
  assert.deepEqual(await eventTypes(pastDue.events), [
    'invoice.created', 'invoice.finalized', 'invoice.payment_failed', 'customer.subscription.updated',
  ]);
  assert.equal(pastDue.subscription.status, 'past_due');
  const shifted = pastDue.subscription.items.data[0];
  assert.equal(shifted.current_period_start, item.current_period_end);
  assert.ok(shifted.current_period_end - shifted.current_period_start >= 28 * DAY);
  const openInvoice = await ctl('GET', `/_fake/objects/${pastDue.subscription.latest_invoice}`);
  assert.equal(openInvoice.status, 'open');
  assert.equal(openInvoice.billing_reason, 'subscription_cycle');

  const recovered = await advance({ status: 'active' });
  assert.deepEqual(await eventTypes(recovered.events), ['invoice.paid', 'invoice.payment_succeeded', 'customer.subscription.updated']);
  assert.equal((await ctl('GET', `/_fake/objects/${openInvoice.id}`)).status, 'paid');
  const [updated] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.deepEqual(updated.data.previous_attributes, { status: 'past_due' });

  const unpaid = await advance({ status: 'unpaid' });
  assert.deepEqual(await eventTypes(unpaid.events), ['customer.subscription.updated']);

  const ended = await advance({ status: 'canceled' });
  assert.deepEqual(await eventTypes(ended.events), ['customer.subscription.deleted']);
  assert.equal((await stripe('GET', `/v1/subscriptions/${subscription.id}`)).body.status, 'canceled');

  const bad = await call('POST', `/_fake/subscriptions/${subscription.id}/advance`, { json: { status: 'active' }, auth: null });
  assert.equal(bad.status, 400);
});

test('prices and products: defaults and seeding', async () => {
  await reset();
  const basic = (await stripe('GET', '/v1/prices/price_basic')).body;
  assert.equal(basic.object, 'price');
  assert.equal(basic.product, 'prod_basic');
  assert.equal(basic.lookup_key, 'basic');
  assert.equal(basic.unit_amount, 1000);
  assert.equal(basic.currency, 'usd');
  assert.equal(basic.type, 'recurring');
  assert.equal(basic.recurring.interval, 'month');
  const pro = (await stripe('GET', '/v1/prices/price_pro')).body;
  assert.deepEqual([pro.unit_amount, pro.lookup_key, pro.product], [5000, 'pro', 'prod_pro']);
  const once = (await stripe('GET', '/v1/prices/price_onetime')).body;
  assert.deepEqual([once.type, once.recurring, once.unit_amount], ['one_time', null, 2500]);
  const product = (await stripe('GET', '/v1/products/prod_basic')).body;
  assert.equal(product.object, 'product');
  assert.equal(product.name, 'Basic');
  assertStripeError(await stripe('GET', '/v1/prices/price_nope'), 404, { code: 'resource_missing', message: "No such price: 'price_nope'" });
  assertStripeError(await stripe('GET', '/v1/products/prod_nope'), 404, { code: 'resource_missing' });

  const seeded = await ctl('POST', '/_fake/objects', {
    objects: [
      { id: 'prod_team', object: 'product', name: 'Team' },
      { id: 'price_team', object: 'price', product: 'prod_team', unit_amount: 9900, recurring: { interval: 'year' } },
      { id: 'cus_seeded', object: 'customer', email: 'seed@example.com' },
    ],
  });
  assert.equal(seeded.objects.length, 3);
  const team = (await stripe('GET', '/v1/prices/price_team')).body;
  assert.deepEqual([team.type, team.recurring.interval, team.unit_amount_decimal], ['recurring', 'year', '9900']);
  assert.equal((await stripe('GET', '/v1/customers/cus_seeded')).body.email, 'seed@example.com');
  assert.equal((await ctl('GET', '/_fake/objects/price_team')).id, 'price_team');
  assert.equal((await call('GET', '/_fake/objects/nope', { auth: null })).status, 404);
  assert.equal((await call('POST', '/_fake/objects', { json: { object: { object: 'price' } }, auth: null })).status, 400);

  const session = await createSession({
    mode: 'subscription', customer: 'cus_seeded', 'line_items[0][price]': 'price_team', 'line_items[0][quantity]': '1',
  });
  const done = await ctl('POST', `/_fake/checkout/sessions/${session.id}/complete`, {});
  assert.equal(done.session.customer, 'cus_seeded');
  assert.equal((await eventTypes(done.events))[0], 'customer.subscription.created', 'no customer.created for an existing customer');
});

test('billing meter events', async () => {
  await reset();
  const form = {
    event_name: 'api_request',
    'payload[stripe_customer_id]': 'cus_meter',
    'payload[value]': '3',
    identifier: 'usage-1',
  };
  const res = await stripe('POST', '/v1/billing/meter_events', form);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.body.object, 'billing.meter_event');
  assert.equal(res.body.event_name, 'api_request');
  assert.equal(res.body.identifier, 'usage-1');
  assert.deepEqual(res.body.payload, { stripe_customer_id: 'cus_meter', value: '3' });
  assert.ok(Math.abs(res.body.timestamp - Date.now() / 1000) < 5);

  const dup = await stripe('POST', '/v1/billing/meter_events', form);
  assertStripeError(dup, 400, { type: 'invalid_request_error', code: 'resource_already_exists', param: 'identifier' });
  assert.match(dup.body.error.message, /An event already exists with identifier usage-1/);

  assertStripeError(await stripe('POST', '/v1/billing/meter_events', { 'payload[value]': '1' }), 400, { code: 'parameter_missing', param: 'event_name' });
  assertStripeError(await stripe('POST', '/v1/billing/meter_events', { event_name: 'e', 'payload[stripe_customer_id]': 'cus_1' }), 400, { code: 'parameter_missing', param: 'payload[value]' });
  assertStripeError(await stripe('POST', '/v1/billing/meter_events', { ...form, identifier: 'old', timestamp: '1000' }), 400, { code: 'parameter_invalid', param: 'timestamp' });

  const { identifier, ...anonymous } = form;
  const generated = await stripe('POST', '/v1/billing/meter_events', { ...anonymous, timestamp: String(Math.floor(Date.now() / 1000) - 60) });
  assert.equal(generated.status, 200);
  assert.ok(generated.body.identifier && generated.body.identifier !== identifier);
  assert.equal((await ctl('GET', '/_fake/meter_events')).length, 2);
});

test('active entitlements list', async () => {
  await reset();
  const ent = (id, customer, lookup) => ({ id, object: 'entitlements.active_entitlement', customer, feature: `feat_${lookup}`, lookup_key: lookup });
  await ctl('POST', '/_fake/objects', {
    objects: [ent('ent_1', 'cus_A', 'a'), ent('ent_2', 'cus_A', 'b'), ent('ent_3', 'cus_B', 'c'), ent('ent_4', 'cus_A', 'd')],
  });
  const first = await stripe('GET', '/v1/entitlements/active_entitlements?customer=cus_A&limit=2');
  assert.equal(first.status, 200);
  assert.equal(first.body.object, 'list');
  assert.equal(first.body.url, '/v1/entitlements/active_entitlements');
  assert.equal(first.body.has_more, true);
  assert.deepEqual(first.body.data.map((e) => e.lookup_key), ['d', 'b']);
  assert.deepEqual(Object.keys(first.body.data[0]).sort(), ['feature', 'id', 'livemode', 'lookup_key', 'object']);
  const second = await stripe('GET', `/v1/entitlements/active_entitlements?customer=cus_A&limit=2&starting_after=${first.body.data[1].id}`);
  assert.deepEqual(second.body.data.map((e) => e.lookup_key), ['a']);
  assert.equal(second.body.has_more, false);
  const none = await stripe('GET', '/v1/entitlements/active_entitlements?customer=cus_none');
  assert.deepEqual([none.body.data, none.body.has_more], [[], false]);
  assertStripeError(await stripe('GET', '/v1/entitlements/active_entitlements'), 400, { code: 'parameter_missing', param: 'customer' });
  assertStripeError(await stripe('GET', '/v1/entitlements/active_entitlements?customer=cus_A&starting_after=ent_3'), 404, { param: 'starting_after' });
});

test('events list: pagination, filters and errors', async () => {
  await reset();
  const start = 1700000000;
  const gen = await ctl('POST', '/_fake/events', { generate: { count: 1000, customers: 20, start_created: start, per_second: 5 } });
  assert.equal(gen.appended, 1000);
  const stored = await storedEvents();
  assert.equal(stored.length, 1000);
  assert.equal(stored[0].id, gen.first_id);
  assert.equal(stored[999].id, gen.last_id);
  assert.equal(stored[0].type, 'customer.created');
  assert.equal(stored[999].created, start + 199, 'five events per second');
  const types = new Set(stored.map((e) => e.type));
  for (const t of ['customer.created', 'customer.updated', 'customer.subscription.created', 'customer.subscription.updated', 'invoice.paid']) {
    assert.ok(types.has(t), `generated a ${t}`);
  }
  const ids = stored.map((e) => e.id);
  const list = async (query) => (await stripe('GET', `/v1/events?${query}`)).body;

  // Default page: the 10 newest.
  const firstPage = await list('');
  assert.equal(firstPage.object, 'list');
  assert.equal(firstPage.url, '/v1/events');
  assert.equal(firstPage.has_more, true);
  assert.deepEqual(firstPage.data.map((e) => e.id), ids.slice(-10).reverse());

  // Walking back with starting_after visits every event once, newest first,
  // although five events share each created second.
  const walked = [];
  let cursor = null;
  for (;;) {
    const page = await list(`limit=100${cursor ? `&starting_after=${cursor}` : ''}`);
    walked.push(...page.data.map((e) => e.id));
    if (!page.has_more) break;
    cursor = page.data.at(-1).id;
  }
  assert.deepEqual(walked, [...ids].reverse());

  // ending_before returns the events right above the cursor, newest first.
  const above = await list(`limit=3&ending_before=${ids[10]}`);
  assert.deepEqual(above.data.map((e) => e.id), [ids[13], ids[12], ids[11]]);
  assert.equal(above.has_more, true);
  const forward = [];
  cursor = ids[0];
  for (;;) {
    const page = await list(`limit=100&ending_before=${cursor}`);
    forward.push(...[...page.data].reverse().map((e) => e.id));
    if (!page.has_more) break;
    cursor = page.data[0].id;
  }
  assert.deepEqual(forward, ids.slice(1));
  const top = await list(`ending_before=${ids[999]}`);
  assert.deepEqual([top.data, top.has_more], [[], false]);

  // created filters (inclusive and exclusive bounds).
  const inWindow = stored.filter((e) => e.created >= start + 10 && e.created < start + 20).map((e) => e.id);
  const windowed = await list(`limit=100&created[gte]=${start + 10}&created[lt]=${start + 20}`);
  assert.deepEqual(windowed.data.map((e) => e.id), inWindow.reverse());
  assert.equal(windowed.data.length, 50);
  const open = await list(`limit=100&created[gt]=${start + 10}&created[lte]=${start + 11}`);
  assert.equal(open.data.length, 5);
  assert.ok(open.data.every((e) => e.created === start + 11));
  const exact = await list(`limit=100&created=${start}`);
  assert.equal(exact.data.length, 5);

  // type, wildcard type and types[]: the newest 100 of those types.
  const newest = (keep) => stored.filter(keep).slice(-100).reverse().map((e) => e.id);
  const pageIds = async (query) => (await list(query)).data.map((e) => e.id);
  assert.deepEqual(await pageIds('limit=100&type=invoice.paid'), newest((e) => e.type === 'invoice.paid'));
  assert.deepEqual(await pageIds('limit=100&type=customer.subscription.*'),
    newest((e) => e.type.startsWith('customer.subscription.')));
  const earlyTypes = await pageIds(`limit=100&types[]=customer.created&types[]=invoice.paid&created[lt]=${start + 20}`);
  assert.deepEqual(earlyTypes,
    newest((e) => ['customer.created', 'invoice.paid'].includes(e.type) && e.created < start + 20));
  assert.ok(earlyTypes.length > 0);
  // A cursor of another type still positions the page.
  const k = stored.findLastIndex((e) => e.type !== 'invoice.paid');
  const afterOther = await list(`limit=1&type=invoice.paid&starting_after=${ids[k]}`);
  assert.equal(afterOther.data[0].id, stored.slice(0, k).findLast((e) => e.type === 'invoice.paid').id);

  // Errors.
  for (const bad of ['limit=0', 'limit=101', 'limit=abc']) {
    assertStripeError(await stripe('GET', `/v1/events?${bad}`), 400, { code: 'parameter_invalid', param: 'limit' });
  }
  assert.equal((await list('limit=100')).data.length, 100);
  assertStripeError(await stripe('GET', '/v1/events?starting_after=evt_nope'), 404, { code: 'resource_missing', param: 'starting_after' });
  assertStripeError(await stripe('GET', '/v1/events?ending_before=evt_nope'), 404, { code: 'resource_missing', param: 'ending_before' });
  assertStripeError(await stripe('GET', `/v1/events?starting_after=${ids[5]}&ending_before=${ids[1]}`), 400, {});
  assertStripeError(await stripe('GET', '/v1/events?type=a&types[]=b'), 400, { param: 'types' });

  // Single event.
  const one = await stripe('GET', `/v1/events/${ids[500]}`);
  assert.equal(one.body.id, ids[500]);
  assert.equal(one.body.object, 'event');
  assert.ok(one.body.data.object.id);
  assertStripeError(await stripe('GET', '/v1/events/evt_nope'), 404, { code: 'resource_missing', param: 'id' });
});

test('events can be appended as given', async () => {
  await reset();
  const fixture = {
    id: 'evt_given_1',
    object: 'event',
    created: 1619706820,
    data: { object: { id: 'sub_given', object: 'subscription' }, previous_attributes: { status: 'trialing' } },
    type: 'customer.subscription.updated',
  };
  const res = await ctl('POST', '/_fake/events', { events: [fixture, { type: 'ping', data: { object: {} } }] });
  assert.equal(res.appended, 2);
  assert.equal(res.first_id, 'evt_given_1');
  assert.match(res.last_id, /^evt_/);
  const given = (await stripe('GET', '/v1/events/evt_given_1')).body;
  assert.equal(given.created, 1619706820);
  assert.equal(given.api_version, '2025-03-31.basil');
  assert.equal(given.livemode, false);
  assert.deepEqual(given.data, fixture.data);

  const dup = await call('POST', '/_fake/events', { json: { events: [{ ...fixture, id: 'evt_new' }, fixture] }, auth: null });
  assert.equal(dup.status, 400);
  assert.equal((await storedEvents()).length, 2, 'a rejected batch appends nothing');
  // Insertion order rules, not created: the older `created` comes out first.
  assert.deepEqual((await stripe('GET', '/v1/events')).body.data.map((e) => e.id), [res.last_id, 'evt_given_1']);
});

test('idempotent requests replay without side effects', async () => {
  await reset();
  const headers = { 'Idempotency-Key': 'idem-1' };
  const first = await stripe('POST', '/v1/customers', { email: 'i@example.com' }, { headers });
  assert.equal(first.status, 200);
  assert.equal(first.headers['idempotent-replayed'], undefined);
  const replay = await stripe('POST', '/v1/customers', { email: 'i@example.com' }, { headers });
  assert.equal(replay.status, 200);
  assert.equal(replay.text, first.text);
  assert.equal(replay.headers['idempotent-replayed'], 'true');
  assert.equal((await storedEvents()).length, 1, 'one customer.created only');

  const mismatch = await stripe('POST', '/v1/customers', { email: 'other@example.com' }, { headers });
  assertStripeError(mismatch, 400, { type: 'idempotency_error' });
  assert.match(mismatch.body.error.message, /^Keys for idempotent requests can only be used with the same parameters/);
  const otherPath = await stripe('POST', `/v1/customers/${first.body.id}`, { email: 'i@example.com' }, { headers });
  assertStripeError(otherPath, 400, { type: 'idempotency_error' });

  // Validation failures are not saved, so the key can be used again.
  const invalid = await stripe('POST', '/v1/billing_portal/sessions', {}, { headers: { 'Idempotency-Key': 'idem-2' } });
  assert.equal(invalid.status, 400);
  const valid = await stripe('POST', '/v1/billing_portal/sessions', { customer: first.body.id }, { headers: { 'Idempotency-Key': 'idem-2' } });
  assert.equal(valid.status, 200);

  // A replayed meter event is not a duplicate identifier.
  const meter = { event_name: 'e', 'payload[stripe_customer_id]': 'cus_1', 'payload[value]': '1', identifier: 'm-1' };
  const m1 = await stripe('POST', '/v1/billing/meter_events', meter, { headers: { 'Idempotency-Key': 'idem-3' } });
  const m2 = await stripe('POST', '/v1/billing/meter_events', meter, { headers: { 'Idempotency-Key': 'idem-3' } });
  assert.deepEqual([m1.status, m2.status, m2.text], [200, 200, m1.text]);

  // DELETE is idempotent too; GET ignores the header.
  const del1 = await stripe('DELETE', `/v1/customers/${first.body.id}`, undefined, { headers: { 'Idempotency-Key': 'idem-4' } });
  const del2 = await stripe('DELETE', `/v1/customers/${first.body.id}`, undefined, { headers: { 'Idempotency-Key': 'idem-4' } });
  assert.deepEqual([del1.status, del2.status, del2.headers['idempotent-replayed']], [200, 200, 'true']);
  const get = await stripe('GET', '/v1/prices/price_basic', undefined, { headers: { 'Idempotency-Key': 'idem-1' } });
  assert.equal(get.status, 200);
});

test('faults: error statuses, counts, methods and rates', async () => {
  await reset();
  const set = await ctl('POST', '/_fake/faults', {
    rules: [{ kind: '429', path: '/v1/customers', method: 'POST', count: 2, retry_after: 3, should_retry: true }],
  });
  assert.equal(set.rules[0].remaining, 2);
  for (let i = 0; i < 2; i++) {
    const limited = await stripe('POST', '/v1/customers', { email: 'f@example.com' });
    assertStripeError(limited, 429, { type: 'invalid_request_error', code: 'rate_limit' });
    assert.equal(limited.headers['retry-after'], '3');
    assert.equal(limited.headers['stripe-should-retry'], 'true');
  }
  assert.equal((await stripe('GET', '/v1/customers/cus_x')).status, 404, 'GET does not match a POST rule');
  assert.equal((await stripe('POST', '/v1/customers', { email: 'f@example.com' })).status, 200);
  const statuses = (await ctl('GET', '/_fake/requests?path=/v1/customers')).map((r) => r.status);
  assert.deepEqual(statuses, ['429', '429', 404, 200]);
  assert.equal((await storedEvents()).length, 1, 'faulted requests had no side effects');

  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', should_retry: false }, { kind: '503', count: 1 }, { kind: '401' }] });
  const e500 = await stripe('GET', '/v1/prices/price_basic');
  assertStripeError(e500, 500, { type: 'api_error' });
  assert.equal(e500.headers['stripe-should-retry'], 'false');
  assertStripeError(await stripe('GET', '/v1/prices/price_basic'), 503, { type: 'api_error' });
  assertStripeError(await stripe('GET', '/v1/prices/price_basic'), 401, { code: 'api_key_invalid' });
  assert.equal((await stripe('GET', '/v1/prices/price_basic')).status, 200, 'all counts used up');

  // A seeded rate rule faults the same requests every time.
  const pattern = async () => {
    await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', path: '/v1/prices', rate: 0.5, seed: 42 }] });
    const out = [];
    for (let i = 0; i < 20; i++) out.push((await stripe('GET', '/v1/prices/price_basic')).status);
    return out;
  };
  const a = await pattern();
  const b = await pattern();
  assert.deepEqual(a, b);
  assert.ok(a.includes(500) && a.includes(200), `mixed outcomes: ${a}`);

  assert.deepEqual(await ctl('DELETE', '/_fake/faults'), { rules: [] });
  assert.deepEqual(await ctl('GET', '/_fake/faults'), { rules: [] });
  const bad = await call('POST', '/_fake/faults', { json: { rules: [{ kind: 'explode' }] }, auth: null });
  assert.equal(bad.status, 400);
});

// Resolves with what a client saw of a response that may break off.
function exchange(urlPath, timeout) {
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1', port, path: urlPath, agent: false, headers: { Authorization: `Bearer ${KEY}` },
    }, (res) => {
      let received = 0;
      res.on('data', (c) => { received += c.length; });
      res.on('error', () => {});
      res.on('close', () => resolve({ status: res.statusCode, headers: res.headers, received, complete: res.complete }));
    });
    if (timeout) req.setTimeout(timeout, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
    req.on('error', (error) => resolve({ error }));
    req.end();
  });
}

test('faults: hang, truncate and reset break the connection', async () => {
  await reset();
  await ctl('POST', '/_fake/faults', {
    rules: [
      { kind: 'hang', path: '/v1/prices/price_basic' },
      { kind: 'truncate', path: '/v1/prices/price_pro' },
      { kind: 'reset', path: '/v1/prices/price_onetime' },
    ],
  });
  const hung = await exchange('/v1/prices/price_basic', 300);
  assert.equal(hung.error.code, 'CLIENT_TIMEOUT');

  const cut = await exchange('/v1/prices/price_pro');
  assert.equal(cut.status, 200);
  assert.equal(cut.complete, false);
  assert.ok(cut.received > 0 && cut.received < Number(cut.headers['content-length']));

  const dropped = await exchange('/v1/prices/price_onetime');
  assert.equal(dropped.error.code, 'ECONNRESET');

  const recorded = (await ctl('GET', '/_fake/requests?path=/v1/prices')).map((r) => [r.path, r.status]);
  assert.deepEqual(recorded, [
    ['/v1/prices/price_basic', 'hang'],
    ['/v1/prices/price_pro', 'truncate'],
    ['/v1/prices/price_onetime', 'reset'],
  ]);
  assert.equal((await stripe('GET', '/v1/prices/price_basic')).status, 200, 'each rule fired once');
});

test('faults: html, half_json, huge and echo_auth answer 200 or 400 with a body a client must refuse', async () => {
  await reset();
  await ctl('POST', '/_fake/faults', {
    rules: [
      { kind: 'html', path: '/v1/prices/price_basic' },
      { kind: 'half_json', path: '/v1/prices/price_pro' },
      { kind: 'huge', path: '/v1/prices/price_onetime', bytes: 300000 },
      { kind: 'echo_auth', path: '/v1/customers' },
      { kind: 'huge', path: '/v1/products', bytes: 200000, chunked: true },
    ],
  });
  const html = await stripe('GET', '/v1/prices/price_basic');
  assert.equal(html.status, 200);
  assert.match(html.headers['content-type'], /^text\/html/);
  assert.match(html.text, /^<!DOCTYPE html>/);
  assert.equal(html.body, undefined, 'not JSON');

  const half = await stripe('GET', '/v1/prices/price_pro');
  assert.equal(half.status, 200);
  assert.equal(Number(half.headers['content-length']), Buffer.byteLength(half.text), 'a complete HTTP message');
  assert.equal(half.body, undefined, 'its JSON is cut short');

  const huge = await stripe('GET', '/v1/prices/price_onetime');
  assert.equal(huge.status, 200);
  assert.equal(Buffer.byteLength(huge.text), 300000);
  assert.deepEqual([huge.body.object, huge.body.data, huge.body.has_more], ['list', [], false]);

  const echoed = await stripe('GET', '/v1/customers/cus_x');
  assertStripeError(echoed, 400, { type: 'invalid_request_error', code: 'header_rejected' });
  assert.ok(echoed.body.error.message.includes(`Authorization: Bearer ${KEY}`), 'the message quotes the key');
  assert.equal(echoed.body.error.param, `Authorization: Bearer ${KEY}`);

  const chunked = await stripe('GET', '/v1/products/prod_basic');
  assert.equal(chunked.status, 200);
  assert.equal(chunked.headers['content-length'], undefined);
  assert.equal(chunked.headers['transfer-encoding'], 'chunked');
  assert.equal(Buffer.byteLength(chunked.text), 200000);
  assert.equal(chunked.body.object, 'list');

  const recorded = (await ctl('GET', '/_fake/requests')).map((r) => [r.path, r.status]);
  assert.deepEqual(recorded, [
    ['/v1/prices/price_basic', 'html'],
    ['/v1/prices/price_pro', 'half_json'],
    ['/v1/prices/price_onetime', 'huge'],
    ['/v1/customers/cus_x', 'echo_auth'],
    ['/v1/products/prod_basic', 'huge'],
  ]);
  assert.equal((await stripe('GET', '/v1/prices/price_onetime')).status, 200, 'each rule fired once');
  for (const bytes of [10, 1.5, 'x']) {
    const bad = await call('POST', '/_fake/faults', { json: { rules: [{ kind: 'huge', bytes }] }, auth: null });
    assert.equal(bad.status, 400, `bytes ${bytes} refused`);
  }
  for (const stray of [{ kind: 'html', bytes: 1000 }, { kind: '500', chunked: true }]) {
    const res = await call('POST', '/_fake/faults', { json: { rules: [stray] }, auth: null });
    assert.equal(res.status, 400, `${JSON.stringify(stray)}: bytes and chunked only with huge`);
  }
});

test('keep-alive connections are reused and counted', async () => {
  await reset();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let i = 0; i < 5; i++) assert.equal((await stripe('GET', '/v1/prices/price_basic', undefined, { agent })).status, 200);
    const { body: stats } = await call('GET', '/_fake/stats', { agent, auth: null });
    assert.deepEqual(stats, { connections_opened: 1, requests: 5, rate_limited: 0 });
    const connections = new Set((await ctl('GET', '/_fake/requests')).map((r) => r.connection_id));
    assert.equal(connections.size, 1);
  } finally {
    agent.destroy();
  }
  for (let i = 0; i < 3; i++) await stripe('GET', '/v1/prices/price_basic');
  const after3 = await ctl('GET', '/_fake/stats');
  // 1 keep-alive + 3 one-off requests + 1 for the earlier /_fake/requests call + 1 for this call.
  assert.equal(after3.connections_opened, 6);
  assert.equal(after3.requests, 8);
});

test('reset restores the seeded defaults', async () => {
  const customer = (await stripe('POST', '/v1/customers', { email: 'r@example.com' }, { headers: { 'Idempotency-Key': 'r-1' } })).body;
  await ctl('POST', '/_fake/objects', { object: { id: 'price_basic', object: 'price', unit_amount: 1 } });
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', path: '/v1/nothing' }] });
  await reset();
  assertStripeError(await stripe('GET', `/v1/customers/${customer.id}`), 404, { code: 'resource_missing' });
  assert.equal((await stripe('GET', '/v1/prices/price_basic')).body.unit_amount, 1000);
  assert.deepEqual(await storedEvents(), []);
  assert.deepEqual(await ctl('GET', '/_fake/faults'), { rules: [] });
  const reused = await stripe('POST', '/v1/customers', { email: 'different@example.com' }, { headers: { 'Idempotency-Key': 'r-1' } });
  assert.equal(reused.status, 200, 'idempotency keys are forgotten');
  const requests = await ctl('GET', '/_fake/requests');
  assert.deepEqual(requests.map((r) => r.seq), [1, 2, 3]);
});

test('faults: empty_has_more answers a list page with no items that says more wait', async () => {
  await reset();
  await ctl('POST', '/_fake/faults', { rules: [{ kind: 'empty_has_more', path: '/v1/events' }] });
  const page = await stripe('GET', '/v1/events?limit=100');
  assert.equal(page.status, 200);
  assert.deepEqual([page.body.object, page.body.data, page.body.has_more], ['list', [], true]);
  assert.equal((await stripe('GET', '/v1/events?limit=100')).body.has_more, false, 'the rule fired once');
});

test('events: a batch given "before" an event is listed late, behind it', async () => {
  await reset();
  const first = await ctl('POST', '/_fake/events', { events: [{ type: 'customer.updated', data: { object: { id: 'cus_a', object: 'customer' } } }] });
  const second = await ctl('POST', '/_fake/events', { events: [{ type: 'customer.updated', data: { object: { id: 'cus_b', object: 'customer' } } }] });
  const late = await ctl('POST', '/_fake/events', {
    before: second.first_id,
    events: [{ id: 'evt_late', type: 'customer.updated', data: { object: { id: 'cus_c', object: 'customer' } } }],
  });
  assert.equal(late.first_id, 'evt_late');
  const ids = (await ctl('GET', '/_fake/events')).map((e) => e.id);
  assert.deepEqual(ids.slice(-3), [first.first_id, 'evt_late', second.first_id]);
  // a cursor past its position never sees it; a created filter does
  const after = await stripe('GET', `/v1/events?ending_before=${second.first_id}`);
  assert.deepEqual(after.body.data, []);
  const all = await stripe('GET', '/v1/events?limit=100&created[gte]=0');
  assert.ok(all.body.data.some((e) => e.id === 'evt_late'));
  const unknown = await call('POST', '/_fake/events', { json: { before: 'evt_nope', events: [{ type: 'x', data: {} }] }, auth: null });
  assert.equal(unknown.status, 400);
});

// ---- lists, seeded accounts, rate limit, expiring events ----

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Every object of a list, page by page with starting_after.
async function listAll(urlPath, { limit = 100, agent, headers } = {}) {
  const sep = urlPath.includes('?') ? '&' : '?';
  const objects = [];
  let pages = 0;
  let cursor = null;
  for (;;) {
    const after = cursor ? `&starting_after=${cursor}` : '';
    const res = await stripe('GET', `${urlPath}${sep}limit=${limit}${after}`, undefined, { agent, headers });
    assert.equal(res.status, 200, res.text);
    pages += 1;
    objects.push(...res.body.data);
    if (!res.body.has_more) return { objects, ids: objects.map((o) => o.id), pages, url: res.body.url };
    cursor = res.body.data.at(-1).id;
  }
}

const pageIds = (res) => res.body.data.map((o) => o.id);

test('lists: customers newest first, email filter, deleted ones left out, cursors checked', async () => {
  await reset();
  const made = [];
  for (let i = 0; i < 5; i++) made.push((await stripe('POST', '/v1/customers', { email: `c${i}@example.com` })).body);
  await stripe('DELETE', `/v1/customers/${made[1].id}`);
  made.push((await stripe('POST', '/v1/customers', { email: 'c0@example.com' })).body);
  const id = (...n) => n.map((i) => made[i].id);

  const first = await stripe('GET', '/v1/customers?limit=2');
  assert.deepEqual([first.body.object, first.body.url, first.body.has_more], ['list', '/v1/customers', true]);
  assert.deepEqual(pageIds(first), id(5, 4));
  const all = await listAll('/v1/customers', { limit: 2 });
  assert.deepEqual(all.ids, id(5, 4, 3, 2, 0), 'each once, newest first, the deleted one left out');
  assert.equal(all.pages, 3);
  assert.equal((await listAll('/v1/customers')).ids.length, 5, 'default page holds them all');
  const newer = await stripe('GET', `/v1/customers?limit=2&ending_before=${made[2].id}`);
  assert.deepEqual([pageIds(newer), newer.body.has_more], [id(4, 3), true]);
  assert.deepEqual(pageIds(await stripe('GET', `/v1/customers?email=${encodeURIComponent('c0@example.com')}`)), id(5, 0));
  assert.deepEqual(pageIds(await stripe('GET', `/v1/customers?created[gte]=${made[0].created}`)), id(5, 4, 3, 2, 0));
  assert.deepEqual(pageIds(await stripe('GET', `/v1/customers?created[lt]=${made[0].created}`)), []);
  assert.deepEqual(pageIds(await stripe('GET', `/v1/customers?created=${made[0].created - 1}`)), []);

  assertStripeError(await stripe('GET', `/v1/customers?starting_after=${made[0].id}&ending_before=${made[2].id}`), 400,
    { code: 'parameter_invalid', param: 'ending_before' });
  assertStripeError(await stripe('GET', '/v1/customers?starting_after=cus_nope'), 404,
    { code: 'resource_missing', param: 'starting_after', message: "No such customer: 'cus_nope'" });
  assertStripeError(await stripe('GET', '/v1/customers?limit=101'), 400, { code: 'parameter_invalid', param: 'limit' });
  assertStripeError(await stripe('GET', '/v1/customers?created[near]=1'), 400, { param: 'created[near]' });
});

test('lists: products and prices filter by active, product, type and lookup key', async () => {
  await reset();
  await ctl('POST', '/_fake/objects', {
    objects: [
      { id: 'prod_old', object: 'product', name: 'Old', active: false },
      { id: 'prod_new', object: 'product', name: 'New' },
      { id: 'prod_gone', object: 'product', deleted: true },
      { id: 'price_old', object: 'price', product: 'prod_old', active: false, unit_amount: 700, recurring: { interval: 'month' } },
      { id: 'price_new_once', object: 'price', product: 'prod_new', unit_amount: 300, type: 'one_time' },
    ],
  });
  const products = await stripe('GET', '/v1/products');
  assert.equal(products.body.url, '/v1/products');
  assert.deepEqual(pageIds(products), ['prod_new', 'prod_old', 'prod_onetime', 'prod_pro', 'prod_basic']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/products?active=true')), ['prod_new', 'prod_onetime', 'prod_pro', 'prod_basic']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/products?active=false')), ['prod_old']);
  assertStripeError(await stripe('GET', '/v1/products?active=maybe'), 400, { param: 'active' });

  const prices = await stripe('GET', '/v1/prices');
  assert.equal(prices.body.url, '/v1/prices');
  assert.deepEqual(pageIds(prices), ['price_new_once', 'price_old', 'price_onetime', 'price_pro', 'price_basic']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?active=false')), ['price_old']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?product=prod_old')), ['price_old']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?type=one_time')), ['price_new_once', 'price_onetime']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?type=recurring&active=true')), ['price_pro', 'price_basic']);
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?lookup_keys[]=pro&lookup_keys[]=basic')), ['price_pro', 'price_basic']);
  // a cursor need not match the filter
  assert.deepEqual(pageIds(await stripe('GET', '/v1/prices?active=true&starting_after=price_old')), ['price_onetime', 'price_pro', 'price_basic']);
  assertStripeError(await stripe('GET', '/v1/prices?type=weird'), 400, { param: 'type' });
  assertStripeError(await stripe('GET', '/v1/prices?ending_before=price_nope'), 404,
    { code: 'resource_missing', param: 'ending_before', message: "No such price: 'price_nope'" });
  assertStripeError(await stripe('GET', '/v1/prices?starting_after=prod_new'), 404, { param: 'starting_after' });
});

test('account: a seeded account matches its counts, reproduces from its seed and emits no event', async () => {
  await reset();
  const options = {
    customers: 6, subscriptions: 4, canceled: 1, wide_subscriptions: 1, wide_items: 12,
    entitlements_per_customer: 3, invoices_per_subscription: 2, seed: 42, created: 1_700_000_000,
  };
  assert.deepEqual(await ctl('POST', '/_fake/account', options), {
    customers: 6, subscriptions: 4, subscription_items: 3 + 12, products: 10, prices: 30, invoices: 8, entitlements: 9,
  });
  assert.deepEqual(await storedEvents(), []);
  const customers = (await listAll('/v1/customers')).objects;
  assert.deepEqual(customers.map((c) => c.metadata.user_ref), ['user_6', 'user_5', 'user_4', 'user_3', 'user_2', 'user_1']);
  assert.equal(customers.at(-1).email, 'user1@example.com');
  const subscriptions = (await listAll('/v1/subscriptions?status=all')).objects;
  assert.equal(subscriptions.length, 4);
  assert.deepEqual(new Set(subscriptions.map((s) => s.customer)), new Set(customers.slice(2).map((c) => c.id)), 'the first 4 customers');
  const products = (await listAll('/v1/products')).objects;
  assert.equal(products.at(-4).created, options.created, 'the first object is created at `created`');
  const created = [...customers].reverse().map((c) => c.created);
  assert.ok(created.every((t, i) => i === 0 || t > created[i - 1]), 'increasing created');

  const now = Math.floor(Date.now() / 1000);
  const [canceled] = subscriptions.filter((s) => s.status === 'canceled');
  assert.ok(canceled.ended_at <= now && canceled.canceled_at === canceled.ended_at);
  for (const s of subscriptions) {
    assert.ok(!('current_period_start' in s), 'basil: periods on items');
    const [item] = s.items.data;
    assert.ok(item.current_period_start < item.current_period_end);
    if (s.status !== 'canceled') assert.ok(item.current_period_end > now, `${s.status} runs on`);
    const ents = (await stripe('GET', `/v1/entitlements/active_entitlements?customer=${s.customer}`)).body.data;
    assert.deepEqual(ents.map((e) => [e.lookup_key, e.feature]), s.status === 'canceled' ? []
      : [['feature_3', 'feat_3'], ['feature_2', 'feat_2'], ['feature_1', 'feat_1']]);
    const invoices = await listAll(`/v1/invoices?subscription=${s.id}`);
    assert.deepEqual(invoices.objects.map((i) => [i.status, i.customer]), [['paid', s.customer], ['paid', s.customer]]);
    assert.equal(s.latest_invoice, invoices.ids[0]);
  }

  await reset();
  await ctl('POST', '/_fake/account', options);
  assert.deepEqual((await listAll('/v1/customers')).ids, customers.map((c) => c.id), 'same seed, same ids');

  for (const bad of [{ customers: 2, subscriptions: 3 }, { wide_subscriptions: 1, wide_items: 31 }, { customers: -1 }, { seed: 'x' }]) {
    const res = await call('POST', '/_fake/account', { json: bad, auth: null });
    assert.equal(res.status, 400, JSON.stringify(bad));
  }
});

test('account: 2,000 customers seed fast and list page by page by status, customer, price and created', async (t) => {
  await reset();
  let started = performance.now();
  const counts = await ctl('POST', '/_fake/account', {
    customers: 2000, subscriptions: 2000, wide_subscriptions: 100, wide_items: 15, canceled: 200, entitlements_per_customer: 2, seed: 7,
  });
  const generateMs = performance.now() - started;
  t.diagnostic(`generating the 2,000-customer account: ${generateMs.toFixed(0)} ms`);
  assert.ok(generateMs < 2000, `generation took ${generateMs} ms`);
  assert.deepEqual(counts, {
    customers: 2000, subscriptions: 2000, subscription_items: 1900 + 100 * 15, products: 10, prices: 30, invoices: 2000, entitlements: 1800 * 2,
  });
  assert.deepEqual(await storedEvents(), []);

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    started = performance.now();
    const all = await listAll('/v1/subscriptions?status=all', { agent });
    const listMs = performance.now() - started;
    t.diagnostic(`listing all 2,000 subscriptions in ${all.pages} pages of 100: ${listMs.toFixed(0)} ms`);
    assert.equal(all.pages, 20);
    assert.equal(new Set(all.ids).size, 2000, 'every subscription exactly once');
    assert.equal(all.url, '/v1/subscriptions');
    const byStatus = {};
    for (const s of all.objects) byStatus[s.status] = (byStatus[s.status] || 0) + 1;
    assert.equal(byStatus.canceled, 200);
    assert.equal(byStatus.active + byStatus.trialing + byStatus.past_due, 1800);

    const live = await listAll('/v1/subscriptions', { agent });
    assert.equal(live.ids.length, 1800, 'no status: all but canceled');
    assert.ok(live.objects.every((s) => s.status !== 'canceled'));
    assert.equal((await listAll('/v1/subscriptions?status=canceled', { agent })).ids.length, 200);
    assert.equal((await listAll('/v1/subscriptions?status=trialing', { agent })).ids.length, byStatus.trialing);
    assert.equal((await listAll('/v1/subscriptions?status=ended', { agent })).ids.length, 200);
    assertStripeError(await stripe('GET', '/v1/subscriptions?status=sleeping'), 400, { param: 'status' });

    started = performance.now();
    const page = await stripe('GET', `/v1/subscriptions?status=all&limit=100&starting_after=${all.ids[1000]}`, undefined, { agent });
    t.diagnostic(`one page of 100 subscriptions: ${(performance.now() - started).toFixed(1)} ms`);
    assert.deepEqual(pageIds(page), all.ids.slice(1001, 1101));

    const sub = all.objects[500];
    assert.deepEqual(pageIds(await stripe('GET', `/v1/subscriptions?status=all&customer=${sub.customer}`)), [sub.id]);
    assert.deepEqual(pageIds(await stripe('GET', `/v1/subscriptions?status=all&created=${sub.created}`)), [sub.id]);
    assert.deepEqual((await listAll(`/v1/subscriptions?status=all&created[gt]=${sub.created}`, { agent })).ids, all.ids.slice(0, 500));
    assert.deepEqual(pageIds(await stripe('GET', `/v1/subscriptions?status=all&created[lte]=${sub.created}&limit=1`)), [sub.id]);
    const price = all.objects.find((s) => s.items.total_count === 1).items.data[0].price.id;
    const withPrice = await listAll(`/v1/subscriptions?status=all&price=${price}`, { agent });
    const seen = all.objects.filter((s) => s.items.data.some((i) => i.price.id === price)).map((s) => s.id);
    assert.ok(seen.every((id) => withPrice.ids.includes(id)));
    assert.ok(withPrice.objects.every((s) => s.items.has_more || s.items.data.some((i) => i.price.id === price)));

    const wide = all.objects.filter((s) => s.items.total_count === 15);
    assert.equal(wide.length, 100);
    for (const s of [wide[0], all.objects.find((x) => x.items.total_count === 1)]) {
      const fetched = (await stripe('GET', `/v1/subscriptions/${s.id}`, undefined, { agent })).body;
      assert.deepEqual(fetched.items, s.items, 'retrieve embeds what the list does');
    }
    assert.deepEqual([wide[0].items.data.length, wide[0].items.has_more, wide[0].items.url],
      [10, true, `/v1/subscription_items?subscription=${wide[0].id}`]);

    assert.equal((await listAll('/v1/customers', { agent })).ids.length, 2000);
    const [user17] = (await stripe('GET', '/v1/customers?email=user17@example.com')).body.data;
    assert.equal(user17.metadata.user_ref, 'user_17');
    assert.equal((await listAll('/v1/invoices', { agent })).ids.length, 2000);
    const invoices = await stripe('GET', `/v1/invoices?customer=${sub.customer}&status=paid`);
    assert.deepEqual(invoices.body.data.map((i) => i.parent.subscription_details.subscription), [sub.id]);
    assert.deepEqual(pageIds(await stripe('GET', `/v1/invoices?customer=${sub.customer}&status=open`)), []);
    assertStripeError(await stripe('GET', '/v1/invoices?status=lost'), 400, { param: 'status' });
    assert.equal((await listAll('/v1/products')).ids.length, 13);
    assert.equal((await listAll('/v1/prices')).ids.length, 33);
  } finally {
    agent.destroy();
  }
});

test('subscription items: embedded lists stop at 10, GET /v1/subscription_items lists them all', async () => {
  await reset();
  await ctl('POST', '/_fake/account', { customers: 1, subscriptions: 1, canceled: 0, wide_subscriptions: 1, wide_items: 15, seed: 3 });
  const [sub] = (await stripe('GET', '/v1/subscriptions')).body.data;
  const stored = await ctl('GET', `/_fake/objects/${sub.id}`);
  assert.equal(stored.items.data.length, 15, 'the store keeps every item');
  const storedIds = stored.items.data.map((i) => i.id);
  assert.deepEqual(sub.items.data.map((i) => i.id), storedIds.slice(0, 10));
  assert.deepEqual([sub.items.has_more, sub.items.total_count], [true, 15]);
  assert.equal(new Set(stored.items.data.map((i) => i.price.id)).size, 15, 'distinct prices');

  const url = `/v1/subscription_items?subscription=${sub.id}`;
  const whole = await stripe('GET', `${url}&limit=100`);
  assert.deepEqual([whole.body.object, whole.body.url, whole.body.has_more], ['list', '/v1/subscription_items', false]);
  assert.deepEqual(pageIds(whole), storedIds, 'creation order');
  const paged = await listAll(url, { limit: 4 });
  assert.deepEqual([paged.ids, paged.pages], [storedIds, 4]);
  assert.equal((await stripe('GET', url)).body.data.length, 10, 'default limit 10');
  const back = await stripe('GET', `${url}&limit=2&ending_before=${storedIds[5]}`);
  assert.deepEqual([pageIds(back), back.body.has_more], [storedIds.slice(3, 5), true]);
  assertStripeError(await stripe('GET', '/v1/subscription_items'), 400, { code: 'parameter_missing', param: 'subscription' });
  assertStripeError(await stripe('GET', '/v1/subscription_items?subscription=sub_nope'), 400, { code: 'resource_missing', param: 'subscription' });
  assertStripeError(await stripe('GET', `${url}&starting_after=si_nope`), 404,
    { code: 'resource_missing', param: 'starting_after', message: "No such subscription item: 'si_nope'" });

  // updates and their events embed 10 items too; the new item is the 16th
  const used = new Set(stored.items.data.map((i) => i.price.id));
  const spare = (await listAll('/v1/prices?active=true&type=recurring')).ids.find((id) => !used.has(id));
  const updated = await stripe('POST', `/v1/subscriptions/${sub.id}`, { 'items[0][price]': spare, 'metadata[k]': 'v' });
  assert.equal(updated.status, 200, updated.text);
  assert.deepEqual([updated.body.items.data.length, updated.body.items.has_more, updated.body.items.total_count], [10, true, 16]);
  const [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.updated');
  assert.deepEqual(event.data.object.items, updated.body.items);
  assert.equal(event.data.previous_attributes.items.data.length, 10);
  const after = await stripe('GET', `${url}&limit=100`);
  assert.deepEqual([after.body.data.length, after.body.data.at(-1).price.id], [16, spare]);
  const canceled = await stripe('DELETE', `/v1/subscriptions/${sub.id}`);
  assert.deepEqual([canceled.body.items.data.length, canceled.body.items.total_count], [10, 16]);
});

test('control API merges a partial object into the stored one without an event', async () => {
  await reset();
  await ctl('POST', '/_fake/account', { customers: 2, subscriptions: 2, canceled: 0, wide_subscriptions: 1, wide_items: 12, seed: 5 });
  const subs = (await stripe('GET', '/v1/subscriptions')).body.data;
  const wide = subs.find((s) => s.items.total_count === 12);
  const before = await ctl('GET', `/_fake/objects/${wide.id}`);
  const res = await call('POST', '/_fake/objects', {
    json: { merge: true, object: { id: wide.id, object: 'subscription', status: 'past_due' } }, auth: null,
  });
  assert.equal(res.status, 200, res.text);
  const after = await ctl('GET', `/_fake/objects/${wide.id}`);
  assert.deepEqual(after, { ...before, status: 'past_due' }, 'every other field kept, all 12 items too');
  assert.deepEqual(await storedEvents(), [], 'silent: no event');
  assert.deepEqual(pageIds(await stripe('GET', '/v1/subscriptions?status=past_due')), [wide.id]);
  assert.deepEqual((await stripe('GET', '/v1/subscriptions?status=all')).body.data.map((s) => s.id), subs.map((s) => s.id), 'same list position');

  const customer = await ctl('POST', '/_fake/objects', { merge: true, objects: [{ id: wide.customer, email: 'moved@example.com' }] });
  assert.equal(customer.objects[0].email, 'moved@example.com');
  assert.equal((await stripe('GET', `/v1/customers/${wide.customer}`)).body.metadata.user_ref, customer.objects[0].metadata.user_ref);
  for (const bad of [
    { merge: true, object: { id: 'sub_nope', object: 'subscription', status: 'past_due' } },
    { merge: true, object: { id: wide.id, object: 'customer', email: 'x@example.com' } },
    { merge: 'yes', object: { id: wide.id, object: 'subscription' } },
  ]) {
    assert.equal((await call('POST', '/_fake/objects', { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }
  assert.equal((await ctl('GET', `/_fake/objects/${wide.id}`)).status, 'past_due', 'rejected patches change nothing');
});

test('rate limit: requests over per_second in a rolling second get 429 with Retry-After, no side effects', async () => {
  await reset();
  assert.deepEqual(await ctl('POST', '/_fake/rate_limit', { per_second: 3 }), { per_second: 3 });
  assert.deepEqual(await ctl('GET', '/_fake/rate_limit'), { per_second: 3 });
  const results = [];
  for (let i = 0; i < 5; i++) results.push(await stripe('POST', '/v1/customers', { email: `rl${i}@example.com` }));
  assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 429, 429]);
  const limited = results[3];
  assertStripeError(limited, 429, { type: 'invalid_request_error', code: 'rate_limit' });
  assert.match(limited.body.error.message, /^Too many requests hit the API too quickly/);
  assert.equal(limited.headers['retry-after'], '1');
  assert.match(limited.headers['request-id'], /^req_/);
  const recorded = await ctl('GET', '/_fake/requests?path=/v1/customers');
  assert.deepEqual(recorded.map((r) => r.status), [200, 200, 200, 429, 429]);
  assert.equal((await ctl('GET', '/_fake/stats')).rate_limited, 2);

  await sleep(1050);
  assert.equal((await stripe('GET', '/v1/customers?limit=100')).body.data.length, 3, 'the window rolled on; refused requests left nothing');
  assert.equal((await storedEvents()).length, 3);
  assert.deepEqual(await ctl('DELETE', '/_fake/rate_limit'), { per_second: null });
  for (let i = 0; i < 6; i++) assert.equal((await stripe('GET', '/v1/prices/price_basic')).status, 200);
  await ctl('POST', '/_fake/rate_limit', { per_second: 1 });
  assert.deepEqual(await ctl('POST', '/_fake/rate_limit', { per_second: null }), { per_second: null });
  assert.equal((await stripe('GET', '/v1/prices/price_basic')).status, 200);
  for (const bad of [{ per_second: 0 }, { per_second: 'many' }, {}]) {
    assert.equal((await call('POST', '/_fake/rate_limit', { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }
  await ctl('POST', '/_fake/rate_limit', { per_second: 1 });
  await reset();
  assert.deepEqual(await ctl('GET', '/_fake/rate_limit'), { per_second: null }, 'reset lifts the limit');
  assert.equal((await ctl('GET', '/_fake/stats')).rate_limited, 0);
});

test('events generate lifecycles: Checkout links the user, bursts share a second, seeded', async () => {
  await reset();
  const start = 1_800_000_000;
  const options = { mode: 'lifecycle', users: 3, rounds: 2, seed: 7, start_created: start, user_prefix: 't_' };
  const gen = await ctl('POST', '/_fake/events', { generate: options });
  assert.equal(gen.appended, 3 * 2 * 11);
  assert.deepEqual(gen.users, ['t_1', 't_2', 't_3']);
  const { objects: events } = await listAll('/v1/events');
  events.reverse(); // oldest first
  assert.equal(events.length, 66);
  assert.deepEqual([events[0].id, events.at(-1).id], [gen.first_id, gen.last_id]);
  assert.deepEqual([gen.first_created, gen.last_created], [events[0].created, events.at(-1).created]);
  events.forEach((e, i) => assert.ok(i === 0 || events[i - 1].created <= e.created, 'listed in created order'));

  const customerOf = (e) => (e.data.object.object === 'customer' ? e.data.object.id : e.data.object.customer);
  const lives = new Map();
  for (const e of events) lives.set(customerOf(e), [...(lives.get(customerOf(e)) || []), e]);
  assert.equal(lives.size, 6, 'a new customer per user and round');
  const users = new Map();
  for (const life of lives.values()) {
    assert.deepEqual(life.map((e) => e.type), [
      'customer.created', 'customer.subscription.created', 'invoice.finalized', 'invoice.paid',
      'customer.subscription.updated', 'checkout.session.completed',
      'invoice.payment_failed', 'customer.subscription.updated',
      'invoice.paid', 'customer.subscription.updated',
      'customer.subscription.deleted']);
    // four bursts, each within one second, in increasing seconds
    const seconds = life.map((e) => e.created);
    assert.deepEqual([...new Set(seconds)].map((t) => seconds.filter((x) => x === t).length), [6, 2, 2, 1]);
    const [created, subCreated, finalized, paid, activated, completed, failed, pastDue, retried, active, deleted] =
      life.map((e) => e.data.object);
    assert.deepEqual(created.metadata, {}, 'no user on the customer');
    assert.equal(subCreated.status, 'incomplete');
    assert.deepEqual(subCreated.metadata, {}, 'no user on the subscription');
    assert.equal(subCreated.items.data[0].price.lookup_key, 'pro');
    assert.deepEqual([finalized.status, paid.status, paid.id], ['open', 'paid', finalized.id]);
    assert.equal(activated.status, 'active');
    assert.deepEqual(life[4].data.previous_attributes, { status: 'incomplete' });
    assert.equal(completed.object, 'checkout.session');
    assert.deepEqual([completed.mode, completed.status, completed.payment_status, completed.customer, completed.subscription],
      ['subscription', 'complete', 'paid', created.id, subCreated.id]);
    assert.match(completed.client_reference_id, /^t_[123]$/);
    users.set(completed.client_reference_id, (users.get(completed.client_reference_id) || 0) + 1);
    assert.deepEqual([failed.status, failed.billing_reason, pastDue.status], ['open', 'subscription_cycle', 'past_due']);
    assert.ok(pastDue.items.data[0].current_period_start === activated.items.data[0].current_period_end, 'the next period');
    assert.deepEqual([retried.id, retried.status, active.status], [failed.id, 'paid', 'active']);
    assert.deepEqual([deleted.id, deleted.status, deleted.ended_at], [subCreated.id, 'canceled', life[10].created]);
    // the stored objects are the final ones
    assert.equal((await stripe('GET', `/v1/subscriptions/${deleted.id}`)).body.status, 'canceled');
    assert.equal((await stripe('GET', `/v1/invoices/${failed.id}`)).body.status, 'paid');
  }
  assert.deepEqual(Object.fromEntries(users), { t_1: 2, t_2: 2, t_3: 2 }, 'two rounds of each user');
  // rounds follow each other: a user's second lifecycle starts after the first ends
  const roundsOf = (user) => [...lives.values()].filter((life) => life[5].data.object.client_reference_id === user);
  for (const user of users.keys()) {
    const [a, b] = roundsOf(user);
    assert.ok(a.at(-1).created < b[0].created);
  }

  // the same seed gives the same events, ids included
  await reset();
  const again = await ctl('POST', '/_fake/events', { generate: options });
  assert.deepEqual(again, gen);
  const { objects: replayed } = await listAll('/v1/events');
  assert.deepEqual(replayed.reverse().map((e) => [e.id, e.type, e.created, e.data.object.id]),
    events.map((e) => [e.id, e.type, e.created, e.data.object.id]));
  for (const bad of [{ mode: 'nope' }, { mode: 'lifecycle', users: 0 }, { mode: 'lifecycle', user_prefix: 'a b' },
    { mode: 'lifecycle', price: 'price_onetime' }, { mode: 'lifecycle', spread: 20, round_seconds: 30 }]) {
    assert.equal((await call('POST', '/_fake/events', { json: { generate: bad }, auth: null })).status, 400, JSON.stringify(bad));
  }
});

test('events expire: dropped ids become unknown cursors', async () => {
  await reset();
  const start = 1_700_000_000;
  await ctl('POST', '/_fake/events', { generate: { count: 30, customers: 3, per_second: 5, start_created: start, seed: 2 } });
  const all = (await storedEvents()).map((e) => e.id);
  assert.deepEqual(await ctl('POST', '/_fake/events/expire', { through: all[9] }), { expired: 10 });
  assert.deepEqual((await storedEvents()).map((e) => e.id), all.slice(10));
  const unknown = await stripe('GET', '/v1/events?ending_before=evt_nope');
  const gone = await stripe('GET', `/v1/events?ending_before=${all[4]}`);
  assertStripeError(gone, 404, { code: 'resource_missing', param: 'ending_before', message: `No such event: '${all[4]}'` });
  assert.deepEqual(Object.keys(gone.body.error), Object.keys(unknown.body.error));
  assertStripeError(await stripe('GET', `/v1/events?starting_after=${all[0]}`), 404, { param: 'starting_after' });
  assertStripeError(await stripe('GET', `/v1/events/${all[0]}`), 404, { code: 'resource_missing' });
  const kept = await stripe('GET', `/v1/events?ending_before=${all[10]}&limit=100`);
  assert.deepEqual(pageIds(kept), all.slice(11).reverse());

  // created start+0..start+5, five a second: older_than start+4 drops the next ten
  assert.deepEqual(await ctl('POST', '/_fake/events/expire', { older_than: start + 4 }), { expired: 10 });
  assert.deepEqual((await storedEvents()).map((e) => e.id), all.slice(20));
  for (const bad of [{}, { through: all[25], older_than: start }, { through: 'evt_nope' }, { older_than: 'soon' }]) {
    assert.equal((await call('POST', '/_fake/events/expire', { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }
});

test('responses carry a Date header', async () => {
  await reset();
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', path: '/v1/customers' }] });
  const responses = [
    await stripe('GET', '/v1/prices/price_basic'),
    await stripe('GET', '/v1/customers'), // faulted
    await stripe('GET', '/v1/prices/price_basic', undefined, { auth: null }),
    await stripe('GET', '/v1/xyz'),
    await call('GET', '/_fake/stats', { auth: null }),
    await call('GET', '/pay/cs_nope', { auth: null }),
  ];
  for (const res of responses) {
    assert.match(res.headers.date || '', /^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/, `status ${res.status}`);
    assert.ok(Math.abs(Date.parse(res.headers.date) - Date.now()) < 5000);
  }
});

// ---- meter events v2, latency, after_reset, previews, strict parameters ----

const nowIso = (offsetSeconds = 0) => new Date(Date.now() + offsetSeconds * 1000).toISOString();
const meterEvent = (fields = {}) => ({
  event_name: 'api_request',
  payload: { stripe_customer_id: 'cus_meter', value: '1' },
  ...fields,
});

async function meterSession(auth = KEY) {
  const res = await call('POST', '/v2/billing/meter_event_session', { auth });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

const streamEvents = (token, events, opts = {}) =>
  call('POST', '/v2/billing/meter_event_stream', { json: { events }, auth: token, ...opts });

// A request whose connection may break: {res} or {error}.
const attempt = (method, urlPath, opts) => call(method, urlPath, opts).then((res) => ({ res }), (error) => ({ error }));

test('meter events v2: a session gives a 15-minute token, the stream takes only that token', async () => {
  await reset();
  const before = Date.now();
  const session = await meterSession();
  assert.deepEqual(Object.keys(session).sort(), ['authentication_token', 'created', 'expires_at', 'id', 'livemode', 'object']);
  assert.match(session.id, /^mes_\w+$/);
  assert.equal(session.object, 'v2.billing.meter_event_session');
  assert.equal(session.livemode, false);
  assert.ok(typeof session.authentication_token === 'string' && session.authentication_token.length >= 32);
  assert.ok(!session.authentication_token.includes(KEY));
  assert.match(session.created, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  assert.ok(Math.abs(Date.parse(session.created) - before) < 5000);
  assert.equal(Date.parse(session.expires_at) - Date.parse(session.created), 15 * 60 * 1000);
  assert.match(session.expires_at, /Z$/);

  // an empty JSON object is a valid body too; a parameter is not
  assert.equal((await call('POST', '/v2/billing/meter_event_session', { json: {} })).status, 200);
  assertStripeError(await call('POST', '/v2/billing/meter_event_session', { json: { ttl: 60 } }), 400,
    { type: 'invalid_request_error', code: 'parameter_unknown', param: 'ttl', message: 'Received unknown parameter: ttl' });
  assertStripeError(await call('POST', '/v2/billing/meter_event_session', { auth: null }), 401, { type: 'invalid_request_error' });
  assertStripeError(await call('POST', '/v2/billing/meter_event_session', { auth: session.authentication_token }), 401,
    { code: 'api_key_invalid' });

  const ok = await streamEvents(session.authentication_token, [meterEvent({ identifier: 'v2-1' })]);
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(ok.body, {});
  assert.match(ok.headers['request-id'], /^req_/);
  assert.match(ok.headers.date, /GMT$/);

  const withKey = await streamEvents(KEY, [meterEvent()]);
  assertStripeError(withKey, 401, { type: 'invalid_request_error' });
  assert.match(withKey.body.error.message, /meter event session/);
  assertStripeError(await streamEvents(null, [meterEvent()]), 401, { type: 'invalid_request_error' });
  const unknown = await streamEvents('mest_test_made_up', [meterEvent()]);
  assertStripeError(unknown, 401, { type: 'invalid_request_error', code: 'billing_meter_event_session_expired' });
  assert.ok(unknown.body.error.message.length > 0);

  assert.deepEqual(await ctl('POST', '/_fake/meter_sessions/expire'), { expired: 2 });
  assertStripeError(await streamEvents(session.authentication_token, [meterEvent()]), 401,
    { code: 'billing_meter_event_session_expired' });
  assert.deepEqual(await ctl('POST', '/_fake/meter_sessions/expire'), { expired: 0 });
  const fresh = await meterSession();
  assert.notEqual(fresh.authentication_token, session.authentication_token);
  assert.equal((await streamEvents(fresh.authentication_token, [meterEvent()])).status, 200);

  assert.equal((await ctl('GET', '/_fake/meter_events')).length, 2);
  await reset(); // forgets the tokens
  assertStripeError(await streamEvents(fresh.authentication_token, [meterEvent()]), 401,
    { code: 'billing_meter_event_session_expired' });
  assert.deepEqual(await ctl('GET', '/_fake/meter_events'), []);
});

test('meter events v2: the whole batch is validated first, any bad event stores nothing', async () => {
  await reset();
  const { authentication_token: token } = await meterSession();
  const good = (n) => Array.from({ length: n }, (_, i) => meterEvent({ identifier: `batch-${n}-${i}` }));
  const bad = async (events, fields) => {
    const res = Array.isArray(events) || events === undefined
      ? await call('POST', '/v2/billing/meter_event_stream', { json: events === undefined ? {} : { events }, auth: token })
      : await call('POST', '/v2/billing/meter_event_stream', { json: events, auth: token });
    assertStripeError(res, 400, { type: 'invalid_request_error', ...fields });
    return res;
  };
  await bad(undefined, { code: 'parameter_missing', param: 'events' });
  await bad([], { code: 'parameter_invalid', param: 'events' });
  await bad(good(101), { code: 'parameter_invalid', param: 'events' });
  await bad({ events: 'x' }, { code: 'parameter_invalid', param: 'events' });
  await bad({ events: good(1), extra: true }, { code: 'parameter_unknown', param: 'extra', message: 'Received unknown parameter: extra' });

  const withBad = (i, event) => good(5).map((e, n) => (n === i ? event : e));
  const now = Math.floor(Date.now() / 1000);
  const cases = [
    [withBad(3, meterEvent({ payload: { stripe_customer_id: 'cus_1', value: 'many' } })), 'parameter_invalid', 'events[3].payload.value'],
    [withBad(3, meterEvent({ payload: { stripe_customer_id: 'cus_1', value: 5 } })), 'parameter_invalid', 'events[3].payload.value'],
    [withBad(2, meterEvent({ payload: { stripe_customer_id: 'cus_1' } })), 'parameter_missing', 'events[2].payload.value'],
    [withBad(1, meterEvent({ payload: { value: '1' } })), 'parameter_missing', 'events[1].payload.stripe_customer_id'],
    [withBad(1, meterEvent({ payload: { stripe_customer_id: 'cus_1', value: '1', region: 'eu' } })), 'parameter_unknown', 'events[1].payload.region'],
    [withBad(0, { payload: { stripe_customer_id: 'cus_1', value: '1' } }), 'parameter_missing', 'events[0].event_name'],
    [withBad(4, { event_name: 'x' }), 'parameter_missing', 'events[4].payload'],
    [withBad(4, meterEvent({ payload: 'x' })), 'parameter_invalid', 'events[4].payload'],
    [withBad(2, meterEvent({ value: '1' })), 'parameter_unknown', 'events[2].value'],
    [withBad(2, meterEvent({ identifier: 'x'.repeat(101) })), 'parameter_invalid', 'events[2].identifier'],
    [withBad(2, meterEvent({ identifier: 7 })), 'parameter_invalid', 'events[2].identifier'],
    [withBad(2, meterEvent({ timestamp: nowIso(-36 * DAY) })), 'parameter_invalid', 'events[2].timestamp'],
    [withBad(2, meterEvent({ timestamp: nowIso(6 * 60) })), 'parameter_invalid', 'events[2].timestamp'],
    [withBad(2, meterEvent({ timestamp: now })), 'parameter_invalid', 'events[2].timestamp'],
    [withBad(2, meterEvent({ timestamp: '2026-01-01 12:00:00' })), 'parameter_invalid', 'events[2].timestamp'],
    [withBad(2, 'x'), 'parameter_invalid', 'events[2]'],
  ];
  for (const [events, code, param] of cases) await bad(events, { code, param });
  const value = await bad(withBad(3, meterEvent({ payload: { stripe_customer_id: 'cus_1', value: 'many' } })), {});
  assert.equal(value.body.error.param, 'events[3].payload.value');
  assert.deepEqual(await ctl('GET', '/_fake/meter_events'), [], 'nothing stored from a refused batch');
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 0, stored: 0, duplicates: 0 });

  const notJson = await call('POST', '/v2/billing/meter_event_stream', {
    raw: { type: 'application/x-www-form-urlencoded', text: 'events[0][event_name]=x' }, auth: token,
  });
  assertStripeError(notJson, 400, { type: 'invalid_request_error' });
  assert.match(notJson.body.error.message, /JSON/);
  const broken = await call('POST', '/v2/billing/meter_event_stream', { raw: { type: 'application/json', text: '{"events": [' }, auth: token });
  assertStripeError(broken, 400, { type: 'invalid_request_error' });
  const array = await call('POST', '/v2/billing/meter_event_stream', { raw: { type: 'application/json', text: '[]' }, auth: token });
  assertStripeError(array, 400, { type: 'invalid_request_error' });

  // a hundred events, with and without timestamps and identifiers
  const hundred = good(100);
  hundred[0] = meterEvent({ identifier: 'ts-1', timestamp: nowIso(-34 * DAY) });
  hundred[1] = meterEvent({ timestamp: nowIso(-60) });
  hundred[2] = meterEvent({ identifier: 'ts-3', timestamp: nowIso(4 * 60).replace('Z', '+00:00') });
  const res = await streamEvents(token, hundred);
  assert.equal(res.status, 200, res.text);
  const stored = await ctl('GET', '/_fake/meter_events');
  assert.equal(stored.length, 100);
  assert.ok(stored.every((e) => e.api === 'v2' && e.object === 'billing.meter_event'));
  assert.equal(stored[0].timestamp, Math.floor(Date.parse(hundred[0].timestamp) / 1000));
  assert.ok(Math.abs(stored[1].timestamp - (now - 60)) <= 5);
  assert.ok(Math.abs(stored[3].timestamp - Math.floor(Date.now() / 1000)) <= 5, 'no timestamp: now');
  assert.ok(stored[1].identifier && stored[1].identifier !== stored[2].identifier, 'identifiers generated');
  assert.deepEqual(stored[3].payload, { stripe_customer_id: 'cus_meter', value: '1' });
  assert.equal(stored[3].event_name, 'api_request');
});

test('meter events: duplicates within 24 h are dropped silently in v2 and counted; both APIs share the window', async () => {
  await reset();
  const { authentication_token: token } = await meterSession();
  const v1 = await stripe('POST', '/v1/billing/meter_events', {
    event_name: 'api_request', 'payload[stripe_customer_id]': 'cus_meter', 'payload[value]': '2', identifier: 'shared-1',
  });
  assert.equal(v1.status, 200, v1.text);
  assert.equal(v1.body.api, undefined, 'the API answer is Stripe\'s object');

  const batch = [meterEvent({ identifier: 'd-1' }), meterEvent({ identifier: 'd-1' }), meterEvent({ identifier: 'shared-1' }),
    meterEvent({ identifier: 'd-2' })];
  assert.equal((await streamEvents(token, batch)).status, 200);
  assert.equal((await streamEvents(token, [meterEvent({ identifier: 'd-2' }), meterEvent({ identifier: 'd-3' })])).status, 200);
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 7, stored: 4, duplicates: 3 });

  const stored = await ctl('GET', '/_fake/meter_events');
  assert.deepEqual(stored.map((e) => [e.api, e.identifier]), [['v1', 'shared-1'], ['v2', 'd-1'], ['v2', 'd-2'], ['v2', 'd-3']]);
  for (const e of stored) {
    assert.deepEqual(Object.keys(e).sort(), ['api', 'created', 'event_name', 'identifier', 'livemode', 'object', 'payload', 'timestamp']);
    assert.ok(Number.isInteger(e.timestamp));
  }

  // v1 still refuses a seen identifier (synchronously), v2's too; refusals are not counted
  const again = await stripe('POST', '/v1/billing/meter_events', {
    event_name: 'api_request', 'payload[stripe_customer_id]': 'cus_meter', 'payload[value]': '2', identifier: 'd-3',
  });
  assertStripeError(again, 400, { code: 'resource_already_exists', param: 'identifier' });
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 7, stored: 4, duplicates: 3 });
  await reset();
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 0, stored: 0, duplicates: 0 });
  assert.deepEqual(await ctl('GET', '/_fake/meter_events'), []);
});

test('meter events v2: recorded with their JSON, no key or token in the recording, idempotency and faults apply', async () => {
  await reset();
  const session = await meterSession();
  const token = session.authentication_token;
  const events = [meterEvent({ identifier: 'rec-1' })];
  const first = await streamEvents(token, events, { headers: { 'Idempotency-Key': 'v2-idem' } });
  const replay = await streamEvents(token, events, { headers: { 'Idempotency-Key': 'v2-idem' } });
  assert.deepEqual([first.status, replay.status, replay.headers['idempotent-replayed']], [200, 200, 'true']);
  const mismatch = await streamEvents(token, [meterEvent({ identifier: 'rec-2' })], { headers: { 'Idempotency-Key': 'v2-idem' } });
  assertStripeError(mismatch, 400, { type: 'idempotency_error' });
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 1, stored: 1, duplicates: 0 }, 'a replay runs nothing');

  const records = await ctl('GET', '/_fake/requests?path=/v2/');
  assert.deepEqual(records.map((r) => [r.method, r.path, r.status]), [
    ['POST', '/v2/billing/meter_event_session', 200],
    ['POST', '/v2/billing/meter_event_stream', 200],
    ['POST', '/v2/billing/meter_event_stream', 200],
    ['POST', '/v2/billing/meter_event_stream', 400],
  ]);
  const [, stream] = records;
  assert.deepEqual(stream.json, { events });
  assert.equal(stream.raw_body, JSON.stringify({ events }));
  assert.deepEqual(stream.form, {});
  assert.equal(stream.headers.authorization, 'Bearer <redacted>');
  assert.equal(records[0].json, null, 'no body');
  const text = JSON.stringify(await ctl('GET', '/_fake/requests'));
  assert.ok(!text.includes(KEY) && !text.includes(token), 'neither the key nor the token is recorded');

  // fault rules match /v2 paths by prefix
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '503', path: '/v2/billing/meter_event_stream', count: 1 }] });
  assertStripeError(await streamEvents(token, [meterEvent({ identifier: 'f-1' })]), 503, { type: 'api_error' });
  assert.equal((await streamEvents(token, [meterEvent({ identifier: 'f-1' })])).status, 200, 'one use');
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', path: '/v2/' }] });
  assertStripeError(await call('POST', '/v2/billing/meter_event_session'), 500, { type: 'api_error' });
  assert.deepEqual((await ctl('GET', '/_fake/requests?path=/v2/')).slice(-3).map((r) => r.status), ['503', 200, '500']);
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 2, stored: 2, duplicates: 0 });
  await ctl('DELETE', '/_fake/faults');
  assertStripeError(await call('GET', '/v2/billing/meter_event_stream'), 404, { type: 'invalid_request_error' });
  assertStripeError(await call('POST', '/v2/nothing'), 404, { type: 'invalid_request_error' });
});

test('faults: after_reset processes the request, then resets the connection (a retry is then a duplicate)', async () => {
  await reset();
  const { authentication_token: token } = await meterSession();
  await ctl('POST', '/_fake/faults', { rules: [{ kind: 'after_reset', path: '/v2/billing/meter_event_stream' }] });
  const batch = [meterEvent({ identifier: 'ar-1' }), meterEvent({ identifier: 'ar-2' })];
  const lost = await attempt('POST', '/v2/billing/meter_event_stream', { json: { events: batch }, auth: token });
  assert.equal(lost.error && lost.error.code, 'ECONNRESET');
  assert.equal((await ctl('GET', '/_fake/meter_events')).length, 2, 'the events got through');
  const retry = await streamEvents(token, batch);
  assert.equal(retry.status, 200);
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats'), { received: 4, stored: 2, duplicates: 2 });
  const [record] = await ctl('GET', '/_fake/requests?path=/v2/billing/meter_event_stream');
  assert.deepEqual([record.status, record.processed_status], ['after_reset', 200]);

  // on /v1 too: the customer is created, the client sees only the reset
  await ctl('POST', '/_fake/faults', { rules: [{ kind: 'after_reset', path: '/v1/customers', method: 'POST' }] });
  const v1 = await attempt('POST', '/v1/customers', { form: { email: 'lost@example.com' } });
  assert.equal(v1.error && v1.error.code, 'ECONNRESET');
  assert.equal((await stripe('GET', '/v1/customers?email=lost@example.com')).body.data.length, 1);
  assert.deepEqual((await storedEvents()).map((e) => e.type), ['customer.created']);
  // a refused request is reset too, without side effects
  await ctl('POST', '/_fake/faults', { rules: [{ kind: 'after_reset', path: '/v1/customers' }] });
  const refused = await attempt('POST', '/v1/customers', { form: { bogus: 'x' } });
  assert.equal(refused.error && refused.error.code, 'ECONNRESET');
  assert.deepEqual((await ctl('GET', '/_fake/requests?path=/v1/customers')).slice(-1).map((r) => [r.status, r.processed_status]),
    [['after_reset', 400]]);
  assert.equal((await storedEvents()).length, 1);
});

test('latency: answers wait ms on a timer, requests run in parallel, path prefix, lifted by DELETE and reset', async () => {
  await reset();
  assert.deepEqual(await ctl('GET', '/_fake/latency'), { ms: 0, path: null });
  assert.deepEqual(await ctl('POST', '/_fake/latency', { ms: 50 }), { ms: 50, path: null });
  let started = performance.now();
  assert.equal((await stripe('GET', '/v1/prices/price_basic')).status, 200);
  assert.ok(performance.now() - started >= 48, 'one request waits');

  started = performance.now();
  const parallel = await Promise.all(Array.from({ length: 8 }, () => stripe('GET', '/v1/prices/price_basic')));
  const elapsed = performance.now() - started;
  assert.ok(parallel.every((r) => r.status === 200));
  // (one after the other they would take 400 ms at least; on a loaded
  // machine the margin below that is what is left for the requests)
  assert.ok(elapsed >= 48 && elapsed < 400, `8 parallel requests with 50 ms latency took ${elapsed.toFixed(0)} ms`);

  // faulted answers wait too
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', path: '/v1/customers' }] });
  started = performance.now();
  assert.equal((await stripe('GET', '/v1/customers')).status, 500);
  assert.ok(performance.now() - started >= 48);
  await ctl('DELETE', '/_fake/faults');

  // the control API and the hosted pages are never delayed (latencies far
  // above what a request takes, even on a loaded machine)
  await ctl('POST', '/_fake/latency', { ms: 3000 });
  started = performance.now();
  await ctl('GET', '/_fake/stats');
  await call('GET', '/pay/cs_nope', { auth: null });
  assert.ok(performance.now() - started < 2500, 'no latency outside /v1 and /v2');

  assert.deepEqual(await ctl('POST', '/_fake/latency', { ms: 1000, path: '/v2/' }), { ms: 1000, path: '/v2/' });
  started = performance.now();
  await stripe('GET', '/v1/prices/price_basic');
  assert.ok(performance.now() - started < 800, '/v1 is outside the prefix');
  started = performance.now();
  await meterSession();
  assert.ok(performance.now() - started >= 995, '/v2 waits');

  // a client that gives up has still had its request done
  const gaveUp = await attempt('POST', '/v2/billing/meter_event_session', { timeout: 50 });
  assert.equal(gaveUp.error && gaveUp.error.code, 'CLIENT_TIMEOUT');
  assert.equal((await ctl('GET', '/_fake/requests?path=/v2/')).at(-1).status, 200);

  assert.deepEqual(await ctl('DELETE', '/_fake/latency'), { ms: 0, path: null });
  for (const bad of [{}, { ms: -1 }, { ms: 10001 }, { ms: 1.5 }, { ms: '50' }, { ms: 5, path: 3 }]) {
    assert.equal((await call('POST', '/_fake/latency', { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }
  await ctl('POST', '/_fake/latency', { ms: 10000 });
  await reset();
  assert.deepEqual(await ctl('GET', '/_fake/latency'), { ms: 0, path: null }, 'reset lifts it');
  started = performance.now();
  await stripe('GET', '/v1/prices/price_basic');
  assert.ok(performance.now() - started < 1000);
});

// The proration amounts of moving `qa` of price A to `qb` of price B at t in [s, e).
function expectedProration({ a, qa = 1, b, qb = 1, s, e, t }) {
  const fraction = (e - t) / (e - s);
  return { credit: -Math.round(a * qa * fraction), charge: Math.round(b * qb * fraction) };
}

async function previewFor(subscription, fields) {
  return stripe('POST', '/v1/invoices/create_preview', { subscription: subscription.id, ...fields });
}

test('invoice preview: prorations of a price swap under create_prorations, always_invoice and none', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const [s, e] = [item.current_period_start, item.current_period_end];
  const t = s + Math.floor((e - s) / 3);
  const swap = {
    'subscription_details[items][0][id]': item.id,
    'subscription_details[items][0][price]': 'price_pro',
    'subscription_details[items][0][quantity]': '2',
    'subscription_details[proration_date]': String(t),
  };
  const { credit, charge } = expectedProration({ a: 1000, b: 5000, qb: 2, s, e, t });
  const day = new Date(t * 1000).toUTCString().slice(5, 16); // "01 Jan 2026"

  const res = await previewFor(subscription, swap);
  assert.equal(res.status, 200, res.text);
  const preview = res.body;
  assert.match(preview.id, /^upcoming_in_\w+$/);
  assert.equal(preview.object, 'invoice');
  assert.equal(preview.status, 'draft');
  assert.equal(preview.customer, subscription.customer);
  assert.equal(preview.parent.subscription_details.subscription, subscription.id, 'basil: the subscription under parent');
  assert.ok(!('subscription' in preview));
  assert.equal(preview.currency, 'usd');
  assert.equal(preview.billing_reason, 'upcoming');
  assert.equal(preview.created, e, 'the upcoming invoice is issued at the period end');
  const lines = preview.lines.data;
  assert.deepEqual(lines.map((l) => l.amount), [credit, charge, 10000]);
  assert.deepEqual(lines.map((l) => l.parent.subscription_item_details.proration), [true, true, false]);
  assert.deepEqual(lines.map((l) => l.pricing.price_details.price), ['price_basic', 'price_pro', 'price_pro']);
  assert.deepEqual(lines.map((l) => l.quantity), [1, 2, 2]);
  assert.deepEqual(lines.map((l) => l.currency), ['usd', 'usd', 'usd']);
  assert.equal(lines[0].description, `Unused time on Basic after ${day}`);
  assert.equal(lines[1].description, `Remaining time on 2 × Pro after ${day}`);
  assert.equal(lines[2].description, '2 × Pro (at $50.00 / month)');
  assert.deepEqual([lines[0].period, lines[1].period], [{ start: t, end: e }, { start: t, end: e }]);
  assert.equal(lines[2].period.start, e);
  assert.ok(lines[2].period.end - e >= 28 * DAY);
  assert.equal(preview.subtotal, credit + charge + 10000);
  assert.equal(preview.total, preview.subtotal);
  assert.equal(preview.amount_due, preview.total);

  const now = (await previewFor(subscription, { ...swap, 'subscription_details[proration_behavior]': 'always_invoice' })).body;
  assert.deepEqual(now.lines.data.map((l) => l.amount), [credit, charge]);
  assert.equal(now.amount_due, credit + charge);
  const none = (await previewFor(subscription, { ...swap, 'subscription_details[proration_behavior]': 'none' })).body;
  assert.deepEqual(none.lines.data.map((l) => [l.amount, l.parent.subscription_item_details.proration]), [[10000, false]]);

  // a downgrade: the credit outweighs; nothing is due, the total is negative
  const down = (await previewFor(subscription, {
    'subscription_details[items][0][id]': item.id,
    'subscription_details[items][0][quantity]': '0',
    'subscription_details[proration_date]': String(t),
    'subscription_details[proration_behavior]': 'always_invoice',
  })).body;
  assert.equal(down.total, expectedProration({ a: 1000, b: 0, s, e, t }).credit);
  assert.equal(down.amount_due, 0);

  // no change: the plain renewal; previews change nothing and are not listed
  const plain = (await stripe('POST', '/v1/invoices/create_preview', { customer: subscription.customer })).body;
  assert.deepEqual(plain.lines.data.map((l) => l.amount), [1000]);
  assert.equal((await ctl('GET', `/_fake/objects/${preview.id}`)).id, preview.id);
  assert.deepEqual((await stripe('GET', `/v1/subscriptions/${subscription.id}`)).body.items, subscription.items);
  assert.ok(!pageIds(await stripe('GET', '/v1/invoices?limit=100')).some((id) => id.startsWith('upcoming_in_')));
  assertStripeError(await stripe('GET', `/v1/invoices/${preview.id}`), 404, { code: 'resource_missing' });
});

test('invoice preview: errors', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const [s, e] = [item.current_period_start, item.current_period_end];
  const eventCount = (await storedEvents()).length;
  const cases = [
    [{}, 400, 'parameter_missing', 'customer'],
    [{ subscription: 'sub_nope' }, 404, 'resource_missing', 'subscription'],
    [{ customer: 'cus_nope' }, 404, 'resource_missing', 'customer'],
    [{ subscription: subscription.id, 'subscription_details[items][0][id]': 'si_nope', 'subscription_details[items][0][price]': 'price_pro' },
      400, 'resource_missing', 'subscription_details[items][0][id]'],
    [{ subscription: subscription.id, 'subscription_details[items][0][id]': item.id, 'subscription_details[items][0][price]': 'price_nope' },
      400, 'resource_missing', 'subscription_details[items][0][price]'],
    [{ subscription: subscription.id, 'subscription_details[proration_date]': String(s - 1) }, 400, 'parameter_invalid', 'subscription_details[proration_date]'],
    [{ subscription: subscription.id, 'subscription_details[proration_date]': String(e) }, 400, 'parameter_invalid', 'subscription_details[proration_date]'],
    [{ subscription: subscription.id, 'subscription_details[proration_date]': 'soon' }, 400, 'parameter_invalid', 'subscription_details[proration_date]'],
    [{ subscription: subscription.id, 'subscription_details[proration_behavior]': 'later' }, 400, 'parameter_invalid', 'subscription_details[proration_behavior]'],
    [{ subscription: subscription.id, 'subscription_details[items][0][colour]': 'red' }, 400, 'parameter_unknown', 'subscription_details[items][0][colour]'],
    [{ subscription: subscription.id, 'subscription_details[pause]': 'x' }, 400, 'parameter_unknown', 'subscription_details[pause]'],
    [{ subscription: subscription.id, upcoming: 'true' }, 400, 'parameter_unknown', 'upcoming'],
    [{ subscription: subscription.id, customer: 'cus_other' }, 400, 'parameter_invalid', 'customer'],
  ];
  for (const [form, status, code, param] of cases) {
    assertStripeError(await stripe('POST', '/v1/invoices/create_preview', form), status, { type: 'invalid_request_error', code, param });
  }
  await stripe('DELETE', `/v1/subscriptions/${subscription.id}`);
  assertStripeError(await previewFor(subscription, {}), 400, { code: 'invoice_upcoming_none' });
  assertStripeError(await stripe('POST', '/v1/invoices/create_preview', { customer: subscription.customer }), 400, { code: 'invoice_upcoming_none' });
  assert.equal((await storedEvents()).length, eventCount + 1, 'only the cancellation emitted anything');
});

test('subscription update with proration_date bills what the preview showed', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const [s, e] = [item.current_period_start, item.current_period_end];
  const t = s + Math.floor((e - s) / 2);
  const preview = (await previewFor(subscription, {
    'subscription_details[items][0][id]': item.id,
    'subscription_details[items][0][price]': 'price_pro',
    'subscription_details[proration_behavior]': 'always_invoice',
    'subscription_details[proration_date]': String(t),
  })).body;
  const { credit, charge } = expectedProration({ a: 1000, b: 5000, s, e, t });
  assert.equal(preview.total, credit + charge);

  const url = `/v1/subscriptions/${subscription.id}`;
  assertStripeError(await stripe('POST', url, { 'items[0][id]': item.id, 'items[0][price]': 'price_pro', proration_date: String(e + 10) }),
    400, { code: 'parameter_invalid', param: 'proration_date' });
  const updated = await stripe('POST', url, {
    'items[0][id]': item.id, 'items[0][price]': 'price_pro', proration_behavior: 'always_invoice', proration_date: String(t),
  });
  assert.equal(updated.status, 200, updated.text);
  const invoice = await ctl('GET', `/_fake/objects/${updated.body.latest_invoice}`);
  assert.equal(invoice.billing_reason, 'subscription_update');
  assert.equal(invoice.status, 'paid');
  assert.equal(invoice.amount_due, preview.amount_due);
  assert.equal(invoice.amount_paid, preview.amount_due);
  assert.deepEqual(invoice.lines.data.map((l) => [l.amount, l.description, l.parent.subscription_item_details.proration]),
    preview.lines.data.map((l) => [l.amount, l.description, true]));
  assert.equal((await stripe('GET', `/v1/invoices/${invoice.id}`)).body.amount_paid, credit + charge);

  // create_prorations: pending invoice items, billed by the next invoice as previewed
  const back = {
    'subscription_details[items][0][id]': item.id,
    'subscription_details[items][0][price]': 'price_basic',
    'subscription_details[items][0][quantity]': '3',
    'subscription_details[proration_date]': String(t + 3600),
  };
  const upcoming = (await previewFor(subscription, back)).body;
  const down = expectedProration({ a: 5000, b: 1000, qb: 3, s, e, t: t + 3600 });
  assert.deepEqual(upcoming.lines.data.map((l) => l.amount), [down.credit, down.charge, 3000]);
  const before = (await storedEvents()).length;
  const changed = await stripe('POST', url, {
    'items[0][id]': item.id, 'items[0][price]': 'price_basic', 'items[0][quantity]': '3', proration_date: String(t + 3600),
  });
  assert.equal(changed.status, 200, changed.text);
  assert.equal(changed.body.latest_invoice, invoice.id, 'nothing billed now');
  const made = (await storedEvents()).slice(before);
  assert.deepEqual(made.map((ev) => ev.type), ['invoiceitem.created', 'invoiceitem.created', 'customer.subscription.updated']);
  const pendingId = (await stripe('GET', `/v1/events/${made[0].id}`)).body.data.object.id;
  const pendingItem = await ctl('GET', `/_fake/objects/${pendingId}`);
  assert.deepEqual([pendingItem.object, pendingItem.amount, pendingItem.proration, pendingItem.invoice], ['invoiceitem', down.credit, true, null]);
  // the preview now shows the pending items too, as Stripe's upcoming invoice does
  const withPending = (await previewFor(subscription, {})).body;
  assert.deepEqual(withPending.lines.data.map((l) => l.amount), [down.credit, down.charge, 3000]);

  const renewal = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  const next = await ctl('GET', `/_fake/objects/${renewal.subscription.latest_invoice}`);
  assert.equal(next.billing_reason, 'subscription_cycle');
  assert.equal(next.amount_due, upcoming.amount_due);
  assert.deepEqual(next.lines.data.map((l) => l.amount), upcoming.lines.data.map((l) => l.amount));
  assert.deepEqual(next.lines.data[2].period, upcoming.lines.data[2].period);
  assert.equal(next.lines.data[0].parent.subscription_item_details.invoice_item, pendingItem.id);
  assert.equal((await ctl('GET', `/_fake/objects/${pendingItem.id}`)).invoice, next.id);
  const after = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.equal((await ctl('GET', `/_fake/objects/${after.subscription.latest_invoice}`)).amount_due, 3000, 'billed once');

  // none: no prorations at all
  const quiet = await stripe('POST', url, { 'items[0][id]': item.id, 'items[0][quantity]': '1', proration_behavior: 'none' });
  assert.equal(quiet.status, 200);
  assert.deepEqual((await previewFor(subscription, {})).body.lines.data.map((l) => l.amount), [1000]);
});

test('invoice preview and update: a deleted item is only credited, a new one only charged', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const [s, e] = [item.current_period_start, item.current_period_end];
  const t = e - Math.floor((e - s) / 4);
  const form = (prefix) => ({
    [`${prefix}[0][id]`]: item.id,
    [`${prefix}[0][deleted]`]: 'true',
    [`${prefix}[1][price]`]: 'price_pro',
    [`${prefix}[1][quantity]`]: '3',
  });
  const { credit } = expectedProration({ a: 1000, b: 0, s, e, t });
  const { charge } = expectedProration({ a: 0, b: 5000, qb: 3, s, e, t });
  const preview = (await previewFor(subscription, {
    ...form('subscription_details[items]'), 'subscription_details[proration_date]': String(t),
  })).body;
  assert.deepEqual(preview.lines.data.map((l) => [l.amount, l.pricing.price_details.price, l.quantity]),
    [[credit, 'price_basic', 1], [charge, 'price_pro', 3], [15000, 'price_pro', 3]]);
  assert.match(preview.lines.data[1].description, /^Remaining time on 3 × Pro after /);
  assertStripeError(await previewFor(subscription, { 'subscription_details[items][0][deleted]': 'true' }), 400,
    { param: 'subscription_details[items][0][deleted]' });

  const updated = await stripe('POST', `/v1/subscriptions/${subscription.id}`, { ...form('items'), proration_date: String(t) });
  assert.equal(updated.status, 200, updated.text);
  assert.deepEqual(updated.body.items.data.map((i) => [i.price.id, i.quantity]), [['price_pro', 3]]);
  const renewal = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  const invoice = await ctl('GET', `/_fake/objects/${renewal.subscription.latest_invoice}`);
  assert.equal(invoice.amount_due, preview.amount_due);
  assert.equal(invoice.lines.data[1].parent.subscription_item_details.subscription_item, updated.body.items.data[0].id,
    'the new item\'s proration names it');
});

test('checkout sessions: customer_creation', async () => {
  await reset();
  const payment = { mode: 'payment', customer_email: 'guest@example.com', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1' };
  const subscription = { mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1' };
  const customer = (await stripe('POST', '/v1/customers', { email: 'known@example.com' })).body;
  const before = (await storedEvents()).length;
  assertStripeError(await stripe('POST', '/v1/checkout/sessions', { ...subscription, customer_creation: 'always' }), 400,
    { code: 'parameter_invalid', param: 'customer_creation', message: 'customer_creation can only be used in payment mode.' });
  const { customer_email: email, ...anonymous } = payment;
  assertStripeError(await stripe('POST', '/v1/checkout/sessions', { ...anonymous, customer: customer.id, customer_creation: 'always' }), 400,
    { code: 'parameter_invalid', param: 'customer_creation' });
  assertStripeError(await stripe('POST', '/v1/checkout/sessions', { ...payment, customer_creation: 'sometimes' }), 400,
    { code: 'parameter_invalid', param: 'customer_creation' });
  assert.equal((await storedEvents()).length, before);

  const always = await createSession({ ...payment, customer_creation: 'always' });
  assert.equal(always.customer_creation, 'always');
  const done = await ctl('POST', `/_fake/checkout/sessions/${always.id}/complete`, {});
  assert.equal((await eventTypes(done.events))[0], 'customer.created');
  assert.match(done.session.customer, /^cus_/);
  assert.equal(done.session.customer_details.email, 'guest@example.com');
  const intent = await ctl('GET', `/_fake/objects/${done.session.payment_intent}`);
  assert.equal(intent.customer, done.session.customer);
  assert.equal((await stripe('GET', `/v1/customers/${done.session.customer}`)).body.email, 'guest@example.com');

  const guest = await createSession({ ...payment, customer_creation: 'if_required' });
  assert.equal(guest.customer_creation, 'if_required');
  const paid = await ctl('POST', `/_fake/checkout/sessions/${guest.id}/complete`, {});
  assert.deepEqual(await eventTypes(paid.events),
    ['payment_intent.created', 'payment_intent.succeeded', 'charge.succeeded', 'checkout.session.completed']);
  assert.equal(paid.session.customer, null);
  assert.equal(paid.session.customer_details.email, 'guest@example.com');
  assert.equal((await ctl('GET', `/_fake/objects/${paid.session.payment_intent}`)).customer, null);

  // the hosted page completes the same way
  const page = await createSession({ ...payment, customer_creation: 'always', success_url: 'https://app.example/ok' });
  assert.equal((await call('POST', `/pay/${page.id}`, { auth: null })).status, 303);
  const completed = (await stripe('GET', `/v1/checkout/sessions/${page.id}`)).body;
  assert.match(completed.customer, /^cus_/);
  assert.equal((await ctl('GET', `/_fake/objects/${completed.payment_intent}`)).customer, completed.customer);

  const setup = await createSession({ mode: 'setup', customer_creation: 'always' });
  assert.equal(setup.customer_creation, 'always');
});

test('metadata limits, client_reference_id length and checkout enums', async () => {
  await reset();
  const session = { mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1' };
  const many = (prefix, n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`${prefix}[k${i}]`, 'v']));
  const customer = (await stripe('POST', '/v1/customers', { ...many('metadata', 50) })).body;
  assert.equal(Object.keys(customer.metadata).length, 50, '50 keys are fine');
  const before = (await storedEvents()).length;
  const refused = [
    ['/v1/customers', many('metadata', 51), 'metadata', /up to 50 keys/],
    [`/v1/customers/${customer.id}`, { 'metadata[one_more]': 'v' }, 'metadata', /up to 50 keys, but you've set 51/],
    ['/v1/customers', { [`metadata[${'k'.repeat(41)}]`]: 'v' }, `metadata[${'k'.repeat(41)}]`, /40 characters/],
    ['/v1/customers', { 'metadata[k]': 'v'.repeat(501) }, 'metadata[k]', /500 characters/],
    ['/v1/customers', { 'metadata[a[b]': 'v' }, 'metadata[a[b]', /\[/],
    ['/v1/customers', { 'metadata[team][id]': 't1' }, 'metadata[team]', /Invalid string/],
    ['/v1/checkout/sessions', { ...session, ...many('subscription_data[metadata]', 51) }, 'subscription_data[metadata]', /50 keys/],
    ['/v1/checkout/sessions', { ...session, 'subscription_data[metadata][k]': 'v'.repeat(501) }, 'subscription_data[metadata][k]', /500/],
    ['/v1/checkout/sessions', { mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1',
      [`payment_intent_data[metadata][${'p'.repeat(41)}]`]: 'v' }, `payment_intent_data[metadata][${'p'.repeat(41)}]`, /40/],
    ['/v1/checkout/sessions', { ...session, 'line_items[0][metadata][k]': 'v'.repeat(501) }, 'line_items[0][metadata][k]', /500/],
    ['/v1/checkout/sessions', { ...session, client_reference_id: 'r'.repeat(201) }, 'client_reference_id', /at most 200 characters/],
    ['/v1/checkout/sessions', { ...session, billing_address_collection: 'sometimes' }, 'billing_address_collection', /auto, required/],
    ['/v1/checkout/sessions', { ...session, payment_method_collection: 'never' }, 'payment_method_collection', /always, if_required/],
    ['/v1/checkout/sessions', { mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1',
      payment_method_collection: 'if_required' }, 'payment_method_collection', /subscription mode/],
    ['/v1/checkout/sessions', { ...session, allow_promotion_codes: 'yes' }, 'allow_promotion_codes', /boolean/],
  ];
  for (const [urlPath, form, param, message] of refused) {
    const res = await stripe('POST', urlPath, form);
    assertStripeError(res, 400, { type: 'invalid_request_error', code: 'parameter_invalid', param });
    assert.match(res.body.error.message, message, `${param}: ${res.body.error.message}`);
  }
  assert.equal((await storedEvents()).length, before, 'nothing changed');
  const { subscription } = await subscribe();
  assertStripeError(await stripe('POST', `/v1/subscriptions/${subscription.id}`, { 'items[0][id]': subscription.items.data[0].id, 'items[0][metadata][k]': 'v'.repeat(501) }),
    400, { param: 'items[0][metadata][k]' });
  assertStripeError(await stripe('POST', `/v1/subscriptions/${subscription.id}`, many('metadata', 51)), 400, { param: 'metadata' });

  const ok = await createSession({
    ...session, client_reference_id: 'r'.repeat(200), billing_address_collection: 'required', payment_method_collection: 'if_required',
    [`metadata[${'k'.repeat(40)}]`]: 'v'.repeat(500),
  });
  assert.deepEqual([ok.client_reference_id.length, ok.billing_address_collection, ok.payment_method_collection], [200, 'required', 'if_required']);
  assert.equal(ok.metadata['k'.repeat(40)].length, 500);
});

test('strict parameters: unknown names are refused on every POST and DELETE, documented ones accepted', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const customer = (await stripe('POST', '/v1/customers', { email: 's@example.com' })).body;
  const session = { mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1' };
  const meter = { event_name: 'e', 'payload[stripe_customer_id]': 'cus_1', 'payload[value]': '1' };
  const sub = `/v1/subscriptions/${subscription.id}`;
  const before = (await storedEvents()).length;
  const unknown = [
    ['POST', '/v1/customers', { email: 'x@example.com', nickname: 'x' }, 'nickname'],
    ['POST', `/v1/customers/${customer.id}`, { default_payment_method: 'pm_1' }, 'default_payment_method'],
    ['DELETE', `/v1/customers/${customer.id}`, { invoice_now: 'true' }, 'invoice_now'],
    ['POST', '/v1/checkout/sessions', { ...session, trial_period_days: '7' }, 'trial_period_days'],
    ['POST', '/v1/checkout/sessions', { ...session, 'line_items[0][product]': 'prod_basic' }, 'line_items[0][product]'],
    ['POST', '/v1/checkout/sessions', { ...session, 'subscription_data[trial_days]': '7' }, 'subscription_data[trial_days]'],
    ['POST', '/v1/checkout/sessions', { mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1',
      'payment_intent_data[customer]': 'cus_1' }, 'payment_intent_data[customer]'],
    ['POST', '/v1/billing_portal/sessions', { customer: customer.id, success_url: 'https://x' }, 'success_url'],
    ['POST', sub, { prorate: 'true' }, 'prorate'],
    ['POST', sub, { 'items[0][id]': item.id, 'items[0][plan]': 'price_pro' }, 'items[0][plan]'],
    ['POST', sub, { 'cancellation_details[reason]': 'other' }, 'cancellation_details[reason]'],
    ['DELETE', sub, { cancel_at_period_end: 'true' }, 'cancel_at_period_end'],
    ['POST', '/v1/billing/meter_events', { ...meter, value: '1' }, 'value'],
    ['POST', '/v1/billing/meter_events', { ...meter, 'payload[region]': 'eu' }, 'payload[region]'],
    ['POST', '/v1/invoices/create_preview', { subscription: subscription.id, subscription_items: 'x' }, 'subscription_items'],
  ];
  for (const [method, urlPath, form, param] of unknown) {
    const res = await stripe(method, urlPath, form);
    assertStripeError(res, 400, { type: 'invalid_request_error', code: 'parameter_unknown', param, message: `Received unknown parameter: ${param}` });
  }
  // unknown names win over bad values of known ones, as Stripe checks the names first
  assertStripeError(await stripe('POST', '/v1/checkout/sessions', { mode: 'bogus', zzz: '1' }), 400, { code: 'parameter_unknown', param: 'zzz' });
  const enums = [
    ['POST', sub, { payment_behavior: 'sometimes' }, 'payment_behavior'],
    ['POST', sub, { collection_method: 'cash' }, 'collection_method'],
    ['POST', sub, { 'cancellation_details[feedback]': 'meh' }, 'cancellation_details[feedback]'],
    ['POST', sub, { 'items[0][id]': item.id, 'items[0][deleted]': 'perhaps' }, 'items[0][deleted]'],
    ['DELETE', sub, { invoice_now: 'soon' }, 'invoice_now'],
    ['POST', '/v1/customers', { tax_exempt: 'always' }, 'tax_exempt'],
    ['POST', '/v1/checkout/sessions', { ...session, 'subscription_data[proration_behavior]': 'always_invoice' }, 'subscription_data[proration_behavior]'],
    ['POST', '/v1/checkout/sessions', { ...session, submit_type: 'buy' }, 'submit_type'],
  ];
  for (const [method, urlPath, form, param] of enums) {
    assertStripeError(await stripe(method, urlPath, form), 400, { type: 'invalid_request_error', code: 'parameter_invalid', param });
  }
  assert.equal((await storedEvents()).length, before, 'refused requests change nothing');

  // documented parameters the fake does not model are accepted and ignored; expand[] everywhere
  const accepted = [
    ['POST', '/v1/customers', { email: 'y@example.com', preferred_locales: 'fr', 'invoice_settings[footer]': 'x', 'expand[]': 'tax' }],
    ['POST', `/v1/customers/${customer.id}`, { balance: '0', tax_exempt: 'none' }],
    ['POST', '/v1/checkout/sessions', { ...session, locale: 'auto', 'automatic_tax[enabled]': 'true', ui_mode: 'hosted',
      'subscription_data[description]': 'd', 'line_items[0][tax_rates][0]': 'txr_1', billing_address_collection: 'auto',
      'expand[]': 'line_items' }],
    ['POST', '/v1/billing_portal/sessions', { customer: customer.id, locale: 'auto', configuration: 'bpc_1' }],
    ['POST', sub, { payment_behavior: 'allow_incomplete', collection_method: 'charge_automatically', off_session: 'true',
      description: 'd', 'cancellation_details[comment]': 'fine', 'cancellation_details[feedback]': 'other' }],
    ['POST', '/v1/invoices/create_preview', { subscription: subscription.id, preview_mode: 'next', 'automatic_tax[enabled]': 'false' }],
    ['POST', '/v1/billing/meter_events', { ...meter, 'expand[]': 'x' }],
  ];
  for (const [method, urlPath, form] of accepted) {
    const res = await stripe(method, urlPath, form);
    assert.equal(res.status, 200, `${method} ${urlPath}: ${res.text}`);
  }
  const noted = (await stripe('GET', sub)).body.cancellation_details;
  assert.deepEqual([noted.comment, noted.feedback], ['fine', 'other']);
  const canceled = await stripe('DELETE', sub, { invoice_now: 'false', prorate: 'false', 'cancellation_details[feedback]': 'too_expensive' });
  assert.equal(canceled.status, 200, canceled.text);
  assert.deepEqual([canceled.body.status, canceled.body.cancellation_details.feedback, canceled.body.cancellation_details.reason],
    ['canceled', 'too_expensive', 'cancellation_requested']);
  assert.equal((await stripe('DELETE', `/v1/customers/${customer.id}`)).status, 200);
});

test('strict parameters: every request the extension and the repo tests send is accepted', async () => {
  await reset();
  const note = 'café ☕ & a=b+c %20 ü';
  // stripe_create_checkout, subscription and payment (test/integration/api_calls.sh, bench/checkout.sh)
  const checkout = new URLSearchParams([
    ['mode', 'subscription'], ['line_items[0][price]', 'price_basic'], ['line_items[0][quantity]', '2'],
    ['success_url', 'https://app.example/ok?session={CHECKOUT_SESSION_ID}&x=1'], ['cancel_url', 'https://app.example/cancel'],
    ['client_reference_id', 'u_sub'], ['metadata[user_ref]', 'u_sub'], ['metadata[plan]', 'pro'], ['metadata[note]', note],
    ['metadata[seats]', '5'], ['metadata[beta]', 'true'], ['customer_email', 'sub@example.com'], ['allow_promotion_codes', 'true'],
    ['subscription_data[metadata][user_ref]', 'u_sub'], ['subscription_data[trial_period_days]', '14'],
  ]).toString();
  const sub = await stripe('POST', '/v1/checkout/sessions', checkout);
  assert.equal(sub.status, 200, sub.text);
  const pay = await stripe('POST', '/v1/checkout/sessions', {
    mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1', success_url: 'https://app.example/paid',
    cancel_url: 'https://app.example/back', client_reference_id: 'u_pay', 'metadata[user_ref]': 'u_pay',
    'payment_intent_data[metadata][user_ref]': 'u_pay',
  });
  assert.equal(pay.status, 200, pay.text);
  await ctl('POST', '/_fake/objects', { object: { id: 'cus_x', object: 'customer', email: 'x@example.com' } });
  const linked = await stripe('POST', '/v1/checkout/sessions', {
    mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1', success_url: 'https://app.example/ok',
    cancel_url: 'https://app.example/cancel', client_reference_id: 'u1', 'metadata[user_ref]': 'u1', customer: 'cus_x',
    'subscription_data[metadata][user_ref]': 'u1',
  });
  assert.equal(linked.status, 200, linked.text);
  // stripe_create_checkout's discount: a promotion code or a coupon (test/integration/api_calls.sh)
  await ctl('POST', '/_fake/objects', { objects: [
    { id: 'SPRING', object: 'coupon', percent_off: 10, valid: true },
    { id: 'promo_spring', object: 'promotion_code', code: 'SPRING', active: true, promotion: { type: 'coupon', coupon: 'SPRING' } },
  ] });
  for (const [name, value] of [['discounts[0][coupon]', 'SPRING'], ['discounts[0][promotion_code]', 'promo_spring']]) {
    const discounted = await stripe('POST', '/v1/checkout/sessions', {
      mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1', success_url: 'https://app.example/ok',
      cancel_url: 'https://app.example/cancel', client_reference_id: 'u1', 'metadata[user_ref]': 'u1', customer: 'cus_x',
      [name]: value, 'subscription_data[metadata][user_ref]': 'u1',
    });
    assert.equal(discounted.status, 200, discounted.text);
  }
  // stripe_create_portal_session, customers (stripe_api, test/integration/backfill.sh)
  assert.equal((await stripe('POST', '/v1/billing_portal/sessions', { customer: 'cus_x', return_url: 'https://app.example/account' })).status, 200);
  assert.equal((await stripe('POST', '/v1/customers', { email: 'retry@example.com', 'metadata[user_ref]': 'u_retry' })).status, 200);
  assert.equal((await stripe('POST', '/v1/customers', { 'metadata[after]': 'expiry' })).status, 200);
  assert.equal((await stripe('POST', '/v1/customers', '')).status, 200);
  // stripe_cancel_subscription / resume / change_price (test/integration/api_calls.sh, test/integration/backfill.sh)
  const done = await ctl('POST', `/_fake/checkout/sessions/${sub.body.id}/complete`, {});
  const subscription = (await stripe('GET', `/v1/subscriptions/${done.session.subscription}`)).body;
  const url = `/v1/subscriptions/${subscription.id}`;
  for (const form of [
    { cancel_at_period_end: 'true' },
    { cancel_at_period_end: 'false' },
    { 'metadata[during]': 'x', cancel_at_period_end: 'true' },
    { 'items[0][id]': subscription.items.data[0].id, 'items[0][price]': 'price_pro', 'items[0][quantity]': '3', proration_behavior: 'none' },
    { 'items[0][id]': subscription.items.data[0].id, 'items[0][price]': 'price_basic', proration_behavior: 'create_prorations' },
    { 'items[0][id]': subscription.items.data[0].id, 'items[0][price]': 'price_pro', proration_behavior: 'always_invoice' },
  ]) {
    const res = await stripe('POST', url, form);
    assert.equal(res.status, 200, `${JSON.stringify(form)}: ${res.text}`);
  }
  // stripe_send_usage
  const usage = await stripe('POST', '/v1/billing/meter_events', {
    event_name: 'wt_api_calls', identifier: 'sb_usage_1', timestamp: String(Math.floor(Date.now() / 1000) - 60),
    'payload[stripe_customer_id]': 'cus_x', 'payload[value]': '424242',
  }, { headers: { 'Idempotency-Key': 'sb_usage_1' } });
  assert.equal(usage.status, 200, usage.text);
  assert.equal((await stripe('DELETE', url, '')).status, 200);
  assert.equal((await stripe('DELETE', '/v1/customers/cus_x')).status, 200);
});

// ---- subscription schedules, paused collection, item rules (issue 27, part A) ----

test('subscription schedules: made from a subscription, phases updated, entered at the renewal, released by the last', async () => {
  await reset();
  const { subscription } = await subscribe({ price: 'price_pro' });
  const [item] = subscription.items.data;
  const { current_period_start: start, current_period_end: end } = item;
  const mark = (await storedEvents()).length;

  const made = await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id });
  assert.equal(made.status, 200, made.text);
  const schedule = made.body;
  assert.match(schedule.id, /^sub_sched_/);
  assert.equal(schedule.object, 'subscription_schedule');
  assert.deepEqual([schedule.status, schedule.subscription, schedule.customer, schedule.end_behavior],
    ['active', subscription.id, subscription.customer, 'release']);
  assert.deepEqual(schedule.current_phase, { start_date: start, end_date: end });
  assert.equal(schedule.phases.length, 1);
  assert.deepEqual([schedule.phases[0].start_date, schedule.phases[0].end_date], [start, end]);
  assert.deepEqual(schedule.phases[0].items.map((i) => [i.price, i.quantity]), [['price_pro', 1]]);
  assert.equal((await stripe('GET', `/v1/subscriptions/${subscription.id}`)).body.schedule, schedule.id);
  const expanded = (await stripe('GET', `/v1/subscriptions/${subscription.id}?expand[0]=schedule`)).body;
  assert.equal(expanded.schedule.id, schedule.id);
  assert.equal(expanded.schedule.object, 'subscription_schedule');
  let added = (await storedEvents()).slice(mark);
  assert.deepEqual(added.map((e) => e.type), ['subscription_schedule.created', 'customer.subscription.updated']);
  let [updated] = (await stripe('GET', '/v1/events?type=customer.subscription.updated&limit=1')).body.data;
  assert.deepEqual(updated.data.previous_attributes, { schedule: null });

  // a second schedule of the same subscription, and other refusals: no side effects
  const url = `/v1/subscription_schedules/${schedule.id}`;
  const before = (await storedEvents()).length;
  assertStripeError(await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id }), 400,
    { code: 'parameter_invalid', param: 'from_subscription' });
  assertStripeError(await stripe('POST', '/v1/subscription_schedules', { from_subscription: 'sub_nope' }), 400,
    { code: 'resource_missing', param: 'from_subscription' });
  assertStripeError(await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id, 'phases[0][items][0][price]': 'price_basic' }), 400,
    { code: 'parameter_invalid', param: 'phases' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_basic', 'phases[0][start_date]': String(start),
    'phases[0][end_date]': String(end) }), 400, { param: 'phases[0][items]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][start_date]': String(start + 1) }), 400,
    { param: 'phases[0][start_date]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][end_date]': String(end),
    'phases[1][items][0][price]': 'price_onetime' }), 400, { param: 'phases[1][items][0][price]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][end_date]': String(end),
    'phases[1][items][0][price]': 'price_basic', 'phases[1][end_date]': String(end) }), 400, { param: 'phases[1][end_date]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro',
    'phases[1][items][0][price]': 'price_basic' }), 400, { code: 'parameter_missing', param: 'phases[0][end_date]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][end_date]': String(end),
    'phases[1][items][0][price]': 'price_basic', 'phases[1][proration_behavior]': 'sometimes' }), 400,
    { code: 'parameter_invalid', param: 'phases[1][proration_behavior]' });
  assertStripeError(await stripe('POST', url, { 'phases[0][bogus]': '1' }), 400, { code: 'parameter_unknown', param: 'phases[0][bogus]' });
  assertStripeError(await stripe('GET', '/v1/subscription_schedules/sub_sched_nope'), 404, { code: 'resource_missing' });
  assert.equal((await storedEvents()).length, before, 'refused requests change nothing');

  // the downgrade: the current phase as it is, then price_basic x 2 from its end, one month, no prorations
  const change = await stripe('POST', url, {
    end_behavior: 'release', proration_behavior: 'none',
    'phases[0][items][0][price]': 'price_pro', 'phases[0][items][0][quantity]': '1',
    'phases[0][start_date]': String(start), 'phases[0][end_date]': String(end),
    'phases[1][items][0][price]': 'price_basic', 'phases[1][items][0][quantity]': '2', 'phases[1][proration_behavior]': 'none',
  });
  assert.equal(change.status, 200, change.text);
  assert.equal(change.body.phases.length, 2);
  const next = change.body.phases[1];
  assert.deepEqual([next.start_date, next.items[0].price, next.items[0].quantity, next.proration_behavior],
    [end, 'price_basic', 2, 'none']);
  assert.ok(next.end_date - next.start_date >= 28 * DAY && next.end_date - next.start_date <= 31 * DAY, 'one month');
  let [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'subscription_schedule.updated');
  assert.equal(event.data.previous_attributes.phases.length, 1);
  assert.equal((await stripe('GET', `/v1/subscriptions/${subscription.id}`)).body.items.data[0].price.id, 'price_pro',
    'nothing changes before the phase starts');
  // duration and iterations give a phase's length too
  for (const [form, months] of [[{ 'phases[1][duration][interval]': 'month', 'phases[1][duration][interval_count]': '2' }, 2],
    [{ 'phases[1][iterations]': '3' }, 3]]) {
    const res = await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][end_date]': String(end),
      'phases[1][items][0][price]': 'price_basic', 'phases[1][items][0][quantity]': '2', ...form });
    assert.equal(res.status, 200, res.text);
    const days = (res.body.phases[1].end_date - end) / DAY;
    assert.ok(days >= months * 28 && days <= months * 31, `${months} months: ${days} days`);
  }
  assert.equal((await stripe('POST', url, { 'phases[0][items][0][price]': 'price_pro', 'phases[0][end_date]': String(end),
    'phases[1][items][0][price]': 'price_basic', 'phases[1][items][0][quantity]': '2' })).status, 200);

  // the renewal enters the phase: the item's price, the invoice, the events
  const mark2 = (await storedEvents()).length;
  const renewed = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.deepEqual(await eventTypes(renewed.events), [
    'subscription_schedule.updated', 'invoice.created', 'invoice.finalized', 'invoice.paid', 'invoice.payment_succeeded',
    'customer.subscription.updated',
  ]);
  const [newItem] = renewed.subscription.items.data;
  assert.deepEqual([newItem.price.id, newItem.quantity, newItem.current_period_start], ['price_basic', 2, end]);
  assert.notEqual(newItem.id, item.id, 'a new price is a new item');
  const invoice = await ctl('GET', `/_fake/objects/${renewed.subscription.latest_invoice}`);
  assert.equal(invoice.amount_paid, 2000, 'the renewal bills the new phase: 2 x price_basic');
  [updated] = (await stripe('GET', '/v1/events?type=customer.subscription.updated&limit=1')).body.data;
  assert.equal(updated.data.previous_attributes.items.data[0].price.id, 'price_pro');
  const entered = (await stripe('GET', url)).body;
  assert.deepEqual(entered.current_phase, { start_date: next.start_date, end_date: next.end_date });
  assert.equal((await storedEvents()).length - mark2, 6);

  // past its last phase the schedule releases the subscription, which stays on price_basic
  const released = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.deepEqual((await eventTypes(released.events))[0], 'subscription_schedule.released');
  assert.equal(released.subscription.schedule, null);
  assert.equal(released.subscription.items.data[0].price.id, 'price_basic');
  const done = (await stripe('GET', url)).body;
  assert.deepEqual([done.status, done.subscription, done.released_subscription, done.current_phase],
    ['released', null, subscription.id, null]);
  assert.ok(done.released_at > 0);
  assertStripeError(await stripe('POST', `${url}/release`), 400, { type: 'invalid_request_error' });
  assertStripeError(await stripe('POST', url, { end_behavior: 'cancel' }), 400, { type: 'invalid_request_error' });

  // listed newest first, by customer
  const list = (await stripe('GET', `/v1/subscription_schedules?customer=${subscription.customer}`)).body;
  assert.deepEqual(list.data.map((s) => s.id), [schedule.id]);
  assert.equal((await stripe('GET', '/v1/subscription_schedules?customer=cus_none')).body.data.length, 0);
});

test('subscription schedules: release keeps the subscription, cancel ends it, end_behavior cancel ends it with the last phase', async () => {
  await reset();
  // released: the schedule lets go, no later phase happens
  let { subscription } = await subscribe();
  let schedule = (await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id })).body;
  const end = subscription.items.data[0].current_period_end;
  await stripe('POST', `/v1/subscription_schedules/${schedule.id}`, { 'phases[0][items][0][price]': 'price_basic',
    'phases[0][end_date]': String(end), 'phases[1][items][0][price]': 'price_pro' });
  const mark = (await storedEvents()).length;
  const released = await stripe('POST', `/v1/subscription_schedules/${schedule.id}/release`, { preserve_cancel_date: 'true' });
  assert.equal(released.status, 200, released.text);
  assert.deepEqual([released.body.status, released.body.released_subscription], ['released', subscription.id]);
  assert.deepEqual((await storedEvents()).slice(mark).map((e) => e.type), ['subscription_schedule.released', 'customer.subscription.updated']);
  const renewed = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.equal(renewed.subscription.items.data[0].price.id, 'price_basic', 'a released schedule changes nothing');
  assert.ok(!(await eventTypes(renewed.events)).some((t) => t.startsWith('subscription_schedule.')));

  // canceled: the subscription ends now
  ({ subscription } = await subscribe());
  schedule = (await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id })).body;
  const canceled = await stripe('POST', `/v1/subscription_schedules/${schedule.id}/cancel`, { invoice_now: 'false' });
  assert.equal(canceled.status, 200, canceled.text);
  assert.equal(canceled.body.status, 'canceled');
  assert.equal((await stripe('GET', `/v1/subscriptions/${subscription.id}`)).body.status, 'canceled');

  // end_behavior cancel: the subscription ends when the last phase does
  ({ subscription } = await subscribe());
  schedule = (await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id })).body;
  assert.equal((await stripe('POST', `/v1/subscription_schedules/${schedule.id}`, { end_behavior: 'cancel' })).status, 200);
  const ended = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.deepEqual(await eventTypes(ended.events), ['subscription_schedule.completed', 'customer.subscription.deleted']);
  assert.equal((await stripe('GET', `/v1/subscription_schedules/${schedule.id}`)).body.status, 'completed');

  // canceling a subscription cancels its schedule
  ({ subscription } = await subscribe());
  schedule = (await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id })).body;
  const mark2 = (await storedEvents()).length;
  assert.equal((await stripe('DELETE', `/v1/subscriptions/${subscription.id}`)).status, 200);
  assert.deepEqual((await storedEvents()).slice(mark2).map((e) => e.type), ['subscription_schedule.canceled', 'customer.subscription.deleted']);
  assert.equal((await stripe('GET', `/v1/subscription_schedules/${schedule.id}`)).body.status, 'canceled');
  assertStripeError(await stripe('POST', '/v1/subscription_schedules', { from_subscription: subscription.id }), 400,
    { param: 'from_subscription' });
  assertStripeError(await stripe('POST', '/v1/subscription_schedules', { customer: subscription.customer }), 400,
    { param: 'customer' });
});

test('paused collection: pause and resume, renewals not charged by behavior, resumes_at ends it', async () => {
  await reset();
  const { subscription } = await subscribe();
  const url = `/v1/subscriptions/${subscription.id}`;
  const mark = (await storedEvents()).length;
  assertStripeError(await stripe('POST', url, { 'pause_collection[behavior]': 'sleep' }), 400,
    { code: 'parameter_invalid', param: 'pause_collection[behavior]' });
  assertStripeError(await stripe('POST', url, { 'pause_collection[resumes_at]': '4102444800' }), 400,
    { code: 'parameter_missing', param: 'pause_collection[behavior]' });
  assertStripeError(await stripe('POST', url, { 'pause_collection[behavior]': 'void', 'pause_collection[resumes_at]': '1000' }), 400,
    { code: 'parameter_invalid', param: 'pause_collection[resumes_at]' });
  assert.equal((await storedEvents()).length, mark, 'refused pauses emit nothing');

  const paused = await stripe('POST', url, { 'pause_collection[behavior]': 'void' });
  assert.equal(paused.status, 200, paused.text);
  assert.deepEqual([paused.body.status, paused.body.pause_collection], ['active', { behavior: 'void', resumes_at: null }]);
  let [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.updated');
  assert.deepEqual(event.data.previous_attributes, { pause_collection: null });

  for (const [behavior, types, status] of [
    ['void', ['invoice.created', 'invoice.finalized', 'invoice.voided', 'customer.subscription.updated'], 'void'],
    ['keep_as_draft', ['invoice.created', 'customer.subscription.updated'], 'draft'],
    ['mark_uncollectible', ['invoice.created', 'invoice.finalized', 'invoice.marked_uncollectible', 'customer.subscription.updated'], 'uncollectible'],
  ]) {
    assert.equal((await stripe('POST', url, { 'pause_collection[behavior]': behavior })).status, 200);
    const renewed = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
    assert.deepEqual(await eventTypes(renewed.events), types, behavior);
    const invoice = await ctl('GET', `/_fake/objects/${renewed.subscription.latest_invoice}`);
    assert.deepEqual([invoice.status, invoice.amount_paid], [status, 0], behavior);
    assert.equal(renewed.subscription.status, 'active');
  }

  const unpaused = await stripe('POST', url, { pause_collection: '' });
  assert.equal(unpaused.status, 200, unpaused.text);
  assert.equal(unpaused.body.pause_collection, null);
  [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.deepEqual(event.data.previous_attributes, { pause_collection: { behavior: 'mark_uncollectible', resumes_at: null } });

  // a pause with resumes_at ends at the renewal after it
  const period = (await stripe('GET', url)).body.items.data[0];
  const until = period.current_period_end - 60;
  const timed = await stripe('POST', url, { 'pause_collection[behavior]': 'keep_as_draft', 'pause_collection[resumes_at]': String(until) });
  assert.deepEqual(timed.body.pause_collection, { behavior: 'keep_as_draft', resumes_at: until });
  const resumed = await ctl('POST', `/_fake/subscriptions/${subscription.id}/advance`, { status: 'active', new_period: true });
  assert.equal(resumed.subscription.pause_collection, null);
  assert.equal((await ctl('GET', `/_fake/objects/${resumed.subscription.latest_invoice}`)).status, 'paid');

  await stripe('DELETE', url);
  assertStripeError(await stripe('POST', url, { 'pause_collection[behavior]': 'void' }), 400, { type: 'invalid_request_error' });
});

test('subscription items: added, removed and given a quantity by an update; the last one and a repeated price refused', async () => {
  await reset();
  const { subscription } = await subscribe();
  const [item] = subscription.items.data;
  const url = `/v1/subscriptions/${subscription.id}`;
  const mark = (await storedEvents()).length;
  assertStripeError(await stripe('POST', url, { 'items[0][id]': item.id, 'items[0][deleted]': 'true' }), 400,
    { code: 'parameter_invalid', param: 'items' });
  assertStripeError(await stripe('POST', url, { 'items[0][price]': 'price_basic' }), 400,
    { code: 'parameter_invalid', param: 'items[0][price]' });
  assertStripeError(await stripe('POST', '/v1/invoices/create_preview', { subscription: subscription.id,
    'subscription_details[items][0][price]': 'price_basic' }), 400, { param: 'subscription_details[items][0][price]' });
  assert.equal((await storedEvents()).length, mark, 'refused changes emit nothing');

  const added = await stripe('POST', url, { 'items[0][price]': 'price_pro', 'items[0][quantity]': '3', proration_behavior: 'none' });
  assert.equal(added.status, 200, added.text);
  const seat = added.body.items.data.find((i) => i.price.id === 'price_pro');
  assert.equal(seat.quantity, 3);
  let [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.updated');
  assert.deepEqual(event.data.previous_attributes.items.data.map((i) => i.id), [item.id]);

  const more = await stripe('POST', url, { 'items[0][id]': seat.id, 'items[0][quantity]': '5', proration_behavior: 'create_prorations' });
  assert.equal(more.body.items.data.find((i) => i.id === seat.id).quantity, 5);
  const fewer = await stripe('POST', url, { 'items[0][id]': seat.id, 'items[0][deleted]': 'true', proration_behavior: 'none' });
  assert.deepEqual(fewer.body.items.data.map((i) => i.id), [item.id]);
  [event] = (await stripe('GET', '/v1/events?limit=1')).body.data;
  assert.equal(event.type, 'customer.subscription.updated');
  assert.equal(event.data.previous_attributes.items.data.length, 2);
});

// ---- Stripe Connect ----

const PLATFORM_ID = 'acct_1FakePlatform001';
// Options that send a request as (on behalf of) a connected account.
const as = (account, opts = {}) => ({ ...opts, headers: { ...(opts.headers || {}), 'Stripe-Account': account } });

async function seedAccounts(body) {
  const res = await call('POST', '/_fake/accounts', { json: body, auth: null });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

// The key shows masked, as Stripe masks it (KEY is short: all stars).
function assertAccountInvalid(res, account) {
  assertStripeError(res, 403, { type: 'invalid_request_error', code: 'account_invalid' });
  assert.equal(res.body.error.message, `The provided key '${'*'.repeat(KEY.length)}' does not have access to account '${account}' `
    + '(or that account does not exist). Application access may have been revoked.');
  assert.equal(res.body.error.doc_url, 'https://stripe.com/docs/error-codes/account-invalid');
}

test('connect: 1,000 accounts in one control call, listed by GET /v1/accounts page by page, retrieved', async () => {
  await reset();
  const started = performance.now();
  const seeded = await seedAccounts({ count: 1000, created: 1_700_000_000 });
  const elapsed = performance.now() - started;
  assert.ok(elapsed < 3000, `1,000 accounts took ${elapsed} ms`);
  assert.equal(seeded.created, 1000);
  assert.equal(new Set(seeded.ids).size, 1000);
  for (const id of seeded.ids) assert.match(id, /^acct_1[A-Za-z0-9]{15}$/);

  const listed = await listAll('/v1/accounts');
  assert.equal(listed.url, '/v1/accounts');
  assert.equal(listed.pages, 10);
  assert.deepEqual(listed.ids, [...seeded.ids].reverse(), 'newest first');
  const [newest] = listed.objects;
  assert.equal(newest.object, 'account');
  assert.deepEqual([newest.business_profile.name, newest.email, newest.created], ['Account 1000', 'owner1000@example.com', 1_700_000_999]);
  assert.deepEqual([newest.type, newest.controller, newest.country, newest.default_currency],
    ['standard', { type: 'account' }, 'US', 'usd']);
  assert.deepEqual([newest.charges_enabled, newest.payouts_enabled, newest.details_submitted, newest.requirements.currently_due],
    [true, true, true, []]);
  const range = await stripe('GET', '/v1/accounts?created[gte]=1700000990&limit=100');
  assert.equal(range.body.data.length, 10);
  assertStripeError(await stripe('GET', '/v1/accounts?starting_after=acct_nope'), 404,
    { code: 'resource_missing', param: 'starting_after', message: "No such account: 'acct_nope'" });

  // explicit accounts, with fields; one retrieves itself, not another
  const explicit = await seedAccounts({ accounts: [
    { id: 'acct_alpha', name: 'Alpha GmbH', country: 'DE', default_currency: 'eur' },
    { id: 'acct_beta', type: 'express', charges_enabled: false, details_submitted: false, currently_due: ['external_account'] },
  ] });
  assert.deepEqual(explicit, { created: 2, ids: ['acct_alpha', 'acct_beta'] });
  const alpha = (await stripe('GET', '/v1/accounts/acct_alpha')).body;
  assert.deepEqual([alpha.id, alpha.business_profile.name, alpha.settings.dashboard.display_name, alpha.country, alpha.default_currency],
    ['acct_alpha', 'Alpha GmbH', 'Alpha GmbH', 'DE', 'eur']);
  assert.equal(alpha.external_accounts.url, '/v1/accounts/acct_alpha/external_accounts');
  const beta = (await stripe('GET', '/v1/accounts/acct_beta')).body;
  assert.deepEqual([beta.type, beta.controller.type, beta.controller.is_controller, beta.charges_enabled, beta.details_submitted],
    ['express', 'application', true, false, false]);
  assert.deepEqual([beta.requirements.currently_due, beta.requirements.disabled_reason, beta.capabilities.card_payments],
    [['external_account'], 'requirements.past_due', 'inactive']);
  assert.equal((await stripe('GET', '/v1/accounts/acct_beta', undefined, as('acct_beta'))).body.id, 'acct_beta');
  assertAccountInvalid(await stripe('GET', '/v1/accounts/acct_alpha', undefined, as('acct_beta')), 'acct_alpha');
  assertAccountInvalid(await stripe('GET', '/v1/accounts/acct_nope'), 'acct_nope');
  // GET /v1/account is the account a request acts on; a connected account lists no accounts
  assert.equal((await stripe('GET', '/v1/account')).body.id, PLATFORM_ID);
  assert.equal((await stripe('GET', '/v1/accounts/' + PLATFORM_ID)).body.id, PLATFORM_ID);
  assert.equal((await stripe('GET', '/v1/account', undefined, as('acct_alpha'))).body.id, 'acct_alpha');
  const none = await stripe('GET', '/v1/accounts', undefined, as('acct_alpha'));
  assert.deepEqual([none.status, none.body.data, none.body.has_more], [200, [], false]);
  // the control API shows every account, with whether the platform reaches it
  const all = await ctl('GET', '/_fake/accounts');
  assert.equal(all.length, 1002);
  assert.deepEqual(all.at(-1), { id: 'acct_beta', authorized: true, name: 'Account 1002', type: 'express', created: beta.created });
  assert.deepEqual(await ctl('GET', '/_fake/objects/acct_beta'), beta);

  // the same calls on a fresh fake make the same accounts
  await reset();
  assert.deepEqual((await seedAccounts({ count: 1000, created: 1_700_000_000 })).ids, seeded.ids);
  assert.notDeepEqual((await seedAccounts({ count: 3 })).ids, seeded.ids.slice(0, 3), 'later accounts draw new ids');

  for (const bad of [{}, { count: -1 }, { count: 1.5 }, { accounts: 'x' }, { accounts: [{ id: 'cus_1' }] },
    { accounts: [{ type: 'weird' }] }, { accounts: [{ charges_enabled: 'yes' }] }, { accounts: [{ id: 'acct_x' }, { id: 'acct_x' }] },
    { accounts: [{ id: seeded.ids[0] }] }, { count: 1, catalogue: 'no' }, { accounts: [{ currently_due: 'x' }] }]) {
    const res = await call('POST', '/_fake/accounts', { json: bad, auth: null });
    assert.equal(res.status, 400, JSON.stringify(bad));
  }
  assert.equal((await ctl('GET', '/_fake/accounts')).length, 1003, 'a refused batch adds no account');
  await reset();
  assert.deepEqual((await stripe('GET', '/v1/accounts')).body.data, [], 'reset drops the connected accounts');
});

test('connect: Stripe-Account routes every call to that account\'s objects, events, idempotency keys and meter events', async () => {
  await reset();
  await seedAccounts({ accounts: [{ id: 'acct_a' }, { id: 'acct_b' }] });
  const customer = await stripe('POST', '/v1/customers', { email: 'a@example.com' }, as('acct_a'));
  assert.equal(customer.status, 200, customer.text);
  const id = customer.body.id;
  assert.equal((await stripe('GET', `/v1/customers/${id}`, undefined, as('acct_a'))).status, 200);
  assertStripeError(await stripe('GET', `/v1/customers/${id}`, undefined, as('acct_b')), 404, { code: 'resource_missing' });
  assertStripeError(await stripe('GET', `/v1/customers/${id}`), 404, { code: 'resource_missing' });
  assert.deepEqual((await listAll('/v1/customers', { headers: { 'Stripe-Account': 'acct_a' } })).ids, [id]);
  assert.deepEqual((await listAll('/v1/customers', { headers: { 'Stripe-Account': 'acct_b' } })).ids, []);
  assert.deepEqual((await listAll('/v1/customers')).ids, []);

  // the account's events carry `account` (right after `object`) and are listed only with its header
  const events = (await stripe('GET', '/v1/events', undefined, as('acct_a'))).body.data;
  assert.deepEqual(events.map((e) => [e.type, e.account, e.data.object.id]), [['customer.created', 'acct_a', id]]);
  assert.deepEqual(Object.keys(events[0]).slice(0, 3), ['id', 'object', 'account']);
  assert.deepEqual((await stripe('GET', '/v1/events')).body.data, [], 'the platform\'s list has none of them');
  assert.deepEqual((await stripe('GET', '/v1/events', undefined, as('acct_b'))).body.data, []);
  assert.equal((await stripe('GET', `/v1/events/${events[0].id}`, undefined, as('acct_a'))).body.account, 'acct_a');
  assertStripeError(await stripe('GET', `/v1/events/${events[0].id}`), 404, { code: 'resource_missing' });
  assertStripeError(await stripe('GET', `/v1/events?starting_after=${events[0].id}`), 404, { param: 'starting_after' });
  // the platform's own events have no `account`
  await stripe('POST', '/v1/customers', { email: 'p@example.com' });
  const [platformEvent] = (await stripe('GET', '/v1/events')).body.data;
  assert.ok(!('account' in platformEvent));
  assert.deepEqual((await ctl('GET', '/_fake/events?account=acct_a')).map((e) => e.id), [events[0].id]);

  // idempotency keys are per account
  const key = { headers: { 'Idempotency-Key': 'same-key' } };
  const inA = await stripe('POST', '/v1/customers', { email: 'k@example.com' }, as('acct_a', key));
  const inB = await stripe('POST', '/v1/customers', { email: 'k@example.com' }, as('acct_b', key));
  const inPlatform = await stripe('POST', '/v1/customers', { email: 'k@example.com' }, key);
  assert.equal(new Set([inA.body.id, inB.body.id, inPlatform.body.id]).size, 3, 'one key, three accounts, three customers');
  assert.ok(!inB.headers['idempotent-replayed'] && !inPlatform.headers['idempotent-replayed']);
  const replay = await stripe('POST', '/v1/customers', { email: 'k@example.com' }, as('acct_a', key));
  assert.deepEqual([replay.headers['idempotent-replayed'], replay.body.id], ['true', inA.body.id]);

  // Checkout in an account: the hosted page and the control API find its session
  const session = await stripe('POST', '/v1/checkout/sessions', {
    mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1', customer_email: 's@example.com',
  }, as('acct_b'));
  assert.equal(session.status, 200, session.text);
  assertStripeError(await stripe('GET', `/v1/checkout/sessions/${session.body.id}`), 404, { code: 'resource_missing' });
  assert.equal((await call('GET', `/pay/${session.body.id}`, { auth: null })).status, 200);
  const done = await ctl('POST', `/_fake/checkout/sessions/${session.body.id}/complete`, {});
  assert.equal(done.session.status, 'complete');
  const subscriptionId = done.session.subscription;
  const bEvents = (await listAll('/v1/events', { headers: { 'Stripe-Account': 'acct_b' } })).objects;
  assert.deepEqual(new Set(bEvents.map((e) => e.account)), new Set(['acct_b']));
  assert.equal(bEvents[0].type, 'checkout.session.completed');
  assert.ok(!(await storedEvents()).some((e) => e.type === 'checkout.session.completed'), 'nothing on the platform');
  // subscription calls: found only in their account
  assertStripeError(await stripe('POST', `/v1/subscriptions/${subscriptionId}`, { 'metadata[x]': '1' }), 404, { code: 'resource_missing' });
  const updated = await stripe('POST', `/v1/subscriptions/${subscriptionId}`, { 'metadata[x]': '1' }, as('acct_b'));
  assert.equal(updated.body.metadata.x, '1');
  const advanced = await ctl('POST', `/_fake/subscriptions/${subscriptionId}/advance`, { status: 'past_due' });
  assert.equal(advanced.subscription.status, 'past_due');
  const invoices = (await stripe('GET', `/v1/invoices?subscription=${subscriptionId}`, undefined, as('acct_b'))).body.data;
  assert.equal(invoices.length, 2);

  // meter events: per account, identifiers too (v1 with Stripe-Account, v2 with a session made for the account)
  const meter = { event_name: 'api_calls', identifier: 'm-1', 'payload[stripe_customer_id]': id, 'payload[value]': '3' };
  assert.equal((await stripe('POST', '/v1/billing/meter_events', meter, as('acct_a'))).status, 200);
  assert.equal((await stripe('POST', '/v1/billing/meter_events', meter, as('acct_b'))).status, 200, 'same identifier, other account');
  assertStripeError(await stripe('POST', '/v1/billing/meter_events', meter, as('acct_a')), 400, { code: 'resource_already_exists' });
  const token = (await call('POST', '/v2/billing/meter_event_session', { headers: { 'Stripe-Context': 'acct_b' } })).body.authentication_token;
  assert.equal((await streamEvents(token, [{ event_name: 'api_calls', identifier: 'm-2', payload: { stripe_customer_id: id, value: '4' } }])).status, 200);
  assert.deepEqual((await ctl('GET', '/_fake/meter_events?account=acct_a')).map((e) => e.identifier), ['m-1']);
  assert.deepEqual((await ctl('GET', '/_fake/meter_events?account=acct_b')).map((e) => [e.api, e.identifier]), [['v1', 'm-1'], ['v2', 'm-2']]);
  assert.deepEqual(await ctl('GET', '/_fake/meter_events'), []);
  assert.deepEqual(await ctl('GET', '/_fake/meter_events/stats?account=acct_b'), { received: 2, stored: 2, duplicates: 0 });
});

test('connect: ids an account chooses may repeat in other accounts; generated ids stay unique', async () => {
  await reset();
  await seedAccounts({ accounts: [{ id: 'acct_a' }, { id: 'acct_b' }] });
  await seedAccounts({ accounts: [{ id: 'acct_empty' }], catalogue: false });
  // every account starts with the default catalogue (price_basic, prod_basic, ...), the same ids as the platform's
  for (const account of ['acct_a', 'acct_b']) {
    assert.equal((await stripe('GET', '/v1/prices/price_basic', undefined, as(account))).body.unit_amount, 1000);
  }
  assertStripeError(await stripe('GET', '/v1/prices/price_basic', undefined, as('acct_empty')), 404, { code: 'resource_missing' });
  // each account's own product `basic` and price (a plan's id) `basic_monthly`: same ids, other objects
  for (const [account, amount] of [['acct_a', 700], ['acct_b', 900]]) {
    await ctl('POST', '/_fake/objects', { account, objects: [
      { id: 'basic', object: 'product', name: `Basic of ${account}` },
      { id: 'basic_monthly', object: 'price', product: 'basic', unit_amount: amount, recurring: { interval: 'month' } },
    ] });
  }
  const get = async (urlPath, account) => (await stripe('GET', urlPath, undefined, account ? as(account) : {}));
  assert.deepEqual([(await get('/v1/prices/basic_monthly', 'acct_a')).body.unit_amount, (await get('/v1/prices/basic_monthly', 'acct_b')).body.unit_amount], [700, 900]);
  assert.deepEqual([(await get('/v1/products/basic', 'acct_a')).body.name, (await get('/v1/products/basic', 'acct_b')).body.name],
    ['Basic of acct_a', 'Basic of acct_b']);
  assertStripeError(await get('/v1/products/basic'), 404, { code: 'resource_missing' });
  assert.equal((await ctl('GET', '/_fake/objects/basic_monthly?account=acct_b')).unit_amount, 900);
  assert.equal((await ctl('GET', '/_fake/objects/basic_monthly')).unit_amount, 700, 'without ?account= the first account that has it');
  // a checkout with the colliding price bills each account's own amount
  const pay = async (account) => (await stripe('POST', '/v1/checkout/sessions', {
    mode: 'subscription', 'line_items[0][price]': 'basic_monthly', 'line_items[0][quantity]': '1',
  }, as(account))).body.amount_total;
  assert.deepEqual([await pay('acct_a'), await pay('acct_b')], [700, 900]);

  // generators: the same seed in several accounts still draws distinct ids; the platform's stay as they were
  const options = { customers: 4, subscriptions: 4, products: 2, prices: 3, seed: 9, created: 1_700_000_000 };
  await ctl('POST', '/_fake/account', options);
  const platformIds = (await listAll('/v1/customers')).ids;
  await ctl('POST', '/_fake/account', { ...options, account: 'acct_a' });
  await ctl('POST', '/_fake/account', { ...options, account: 'acct_b' });
  const idsIn = async (urlPath, account) => (await listAll(urlPath, { headers: { 'Stripe-Account': account } })).ids;
  const ids = [...platformIds];
  for (const account of ['acct_a', 'acct_b']) {
    for (const urlPath of ['/v1/customers', '/v1/subscriptions?status=all', '/v1/invoices', '/v1/products', '/v1/prices']) {
      ids.push(...(await idsIn(urlPath, account)).filter((x) => !/^basic|^(price|prod)_(basic|pro|onetime)$/.test(x)));
    }
  }
  ids.push(...(await listAll('/v1/subscriptions?status=all')).ids, ...(await listAll('/v1/invoices')).ids);
  assert.equal(new Set(ids).size, ids.length, 'no generated id twice');
  assert.equal(ids.length, 4 + 2 * (4 + 4 + 4 + 2 + 3) + 4 + 4);
  await reset();
  await ctl('POST', '/_fake/account', options);
  assert.deepEqual((await listAll('/v1/customers')).ids, platformIds, 'the platform\'s seeded ids do not change with Connect');

  await seedAccounts({ accounts: [{ id: 'acct_a' }, { id: 'acct_b' }] });
  const lifecycle = { mode: 'lifecycle', users: 2, seed: 4, start_created: 1_800_000_000 };
  await ctl('POST', '/_fake/events', { generate: lifecycle, account: 'acct_a' });
  await ctl('POST', '/_fake/events', { generate: lifecycle, account: 'acct_b' });
  const a = await ctl('GET', '/_fake/events?account=acct_a');
  const b = await ctl('GET', '/_fake/events?account=acct_b');
  assert.deepEqual([a.length, b.length], [22, 22]);
  assert.equal(new Set([...a, ...b].map((e) => e.id)).size, 44, 'event ids unique across accounts');
  const customersA = await idsIn('/v1/customers', 'acct_a');
  const customersB = await idsIn('/v1/customers', 'acct_b');
  assert.equal(new Set([...customersA, ...customersB]).size, 4);
});

test('connect: malformed, unknown and deauthorized accounts answer 403 account_invalid, without side effects', async () => {
  await reset();
  await seedAccounts({ accounts: [{ id: 'acct_a' }, { id: 'acct_b' }] });
  await ctl('DELETE', '/_fake/requests');
  for (const account of ['garbage', 'acct_unknown', 'acct_a ,acct_b', 'cus_123', '']) {
    assertAccountInvalid(await stripe('POST', '/v1/customers', { email: 'x@example.com' }, as(account)), account);
    assertAccountInvalid(await stripe('GET', '/v1/events', undefined, as(account)), account);
  }
  assertAccountInvalid(await stripe('GET', '/v1/nonexistent', undefined, as('acct_nope')), 'acct_nope');
  // the key is checked first: a bad key with a bad account is still 401
  assertStripeError(await stripe('GET', '/v1/customers', undefined, as('acct_nope', { auth: 'sk_test_wrong' })), 401, { code: 'api_key_invalid' });
  assert.deepEqual(await storedEvents(), []);
  for (const account of ['acct_a', 'acct_b']) assert.deepEqual(await ctl('GET', `/_fake/events?account=${account}`), []);
  const statuses = (await ctl('GET', '/_fake/requests')).map((r) => r.status);
  assert.deepEqual(new Set(statuses), new Set([403, 401]));
  // the platform's own id acts as the platform
  assert.equal((await stripe('GET', '/v1/prices/price_basic', undefined, as(PLATFORM_ID))).status, 200);
  assert.equal((await stripe('GET', '/v1/account', undefined, as(PLATFORM_ID))).body.id, PLATFORM_ID);

  // deauthorizing: account.application.deauthorized on the account, then 403 everywhere
  const customer = (await stripe('POST', '/v1/customers', { email: 'a@example.com' }, as('acct_a'))).body;
  const token = (await call('POST', '/v2/billing/meter_event_session', as('acct_a'))).body.authentication_token;
  const deauth = await ctl('POST', '/_fake/accounts/acct_a/deauthorize');
  assert.deepEqual([deauth.account.id, deauth.authorized], ['acct_a', false]);
  assert.deepEqual([deauth.event.type, deauth.event.account, deauth.event.data.object],
    ['account.application.deauthorized', 'acct_a', { id: 'ca_FakePlatform00000000000000000000', name: 'Fake Stripe platform', object: 'application' }]);
  assertAccountInvalid(await stripe('GET', `/v1/customers/${customer.id}`, undefined, as('acct_a')), 'acct_a');
  assertAccountInvalid(await stripe('GET', '/v1/events', undefined, as('acct_a')), 'acct_a');
  assertAccountInvalid(await stripe('GET', '/v1/accounts/acct_a'), 'acct_a');
  // the stream quotes its (masked) session token where other calls quote the key
  const streamed = await streamEvents(token, [{ event_name: 'e', payload: { stripe_customer_id: customer.id, value: '1' } }]);
  assertStripeError(streamed, 403, { type: 'invalid_request_error', code: 'account_invalid' });
  assert.ok(!streamed.text.includes(token));
  assert.deepEqual((await listAll('/v1/accounts')).ids, ['acct_b']);
  assert.equal((await stripe('GET', '/v1/customers', undefined, as('acct_b'))).status, 200, 'other accounts go on');
  assert.deepEqual((await ctl('GET', '/_fake/events?account=acct_a')).map((e) => e.type), ['customer.created', 'account.application.deauthorized']);
  assert.deepEqual((await ctl('GET', '/_fake/accounts')).map((a) => [a.id, a.authorized]), [['acct_a', false], ['acct_b', true]]);
  assert.equal((await call('POST', '/_fake/accounts/acct_a/deauthorize', { auth: null })).status, 400);
  assert.equal((await call('POST', '/_fake/accounts/acct_nope/deauthorize', { auth: null })).status, 404);
  // authorizing again restores access to the account's data
  const auth = await ctl('POST', '/_fake/accounts/acct_a/authorize');
  assert.deepEqual([auth.event.type, auth.event.account, auth.account.id, auth.authorized], ['account.application.authorized', 'acct_a', 'acct_a', true]);
  assert.equal((await stripe('GET', `/v1/customers/${customer.id}`, undefined, as('acct_a'))).status, 200);
  assert.deepEqual((await stripe('GET', '/v1/events', undefined, as('acct_a'))).body.data.map((e) => [e.type, e.account]), [
    ['account.application.authorized', 'acct_a'], ['account.application.deauthorized', 'acct_a'], ['customer.created', 'acct_a']]);
  assert.equal((await call('POST', '/_fake/accounts/acct_a/authorize', { auth: null })).status, 400);
  // a new connection can announce itself
  await seedAccounts({ accounts: [{ id: 'acct_new' }], authorized_event: true });
  assert.deepEqual((await stripe('GET', '/v1/events', undefined, as('acct_new'))).body.data.map((e) => e.type), ['account.application.authorized']);
});

test('connect: account.updated; generators and given events target one account or spread over several', async () => {
  await reset();
  const { ids } = await seedAccounts({ count: 4, seed: 2 });
  const [first, second, third, fourth] = ids;
  const update = await ctl('POST', `/_fake/accounts/${first}/update`, { fields: { name: 'Renamed', charges_enabled: false } });
  assert.deepEqual([update.account.id, update.account.business_profile.name, update.authorized], [first, 'Renamed', true]);
  assert.deepEqual([update.event.type, update.event.account, update.event.data.object.business_profile.name, update.event.data.object.charges_enabled],
    ['account.updated', first, 'Renamed', false]);
  assert.deepEqual(update.event.data.previous_attributes, {
    business_profile: { name: 'Account 1' }, capabilities: { card_payments: 'active' }, charges_enabled: true,
    settings: { dashboard: { display_name: 'Account 1' } },
  });
  const account = (await stripe('GET', `/v1/accounts/${first}`)).body;
  assert.deepEqual([account.business_profile.name, account.charges_enabled], ['Renamed', false]);
  assert.equal((await ctl('POST', `/_fake/accounts/${first}/update`, { fields: { name: 'Renamed' } })).event, null, 'no change, no event');
  const due = await ctl('POST', `/_fake/accounts/${first}/update`, { fields: { currently_due: ['external_account'], type: 'custom' } });
  assert.deepEqual(due.event.data.previous_attributes.requirements, { currently_due: [], eventually_due: [] });
  assert.equal(due.account.controller.requirement_collection, 'application');
  for (const bad of [{ fields: { id: 'acct_other' } }, { fields: { charges_enabled: 'no' } }, { name: 'x' }, { fields: { metadata: 'x' } }]) {
    assert.equal((await call('POST', `/_fake/accounts/${first}/update`, { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }

  // the random mix in one account, with account.updated among them
  const one = await ctl('POST', '/_fake/events', { generate: { count: 40, customers: 4, seed: 3, account_updates: 0.25 }, account: second });
  assert.equal(one.appended, 40);
  const secondEvents = (await listAll('/v1/events', { headers: { 'Stripe-Account': second } })).objects;
  assert.equal(secondEvents.length, 40);
  assert.ok(secondEvents.every((e) => e.account === second));
  const accountUpdates = secondEvents.filter((e) => e.type === 'account.updated');
  assert.ok(accountUpdates.length > 0 && accountUpdates.length < 20, `${accountUpdates.length} account.updated`);
  assert.deepEqual(accountUpdates.at(-1).data.previous_attributes.business_profile, { name: 'Account 2' }, 'the first one renames');
  assert.deepEqual(await storedEvents(), [], 'nothing on the platform');
  assert.equal((await call('POST', '/_fake/events', { json: { generate: { count: 5, account_updates: 0.5 } }, auth: null })).status, 400,
    'the platform gets no account.updated');

  // spread: the first N accounts (or listed ones) each get the whole batch
  const spread = await ctl('POST', '/_fake/events', { generate: { count: 10, seed: 5 }, accounts: 3 });
  assert.equal(spread.appended, 30);
  assert.deepEqual(spread.accounts.map((r) => [r.account, r.appended]), [[first, 10], [second, 10], [third, 10]]);
  assert.equal((await ctl('GET', `/_fake/events?account=${fourth}`)).length, 0);
  const third10 = (await listAll('/v1/events', { headers: { 'Stripe-Account': third } })).objects;
  assert.deepEqual([third10.length, third10.at(-1).id, third10[0].id], [10, spread.accounts[2].first_id, spread.accounts[2].last_id]);
  const lifecycles = await ctl('POST', '/_fake/events', {
    generate: { mode: 'lifecycle', users: 2, seed: 1, accounts: [third, fourth], start_created: 1_800_000_000 },
  });
  assert.deepEqual(lifecycles.accounts.map((r) => [r.account, r.appended, r.users]), [[third, 22, ['user_1', 'user_2']], [fourth, 22, ['user_1', 'user_2']]]);
  const completed = (await listAll('/v1/events?type=checkout.session.completed', { headers: { 'Stripe-Account': fourth } })).objects;
  assert.deepEqual(completed.map((e) => [e.account, e.data.object.client_reference_id]).sort(), [[fourth, 'user_1'], [fourth, 'user_2']]);
  for (const bad of [{ generate: { count: 1 }, accounts: 0 }, { generate: { count: 1 }, accounts: 5 }, { generate: { count: 1 }, accounts: ['acct_nope'] },
    { generate: { count: 1 }, account: 'acct_nope' }, { generate: { count: 1 }, account: first, accounts: 2 },
    { generate: { count: 1, account: first, accounts: 2 } }, { events: [{ type: 'x', data: {} }], accounts: 2 }]) {
    assert.equal((await call('POST', '/_fake/events', { json: bad, auth: null })).status, 400, JSON.stringify(bad));
  }

  // events as given: to an account (`account` filled in), late with `before`, expired
  const given = await ctl('POST', '/_fake/events', { account: fourth, events: [
    { type: 'account.updated', data: { object: account, previous_attributes: { charges_enabled: true } } },
    { id: 'evt_given_other', type: 'account.updated', account: 'acct_other', data: { object: account } },
  ] });
  const latest = (await stripe('GET', '/v1/events?limit=2', undefined, as(fourth))).body.data;
  assert.deepEqual(latest.map((e) => [e.id, e.account]), [['evt_given_other', 'acct_other'], [given.first_id, fourth]]);
  const late = await ctl('POST', '/_fake/events', { account: fourth, before: given.first_id, events: [{ type: 'customer.updated', data: { object: {} } }] });
  const stored = await ctl('GET', `/_fake/events?account=${fourth}`);
  assert.deepEqual(stored.slice(-3).map((e) => e.id), [late.first_id, given.first_id, 'evt_given_other']);
  assert.deepEqual(await ctl('POST', '/_fake/events/expire', { account: fourth, through: late.first_id }), { expired: stored.length - 2 });
  assert.equal((await ctl('GET', `/_fake/events?account=${fourth}`)).length, 2);
  assert.equal((await ctl('GET', `/_fake/events?account=${third}`)).length, 10 + 22, 'other accounts keep theirs');
});

test('connect: Checkout direct charges (application fees) and destination charges (transfer_data, on_behalf_of)', async () => {
  await reset();
  await seedAccounts({ accounts: [{ id: 'acct_shop' }, { id: 'acct_seller' }, { id: 'acct_gone' }] });
  await ctl('POST', '/_fake/accounts/acct_gone/deauthorize');
  const payment = { mode: 'payment', 'line_items[0][price]': 'price_onetime', 'line_items[0][quantity]': '1', customer_email: 'p@example.com' };
  const subscription = { mode: 'subscription', 'line_items[0][price]': 'price_basic', 'line_items[0][quantity]': '1', customer_email: 's@example.com' };
  const checkout = async (form, opts) => {
    const res = await stripe('POST', '/v1/checkout/sessions', form, opts);
    assert.equal(res.status, 200, res.text);
    return (await ctl('POST', `/_fake/checkout/sessions/${res.body.id}/complete`, {})).session;
  };
  const objectIn = (id, account) => ctl('GET', `/_fake/objects/${id}${account ? `?account=${account}` : ''}`);
  const chargeOf = async (intent, account) => objectIn(intent.latest_charge, account);

  // direct payment on a connected account, with an application fee
  const direct = await checkout({ ...payment, 'payment_intent_data[application_fee_amount]': '300' }, as('acct_shop'));
  const intent = await objectIn(direct.payment_intent, 'acct_shop');
  assert.deepEqual([intent.application, intent.application_fee_amount, intent.on_behalf_of, intent.transfer_data],
    ['ca_FakePlatform00000000000000000000', 300, null, null]);
  const charge = await chargeOf(intent, 'acct_shop');
  assert.deepEqual([charge.application_fee_amount, charge.application, charge.transfer_data, charge.transfer_group],
    [300, 'ca_FakePlatform00000000000000000000', null, null]);
  assert.match(charge.application_fee, /^fee_\w+$/);
  const capped = await checkout({ ...payment, 'payment_intent_data[application_fee_amount]': '999999' }, as('acct_shop'));
  assert.equal((await chargeOf(await objectIn(capped.payment_intent), 'acct_shop')).application_fee_amount, 2500, 'capped at the amount');

  // direct subscription with an application fee percent; its invoices follow it
  const directSub = await checkout({ ...subscription, 'subscription_data[application_fee_percent]': '12.5' }, as('acct_shop'));
  const sub = (await stripe('GET', `/v1/subscriptions/${directSub.subscription}`, undefined, as('acct_shop'))).body;
  assert.deepEqual([sub.application_fee_percent, sub.application, sub.transfer_data, sub.on_behalf_of],
    [12.5, 'ca_FakePlatform00000000000000000000', null, null]);
  const invoice = (await stripe('GET', `/v1/invoices/${sub.latest_invoice}`, undefined, as('acct_shop'))).body;
  assert.equal(invoice.application, 'ca_FakePlatform00000000000000000000');

  // destination charges, made on the platform
  const destination = await checkout({ ...payment, 'payment_intent_data[transfer_data][destination]': 'acct_seller',
    'payment_intent_data[transfer_data][amount]': '2000', 'payment_intent_data[on_behalf_of]': 'acct_seller',
    'payment_intent_data[application_fee_amount]': '100' });
  const destIntent = await objectIn(destination.payment_intent);
  assert.deepEqual([destIntent.transfer_data, destIntent.on_behalf_of, destIntent.application_fee_amount, destIntent.application],
    [{ amount: 2000, destination: 'acct_seller' }, 'acct_seller', 100, null]);
  const destCharge = await chargeOf(destIntent);
  assert.deepEqual([destCharge.transfer_data, destCharge.on_behalf_of, destCharge.transfer_group],
    [{ amount: 2000, destination: 'acct_seller' }, 'acct_seller', `group_${destIntent.id}`]);
  const plain = await objectIn((await checkout({ ...payment, 'payment_intent_data[transfer_data][destination]': 'acct_seller' })).payment_intent);
  assert.deepEqual(plain.transfer_data, { destination: 'acct_seller' });
  const destSub = await checkout({ ...subscription, 'subscription_data[transfer_data][destination]': 'acct_seller',
    'subscription_data[transfer_data][amount_percent]': '90', 'subscription_data[on_behalf_of]': 'acct_seller' });
  const platformSub = (await stripe('GET', `/v1/subscriptions/${destSub.subscription}`)).body;
  assert.deepEqual([platformSub.transfer_data, platformSub.on_behalf_of, platformSub.application_fee_percent, platformSub.application],
    [{ amount_percent: 90, destination: 'acct_seller' }, 'acct_seller', null, null]);
  assert.equal((await stripe('GET', `/v1/invoices/${platformSub.latest_invoice}`)).body.on_behalf_of, 'acct_seller');
  const renewal = await ctl('POST', `/_fake/subscriptions/${platformSub.id}/advance`, { status: 'active', new_period: true });
  const renewed = (await stripe('GET', `/v1/invoices/${renewal.subscription.latest_invoice}`)).body;
  assert.deepEqual([renewed.id === platformSub.latest_invoice, renewed.on_behalf_of], [false, 'acct_seller']);
  const noneSub = (await stripe('GET', `/v1/subscriptions/${(await subscribe()).subscription.id}`)).body;
  assert.deepEqual([noneSub.transfer_data, noneSub.on_behalf_of, noneSub.application_fee_percent], [null, null, null]);

  // refused, with nothing created
  const before = (await storedEvents()).length;
  const refused = [
    [{ ...payment, 'payment_intent_data[application_fee_amount]': '100' }, {}, 400,
      { code: 'parameter_missing', param: 'payment_intent_data[application_fee_amount]',
        message: 'Can only apply an application_fee_amount when the PaymentIntent is attempting a direct payment (using an OAuth key or Stripe-Account header) or destination payment (using `transfer_data[destination]`).' }],
    [{ ...subscription, 'subscription_data[application_fee_percent]': '10' }, {}, 400, { param: 'subscription_data[application_fee_percent]' }],
    [{ ...subscription, 'subscription_data[application_fee_percent]': '10.555' }, as('acct_shop'), 400,
      { code: 'parameter_invalid', param: 'subscription_data[application_fee_percent]' }],
    [{ ...subscription, 'subscription_data[application_fee_percent]': '101' }, as('acct_shop'), 400, { code: 'parameter_invalid' }],
    [{ ...payment, 'payment_intent_data[application_fee_amount]': '-1' }, as('acct_shop'), 400, { code: 'parameter_invalid' }],
    [{ ...payment, 'payment_intent_data[transfer_data][destination]': 'acct_nope' }, {}, 400,
      { code: 'resource_missing', param: 'payment_intent_data[transfer_data][destination]', message: "No such destination: 'acct_nope'" }],
    [{ ...payment, 'payment_intent_data[transfer_data][destination]': 'acct_gone' }, {}, 400, { code: 'resource_missing' }],
    [{ ...payment, 'payment_intent_data[transfer_data][amount]': '10' }, {}, 400,
      { code: 'parameter_missing', param: 'payment_intent_data[transfer_data][destination]' }],
    [{ ...payment, 'payment_intent_data[transfer_data][amount_percent]': '10' }, {}, 400,
      { code: 'parameter_unknown', param: 'payment_intent_data[transfer_data][amount_percent]' }],
    [{ ...subscription, 'subscription_data[transfer_data][amount]': '10' }, {}, 400,
      { code: 'parameter_unknown', param: 'subscription_data[transfer_data][amount]' }],
    [{ ...subscription, 'subscription_data[transfer_data][destination]': 'acct_seller', 'subscription_data[transfer_data][amount_percent]': 'x' }, {}, 400,
      { code: 'parameter_invalid', param: 'subscription_data[transfer_data][amount_percent]' }],
    [{ ...subscription, 'subscription_data[on_behalf_of]': 'acct_nope' }, {}, 400,
      { code: 'resource_missing', param: 'subscription_data[on_behalf_of]', message: "No such account: 'acct_nope'" }],
    [{ ...subscription, 'payment_intent_data[application_fee_amount]': '1' }, as('acct_shop'), 400, { param: 'payment_intent_data' }],
  ];
  for (const [form, opts, status, fields] of refused) {
    assertStripeError(await stripe('POST', '/v1/checkout/sessions', form, opts), status, { type: 'invalid_request_error', ...fields });
  }
  assert.equal((await storedEvents()).length, before);
});

test('connect: the recording names each request\'s Stripe-Account; counters per account and route', async () => {
  await reset();
  const { ids } = await seedAccounts({ count: 1000 });
  const [a, b] = ids;
  await ctl('DELETE', '/_fake/requests');
  const t0 = Date.now();
  await stripe('GET', '/v1/events');
  await stripe('GET', '/v1/events', undefined, as(a));
  await stripe('GET', '/v1/events?limit=5', undefined, as(a));
  await stripe('POST', '/v1/customers', { email: 'x@example.com' }, as(b));
  await stripe('GET', '/v1/events', undefined, as('acct_nope'));
  const records = await ctl('GET', '/_fake/requests');
  assert.deepEqual(records.map((r) => [r.method, r.path, r.stripe_account, r.status]), [
    ['GET', '/v1/events', null, 200], ['GET', '/v1/events', a, 200], ['GET', '/v1/events', a, 200],
    ['POST', '/v1/customers', b, 200], ['GET', '/v1/events', 'acct_nope', 403]]);
  assert.equal(records[1].headers['stripe-account'], a);
  assert.ok(records.every((r) => r.received_at >= t0 && r.received_at <= Date.now()));
  assert.deepEqual((await ctl('GET', `/_fake/requests?account=${a}`)).map((r) => r.seq), [records[1].seq, records[2].seq]);
  assert.deepEqual((await ctl('GET', '/_fake/requests?account=platform')).map((r) => r.seq), [records[0].seq]);
  assert.deepEqual(await ctl('GET', '/_fake/requests/count?path=/v1/events&method=GET'),
    { count: 4, by_account: { platform: 1, [a]: 2, acct_nope: 1 } });
  // a time window: received_at in [since, until] (milliseconds, so neighbours may share one)
  const [since, until] = [records[2].received_at, records[4].received_at];
  const inWindow = records.filter((r) => r.path === '/v1/events' && r.received_at >= since && r.received_at <= until);
  const expected = {};
  for (const r of inWindow) expected[r.stripe_account || 'platform'] = (expected[r.stripe_account || 'platform'] || 0) + 1;
  assert.deepEqual(await ctl('GET', `/_fake/requests/count?path=/v1/events&since=${since}&until=${until}`),
    { count: inWindow.length, by_account: expected });
  assert.ok(inWindow.length >= 2);
  assert.equal((await call('GET', '/_fake/requests?since=yesterday', { auth: null })).status, 400);

  // counters survive DELETE /_fake/requests; routes are the patterns
  await stripe('GET', `/v1/accounts/${b}`);
  await ctl('DELETE', '/_fake/requests');
  assert.deepEqual(await ctl('GET', `/_fake/stats/accounts?account=${a}`),
    { accounts: { [a]: { requests: 2, routes: { 'GET /v1/events': 2 } } } });
  const stats = (await ctl('GET', '/_fake/stats/accounts')).accounts;
  assert.deepEqual(stats.platform.routes, { 'GET /v1/events': 1, 'GET /v1/accounts/:id': 1 });
  assert.deepEqual(stats[b], { requests: 1, routes: { 'POST /v1/customers': 1 } });
  assert.deepEqual(stats.acct_nope, { requests: 1, routes: { 'GET /v1/events': 1 } });
  assert.deepEqual(await ctl('GET', '/_fake/stats/accounts?account=acct_quiet'), { accounts: { acct_quiet: { requests: 0, routes: {} } } });

  // a fault rule can pick an account
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '503', account: b, count: 5 }] });
  assert.equal((await stripe('GET', '/v1/events', undefined, as(a))).status, 200);
  assert.equal((await stripe('GET', '/v1/events', undefined, as(b))).status, 503);
  assert.equal((await stripe('GET', '/v1/events')).status, 200);
  await ctl('POST', '/_fake/faults', { rules: [{ kind: '500', account: 'platform' }] });
  assert.equal((await stripe('GET', '/v1/events', undefined, as(a))).status, 200);
  assert.equal((await stripe('GET', '/v1/events')).status, 500);
  await ctl('DELETE', '/_fake/faults');

  // a worker's polling round over 1,000 accounts, counted per account
  await reset();
  const seeded = (await seedAccounts({ count: 1000 })).ids;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  try {
    const started = Date.now();
    for (let i = 0; i < seeded.length; i += 50) {
      await Promise.all(seeded.slice(i, i + 50).map(async (account) => {
        const res = await stripe('GET', '/v1/events?limit=100', undefined, as(account, { agent }));
        assert.equal(res.status, 200);
      }));
    }
    const counted = await ctl('GET', `/_fake/requests/count?path=/v1/events&method=GET&since=${started}`);
    assert.equal(counted.count, 1000);
    assert.ok(Object.values(counted.by_account).every((n) => n === 1));
    const perAccount = (await ctl('GET', '/_fake/stats/accounts')).accounts;
    assert.equal(Object.keys(perAccount).length, 1000);
    assert.ok(seeded.every((account) => perAccount[account].routes['GET /v1/events'] === 1));
  } finally {
    agent.destroy();
  }
  await reset();
  assert.deepEqual(await ctl('GET', '/_fake/stats/accounts'), { accounts: {} }, 'reset clears the counters');
});

// ---- thin events (thin.js) ----

const thinGet = (urlPath, headers = {}) => stripe('GET', urlPath, undefined, { headers });

test('thin events: every snapshot event has a thin twin, fetched and listed by /v2/core/events', async () => {
  await reset();
  const { session } = await subscribe();
  const v1 = await storedEvents();
  const twins = await ctl('GET', '/_fake/thin_events');
  assert.deepEqual(twins.map((t) => t.type), v1.map((e) => `v1.${e.type}`));
  assert.deepEqual(twins.map((t) => t.snapshot_event), v1.map((e) => e.id));
  // created: the snapshot event's second, milliseconds keeping their order
  assert.deepEqual(twins.map((t) => Math.floor(Date.parse(t.created) / 1000)), v1.map((e) => e.created));
  assert.deepEqual([...twins].sort((a, b) => Date.parse(a.created) - Date.parse(b.created)), twins);

  const completed = twins.find((t) => t.type === 'v1.checkout.session.completed');
  const fetched = await thinGet(`/v2/core/events/${completed.id}`);
  assert.equal(fetched.status, 200, fetched.text);
  assert.equal(fetched.body.object, 'v2.core.event');
  assert.deepEqual(fetched.body.related_object, {
    id: session.id, type: 'checkout.session', url: `/v1/checkout/sessions/${session.id}`,
  });
  assert.equal(fetched.body.context, null);
  assert.equal(fetched.body.data, null);
  const related = await thinGet(fetched.body.related_object.url);
  assert.equal(related.body.id, session.id);
  assert.equal(related.body.status, 'complete');
  // every twin's related object can be retrieved where its url says
  for (const twin of twins) {
    const event = (await thinGet(`/v2/core/events/${twin.id}`)).body;
    if (!event.related_object) continue;
    const object = await thinGet(event.related_object.url);
    assert.equal(object.status, 200, `${event.related_object.url}: ${object.text}`);
    assert.equal(object.body.id, event.related_object.id);
  }
  assert.equal((await thinGet('/v2/core/events/evt_test_65nope')).status, 404);

  // the list: newest first, page tokens (the next_page_url alone), filters
  const seen = [];
  let page = await thinGet('/v2/core/events?limit=2');
  for (;;) {
    assert.equal(page.status, 200, page.text);
    seen.push(...page.body.data.map((e) => e.id));
    if (!page.body.next_page_url) break;
    assert.match(page.body.next_page_url, /^\/v2\/core\/events\?page=[A-Za-z0-9_-]+$/);
    page = await thinGet(page.body.next_page_url);
  }
  assert.deepEqual(seen, twins.map((t) => t.id).reverse());
  const cut = twins[3].created;
  const after = await thinGet(`/v2/core/events?limit=100&created[gte]=${encodeURIComponent(cut)}`);
  assert.deepEqual(after.body.data.map((e) => e.id), twins.slice(3).map((t) => t.id).reverse());
  const strictly = await thinGet(`/v2/core/events?limit=100&created[gt]=${encodeURIComponent(cut)}`);
  assert.equal(strictly.body.data.length, twins.length - 4);
  const typed = await thinGet('/v2/core/events?types[0]=v1.invoice.paid&limit=100');
  assert.deepEqual(typed.body.data.map((e) => e.type), ['v1.invoice.paid']);
  const byObject = await thinGet(`/v2/core/events?object_id=${session.id}`);
  assert.deepEqual(byObject.body.data.map((e) => e.type), ['v1.checkout.session.completed']);
  assert.equal((await thinGet('/v2/core/events?created[gt]=1700000000x')).status, 400);
  assert.equal((await thinGet('/v2/core/events?page=garbage')).status, 400);
});

test('thin events: notifications signed as a destination sends them, with the diagnostics items', async () => {
  await reset();
  await subscribe();
  const [first] = await ctl('GET', '/_fake/thin_events');
  const secret = 'whsec_destination_secret_1234';
  const { notifications } = await ctl('POST', '/_fake/thin_events/notifications',
    { secret, ids: [first.id], timestamp: 1700000000, destination: 'ed_test_1' });
  const [note] = notifications;
  const body = JSON.parse(note.body);
  assert.deepEqual(Object.keys(body), ['id', 'object', 'type', 'livemode', 'created', 'related_object']);
  assert.equal(body.id, first.id);
  const v1 = require('node:crypto').createHmac('sha256', secret).update(`1700000000.${note.body}`).digest('hex');
  const digest = require('node:crypto').createHash('sha256').update(note.body).digest('hex');
  assert.equal(note.signature,
    `t=1700000000,v1=${v1},secret=whsec_****1234,destination=ed_test_1,payload=${digest.slice(-8)}`);
  const plain = await ctl('POST', '/_fake/thin_events/notifications', { secret, since: first.id });
  assert.equal(plain.notifications.length, (await ctl('GET', '/_fake/thin_events')).length - 1);
  assert.match(plain.notifications[0].signature, /^t=\d+,v1=[0-9a-f]{64}$/);
  const missing = await call('POST', '/_fake/thin_events/notifications', { json: { ids: [first.id] }, auth: null });
  assert.equal(missing.status, 400);
});

test('thin events: a connected account\'s twins carry its context, fetched with Stripe-Context (on /v1 too)', async () => {
  await reset();
  const { ids: [account] } = await ctl('POST', '/_fake/accounts', { count: 1 });
  await ctl('POST', '/_fake/events', { generate: { mode: 'lifecycle', users: 1 }, account });
  const twins = await ctl('GET', `/_fake/thin_events?account=${account}`);
  assert.equal(twins.length, 11);
  assert.deepEqual(await ctl('GET', '/_fake/thin_events'), []);
  const { notifications: [note] } = await ctl('POST', '/_fake/thin_events/notifications',
    { secret: 'whsec_x', account, ids: [twins[1].id] });
  assert.equal(JSON.parse(note.body).context, account);
  assert.equal((await thinGet(`/v2/core/events/${twins[1].id}`)).status, 404);
  const event = await thinGet(`/v2/core/events/${twins[1].id}`, { 'Stripe-Context': account });
  assert.equal(event.status, 200, event.text);
  const object = await thinGet(event.body.related_object.url, { 'Stripe-Context': account });
  assert.equal(object.status, 200, object.text);
  assert.equal(object.body.object, 'subscription');
  // Accounts v2: the platform retrieves its connected account
  const v2 = await thinGet(`/v2/core/accounts/${account}`);
  assert.equal(v2.status, 200, v2.text);
  assert.equal(v2.body.object, 'v2.core.account');
  assert.equal(v2.body.identity.country, 'US');
  assert.equal(v2.body.defaults.currency, 'usd');
  assert.equal(v2.body.configuration.merchant.capabilities.card_payments.status, 'active');
  assert.equal((await thinGet('/v2/core/accounts/acct_1Nope')).status, 404);
});

test('thin events: meter error reports, given thin events, expiry', async () => {
  await reset();
  await ctl('POST', '/_fake/objects', { object: { id: 'mtr_test_1', object: 'billing.meter', event_name: 'api_calls' } });
  assert.equal((await thinGet('/v1/billing/meters/mtr_test_1')).body.event_name, 'api_calls');
  const report = await ctl('POST', '/_fake/meter_error_reports', {
    meter: 'mtr_test_1', validation_start: '2026-01-01T00:00:00.000Z', validation_end: '2026-01-01T00:00:10.000Z',
    errors: [{ code: 'meter_event_invalid_value', identifiers: ['sb_a_1', 'sb_a_2'], count: 5 }],
  });
  assert.equal(report.type, 'v1.billing.meter.error_report_triggered');
  assert.deepEqual(report.related_object, { id: 'mtr_test_1', type: 'billing.meter', url: '/v1/billing/meters/mtr_test_1' });
  assert.equal(report.data.reason.error_count, 5);
  assert.deepEqual(report.data.reason.error_types[0].sample_errors.map((e) => e.request.identifier), ['sb_a_1', 'sb_a_2']);
  assert.equal(report.data.validation_start, '2026-01-01T00:00:00.000Z');
  const fetched = (await thinGet(`/v2/core/events/${report.id}`)).body;
  assert.deepEqual(fetched.data, report.data);
  const lost = await ctl('POST', '/_fake/meter_error_reports', { errors: [{ code: 'no_meter', identifiers: ['sb_a_3'] }] });
  assert.equal(lost.type, 'v1.billing.meter.no_meter_found');
  assert.equal(lost.related_object, null);
  const { events: [ping] } = await ctl('POST', '/_fake/thin_events', { events: [{ type: 'v2.core.event_destination.ping' }] });
  assert.match(ping.id, /^evt_test_65/);
  assert.deepEqual(await ctl('POST', '/_fake/thin_events/expire', { ids: [report.id] }), { expired: 1 });
  assert.equal((await thinGet(`/v2/core/events/${report.id}`)).status, 404);
  assert.equal((await thinGet(`/v2/core/events/${ping.id}`)).status, 200);
});

// ---- the rest of the billing model (issue 27, part B) ----

test('billing model: /_fake/account seeds coupons, promotion codes, discounts, payment methods, tax ids, disputes and credit notes, listed and retrieved', async () => {
  await reset();
  const options = {
    customers: 6, subscriptions: 5, canceled: 1, seed: 7, created: 1_700_000_000,
    coupons: 2, discounted_subscriptions: 3, customer_discounts: 1, payment_methods_per_customer: 2,
    tax_ids_per_customer: 1, disputes: 5, credit_notes: 2,
  };
  const counts = await ctl('POST', '/_fake/account', options);
  assert.deepEqual(counts, {
    customers: 6, subscriptions: 5, subscription_items: 5, products: 10, prices: 30, invoices: 5, entitlements: 8,
    coupons: 2, promotion_codes: 2, discounts: 4, payment_methods: 8, tax_ids: 6, disputes: 5, credit_notes: 2,
  });
  // the rest of the account is the same with them or without (their own streams)
  await reset();
  const { coupons, promotion_codes, discounted_subscriptions, customer_discounts, payment_methods_per_customer,
    tax_ids_per_customer, disputes, credit_notes, ...plain } = options;
  await ctl('POST', '/_fake/account', plain);
  const plainCustomers = (await listAll('/v1/customers')).ids;
  const plainSubscriptions = (await listAll('/v1/subscriptions?status=all')).ids;
  await reset();
  await ctl('POST', '/_fake/account', options);
  assert.deepEqual((await listAll('/v1/customers')).ids, plainCustomers);
  assert.deepEqual((await listAll('/v1/subscriptions?status=all')).ids, plainSubscriptions);
  assert.deepEqual(await storedEvents(), [], 'no event');

  const couponList = (await listAll('/v1/coupons')).objects;
  assert.deepEqual(couponList.map((c) => [c.id, c.percent_off, c.amount_off, c.valid]),
    [['COUPON2', null, 200, true], ['COUPON1', 5, null, true]]);
  assert.equal((await stripe('GET', '/v1/coupons/COUPON1')).body.duration, 'repeating');
  const codes = (await listAll('/v1/promotion_codes')).objects;
  assert.deepEqual(codes.map((c) => [c.code, c.promotion.coupon, c.active]), [['CODE2', 'COUPON2', true], ['CODE1', 'COUPON1', true]]);
  assert.deepEqual((await listAll('/v1/promotion_codes?code=code1')).objects.map((c) => c.id), [codes[1].id], 'codes are case-insensitive');
  assert.equal((await stripe('GET', `/v1/promotion_codes/${codes[0].id}`)).body.code, 'CODE2');

  // discounts: of three live subscriptions (expand[]=data.discounts gives the objects), and a customer's own
  const plainSubs = (await listAll('/v1/subscriptions?status=all')).objects;
  const discounted = plainSubs.filter((sub) => sub.discounts.length);
  assert.equal(discounted.length, 3);
  assert.ok(discounted.every((sub) => typeof sub.discounts[0] === 'string' && sub.discounts[0].startsWith('di_')));
  const expanded = (await listAll('/v1/subscriptions?status=all&expand[]=data.discounts')).objects.filter((sub) => sub.discounts.length);
  for (const sub of expanded) {
    const [d] = sub.discounts;
    assert.equal(d.object, 'discount');
    assert.equal(d.subscription, sub.id);
    assert.equal(d.customer, sub.customer);
    assert.match(d.source.coupon, /^COUPON[12]$/);
    assert.match(d.promotion_code, /^promo_/);
  }
  const one = (await stripe('GET', `/v1/subscriptions/${discounted[0].id}?expand[0]=discounts`)).body;
  assert.equal(one.discounts[0].id, discounted[0].discounts[0], 'expand[0]= as expand[]=');
  const customers = (await listAll('/v1/customers')).objects;
  const withOwn = customers.filter((c) => c.discount);
  assert.equal(withOwn.length, 1);
  assert.deepEqual([withOwn[0].discount.customer, withOwn[0].discount.subscription], [withOwn[0].id, null]);

  // payment methods: two cards per live subscription's customer, the first the default; one in five expires this month
  const methods = (await listAll('/v1/payment_methods')).objects;
  assert.equal(methods.length, 8);
  const now = new Date();
  const expiring = methods.filter((m) => m.card.exp_year === now.getUTCFullYear() && m.card.exp_month === now.getUTCMonth() + 1);
  assert.ok(expiring.length >= 1);
  for (const c of customers.filter((cu) => cu.invoice_settings.default_payment_method)) {
    const own = (await listAll(`/v1/payment_methods?customer=${c.id}&type=card`)).objects;
    assert.equal(own.length, 2);
    assert.ok(own.some((m) => m.id === c.invoice_settings.default_payment_method));
    assert.ok(own.every((m) => /^\d{4}$/.test(m.card.last4) && !('number' in m.card)));
  }
  assert.equal((await stripe('GET', `/v1/payment_methods/${methods[0].id}`)).body.id, methods[0].id);

  // tax ids: listed per customer, and embedded with expand[]=data.tax_ids
  const withTax = (await listAll('/v1/customers?expand[]=data.tax_ids')).objects;
  for (const c of withTax) {
    assert.equal(c.tax_ids.object, 'list');
    assert.equal(c.tax_ids.data.length, 1);
    assert.equal(c.tax_ids.data[0].customer, c.id);
    assert.deepEqual((await listAll(`/v1/customers/${c.id}/tax_ids`)).ids, [c.tax_ids.data[0].id]);
    assert.equal((await stripe('GET', `/v1/tax_ids/${c.tax_ids.data[0].id}`)).body.value, c.tax_ids.data[0].value);
  }
  assert.ok(!('tax_ids' in customers[0]), 'only when expanded');

  // disputes: the charge expanded names the customer
  const plainDisputes = (await listAll('/v1/disputes')).objects;
  assert.deepEqual(plainDisputes.map((d) => d.status).sort(),
    ['lost', 'needs_response', 'under_review', 'warning_needs_response', 'won']);
  assert.ok(plainDisputes.every((d) => typeof d.charge === 'string'));
  const withCharge = (await listAll('/v1/disputes?expand[]=data.charge')).objects;
  assert.ok(withCharge.every((d) => d.charge.object === 'charge' && d.charge.customer.startsWith('cus_')));
  const dispute = (await stripe('GET', `/v1/disputes/${plainDisputes[0].id}?expand[]=charge`)).body;
  assert.equal(dispute.charge.id, plainDisputes[0].charge);

  // credit notes, of paid invoices, half their amount
  const notes = (await listAll('/v1/credit_notes')).objects;
  assert.equal(notes.length, 2);
  for (const note of notes) {
    const invoice = (await stripe('GET', `/v1/invoices/${note.invoice}`)).body;
    assert.deepEqual([note.customer, note.amount, note.status], [invoice.customer, Math.floor(invoice.amount_paid / 2), 'issued']);
    assert.equal((await stripe('GET', `/v1/credit_notes/${note.id}`)).body.id, note.id);
  }

  for (const bad of [{ coupons: -1 }, { discounted_subscriptions: 1 }, { coupons: 1, discounted_subscriptions: 9 },
    { disputes: 99 }, { credit_notes: 'x' }]) {
    const res = await call('POST', '/_fake/account', { json: { customers: 2, ...bad }, auth: null });
    assert.equal(res.status, 400, JSON.stringify(bad));
  }
  for (const missing of ['/v1/coupons/NOPE', '/v1/promotion_codes/promo_x', '/v1/disputes/dp_x', '/v1/credit_notes/cn_x',
    '/v1/payment_methods/pm_x', '/v1/tax_ids/txi_x']) {
    const res = await stripe('GET', missing);
    assert.equal(res.status, 404, missing);
    assert.equal(res.body.error.code, 'resource_missing');
  }
});

test('billing model: Checkout takes one coupon or promotion code, not with allow_promotion_codes; the subscription gets its discount', async () => {
  await reset();
  await ctl('POST', '/_fake/objects', { objects: [
    { id: 'SUMMER20', object: 'coupon', percent_off: 20, duration: 'repeating', duration_in_months: 3, valid: true },
    { id: 'TENOFF', object: 'coupon', amount_off: 1000, currency: 'usd', duration: 'once', valid: true },
    { id: 'OLD', object: 'coupon', percent_off: 50, valid: false },
    { id: 'promo_summer', object: 'promotion_code', code: 'SUMMER', active: true, promotion: { type: 'coupon', coupon: 'SUMMER20' } },
    { id: 'promo_gone', object: 'promotion_code', code: 'GONE', active: false, promotion: { type: 'coupon', coupon: 'SUMMER20' } },
  ] });
  const stored = (await ctl('GET', '/_fake/objects/SUMMER20'));
  assert.equal(stored.times_redeemed, 0, 'completed from the template');
  const base = {
    mode: 'subscription', customer_email: 'disc@example.com', 'line_items[0][price]': 'price_pro', 'line_items[0][quantity]': '1',
  };
  const refused = [
    [{ 'discounts[0][coupon]': 'NOPE' }, 'discounts[0][coupon]', 'resource_missing'],
    [{ 'discounts[0][coupon]': 'OLD' }, 'discounts[0][coupon]', 'parameter_invalid'],
    [{ 'discounts[0][promotion_code]': 'promo_nope' }, 'discounts[0][promotion_code]', 'resource_missing'],
    [{ 'discounts[0][promotion_code]': 'promo_gone' }, 'discounts[0][promotion_code]', 'parameter_invalid'],
    [{ 'discounts[0][coupon]': 'SUMMER20', allow_promotion_codes: 'true' }, 'discounts', 'parameter_invalid'],
    [{ 'discounts[0][coupon]': 'SUMMER20', 'discounts[1][coupon]': 'TENOFF' }, 'discounts', 'parameter_invalid'],
    [{ 'discounts[0][coupon]': 'SUMMER20', 'discounts[0][promotion_code]': 'promo_summer' }, 'discounts[0]', 'parameter_invalid'],
    [{ 'discounts[0][amount]': '5' }, 'discounts[0][amount]', 'parameter_unknown'],
  ];
  for (const [extra, param, code] of refused) {
    const res = await stripe('POST', '/v1/checkout/sessions', { ...base, ...extra });
    assert.equal(res.status, 400, JSON.stringify(extra));
    assert.deepEqual([res.body.error.param, res.body.error.code], [param, code], JSON.stringify(extra));
  }

  const byCode = await createSession({ ...base, 'discounts[0][promotion_code]': 'promo_summer' });
  assert.deepEqual(byCode.discounts, [{ coupon: null, promotion_code: 'promo_summer' }]);
  assert.deepEqual([byCode.amount_subtotal, byCode.amount_total, byCode.total_details.amount_discount], [5000, 4000, 1000]);
  const done = await ctl('POST', `/_fake/checkout/sessions/${byCode.id}/complete`, {});
  const types = await eventTypes(done.events);
  assert.deepEqual(types.slice(0, 3), ['customer.created', 'customer.subscription.created', 'customer.discount.created']);
  const created = (await storedEvents()).find((e) => e.type === 'customer.subscription.created' && done.events.includes(e.id));
  const createdEvent = (await stripe('GET', `/v1/events/${created.id}`)).body;
  assert.equal(createdEvent.data.object.discounts.length, 1, 'the subscription is created with its discount');
  const subscription = (await stripe('GET', `/v1/subscriptions/${done.session.subscription}?expand[]=discounts`)).body;
  const [discount] = subscription.discounts;
  assert.deepEqual([discount.source.coupon, discount.promotion_code, discount.subscription, discount.customer],
    ['SUMMER20', 'promo_summer', subscription.id, subscription.customer]);
  assert.ok(discount.end > discount.start + 85 * DAY, 'repeating for 3 months');
  assert.equal((await stripe('GET', '/v1/coupons/SUMMER20')).body.times_redeemed, 1);
  assert.equal((await stripe('GET', '/v1/promotion_codes/promo_summer')).body.times_redeemed, 1);

  const byCoupon = await createSession({ ...base, 'discounts[0][coupon]': 'TENOFF' });
  assert.deepEqual(byCoupon.discounts, [{ coupon: 'TENOFF', promotion_code: null }]);
  assert.deepEqual([byCoupon.amount_total, byCoupon.total_details.amount_discount], [4000, 1000]);
  const paid = await createSession({ ...base, mode: 'payment', 'line_items[0][price]': 'price_onetime', 'discounts[0][coupon]': 'SUMMER20' });
  assert.deepEqual([paid.amount_subtotal, paid.amount_total], [2500, 2000]);
});

test('SIGTERM stops the server promptly even with a hung request', async () => {
  await ctl('POST', '/_fake/faults', { rules: [{ kind: 'hang' }] });
  const hung = exchange('/v1/prices/price_basic');
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = Date.now();
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.kill('SIGTERM');
  const { code } = await exited;
  assert.equal(code, 0);
  // (a hung request would keep it up for good: 10 s leaves room for a loaded machine)
  assert.ok(Date.now() - started < 10000, 'exit within 10 s');
  const outcome = await hung;
  assert.ok(outcome.error, 'the hung client sees the connection close');
});

