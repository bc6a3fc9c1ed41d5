'use strict';
// In-memory state of the fake: Stripe objects by id (and per type in
// insertion order, for the list endpoints), the event log, the idempotency
// cache, meter events and meter event sessions, and the request recording.

const { BadRequest, noSuch } = require('./errors');
const { buildEvent, buildPrice, buildProduct } = require('./templates');

// Default catalogue every fresh or reset fake starts with.
const DEFAULT_CATALOGUE = [
  { product: 'prod_basic', name: 'Basic', price: 'price_basic', lookup_key: 'basic', unit_amount: 1000, recurring: true },
  { product: 'prod_pro', name: 'Pro', price: 'price_pro', lookup_key: 'pro', unit_amount: 5000, recurring: true },
  { product: 'prod_onetime', name: 'One-time', price: 'price_onetime', lookup_key: null, unit_amount: 2500, recurring: false },
];

class Store {
  constructor() {
    this.reset();
  }

  reset() {
    this.objects = new Map();
    this.byType = new Map(); // type -> {items: objects oldest -> newest, positions: id -> index}
    this.events = []; // oldest -> newest; the array index is the event's sequence
    this.eventPositions = new Map(); // event id -> index in this.events
    this.idempotency = new Map(); // Idempotency-Key -> saved response
    this.meterEvents = []; // stored meter events of both APIs, each with `api` "v1" or "v2"
    this.meterIdentifiers = new Map(); // identifier -> unix time first seen
    this.meterStats = { received: 0, stored: 0, duplicates: 0 };
    this.meterSessions = new Map(); // v2 authentication_token -> {id, expiresAt (ms)}
    this.previews = new Map(); // invoice previews by id: shown by the control API only, never listed
    this.checkoutDetails = new Map(); // session id -> request data Stripe keeps off the session object
    this.requests = [];
    this.requestCount = 0;
    this.connectionsOpened = 0;
    this.rateLimited = 0; // /v1 and /v2 requests answered 429 by the rate limit
    this.seedCatalogue();
  }

  seedCatalogue() {
    for (const entry of DEFAULT_CATALOGUE) {
      this.put(buildProduct({ id: entry.product, name: entry.name, default_price: entry.price }));
      this.put(buildPrice({
        id: entry.price,
        product: entry.product,
        lookup_key: entry.lookup_key,
        unit_amount: entry.unit_amount,
        currency: 'usd',
        type: entry.recurring ? 'recurring' : 'one_time',
        recurring: entry.recurring ? { interval: 'month', interval_count: 1 } : null,
      }));
    }
  }

  // Stores or replaces an object. A replaced object keeps its list position
  // (Stripe objects never move in a list); a new one is the newest.
  put(object) {
    const old = this.objects.get(object.id);
    if (old && old.object !== object.object) this.unindex(old);
    this.objects.set(object.id, object);
    const index = this.typeIndex(object.object);
    const at = index.positions.get(object.id);
    if (at !== undefined) {
      index.items[at] = object;
    } else {
      index.positions.set(object.id, index.items.length);
      index.items.push(object);
    }
    return object;
  }

  // {items, positions} of one type, created on first use.
  typeIndex(type) {
    let index = this.byType.get(type);
    if (!index) {
      index = { items: [], positions: new Map() };
      this.byType.set(type, index);
    }
    return index;
  }

  // Drops an object from its type's list (only when an id changes type, which is rare).
  unindex(object) {
    const index = this.typeIndex(object.object);
    const at = index.positions.get(object.id);
    if (at === undefined) return;
    index.items.splice(at, 1);
    index.positions.clear();
    index.items.forEach((item, i) => index.positions.set(item.id, i));
  }

  // The object with that id if it is of `type` (ids are global, so a
  // subscription id asked for as a customer is simply missing).
  get(id, type) {
    const object = this.objects.get(id);
    return object && object.object === type ? object : undefined;
  }

  // Like get(), but throws Stripe's resource_missing error. `kind` is the
  // human name used in the message ("customer", "checkout.session", ...).
  find(id, type, { kind = type, param = 'id', status = 404 } = {}) {
    const object = typeof id === 'string' ? this.get(id, type) : undefined;
    if (!object) throw noSuch(kind, id, param, status);
    return object;
  }

  // Objects of `type`, oldest first. The array is the store's own: do not modify it.
  ofType(type) {
    return this.typeIndex(type).items;
  }

  // Index of an object of `type` in ofType(type), or undefined.
  positionOf(type, id) {
    return this.typeIndex(type).positions.get(id);
  }

  // Appends a complete event; ids must stay unique because they are list cursors.
  appendEvent(event) {
    if (this.eventPositions.has(event.id)) throw new BadRequest(`duplicate event id ${event.id}`);
    this.eventPositions.set(event.id, this.events.length);
    this.events.push(event);
    return event;
  }

  // Inserts complete events just before the event `beforeId`: listed late,
  // behind events that were listed already (Stripe's list is eventually
  // consistent), so a cursor past that position never sees them.
  insertEventsBefore(beforeId, events) {
    const at = this.eventPositions.get(beforeId);
    if (at === undefined) throw new BadRequest(`no event ${beforeId} to insert before`);
    for (const event of events) {
      if (this.eventPositions.has(event.id)) throw new BadRequest(`duplicate event id ${event.id}`);
    }
    this.events.splice(at, 0, ...events);
    this.reindexEvents();
  }

  reindexEvents() {
    this.eventPositions.clear();
    this.events.forEach((event, index) => this.eventPositions.set(event.id, index));
  }

  // Drops the events that `expired(event, index)` selects, as Stripe forgets
  // events after 30 days; their ids become unknown cursors. Returns how many.
  expireEvents(expired) {
    const before = this.events.length;
    this.events = this.events.filter((event, index) => !expired(event, index));
    this.reindexEvents();
    return before - this.events.length;
  }

  // Records that `object` went through `type` now (snapshotting it).
  emit(type, object, { previousAttributes, request, created } = {}) {
    return this.appendEvent(buildEvent({ type, object, previousAttributes, request, created }));
  }

  eventPosition(id) {
    return this.eventPositions.get(id);
  }
}

module.exports = { Store };
