'use strict';
// Billing meter events, both APIs:
//  - v1 POST /v1/billing/meter_events: one form-encoded event, validated
//    and de-duplicated synchronously (a seen identifier is a 400);
//  - v2 POST /v2/billing/meter_event_session (API key) hands out a token
//    valid 15 minutes, and POST /v2/billing/meter_event_stream (that token
//    only) takes 1..100 JSON events. Stripe validates v2 events
//    asynchronously; the fake validates the whole batch up front and stores
//    nothing when one event is bad, so a test sees its mistakes at once.
//    Duplicates are dropped silently, as Stripe's asynchronous
//    de-duplication does, and only counted.
// Both APIs share the identifier window and GET /_fake/meter_events.

const crypto = require('node:crypto');
const { StripeError, missingParam, invalidParam, intParam } = require('./errors');
const { buildMeterEvent } = require('./templates');
const { newId, nowSeconds, randomAlnum } = require('./util');

const MAX_AGE = 35 * 86400;
const MAX_FUTURE = 5 * 60;
const IDENTIFIER_WINDOW = 86400;
const SESSION_TTL_MS = 15 * 60 * 1000;
const STREAM_MAX_EVENTS = 100;
const NUMERIC = /^-?\d+(\.\d+)?$/;
// ISO 8601 date-time with a zone, as Stripe's v2 timestamps are written.
const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

function checkWindow(timestamp, now, param) {
  if (timestamp < now - MAX_AGE || timestamp > now + MAX_FUTURE) {
    throw invalidParam(param, 'Timestamp must be within the past 35 calendar days and no more than 5 minutes in the future.');
  }
  return timestamp;
}

// True (and the identifier remembered) unless it was seen in the window.
function claimIdentifier(store, identifier, now) {
  const seen = store.meterIdentifiers.get(identifier);
  if (seen !== undefined && now - seen < IDENTIFIER_WINDOW) return false;
  store.meterIdentifiers.set(identifier, now);
  return true;
}

function storeEvent(store, api, { eventName, identifier, payload, timestamp }) {
  const event = buildMeterEvent({ eventName, identifier, payload, timestamp });
  store.meterEvents.push({ ...event, api });
  store.meterStats.stored += 1;
  return event;
}

// ---- v1 ----

function formPayload(payload) {
  if (payload === undefined) throw missingParam('payload');
  if (typeof payload !== 'object' || Array.isArray(payload)) throw invalidParam('payload', 'Invalid object');
  if (payload.stripe_customer_id === undefined) throw missingParam('payload[stripe_customer_id]');
  if (payload.value === undefined) throw missingParam('payload[value]');
  if (!NUMERIC.test(payload.value)) throw invalidParam('payload[value]', 'The value must be a number.');
  return payload;
}

function createMeterEvent({ store, params }) {
  if (params.event_name === undefined) throw missingParam('event_name');
  const payload = formPayload(params.payload);
  const now = nowSeconds();
  const timestamp = params.timestamp === undefined ? now
    : checkWindow(intParam(params.timestamp, 'timestamp'), now, 'timestamp');
  const identifier = params.identifier === undefined ? crypto.randomUUID() : String(params.identifier);
  if (!claimIdentifier(store, identifier, now)) {
    throw new StripeError(400, {
      code: 'resource_already_exists',
      param: 'identifier',
      message: `An event already exists with identifier ${identifier}.`,
    });
  }
  store.meterStats.received += 1;
  return storeEvent(store, 'v1', { eventName: String(params.event_name), identifier, payload, timestamp });
}

// ---- v2 sessions ----

function isoTime(ms) {
  return new Date(ms).toISOString();
}

// The token is bound to the account the session was made for (the
// request's Stripe-Account or Stripe-Context): the stream's events land there.
function createMeterEventSession({ store, server }) {
  const createdMs = Date.now();
  const session = {
    id: newId('mes_'),
    object: 'v2.billing.meter_event_session',
    authentication_token: `mest_test_${randomAlnum(48)}`,
    created: isoTime(createdMs),
    expires_at: isoTime(createdMs + SESSION_TTL_MS),
    livemode: false,
  };
  server.meterSessions.set(session.authentication_token, {
    id: session.id, expiresAt: createdMs + SESSION_TTL_MS, account: store.id,
  });
  return session;
}

// Why the stream refuses `presented` (a StripeError), or null for a live
// session token. The API key itself is not accepted there.
function meterSessionAuthError(store, presented, apiKey) {
  if (presented === null || presented === apiKey) {
    return new StripeError(401, {
      message: 'The meter event stream authenticates with the authentication_token of a meter event session, '
        + "not an API key: create one with POST /v2/billing/meter_event_session and send 'Authorization: Bearer <token>'.",
    });
  }
  const session = store.meterSessions.get(presented);
  if (session && session.expiresAt > Date.now()) return null;
  return new StripeError(401, {
    code: 'billing_meter_event_session_expired',
    message: 'The meter event session token has expired or is not valid. Create a new meter event session.',
  });
}

// Control API: every live token expires now, so clients must start a new session.
function expireMeterSessions(store) {
  const now = Date.now();
  let expired = 0;
  for (const session of store.meterSessions.values()) {
    if (session.expiresAt > now) {
      session.expiresAt = now;
      expired += 1;
    }
  }
  return expired;
}

// ---- v2 stream ----

function requiredString(value, param) {
  if (value === undefined) throw missingParam(param);
  if (typeof value !== 'string' || value === '') throw invalidParam(param, 'Invalid string');
  return value;
}

function streamPayload(payload, at) {
  if (payload === undefined) throw missingParam(`${at}.payload`);
  if (!payload || typeof payload !== 'object' || Array.isArray(payload)) throw invalidParam(`${at}.payload`, 'Invalid object');
  requiredString(payload.stripe_customer_id, `${at}.payload.stripe_customer_id`);
  if (payload.value === undefined) throw missingParam(`${at}.payload.value`);
  if (typeof payload.value !== 'string' || !NUMERIC.test(payload.value)) {
    throw invalidParam(`${at}.payload.value`, 'The value must be a number given as a string.');
  }
  return { ...payload };
}

function streamTimestamp(value, param, now) {
  if (value === undefined) return now;
  const ms = typeof value === 'string' && ISO_8601.test(value) ? Date.parse(value) : NaN;
  if (Number.isNaN(ms)) throw invalidParam(param, `Invalid timestamp: ${value}. Use an ISO 8601 date-time such as 2024-06-01T12:00:00.000Z.`);
  return checkWindow(Math.floor(ms / 1000), now, param);
}

// One event of a stream batch, checked; `at` is its name ("events[3]").
function streamEvent(raw, at, now) {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw invalidParam(at, 'Invalid object');
  const eventName = requiredString(raw.event_name, `${at}.event_name`);
  const payload = streamPayload(raw.payload, at);
  if (raw.identifier !== undefined && (typeof raw.identifier !== 'string' || raw.identifier === '')) {
    throw invalidParam(`${at}.identifier`, 'Invalid string');
  }
  const identifier = raw.identifier === undefined ? crypto.randomUUID() : raw.identifier;
  return { eventName, identifier, payload, timestamp: streamTimestamp(raw.timestamp, `${at}.timestamp`, now) };
}

function streamMeterEvents({ store, params }) {
  const { events } = params;
  if (events === undefined) throw missingParam('events');
  if (!Array.isArray(events)) throw invalidParam('events', 'Invalid array');
  if (events.length === 0 || events.length > STREAM_MAX_EVENTS) {
    throw invalidParam('events', `events must hold 1 to ${STREAM_MAX_EVENTS} meter events; got ${events.length}.`);
  }
  const now = nowSeconds();
  // The whole batch is checked before anything is stored.
  const parsed = Array.from(events, (raw, n) => streamEvent(raw, `events[${n}]`, now));
  store.meterStats.received += parsed.length;
  for (const event of parsed) {
    if (claimIdentifier(store, event.identifier, now)) storeEvent(store, 'v2', event);
    else store.meterStats.duplicates += 1;
  }
  return {};
}

module.exports = {
  createMeterEvent,
  createMeterEventSession,
  streamMeterEvents,
  meterSessionAuthError,
  expireMeterSessions,
};
