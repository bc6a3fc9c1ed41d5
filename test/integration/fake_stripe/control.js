'use strict';
// The test-only control API under /_fake (no auth, JSON in and out): read
// the recording, reset, inject faults, set a rate limit or latency, seed
// Connect accounts, objects, events or a whole account's data, expire
// events or meter event sessions, and play the customer's, the connected
// account's or Stripe's part (complete a checkout, renew a subscription,
// update or deauthorize an account).
//
// Calls on an account's data take an "account" (in the JSON body, or
// ?account= on GETs): absent or "platform" is the platform, else a
// connected account's id (deauthorized ones too).

const { Router } = require('./router');
const { StripeError, BadRequest } = require('./errors');
const { sendJson } = require('./http_io');
const { advanceSubscription, completeCheckout } = require('./billing');
const { generateEvents } = require('./generate');
const { generateAccount } = require('./account');
const {
  seedAccounts, connectedState, updateAccount, deauthorizeAccount, authorizeAccount, selectState, selectStates,
} = require('./connect');
const { expireMeterSessions } = require('./meter_events');
const { API_VERSION, buildPrice, buildProduct, fromTemplate, hasTemplate } = require('./templates');
const { hasModelTemplate, fromModelTemplate } = require('./billing_model');
const { newId, nowSeconds } = require('./util');
const thin = require('./thin');

// ---- recording and counters ----

// The milliseconds of ?name= (unix ms), or null.
function msParam(query, name) {
  const value = query.get(name);
  if (value === null) return null;
  if (!/^\d+$/.test(value)) throw new BadRequest(`${name} must be a unix time in milliseconds`);
  return Number(value);
}

// The recorded requests ?path= (a prefix, like fault rules), ?method=,
// ?account= (a Stripe-Account value as sent, or "platform" for none) and
// ?since= / ?until= (received_at, unix ms, inclusive) select.
function selectRequests(store, query) {
  const prefix = query.get('path') || '';
  const method = query.get('method');
  const account = query.get('account');
  const since = msParam(query, 'since');
  const until = msParam(query, 'until');
  return store.requests.filter((r) => r.path.startsWith(prefix)
    && (!method || r.method === method.toUpperCase())
    && (account === null || (r.stripe_account === null ? 'platform' : r.stripe_account) === account)
    && (since === null || r.received_at >= since)
    && (until === null || r.received_at <= until));
}

function listRequests({ store, query }) {
  return selectRequests(store, query);
}

// How many recorded requests the same filters select, and per account.
function countRequests({ store, query }) {
  const byAccount = {};
  const selected = selectRequests(store, query);
  for (const r of selected) {
    const key = r.stripe_account === null ? 'platform' : r.stripe_account;
    byAccount[key] = (byAccount[key] || 0) + 1;
  }
  return { count: selected.length, by_account: byAccount };
}

function clearRequests({ store }) {
  const deleted = store.requests.length;
  store.requests = [];
  return { deleted };
}

function stats({ store }) {
  return { connections_opened: store.connectionsOpened, requests: store.requestCount, rate_limited: store.rateLimited };
}

// Requests per account and route since start or reset (DELETE
// /_fake/requests does not clear them); ?account= for one.
function accountStats({ store, query }) {
  const wanted = query.get('account');
  const accounts = {};
  for (const [key, counts] of store.requestCounts) {
    if (wanted !== null && key !== wanted) continue;
    accounts[key] = { requests: counts.requests, routes: Object.fromEntries(counts.routes) };
  }
  if (wanted !== null && !accounts[wanted]) accounts[wanted] = { requests: 0, routes: {} };
  return { accounts };
}

function reset({ store, faults, limiter, latency }) {
  store.reset();
  faults.clear();
  limiter.clear();
  latency.clear();
  return { reset: true };
}

// ---- rate limit ----

function getRateLimit({ limiter }) {
  return limiter.describe();
}

function setRateLimit({ limiter, body }) {
  if (!Object.hasOwn(body, 'per_second')) throw new BadRequest('"per_second" is required (null lifts the limit)');
  limiter.set(body.per_second);
  return limiter.describe();
}

function clearRateLimit({ limiter }) {
  limiter.clear();
  return limiter.describe();
}

// ---- latency ----

function getLatency({ latency }) {
  return latency.describe();
}

function setLatency({ latency, body }) {
  latency.set(body);
  return latency.describe();
}

function clearLatency({ latency }) {
  latency.clear();
  return latency.describe();
}

// ---- faults ----

function getFaults({ faults }) {
  return { rules: faults.describe() };
}

function setFaults({ faults, body }) {
  faults.set(body.rules);
  return { rules: faults.describe() };
}

function clearFaults({ faults }) {
  faults.clear();
  return { rules: [] };
}

// ---- objects ----

// Known types are completed from their template, so a seed can be as small
// as {"id": "price_x", "object": "price", "unit_amount": 700}.
function completeObject(raw, index) {
  if (!raw || typeof raw !== 'object' || typeof raw.id !== 'string' || typeof raw.object !== 'string') {
    throw new BadRequest(`objects[${index}] needs string "id" and "object" fields`);
  }
  if (raw.object === 'price') return buildPrice(raw);
  if (raw.object === 'product') return buildProduct(raw);
  if (hasTemplate(raw.object)) return fromTemplate(raw.object, raw);
  if (hasModelTemplate(raw.object)) return fromModelTemplate(raw.object, raw);
  return structuredClone(raw);
}

// A patch for a stored object: its fields replace the stored ones (top
// level only), every other field stays. Checked before anything changes.
function checkPatch(store, raw, index) {
  if (!raw || typeof raw !== 'object' || typeof raw.id !== 'string') {
    throw new BadRequest(`objects[${index}] needs a string "id" field`);
  }
  const stored = store.objects.get(raw.id);
  if (!stored) throw new BadRequest(`objects[${index}]: no object ${raw.id} to merge into`);
  if (raw.object !== undefined && raw.object !== stored.object) {
    throw new BadRequest(`objects[${index}]: ${raw.id} is a ${stored.object}, not a ${raw.object}`);
  }
  return { stored, patch: structuredClone(raw) };
}

// With "merge": true the objects are patched in place (the same object, so
// its list position and anything holding it see the change); no event.
function seedObjects({ store: server, body }) {
  const store = selectState(server, body.account);
  const given = body.objects !== undefined ? body.objects : [body.object];
  if (!Array.isArray(given)) throw new BadRequest('"objects" must be an array');
  if (body.merge !== undefined && typeof body.merge !== 'boolean') throw new BadRequest('"merge" must be a boolean');
  if (body.merge) {
    const patches = given.map((raw, index) => checkPatch(store, raw, index));
    return { objects: patches.map(({ stored, patch }) => Object.assign(stored, patch)) };
  }
  const objects = given.map(completeObject);
  for (const object of objects) store.put(object);
  return { objects };
}

function seedAccount({ store, body }) {
  const { account, ...options } = body;
  return generateAccount(selectState(store, account), options);
}

// Invoice previews are never stored as invoices (no list shows them), but
// the control API shows them too; accounts too. Without ?account= the
// platform's object, else the first connected account's that has the id.
function getObject({ store, path, query }) {
  const account = store.state(path.id);
  if (account) return account.account;
  const states = query.get('account') === null ? store.states() : [selectState(store, query.get('account'))];
  for (const state of states) {
    const object = state.objects.get(path.id) || state.previews.get(path.id);
    if (object) return object;
  }
  throw new StripeError(404, { code: 'resource_missing', param: 'id', message: `No such object: '${path.id}'` });
}

// ---- Connect accounts ----

function createAccounts({ store, body }) {
  return seedAccounts(store, body);
}

// Every connected account, oldest first, with whether the platform can
// reach it (the whole Account: GET /_fake/objects/acct_...).
function listConnected({ store }) {
  return store.accountList.map(({ id, authorized, account }) => ({
    id, authorized, name: account.business_profile.name, type: account.type, created: account.created,
  }));
}

// Each answers {account (the Account), authorized, event}.
function updateConnected({ store, path, body }) {
  const { fields, ...rest } = body;
  if (Object.keys(rest).length) throw new BadRequest('give the changes as {"fields": {...}}');
  const state = connectedState(store, path.id);
  const { event } = updateAccount(state, fields);
  return { account: state.account, authorized: state.authorized, event };
}

function deauthorize({ store, path }) {
  const state = connectedState(store, path.id);
  const event = deauthorizeAccount(state);
  return { account: state.account, authorized: state.authorized, event };
}

function authorize({ store, path }) {
  const state = connectedState(store, path.id);
  const event = authorizeAccount(state);
  return { account: state.account, authorized: state.authorized, event };
}

// ---- events ----

function completeEvent(raw, index) {
  if (!raw || typeof raw !== 'object') throw new BadRequest(`events[${index}] must be an object`);
  if (typeof raw.type !== 'string') throw new BadRequest(`events[${index}].type is required`);
  if (!raw.data || typeof raw.data !== 'object') throw new BadRequest(`events[${index}].data is required`);
  return {
    id: newId('evt_'),
    object: 'event',
    api_version: API_VERSION,
    created: nowSeconds(),
    livemode: false,
    pending_webhooks: 0,
    request: { id: null, idempotency_key: null },
    ...structuredClone(raw),
  };
}

// All or nothing: a batch with a duplicate id appends no event.  With
// `before` (an event id) the batch is listed late: inserted just before it.
function appendGivenEvents(store, given, before) {
  if (!Array.isArray(given) || given.length === 0) throw new BadRequest('"events" must be a non-empty array');
  const events = given.map(completeEvent);
  const ids = new Set();
  for (const { id } of events) {
    if (ids.has(id) || store.eventPosition(id) !== undefined) throw new BadRequest(`duplicate event id ${id}`);
    ids.add(id);
  }
  if (before !== undefined) store.insertEventsBefore(String(before), events);
  else for (const event of events) store.appendEvent(event);
  return { appended: events.length, first_id: events[0].id, last_id: events[events.length - 1].id };
}

// "account": one account; "accounts" (generators only): N (the first N
// connected accounts) or a list of ids, each getting the whole batch. Both
// may also sit inside "generate".
function appendEvents({ store, body }) {
  if (body.generate !== undefined) {
    if (!body.generate || typeof body.generate !== 'object') throw new BadRequest('"generate" must be an object');
    const { account: innerAccount, accounts: innerAccounts, ...options } = body.generate;
    const account = innerAccount !== undefined ? innerAccount : body.account;
    const accounts = innerAccounts !== undefined ? innerAccounts : body.accounts;
    if (account !== undefined && accounts !== undefined) throw new BadRequest('give "account" or "accounts", not both');
    const target = accounts !== undefined ? selectStates(store, accounts) : selectState(store, account);
    return generateEvents(target, options);
  }
  if (body.accounts !== undefined) throw new BadRequest('"accounts" is for generators; give events one "account"');
  return appendGivenEvents(selectState(store, body.account), body.events, body.before);
}

// Stripe keeps events 30 days: drop the oldest ones, through an event id
// (in list order) or created before a unix time.
function expireEvents({ store: server, body }) {
  const store = selectState(server, body.account);
  const { through, older_than: olderThan } = body;
  if ((through === undefined) === (olderThan === undefined)) throw new BadRequest('give one of "through" or "older_than"');
  if (through !== undefined) {
    const last = store.eventPosition(String(through));
    if (last === undefined) throw new BadRequest(`no event ${through} to expire through`);
    return { expired: store.expireEvents((event, index) => index <= last) };
  }
  if (!Number.isInteger(olderThan)) throw new BadRequest('"older_than" must be a unix time (integer)');
  return { expired: store.expireEvents((event) => event.created < olderThan) };
}

function listStoredEvents({ store, query }) {
  return selectState(store, query.get('account')).events.map(({ id, created, type }) => ({ id, created, type }));
}

function listMeterEvents({ store, query }) {
  return selectState(store, query.get('account')).meterEvents;
}

function meterEventStats({ store, query }) {
  return { ...selectState(store, query.get('account')).meterStats };
}

function expireSessions({ store }) {
  return { expired: expireMeterSessions(store) };
}

// ---- thin events (thin.js): the account's thin log ----

const onThin = (fn) => ({ store, body, query }) => fn({
  body: body || {}, state: selectState(store, body && body.account !== undefined ? body.account : query.get('account')),
});

// ---- life cycle steps ----

// The object `id` of `type` in body.account's state, or without one in the
// first account (the platform's first) that has it.
function locate(store, body, id, type) {
  if (body.account !== undefined) {
    const state = selectState(store, body.account);
    return { state, object: state.find(id, type) };
  }
  const found = store.locate(id, type);
  if (!found) return { state: store.platform, object: store.platform.find(id, type) };
  return found;
}

function completeSession({ store, path, body }) {
  const { account, ...options } = body;
  const { state, object } = locate(store, body, path.id, 'checkout.session');
  return completeCheckout(state, object, options);
}

function advance({ store, path, body }) {
  const { account, ...options } = body;
  const { state, object: subscription } = locate(store, body, path.id, 'subscription');
  const events = advanceSubscription(state, subscription, options);
  return { subscription, events };
}

const router = new Router()
  .add('GET', '/_fake/requests', listRequests)
  .add('GET', '/_fake/requests/count', countRequests)
  .add('DELETE', '/_fake/requests', clearRequests)
  .add('GET', '/_fake/stats', stats)
  .add('GET', '/_fake/stats/accounts', accountStats)
  .add('POST', '/_fake/reset', reset)
  .add('GET', '/_fake/latency', getLatency)
  .add('POST', '/_fake/latency', setLatency)
  .add('DELETE', '/_fake/latency', clearLatency)
  .add('GET', '/_fake/rate_limit', getRateLimit)
  .add('POST', '/_fake/rate_limit', setRateLimit)
  .add('DELETE', '/_fake/rate_limit', clearRateLimit)
  .add('GET', '/_fake/faults', getFaults)
  .add('POST', '/_fake/faults', setFaults)
  .add('DELETE', '/_fake/faults', clearFaults)
  .add('POST', '/_fake/objects', seedObjects)
  .add('GET', '/_fake/objects/:id', getObject)
  .add('POST', '/_fake/account', seedAccount)
  .add('POST', '/_fake/accounts', createAccounts)
  .add('GET', '/_fake/accounts', listConnected)
  .add('POST', '/_fake/accounts/:id/update', updateConnected)
  .add('POST', '/_fake/accounts/:id/deauthorize', deauthorize)
  .add('POST', '/_fake/accounts/:id/authorize', authorize)
  .add('POST', '/_fake/events', appendEvents)
  .add('POST', '/_fake/events/expire', expireEvents)
  .add('GET', '/_fake/events', listStoredEvents)
  .add('GET', '/_fake/meter_events', listMeterEvents)
  .add('GET', '/_fake/meter_events/stats', meterEventStats)
  .add('POST', '/_fake/meter_sessions/expire', expireSessions)
  .add('POST', '/_fake/checkout/sessions/:id/complete', completeSession)
  .add('POST', '/_fake/subscriptions/:id/advance', advance)
  .add('GET', '/_fake/thin_events', onThin(thin.listThin))
  .add('POST', '/_fake/thin_events', onThin(thin.appendGivenThin))
  .add('POST', '/_fake/thin_events/notifications', onThin(thin.notifications))
  .add('POST', '/_fake/thin_events/expire', onThin(thin.expireThin))
  .add('POST', '/_fake/meter_error_reports', onThin(thin.meterErrorReport));

function parseJsonBody(rawBody) {
  if (rawBody.trim() === '') return {};
  let body;
  try {
    body = JSON.parse(rawBody);
  } catch (err) {
    throw new BadRequest(`invalid JSON body: ${err.message}`);
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new BadRequest('JSON body must be an object');
  return body;
}

function createControl({ store, faults, limiter, latency }) {
  return function handleControl(req, res, url, rawBody) {
    const route = router.match(req.method, url.pathname);
    if (!route) return sendJson(res, 404, { error: { message: `No control endpoint ${req.method} ${url.pathname}` } });
    try {
      const body = parseJsonBody(rawBody);
      const result = route.handler({ store, faults, limiter, latency, body, query: url.searchParams, path: route.params });
      return sendJson(res, 200, result);
    } catch (err) {
      if (err instanceof StripeError) return sendJson(res, err.status, err.toJSON());
      if (err instanceof BadRequest) return sendJson(res, 400, { error: { message: err.message } });
      console.error('fake_stripe: control error', err);
      return sendJson(res, 500, { error: { message: err.message } });
    }
  };
}

module.exports = { createControl };
