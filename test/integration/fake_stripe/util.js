'use strict';
// Small helpers shared by the fake Stripe modules.

const crypto = require('node:crypto');

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

// Random alphanumeric string. Ids only need to be unique, not secret, but
// crypto keeps them unpredictable like Stripe's.
function randomAlnum(length) {
  const bytes = crypto.randomBytes(length);
  let out = '';
  for (const b of bytes) out += ALNUM[b % ALNUM.length];
  return out;
}

// Length of an id's random tail (customer/item/request ids are short).
function idTailLength(prefix) {
  if (prefix === 'cs_test_') return 58;
  return ['cus_', 'si_', 'req_', 'bpc_'].includes(prefix) ? 14 : 24;
}

// Stripe-looking id: prefix + random tail.
function newId(prefix) {
  return prefix + randomAlnum(idTailLength(prefix));
}

// Like newId, with the tail drawn from `random` (a seededRandom), so a seed
// reproduces the same ids. A `tag` (an account's, state.js) starts the tail,
// so two accounts given the same seed still draw different ids.
function seededId(prefix, random, length = idTailLength(prefix), tag = '') {
  let tail = tag;
  while (tail.length < length) tail += ALNUM[Math.floor(random() * ALNUM.length)];
  return prefix + tail;
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

// Adds `count` price intervals to a unix timestamp, using calendar months and
// years like Stripe's billing periods do: Jan 31 + 1 month is Feb 28/29, not
// Mar 3.
function addInterval(ts, interval = 'month', count = 1) {
  const d = new Date(ts * 1000);
  if (interval === 'week' || interval === 'day') {
    d.setUTCDate(d.getUTCDate() + (interval === 'week' ? 7 : 1) * count);
    return Math.floor(d.getTime() / 1000);
  }
  const months = (interval === 'year' ? 12 : 1) * count;
  const day = d.getUTCDate();
  d.setUTCDate(1);
  d.setUTCMonth(d.getUTCMonth() + months);
  const lastDay = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 0)).getUTCDate();
  d.setUTCDate(Math.min(day, lastDay));
  return Math.floor(d.getTime() / 1000);
}

// Deterministic PRNG (mulberry32) so fault rates and generated event streams
// are reproducible from a seed.
function seededRandom(seed) {
  let a = (Number(seed) >>> 0) || 1;
  return function next() {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// JSON with object keys sorted, so two parameter sets that only differ in
// order produce the same idempotency fingerprint.
function stableStringify(value) {
  if (Array.isArray(value)) return '[' + value.map(stableStringify).join(',') + ']';
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return '{' + keys.map((k) => JSON.stringify(k) + ':' + stableStringify(value[k])).join(',') + '}';
  }
  return JSON.stringify(value === undefined ? null : value);
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// Stripe's event `data.previous_attributes`: the old values of what changed.
// Nested objects report only their changed keys (a key that did not exist
// before shows as null); arrays and scalars report the whole old value.
function previousAttributes(before, after) {
  const prev = {};
  for (const key of Object.keys(after)) {
    const [old, now] = [before[key], after[key]];
    if (JSON.stringify(old) === JSON.stringify(now)) continue;
    prev[key] = isPlainObject(old) && isPlainObject(now) ? previousAttributes(old, now)
      : old === undefined ? null : old;
  }
  for (const key of Object.keys(before)) {
    if (!Object.hasOwn(after, key)) prev[key] = before[key];
  }
  return prev;
}

module.exports = {
  randomAlnum,
  newId,
  seededId,
  nowSeconds,
  addInterval,
  seededRandom,
  stableStringify,
  previousAttributes,
};
