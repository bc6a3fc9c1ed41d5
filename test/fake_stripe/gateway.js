'use strict';
// The Stripe-side pipeline for /v1 requests: record the request, inject a
// fault if a rule matches, authenticate, apply the rate limit, honour
// Idempotency-Key, then run the endpoint handler from stripe_api.js.

const { StripeError, invalidApiKey, unrecognizedUrl, rateLimitError } = require('./errors');
const { parseForm } = require('./form');
const { jsonText, sendText, sendJson } = require('./http_io');
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

function recordRequest(store, req, url, rawBody, requestId) {
  const headers = { ...req.headers };
  // The key never lands in the recording, valid or not.
  if (headers.authorization !== undefined) headers.authorization = 'Bearer <redacted>';
  store.requestCount += 1;
  const record = {
    seq: store.requestCount,
    method: req.method,
    path: url.pathname,
    query: parseForm(url.searchParams),
    form: parseForm(rawBody),
    raw_body: rawBody,
    headers,
    connection_id: req.socket.fakeConnectionId,
    idempotency_key: headers['idempotency-key'] === undefined ? null : headers['idempotency-key'],
    stripe_version: headers['stripe-version'] || API_VERSION,
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

// `baseUrl()` is the server's own http://127.0.0.1:<port>, for hosted-page urls.
function createGateway({ store, faults, limiter, apiKey, baseUrl }) {
  return function handleStripe(req, res, url, rawBody) {
    const requestId = newId('req_');
    const record = recordRequest(store, req, url, rawBody, requestId);
    const headers = { 'Request-Id': requestId, 'Stripe-Version': record.stripe_version };
    const respond = (status, text, extra = {}) => {
      record.status = status;
      sendText(res, status, 'application/json', text, { ...headers, ...extra });
    };

    const fault = faults.take(req.method, url.pathname);
    if (fault) {
      record.status = fault.kind;
      return sendFault(fault, req, res, headers);
    }
    if (presentedKey(req.headers.authorization) !== apiKey) {
      return respond(401, jsonText(invalidApiKey(presentedKey(req.headers.authorization)).toJSON()),
        { 'WWW-Authenticate': 'Bearer realm="Stripe"' });
    }
    // Stripe limits an account's requests, so only authenticated ones count.
    if (!limiter.admit()) {
      store.rateLimited += 1;
      return respond(429, jsonText(rateLimitError().toJSON()), { 'Retry-After': '1' });
    }
    const route = stripeRouter.match(req.method, url.pathname);
    if (!route) return respond(404, jsonText(unrecognizedUrl(req.method, url.pathname).toJSON()));

    // Stripe ignores Idempotency-Key on GET.
    const key = req.method === 'GET' ? null : record.idempotency_key;
    const fingerprint = stableStringify({ query: record.query, form: record.form });
    if (key !== null) {
      const saved = store.idempotency.get(key);
      if (saved && (saved.method !== req.method || saved.path !== url.pathname || saved.fingerprint !== fingerprint)) {
        return respond(400, jsonText(idempotencyMismatch(key).toJSON()));
      }
      if (saved) {
        return respond(saved.status, saved.text, { 'Idempotent-Replayed': 'true', 'Original-Request': saved.requestId });
      }
    }

    const params = req.method === 'GET' ? record.query : { ...record.query, ...record.form };
    const ctx = {
      store,
      params,
      path: route.params,
      request: { id: requestId, idempotency_key: key },
      baseUrl: baseUrl(),
    };
    const { status, body } = runHandler(route, ctx);
    const text = jsonText(body);
    // Like Stripe, only results of requests that executed are saved; ours
    // validate before changing anything, so that means successful ones.
    if (key !== null && status < 400) {
      store.idempotency.set(key, { method: req.method, path: url.pathname, fingerprint, status, text, requestId });
    }
    return respond(status, text, key !== null ? { 'Idempotency-Key': key } : {});
  };
}

module.exports = { createGateway };
