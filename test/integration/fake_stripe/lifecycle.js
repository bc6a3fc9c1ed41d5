'use strict';
// Subscription lifecycles of an app's users, for the concurrency stress test
// (POST /_fake/events {"generate": {"mode": "lifecycle", ...}}).  Each user
// subscribes through Checkout, fails a renewal, pays it on the retry, and
// cancels; `rounds` times, each round with a new customer (a Checkout
// without `customer`: Stripe makes one).  The user reaches Stripe only as
// the Checkout session's client_reference_id: the customer and the
// subscription carry no user metadata, so only checkout.session.completed
// links the user to the customer (an app that makes its Checkout sessions
// with client_reference_id alone).
//
// One lifecycle is 11 events in four bursts, each burst within one
// `created` second, as Stripe emits them:
//   A  customer.created, customer.subscription.created (incomplete),
//      invoice.finalized, invoice.paid, customer.subscription.updated
//      (active), checkout.session.completed
//   B  invoice.payment_failed (the renewal, open),
//      customer.subscription.updated (past_due, the next period)
//   C  invoice.paid (the retry), customer.subscription.updated (active)
//   D  customer.subscription.deleted (canceled)
// A user's bursts are 1 to 4 seconds apart; users start within `spread`
// seconds of their round's start, so many users share each second.  Rounds
// follow each other (`round_seconds` apart, each round after the user's
// previous lifecycle).  Events are listed in `created` order (bursts of one
// second in a seeded order); everything (ids included) follows from `seed`.
// The objects are stored in their final state, so the API serves them.

const { BadRequest } = require('./errors');
const { buildCustomer, buildSubscription, buildInvoice, buildCheckoutSession, buildEvent } = require('./templates');
const { addInterval, nowSeconds, seededRandom, seededId, previousAttributes } = require('./util');

function positiveInt(value, name, fallback) {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new BadRequest(`generate.${name} must be a positive integer`);
  return n;
}

// Snapshot of an invoice at an earlier step (open, before payment).
function openInvoice(invoice) {
  const snapshot = structuredClone(invoice);
  snapshot.status = 'open';
  snapshot.amount_paid = 0;
  snapshot.amount_remaining = invoice.amount_due;
  snapshot.status_transitions.paid_at = null;
  return snapshot;
}

class LifecycleGenerator {
  constructor(store, options) {
    this.store = store;
    this.users = positiveInt(options.users, 'users', 100);
    this.rounds = positiveInt(options.rounds, 'rounds', 1);
    this.spread = positiveInt(options.spread, 'spread', 10);
    // a lifecycle ends at most 3 + 3 * 3 seconds after it starts
    this.roundSeconds = positiveInt(options.round_seconds, 'round_seconds', this.spread + 15);
    if (this.roundSeconds < this.spread + 13) {
      throw new BadRequest('generate.round_seconds must be at least spread + 13 (a lifecycle lasts up to 12 s)');
    }
    this.start = options.start_created === undefined ? nowSeconds() : positiveInt(options.start_created, 'start_created');
    const prefix = options.user_prefix === undefined ? 'user_' : options.user_prefix;
    if (typeof prefix !== 'string' || !/^[A-Za-z0-9_.-]{0,100}$/.test(prefix)) {
      throw new BadRequest('generate.user_prefix must be up to 100 letters, digits, "_", "." or "-"');
    }
    this.prefix = prefix;
    this.price = this.store.get(options.price === undefined ? 'price_pro' : String(options.price), 'price');
    if (!this.price || !this.price.recurring) throw new BadRequest('generate.price must be a stored recurring price');
    this.random = seededRandom(options.seed === undefined ? 1 : options.seed);
  }

  // A connected account's tag starts every id, so ids stay unique across accounts.
  id(prefix) {
    return seededId(prefix, this.random, undefined, this.store.tag);
  }

  emit(type, object, created, previous) {
    const event = buildEvent({ type, object, previousAttributes: previous, created });
    event.id = this.id('evt_');
    this.store.appendEvent(event);
  }

  run() {
    // every burst of every lifecycle, then in created order
    const bursts = [];
    for (let round = 0; round < this.rounds; round++) {
      for (let n = 1; n <= this.users; n++) {
        const life = { user: `${this.prefix}${n}`, round };
        let t = this.start + round * this.roundSeconds + Math.floor(this.random() * this.spread);
        for (const phase of ['checkout', 'renewal_failed', 'retry_paid', 'canceled']) {
          bursts.push({ life, phase, created: t, order: this.random() });
          t += 1 + Math.floor(this.random() * 4);
        }
      }
    }
    // a user's bursts are in increasing seconds: this keeps each lifecycle in order
    bursts.sort((a, b) => a.created - b.created || a.order - b.order);
    const first = this.store.events.length;
    for (const burst of bursts) this[burst.phase](burst.life, burst.created);
    const appended = this.store.events.slice(first);
    return {
      appended: appended.length,
      first_id: appended[0].id,
      last_id: appended[appended.length - 1].id,
      first_created: appended[0].created,
      last_created: appended[appended.length - 1].created,
      users: Array.from({ length: this.users }, (_, i) => `${this.prefix}${i + 1}`),
    };
  }

  productName(id) {
    const product = this.store.get(id, 'product');
    return product ? product.name : id;
  }

  // A: Checkout completes; the subscription starts incomplete and becomes
  // active once its first invoice is paid.
  checkout(life, t) {
    const customer = this.store.put(buildCustomer({
      email: `${life.user}.${life.round}@example.com`,
      name: `User ${life.user}`,
      metadata: {},
      created: t,
      id: this.id('cus_'),
      invoicePrefix: seededId('', this.random, 8).toUpperCase(),
    }));
    this.emit('customer.created', customer, t);
    const subscription = this.store.put(buildSubscription({
      customer: customer.id,
      lines: [{ price: this.price, quantity: 1 }],
      status: 'incomplete',
      periodStart: t,
      periodEnd: addInterval(t, this.price.recurring.interval, this.price.recurring.interval_count),
      created: t,
      id: this.id('sub_'),
      itemId: () => this.id('si_'),
    }));
    const invoice = this.store.put(buildInvoice({
      subscription, customer, billingReason: 'subscription_create', paid: true,
      productName: (id) => this.productName(id), created: t,
      id: this.id('in_'), lineId: () => this.id('il_'),
    }));
    customer.next_invoice_sequence += 1;
    subscription.latest_invoice = invoice.id;
    this.emit('customer.subscription.created', subscription, t);
    this.emit('invoice.finalized', openInvoice(invoice), t);
    this.emit('invoice.paid', invoice, t);
    const before = structuredClone(subscription);
    subscription.status = 'active';
    this.emit('customer.subscription.updated', subscription, t, previousAttributes(before, subscription));
    const session = this.store.put(buildCheckoutSession({
      id: this.id('cs_test_'),
      amount_subtotal: this.price.unit_amount,
      amount_total: this.price.unit_amount,
      client_reference_id: life.user,
      created: t,
      currency: this.price.currency,
      customer: customer.id,
      customer_creation: 'always',
      customer_details: {
        address: null, email: customer.email, name: customer.name, phone: null, tax_exempt: 'none', tax_ids: [],
        business_name: null, individual_name: null,
      },
      customer_email: customer.email,
      expires_at: t + 86400,
      invoice: invoice.id,
      metadata: {},
      mode: 'subscription',
      payment_status: 'paid',
      status: 'complete',
      subscription: subscription.id,
      success_url: 'https://app.example/welcome',
      cancel_url: 'https://app.example/pricing',
      url: null,
    }));
    Object.assign(life, { customer, subscription, session });
    this.emit('checkout.session.completed', session, t);
  }

  // B: the renewal's payment fails: a new period, past_due, the invoice open.
  renewal_failed(life, t) {
    const { customer, subscription } = life;
    const before = structuredClone(subscription);
    for (const item of subscription.items.data) {
      const { interval, interval_count: count } = item.price.recurring;
      item.current_period_start = item.current_period_end;
      item.current_period_end = addInterval(item.current_period_end, interval, count);
    }
    subscription.status = 'past_due';
    const invoice = this.store.put(buildInvoice({
      subscription, customer, billingReason: 'subscription_cycle', paid: false,
      productName: (id) => this.productName(id), created: t,
      id: this.id('in_'), lineId: () => this.id('il_'),
    }));
    customer.next_invoice_sequence += 1;
    subscription.latest_invoice = invoice.id;
    life.renewal = invoice;
    this.emit('invoice.payment_failed', invoice, t);
    this.emit('customer.subscription.updated', subscription, t, previousAttributes(before, subscription));
  }

  // C: the retry pays the renewal: active again.
  retry_paid(life, t) {
    const { subscription, renewal: invoice } = life;
    invoice.status = 'paid';
    invoice.amount_paid = invoice.amount_due;
    invoice.amount_remaining = 0;
    invoice.attempt_count += 1;
    invoice.status_transitions.paid_at = t;
    this.emit('invoice.paid', invoice, t);
    const before = structuredClone(subscription);
    subscription.status = 'active';
    this.emit('customer.subscription.updated', subscription, t, previousAttributes(before, subscription));
  }

  // D: the user cancels, at once.
  canceled(life, t) {
    const { subscription } = life;
    subscription.status = 'canceled';
    subscription.canceled_at = t;
    subscription.ended_at = t;
    subscription.cancellation_details = { ...subscription.cancellation_details, reason: 'cancellation_requested' };
    this.emit('customer.subscription.deleted', subscription, t);
  }
}

function generateLifecycles(store, options) {
  return new LifecycleGenerator(store, options || {}).run();
}

module.exports = { generateLifecycles, LifecycleGenerator };
