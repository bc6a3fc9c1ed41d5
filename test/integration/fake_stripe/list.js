'use strict';
// Stripe list semantics: newest first, `limit`, `starting_after` (older than
// the cursor), `ending_before` (newer than the cursor), `created[...]` ranges.

const { intParam, invalidParam, noSuch } = require('./errors');

function parseListParams(params) {
  const limit = params.limit === undefined ? 10 : intParam(params.limit, 'limit', { min: 1, max: 100 });
  const startingAfter = params.starting_after;
  const endingBefore = params.ending_before;
  if (startingAfter !== undefined && endingBefore !== undefined) {
    throw invalidParam('ending_before', 'You may only specify one of these parameters: ending_before, starting_after.');
  }
  return { limit, startingAfter, endingBefore };
}

// Walks `items` from index `from` in direction `step`, keeping up to `max`
// items that `matches`.
function collect(items, from, step, max, matches) {
  const out = [];
  for (let i = from; i >= 0 && i < items.length && out.length < max; i += step) {
    if (matches(items[i])) out.push(items[i]);
  }
  return out;
}

// One page of `items` (stored oldest -> newest) in newest-first order.
// `positionOf(id)` gives a cursor's index in `items`; the caller has already
// rejected unknown cursors. The cursor itself need not match the filter.
// With ending_before, Stripe returns the `limit` matching items closest above
// the cursor (still newest first) and has_more tells whether newer ones remain.
function pageNewestFirst(items, { limit, startingAfter, endingBefore }, positionOf, matches = () => true) {
  if (endingBefore !== undefined) {
    const found = collect(items, positionOf(endingBefore) + 1, +1, limit + 1, matches);
    return { data: found.slice(0, limit).reverse(), has_more: found.length > limit };
  }
  const from = startingAfter !== undefined ? positionOf(startingAfter) - 1 : items.length - 1;
  const found = collect(items, from, -1, limit + 1, matches);
  return { data: found.slice(0, limit), has_more: found.length > limit };
}

// One page of `items` in their stored order (oldest first), as Stripe lists a
// subscription's items: starting_after walks on, ending_before walks back.
function pageInOrder(items, { limit, startingAfter, endingBefore }, positionOf, matches = () => true) {
  if (endingBefore !== undefined) {
    const found = collect(items, positionOf(endingBefore) - 1, -1, limit + 1, matches);
    return { data: found.slice(0, limit).reverse(), has_more: found.length > limit };
  }
  const from = startingAfter !== undefined ? positionOf(startingAfter) + 1 : 0;
  const found = collect(items, from, +1, limit + 1, matches);
  return { data: found.slice(0, limit), has_more: found.length > limit };
}

// A cursor must name an object of the list (matching the filters or not);
// Stripe answers an unknown one 404 resource_missing, naming the param.
function checkCursors({ startingAfter, endingBefore }, isKnown, kind) {
  for (const [param, id] of [['starting_after', startingAfter], ['ending_before', endingBefore]]) {
    if (id !== undefined && !isKnown(id)) throw noSuch(kind, id, param);
  }
}

// `created` is either an exact timestamp or {gt, gte, lt, lte}.
function createdMatcher(created) {
  if (created === undefined) return () => true;
  if (typeof created !== 'object') {
    const exact = intParam(created, 'created');
    return (item) => item.created === exact;
  }
  const bounds = {};
  for (const [op, value] of Object.entries(created)) {
    if (!['gt', 'gte', 'lt', 'lte'].includes(op)) {
      throw invalidParam(`created[${op}]`, `Received unknown parameter: created[${op}]`);
    }
    bounds[op] = intParam(value, `created[${op}]`);
  }
  return (item) =>
    (bounds.gt === undefined || item.created > bounds.gt) &&
    (bounds.gte === undefined || item.created >= bounds.gte) &&
    (bounds.lt === undefined || item.created < bounds.lt) &&
    (bounds.lte === undefined || item.created <= bounds.lte);
}

function listBody(url, page) {
  return { object: 'list', url, has_more: page.has_more, data: page.data };
}

// All `matchers` (null entries are filters not given) must accept an item.
function allOf(matchers) {
  const given = matchers.filter(Boolean);
  return (item) => given.every((matches) => matches(item));
}

module.exports = {
  parseListParams, pageNewestFirst, pageInOrder, checkCursors, createdMatcher, allOf, listBody,
};
