'use strict';
// Handlers for the emulated Stripe endpoints under /v1 and /v2. Each
// handler gets ctx = {store, server, account, presentedKey, params, path,
// request, baseUrl} and returns the response body (status 200) or throws a
// StripeError. `store` is the state of the account the request acts on (the
// platform's, or a connected account's by Stripe-Account), `server` the
// whole fake, `account` the connected account's id or null. POST and DELETE
// handlers are wrapped in strict() with their parameter table (params.js).

const { Router } = require('./router');
const {
  missingParam, invalidParam, noSuch, intParam, boolParam, enumParam,
} = require('./errors');
const {
  parseListParams, pageNewestFirst, pageInOrder, checkCursors, createdMatcher, allOf, listBody,
} = require('./list');
const {
  buildCustomer, buildCheckoutSession, buildPortalSession, apiView,
} = require('./templates');
const {
  eventLog, mergeMetadata, cancelSubscription, updateSubscription, previewInvoice, deleteCustomer, endSubscription,
} = require('./billing');
const { createMeterEvent, createMeterEventSession, streamMeterEvents } = require('./meter_events');
const {
  createSchedule, updateSchedule, releaseSchedule, cancelSchedule, findSchedule,
} = require('./schedules');
const { listAccounts, getAccount, getOwnAccount, checkoutConnect } = require('./connect');
const P = require('./params');
const thin = require('./thin');
// (the rest of the billing model: coupons, discounts, disputes, ...)
const model = require('./billing_model');
const { newId, nowSeconds, previousAttributes } = require('./util');

const CHECKOUT_MODES = ['payment', 'setup', 'subscription'];
const CUSTOMER_FIELDS = ['email', 'name', 'description', 'phone'];
const PRICE_TYPES = ['one_time', 'recurring'];
const SUBSCRIPTION_STATUSES = ['active', 'past_due', 'unpaid', 'canceled', 'incomplete', 'incomplete_expired',
  'trialing', 'paused'];
// Listed only when asked for by status (or status=all / ended).
const ENDED_STATUSES = ['canceled', 'incomplete_expired'];
const INVOICE_STATUSES = ['draft', 'open', 'paid', 'uncollectible', 'void'];

// A customer that exists and is not deleted.
function liveCustomer(store, id, { param = 'id', status = 404 } = {}) {
  const customer = store.find(id, 'customer', { param, status });
  if (customer.deleted) throw noSuch('customer', id, param, status);
  return customer;
}

function optionalString(value, param) {
  if (value === undefined) return null;
  if (typeof value !== 'string') throw invalidParam(param, 'Invalid string');
  return value;
}

// ---- list endpoints over the stored objects ----

// One newest-first page of the stored objects of `type` that `matches`.
// `kind` names the type in an unknown cursor's error.
function listStored(store, type, params, { url, kind = type, matches, view = apiView }) {
  const list = parseListParams(params);
  const positionOf = (id) => store.positionOf(type, id);
  checkCursors(list, (id) => positionOf(id) !== undefined, kind);
  const page = pageNewestFirst(store.ofType(type), list, positionOf, matches);
  page.data = page.data.map(view);
  return listBody(url, page);
}

// Filter on a string parameter compared with `valueOf(object)`; null when not given.
function equalsFilter(params, param, valueOf) {
  const wanted = optionalString(params[param], param);
  return wanted === null ? null : (object) => valueOf(object) === wanted;
}

function activeFilter(params) {
  if (params.active === undefined) return null;
  const active = boolParam(params.active, 'active');
  return (object) => object.active === active;
}

const notDeleted = (object) => !object.deleted;

// ---- customers ----

function createCustomer({ store, params, request }) {
  const fields = {};
  for (const name of CUSTOMER_FIELDS) fields[name] = optionalString(params[name], name);
  const customer = store.put(buildCustomer({ ...fields, metadata: mergeMetadata({}, params.metadata) }));
  eventLog(store, request).emit('customer.created', customer);
  return customer;
}

function getCustomer({ store, path, params }) {
  return model.customerView(store, store.find(path.id, 'customer'), model.expansions(params));
}

function updateCustomer({ store, path, params, request }) {
  const customer = liveCustomer(store, path.id);
  const metadata = mergeMetadata(customer.metadata, params.metadata);
  const before = structuredClone(customer);
  for (const name of CUSTOMER_FIELDS) {
    // An empty string unsets a field, as in Stripe.
    if (params[name] !== undefined) customer[name] = optionalString(params[name], name) || null;
  }
  customer.metadata = metadata;
  const previous = previousAttributes(before, customer);
  if (Object.keys(previous).length) eventLog(store, request).emit('customer.updated', customer, previous);
  return customer;
}

function removeCustomer({ store, path, request }) {
  return deleteCustomer(store, liveCustomer(store, path.id), request);
}

// Stripe's email filter is exact and case-sensitive.
function listCustomers({ store, params }) {
  const expand = model.expansions(params);
  return listStored(store, 'customer', params, {
    url: '/v1/customers',
    matches: allOf([notDeleted, equalsFilter(params, 'email', (c) => c.email), createdMatcher(params.created)]),
    view: (c) => model.customerView(store, c, expand, 'data.'),
  });
}

// ---- checkout sessions ----

function parseLineItems(store, lineItems, mode) {
  if (lineItems === undefined) throw missingParam('line_items');
  if (!Array.isArray(lineItems) || lineItems.length === 0) throw invalidParam('line_items', 'Invalid array');
  // Array.from visits holes left by sparse indexes, so they are reported.
  const lines = Array.from(lineItems, (entry, n) => {
    const param = (name) => `line_items[${n}][${name}]`;
    if (!entry || typeof entry !== 'object') throw invalidParam(`line_items[${n}]`, 'Invalid object');
    if (entry.price === undefined) throw missingParam(param('price'));
    const price = store.find(entry.price, 'price', { param: param('price'), status: 400 });
    if (entry.quantity === undefined) throw missingParam(param('quantity'));
    return { price, quantity: intParam(entry.quantity, param('quantity'), { min: 1 }) };
  });
  if (mode === 'subscription' && !lines.some((line) => line.price.recurring)) {
    throw invalidParam('line_items', 'You must provide at least one recurring price in `subscription` mode when using prices.');
  }
  const recurring = lines.findIndex((line) => line.price.recurring);
  if (mode === 'payment' && recurring >= 0) {
    throw invalidParam(`line_items[${recurring}][price]`, 'You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.');
  }
  return lines;
}

// customer_creation (enum checked with the parameters): Stripe takes it in
// payment and setup mode, and not together with an existing customer.
function customerCreation(params, mode) {
  if (params.customer_creation === undefined) return null;
  if (mode === 'subscription') {
    throw invalidParam('customer_creation', 'customer_creation can only be used in payment mode.');
  }
  if (params.customer !== undefined) {
    throw invalidParam('customer_creation', 'You may only specify one of these parameters: customer, customer_creation.');
  }
  return params.customer_creation;
}

// payment_method_collection (enum checked with the parameters) is for subscription mode only.
function paymentMethodCollection(params, mode) {
  if (params.payment_method_collection === undefined) return mode === 'subscription' ? 'always' : null;
  if (mode !== 'subscription') {
    throw invalidParam('payment_method_collection', 'payment_method_collection can only be used in subscription mode.');
  }
  return params.payment_method_collection;
}

// subscription_data / payment_intent_data only fit their own mode.
function modeData(params, name, mode, wantedMode) {
  const data = params[name];
  if (data === undefined) return {};
  if (mode !== wantedMode) throw invalidParam(name, `You can not pass \`${name}\` in \`${mode}\` mode.`);
  if (typeof data !== 'object' || Array.isArray(data)) throw invalidParam(name, 'Invalid object');
  return data;
}

function createCheckoutSession({ store, server, account, params, baseUrl }) {
  if (params.mode === undefined) throw missingParam('mode');
  const mode = enumParam(params.mode, 'mode', CHECKOUT_MODES);
  if (params.customer !== undefined && params.customer_email !== undefined) {
    throw invalidParam('customer_email', 'You may only specify one of these parameters: customer, customer_email.');
  }
  const creation = customerCreation(params, mode);
  const methodCollection = paymentMethodCollection(params, mode);
  const customer = params.customer === undefined ? null
    : liveCustomer(store, params.customer, { param: 'customer', status: 400 });
  const lines = mode === 'setup' ? [] : parseLineItems(store, params.line_items, mode);
  const subscriptionData = modeData(params, 'subscription_data', mode, 'subscription');
  const paymentIntentData = modeData(params, 'payment_intent_data', mode, 'payment');
  const trialDays = subscriptionData.trial_period_days === undefined ? 0
    : intParam(subscriptionData.trial_period_days, 'subscription_data[trial_period_days]', { min: 1, max: 730 });
  const connect = checkoutConnect({ server, account }, mode, paymentIntentData, subscriptionData);
  const discount = model.checkoutDiscount(store, params);
  const details = {
    connect,
    discount,
    // Subscription items are the recurring lines; one-time lines are only charged.
    lines: lines.filter((line) => mode !== 'subscription' || line.price.recurring),
    trialDays,
    customerCreation: creation,
    subscriptionMetadata: mergeMetadata({}, subscriptionData.metadata, 'subscription_data[metadata]'),
    paymentIntentMetadata: mergeMetadata({}, paymentIntentData.metadata, 'payment_intent_data[metadata]'),
  };
  // Due today: a trial defers the recurring part; a discount takes its share.
  const subtotal = lines.reduce(
    (sum, { price, quantity }) => sum + (trialDays && price.recurring ? 0 : price.unit_amount * quantity), 0);
  const amount = subtotal - model.discountAmount(discount, subtotal);
  const id = newId('cs_test_');
  const created = nowSeconds();
  const session = buildCheckoutSession({
    id,
    allow_promotion_codes: params.allow_promotion_codes === undefined ? null
      : boolParam(params.allow_promotion_codes, 'allow_promotion_codes'),
    amount_subtotal: mode === 'setup' ? null : subtotal,
    amount_total: mode === 'setup' ? null : amount,
    billing_address_collection: params.billing_address_collection === undefined ? null : params.billing_address_collection,
    cancel_url: optionalString(params.cancel_url, 'cancel_url'),
    client_reference_id: optionalString(params.client_reference_id, 'client_reference_id'),
    created,
    currency: lines.length ? lines[0].price.currency : null,
    customer: customer ? customer.id : null,
    discounts: model.sessionDiscounts(discount),
    total_details: { amount_discount: subtotal - amount, amount_shipping: 0, amount_tax: 0 },
    customer_creation: creation || (customer ? null : mode === 'payment' ? 'if_required' : 'always'),
    customer_email: optionalString(params.customer_email, 'customer_email'),
    expires_at: created + 86400,
    invoice: null,
    metadata: mergeMetadata({}, params.metadata),
    mode,
    payment_method_collection: methodCollection,
    payment_status: mode === 'setup' ? 'no_payment_required' : 'unpaid',
    setup_intent: null,
    status: 'open',
    subscription: null,
    success_url: optionalString(params.success_url, 'success_url'),
    url: `${baseUrl}/pay/${id}`,
  });
  store.checkoutDetails.set(id, details);
  return store.put(session);
}

function getCheckoutSession({ store, path }) {
  return store.find(path.id, 'checkout.session');
}

// ---- billing portal ----

function createPortalSession({ store, params, baseUrl }) {
  if (params.customer === undefined) throw missingParam('customer');
  const customer = liveCustomer(store, params.customer, { param: 'customer', status: 400 });
  const returnUrl = optionalString(params.return_url, 'return_url');
  return store.put(buildPortalSession({ customer: customer.id, returnUrl, baseUrl }));
}

// ---- subscriptions, prices, products ----

// expand[]=schedule shows the subscription's schedule whole; the rest of
// the billing model's expansions (discounts) are billing_model.js's.
function getSubscription({ store, path, params }) {
  const expand = model.expansions(params);
  const subscription = model.subscriptionView(store, apiView(store.find(path.id, 'subscription')), expand);
  if (!expand.has('schedule') || !subscription.schedule) return subscription;
  return { ...subscription, schedule: store.get(subscription.schedule, 'subscription_schedule') || subscription.schedule };
}

function postSubscription({ store, path, params, request }) {
  return apiView(updateSubscription(store, store.find(path.id, 'subscription'), params, request));
}

function deleteSubscription({ store, path, params, request }) {
  return apiView(cancelSubscription(store, store.find(path.id, 'subscription'), params, request));
}

// No status lists every subscription not ended; `all` lists every one;
// `ended` the canceled and incomplete_expired ones.
function subscriptionStatusFilter(status) {
  if (status === undefined) return (s) => !ENDED_STATUSES.includes(s.status);
  enumParam(status, 'status', [...SUBSCRIPTION_STATUSES, 'all', 'ended']);
  if (status === 'all') return null;
  if (status === 'ended') return (s) => ENDED_STATUSES.includes(s.status);
  return (s) => s.status === status;
}

function listSubscriptions({ store, params }) {
  const expand = model.expansions(params);
  return listStored(store, 'subscription', params, {
    url: '/v1/subscriptions',
    view: (s) => model.subscriptionView(store, apiView(s), expand, 'data.'),
    matches: allOf([
      subscriptionStatusFilter(params.status),
      equalsFilter(params, 'customer', (s) => s.customer),
      createdMatcher(params.created),
      params.price === undefined ? null
        : (s) => s.items.data.some((item) => item.price.id === params.price),
    ]),
  });
}

// A subscription's items in creation order, all of them (its embedded list
// stops at 10).
function listSubscriptionItems({ store, params }) {
  if (params.subscription === undefined) throw missingParam('subscription');
  const subscription = store.find(params.subscription, 'subscription', { param: 'subscription', status: 400 });
  const list = parseListParams(params);
  const items = subscription.items.data;
  const positions = new Map(items.map((item, i) => [item.id, i]));
  checkCursors(list, (id) => positions.has(id), 'subscription item');
  return listBody('/v1/subscription_items', pageInOrder(items, list, (id) => positions.get(id)));
}

function getPrice({ store, path }) {
  return store.find(path.id, 'price');
}

function listPrices({ store, params }) {
  const type = params.type === undefined ? undefined : enumParam(params.type, 'type', PRICE_TYPES);
  const currency = optionalString(params.currency, 'currency');
  const lookupKeys = params.lookup_keys === undefined ? null
    : new Set(Array.isArray(params.lookup_keys) ? params.lookup_keys : [params.lookup_keys]);
  return listStored(store, 'price', params, {
    url: '/v1/prices',
    matches: allOf([
      activeFilter(params),
      equalsFilter(params, 'product', (p) => p.product),
      type === undefined ? null : (p) => p.type === type,
      currency === null ? null : (p) => p.currency === currency.toLowerCase(),
      lookupKeys === null ? null : (p) => lookupKeys.has(p.lookup_key),
      createdMatcher(params.created),
    ]),
  });
}

function getProduct({ store, path }) {
  return store.find(path.id, 'product');
}

function listProducts({ store, params }) {
  return listStored(store, 'product', params, {
    url: '/v1/products',
    matches: allOf([notDeleted, activeFilter(params), createdMatcher(params.created)]),
  });
}

// ---- subscription schedules ----

function postSchedule({ store, params, request }) {
  return createSchedule(store, params, request);
}

function getSchedule({ store, path }) {
  return findSchedule(store, path.id);
}

function postScheduleUpdate({ store, path, params, request }) {
  return updateSchedule(store, findSchedule(store, path.id), params, request);
}

function postScheduleRelease({ store, path, params, request }) {
  return releaseSchedule(store, findSchedule(store, path.id), params, request);
}

function postScheduleCancel({ store, path, params, request }) {
  return cancelSchedule(store, findSchedule(store, path.id), params, request, endSubscription);
}

// `scheduled`: true lists those not started yet, false the others.
function listSchedules({ store, params }) {
  const scheduled = params.scheduled === undefined ? undefined : boolParam(params.scheduled, 'scheduled');
  return listStored(store, 'subscription_schedule', params, {
    url: '/v1/subscription_schedules',
    kind: 'subscription schedule',
    matches: allOf([
      equalsFilter(params, 'customer', (s) => s.customer),
      scheduled === undefined ? null : (s) => (s.status === 'not_started') === scheduled,
      createdMatcher(params.created),
    ]),
  });
}

// ---- invoices ----

function createInvoicePreview({ store, params }) {
  return previewInvoice(store, params);
}

function getInvoice({ store, path }) {
  return store.find(path.id, 'invoice');
}

// Basil invoices name their subscription under parent.subscription_details.
function invoiceSubscription(invoice) {
  const details = invoice.parent && invoice.parent.subscription_details;
  return details ? details.subscription : invoice.subscription;
}

function listInvoices({ store, params }) {
  const status = params.status === undefined ? undefined : enumParam(params.status, 'status', INVOICE_STATUSES);
  return listStored(store, 'invoice', params, {
    url: '/v1/invoices',
    matches: allOf([
      equalsFilter(params, 'customer', (i) => i.customer),
      equalsFilter(params, 'subscription', invoiceSubscription),
      status === undefined ? null : (i) => i.status === status,
      createdMatcher(params.created),
    ]),
  });
}

// ---- entitlements ----

// Seeded entitlements carry a `customer` field for filtering; Stripe's object
// has none, so it is left out of responses.
function listActiveEntitlements({ store, params }) {
  if (params.customer === undefined) throw missingParam('customer');
  const list = parseListParams(params);
  const entitlements = store.ofType('entitlements.active_entitlement').filter((e) => e.customer === params.customer);
  const positions = new Map(entitlements.map((e, i) => [e.id, i]));
  checkCursors(list, (id) => positions.has(id), 'active entitlement');
  const page = pageNewestFirst(entitlements, list, (id) => positions.get(id));
  page.data = page.data.map(({ customer, ...entitlement }) => entitlement);
  return listBody('/v1/entitlements/active_entitlements', page);
}

// ---- events ----

// `type` may use "*" as a wildcard ("customer.*"); `types` is a list.
function typeMatcher(type, types) {
  if (type !== undefined && types !== undefined) {
    throw invalidParam('types', 'You may pass either type or types, but not both.');
  }
  if (type !== undefined) {
    const pattern = String(type).split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
    const regex = new RegExp(`^${pattern}$`);
    return (event) => regex.test(event.type);
  }
  if (types !== undefined) {
    const wanted = new Set(Array.isArray(types) ? types : [types]);
    if (wanted.size > 20) throw invalidParam('types', 'You may pass at most 20 types.');
    return (event) => wanted.has(event.type);
  }
  return () => true;
}

function listEvents({ store, params }) {
  const list = parseListParams(params);
  checkCursors(list, (id) => store.eventPosition(id) !== undefined, 'event');
  const inRange = createdMatcher(params.created);
  const ofType = typeMatcher(params.type, params.types);
  const page = pageNewestFirst(store.events, list, (id) => store.eventPosition(id),
    (event) => inRange(event) && ofType(event));
  return listBody('/v1/events', page);
}

function getEvent({ store, path }) {
  const position = store.eventPosition(path.id);
  if (position === undefined) throw noSuch('event', path.id);
  return store.events[position];
}

const router = new Router()
  .add('GET', '/v1/customers', listCustomers)
  .add('POST', '/v1/customers', P.strict(P.CUSTOMER_CREATE, createCustomer))
  .add('GET', '/v1/customers/:id', getCustomer)
  .add('POST', '/v1/customers/:id', P.strict(P.CUSTOMER_UPDATE, updateCustomer))
  .add('DELETE', '/v1/customers/:id', P.strict(P.CUSTOMER_DELETE, removeCustomer))
  .add('POST', '/v1/checkout/sessions', P.strict(P.CHECKOUT_SESSION_CREATE, createCheckoutSession))
  .add('GET', '/v1/checkout/sessions/:id', getCheckoutSession)
  .add('POST', '/v1/billing_portal/sessions', P.strict(P.PORTAL_SESSION_CREATE, createPortalSession))
  .add('GET', '/v1/subscriptions', listSubscriptions)
  .add('GET', '/v1/subscriptions/:id', getSubscription)
  .add('POST', '/v1/subscriptions/:id', P.strict(P.SUBSCRIPTION_UPDATE, postSubscription))
  .add('DELETE', '/v1/subscriptions/:id', P.strict(P.SUBSCRIPTION_CANCEL, deleteSubscription))
  .add('GET', '/v1/subscription_items', listSubscriptionItems)
  .add('GET', '/v1/subscription_schedules', listSchedules)
  .add('POST', '/v1/subscription_schedules', P.strict(P.SUBSCRIPTION_SCHEDULE_CREATE, postSchedule))
  .add('GET', '/v1/subscription_schedules/:id', getSchedule)
  .add('POST', '/v1/subscription_schedules/:id', P.strict(P.SUBSCRIPTION_SCHEDULE_UPDATE, postScheduleUpdate))
  .add('POST', '/v1/subscription_schedules/:id/release', P.strict(P.SUBSCRIPTION_SCHEDULE_RELEASE, postScheduleRelease))
  .add('POST', '/v1/subscription_schedules/:id/cancel', P.strict(P.SUBSCRIPTION_SCHEDULE_CANCEL, postScheduleCancel))
  .add('GET', '/v1/prices', listPrices)
  .add('GET', '/v1/prices/:id', getPrice)
  .add('GET', '/v1/products', listProducts)
  .add('GET', '/v1/products/:id', getProduct)
  .add('GET', '/v1/invoices', listInvoices)
  .add('POST', '/v1/invoices/create_preview', P.strict(P.INVOICE_PREVIEW, createInvoicePreview))
  .add('GET', '/v1/invoices/:id', getInvoice)
  .add('POST', '/v1/billing/meter_events', P.strict(P.METER_EVENT_CREATE, createMeterEvent))
  .add('GET', '/v1/entitlements/active_entitlements', listActiveEntitlements)
  .add('GET', '/v1/accounts', listAccounts)
  .add('GET', '/v1/accounts/:id', getAccount)
  .add('GET', '/v1/account', getOwnAccount)
  .add('GET', '/v1/events', listEvents)
  .add('GET', '/v1/events/:id', getEvent)
  .add('POST', '/v2/billing/meter_event_session', P.strict(P.METER_EVENT_SESSION_CREATE, createMeterEventSession, 'json'),
    { body: 'json' })
  .add('POST', '/v2/billing/meter_event_stream', P.strict(P.METER_EVENT_STREAM_CREATE, streamMeterEvents, 'json'),
    { body: 'json', auth: 'meter_session' });

// thin events and the objects they name (thin.js)
thin.addRoutes(router);
model.addRoutes(router);

module.exports = { stripeRouter: router };
