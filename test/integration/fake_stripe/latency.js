'use strict';
// Network latency, set through POST /_fake/latency: every /v1 and /v2
// answer whose path starts with `path` (all of them without one) leaves
// `ms` later. The request is processed on arrival, only the answer waits,
// on a timer, so other requests go on meanwhile (a client that gives up
// early has still had its request done, as with a slow network).

const { BadRequest } = require('./errors');

const MAX_MS = 10000;

class Latency {
  constructor() {
    this.clear();
  }

  set(body) {
    const { ms, path } = body;
    if (!Number.isInteger(ms) || ms < 0 || ms > MAX_MS) throw new BadRequest(`"ms" must be an integer from 0 to ${MAX_MS}`);
    if (path !== undefined && path !== null && typeof path !== 'string') throw new BadRequest('"path" must be a string (a path prefix)');
    this.ms = ms;
    this.path = path || null;
  }

  clear() {
    this.ms = 0;
    this.path = null; // null: every request
  }

  // Milliseconds to hold the answer to a request for `path`.
  delayFor(path) {
    if (this.ms === 0 || (this.path !== null && !path.startsWith(this.path))) return 0;
    return this.ms;
  }

  describe() {
    return { ms: this.ms, path: this.path };
  }
}

module.exports = { Latency };
