'use strict';
// Thin events (event destinations, API v2): every v1 event an account's
// state appends gets a thin twin, a `v2.core.event` of type `v1.<type>`
// naming the object it concerns (`related_object`: id, type, url) and the
// snapshot event (`snapshot_event`), kept in the account's thin log. Thin
// events of their own (meter error reports, Accounts v2, destination pings)
// are appended through the control API.
//
//  - GET /v2/core/events/:id retrieves one (the fetched form: `data`,
//    `reason`, `changes`, `snapshot_event` too), GET /v2/core/events lists
//    them newest first (`created[gt|gte|lt|lte]` RFC 3339 times, `limit`,
//    `page` tokens, `object_id`, `types[]`), `{data, next_page_url,
//    previous_page_url}`. Stripe-Context (or Stripe-Account) picks the
//    account, as on every /v2 route.
//  - The related objects the twins point to that the rest of the fake does
//    not serve: payment intents, charges, refunds, invoice payments, plans,
//    invoice items, billing meters, Accounts v2, event destinations.
//  - The control API signs notifications as a destination would send them
//    (`POST /_fake/thin_events/notifications`), appends thin events, builds
//    meter error reports, and expires thin events (Stripe keeps 30 days).

const crypto = require('node:crypto');
const { StripeError, BadRequest, noSuch, intParam, invalidParam } = require('./errors');
const { jsonText } = require('./http_io');
const { apiView, planFromPrice } = require('./templates');
const { newId, nowSeconds } = require('./util');

// Where each kind of object a thin event may name is retrieved.
const OBJECT_PATHS = {
  customer: '/v1/customers/',
  subscription: '/v1/subscriptions/',
  invoice: '/v1/invoices/',
  product: '/v1/products/',
  price: '/v1/prices/',
  plan: '/v1/plans/',
  'checkout.session': '/v1/checkout/sessions/',
  payment_intent: '/v1/payment_intents/',
  charge: '/v1/charges/',
  refund: '/v1/refunds/',
  invoice_payment: '/v1/invoice_payments/',
  invoiceitem: '/v1/invoiceitems/',
  account: '/v1/accounts/',
  'billing.meter': '/v1/billing/meters/',
  'v2.core.account': '/v2/core/accounts/',
  'v2.core.event_destination': '/v2/core/event_destinations/',
};

function relatedObject(type, id) {
  const path = OBJECT_PATHS[type];
  return path && typeof id === 'string' ? { id, type, url: path + id } : null;
}

// RFC 3339 with milliseconds, as v2 writes times.
function iso(ms) {
  return new Date(ms).toISOString();
}

// A v2 time parameter or field: RFC 3339 (or unix seconds, for the control
// API's convenience) -> unix ms; `param` names it in errors.
function timeMs(value, param) {
  if (typeof value === 'number' && Number.isFinite(value)) return value * 1000;
  if (typeof value === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/.test(value)) {
    const ms = Date.parse(value);
    if (!Number.isNaN(ms)) return ms;
  }
  throw invalidParam(param, `Invalid timestamp: must be an RFC 3339 date-time, not ${JSON.stringify(value)}`);
}

// The thin log of an account's state, created on first use.
function thinLog(state) {
  if (!state.thin) state.thin = { events: [], positions: new Map(), lastSecond: null, inSecond: 0 };
  return state.thin;
}

// A `created` in unix ms for a thin event of second `seconds` that sorts
// after the ones already made in that second (the thin log's created times
// keep the snapshot events' order).
function createdMs(log, seconds) {
  if (log.lastSecond === seconds) log.inSecond = Math.min(log.inSecond + 1, 999);
  else [log.lastSecond, log.inSecond] = [seconds, 0];
  return seconds * 1000 + log.inSecond;
}

// Appends a complete thin event (ids are unique in the log).
function appendThin(state, event) {
  const log = thinLog(state);
  if (log.positions.has(event.id)) throw new BadRequest(`duplicate thin event id ${event.id}`);
  log.positions.set(event.id, log.events.length);
  log.events.push(event);
  return event;
}

// The thin twin of a v1 event the state appended: same time (to the
// second), the object it concerns, the snapshot event's id.
function addTwin(state, event) {
  const object = event.data && event.data.object;
  const related = object ? relatedObject(object.object, object.id) : null;
  const log = thinLog(state);
  return appendThin(state, {
    id: newId('evt_test_65'),
    object: 'v2.core.event',
    type: `v1.${event.type}`,
    created: iso(createdMs(log, Number(event.created) || nowSeconds())),
    livemode: Boolean(event.livemode),
    context: state.connected ? state.id : null,
    related_object: related,
    snapshot_event: event.id,
    data: null,
    changes: null,
    reason: event.request && event.request.id
      ? { type: 'request', request: { id: event.request.id, idempotency_key: event.request.idempotency_key } }
      : null,
  });
}

// What a destination delivers: the notification, without the fetched fields.
function notificationOf(event) {
  const note = {
    id: event.id, object: 'v2.core.event', type: event.type, livemode: event.livemode, created: event.created,
  };
  if (event.context) note.context = event.context;
  if (event.related_object) note.related_object = event.related_object;
  return note;
}

// What GET /v2/core/events/:id answers: the fetched form.
function fetchedOf(event) {
  return {
    id: event.id,
    object: 'v2.core.event',
    changes: event.changes === undefined ? null : event.changes,
    context: event.context || null,
    created: event.created,
    data: event.data === undefined ? null : event.data,
    livemode: event.livemode,
    reason: event.reason === undefined ? null : event.reason,
    related_object: event.related_object || null,
    ...(event.snapshot_event ? { snapshot_event: event.snapshot_event } : {}),
    type: event.type,
  };
}

// ---- /v2/core/events ----

function getThinEvent({ store, path }) {
  const log = thinLog(store);
  const at = log.positions.get(path.id);
  if (at === undefined) throw noSuch('event', path.id);
  return fetchedOf(log.events[at]);
}

// Page tokens: where the next page starts (a log index, walking to older
// events) and the filters of the request that made it, which the page's
// request need not repeat (a next_page_url carries the token alone).
function pageToken(position, filters) {
  return Buffer.from(JSON.stringify({ p: position, f: filters })).toString('base64url');
}

function readPageToken(token) {
  let decoded;
  try {
    decoded = JSON.parse(Buffer.from(String(token), 'base64url').toString('utf8'));
  } catch {
    decoded = null;
  }
  if (!decoded || !Number.isInteger(decoded.p) || !decoded.f || typeof decoded.f !== 'object') {
    throw invalidParam('page', 'Invalid page token: it must come from a next_page_url.');
  }
  return decoded;
}

// The filters of a list request: {created: {gt|gte|lt|lte: unix ms}, types, object_id, limit}.
function listFilters(params) {
  const limit = params.limit === undefined ? 20 : intParam(params.limit, 'limit', { min: 1, max: 100 });
  const created = params.created === undefined ? {} : params.created;
  if (typeof created !== 'object' || Array.isArray(created)) throw invalidParam('created', 'Invalid object');
  const bounds = {};
  for (const op of Object.keys(created)) {
    if (!['gt', 'gte', 'lt', 'lte'].includes(op)) throw invalidParam(`created[${op}]`, 'Unknown filter');
    bounds[op] = timeMs(created[op], `created[${op}]`);
  }
  let types = params.types;
  if (types !== undefined && !Array.isArray(types)) types = [types];
  if (types !== undefined && types.length > 20) throw invalidParam('types', 'You may pass at most 20 types.');
  return { created: bounds, types: types || null, object_id: params.object_id === undefined ? null : String(params.object_id), limit };
}

function listThinEvents({ store, params }) {
  const log = thinLog(store);
  const token = params.page === undefined ? null : readPageToken(params.page);
  const filters = token ? token.f : listFilters(params);
  const { created: bounds, types, object_id: objectId, limit } = filters;
  const matches = (event) => {
    const ms = Date.parse(event.created);
    return (bounds.gt === undefined || ms > bounds.gt) && (bounds.gte === undefined || ms >= bounds.gte)
      && (bounds.lt === undefined || ms < bounds.lt) && (bounds.lte === undefined || ms <= bounds.lte)
      && (!types || types.includes(event.type))
      && (objectId === null || Boolean(event.related_object && event.related_object.id === objectId));
  };
  // (a token's position is an index in the log as it was: events appended
  // since are newer, so they are above it and never shift it)
  let at = token ? Math.min(token.p, log.events.length - 1) : log.events.length - 1;
  const data = [];
  for (; at >= 0 && data.length < limit; at -= 1) {
    if (matches(log.events[at])) data.push(fetchedOf(log.events[at]));
  }
  let more = false;
  for (let i = at; i >= 0 && !more; i -= 1) more = matches(log.events[i]);
  return {
    data,
    next_page_url: more ? `/v2/core/events?page=${pageToken(at, filters)}` : null,
    previous_page_url: null,
  };
}

// ---- the related objects the rest of the fake does not serve ----

function getStored(type, kind = type) {
  return ({ store, path }) => apiView(store.find(path.id, type, { kind }));
}

function getPlan({ store, path }) {
  const plan = store.get(path.id, 'plan');
  if (plan) return plan;
  // (a recurring price is also a plan, as Stripe keeps them)
  const price = store.get(path.id, 'price');
  if (!price || !price.recurring) throw noSuch('plan', path.id);
  return planFromPrice(price);
}

// Accounts v2 (GET /v2/core/accounts/:id): the connected account as an
// Accounts v2 object, from the same data as its v1 Account.
function v2Account(account) {
  const dashboard = { standard: 'full', express: 'express', custom: 'none' }[account.type] || 'none';
  const due = (account.requirements && account.requirements.currently_due) || [];
  return {
    id: account.id,
    object: 'v2.core.account',
    applied_configurations: ['merchant'],
    closed: false,
    configuration: {
      merchant: {
        applied: true,
        capabilities: {
          card_payments: { status: account.charges_enabled ? 'active' : 'restricted' },
          stripe_balance: { payouts: { status: account.payouts_enabled ? 'active' : 'restricted' } },
        },
      },
    },
    contact_email: account.email || null,
    created: iso(account.created * 1000),
    dashboard,
    defaults: {
      currency: account.default_currency,
      locales: ['en-US'],
      responsibilities: { fees_collector: dashboard === 'full' ? 'stripe' : 'application',
        losses_collector: dashboard === 'full' ? 'stripe' : 'application' },
    },
    display_name: account.business_profile && account.business_profile.name,
    identity: {
      country: account.country,
      entity_type: 'company',
      business_details: { registered_name: account.business_profile && account.business_profile.name },
    },
    livemode: false,
    metadata: account.metadata || {},
    requirements: {
      entries: due.map((description) => ({
        awaiting_action_from: 'user', description, errors: [], impact: { restricts_capabilities: [] },
        minimum_deadline: { status: 'currently_due' }, requested_reasons: [{ code: 'routine_onboarding' }],
      })),
      summary: due.length ? { minimum_deadline: { status: 'currently_due', time: null } } : {},
    },
  };
}

function getV2Account({ server, store, path }) {
  // (the platform retrieves its connected accounts; an account only itself)
  const state = server.connected.get(path.id);
  if (!state || (store.connected && store.id !== path.id)) throw noSuch('account', path.id);
  return v2Account(state.account);
}

function getEventDestination({ store, path }) {
  return store.find(path.id, 'v2.core.event_destination', { kind: 'event destination' });
}

function addRoutes(router) {
  return router
    .add('GET', '/v2/core/events', listThinEvents)
    .add('GET', '/v2/core/events/:id', getThinEvent)
    .add('GET', '/v2/core/accounts/:id', getV2Account)
    .add('GET', '/v2/core/event_destinations/:id', getEventDestination)
    .add('GET', '/v1/payment_intents/:id', getStored('payment_intent'))
    .add('GET', '/v1/charges/:id', getStored('charge'))
    .add('GET', '/v1/refunds/:id', getStored('refund'))
    .add('GET', '/v1/invoice_payments/:id', getStored('invoice_payment'))
    .add('GET', '/v1/invoiceitems/:id', getStored('invoiceitem'))
    .add('GET', '/v1/plans/:id', getPlan)
    .add('GET', '/v1/billing/meters/:id', getStored('billing.meter', 'billing.meter'));
}

// ---- the control API ----

// The thin events of body.since (an id, exclusive; list order) on, or of
// body.ids (in that order), or all.
function selectThin(log, body) {
  if (body.ids !== undefined) {
    if (!Array.isArray(body.ids)) throw new BadRequest('"ids" must be an array of thin event ids');
    return body.ids.map((id) => {
      const at = log.positions.get(id);
      if (at === undefined) throw new BadRequest(`no thin event ${id}`);
      return log.events[at];
    });
  }
  if (body.since === undefined) return log.events;
  const at = log.positions.get(body.since);
  if (at === undefined) throw new BadRequest(`no thin event ${body.since}`);
  return log.events.slice(at + 1);
}

// Masks a signing secret as Stripe shows it in the Stripe-Signature
// header's secret= item: its prefix and last four characters.
function maskSecret(secret) {
  const prefix = secret.startsWith('whsec_') ? 'whsec_' : '';
  return `${prefix}****${secret.slice(-4)}`;
}

// The Stripe-Signature header of a body: t and v1 (HMAC-SHA256 of
// "<t>.<body>" keyed with the secret); with a destination, also secret=
// (masked), destination= and payload= (the last 8 hex digits of the body's
// SHA-256), as Stripe adds for diagnostics.
function signatureHeader(body, secret, timestamp, destination) {
  const v1 = crypto.createHmac('sha256', secret).update(`${timestamp}.${body}`, 'utf8').digest('hex');
  let header = `t=${timestamp},v1=${v1}`;
  if (destination) {
    const digest = crypto.createHash('sha256').update(body, 'utf8').digest('hex');
    header += `,secret=${maskSecret(secret)},destination=${destination},payload=${digest.slice(-8)}`;
  }
  return header;
}

// POST /_fake/thin_events/notifications {secret, account?, since?|ids?,
// timestamp?, destination?}: each selected thin event as a destination
// delivers it, {id, type, body, signature}, oldest first (in `ids` order).
function notifications({ body, state }) {
  if (typeof body.secret !== 'string' || body.secret === '') throw new BadRequest('"secret" is required');
  const timestamp = body.timestamp === undefined ? nowSeconds() : body.timestamp;
  if (!Number.isInteger(timestamp)) throw new BadRequest('"timestamp" must be a unix time (integer)');
  if (body.destination !== undefined && !/^ed_[A-Za-z0-9_]+$/.test(String(body.destination))) {
    throw new BadRequest('"destination" must be an event destination id (ed_...)');
  }
  return {
    notifications: selectThin(thinLog(state), body).map((event) => {
      const text = jsonText(notificationOf(event));
      return {
        id: event.id, type: event.type, body: text, signature: signatureHeader(text, body.secret, timestamp, body.destination),
      };
    }),
  };
}

// POST /_fake/thin_events {events: [...], account?}: appends thin events as
// given, completed (id, object, created now, livemode, context of the
// account); a duplicate id rejects them all.
function appendGivenThin({ body, state }) {
  if (!Array.isArray(body.events) || body.events.length === 0) throw new BadRequest('"events" must be a non-empty array');
  const log = thinLog(state);
  const events = body.events.map((raw, index) => {
    if (!raw || typeof raw !== 'object' || typeof raw.type !== 'string') {
      throw new BadRequest(`events[${index}] needs a string "type"`);
    }
    return {
      id: newId('evt_test_65'),
      object: 'v2.core.event',
      created: iso(createdMs(log, nowSeconds())),
      livemode: false,
      context: state.connected ? state.id : null,
      related_object: null,
      data: null,
      changes: null,
      reason: null,
      ...structuredClone(raw),
    };
  });
  const ids = new Set();
  for (const { id } of events) {
    if (ids.has(id) || log.positions.has(id)) throw new BadRequest(`duplicate thin event id ${id}`);
    ids.add(id);
  }
  return { events: events.map((event) => appendThin(state, event)).map(fetchedOf) };
}

// POST /_fake/meter_error_reports {meter?, account?, validation_start?,
// validation_end?, errors: [{code, message?, identifiers: [...], count?}]}:
// Stripe's asynchronous verdict on meter events it took. With a meter
// (a stored billing.meter), a v1.billing.meter.error_report_triggered naming
// it; without, a v1.billing.meter.no_meter_found. Each error type lists its
// identifiers as sample errors; `count` (default: the samples) is its
// error_count. Returns the thin event (fetched form).
function meterErrorReport({ body, state }) {
  if (!Array.isArray(body.errors) || body.errors.length === 0) throw new BadRequest('"errors" must be a non-empty array');
  if (body.meter !== undefined) state.find(body.meter, 'billing.meter', { status: 400 });
  const end = body.validation_end === undefined ? Date.now() : timeMs(body.validation_end, 'validation_end');
  const start = body.validation_start === undefined ? end - 10_000 : timeMs(body.validation_start, 'validation_start');
  const errorTypes = body.errors.map((e, index) => {
    if (!e || typeof e.code !== 'string' || !Array.isArray(e.identifiers)) {
      throw new BadRequest(`errors[${index}] needs a string "code" and an array "identifiers"`);
    }
    return {
      code: e.code,
      error_count: e.count === undefined ? e.identifiers.length : e.count,
      sample_errors: e.identifiers.map((identifier) => ({
        error_message: e.message || `Meter event ${identifier} was refused (${e.code}).`,
        request: { identifier },
      })),
    };
  });
  const count = errorTypes.reduce((sum, t) => sum + t.error_count, 0);
  const event = {
    type: body.meter === undefined ? 'v1.billing.meter.no_meter_found' : 'v1.billing.meter.error_report_triggered',
    related_object: body.meter === undefined ? null : relatedObject('billing.meter', body.meter),
    data: {
      developer_message_summary: `There ${count === 1 ? 'is 1 invalid event' : `are ${count} invalid events`}`,
      reason: { error_count: count, error_types: errorTypes },
      validation_end: iso(end),
      validation_start: iso(start),
    },
  };
  return appendGivenThin({ body: { events: [event] }, state }).events[0];
}

// GET /_fake/thin_events?account=: [{id, type, created, snapshot_event}], oldest first.
function listThin({ state }) {
  return thinLog(state).events.map(({ id, type, created, snapshot_event: snapshot }) => ({
    id, type, created, snapshot_event: snapshot || null,
  }));
}

// POST /_fake/thin_events/expire {ids} or {older_than: unix}: Stripe
// forgets events after 30 days; their ids then answer 404.
function expireThin({ body, state }) {
  const log = thinLog(state);
  let expired;
  if (body.ids !== undefined) {
    if (!Array.isArray(body.ids)) throw new BadRequest('"ids" must be an array');
    const gone = new Set(body.ids);
    expired = (event) => gone.has(event.id);
  } else if (Number.isInteger(body.older_than)) {
    expired = (event) => Date.parse(event.created) < body.older_than * 1000;
  } else {
    throw new BadRequest('give "ids" or "older_than"');
  }
  const before = log.events.length;
  log.events = log.events.filter((event) => !expired(event));
  log.positions = new Map(log.events.map((event, index) => [event.id, index]));
  return { expired: before - log.events.length };
}

module.exports = {
  addTwin, addRoutes, notifications, appendGivenThin, meterErrorReport, listThin, expireThin, signatureHeader,
  maskSecret, notificationOf, StripeError,
};
