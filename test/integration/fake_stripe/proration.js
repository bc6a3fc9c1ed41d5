'use strict';
// Proration of subscription item changes, shared by POST
// /v1/subscriptions/:id and POST /v1/invoices/create_preview, so a preview
// and the update that follows it with the same proration_date bill the
// same amounts. For an item moving from price A (quantity qa) to price B
// (qb) at time t within its current period [s, e):
//   credit  -round(A.unit_amount * qa * (e - t) / (e - s))  "Unused time on ... after <date>"
//   charge  +round(B.unit_amount * qb * (e - t) / (e - s))  "Remaining time on ... after <date>"
// A deleted item has only the credit, a new item only the charge. A
// trialing subscription is not prorated (nothing was paid for the trial).

const { invalidParam, intParam } = require('./errors');
const { describeLine } = require('./templates');
const { addInterval, nowSeconds } = require('./util');

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

// Stripe's date wording in proration lines: "01 Jan 2026" (UTC).
function dayText(ts) {
  const d = new Date(ts * 1000);
  return `${String(d.getUTCDate()).padStart(2, '0')} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()}`;
}

// "Basic", or "2 × Basic" for several.
function quantityText(quantity, name) {
  return quantity === 1 ? name : `${quantity} × ${name}`;
}

function currentPeriod(subscription) {
  const [first] = subscription.items.data;
  return { start: first.current_period_start, end: first.current_period_end };
}

// The proration date of a request: `value` (unix seconds) or now; it must
// fall in the subscription's current period.
function prorationDate(subscription, value, param) {
  const { start, end } = currentPeriod(subscription);
  if (value === undefined) return Math.min(Math.max(nowSeconds(), start), end - 1);
  const t = intParam(value, param);
  if (t < start || t >= end) {
    throw invalidParam(param, `The proration date must be within the subscription's current period (${start} to ${end}).`);
  }
  return t;
}

function prorationCharge({ price, quantity, item, fraction, t, end, productName, credit }) {
  const amount = Math.round(price.unit_amount * quantity * fraction);
  const what = quantityText(quantity, productName(price.product));
  return {
    price,
    quantity,
    amount: credit ? -amount : amount,
    description: `${credit ? 'Unused' : 'Remaining'} time on ${what} after ${dayText(t)}`,
    period: { start: t, end },
    proration: true,
    subscriptionItem: item,
    invoiceItem: null,
  };
}

// The proration charges of planned item `changes` (see billing.js
// planItemChanges) at time t, in change order: credit before charge.
function prorate(subscription, changes, t, productName) {
  if (subscription.status === 'trialing') return [];
  const charges = [];
  for (const change of changes) {
    const item = change.item;
    const { start, end } = item
      ? { start: item.current_period_start, end: item.current_period_end }
      : currentPeriod(subscription);
    const at = Math.min(Math.max(t, start), end); // items normally share one period
    const fraction = (end - at) / (end - start);
    const before = item ? { price: item.price, quantity: item.quantity } : null;
    const after = change.deleted ? null : {
      price: change.price || item.price,
      quantity: change.quantity !== undefined ? change.quantity : item ? item.quantity : 1,
    };
    if (before && after && before.price.id === after.price.id && before.quantity === after.quantity) continue;
    const itemId = item ? item.id : change.newId;
    const common = { item: itemId, fraction, t: at, end, productName };
    if (before && before.quantity > 0) charges.push(prorationCharge({ ...before, ...common, credit: true }));
    if (after && after.quantity > 0) charges.push(prorationCharge({ ...after, ...common, credit: false }));
  }
  return charges;
}

// What the renewal at the end of the current period bills for `subscription`'s
// items (their full price over the next period), as the advance control call
// will invoice it.
function nextPeriodCharges(subscription, productName) {
  return subscription.items.data.map((item) => {
    const { interval, interval_count: count } = item.price.recurring;
    return {
      price: item.price,
      quantity: item.quantity,
      amount: item.price.unit_amount * item.quantity,
      description: describeLine(item, productName(item.price.product)),
      period: { start: item.current_period_end, end: addInterval(item.current_period_end, interval, count) },
      proration: false,
      subscriptionItem: item.id,
      invoiceItem: null,
    };
  });
}

// The subscription's invoice items not yet invoiced (pending prorations).
function pendingInvoiceItems(store, subscription) {
  return store.ofType('invoiceitem').filter((ii) => ii.invoice === null
    && ii.parent.subscription_details.subscription === subscription.id);
}

// Invoice lines for pending invoice items.
function invoiceItemCharges(store, items) {
  return items.map((ii) => ({
    price: store.get(ii.pricing.price_details.price, 'price') || {
      id: ii.pricing.price_details.price,
      product: ii.pricing.price_details.product,
      currency: ii.currency,
      unit_amount_decimal: ii.pricing.unit_amount_decimal,
    },
    quantity: ii.quantity,
    amount: ii.amount,
    description: ii.description,
    period: ii.period,
    proration: ii.proration,
    subscriptionItem: ii.parent.subscription_details.subscription_item,
    invoiceItem: ii.id,
  }));
}

module.exports = {
  currentPeriod,
  prorationDate,
  prorate,
  nextPeriodCharges,
  pendingInvoiceItems,
  invoiceItemCharges,
};
