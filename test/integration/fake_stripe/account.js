'use strict';
// A pre-existing account for scale, backfill and drift tests (POST
// /_fake/account): a catalogue, customers with subscriptions, paid invoices
// and active entitlements, stored as if they existed before the event
// window, so no event is emitted. Everything, ids included, follows from the
// seed; objects are `created` one second apart in the order they are stored.

const { BadRequest } = require('./errors');
const {
  buildCustomer, buildPrice, buildProduct, buildSubscription, buildInvoice, fromTemplate,
} = require('./templates');
const { addInterval, nowSeconds, seededId, seededRandom } = require('./util');
const { parseModelOptions, seedModel } = require('./billing_model');

const DAY = 86400;
const INACTIVE_SHARE = 0.1; // of products, and of the other prices
const TRIALING_SHARE = 0.05; // of the live subscriptions
const PAST_DUE_SHARE = 0.05;

function count(options, name, fallback) {
  const value = options[name] === undefined ? fallback : options[name];
  if (!Number.isInteger(value) || value < 0) throw new BadRequest(`${name} must be a non-negative integer`);
  return value;
}

// The request's counts with defaults, checked against each other.
function parseOptions(options) {
  const customers = count(options, 'customers', 100);
  const subscriptions = count(options, 'subscriptions', customers);
  const o = {
    customers,
    subscriptions,
    products: count(options, 'products', 10),
    prices: count(options, 'prices', 30),
    wide: count(options, 'wide_subscriptions', 0),
    wideItems: count(options, 'wide_items', 15),
    canceled: count(options, 'canceled', Math.floor(subscriptions / 10)),
    entitlements: count(options, 'entitlements_per_customer', 2),
    invoices: count(options, 'invoices_per_subscription', 1),
    seed: count(options, 'seed', 1),
    created: count(options, 'created', nowSeconds() - 60 * DAY),
  };
  if (o.subscriptions > o.customers) throw new BadRequest('subscriptions must not exceed customers (one each)');
  if (o.canceled > o.subscriptions) throw new BadRequest('canceled must not exceed subscriptions');
  if (o.wide > o.subscriptions) throw new BadRequest('wide_subscriptions must not exceed subscriptions');
  if (o.prices > 0 && o.products === 0) throw new BadRequest('prices need at least one product');
  if (o.subscriptions > 0 && o.prices === 0) throw new BadRequest('subscriptions need at least one price');
  if (o.wide > 0 && (o.wideItems < 1 || o.wideItems > o.prices)) {
    throw new BadRequest('wide_items must be from 1 to prices (the items of a subscription have distinct prices)');
  }
  return o;
}

class AccountGenerator {
  constructor(store, options) {
    this.store = store;
    this.o = parseOptions(options);
    // coupons, discounts, payment methods, tax ids, disputes, credit notes
    this.model = parseModelOptions(options);
    this.random = seededRandom(this.o.seed);
    // Ids from a stream of their own, so they do not shift when a count changes the choices.
    const idRandom = seededRandom((this.o.seed ^ 0x5bd1e995) >>> 0);
    // A connected account's tag starts every id, so ids stay unique across accounts.
    this.id = (prefix, length) => seededId(prefix, idRandom, length, store.tag);
    this.clock = this.o.created;
    this.now = nowSeconds();
    this.counts = {
      customers: 0, subscriptions: 0, subscription_items: 0, products: 0, prices: 0, invoices: 0, entitlements: 0,
    };
  }

  // The next object's `created`: one second after the previous one.
  tick() {
    const created = this.clock;
    this.clock += 1;
    return created;
  }

  put(kind, object) {
    this.counts[kind] += 1;
    return this.store.put(object);
  }

  run() {
    this.seedCatalogue();
    const plan = this.planSubscriptions();
    for (let n = 1; n <= this.o.customers; n++) {
      const customer = this.seedCustomer(n);
      const role = plan[n - 1];
      if (role) this.seedSubscription(customer, role);
    }
    // (last, from streams of their own: the objects above are the same)
    Object.assign(this.counts, seedModel(this, this.model, this.o.seed));
    return this.counts;
  }

  // Products, ~10% archived; prices spread round-robin over them, monthly.
  // A product's first price is its default and is active when the product is;
  // the prices of an archived product are archived too.
  seedCatalogue() {
    this.products = [];
    for (let k = 1; k <= this.o.products; k++) {
      const created = this.tick();
      this.products.push(this.put('products', buildProduct({
        id: this.id('prod_', 14),
        name: `Product ${k}`,
        active: k === 1 || this.random() >= INACTIVE_SHARE,
        created,
        updated: created,
      })));
    }
    this.activePrices = [];
    this.inactivePrices = [];
    for (let k = 1; k <= this.o.prices; k++) {
      const product = this.products[(k - 1) % this.products.length];
      const first = k <= this.products.length;
      const active = product.active && (first || this.random() >= INACTIVE_SHARE);
      const price = this.put('prices', buildPrice({
        id: this.id('price_'),
        product: product.id,
        active,
        lookup_key: `plan_${k}`,
        nickname: `Plan ${k}`,
        unit_amount: 100 * (5 + Math.floor(this.random() * 96)),
        currency: 'usd',
        recurring: { interval: 'month', interval_count: 1 },
        created: this.tick(),
      }));
      if (first) product.default_price = price.id;
      (active ? this.activePrices : this.inactivePrices).push(price);
    }
  }

  // role per customer index: {status, wide} for the first M customers.
  // Canceled ones are drawn from the front of a seeded shuffle, wide ones
  // from its back, so they overlap only when canceled + wide > M.
  planSubscriptions() {
    const order = this.shuffled([...Array(this.o.subscriptions).keys()]);
    const plan = order.map(() => null);
    order.forEach((index, rank) => {
      const canceled = rank < this.o.canceled;
      const wide = rank >= order.length - this.o.wide;
      plan[index] = { status: canceled ? 'canceled' : this.liveStatus(), wide };
    });
    return plan;
  }

  liveStatus() {
    const roll = this.random();
    if (roll < TRIALING_SHARE) return 'trialing';
    if (roll < TRIALING_SHARE + PAST_DUE_SHARE) return 'past_due';
    return 'active';
  }

  // Fisher-Yates with the seeded PRNG.
  shuffled(array) {
    for (let i = array.length - 1; i > 0; i--) {
      const j = Math.floor(this.random() * (i + 1));
      [array[i], array[j]] = [array[j], array[i]];
    }
    return array;
  }

  seedCustomer(n) {
    return this.put('customers', buildCustomer({
      id: this.id('cus_'),
      invoicePrefix: this.id('', 8).toUpperCase(),
      email: `user${n}@example.com`,
      name: `User ${n}`,
      metadata: { user_ref: `user_${n}` },
      created: this.tick(),
    }));
  }

  // `count` distinct prices, active ones first (an old subscription may still
  // hold an archived price, but only when there are not enough active ones).
  pickPrices(count) {
    const active = this.activePrices.slice();
    const picked = [];
    while (picked.length < count && active.length) {
      picked.push(active.splice(Math.floor(this.random() * active.length), 1)[0]);
    }
    return picked.concat(this.inactivePrices.slice(0, count - picked.length));
  }

  // The monthly period that contains `at`, counted from `start`.
  periodAround(start, at) {
    let periodStart = start;
    let periodEnd = addInterval(start, 'month', 1);
    while (periodEnd <= at) {
      periodStart = periodEnd;
      periodEnd = addInterval(periodEnd, 'month', 1);
    }
    return { periodStart, periodEnd };
  }

  seedSubscription(customer, { status, wide }) {
    const created = this.tick();
    const lines = this.pickPrices(wide ? this.o.wideItems : 1).map((price) => ({ price, quantity: 1 }));
    const { endedAt, ...periods } = this.timing(status, created);
    const subscription = buildSubscription({
      id: this.id('sub_'),
      itemId: () => this.id('si_'),
      customer: customer.id,
      lines,
      status,
      created,
      ...periods,
    });
    // Renewals keep the anchor where the subscription (or its trial end) set it.
    subscription.billing_cycle_anchor = periods.trialEnd || created;
    if (status === 'canceled') {
      subscription.canceled_at = endedAt;
      subscription.ended_at = endedAt;
      subscription.cancellation_details = { ...subscription.cancellation_details, reason: 'cancellation_requested' };
    }
    this.put('subscriptions', subscription);
    this.counts.subscription_items += lines.length;
    for (let j = 0; j < this.o.invoices; j++) this.seedInvoice(customer, subscription, j === 0);
    if (status !== 'canceled') this.seedEntitlements(customer);
  }

  // Periods (and trial or end) of a subscription started at `created`: a
  // live one is in the period around now, a trial runs 1-14 days past now, a
  // canceled one ended at a random time since it started.
  timing(status, created) {
    if (status === 'trialing') {
      const trialEnd = Math.max(this.now, created) + (1 + Math.floor(this.random() * 14)) * DAY;
      return { periodStart: created, periodEnd: trialEnd, trialStart: created, trialEnd };
    }
    if (status === 'canceled') {
      const endedAt = created + Math.floor(this.random() * Math.max(1, this.now - created));
      return { ...this.periodAround(created, endedAt), endedAt };
    }
    return this.periodAround(created, this.now);
  }

  seedInvoice(customer, subscription, first) {
    const invoice = buildInvoice({
      id: this.id('in_'),
      lineId: () => this.id('il_'),
      subscription,
      customer,
      billingReason: first ? 'subscription_create' : 'subscription_cycle',
      paid: true,
      productName: (id) => this.store.get(id, 'product').name,
      created: this.tick(),
    });
    customer.next_invoice_sequence += 1;
    subscription.latest_invoice = invoice.id;
    this.put('invoices', invoice);
  }

  seedEntitlements(customer) {
    for (let k = 1; k <= this.o.entitlements; k++) {
      this.put('entitlements', fromTemplate('entitlements.active_entitlement', {
        id: this.id('ent_test_'),
        customer: customer.id,
        feature: `feat_${k}`,
        lookup_key: `feature_${k}`,
        livemode: false,
      }));
    }
  }
}

function generateAccount(store, options) {
  return new AccountGenerator(store, options || {}).run();
}

module.exports = { generateAccount };
