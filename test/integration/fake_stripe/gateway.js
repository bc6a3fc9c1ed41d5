'use strict';
// The Stripe-side pipeline for /v1 and /v2 requests: record the request,
// inject a fault if a rule matches, authenticate (the API key, or a meter
// event session token where the route says so), pick the account the
// request acts on (Stripe-Account; connect.js), apply the rate limit,
// honour Idempotency-Key (per account), then run the endpoint handler from
// stripe_api.js on that account's state; the answer leaves after the
// configured latency.

const { StripeError, invalidApiKey, unrecognizedUrl, rateLimitError } = require('./errors');
const { PROCESSED_KINDS } = require('./faults');
const { parseForm } = require('./form');
const { jsonText, sendText, sendJson } = require('./http_io');
const { meterSessionAuthError } = require('./meter_events');
const { requestState } = require('./connect');
const { stripeRouter } = require('./stripe_api');
const { API_VERSION } = require('./templates');
const { newId, stableStringify } = require('./util');

const TRUNCATED_BODY = jsonText({
  object: 'fake_stripe.truncated',
  message: 'This body is cut short on purpose by the fault injector; a client never sees all of it.',
});

const HTML_BODY = '<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n'
  + '<body><h1>502 Bad Gateway</h1><p>The fault injector answers 200 with a proxy\'s HTML page.</p></body></html>\n';

// A complete HTTP message whose JSON is cut in half (a proxy that truncated
// the body and fixed up Content-Length).
const HALF_JSON_BODY = TRUNCATED_BODY.slice(0, TRUNCATED_BODY.length >> 1);

// A valid JSON body of exactly `bytes` bytes: an empty list (harmless if a
// client takes it) padded with a string.
function hugeBody(path, bytes) {
  const frame = jsonText({ object: 'list', data: [], has_more: false, url: path, padding: '' });
  const pad = bytes - Buffer.byteLength(frame);
  return frame.replace('"padding": ""', `"padding": "${'x'.repeat(Math.max(pad, 0))}"`);
}

// The API key a request presents: Stripe takes a Bearer token or the Basic
// auth user name (what `curl -u sk_test_...:` sends).
function presentedKey(authorization) {
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(authorization || '');
  if (bearer) return bearer[1];
  const basic = /^Basic\s+([A-Za-z0-9+/]+=*)\s*$/i.exec(authorization || '');
  if (!basic) return null;
  const [user] = Buffer.from(basic[1], 'base64').toString('utf8').split(':');
  return user || null;
}

// A body sent as Content-Type: application/json (what /v2 takes): {value}
// parsed, or {error} when it is not JSON; null for any other content type.
function jsonBody(req, rawBody) {
  const type = String(req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') return null;
  if (rawBody.trim() === '') return { value: null };
  try {
    return { value: JSON.parse(rawBody) };
  } catch (err) {
    return { value: null, error: err.message };
  }
}

// The account a request names: Stripe-Account, else Stripe-Context (the v2
// APIs' header, which a thin event's context gives, and which Stripe takes
// on /v1 too: the SDKs send it when fetching a thin event's related
// object); undefined when it names none.
function accountHeader(req, url) {
  const account = req.headers['stripe-account'];
  if (account !== undefined) return account;
  return req.headers['stripe-context'];
}

// Requests per account ("platform" for those without Stripe-Account, else
// the header as given) and per route ("GET /v1/events",
// "GET /v1/customers/:id"; the path itself when no route matches), since
// start or reset: GET /_fake/stats/accounts.
function countRequest(store, record, method, pattern) {
  const key = record.stripe_account === null ? 'platform' : record.stripe_account;
  let counts = store.requestCounts.get(key);
  if (!counts) {
    counts = { requests: 0, routes: new Map() };
    store.requestCounts.set(key, counts);
  }
  counts.requests += 1;
  const route = `${method} ${pattern}`;
  counts.routes.set(route, (counts.routes.get(route) || 0) + 1);
}

function recordRequest(store, req, url, rawBody, requestId, body) {
  const headers = { ...req.headers };
  // The key (or a meter event session token) never lands in the recording,
  // valid or not.
  if (headers.authorization !== undefined) headers.authorization = 'Bearer <redacted>';
  store.requestCount += 1;
  const account = accountHeader(req, url);
  const record = {
    seq: store.requestCount,
    received_at: Date.now(),
    method: req.method,
    path: url.pathname,
    query: parseForm(url.searchParams),
    form: body ? {} : parseForm(rawBody),
    json: body ? body.value : null,
    raw_body: rawBody,
    headers,
    connection_id: req.socket.fakeConnectionId,
    idempotency_key: headers['idempotency-key'] === undefined ? null : headers['idempotency-key'],
    stripe_version: headers['stripe-version'] || API_VERSION,
    stripe_account: account === undefined ? null : account,
    request_id: requestId,
    status: null,
  };
  store.requests.push(record);
  return record;
}

// Answers the request the way the fault rule says; no handler runs, so a
// faulted request has no side effects.
function sendFault(rule, req, res, headers) {
  const faultHeaders = { ...headers };
  if (rule.retry_after !== null) faultHeaders['Retry-After'] = String(rule.retry_after);
  if (rule.should_retry !== null) faultHeaders['Stripe-Should-Retry'] = String(rule.should_retry);
  switch (rule.kind) {
    case '429':
      return sendJson(res, 429, rateLimitError().toJSON(), faultHeaders);
    case '500':
      return sendJson(res, 500, new StripeError(500, {
        type: 'api_error',
        message: "Sorry, something went wrong. We've already been notified of the problem.",
      }).toJSON(), faultHeaders);
    case '503':
      return sendJson(res, 503, new StripeError(503, {
        type: 'api_error',
        message: 'The server is temporarily unavailable. Please retry shortly.',
      }).toJSON(), faultHeaders);
    case '401':
      return sendJson(res, 401, invalidApiKey(presentedKey(req.headers.authorization)).toJSON(), faultHeaders);
    case 'hang':
      // Never answered: the socket stays open until the client gives up or
      // the server stops.
      return undefined;
    case 'truncate':
      // Full Content-Length, half the body, then the connection drops.
      res.writeHead(200, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(TRUNCATED_BODY),
        ...faultHeaders,
      });
      return res.write(TRUNCATED_BODY.slice(0, TRUNCATED_BODY.length >> 1), () => req.socket.destroy());
    case 'reset':
      return req.socket.resetAndDestroy();
    case 'html':
      return sendText(res, 200, 'text/html; charset=utf-8', HTML_BODY, faultHeaders);
    case 'half_json':
      return sendText(res, 200, 'application/json', HALF_JSON_BODY, faultHeaders);
    case 'huge': {
      const body = hugeBody(req.url.split('?')[0], rule.bytes);
      if (!rule.chunked) return sendText(res, 200, 'application/json', body, faultHeaders);
      // No Content-Length: a client learns the size only by reading on.
      res.writeHead(200, { 'Content-Type': 'application/json', ...faultHeaders });
      for (let at = 0; at < body.length; at += 65536) res.write(body.slice(at, at + 65536));
      return res.end();
    }
    case 'empty_has_more':
      // A list page with no items that still says more wait.
      return sendJson(res, 200, { object: 'list', url: req.url.split('?')[0], has_more: true, data: [] }, faultHeaders);
    case 'echo_auth': {
      // A proxy or upstream that quotes the request back, secret included.
      const auth = req.headers.authorization || '(none)';
      return sendJson(res, 400, new StripeError(400, {
        type: 'invalid_request_error',
        code: 'header_rejected',
        param: `Authorization: ${auth}`,
        message: `The request header "Authorization: ${auth}" was rejected.`,
      }).toJSON(), faultHeaders);
    }
    default:
      throw new Error(`unknown fault kind ${rule.kind}`);
  }
}

function idempotencyMismatch(key) {
  return new StripeError(400, {
    type: 'idempotency_error',
    message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
  });
}

// Runs the handler; any non-Stripe exception is a bug in the fake and
// answers 500 api_error instead of killing the server.
function runHandler(route, ctx) {
  try {
    return { status: 200, body: route.handler(ctx) };
  } catch (err) {
    if (err instanceof StripeError) return { status: err.status, body: err.toJSON() };
    console.error('fake_stripe: handler error', err);
    return {
      status: 500,
      body: new StripeError(500, { type: 'api_error', message: `Fake Stripe internal error: ${err.message}` }).toJSON(),
    };
  }
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// Why the request may not run (a 401 StripeError), or null. Most routes take
// the API key; the meter event stream takes a session token instead.
function authError(route, req, store, apiKey) {
  const presented = presentedKey(req.headers.authorization);
  if (route && route.options.auth === 'meter_session') return meterSessionAuthError(store, presented, apiKey);
  return presented === apiKey ? null : invalidApiKey(presented);
}

// /v1 routes take form parameters (and the query string); routes with
// options.body "json" (the /v2 ones) take a JSON object, or no body.
function requestParams(route, req, record, body) {
  if (route.options.body !== 'json') return req.method === 'GET' ? record.query : { ...record.query, ...record.form };
  if (record.raw_body.trim() === '') return {};
  if (!body) throw new StripeError(400, { message: 'The request body must be JSON, sent with Content-Type: application/json.' });
  if (body.error !== undefined) throw new StripeError(400, { message: `Invalid JSON in the request body: ${body.error}` });
  if (!isPlainObject(body.value)) throw new StripeError(400, { message: 'The request body must be a JSON object.' });
  return body.value;
}

// Runs `send` now, or `ms` later on a timer so other requests go on
// meanwhile. A timer callback has no caller to catch for it.
function answerLater(ms, socket) {
  return (send) => {
    if (!ms) return send();
    return setTimeout(() => {
      try {
        send();
      } catch (err) {
        console.error('fake_stripe: delayed answer failed', err);
        socket.destroy();
      }
    }, ms);
  };
}

function resetConnection(socket) {
  if (!socket.destroyed) socket.resetAndDestroy();
}

// The account state a request acts on: the one its Stripe-Account names
// (connect.js), or for the meter event stream the one its session was made
// for. Throws 403 account_invalid for an account the key cannot act for.
function accountState(route, req, store, record) {
  const presented = presentedKey(req.headers.authorization);
  if (route && route.options.auth === 'meter_session') {
    const { account } = store.meterSessions.get(presented);
    return requestState(store, account === store.platform.id ? undefined : account, presented);
  }
  return requestState(store, record.stripe_account === null ? undefined : record.stripe_account, presented);
}

// Authentication, account, rate limit, routing, idempotency and the
// handler, for a request no answering fault took; `respond(status, text,
// headers)` answers.
function serve({ store, limiter, apiKey, baseUrl }, req, url, record, body, respond) {
  const route = stripeRouter.match(req.method, url.pathname);
  const refused = authError(route, req, store, apiKey);
  if (refused) return respond(401, jsonText(refused.toJSON()), { 'WWW-Authenticate': 'Bearer realm="Stripe"' });
  let state;
  try {
    state = accountState(route, req, store, record);
  } catch (err) {
    return respond(err.status, jsonText(err.toJSON()));
  }
  // Stripe limits an account's requests, so only authenticated ones count.
  if (!limiter.admit()) {
    store.rateLimited += 1;
    return respond(429, jsonText(rateLimitError().toJSON()), { 'Retry-After': '1' });
  }
  if (!route) return respond(404, jsonText(unrecognizedUrl(req.method, url.pathname).toJSON()));
  let params;
  try {
    params = requestParams(route, req, record, body);
  } catch (err) {
    return respond(err.status, jsonText(err.toJSON()));
  }

  // Stripe ignores Idempotency-Key on GET.
  const key = req.method === 'GET' ? null : record.idempotency_key;
  const fingerprint = stableStringify({ query: record.query, form: record.form, json: record.json });
  if (key !== null) {
    const saved = state.idempotency.get(key);
    if (saved && (saved.method !== req.method || saved.path !== url.pathname || saved.fingerprint !== fingerprint)) {
      return respond(400, jsonText(idempotencyMismatch(key).toJSON()));
    }
    if (saved) {
      return respond(saved.status, saved.text, { 'Idempotent-Replayed': 'true', 'Original-Request': saved.requestId });
    }
  }

  // Handlers see the account's state as `store`; `server` is the whole fake
  // (the connected accounts, the meter event session tokens).
  const ctx = {
    store: state,
    server: store,
    account: state.connected ? state.id : null,
    presentedKey: presentedKey(req.headers.authorization),
    params,
    path: route.params,
    request: { id: record.request_id, idempotency_key: key },
    baseUrl: baseUrl(),
  };
  const { status, body: result } = runHandler(route, ctx);
  const text = jsonText(result);
  // Like Stripe, only results of requests that executed are saved; ours
  // validate before changing anything, so that means successful ones.
  if (key !== null && status < 400) {
    state.idempotency.set(key, { method: req.method, path: url.pathname, fingerprint, status, text, requestId: record.request_id });
  }
  return respond(status, text, key !== null ? { 'Idempotency-Key': key } : {});
}

// `baseUrl()` is the server's own http://127.0.0.1:<port>, for hosted-page urls.
function createGateway({ store, faults, limiter, latency, apiKey, baseUrl }) {
  return function handleStripe(req, res, url, rawBody) {
    const requestId = newId('req_');
    const body = jsonBody(req, rawBody);
    const record = recordRequest(store, req, url, rawBody, requestId, body);
    const matched = stripeRouter.match(req.method, url.pathname);
    countRequest(store, record, req.method, matched ? matched.pattern : url.pathname);
    const headers = { 'Request-Id': requestId, 'Stripe-Version': record.stripe_version };
    const later = answerLater(latency.delayFor(url.pathname), req.socket);

    const fault = faults.take(req.method, url.pathname, record.stripe_account);
    if (fault && !PROCESSED_KINDS.includes(fault.kind)) {
      record.status = fault.kind;
      return later(() => sendFault(fault, req, res, headers));
    }
    const respond = (status, text, extra = {}) => {
      if (fault) {
        // after_reset: the request went through, the client only sees the
        // connection reset.
        record.status = fault.kind;
        record.processed_status = status;
        return later(() => resetConnection(req.socket));
      }
      record.status = status;
      return later(() => sendText(res, status, 'application/json', text, { ...headers, ...extra }));
    };
    return serve({ store, limiter, apiKey, baseUrl }, req, url, record, body, respond);
  };
}

module.exports = { createGateway };
