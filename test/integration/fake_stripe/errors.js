'use strict';
// Stripe-shaped API errors: handlers throw these, the dispatcher renders
// {"error": {type, code, message, param}} with the status.

class StripeError extends Error {
  constructor(status, { type = 'invalid_request_error', code, message, param }) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
  }

  toJSON() {
    const error = { type: this.type };
    if (this.code) error.code = this.code;
    if (this.code) error.doc_url = `https://stripe.com/docs/error-codes/${this.code.replace(/_/g, '-')}`;
    error.message = this.message;
    if (this.param) error.param = this.param;
    return { error };
  }
}

// A malformed control API request (reported as 400 {"error": {"message"}}).
class BadRequest extends Error {}

function missingParam(param) {
  return new StripeError(400, {
    code: 'parameter_missing',
    param,
    message: `Missing required param: ${param}.`,
  });
}

function invalidParam(param, message) {
  return new StripeError(400, { code: 'parameter_invalid', param, message });
}

// Unknown id. `status` is 404 for the object named in the URL and 400 when
// the id came in a parameter (e.g. a price in line_items), as Stripe does.
function noSuch(kind, id, param = 'id', status = 404) {
  return new StripeError(status, {
    code: 'resource_missing',
    param,
    message: `No such ${kind}: '${id}'`,
  });
}

// Hides all of a presented key except what Stripe itself shows.
function maskKey(key) {
  if (key.length <= 12) return '*'.repeat(key.length);
  return key.slice(0, 8) + '*'.repeat(key.length - 12) + key.slice(-4);
}

function invalidApiKey(presented) {
  const message = presented
    ? `Invalid API Key provided: ${maskKey(presented)}`
    : "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').";
  return new StripeError(401, { code: presented ? 'api_key_invalid' : undefined, message });
}

function unrecognizedUrl(method, path) {
  return new StripeError(404, {
    message: `Unrecognized request URL (${method}: ${path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.`,
  });
}

// Stripe's 429 body, for the rate limit and the 429 fault alike.
function rateLimitError() {
  return new StripeError(429, {
    code: 'rate_limit',
    message: 'Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.',
  });
}

// Coerces a form string to an integer within bounds, or throws parameter_invalid.
function intParam(value, param, { min = -Infinity, max = Infinity } = {}) {
  const n = typeof value === 'number' ? value : /^-?\d+$/.test(String(value)) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n)) throw invalidParam(param, `Invalid integer: ${value}`);
  if (n < min) throw invalidParam(param, `This value must be greater than or equal to ${min}.`);
  if (n > max) throw invalidParam(param, `This value must be less than or equal to ${max}.`);
  return n;
}

function boolParam(value, param) {
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw invalidParam(param, `Invalid boolean: ${value}`);
}

function enumParam(value, param, allowed) {
  if (!allowed.includes(value)) {
    throw invalidParam(param, `Invalid ${param}: must be one of ${allowed.join(', ')}`);
  }
  return value;
}

module.exports = {
  StripeError,
  BadRequest,
  missingParam,
  invalidParam,
  noSuch,
  maskKey,
  invalidApiKey,
  unrecognizedUrl,
  rateLimitError,
  intParam,
  boolParam,
  enumParam,
};
