'use strict';
// Object builders. Each Stripe object starts from the matching fixture in
// ./fixtures (verbatim copies of stripe/openapi fixtures3.json entries, so the
// key set is the real, current one), with the fixture's filler values
// (obj_123, random integers, ...) replaced by plausible defaults, and then the
// fields of the concrete object set on top.

const fs = require('node:fs');
const path = require('node:path');
const { newId, nowSeconds, randomAlnum } = require('./util');

const API_VERSION = '2025-03-31.basil';

const FIXTURE_DIR = path.join(__dirname, 'fixtures');

function loadFixture(name) {
  return JSON.parse(fs.readFileSync(path.join(FIXTURE_DIR, `${name}.json`), 'utf8'));
}

const NULL_ADDRESS = { city: null, country: null, line1: null, line2: null, postal_code: null, state: null };

// Top-level replacements for fixture filler, per object type.
const DEFAULTS = {
  customer: {
    address: null, currency: null, discount: null, shipping: null,
  },
  'checkout.session': {
    after_expiration: null,
    automatic_tax: { enabled: false, liability: null, provider: null, status: null },
    cancel_url: null,
    consent: null,
    consent_collection: null,
    custom_text: { after_submit: null, shipping_address: null, submit: null, terms_of_service_acceptance: null },
    customer_details: null,
    invoice_creation: null,
    payment_intent: null,
    payment_method_configuration_details: null,
    saved_payment_method_options: null,
    shipping_address_collection: null,
    shipping_cost: null,
    success_url: null,
    total_details: { amount_discount: 0, amount_shipping: 0, amount_tax: 0 },
    ui_mode: 'hosted',
    adaptive_pricing: { enabled: false },
    discounts: [],
    collected_information: null,
    permissions: null,
    wallet_options: null,
    currency_conversion: null,
    managed_payments: { enabled: false },
  },
  'billing_portal.session': { flow: null, livemode: false, return_url: null },
  subscription: {
    automatic_tax: { enabled: false, liability: null, disabled_reason: null },
    billing_cycle_anchor_config: null,
    cancel_at: null,
    canceled_at: null,
    ended_at: null,
    invoice_settings: { account_tax_ids: null, issuer: { type: 'self' } },
    items: { object: 'list', data: [], has_more: false, total_count: 0, url: '/v1/subscription_items' },
    next_pending_invoice_item_invoice: null,
    pause_collection: null,
    payment_settings: { payment_method_options: null, payment_method_types: null, save_default_payment_method: 'off' },
    pending_invoice_item_interval: null,
    pending_update: null,
    transfer_data: null,
    trial_end: null,
    trial_start: null,
    cancel_at_period_end: false,
    billing_thresholds: null,
    billing_mode: { type: 'classic', flexible: null },
    managed_payments: { enabled: false },
    billing_schedules: [],
  },
  subscription_item: { billing_thresholds: null },
  price: { custom_unit_amount: null, transform_quantity: null },
  product: { default_price: null, description: null, package_dimensions: null, type: 'service' },
  plan: { transform_usage: null },
  invoice: {
    account_name: 'Fake Stripe',
    automatic_tax: { enabled: false, liability: null, status: null, disabled_reason: null, provider: null },
    customer_address: null,
    customer_shipping: null,
    due_date: null,
    ending_balance: 0,
    from_invoice: null,
    last_finalization_error: null,
    next_payment_attempt: null,
    payment_settings: { default_mandate: null, payment_method_options: null, payment_method_types: null },
    rendering: { amount_tax_display: null, pdf: { page_size: 'auto' }, template: null, template_version: null },
    shipping_cost: null,
    shipping_details: null,
    amount_overpaid: 0,
  },
  invoice_line: { discountable: true, pretax_credit_amounts: [], taxes: [] },
  payment_intent: {
    last_payment_error: null,
    next_action: null,
    payment_method_configuration_details: null,
    processing: null,
    shipping: null,
    transfer_data: null,
    managed_payments: { enabled: false },
  },
  charge: {
    application_fee: null,
    description: null,
    outcome: {
      advice_code: null, network_advice_code: null, network_decline_code: null, network_status: 'approved_by_network',
      reason: null, risk_level: 'normal', seller_message: 'Payment complete.', type: 'authorized',
    },
    shipping: null,
    source: null,
    transfer_data: null,
  },
  setup_intent: {
    automatic_payment_methods: null,
    last_setup_error: null,
    next_action: null,
    payment_method_configuration_details: null,
  },
  'billing.meter_event': {},
  // (the thin events' meter error reports name a meter: thin.js)
  'billing.meter': { livemode: false },
  'entitlements.active_entitlement': {},
  account: { email: null, metadata: {} },
  application: {},
  subscription_schedule: {
    application: null,
    canceled_at: null,
    completed_at: null,
    current_phase: null,
    default_settings: {
      application_fee_percent: null,
      automatic_tax: { enabled: false, liability: null, disabled_reason: null },
      billing_cycle_anchor: 'automatic',
      billing_thresholds: null,
      collection_method: 'charge_automatically',
      default_payment_method: null,
      description: null,
      invoice_settings: { account_tax_ids: null, days_until_due: null, issuer: { type: 'self' } },
      on_behalf_of: null,
      transfer_data: null,
    },
    end_behavior: 'release',
    metadata: {},
    phases: [],
    released_at: null,
    released_subscription: null,
    status: 'not_started',
    subscription: null,
    test_clock: null,
    billing_mode: { type: 'classic', flexible: null },
    customer_account: null,
  },
};

function loadTemplates() {
  const raw = {};
  for (const type of Object.keys(DEFAULTS)) {
    if (type !== 'invoice_line') raw[type] = loadFixture(type);
  }
  // The invoice line template is the line embedded in the invoice fixture.
  raw.invoice_line = raw.invoice.lines.data[0];
  // Leftover from pre-basil versions: basil invoices name their subscription in
  // parent.subscription_details only.
  delete raw.invoice.subscription;
  const templates = {};
  for (const [type, fixture] of Object.entries(raw)) templates[type] = { ...fixture, ...DEFAULTS[type] };
  return templates;
}

const TEMPLATES = loadTemplates();
// Templates are plain JSON, so parsing their text is a deep copy, and about
// twice as fast as structuredClone (it matters when seeding big accounts).
const TEMPLATE_TEXT = Object.fromEntries(Object.entries(TEMPLATES).map(([type, t]) => [type, JSON.stringify(t)]));

// A fresh copy of `type`'s template with `fields` set on top.
function fromTemplate(type, fields) {
  return Object.assign(JSON.parse(TEMPLATE_TEXT[type]), fields);
}

function hasTemplate(type) {
  return Object.hasOwn(TEMPLATES, type) && type !== 'invoice_line';
}

// `id` and `invoicePrefix` are given only by the account generator, whose
// objects are reproducible from its seed.
function buildCustomer({
  email = null, name = null, description = null, phone = null, metadata = {}, created = nowSeconds(),
  id = newId('cus_'), invoicePrefix = randomAlnum(8).toUpperCase(),
}) {
  return fromTemplate('customer', {
    id,
    created,
    description,
    email,
    invoice_prefix: invoicePrefix,
    metadata,
    name,
    phone,
  });
}

// Prices are seeded, never created through the API. Missing fields come from
// the template; `type` follows `recurring` unless given.
function buildPrice(fields) {
  const price = fromTemplate('price', { created: nowSeconds(), ...fields });
  if (!fields.type) price.type = price.recurring ? 'recurring' : 'one_time';
  if (price.type === 'one_time') price.recurring = null;
  if (price.recurring) {
    price.recurring = { interval: 'month', interval_count: 1, meter: null, usage_type: 'licensed', trial_period_days: null, ...price.recurring };
  }
  if (fields.unit_amount_decimal === undefined) price.unit_amount_decimal = String(price.unit_amount);
  return price;
}

function buildProduct(fields) {
  return fromTemplate('product', { created: nowSeconds(), updated: nowSeconds(), ...fields });
}

// The legacy `plan` mirror of a recurring price, still embedded in basil
// subscription items.
function planFromPrice(price) {
  return fromTemplate('plan', {
    active: price.active,
    amount: price.unit_amount,
    amount_decimal: price.unit_amount_decimal,
    billing_scheme: price.billing_scheme,
    created: price.created,
    currency: price.currency,
    id: price.id,
    interval: price.recurring.interval,
    interval_count: price.recurring.interval_count,
    metadata: price.metadata,
    meter: price.recurring.meter,
    nickname: price.nickname,
    product: price.product,
    tiers_mode: price.tiers_mode,
    trial_period_days: price.recurring.trial_period_days,
    usage_type: price.recurring.usage_type,
  });
}

function buildSubscriptionItem({
  subscription, price, quantity, periodStart, periodEnd, created = nowSeconds(), id = newId('si_'),
}) {
  return fromTemplate('subscription_item', {
    created,
    discounts: [],
    id,
    metadata: {},
    price: structuredClone(price),
    quantity,
    subscription,
    tax_rates: [],
    plan: planFromPrice(price),
    current_period_end: periodEnd,
    current_period_start: periodStart,
  });
}

function itemList(subscriptionId, items) {
  return {
    object: 'list',
    data: items,
    has_more: false,
    total_count: items.length,
    url: `/v1/subscription_items?subscription=${subscriptionId}`,
  };
}

// Basil shape: no current_period_* on the subscription itself, only on items.
// `lines` is [{price, quantity}], periods are given by the caller.
function buildSubscription({
  customer, lines, status, periodStart, periodEnd, trialStart = null, trialEnd = null, metadata = {}, created = nowSeconds(),
  id = newId('sub_'), itemId = () => newId('si_'),
}) {
  const items = lines.map(({ price, quantity }) =>
    buildSubscriptionItem({ subscription: id, price, quantity, periodStart, periodEnd, created, id: itemId() }));
  return fromTemplate('subscription', {
    billing_cycle_anchor: trialEnd || periodStart,
    created,
    currency: lines[0].price.currency,
    customer,
    default_payment_method: null,
    id,
    items: itemList(id, items),
    latest_invoice: null,
    metadata,
    start_date: created,
    status,
    trial_end: trialEnd,
    trial_start: trialStart,
  });
}

// Stripe's line wording: "1 × Basic (at $10.00 / month)".
function describeLine(item, productName) {
  const amount = (item.price.unit_amount / 100).toFixed(2);
  const every = item.price.recurring ? ` / ${item.price.recurring.interval}` : '';
  return `${item.quantity} × ${productName} (at $${amount}${every})`;
}

// What one invoice line bills: {price, quantity, amount, description,
// period: {start, end}, proration, subscriptionItem, invoiceItem}.
// Plain renewals bill every item over its current period; prorations and
// pending invoice items come with their own amounts and wording.
function itemCharges(subscription, productName) {
  const trial = subscription.status === 'trialing';
  return subscription.items.data.map((item) => ({
    price: item.price,
    quantity: item.quantity,
    amount: trial ? 0 : item.price.unit_amount * item.quantity,
    description: describeLine(item, productName(item.price.product)),
    period: { start: item.current_period_start, end: item.current_period_end },
    proration: false,
    subscriptionItem: item.id,
    invoiceItem: null,
  }));
}

function buildInvoiceLine({ invoice, subscription, charge, id = newId('il_') }) {
  const { price } = charge;
  return fromTemplate('invoice_line', {
    amount: charge.amount,
    currency: price.currency,
    description: charge.description,
    discount_amounts: [],
    discounts: [],
    id,
    invoice,
    metadata: {},
    period: { end: charge.period.end, start: charge.period.start },
    quantity: charge.quantity,
    subscription: subscription.id,
    parent: {
      invoice_item_details: null,
      subscription_item_details: {
        invoice_item: charge.invoiceItem,
        proration: charge.proration,
        proration_details: { credited_items: null },
        subscription: subscription.id,
        subscription_item: charge.subscriptionItem,
      },
      type: 'subscription_item_details',
    },
    pricing: {
      price_details: { price: price.id, product: price.product },
      type: 'price_details',
      unit_amount_decimal: price.unit_amount_decimal,
    },
    subtotal: charge.amount,
  });
}

// Invoice for a subscription: by default its current items (a trialing
// subscription is invoiced 0); `charges` bills other lines (prorations,
// pending invoice items). `paid` false leaves it open after a failed
// attempt. A negative total (credits) leaves nothing due.
// `productName(id)` resolves line descriptions.
function buildInvoice({
  subscription, customer, billingReason, paid, productName, created = nowSeconds(),
  id = newId('in_'), lineId = () => newId('il_'), charges = itemCharges(subscription, productName),
}) {
  const lines = charges.map((charge) => buildInvoiceLine({ invoice: id, subscription, charge, id: lineId() }));
  const total = lines.reduce((sum, line) => sum + line.amount, 0);
  const due = Math.max(total, 0);
  return fromTemplate('invoice', {
    amount_due: due,
    amount_paid: paid ? due : 0,
    amount_remaining: paid ? 0 : due,
    application: subscription.application || null,
    on_behalf_of: subscription.on_behalf_of || null,
    attempt_count: 1,
    attempted: true,
    billing_reason: billingReason,
    created,
    currency: subscription.currency,
    customer: customer.id,
    customer_email: customer.email,
    customer_name: customer.name,
    effective_at: created,
    ending_balance: Math.min(total, 0),
    hosted_invoice_url: `https://invoice.stripe.com/i/fake/${id}`,
    id,
    invoice_pdf: `https://pay.stripe.com/invoice/fake/${id}/pdf`,
    lines: { data: lines, has_more: false, object: 'list', url: `/v1/invoices/${id}/lines` },
    number: `${customer.invoice_prefix}-${String(customer.next_invoice_sequence).padStart(4, '0')}`,
    period_end: created,
    period_start: created,
    status: paid ? 'paid' : 'open',
    status_transitions: { finalized_at: created, marked_uncollectible_at: null, paid_at: paid ? created : null, voided_at: null },
    subtotal: total,
    subtotal_excluding_tax: total,
    total,
    total_discount_amounts: [],
    total_excluding_tax: total,
    webhooks_delivered_at: created,
    total_pretax_credit_amounts: [],
    total_taxes: [],
    parent: {
      quote_details: null,
      subscription_details: { metadata: subscription.metadata, subscription: subscription.id },
      type: 'subscription_details',
    },
  });
}

// An invoice preview (POST /v1/invoices/create_preview): a draft nobody
// finalized, numbered or paid, with an upcoming_in_ id and temporary line
// ids. `created` is when it would be issued; the period is what it bills.
function buildPreviewInvoice({ subscription, customer, billingReason, productName, charges, created, periodStart, periodEnd }) {
  const invoice = buildInvoice({
    subscription, customer, billingReason, paid: false, productName, charges, created,
    id: newId('upcoming_in_'), lineId: () => newId('il_tmp_'),
  });
  return Object.assign(invoice, {
    attempt_count: 0,
    attempted: false,
    effective_at: null,
    ending_balance: null,
    hosted_invoice_url: null,
    invoice_pdf: null,
    lines: { ...invoice.lines, url: '/v1/invoices/upcoming/lines' },
    next_payment_attempt: billingReason === 'upcoming' ? created : null,
    number: null,
    period_end: periodEnd,
    period_start: periodStart,
    status: 'draft',
    status_transitions: { finalized_at: null, marked_uncollectible_at: null, paid_at: null, voided_at: null },
    webhooks_delivered_at: null,
  });
}

// A pending invoice item (a proration the next invoice bills), in the basil
// shape. There is no fixture for invoice items, so every field is set here.
function buildInvoiceItem({ customer, subscription, charge }) {
  const { price } = charge;
  return {
    id: newId('ii_'),
    object: 'invoiceitem',
    amount: charge.amount,
    currency: price.currency,
    customer,
    date: nowSeconds(),
    description: charge.description,
    discountable: false,
    discounts: [],
    invoice: null,
    livemode: false,
    metadata: {},
    net_amount: charge.amount,
    parent: {
      subscription_details: { subscription, subscription_item: charge.subscriptionItem },
      type: 'subscription_details',
    },
    period: { end: charge.period.end, start: charge.period.start },
    pricing: {
      price_details: { price: price.id, product: price.product },
      type: 'price_details',
      unit_amount_decimal: price.unit_amount_decimal,
    },
    proration: charge.proration,
    quantity: charge.quantity,
    tax_rates: [],
    test_clock: null,
  };
}

// A subscription schedule (from its fixture), without phases yet.
function buildSubscriptionSchedule({ customer, subscription, created = nowSeconds(), id = newId('sub_sched_') }) {
  return fromTemplate('subscription_schedule', { created, customer, id, subscription, status: 'active' });
}

// A schedule's phase: the fixture's first, its filler replaced (items, dates
// and the like are set by buildSchedulePhase).
const PHASE_TEMPLATE_TEXT = JSON.stringify({
  ...loadFixture('subscription_schedule').phases[0],
  add_invoice_items: [], application_fee_percent: null, billing_cycle_anchor: null, billing_thresholds: null,
  collection_method: null, default_payment_method: null, default_tax_rates: [], description: null, discounts: [],
  invoice_settings: null, on_behalf_of: null, transfer_data: null, trial_end: null,
});

// One phase of a schedule: `items` are [{price (an object), quantity}], the
// dates unix seconds. Phase items name their price and plan by id.
function buildSchedulePhase({ items, start, end, trialEnd = null, prorationBehavior = 'create_prorations', metadata = {} }) {
  const phase = JSON.parse(PHASE_TEMPLATE_TEXT);
  return Object.assign(phase, {
    currency: items[0].price.currency,
    end_date: end,
    items: items.map(({ price, quantity }) => ({
      billing_thresholds: null, discounts: [], metadata: {}, plan: price.id, price: price.id, quantity, tax_rates: [],
    })),
    metadata,
    proration_behavior: prorationBehavior,
    start_date: start,
    trial_end: trialEnd,
  });
}

// The Connect application of the fake's platform: what account.application.*
// events carry, and the `application` of objects the platform makes on a
// connected account.
const PLATFORM_APPLICATION = { id: 'ca_FakePlatform00000000000000000000', object: 'application', name: 'Fake Stripe platform' };

function buildApplication() {
  return fromTemplate('application', structuredClone(PLATFORM_APPLICATION));
}

// Who controls an account, by its type: a standard account controls itself,
// the platform controls express and custom ones.
const CONTROLLERS = {
  standard: { type: 'account' },
  express: {
    fees: { payer: 'application' }, is_controller: true, losses: { payments: 'application' },
    requirement_collection: 'stripe', stripe_dashboard: { type: 'express' }, type: 'application',
  },
  custom: {
    fees: { payer: 'application' }, is_controller: true, losses: { payments: 'application' },
    requirement_collection: 'application', stripe_dashboard: { type: 'none' }, type: 'application',
  },
};
const ACCOUNT_TYPES = Object.keys(CONTROLLERS);

// A Connect account (or the platform's own). `name` is the shorthand for
// business_profile.name (and the dashboard's display name); `currently_due`
// for requirements.currently_due. Other fields replace the template's
// (business_profile, requirements and settings are merged one level deep).
function buildAccount({
  id, name = null, type = 'standard', charges_enabled: charges = true, payouts_enabled: payouts = true,
  details_submitted: submitted = true, currently_due: due = [], created = nowSeconds(), country = 'US',
  default_currency: currency = 'usd', business_profile: profile = {}, requirements = {}, settings = {}, ...fields
}) {
  const account = fromTemplate('account', {});
  const capability = charges ? 'active' : 'inactive';
  Object.assign(account, {
    business_profile: { ...account.business_profile, name, ...profile },
    capabilities: { card_payments: capability, transfers: payouts ? 'active' : 'inactive' },
    charges_enabled: charges,
    controller: structuredClone(CONTROLLERS[type] || CONTROLLERS.standard),
    country,
    created,
    default_currency: currency,
    details_submitted: submitted,
    external_accounts: { ...account.external_accounts, url: `/v1/accounts/${id}/external_accounts` },
    id,
    payouts_enabled: payouts,
    requirements: {
      ...account.requirements,
      currently_due: due,
      eventually_due: due,
      disabled_reason: due.length && !charges ? 'requirements.past_due' : null,
      ...requirements,
    },
    settings: {
      ...account.settings,
      dashboard: { ...account.settings.dashboard, display_name: name },
      ...settings,
    },
    type,
  }, fields);
  return account;
}

function buildCheckoutSession(fields) {
  return fromTemplate('checkout.session', { created: nowSeconds(), ...fields });
}

function buildPortalSession({ customer, returnUrl, baseUrl }) {
  const id = newId('bps_');
  return fromTemplate('billing_portal.session', {
    configuration: 'bpc_fake_default',
    created: nowSeconds(),
    customer,
    id,
    return_url: returnUrl,
    url: `${baseUrl}/portal/${id}`,
  });
}

// What a Checkout session asked of Connect (connect.js checkoutConnect), as
// a payment intent, charge or subscription shows it.
function transferDataView(transfer, amountKey) {
  if (!transfer) return null;
  return transfer[amountKey] === null && amountKey === 'amount' ? { destination: transfer.destination } : { ...transfer };
}

// `failed` builds the intent as a declined card leaves it; `connect` is
// what the session asked of Connect (fee, transfer_data, on_behalf_of).
function buildPaymentIntent({ amount, currency, customer, metadata, failed, connect = null }) {
  const id = newId('pi_');
  return fromTemplate('payment_intent', {
    amount,
    application: connect ? connect.application : null,
    application_fee_amount: connect ? connect.applicationFeeAmount : null,
    on_behalf_of: connect ? connect.onBehalfOf : null,
    transfer_data: connect ? transferDataView(connect.transferData, 'amount') : null,
    amount_received: failed ? 0 : amount,
    canceled_at: null,
    client_secret: `${id}_secret_${randomAlnum(25)}`,
    created: nowSeconds(),
    currency,
    customer,
    id,
    last_payment_error: failed
      ? { code: 'card_declined', decline_code: 'generic_decline', message: 'Your card was declined.', type: 'card_error' }
      : null,
    metadata,
    payment_method: failed ? null : newId('pm_'),
    status: failed ? 'requires_payment_method' : 'succeeded',
  });
}

// A charge of a payment intent: its Connect fields follow the intent's; a
// successful one with an application fee names the fee (`fee_...`, capped
// at the amount), a destination charge its transfer group.
function buildCharge({ paymentIntent, email, failed }) {
  const id = newId('ch_');
  const fee = paymentIntent.application_fee_amount === null ? null : Math.min(paymentIntent.application_fee_amount, paymentIntent.amount);
  const transfer = paymentIntent.transfer_data;
  const template = TEMPLATES.charge;
  const outcome = failed
    ? { ...template.outcome, network_status: 'declined_by_network', reason: 'generic_decline', seller_message: 'The bank did not return any further details with this decline.', type: 'issuer_declined' }
    : template.outcome;
  return fromTemplate('charge', {
    amount: paymentIntent.amount,
    amount_captured: failed ? 0 : paymentIntent.amount,
    application: paymentIntent.application,
    application_fee: !failed && fee ? newId('fee_') : null,
    application_fee_amount: fee,
    on_behalf_of: paymentIntent.on_behalf_of,
    transfer_data: transfer ? { amount: transfer.amount === undefined ? null : transfer.amount, destination: transfer.destination } : null,
    transfer_group: transfer && !failed ? `group_${paymentIntent.id}` : null,
    balance_transaction: failed ? null : newId('txn_'),
    billing_details: { address: NULL_ADDRESS, email, name: null, phone: null, tax_id: null },
    captured: !failed,
    created: nowSeconds(),
    currency: paymentIntent.currency,
    customer: paymentIntent.customer,
    failure_code: failed ? 'card_declined' : null,
    failure_message: failed ? 'Your card was declined.' : null,
    id,
    metadata: paymentIntent.metadata,
    outcome,
    paid: !failed,
    payment_intent: paymentIntent.id,
    payment_method: newId('pm_'),
    payment_method_details: {
      card: {
        ...template.payment_method_details.card,
        amount_authorized: failed ? null : paymentIntent.amount,
        installments: null,
        overcapture: { maximum_amount_capturable: paymentIntent.amount, status: 'unavailable' },
        three_d_secure: null,
        wallet: null,
      },
      type: 'card',
    },
    receipt_url: failed ? null : `https://pay.stripe.com/receipts/fake/${id}`,
    refunds: { data: [], has_more: false, object: 'list', url: `/v1/charges/${id}/refunds` },
    status: failed ? 'failed' : 'succeeded',
  });
}

function buildSetupIntent({ customer }) {
  const id = newId('seti_');
  return fromTemplate('setup_intent', {
    client_secret: `${id}_secret_${randomAlnum(25)}`,
    created: nowSeconds(),
    customer,
    id,
    payment_method: newId('pm_'),
    status: 'succeeded',
  });
}

function buildMeterEvent({ eventName, identifier, payload, timestamp }) {
  return fromTemplate('billing.meter_event', {
    created: nowSeconds(),
    event_name: eventName,
    identifier,
    payload,
    timestamp,
  });
}

// Stripe embeds at most this many items in a subscription; the rest are
// listed by GET /v1/subscription_items?subscription=<id>.
const EMBEDDED_ITEMS = 10;

// An embedded item list cut to its first EMBEDDED_ITEMS entries.
function embeddedItems(items) {
  if (!items || !Array.isArray(items.data) || items.data.length <= EMBEDDED_ITEMS) return items;
  return { ...items, data: items.data.slice(0, EMBEDDED_ITEMS), has_more: true, total_count: items.data.length };
}

// What the API shows of a stored object: a subscription with its embedded
// items cut to 10 (the store keeps all). Other objects are shown as stored.
// Returns the object itself when nothing is cut, so it costs nothing then.
function apiView(object) {
  if (!object || object.object !== 'subscription') return object;
  const items = embeddedItems(object.items);
  return items === object.items ? object : { ...object, items };
}

// previous_attributes of a subscription show the old items as embedded too.
function previousView(object, previous) {
  if (!previous || object.object !== 'subscription' || !previous.items) return previous;
  return { ...previous, items: embeddedItems(previous.items) };
}

function buildEvent({ type, object, previousAttributes, request, created = nowSeconds() }) {
  const data = { object: structuredClone(apiView(object)) };
  if (previousAttributes) data.previous_attributes = structuredClone(previousView(object, previousAttributes));
  return {
    id: newId('evt_'),
    object: 'event',
    api_version: API_VERSION,
    created,
    data,
    livemode: false,
    pending_webhooks: 0,
    request: request || { id: null, idempotency_key: null },
    type,
  };
}

module.exports = {
  API_VERSION,
  buildSubscriptionSchedule,
  buildSchedulePhase,
  PLATFORM_APPLICATION,
  ACCOUNT_TYPES,
  buildAccount,
  buildApplication,
  fromTemplate,
  hasTemplate,
  buildCustomer,
  buildPrice,
  buildProduct,
  planFromPrice,
  buildSubscriptionItem,
  buildSubscription,
  itemList,
  apiView,
  describeLine,
  itemCharges,
  buildInvoice,
  buildPreviewInvoice,
  buildInvoiceItem,
  buildCheckoutSession,
  buildPortalSession,
  buildPaymentIntent,
  buildCharge,
  buildSetupIntent,
  buildMeterEvent,
  buildEvent,
  transferDataView,
};
