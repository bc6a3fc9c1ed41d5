'use strict';
// Fault injection rules for /v1 and /v2 requests, set through POST
// /_fake/faults. A rule's path is a prefix of the request path.

const { BadRequest } = require('./errors');
const { seededRandom } = require('./util');

const KINDS = ['429', '500', '503', '401', 'hang', 'truncate', 'reset', 'html', 'half_json', 'huge', 'echo_auth',
  'empty_has_more', 'after_reset'];

// Kinds whose request is processed in full (side effects kept) before the
// fault replaces the answer; every other kind answers instead of the handler.
const PROCESSED_KINDS = ['after_reset'];

// Bounds of a "huge" body (bytes): big enough to hold its JSON frame, small
// enough not to exhaust the fake.
const HUGE_MIN = 256;
const HUGE_MAX = 256 * 1024 * 1024;
const HUGE_DEFAULT = 1024 * 1024;

function parseRule(raw, index) {
  const where = `rules[${index}]`;
  if (!raw || typeof raw !== 'object') throw new BadRequest(`${where} must be an object`);
  const kind = String(raw.kind);
  if (!KINDS.includes(kind)) throw new BadRequest(`${where}.kind must be one of ${KINDS.join(', ')}`);
  if (raw.rate !== undefined && raw.count !== undefined) throw new BadRequest(`${where}: give count or rate, not both`);
  const rule = {
    kind,
    path: raw.path === undefined ? '' : String(raw.path),
    method: raw.method === undefined ? null : String(raw.method).toUpperCase(),
    // A Stripe-Account value (the request's header as given), or "platform"
    // for requests without one; null: any.
    account: raw.account === undefined || raw.account === null ? null : String(raw.account),
    retry_after: raw.retry_after === undefined ? null : raw.retry_after,
    should_retry: raw.should_retry === undefined ? null : Boolean(raw.should_retry),
  };
  if (kind === 'huge') {
    const bytes = raw.bytes === undefined ? HUGE_DEFAULT : Number(raw.bytes);
    if (!Number.isInteger(bytes) || bytes < HUGE_MIN || bytes > HUGE_MAX) {
      throw new BadRequest(`${where}.bytes must be an integer from ${HUGE_MIN} to ${HUGE_MAX}`);
    }
    rule.bytes = bytes;
    rule.chunked = Boolean(raw.chunked);
  } else if (raw.bytes !== undefined || raw.chunked !== undefined) {
    throw new BadRequest(`${where}: bytes and chunked apply to kind huge only`);
  }
  if (raw.rate !== undefined) {
    const rate = Number(raw.rate);
    if (!(rate > 0 && rate <= 1)) throw new BadRequest(`${where}.rate must be in (0, 1]`);
    rule.rate = rate;
    rule.seed = raw.seed === undefined ? 1 : Number(raw.seed);
    rule.random = seededRandom(rule.seed);
  } else {
    const count = raw.count === undefined ? 1 : Number(raw.count);
    if (!Number.isInteger(count) || count < 1) throw new BadRequest(`${where}.count must be a positive integer`);
    rule.remaining = count;
  }
  return rule;
}

class FaultInjector {
  constructor() {
    this.rules = [];
  }

  // Replaces the active rule set.
  set(rawRules) {
    if (!Array.isArray(rawRules)) throw new BadRequest('rules must be an array');
    this.rules = rawRules.map(parseRule);
  }

  clear() {
    this.rules = [];
  }

  // The rule that applies to this request, if any, consuming one use of it.
  // A rate rule draws from its PRNG for every request it matches, so a given
  // seed faults the same positions of the matching request sequence.
  take(method, path, account = null) {
    const accountKey = account === null ? 'platform' : account;
    for (const rule of this.rules) {
      if (!path.startsWith(rule.path) || (rule.method && rule.method !== method)) continue;
      if (rule.account !== null && rule.account !== accountKey) continue;
      if (rule.rate !== undefined) {
        if (rule.random() < rule.rate) return rule;
      } else if (rule.remaining > 0) {
        rule.remaining -= 1;
        return rule;
      }
    }
    return null;
  }

  describe() {
    return this.rules.map(({ random, ...visible }) => visible);
  }
}

module.exports = { FaultInjector, PROCESSED_KINDS };
