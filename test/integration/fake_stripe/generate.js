'use strict';
// Synthetic but realistic event streams for load and pagination tests
// (POST /_fake/events {"generate": {...}}). A pool of customers goes through
// customer.created -> customer.subscription.created -> a random mix of
// customer.updated, customer.subscription.updated and invoice.paid. The
// objects are stored too, so a consumer can fetch what the events name.

const { BadRequest } = require('./errors');
const { buildCustomer, buildSubscription, buildInvoice, planFromPrice } = require('./templates');
const { addInterval, nowSeconds, seededRandom, previousAttributes } = require('./util');
const { generateLifecycles } = require('./lifecycle');

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
    const entry = this.pool[slot];
    if (!entry) return this.createCustomer(slot);
    if (!entry.subscription) return this.subscribe(entry);
    const roll = this.random();
    if (roll < 0.3) return this.updateCustomer(entry);
    if (roll < 0.65) return this.updateSubscription(entry);
    return this.payInvoice(entry);
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
// otherwise the random mix above.
function generateEvents(store, options) {
  if (options && options.mode !== undefined) {
    if (options.mode !== 'lifecycle') throw new BadRequest('generate.mode must be "lifecycle" (or absent)');
    return generateLifecycles(store, options);
  }
  return new EventGenerator(store, options || {}).run();
}

module.exports = { generateEvents };
