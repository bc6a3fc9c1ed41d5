'use strict';
// In-memory state of the fake. Each Stripe account (the platform, and any
// number of Connect accounts) has an AccountState: its objects by id (and per
// type in insertion order, for the list endpoints), its event log, its
// idempotency cache, its meter events and invoice previews. The Store holds
// the platform's state, the connected accounts (connect.js), and what is
// global: meter event session tokens, the request recording and counters.

const { BadRequest, noSuch } = require('./errors');
const { buildAccount, buildEvent, buildPrice, buildProduct } = require('./templates');
const { nowSeconds } = require('./util');
const { addTwin } = require('./thin');

// The platform's own account id (GET /v1/account without Stripe-Account).
const PLATFORM_ACCOUNT_ID = 'acct_1FakePlatform001';

// Default catalogue every fresh or reset fake starts with.
const DEFAULT_CATALOGUE = [
  { product: 'prod_basic', name: 'Basic', price: 'price_basic', lookup_key: 'basic', unit_amount: 1000, recurring: true },
  { product: 'prod_pro', name: 'Pro', price: 'price_pro', lookup_key: 'pro', unit_amount: 5000, recurring: true },
  { product: 'prod_onetime', name: 'One-time', price: 'price_onetime', lookup_key: null, unit_amount: 2500, recurring: false },
];

// One account's objects, events, idempotency keys and meter events.
// `id` is the account's id; `connected` is true for a Connect account (its
// events carry a top-level `account`), false for the platform. `tag` is a
// short string unique among the fake's accounts that seeded generators put
// into the ids they draw, so the same seed in two accounts never gives two
// objects one id ('' for the platform, whose seeded ids stay as they were).
class AccountState {
  constructor({ id, connected = false, tag = '', catalogue = true } = {}) {
    this.id = id;
    this.connected = connected;
    this.tag = tag;
    this.objects = new Map();
    this.byType = new Map(); // type -> {items: objects oldest -> newest, positions: id -> index}
    this.events = []; // oldest -> newest; the array index is the event's sequence
    this.eventPositions = new Map(); // event id -> index in this.events
    this.idempotency = new Map(); // Idempotency-Key -> saved response
    this.meterEvents = []; // stored meter events of both APIs, each with `api` "v1" or "v2"
    this.meterIdentifiers = new Map(); // identifier -> unix time first seen
    this.meterStats = { received: 0, stored: 0, duplicates: 0 };
    this.previews = new Map(); // invoice previews by id: shown by the control API only, never listed
    this.checkoutDetails = new Map(); // session id -> request data Stripe keeps off the session object
    if (catalogue) this.seedCatalogue();
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

  // A connected account's events name it in a top-level `account`, right
  // after `object` as Stripe writes it (an event given with its own
  // `account` keeps it). The platform's events have none.
  withAccount(event) {
    if (!this.connected || Object.hasOwn(event, 'account')) return event;
    const { id, object, ...rest } = event;
    return { id, object, account: this.id, ...rest };
  }

  // Appends a complete event; ids must stay unique because they are list cursors.
  appendEvent(given) {
    if (this.eventPositions.has(given.id)) throw new BadRequest(`duplicate event id ${given.id}`);
    const event = this.withAccount(given);
    this.eventPositions.set(event.id, this.events.length);
    this.events.push(event);
    addTwin(this, event);
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
    const listed = events.map((event) => this.withAccount(event));
    this.events.splice(at, 0, ...listed);
    this.reindexEvents();
    for (const event of listed) addTwin(this, event);
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

// Short base-62 strings, unique per serial number: the tags of connected
// accounts (4 characters: 14 million accounts).
const TAG_DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
function serialTag(serial, width = 4) {
  let tag = '';
  for (let n = serial; tag.length < width; n = Math.floor(n / 62)) tag = TAG_DIGITS[n % 62] + tag;
  return tag;
}

// The whole fake: the platform's state, the connected accounts' states (in
// the order they were connected, which is GET /v1/accounts' order), and what
// belongs to no account.
class Store {
  constructor() {
    this.reset();
  }

  reset() {
    this.platform = new AccountState({ id: PLATFORM_ACCOUNT_ID });
    this.platform.account = buildAccount({
      id: PLATFORM_ACCOUNT_ID, name: 'Fake Stripe platform', email: 'platform@example.com', created: nowSeconds(),
    });
    this.connected = new Map(); // account id -> AccountState, oldest first
    this.accountList = []; // the connected AccountStates, oldest first (deauthorized ones too)
    this.accountPositions = new Map(); // account id -> index in accountList
    this.meterSessions = new Map(); // v2 authentication_token -> {id, expiresAt (ms), account}
    this.requests = [];
    this.requestCount = 0;
    this.requestCounts = new Map(); // "platform" or the Stripe-Account value -> {requests, routes: Map}
    this.connectionsOpened = 0;
    this.rateLimited = 0; // /v1 and /v2 requests answered 429 by the rate limit
  }

  // Adds a connected account (an Account object, complete); its state starts
  // empty or with the default catalogue.
  addAccount(account, { catalogue = true } = {}) {
    if (this.state(account.id)) throw new BadRequest(`account ${account.id} exists already`);
    const state = new AccountState({
      id: account.id, connected: true, tag: serialTag(this.accountList.length + 1), catalogue,
    });
    state.account = account;
    state.authorized = true;
    this.connected.set(account.id, state);
    this.accountPositions.set(account.id, this.accountList.length);
    this.accountList.push(state);
    return state;
  }

  // The state of the platform or of a connected account (authorized or
  // not), by account id.
  state(id) {
    if (id === this.platform.id) return this.platform;
    return this.connected.get(id);
  }

  // Every account's state, the platform's first.
  states() {
    return [this.platform, ...this.accountList];
  }

  // {state, object} for the first account (the platform's first) that holds
  // an object `id` (of `type`, if given), or undefined. Generated ids are
  // unique across accounts; ids an account chose may repeat in others.
  locate(id, type) {
    for (const state of this.states()) {
      const object = type ? state.get(id, type) : state.objects.get(id);
      if (object) return { state, object };
    }
    return undefined;
  }
}

module.exports = { AccountState, Store, PLATFORM_ACCOUNT_ID };
