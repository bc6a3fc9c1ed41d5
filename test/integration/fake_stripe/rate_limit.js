'use strict';
// Stripe's request rate limit, set through POST /_fake/rate_limit: at most
// `per_second` /v1 requests in any rolling one-second window; the rest are
// answered 429 before they run.

const { performance } = require('node:perf_hooks');
const { BadRequest } = require('./errors');

const WINDOW_MS = 1000;

class RateLimiter {
  constructor() {
    this.clear();
  }

  // `perSecond` null (or undefined) lifts the limit.
  set(perSecond) {
    if (perSecond === null || perSecond === undefined) return this.clear();
    if (!Number.isInteger(perSecond) || perSecond < 1) throw new BadRequest('per_second must be a positive integer or null');
    this.perSecond = perSecond;
    this.admitted = [];
  }

  clear() {
    this.perSecond = null;
    this.admitted = []; // times (ms, monotonic) of the requests let through in the window
  }

  // True when a request may run now (and counts it). Refused requests do not
  // count, so a client that backs off for a second gets through again.
  admit(now = performance.now()) {
    if (this.perSecond === null) return true;
    let expired = 0;
    while (expired < this.admitted.length && this.admitted[expired] <= now - WINDOW_MS) expired += 1;
    if (expired) this.admitted.splice(0, expired);
    if (this.admitted.length >= this.perSecond) return false;
    this.admitted.push(now);
    return true;
  }

  describe() {
    return { per_second: this.perSecond };
  }
}

module.exports = { RateLimiter };
