'use strict';
// Subscription and checkout life cycles shared by the Stripe API routes and
// the control API. Every function validates before it mutates, so a thrown
// error leaves no side effects, and appends the events Stripe would emit.

const { StripeError, noSuch, invalidParam, missingParam, boolParam, intParam, enumParam } = require('./errors');
const {
  buildCustomer, buildSubscription, buildSubscriptionItem, buildInvoice, buildPreviewInvoice, buildInvoiceItem,
  itemCharges, itemList, planFromPrice, buildPaymentIntent, buildCharge, buildSetupIntent, transferDataView,
} = require('./templates');
const {
  currentPeriod, prorationDate, prorate, nextPeriodCharges, pendingInvoiceItems, invoiceItemCharges,
} = require('./proration');
const { METADATA_MAX_KEYS } = require('./params');
const { enterNextPhase, detach } = require('./schedules');
const { newId, nowSeconds, addInterval, previousAttributes } = require('./util');
const { redeemCheckoutDiscount } = require('./billing_model');

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
// The limits per key are checked with the parameters (params.js); the key
// count limit holds for the merged result too.
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
  const count = Object.keys(merged).length;
  if (count > METADATA_MAX_KEYS) {
    throw invalidParam(param, `Metadata can have up to ${METADATA_MAX_KEYS} keys, but you've set ${count}.`);
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

// Bills the subscription's pending invoice items (prorations) and, unless
// `recurring` is false, its current items: invoice.created,
// invoice.finalized, then invoice.paid + invoice.payment_succeeded or
// invoice.payment_failed.
function issueInvoice(store, subscription, { billingReason, paid, emit, recurring = true }) {
  const customer = store.find(subscription.customer, 'customer');
  const names = (id) => productName(store, id);
  const pending = pendingInvoiceItems(store, subscription);
  const invoice = buildInvoice({
    subscription,
    customer,
    billingReason,
    paid,
    productName: names,
    charges: [...invoiceItemCharges(store, pending), ...(recurring ? itemCharges(subscription, names) : [])],
  });
  for (const item of pending) item.invoice = invoice.id;
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

// `cancellation_details[comment|feedback]` (enum checked with the
// parameters) as they will read on the subscription.
function cancellationDetails(subscription, details) {
  if (details === undefined || details === '') return subscription.cancellation_details;
  if (typeof details !== 'object' || Array.isArray(details)) throw invalidParam('cancellation_details', 'Invalid object');
  const given = (name) => (details[name] === undefined ? subscription.cancellation_details[name] : details[name] || null);
  return { ...subscription.cancellation_details, comment: given('comment'), feedback: given('feedback') };
}

// DELETE /v1/subscriptions/:id: cancel immediately (`invoice_now` and
// `prorate` are checked, not modeled).
function cancelSubscription(store, subscription, params, request) {
  if (subscription.status === 'canceled') throw noSuch('subscription', subscription.id);
  const details = cancellationDetails(subscription, params.cancellation_details);
  const log = eventLog(store, request);
  subscription.cancellation_details = details;
  // (its schedule, if any, is canceled with it)
  const schedule = subscription.schedule && store.get(subscription.schedule, 'subscription_schedule');
  if (schedule) detach(store, schedule, 'canceled', nowSeconds());
  endSubscription(subscription, 'cancellation_requested');
  if (schedule) log.emit('subscription_schedule.canceled', schedule);
  log.emit('customer.subscription.deleted', subscription);
  return subscription;
}

// Validates `items[n]` of a subscription update (or `prefix[n]`, e.g. a
// preview's subscription_details[items]) into a list of planned changes.
// A new item's id is drawn now, so its prorations can name it.
function planItemChanges(store, subscription, items, prefix = 'items') {
  if (!Array.isArray(items)) throw invalidParam(prefix, 'Invalid array');
  // Array.from visits holes left by sparse indexes, so they are reported.
  return Array.from(items, (entry, n) => {
    const param = (name) => `${prefix}[${n}][${name}]`;
    if (!entry || typeof entry !== 'object') throw invalidParam(`${prefix}[${n}]`, 'Invalid object');
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
    return { item, price, quantity, newId: item ? undefined : newId('si_') };
  });
}

// What Stripe refuses of the items a change leaves: none at all, or one
// price on two items (the change that made it is named).
function checkItemResult(subscription, changes, prefix = 'items') {
  if (!changes.length) return;
  const after = structuredClone(subscription);
  applyItemChanges(after, changes);
  if (after.items.data.length === 0) {
    throw invalidParam(prefix, 'A subscription must have at least one item: cancel the subscription instead of deleting its last item.');
  }
  changes.forEach((change, n) => {
    if (change.price && after.items.data.filter((i) => i.price.id === change.price.id).length > 1) {
      throw invalidParam(`${prefix}[${n}][price]`, `The price ${change.price.id} is already the price of another item of this subscription.`);
    }
  });
}

// pause_collection of an update: '' resumes collection (null); an object
// pauses it (behavior checked with the parameters; required here), until
// resumes_at (in the future) when given.  undefined when not given.
function pauseCollection(value) {
  if (value === undefined) return undefined;
  if (value === '') return null;
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw invalidParam('pause_collection', 'Invalid object');
  if (value.behavior === undefined) throw missingParam('pause_collection[behavior]');
  let resumesAt = null;
  if (value.resumes_at !== undefined && value.resumes_at !== '') {
    resumesAt = intParam(value.resumes_at, 'pause_collection[resumes_at]');
    if (resumesAt <= nowSeconds()) throw invalidParam('pause_collection[resumes_at]', 'The resumes_at date must be in the future.');
  }
  return { behavior: value.behavior, resumes_at: resumesAt };
}

// Applies planned changes; items are matched by id, so the changes planned
// on a subscription also apply to a copy of it (a preview's).
function applyItemChanges(subscription, changes) {
  const [first] = subscription.items.data;
  let items = subscription.items.data;
  for (const change of changes) {
    const item = change.item && items.find((i) => i.id === change.item.id);
    if (change.deleted) {
      items = items.filter((i) => i !== item);
    } else if (change.item) {
      if (!item) continue; // deleted earlier in the same request
      // The item keeps its id and creation time; only price and plan change.
      if (change.price) {
        item.price = structuredClone(change.price);
        item.plan = planFromPrice(change.price);
      }
      if (change.quantity !== undefined) item.quantity = change.quantity;
    } else {
      items = [...items, buildSubscriptionItem({
        subscription: subscription.id,
        price: change.price,
        quantity: change.quantity === undefined ? 1 : change.quantity,
        periodStart: first.current_period_start,
        periodEnd: first.current_period_end,
        id: change.newId,
      })];
    }
  }
  subscription.items = itemList(subscription.id, items);
}

// Stripe's default when a request names no proration_behavior.
function prorationBehavior(value, param) {
  return value === undefined ? 'create_prorations' : enumParam(value, param, PRORATION_BEHAVIORS);
}

// POST /v1/subscriptions/:id. Item changes are prorated at proration_date
// (default now): create_prorations leaves the prorations as pending invoice
// items for the next invoice (invoiceitem.created each, before
// customer.subscription.updated), always_invoice bills them (and any
// pending ones) at once, without invoiceitem events; none drops them.
function updateSubscription(store, subscription, params, request) {
  const behavior = prorationBehavior(params.proration_behavior, 'proration_behavior');
  const cancelAtPeriodEnd = params.cancel_at_period_end === undefined ? undefined
    : boolParam(params.cancel_at_period_end, 'cancel_at_period_end');
  const changes = params.items === undefined ? [] : planItemChanges(store, subscription, params.items);
  checkItemResult(subscription, changes);
  const metadata = mergeMetadata(subscription.metadata, params.metadata);
  const details = cancellationDetails(subscription, params.cancellation_details);
  const pause = pauseCollection(params.pause_collection);
  if (subscription.status === 'canceled' && (cancelAtPeriodEnd !== undefined || changes.length || pause !== undefined)) {
    throw new StripeError(400, { message: 'A canceled subscription can only update its cancellation_details and metadata.' });
  }
  const t = params.proration_date === undefined && !changes.length ? null
    : prorationDate(subscription, params.proration_date, 'proration_date');
  const charges = behavior === 'none' || !changes.length ? []
    : prorate(subscription, changes, t, (id) => productName(store, id));

  const before = structuredClone(subscription);
  subscription.metadata = metadata;
  subscription.cancellation_details = details;
  if (cancelAtPeriodEnd !== undefined) setCancelAtPeriodEnd(subscription, cancelAtPeriodEnd);
  if (changes.length) applyItemChanges(subscription, changes);
  if (pause !== undefined) subscription.pause_collection = pause;

  const log = eventLog(store, request);
  const invoiceItems = charges.map((charge) => store.put(buildInvoiceItem({
    customer: subscription.customer, subscription: subscription.id, charge,
  })));
  const billNow = changes.length > 0 && behavior === 'always_invoice';
  // Pending prorations are announced before the update that made them.
  if (!billNow) for (const item of invoiceItems) log.emit('invoiceitem.created', item);
  const previous = previousAttributes(before, subscription);
  if (Object.keys(previous).length) log.emit('customer.subscription.updated', subscription, previous);
  // always_invoice bills an item change right away instead of at renewal.
  if (billNow) {
    issueInvoice(store, subscription, { billingReason: 'subscription_update', paid: true, emit: log.emit, recurring: false });
  }
  return subscription;
}

// The subscription a preview is for: `subscription`, or the customer's one
// live subscription.
function previewedSubscription(store, params) {
  if (params.subscription !== undefined) {
    const subscription = store.find(params.subscription, 'subscription', { param: 'subscription' });
    if (params.customer !== undefined && params.customer !== subscription.customer) {
      throw invalidParam('customer', `The subscription ${subscription.id} does not belong to the customer ${params.customer}.`);
    }
    return subscription;
  }
  if (params.customer === undefined) throw missingParam('customer');
  const customer = store.find(params.customer, 'customer', { param: 'customer' });
  const live = store.ofType('subscription').filter((s) => s.customer === customer.id && s.status !== 'canceled');
  if (live.length === 0) {
    throw new StripeError(400, { code: 'invoice_upcoming_none', message: `No upcoming invoices for customer: ${customer.id}` });
  }
  if (live.length > 1) {
    throw invalidParam('subscription', `Customer ${customer.id} has ${live.length} subscriptions; name the one to preview with subscription.`);
  }
  return live[0];
}

// POST /v1/invoices/create_preview for a subscription, optionally with item
// changes (subscription_details[items]) at proration_date. Nothing is
// changed; the preview is kept in store.previews for the control API.
//   create_prorations: the upcoming invoice at the period end (pending and
//     new prorations, then the next period of the changed items);
//   always_invoice: the invoice the update would bill now (prorations only);
//   none: the upcoming invoice without new prorations.
function previewInvoice(store, params) {
  const subscription = previewedSubscription(store, params);
  if (subscription.status === 'canceled') {
    throw new StripeError(400, { code: 'invoice_upcoming_none', message: `No upcoming invoices for subscription: ${subscription.id}` });
  }
  const details = params.subscription_details === undefined ? {} : params.subscription_details;
  if (!details || typeof details !== 'object' || Array.isArray(details)) {
    throw invalidParam('subscription_details', 'Invalid object');
  }
  const behavior = prorationBehavior(details.proration_behavior, 'subscription_details[proration_behavior]');
  const changes = details.items === undefined ? []
    : planItemChanges(store, subscription, details.items, 'subscription_details[items]');
  checkItemResult(subscription, changes, 'subscription_details[items]');
  const t = prorationDate(subscription, details.proration_date, 'subscription_details[proration_date]');
  const names = (id) => productName(store, id);
  const customer = store.find(subscription.customer, 'customer');

  const prorations = behavior === 'none' || !changes.length ? [] : prorate(subscription, changes, t, names);
  const pending = invoiceItemCharges(store, pendingInvoiceItems(store, subscription));
  const after = structuredClone(subscription);
  if (changes.length) applyItemChanges(after, changes);
  // The preview is what the update would invoice now (always_invoice), or
  // the renewal at the period end.
  const now = behavior === 'always_invoice';
  const period = currentPeriod(subscription);
  const preview = buildPreviewInvoice({
    subscription: after,
    customer,
    billingReason: now ? 'subscription_update' : 'upcoming',
    productName: names,
    charges: [...pending, ...prorations, ...(now ? [] : nextPeriodCharges(after, names))],
    created: now ? nowSeconds() : period.end,
    periodStart: now ? nowSeconds() : period.start,
    periodEnd: now ? nowSeconds() : period.end,
  });
  store.previews.set(preview.id, preview);
  return preview;
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

// A renewal while collection is paused: the invoice is made and, by the
// pause's behavior, voided at once, left a draft, or marked uncollectible;
// nothing is charged.
function issuePausedInvoice(store, subscription, emit) {
  const customer = store.find(subscription.customer, 'customer');
  const names = (id) => productName(store, id);
  const invoice = buildInvoice({ subscription, customer, billingReason: 'subscription_cycle', paid: false, productName: names });
  customer.next_invoice_sequence += 1;
  store.put(invoice);
  subscription.latest_invoice = invoice.id;
  emit('invoice.created', invoiceAt(invoice, 'draft'));
  const { behavior } = subscription.pause_collection;
  if (behavior === 'keep_as_draft') {
    Object.assign(invoice, invoiceAt(invoice, 'draft'));
    return;
  }
  emit('invoice.finalized', invoiceAt(invoice, 'open'));
  if (behavior === 'void') {
    invoice.status = 'void';
    invoice.status_transitions.voided_at = nowSeconds();
    emit('invoice.voided', invoice);
  } else {
    invoice.status = 'uncollectible';
    invoice.status_transitions.marked_uncollectible_at = nowSeconds();
    emit('invoice.marked_uncollectible', invoice);
  }
}

// Control API: what Stripe does at renewal or after dunning.  A renewal
// (new_period) enters the phase of the subscription's schedule that starts
// then, or ends the schedule (schedules.js); a pause whose resumes_at has
// come ends; while collection is paused, the renewal's invoice is not
// charged (issuePausedInvoice).
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
  if (newPeriod) {
    const start = subscription.items.data[0].current_period_end;
    shiftPeriod(subscription);
    if (enterNextPhase(store, subscription, start, log.emit) === 'cancel') {
      // (the last phase ended with end_behavior cancel: so does the subscription)
      subscription.items = before.items;
      subscription.schedule = null;
      endSubscription(subscription, 'cancellation_requested');
      log.emit('customer.subscription.deleted', subscription);
      return log.ids;
    }
    const pause = subscription.pause_collection;
    if (pause && pause.resumes_at !== null && pause.resumes_at <= start) subscription.pause_collection = null;
  }
  const open = openInvoiceOf(store, subscription);
  subscription.status = status;
  if (status === 'active' && newPeriod && subscription.pause_collection) {
    issuePausedInvoice(store, subscription, log.emit);
  } else if (status === 'past_due') {
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

// A payment-mode session given customer_creation=if_required pays as a
// guest: no customer. Without customer_creation the fake creates one, as
// it always has (Stripe's default there is if_required).
function createsCustomer(session, details) {
  return session.mode !== 'payment' || details.customerCreation !== 'if_required';
}

// customer_details of a guest: what the customer typed on the page.
function guestDetails(session) {
  return customerDetails({ email: session.customer_email, name: null });
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

// What the session asked of Connect, on the subscription (its invoices
// follow it: buildInvoice).
function connectSubscription(subscription, connect) {
  if (!connect) return subscription;
  return Object.assign(subscription, {
    application: connect.application,
    application_fee_percent: connect.applicationFeePercent,
    on_behalf_of: connect.onBehalfOf,
    transfer_data: transferDataView(connect.transferData, 'amount_percent'),
  });
}

function completeSubscriptionMode(store, session, customer, details, trialDays, log) {
  const subscription = store.put(connectSubscription(
    startSubscription(customer, details, trialDays, details.subscriptionMetadata), details.connect));
  // (created with its discount, which has its own event; the first invoice
  // is made with the subscription, so Stripe's customer.subscription.created
  // already names it in latest_invoice; its events follow)
  const discount = redeemCheckoutDiscount(store, details.discount, customer, subscription);
  const invoiceEvents = [];
  const invoice = issueInvoice(store, subscription, {
    billingReason: 'subscription_create', paid: true, emit: (...args) => invoiceEvents.push(args),
  });
  log.emit('customer.subscription.created', subscription);
  if (discount) log.emit('customer.discount.created', discount);
  for (const args of invoiceEvents) log.emit(...args);
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
    connect: details.connect,
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
  if (!customer && createsCustomer(session, details)) {
    customer = store.put(buildCustomer({ email: session.customer_email, metadata: { ...session.metadata } }));
    log.emit('customer.created', customer);
  }
  session.customer = customer ? customer.id : null;
  session.customer_details = customer ? customerDetails(customer) : guestDetails(session);
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
  endSubscription,
  eventLog,
  mergeMetadata,
  cancelSubscription,
  updateSubscription,
  previewInvoice,
  advanceSubscription,
  completeCheckout,
  deleteCustomer,
};
