// For test/integration/backfill.sh: reads a whole account from the fake Stripe with the
// official stripe SDK (its own pagination: an independent client) and prints
// one line per object, "kind<TAB>id<TAB>state", the state being the fields
// the extension keeps, in the same text form as account_rows.sql builds from
// the local tables.
//   node account_rows.js <api base> <api key> <invoices since (unix)>
'use strict';
const Stripe = require('stripe');

const [base, key, since] = process.argv.slice(2);
const url = new URL(base);
const stripe = Stripe(key, { host: url.hostname, port: url.port, protocol: url.protocol.replace(':', ''),
  maxNetworkRetries: 5 });

const out = [];
const row = (kind, id, state) => out.push(`${kind}\t${id}\t${state}`);
const all = (list) => list.autoPagingToArray({ limit: 10000 });

async function main() {
  for (const p of await all(stripe.products.list({ limit: 100 }))) row('product', p.id, `${p.active}`);
  for (const p of await all(stripe.prices.list({ limit: 100 }))) {
    row('price', p.id, `${p.product} ${p.active} ${p.unit_amount}`);
  }
  // coupons and promotion codes; a discount's coupon is source.coupon (clover on)
  const discount = (d) => row('discount', d.id, `${d.customer || ''} ${d.subscription || ''} ${d.source.coupon} ${d.promotion_code || ''}`);
  for (const c of await all(stripe.coupons.list({ limit: 100 }))) {
    row('coupon', c.id, `${c.valid} ${c.percent_off ?? ''} ${c.amount_off ?? ''}`);
  }
  for (const p of await all(stripe.promotionCodes.list({ limit: 100 }))) {
    row('promotion_code', p.id, `${p.code} ${p.promotion.coupon} ${p.active}`);
  }
  // a customer's default payment method, its own discount and (asked for) its tax ids
  for (const c of await all(stripe.customers.list({ limit: 100, expand: ['data.tax_ids'] }))) {
    row('customer', c.id, `${c.metadata.user_ref || ''} ${c.invoice_settings.default_payment_method || ''}`);
    if (c.discount) discount(c.discount);
    const taxIds = c.tax_ids.has_more ? await all(stripe.customers.listTaxIds(c.id, { limit: 100 })) : c.tax_ids.data;
    for (const t of taxIds) row('tax_id', t.id, `${t.customer} ${t.type} ${t.value}`);
  }
  const live = new Set();
  for (const s of await all(stripe.subscriptions.list({ limit: 100, status: 'all', expand: ['data.discounts'] }))) {
    // Stripe embeds 10 items at most: the rest come from their own list
    const items = s.items.has_more
      ? await all(stripe.subscriptionItems.list({ subscription: s.id, limit: 100 }))
      : s.items.data;
    const text = items.map((i) => `${i.price.id} x${i.quantity}`).sort().join(', ');
    const discounts = s.discounts.map((d) => d.id).join(',');
    row('subscription', s.id, `${s.customer} ${s.status} ${s.cancel_at_period_end} ${text} {${discounts}}`);
    s.discounts.forEach(discount);
    if (!['canceled', 'incomplete_expired'].includes(s.status)) live.add(s.customer);
  }
  for (const i of await all(stripe.invoices.list({ limit: 100, created: { gte: Number(since) } }))) {
    row('invoice', i.id, `${i.customer} ${i.status} ${i.amount_paid}`);
  }
  for (const n of await all(stripe.creditNotes.list({ limit: 100 }))) {
    row('credit_note', n.id, `${n.invoice} ${n.customer} ${n.status} ${n.amount}`);
  }
  // a dispute's customer is its charge's
  for (const d of await all(stripe.disputes.list({ limit: 100, expand: ['data.charge'] }))) {
    row('dispute', d.id, `${d.charge.id} ${d.charge.customer} ${d.status}`);
  }
  for (const customer of [...live].sort()) {
    const list = await all(stripe.entitlements.activeEntitlements.list({ customer, limit: 100 }));
    row('entitlements', customer, list.map((e) => e.lookup_key).sort().join(', '));
    for (const m of await all(stripe.paymentMethods.list({ customer, limit: 100 }))) {
      row('payment_method', m.id, `${m.customer} ${m.card.brand} ${m.card.last4} ${m.card.exp_month}/${m.card.exp_year}`);
    }
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((err) => { console.error(err.message); process.exit(1); });
