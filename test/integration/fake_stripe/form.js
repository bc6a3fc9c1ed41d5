'use strict';
// Parser for Stripe's form encoding: `a[b][0][c]=v`, `expand[]=x`.
// Numeric index segments and `[]` build arrays, other segments build objects;
// values stay strings, as they arrive at Stripe.

// Keys that would let a request body reach Object.prototype.
const FORBIDDEN = new Set(['__proto__', 'constructor', 'prototype']);

// "line_items[0][price]" -> ["line_items", "0", "price"]; "expand[]" -> ["expand", ""].
function splitKey(key) {
  const open = key.indexOf('[');
  if (open <= 0 || !key.endsWith(']')) return [key];
  const segments = [key.slice(0, open)];
  for (const m of key.slice(open).matchAll(/\[([^\]]*)\]/g)) segments.push(m[1]);
  return segments;
}

function isIndex(segment) {
  return segment === '' || /^\d+$/.test(segment);
}

function assign(root, segments, value) {
  let node = root;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    const last = i === segments.length - 1;
    const slot = Array.isArray(node) && seg === '' ? node.length : seg;
    if (last) {
      node[slot] = value;
      return;
    }
    const wantArray = isIndex(segments[i + 1]);
    const existing = node[slot];
    // A scalar or wrong container already there: the later key wins, as in Rack.
    if (existing === null || typeof existing !== 'object' || Array.isArray(existing) !== wantArray) {
      node[slot] = wantArray ? [] : {};
    }
    node = node[slot];
  }
}

// Parses an x-www-form-urlencoded string (or URLSearchParams) into nested
// objects/arrays.
function parseForm(input) {
  const params = input instanceof URLSearchParams ? input : new URLSearchParams(input || '');
  const out = {};
  for (const [key, value] of params) {
    const segments = splitKey(key);
    if (segments.some((s) => FORBIDDEN.has(s))) continue;
    assign(out, segments, value);
  }
  return out;
}

module.exports = { parseForm };
