'use strict';
// Subscription and checkout life cycles shared by the Stripe API routes and
// the control API. Every function validates before it mutates, so a thrown
// error leaves no side effects, and appends the events Stripe would emit.

const { StripeError, noSuch, invalidParam, boolParam, intParam, enumParam } = require('./errors');
const {
  buildCustomer, buildSubscription, buildSubscriptionItem, buildInvoice, itemList, planFromPrice,
  buildPaymentIntent, buildCharge, buildSetupIntent,
} = require('./templates');
const { nowSeconds, addInterval, previousAttributes } = require('./util');

const PRORATION_BEHAVIORS = ['create_prorations', 'always_invoice', 'none'];
const ADVANCE_STATUSES = ['past_due', 'active', 'canceled', 'unpaid'];

// Collects the events of one state change. They share one `created` second,
// as Stripe's bursts do, and the request that caused them (null when the
// change stands for something a customer or Stripe itself did).
function eventLog(store, request = null) {
  const created = nowSeconds();
  const ids = [];
  const emit = (type, object, previous) => {
    ids.push(store.emit(type, object, { previousAttributes: previous, request, created }).id);
  };
  return { emit, ids };
}

// Stripe metadata updates: a key set to "" is removed, metadata="" clears all.
function mergeMetadata(current, update, param = 'metadata') {
  if (update === undefined) return current;
  if (update === '') return {};
  if (typeof update !== 'object' || Array.isArray(update)) throw invalidParam(param, 'Invalid object');
  const merged = { ...current };
  for (const [key, value] of Object.entries(update)) {
    if (typeof value !== 'string') throw invalidParam(`${param}[${key}]`, 'Invalid string');
    if (value === '') delete merged[key];
    else merged[key] = value;
  }
  return merged;
}

function productName(store, productId) {
  const product = store.get(productId, 'product');
  return product ? product.name : productId;
}

// Copies of an invoice as it looked at earlier steps of its life, for the
// invoice.created (draft) and invoice.finalized (open) event snapshots.
function invoiceAt(invoice, status) {
  const snapshot = structuredClone(invoice);
  snapshot.status = status;
  snapshot.amount_paid = 0;
  snapshot.amount_remaining = invoice.amount_due;
  snapshot.status_transitions.paid_at = null;
  if (status === 'draft') {
    snapshot.attempted = false;
    snapshot.attempt_count = 0;
    snapshot.status_transitions.finalized_at = null;
  }
  return snapshot;
}

// Bills the subscription's current items: invoice.created, invoice.finalized,
// then invoice.paid + invoice.payment_succeeded or invoice.payment_failed.
function issueInvoice(store, subscription, { billingReason, paid, emit }) {
  const customer = store.find(subscription.customer, 'customer');
  const invoice = buildInvoice({
    subscription,
    customer,
    billingReason,
    paid,
    productName: (id) => productName(store, id),
  });
  customer.next_invoice_sequence += 1;
  store.put(invoice);
  subscription.latest_invoice = invoice.id;
  emit('invoice.created', invoiceAt(invoice, 'draft'));
  emit('invoice.finalized', invoiceAt(invoice, 'open'));
  if (paid) {
    emit('invoice.paid', invoice);
    emit('invoice.payment_succeeded', invoice);
  } else {
    emit('invoice.payment_failed', invoice);
  }
  return invoice;
}

// Pays an invoice left open by a failed attempt.
function payOpenInvoice(invoice, emit) {
  const now = nowSeconds();
  invoice.status = 'paid';
  invoice.amount_paid = invoice.amount_due;
  invoice.amount_remaining = 0;
  invoice.attempt_count += 1;
  invoice.status_transitions.paid_at = now;
  emit('invoice.paid', invoice);
  emit('invoice.payment_succeeded', invoice);
}

function retryOpenInvoice(invoice, emit) {
  invoice.attempt_count += 1;
  emit('invoice.payment_failed', invoice);
}

function openInvoiceOf(store, subscription) {
  const invoice = subscription.latest_invoice && store.get(subscription.latest_invoice, 'invoice');
  return invoice && invoice.status === 'open' ? invoice : undefined;
}

function endSubscription(subscription, reason) {
  const now = nowSeconds();
  subscription.status = 'canceled';
  subscription.canceled_at = subscription.canceled_at || now;
  subscription.ended_at = now;
  subscription.cancellation_details = {
    ...subscription.cancellation_details,
    reason: subscription.cancellation_details.reason || reason,
  };
}

// DELETE /v1/subscriptions/:id: cancel immediately.
function cancelSubscription(store, subscription, request) {
  if (subscription.status === 'canceled') throw noSuch('subscription', subscription.id);
  const log = eventLog(store, request);
  endSubscription(subscription, 'cancellation_requested');
  log.emit('customer.subscription.deleted', subscription);
  return subscription;
}

// Validates `items[n]` of a subscription update into a list of planned changes.
function planItemChanges(store, subscription, items) {
  if (!Array.isArray(items)) throw invalidParam('items', 'Invalid array');
  return items.map((entry, n) => {
    const param = (name) => `items[${n}][${name}]`;
    if (!entry || typeof entry !== 'object') throw invalidParam(`items[${n}]`, 'Invalid object');
    const item = entry.id === undefined ? undefined
      : subscription.items.data.find((i) => i.id === entry.id);
    if (entry.id !== undefined && !item) throw noSuch('subscription item', entry.id, param('id'), 400);
    if (entry.deleted !== undefined && boolParam(entry.deleted, param('deleted'))) {
      if (!item) throw invalidParam(param('deleted'), 'You must specify items[id] to delete an item.');
      return { item, deleted: true };
    }
    let price;
    if (entry.price !== undefined) {
      price = store.find(entry.price, 'price', { param: param('price'), status: 400 });
      if (!price.recurring) throw invalidParam(param('price'), `The price specified is set to \`type=one_time\` but this field only accepts prices with \`type=recurring\`.`);
    } else if (!item) {
      throw invalidParam(param('price'), 'You must specify a price for a new subscription item.');
    }
    const quantity = entry.quantity === undefined ? undefined : intParam(entry.quantity, param('quantity'), { min: 0 });
    return { item, price, quantity };
  });
}

function applyItemChanges(subscription, changes) {
  const [first] = subscription.items.data;
  let items = subscription.items.data;
  for (const change of changes) {
    if (change.deleted) {
      items = items.filter((i) => i !== change.item);
    } else if (change.item) {
      // The item keeps its id and creation time; only price and plan change.
      if (change.price) {
        change.item.price = structuredClone(change.price);
        change.item.plan = planFromPrice(change.price);
      }
      if (change.quantity !== undefined) change.item.quantity = change.quantity;
    } else {
      items = [...items, buildSubscriptionItem({
        subscription: subscription.id,
        price: change.price,
        quantity: change.quantity === undefined ? 1 : change.quantity,
        periodStart: first.current_period_start,
        periodEnd: first.current_period_end,
      })];
    }
  }
  subscription.items = itemList(subscription.id, items);
}

// POST /v1/subscriptions/:id.
function updateSubscription(store, subscription, params, request) {
  if (params.proration_behavior !== undefined) {
    enumParam(params.proration_behavior, 'proration_behavior', PRORATION_BEHAVIORS);
  }
  const cancelAtPeriodEnd = params.cancel_at_period_end === undefined ? undefined
    : boolParam(params.cancel_at_period_end, 'cancel_at_period_end');
  const changes = params.items === undefined ? [] : planItemChanges(store, subscription, params.items);
  const metadata = mergeMetadata(subscription.metadata, params.metadata);
  if (subscription.status === 'canceled' && (cancelAtPeriodEnd !== undefined || changes.length)) {
    throw new StripeError(400, { message: 'A canceled subscription can only update its cancellation_details and metadata.' });
  }

  const before = structuredClone(subscription);
  subscription.metadata = metadata;
  if (cancelAtPeriodEnd !== undefined) setCancelAtPeriodEnd(subscription, cancelAtPeriodEnd);
  if (changes.length) applyItemChanges(subscription, changes);

  const log = eventLog(store, request);
  const previous = previousAttributes(before, subscription);
  if (Object.keys(previous).length) log.emit('customer.subscription.updated', subscription, previous);
  // always_invoice bills an item change right away instead of at renewal.
  if (changes.length && params.proration_behavior === 'always_invoice') {
    issueInvoice(store, subscription, { billingReason: 'subscription_update', paid: true, emit: log.emit });
  }
  return subscription;
}

// Basil: cancel_at_period_end=true sets cancel_at to the period end.
function setCancelAtPeriodEnd(subscription, value) {
  subscription.cancel_at_period_end = value;
  subscription.cancel_at = value ? subscription.items.data[0].current_period_end : null;
  subscription.canceled_at = value ? nowSeconds() : null;
  subscription.cancellation_details = {
    ...subscription.cancellation_details,
    reason: value ? 'cancellation_requested' : null,
  };
}

function shiftPeriod(subscription) {
  for (const item of subscription.items.data) {
    const { interval, interval_count: count } = item.price.recurring;
    item.current_period_start = item.current_period_end;
    item.current_period_end = addInterval(item.current_period_end, interval, count);
  }
}

// Control API: what Stripe does at renewal or after dunning.
function advanceSubscription(store, subscription, { status, new_period: newPeriod = false }) {
  enumParam(status, 'status', ADVANCE_STATUSES);
  if (subscription.status === 'canceled') {
    throw new StripeError(400, { message: `Subscription ${subscription.id} is already canceled.` });
  }
  const log = eventLog(store);
  if (status === 'canceled') {
    endSubscription(subscription, 'payment_failed');
    log.emit('customer.subscription.deleted', subscription);
    return log.ids;
  }
  const before = structuredClone(subscription);
  if (newPeriod) shiftPeriod(subscription);
  const open = openInvoiceOf(store, subscription);
  subscription.status = status;
  if (status === 'past_due') {
    if (open) retryOpenInvoice(open, log.emit);
    else issueInvoice(store, subscription, { billingReason: 'subscription_cycle', paid: false, emit: log.emit });
  } else if (status === 'active') {
    if (open) payOpenInvoice(open, log.emit);
    else issueInvoice(store, subscription, { billingReason: 'subscription_cycle', paid: true, emit: log.emit });
  }
  const previous = previousAttributes(before, subscription);
  if (Object.keys(previous).length) log.emit('customer.subscription.updated', subscription, previous);
  return log.ids;
}

function customerDetails(customer) {
  return {
    address: null,
    email: customer.email,
    name: customer.name,
    phone: null,
    tax_exempt: 'none',
    tax_ids: [],
    business_name: null,
    individual_name: null,
  };
}

function startSubscription(customer, details, trialDays, metadata) {
  const start = nowSeconds();
  const trialEnd = trialDays ? start + trialDays * 86400 : null;
  const { interval, interval_count: count } = details.lines[0].price.recurring;
  return buildSubscription({
    customer: customer.id,
    lines: details.lines,
    status: trialEnd ? 'trialing' : 'active',
    periodStart: start,
    periodEnd: trialEnd || addInterval(start, interval, count),
    trialStart: trialEnd ? start : null,
    trialEnd,
    metadata,
  });
}

function completeSubscriptionMode(store, session, customer, details, trialDays, log) {
  const subscription = store.put(startSubscription(customer, details, trialDays, details.subscriptionMetadata));
  log.emit('customer.subscription.created', subscription);
  const invoice = issueInvoice(store, subscription, { billingReason: 'subscription_create', paid: true, emit: log.emit });
  session.subscription = subscription.id;
  session.invoice = invoice.id;
  session.payment_status = trialDays ? 'no_payment_required' : 'paid';
}

// One-time payment: payment_intent.created, then either
// payment_intent.succeeded + charge.succeeded or charge.failed +
// payment_intent.payment_failed.
function chargeSession(store, session, customer, details, failed, log) {
  const intent = store.put(buildPaymentIntent({
    amount: session.amount_total,
    currency: session.currency,
    customer: customer ? customer.id : null,
    metadata: details.paymentIntentMetadata,
    failed,
  }));
  const charge = store.put(buildCharge({ paymentIntent: intent, email: customer ? customer.email : session.customer_email, failed }));
  intent.latest_charge = charge.id;
  log.emit('payment_intent.created', { ...intent, status: 'requires_payment_method', amount_received: 0, latest_charge: null, last_payment_error: null });
  if (failed) {
    log.emit('charge.failed', charge);
    log.emit('payment_intent.payment_failed', intent);
  } else {
    log.emit('payment_intent.succeeded', intent);
    log.emit('charge.succeeded', charge);
  }
  session.payment_intent = intent.id;
}

function completeSetupMode(store, session, customer, log) {
  const intent = store.put(buildSetupIntent({ customer: customer.id }));
  log.emit('setup_intent.created', { ...intent, status: 'requires_payment_method', payment_method: null });
  log.emit('setup_intent.succeeded', intent);
  session.setup_intent = intent.id;
  session.payment_status = 'no_payment_required';
}

// Control API: the customer pays on the hosted page. With paymentFailed the
// card is declined: the session stays open and nothing but the declined
// payment (payment mode only) is recorded.
function completeCheckout(store, session, { trial_days: trialDaysOverride, payment_failed: paymentFailed = false } = {}) {
  if (session.status !== 'open') {
    throw new StripeError(400, { message: `Checkout session ${session.id} is ${session.status}, not open.` });
  }
  const details = store.checkoutDetails.get(session.id);
  const trialDays = trialDaysOverride === undefined ? details.trialDays
    : intParam(trialDaysOverride, 'trial_days', { min: 0, max: 730 });
  const log = eventLog(store);
  let customer = session.customer && store.get(session.customer, 'customer');
  if (paymentFailed) {
    if (session.mode === 'payment') chargeSession(store, session, customer, details, true, log);
    return { session, events: log.ids };
  }
  if (!customer) {
    customer = store.put(buildCustomer({ email: session.customer_email, metadata: { ...session.metadata } }));
    log.emit('customer.created', customer);
  }
  session.customer = customer.id;
  session.customer_details = customerDetails(customer);
  if (session.mode === 'subscription') completeSubscriptionMode(store, session, customer, details, trialDays, log);
  else if (session.mode === 'payment') {
    chargeSession(store, session, customer, details, false, log);
    session.payment_status = 'paid';
  } else completeSetupMode(store, session, customer, log);
  session.status = 'complete';
  log.emit('checkout.session.completed', session);
  return { session, events: log.ids };
}

// DELETE /v1/customers/:id: Stripe cancels the customer's live
// subscriptions, then deletes the customer.
function deleteCustomer(store, customer, request) {
  const log = eventLog(store, request);
  for (const subscription of store.ofType('subscription')) {
    if (subscription.customer === customer.id && subscription.status !== 'canceled') {
      endSubscription(subscription, 'cancellation_requested');
      log.emit('customer.subscription.deleted', subscription);
    }
  }
  const deleted = { id: customer.id, object: 'customer', deleted: true };
  store.put(deleted);
  log.emit('customer.deleted', customer);
  return deleted;
}

module.exports = {
  eventLog,
  mergeMetadata,
  cancelSubscription,
  updateSubscription,
  advanceSubscription,
  completeCheckout,
  deleteCustomer,
};
