'use strict';
// Synthetic but realistic event streams for load and pagination tests
// (POST /_fake/events {"generate": {...}}). A pool of customers goes through
// customer.created -> customer.subscription.created -> a random mix of
// customer.updated, customer.subscription.updated and invoice.paid (and, in
// a connected account given "account_updates", account.updated). The
// objects are stored too, so a consumer can fetch what the events name.
// Events go to one account's state; generateEvents() also spreads them over
// several ("accounts"), each account getting the whole `count` (or `users`).

const { BadRequest } = require('./errors');
const { updateAccount } = require('./connect');
const { buildCustomer, buildSubscription, buildInvoice, planFromPrice } = require('./templates');
const { addInterval, nowSeconds, seededRandom, previousAttributes } = require('./util');
const { LifecycleGenerator } = require('./lifecycle');

function share(value, name) {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) throw new BadRequest(`generate.${name} must be from 0 to 1`);
  return value;
}

function positiveInt(value, name, fallback) {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new BadRequest(`generate.${name} must be a positive integer`);
  return n;
}

class EventGenerator {
  constructor(store, options) {
    this.store = store;
    this.count = positiveInt(options.count, 'count', 100);
    this.customers = positiveInt(options.customers, 'customers', 10);
    this.perSecond = positiveInt(options.per_second, 'per_second', 5);
    this.start = options.start_created === undefined
      ? nowSeconds() - Math.ceil(this.count / this.perSecond)
      : positiveInt(options.start_created, 'start_created');
    this.random = seededRandom(options.seed === undefined ? 1 : options.seed);
    this.pool = new Array(this.customers); // slot -> {customer, subscription}
    this.accountUpdates = share(options.account_updates, 'account_updates');
    if (this.accountUpdates > 0 && !store.connected) {
      throw new BadRequest('generate.account_updates needs a connected account ("account")');
    }
    this.accountUpdateCount = 0;
    for (const price of ['price_basic', 'price_pro']) {
      if (!store.get(price, 'price')) throw new BadRequest(`generate needs the price ${price} in the account`);
    }
  }

  run() {
    const first = this.store.events.length;
    for (let i = 0; i < this.count; i++) {
      this.created = this.start + Math.floor(i / this.perSecond);
      this.step(Math.floor(this.random() * this.customers));
    }
    const appended = this.store.events.slice(first);
    return { appended: appended.length, first_id: appended[0].id, last_id: appended[appended.length - 1].id };
  }

  emit(type, object, previous) {
    this.store.emit(type, object, { previousAttributes: previous, created: this.created });
  }

  step(slot) {
    // Drawn only when asked for, so other streams stay as they were.
    if (this.accountUpdates > 0 && this.random() < this.accountUpdates) return this.updateAccount();
    const entry = this.pool[slot];
    if (!entry) return this.createCustomer(slot);
    if (!entry.subscription) return this.subscribe(entry);
    const roll = this.random();
    if (roll < 0.3) return this.updateCustomer(entry);
    if (roll < 0.65) return this.updateSubscription(entry);
    return this.payInvoice(entry);
  }

  // account.updated, in turn: a new business name, charges_enabled,
  // payouts_enabled, requirements.currently_due toggled.
  updateAccount() {
    const { account } = this.store;
    const k = this.accountUpdateCount;
    this.accountUpdateCount += 1;
    const base = String(account.business_profile.name || this.store.id).replace(/ \(\d+\)$/, '');
    const fields = [
      { name: `${base} (${k + 1})` },
      { charges_enabled: !account.charges_enabled },
      { payouts_enabled: !account.payouts_enabled },
      { currently_due: account.requirements.currently_due.length ? [] : ['external_account'] },
    ][k % 4];
    updateAccount(this.store, fields, { created: this.created });
  }

  createCustomer(slot) {
    const customer = this.store.put(buildCustomer({
      email: `user${slot}@example.com`,
      name: `User ${slot}`,
      metadata: { user_ref: `u${slot}` },
      created: this.created,
    }));
    this.pool[slot] = { customer, subscription: null };
    this.emit('customer.created', customer);
  }

  subscribe(entry) {
    const price = this.store.get('price_basic', 'price');
    entry.subscription = this.store.put(buildSubscription({
      customer: entry.customer.id,
      lines: [{ price, quantity: 1 }],
      status: 'active',
      periodStart: this.created,
      periodEnd: addInterval(this.created, 'month', 1),
      created: this.created,
    }));
    this.emit('customer.subscription.created', entry.subscription);
  }

  updateCustomer({ customer }) {
    const before = structuredClone(customer);
    customer.metadata = { ...customer.metadata, updates: String(Number(customer.metadata.updates || 0) + 1) };
    this.emit('customer.updated', customer, previousAttributes(before, customer));
  }

  // Alternates between switching plans and toggling cancel_at_period_end.
  updateSubscription({ subscription }) {
    const before = structuredClone(subscription);
    const [item] = subscription.items.data;
    if (this.random() < 0.5) {
      const next = this.store.get(item.price.id === 'price_basic' ? 'price_pro' : 'price_basic', 'price');
      item.price = structuredClone(next);
      item.plan = planFromPrice(next);
    } else {
      subscription.cancel_at_period_end = !subscription.cancel_at_period_end;
      subscription.cancel_at = subscription.cancel_at_period_end ? item.current_period_end : null;
    }
    this.emit('customer.subscription.updated', subscription, previousAttributes(before, subscription));
  }

  payInvoice({ customer, subscription }) {
    const invoice = this.store.put(buildInvoice({
      subscription,
      customer,
      billingReason: 'subscription_cycle',
      paid: true,
      productName: (id) => this.store.get(id, 'product').name,
      created: this.created,
    }));
    customer.next_invoice_sequence += 1;
    subscription.latest_invoice = invoice.id;
    this.emit('invoice.paid', invoice);
  }
}

// {"mode": "lifecycle", ...}: users' subscription lifecycles (lifecycle.js);
// otherwise the random mix above; in one account's state.
// The options are checked when the generator is made, before it runs.
function generatorFor(state, options) {
  if (options && options.mode !== undefined) {
    if (options.mode !== 'lifecycle') throw new BadRequest('generate.mode must be "lifecycle" (or absent)');
    return new LifecycleGenerator(state, options);
  }
  return new EventGenerator(state, options || {});
}

// In one account, or in each of several `states` (the whole count or users
// each, the seed counted up per account so their streams differ); every
// account's generator is checked before any runs.
function generateEvents(states, options) {
  if (!Array.isArray(states)) return generatorFor(states, options).run();
  const seed = options && options.seed !== undefined ? options.seed : 1;
  if (!Number.isInteger(seed)) throw new BadRequest('generate.seed must be an integer');
  const generators = states.map((state, i) => generatorFor(state, { ...options, seed: seed + i }));
  const results = generators.map((generator, i) => ({ account: states[i].id, ...generator.run() }));
  return { appended: results.reduce((sum, r) => sum + r.appended, 0), accounts: results };
}

module.exports = { generateEvents };
