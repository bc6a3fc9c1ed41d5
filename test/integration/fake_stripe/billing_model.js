'use strict';
// The rest of the billing model (issue 27, part B): coupons, promotion
// codes and the discounts they make, disputes, credit notes, payment
// methods and tax ids. Their objects start from the fixtures in ./fixtures
// (stripe/openapi fixtures3.json entries, so 2025-09-30.clover and later
// shapes: a discount's coupon is source.coupon, a promotion code's
// promotion.coupon). Here: their list and retrieve endpoints, the
// expansions the extension asks for (a subscription's discounts, a
// customer's tax ids, a dispute's charge), Checkout's `discounts` and its
// discount once paid, and what POST /_fake/account seeds of them.

const fs = require('node:fs');
const path = require('node:path');
const { StripeError, BadRequest, invalidParam, noSuch, boolParam, enumParam } = require('./errors');
const { parseListParams, pageNewestFirst, checkCursors, createdMatcher, allOf, listBody } = require('./list');
const { newId, nowSeconds, addInterval, seededRandom, seededId } = require('./util');

// ---- templates ----

function template(name, defaults) {
  const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', `${name}.json`), 'utf8'));
  return JSON.stringify({ ...fixture, ...defaults });
}

// The fixtures' filler replaced by plausible defaults, per type.
const TEMPLATES = {
  coupon: template('coupon', {
    amount_off: null, currency: null, duration: 'once', duration_in_months: null, max_redemptions: null,
    name: null, percent_off: null, redeem_by: null,
  }),
  promotion_code: template('promotion_code', {
    active: true, customer: null, expires_at: null, max_redemptions: null,
    restrictions: { first_time_transaction: false, minimum_amount: null, minimum_amount_currency: null },
  }),
  discount: template('discount', {
    checkout_session: null, customer: null, end: null, invoice: null, invoice_item: null, promotion_code: null,
    subscription: null, subscription_item: null,
  }),
  dispute: template('dispute', { payment_intent: null, status: 'needs_response', reason: 'fraudulent' }),
  credit_note: template('credit_note', {
    customer_balance_transaction: null, memo: null, out_of_band_amount: null, reason: null, shipping_cost: null,
    pretax_credit_amounts: [], refunds: [], total_taxes: [], post_payment_amount: 0, pre_payment_amount: 0,
    type: 'post_payment', voided_at: null, effective_at: null,
  }),
  payment_method: template('payment_method', {
    billing_details: {
      address: { city: null, country: null, line1: null, line2: null, postal_code: null, state: null },
      email: null, name: null, phone: null, tax_id: null,
    },
    metadata: {},
  }),
  tax_id: template('tax_id', {}),
};

function build(type, fields) {
  return Object.assign(JSON.parse(TEMPLATES[type]), fields);
}

// For POST /_fake/objects: {"id": "SUMMER", "object": "coupon", "percent_off": 20} is enough.
function hasModelTemplate(type) {
  return Object.hasOwn(TEMPLATES, type);
}

function fromModelTemplate(type, raw) {
  return build(type, structuredClone(raw));
}

function buildCoupon({ id, percentOff = null, amountOff = null, currency = null, duration = 'once',
  durationInMonths = null, name = null, created = nowSeconds() }) {
  return build('coupon', {
    id, percent_off: percentOff, amount_off: amountOff, currency: amountOff === null ? null : currency || 'usd',
    duration, duration_in_months: duration === 'repeating' ? durationInMonths : null, name, created,
    times_redeemed: 0, valid: true, metadata: {},
  });
}

function buildPromotionCode({ id = newId('promo_'), code, coupon, created = nowSeconds(), active = true }) {
  return build('promotion_code', {
    id, code, active, created, times_redeemed: 0, metadata: {}, promotion: { coupon, type: 'coupon' },
  });
}

// A coupon's discount: it ends after duration_in_months for a repeating one.
function buildDiscount({ id = newId('di_'), coupon, promotionCode = null, customer = null, subscription = null,
  start = nowSeconds() }) {
  return build('discount', {
    id,
    customer,
    subscription,
    promotion_code: promotionCode,
    source: { coupon: coupon.id, type: 'coupon' },
    start,
    end: coupon.duration === 'repeating' ? addInterval(start, 'month', coupon.duration_in_months) : null,
  });
}

function buildDispute({ id = newId('dp_'), charge, status = 'needs_response', created = nowSeconds() }) {
  const dispute = build('dispute', {
    id,
    amount: charge.amount,
    charge: charge.id,
    currency: charge.currency,
    created,
    payment_intent: charge.payment_intent || null,
    status,
    metadata: {},
  });
  dispute.evidence_details = { ...dispute.evidence_details, due_by: created + 14 * 86400 };
  return dispute;
}

function buildCreditNote({ id = newId('cn_'), invoice, amount, created = nowSeconds(), number }) {
  return build('credit_note', {
    id,
    amount,
    subtotal: amount,
    subtotal_excluding_tax: amount,
    total: amount,
    total_excluding_tax: amount,
    post_payment_amount: amount,
    currency: invoice.currency,
    customer: invoice.customer,
    invoice: invoice.id,
    created,
    number,
    status: 'issued',
    reason: 'product_unsatisfactory',
    metadata: {},
    lines: { object: 'list', data: [], has_more: false, url: `/v1/credit_notes/${id}/lines` },
    pdf: `https://pay.stripe.com/credit_notes/fake/${id}/pdf`,
  });
}

function buildPaymentMethod({ id = newId('pm_'), customer, brand = 'visa', last4, expMonth, expYear,
  created = nowSeconds() }) {
  const method = build('payment_method', { id, customer, created, type: 'card' });
  method.card = {
    ...method.card,
    brand,
    display_brand: brand,
    exp_month: expMonth,
    exp_year: expYear,
    last4,
    fingerprint: `fp_${id.slice(-12)}`,
    generated_from: null,
    wallet: null,
  };
  return method;
}

function buildTaxId({ id = newId('txi_'), customer, type = 'eu_vat', value, country = 'DE', created = nowSeconds() }) {
  return build('tax_id', {
    id, customer, type, value, country, created,
    owner: { customer, type: 'customer', customer_account: null },
    verification: { status: 'verified', verified_address: null, verified_name: null },
  });
}

// ---- expansions ----

// The expand[] paths of a request (expand[]=x or expand[0]=x).
function expansions(params) {
  const { expand } = params;
  if (expand === undefined) return new Set();
  return new Set((Array.isArray(expand) ? expand : [expand]).map(String));
}

// A customer's tax ids, newest first, as Stripe embeds a list (10 of them).
function taxIdList(store, customerId, all = false) {
  const ids = store.ofType('tax_id').filter((t) => t.customer === customerId && !t.deleted).reverse();
  return {
    object: 'list',
    data: all ? ids : ids.slice(0, 10),
    has_more: !all && ids.length > 10,
    url: `/v1/customers/${customerId}/tax_ids`,
  };
}

// A customer as the request asks for it (prefix "data." in a list): its
// tax ids with expand[]=tax_ids. (Its discount is always embedded.)
function customerView(store, customer, expand, prefix = '') {
  if (customer.deleted || !expand.has(`${prefix}tax_ids`)) return customer;
  return { ...customer, tax_ids: taxIdList(store, customer.id) };
}

// A subscription (already in its API view) with expand[]=discounts: the
// discount objects for their ids.
function subscriptionView(store, subscription, expand, prefix = '') {
  if (!expand.has(`${prefix}discounts`) || !Array.isArray(subscription.discounts)) return subscription;
  return {
    ...subscription,
    discounts: subscription.discounts.map((id) => store.get(id, 'discount') || id),
  };
}

function disputeView(store, dispute, expand, prefix = '') {
  if (!expand.has(`${prefix}charge`)) return dispute;
  return { ...dispute, charge: store.get(dispute.charge, 'charge') || dispute.charge };
}

// ---- list and retrieve endpoints ----

function optionalString(value, param) {
  if (value === undefined) return null;
  if (typeof value !== 'string') throw invalidParam(param, 'Invalid string');
  return value;
}

function equals(params, param, valueOf) {
  const wanted = optionalString(params[param], param);
  return wanted === null ? null : (object) => valueOf(object) === wanted;
}

// One newest-first page of the stored objects of `type` that `matches`.
function listOf(store, type, params, { url, kind = type, matches = null, view = (o) => o }) {
  const list = parseListParams(params);
  const positionOf = (id) => store.positionOf(type, id);
  checkCursors(list, (id) => positionOf(id) !== undefined, kind);
  const page = pageNewestFirst(store.ofType(type), list, positionOf, allOf([matches, createdMatcher(params.created)]));
  page.data = page.data.map(view);
  return listBody(url, page);
}

const notDeleted = (object) => !object.deleted;

function listCoupons({ store, params }) {
  return listOf(store, 'coupon', params, { url: '/v1/coupons', matches: notDeleted });
}

function getCoupon({ store, path }) {
  const coupon = store.find(path.id, 'coupon');
  if (coupon.deleted) throw noSuch('coupon', path.id);
  return coupon;
}

function listPromotionCodes({ store, params }) {
  const active = params.active === undefined ? null : boolParam(params.active, 'active');
  return listOf(store, 'promotion_code', params, {
    url: '/v1/promotion_codes',
    kind: 'promotion code',
    matches: allOf([
      active === null ? null : (p) => p.active === active,
      // (codes are case-insensitive)
      params.code === undefined ? null
        : (p) => p.code.toUpperCase() === optionalString(params.code, 'code').toUpperCase(),
      equals(params, 'coupon', (p) => p.promotion.coupon),
      equals(params, 'customer', (p) => p.customer),
    ]),
  });
}

function getPromotionCode({ store, path }) {
  return store.find(path.id, 'promotion_code', { kind: 'promotion code' });
}

function listDisputes({ store, params }) {
  const expand = expansions(params);
  return listOf(store, 'dispute', params, {
    url: '/v1/disputes',
    matches: allOf([equals(params, 'charge', (d) => d.charge), equals(params, 'payment_intent', (d) => d.payment_intent)]),
    view: (d) => disputeView(store, d, expand, 'data.'),
  });
}

function getDispute({ store, path, params }) {
  return disputeView(store, store.find(path.id, 'dispute'), expansions(params));
}

function listCreditNotes({ store, params }) {
  return listOf(store, 'credit_note', params, {
    url: '/v1/credit_notes',
    kind: 'credit note',
    matches: allOf([equals(params, 'customer', (c) => c.customer), equals(params, 'invoice', (c) => c.invoice)]),
  });
}

function getCreditNote({ store, path }) {
  return store.find(path.id, 'credit_note', { kind: 'credit note' });
}

// Attached payment methods (of a customer, and a type).
function listPaymentMethods({ store, params }) {
  return listOf(store, 'payment_method', params, {
    url: '/v1/payment_methods',
    kind: 'payment method',
    matches: allOf([
      (m) => m.customer !== null,
      equals(params, 'customer', (m) => m.customer),
      equals(params, 'type', (m) => m.type),
    ]),
  });
}

function getPaymentMethod({ store, path }) {
  return store.find(path.id, 'payment_method', { kind: 'payment method' });
}

function listCustomerTaxIds({ store, path, params }) {
  const customer = store.find(path.id, 'customer');
  if (customer.deleted) throw noSuch('customer', path.id);
  return listOf(store, 'tax_id', params, {
    url: `/v1/customers/${customer.id}/tax_ids`,
    kind: 'tax id',
    matches: (t) => t.customer === customer.id && !t.deleted,
  });
}

function getTaxId({ store, path }) {
  const taxId = store.find(path.id, 'tax_id', { kind: 'tax id' });
  if (taxId.deleted || (path.customer !== undefined && taxId.customer !== path.customer)) {
    throw noSuch('tax id', path.id);
  }
  return taxId;
}

function addRoutes(router) {
  return router
    .add('GET', '/v1/coupons', listCoupons)
    .add('GET', '/v1/coupons/:id', getCoupon)
    .add('GET', '/v1/promotion_codes', listPromotionCodes)
    .add('GET', '/v1/promotion_codes/:id', getPromotionCode)
    .add('GET', '/v1/disputes', listDisputes)
    .add('GET', '/v1/disputes/:id', getDispute)
    .add('GET', '/v1/credit_notes', listCreditNotes)
    .add('GET', '/v1/credit_notes/:id', getCreditNote)
    .add('GET', '/v1/payment_methods', listPaymentMethods)
    .add('GET', '/v1/payment_methods/:id', getPaymentMethod)
    .add('GET', '/v1/customers/:id/tax_ids', listCustomerTaxIds)
    .add('GET', '/v1/customers/:customer/tax_ids/:id', getTaxId)
    .add('GET', '/v1/tax_ids/:id', getTaxId);
}

// ---- Checkout ----

// Checkout's `discounts` (https://docs.stripe.com/api/checkout/sessions/create):
// at most one, a coupon or a promotion code, and not with
// allow_promotion_codes. Returns {coupon, promotion_code} objects or null.
function checkoutDiscount(store, params) {
  const { discounts } = params;
  if (discounts === undefined || discounts === '') return null;
  if (!Array.isArray(discounts)) throw invalidParam('discounts', 'Invalid array');
  if (params.allow_promotion_codes !== undefined && boolParam(params.allow_promotion_codes, 'allow_promotion_codes')) {
    throw invalidParam('discounts', 'You may only specify one of these parameters: allow_promotion_codes, discounts.');
  }
  if (discounts.length !== 1) throw invalidParam('discounts', 'You may only specify one discount for a Checkout Session.');
  const entry = discounts[0];
  if (!entry || typeof entry !== 'object') throw invalidParam('discounts[0]', 'Invalid object');
  if ((entry.coupon === undefined) === (entry.promotion_code === undefined)) {
    throw invalidParam('discounts[0]', 'You must pass exactly one of coupon or promotion_code.');
  }
  if (entry.coupon !== undefined) {
    const coupon = store.get(String(entry.coupon), 'coupon');
    if (!coupon || coupon.deleted) throw noSuch('coupon', entry.coupon, 'discounts[0][coupon]', 400);
    if (!coupon.valid) throw invalidParam('discounts[0][coupon]', `Coupon ${coupon.id} is no longer valid.`);
    return { coupon, promotionCode: null };
  }
  const code = store.get(String(entry.promotion_code), 'promotion_code');
  if (!code) throw noSuch('promotion code', entry.promotion_code, 'discounts[0][promotion_code]', 400);
  if (!code.active) throw invalidParam('discounts[0][promotion_code]', 'This promotion code is not active.');
  const coupon = store.get(code.promotion.coupon, 'coupon');
  return { coupon, promotionCode: code };
}

// What a discount takes off an amount.
function discountAmount(discount, amount) {
  if (!discount) return 0;
  const { coupon } = discount;
  if (coupon.percent_off !== null) return Math.round((amount * coupon.percent_off) / 100);
  return Math.min(amount, coupon.amount_off || 0);
}

// The session's view of its discount.
function sessionDiscounts(discount) {
  if (!discount) return [];
  return [{ coupon: discount.promotionCode ? null : discount.coupon.id,
    promotion_code: discount.promotionCode ? discount.promotionCode.id : null }];
}

// Once paid in subscription mode: the subscription's discount (the
// caller emits customer.discount.created after the subscription's
// creation), and a redemption of the coupon and code.
function redeemCheckoutDiscount(store, discount, customer, subscription) {
  if (!discount) return null;
  const made = store.put(buildDiscount({
    coupon: discount.coupon,
    promotionCode: discount.promotionCode ? discount.promotionCode.id : null,
    customer: customer.id,
    subscription: subscription.id,
    start: subscription.created,
  }));
  subscription.discounts = [made.id];
  discount.coupon.times_redeemed += 1;
  if (discount.promotionCode) discount.promotionCode.times_redeemed += 1;
  return made;
}

// ---- POST /_fake/account ----

function count(options, name) {
  const value = options[name] === undefined ? 0 : options[name];
  if (!Number.isInteger(value) || value < 0) throw new BadRequest(`${name} must be a non-negative integer`);
  return value;
}

// Checked before anything is seeded (account.js parseOptions).
function parseModelOptions(options) {
  return {
    coupons: count(options, 'coupons'),
    discountedSubscriptions: count(options, 'discounted_subscriptions'),
    customerDiscounts: count(options, 'customer_discounts'),
    paymentMethods: count(options, 'payment_methods_per_customer'),
    taxIds: count(options, 'tax_ids_per_customer'),
    disputes: count(options, 'disputes'),
    creditNotes: count(options, 'credit_notes'),
  };
}

const DISPUTE_STATUSES = ['needs_response', 'under_review', 'won', 'lost', 'warning_needs_response'];
const BRANDS = ['visa', 'mastercard', 'amex'];

// Seeds the model's objects into an account seeded by account.js's
// generator `g` (its store, tick(), seed), after everything else, from
// random and id streams of their own: the rest of the account is the same
// with them or without. Returns the counts of what it made (only of the
// options given).
function seedModel(g, o, seed) {
  const { store } = g;
  const random = seededRandom((seed * 7919 + 17) >>> 0);
  const idRandom = seededRandom((seed * 104729 + 3) >>> 0);
  const id = (prefix, length) => seededId(prefix, idRandom, length, store.tag);
  const counts = {};
  const add = (kind) => { counts[kind] = (counts[kind] || 0) + 1; };
  const customers = store.ofType('customer').filter((c) => !c.deleted);
  const subscriptions = store.ofType('subscription');
  const live = subscriptions.filter((s) => !['canceled', 'incomplete_expired'].includes(s.status));
  if ((o.discountedSubscriptions || o.customerDiscounts) && !o.coupons) {
    throw new BadRequest('discounts need coupons');
  }
  if (o.discountedSubscriptions > live.length) throw new BadRequest('discounted_subscriptions must not exceed the live subscriptions');
  if (o.customerDiscounts > customers.length) throw new BadRequest('customer_discounts must not exceed customers');
  if (o.disputes > subscriptions.length) throw new BadRequest('disputes must not exceed subscriptions (one charge each)');
  const invoices = store.ofType('invoice').filter((i) => i.status === 'paid' && i.amount_paid > 0);
  if (o.creditNotes > invoices.length) throw new BadRequest('credit_notes must not exceed the paid invoices');

  const coupons = [];
  const codes = [];
  for (let k = 1; k <= o.coupons; k++) {
    const coupon = store.put(buildCoupon({
      // (an id the account chooses: the same in every account)
      id: `COUPON${k}`,
      name: `Coupon ${k}`,
      ...(k % 2 ? { percentOff: 5 * k % 100 || 50 } : { amountOff: 100 * k, currency: 'usd' }),
      duration: ['once', 'repeating', 'forever'][k % 3],
      durationInMonths: 3,
      created: g.tick(),
    }));
    coupons.push(coupon);
    add('coupons');
    codes.push(store.put(buildPromotionCode({ id: id('promo_'), code: `CODE${k}`, coupon: coupon.id, created: g.tick() })));
    add('promotion_codes');
  }
  for (let i = 0; i < o.discountedSubscriptions; i++) {
    const subscription = live[i];
    const k = i % coupons.length;
    const discount = store.put(buildDiscount({
      id: id('di_'), coupon: coupons[k], promotionCode: codes[k].id, customer: subscription.customer,
      subscription: subscription.id, start: subscription.created,
    }));
    subscription.discounts = [discount.id];
    add('discounts');
  }
  for (let i = 0; i < o.customerDiscounts; i++) {
    const customer = customers[customers.length - 1 - i];
    const discount = store.put(buildDiscount({
      id: id('di_'), coupon: coupons[i % coupons.length], customer: customer.id, start: customer.created,
    }));
    customer.discount = discount;
    add('discounts');
  }
  const nowYear = new Date().getUTCFullYear();
  const nowMonth = new Date().getUTCMonth() + 1;
  (o.paymentMethods ? live : []).forEach((subscription, n) => {
    const customer = store.get(subscription.customer, 'customer');
    for (let j = 0; j < o.paymentMethods; j++) {
      // every fifth customer's first card expires this month
      const soon = j === 0 && n % 5 === 0;
      const method = store.put(buildPaymentMethod({
        id: id('pm_'),
        customer: customer.id,
        brand: BRANDS[Math.floor(random() * BRANDS.length)],
        last4: String(1000 + Math.floor(random() * 9000)),
        expMonth: soon ? nowMonth : 1 + Math.floor(random() * 12),
        expYear: soon ? nowYear : nowYear + 1 + Math.floor(random() * 4),
        created: g.tick(),
      }));
      if (j === 0) customer.invoice_settings = { ...customer.invoice_settings, default_payment_method: method.id };
      add('payment_methods');
    }
  });
  for (const customer of (o.taxIds ? customers : [])) {
    for (let j = 0; j < o.taxIds; j++) {
      store.put(buildTaxId({
        id: id('txi_'), customer: customer.id, value: `DE${100000000 + Math.floor(random() * 899999999)}`,
        created: g.tick(),
      }));
      add('tax_ids');
    }
  }
  for (let i = 0; i < o.disputes; i++) {
    const subscription = subscriptions[i];
    const charge = store.put({
      id: id('ch_'), object: 'charge', amount: 1000, amount_refunded: 0, currency: 'usd',
      customer: subscription.customer, payment_intent: null, status: 'succeeded', created: g.tick(),
      livemode: false, refunds: { object: 'list', data: [], has_more: false, url: '/v1/refunds' },
    });
    store.put(buildDispute({ id: id('dp_'), charge, status: DISPUTE_STATUSES[i % DISPUTE_STATUSES.length], created: g.tick() }));
    add('disputes');
  }
  for (let i = 0; i < o.creditNotes; i++) {
    const invoice = invoices[i];
    store.put(buildCreditNote({
      id: id('cn_'), invoice, amount: Math.floor(invoice.amount_paid / 2), created: g.tick(),
      number: `${invoice.number || 'INV'}-CN-01`,
    }));
    add('credit_notes');
  }
  return counts;
}

module.exports = {
  addRoutes,
  hasModelTemplate,
  fromModelTemplate,
  expansions,
  customerView,
  subscriptionView,
  checkoutDiscount,
  discountAmount,
  sessionDiscounts,
  redeemCheckoutDiscount,
  parseModelOptions,
  seedModel,
  buildCoupon,
  buildPromotionCode,
  buildDiscount,
  buildDispute,
  buildCreditNote,
  buildPaymentMethod,
  buildTaxId,
};
