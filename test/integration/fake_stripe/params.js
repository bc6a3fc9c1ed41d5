'use strict';
// Strict parameters: the parameters Stripe documents for each endpoint the
// fake emulates, one table per endpoint, with the page of Stripe's API
// reference it was taken from (paths as in the stripe_docs_markdown mirror,
// docs/...; https://docs.stripe.com/api has the same pages).
//
// Every documented top-level parameter is listed, modeled or not: one the
// fake does not model is accepted and ignored (ANY), anything else is
// refused the way Stripe refuses it, 400 parameter_unknown "Received unknown
// parameter: <name>". The nested objects the fake models list their
// sub-keys too; enums and booleans the fake models are checked here, so a
// handler only sees well-formed values of them. Missing required parameters
// and cross-parameter rules stay with the handlers.

const { StripeError, invalidParam, boolParam, enumParam } = require('./errors');

// ---- spec constructors ----

const ANY = { kind: 'any' };
const BOOL = { kind: 'bool' };
const METADATA = { kind: 'metadata' };
const oneOf = (...values) => ({ kind: 'enum', values });
const object = (keys) => ({ kind: 'object', keys });
const listOf = (keys) => ({ kind: 'list', keys });
const maxLength = (max) => ({ kind: 'string', max });

// Stripe's metadata limits (https://docs.stripe.com/api/metadata).
const METADATA_MAX_KEYS = 50;
const METADATA_KEY_MAX = 40;
const METADATA_VALUE_MAX = 500;

// ---- shared pieces ----

const PRORATION_BEHAVIOR = oneOf('always_invoice', 'create_prorations', 'none');

// Subscription item changes, as POST /v1/subscriptions/:id `items[n]` and
// create_preview `subscription_details[items][n]` take them.
const SUBSCRIPTION_ITEM_CHANGE = listOf({
  billing_thresholds: ANY,
  clear_usage: BOOL,
  deleted: BOOL,
  discounts: ANY,
  id: ANY,
  metadata: METADATA,
  price: ANY,
  price_data: ANY,
  quantity: ANY,
  tax_rates: ANY,
});

const CANCELLATION_DETAILS = object({
  comment: ANY,
  feedback: oneOf('customer_service', 'low_quality', 'missing_features', 'other', 'switched_service', 'too_complex',
    'too_expensive', 'unused'),
});

// The fake knows no meter configuration, so payloads carry Stripe's default
// keys (customer_mapping / value_settings event_payload_key).
const METER_PAYLOAD = object({ stripe_customer_id: ANY, value: ANY });

// ---- one table per endpoint ----

// docs/core_resources/customers/create_a_customer.md
const CUSTOMER_CREATE = {
  address: ANY,
  balance: ANY,
  business_name: ANY,
  cash_balance: ANY,
  description: ANY,
  email: ANY,
  individual_name: ANY,
  invoice_prefix: ANY,
  invoice_settings: ANY,
  metadata: METADATA,
  name: ANY,
  next_invoice_sequence: ANY,
  payment_method: ANY,
  phone: ANY,
  preferred_locales: ANY,
  shipping: ANY,
  source: ANY,
  tax: ANY,
  tax_exempt: oneOf('exempt', 'none', 'reverse'),
  tax_id_data: ANY,
  test_clock: ANY,
};

// docs/core_resources/customers/update_a_customer.md
const CUSTOMER_UPDATE = {
  address: ANY,
  balance: ANY,
  business_name: ANY,
  cash_balance: ANY,
  default_source: ANY,
  description: ANY,
  email: ANY,
  individual_name: ANY,
  invoice_prefix: ANY,
  invoice_settings: ANY,
  metadata: METADATA,
  name: ANY,
  next_invoice_sequence: ANY,
  phone: ANY,
  preferred_locales: ANY,
  shipping: ANY,
  source: ANY,
  tax: ANY,
  tax_exempt: oneOf('exempt', 'none', 'reverse'),
};

// docs/core_resources/customers/delete_a_customer.md (no parameters)
const CUSTOMER_DELETE = {};

// docs/checkout/checkout_sessions/create_a_checkout_session.md
// Connect (modeled in connect.js checkoutConnect): direct charges take
// payment_intent_data[application_fee_amount] or
// subscription_data[application_fee_percent] on a connected account
// (Stripe-Account); destination charges payment_intent_data[transfer_data]
// [destination|amount] or subscription_data[transfer_data]
// [destination|amount_percent], and on_behalf_of in both.
const CHECKOUT_SESSION_CREATE = {
  adaptive_pricing: ANY,
  after_expiration: ANY,
  allow_promotion_codes: BOOL,
  automatic_tax: ANY,
  billing_address_collection: oneOf('auto', 'required'),
  branding_settings: ANY,
  cancel_url: ANY,
  client_reference_id: maxLength(200),
  consent_collection: ANY,
  currency: ANY,
  custom_fields: ANY,
  custom_text: ANY,
  customer: ANY,
  customer_account: ANY,
  customer_creation: oneOf('always', 'if_required'),
  customer_email: ANY,
  customer_update: ANY,
  discounts: listOf({ coupon: ANY, promotion_code: ANY }),
  excluded_payment_method_types: ANY,
  expires_at: ANY,
  invoice_creation: ANY,
  line_items: listOf({
    adjustable_quantity: ANY,
    dynamic_tax_rates: ANY,
    metadata: METADATA,
    price: ANY,
    price_data: ANY,
    quantity: ANY,
    tax_rates: ANY,
  }),
  locale: ANY,
  metadata: METADATA,
  mode: oneOf('payment', 'setup', 'subscription'),
  name_collection: ANY,
  optional_items: ANY,
  origin_context: oneOf('mobile_app', 'web'),
  payment_intent_data: object({
    application_fee_amount: ANY,
    capture_method: oneOf('automatic', 'automatic_async', 'manual'),
    description: ANY,
    metadata: METADATA,
    on_behalf_of: ANY,
    receipt_email: ANY,
    setup_future_usage: oneOf('off_session', 'on_session'),
    shipping: ANY,
    statement_descriptor: ANY,
    statement_descriptor_suffix: ANY,
    transfer_data: object({ amount: ANY, destination: ANY }),
    transfer_group: ANY,
  }),
  payment_method_collection: oneOf('always', 'if_required'),
  payment_method_configuration: ANY,
  payment_method_data: ANY,
  payment_method_options: ANY,
  payment_method_types: ANY,
  permissions: ANY,
  phone_number_collection: ANY,
  redirect_on_completion: oneOf('always', 'if_required', 'never'),
  return_url: ANY,
  saved_payment_method_options: ANY,
  setup_intent_data: ANY,
  shipping_address_collection: ANY,
  shipping_options: ANY,
  submit_type: oneOf('auto', 'book', 'donate', 'pay', 'subscribe'),
  subscription_data: object({
    application_fee_percent: ANY,
    billing_cycle_anchor: ANY,
    billing_mode: ANY,
    default_tax_rates: ANY,
    description: ANY,
    invoice_settings: ANY,
    metadata: METADATA,
    on_behalf_of: ANY,
    proration_behavior: oneOf('create_prorations', 'none'),
    transfer_data: object({ amount_percent: ANY, destination: ANY }),
    trial_end: ANY,
    trial_period_days: ANY,
    trial_settings: ANY,
  }),
  success_url: ANY,
  tax_id_collection: ANY,
  ui_mode: oneOf('custom', 'embedded', 'hosted'),
  wallet_options: ANY,
};

// docs/billing/customer_portal_session/create_a_portal_session.md
const PORTAL_SESSION_CREATE = {
  configuration: ANY,
  customer: ANY,
  customer_account: ANY,
  flow_data: ANY,
  locale: ANY,
  on_behalf_of: ANY,
  return_url: ANY,
};

// docs/billing/subscriptions/update_a_subscription.md
const SUBSCRIPTION_UPDATE = {
  add_invoice_items: ANY,
  application_fee_percent: ANY,
  automatic_tax: ANY,
  billing_cycle_anchor: ANY,
  billing_thresholds: ANY,
  cancel_at: ANY,
  cancel_at_period_end: BOOL,
  cancellation_details: CANCELLATION_DETAILS,
  collection_method: oneOf('charge_automatically', 'send_invoice'),
  days_until_due: ANY,
  default_payment_method: ANY,
  default_source: ANY,
  default_tax_rates: ANY,
  description: ANY,
  discounts: ANY,
  invoice_settings: ANY,
  items: SUBSCRIPTION_ITEM_CHANGE,
  metadata: METADATA,
  off_session: BOOL,
  on_behalf_of: ANY,
  pause_collection: object({
    behavior: oneOf('keep_as_draft', 'mark_uncollectible', 'void'),
    resumes_at: ANY,
  }),
  payment_behavior: oneOf('allow_incomplete', 'default_incomplete', 'error_if_incomplete', 'pending_if_incomplete'),
  payment_settings: ANY,
  pending_invoice_item_interval: ANY,
  proration_behavior: PRORATION_BEHAVIOR,
  proration_date: ANY,
  transfer_data: ANY,
  trial_end: ANY,
  trial_from_plan: BOOL,
  trial_settings: ANY,
};

// A schedule's phases, as create and update take them
// (docs/billing/subscription_schedules/update_a_subscription_schedule.md;
// iterations until 2025-08-27, duration since 2025-07-30).
const SCHEDULE_PHASES = listOf({
  add_invoice_items: ANY,
  application_fee_percent: ANY,
  automatic_tax: ANY,
  billing_cycle_anchor: ANY,
  billing_thresholds: ANY,
  collection_method: ANY,
  currency: ANY,
  default_payment_method: ANY,
  default_tax_rates: ANY,
  description: ANY,
  discounts: ANY,
  duration: object({ interval: ANY, interval_count: ANY }),
  end_date: ANY,
  invoice_settings: ANY,
  items: listOf({
    billing_thresholds: ANY,
    discounts: ANY,
    metadata: METADATA,
    plan: ANY,
    price: ANY,
    price_data: ANY,
    quantity: ANY,
    tax_rates: ANY,
  }),
  iterations: ANY,
  metadata: METADATA,
  on_behalf_of: ANY,
  proration_behavior: PRORATION_BEHAVIOR,
  start_date: ANY,
  transfer_data: ANY,
  trial: BOOL,
  trial_end: ANY,
});

// docs/billing/subscription_schedules/create_a_subscription_schedule.md
const SUBSCRIPTION_SCHEDULE_CREATE = {
  billing_mode: ANY,
  customer: ANY,
  customer_account: ANY,
  default_settings: ANY,
  end_behavior: oneOf('cancel', 'none', 'release', 'renew'),
  from_subscription: ANY,
  metadata: METADATA,
  phases: SCHEDULE_PHASES,
  start_date: ANY,
};

// docs/billing/subscription_schedules/update_a_subscription_schedule.md
const SUBSCRIPTION_SCHEDULE_UPDATE = {
  default_settings: ANY,
  end_behavior: oneOf('cancel', 'none', 'release', 'renew'),
  metadata: METADATA,
  phases: SCHEDULE_PHASES,
  proration_behavior: PRORATION_BEHAVIOR,
};

// docs/billing/subscription_schedules/release_a_subscription_schedule.md
const SUBSCRIPTION_SCHEDULE_RELEASE = {
  preserve_cancel_date: BOOL,
};

// docs/billing/subscription_schedules/cancel_a_subscription_schedule.md
const SUBSCRIPTION_SCHEDULE_CANCEL = {
  invoice_now: BOOL,
  prorate: BOOL,
};

// docs/billing/subscriptions/cancel_a_subscription.md
const SUBSCRIPTION_CANCEL = {
  cancellation_details: CANCELLATION_DETAILS,
  invoice_now: BOOL,
  prorate: BOOL,
};

// docs/billing/meter_events/create_a_billing_meter_event.md
const METER_EVENT_CREATE = {
  event_name: maxLength(100),
  identifier: maxLength(100),
  payload: METER_PAYLOAD,
  timestamp: ANY,
};

// docs/billing/invoices/create_a_preview_invoice.md
const INVOICE_PREVIEW = {
  automatic_tax: ANY,
  currency: ANY,
  customer: ANY,
  customer_account: ANY,
  customer_details: ANY,
  discounts: ANY,
  invoice_items: ANY,
  issuer: ANY,
  on_behalf_of: ANY,
  preview_mode: oneOf('next', 'recurring'),
  schedule: ANY,
  schedule_details: ANY,
  subscription: ANY,
  subscription_details: object({
    billing_cycle_anchor: ANY,
    billing_mode: ANY,
    cancel_at: ANY,
    cancel_at_period_end: BOOL,
    cancel_now: BOOL,
    default_tax_rates: ANY,
    items: SUBSCRIPTION_ITEM_CHANGE,
    proration_behavior: PRORATION_BEHAVIOR,
    proration_date: ANY,
    resume_at: ANY,
    start_date: ANY,
    trial_end: ANY,
  }),
};

// docs/billing/meter_event_streams_v2/create_billing_meter_event_stream_authentication_session.md
// (no parameters)
const METER_EVENT_SESSION_CREATE = {};

// docs/billing/meter_event_streams/create_a_billing_meter_event_with_asynchronous_validation.md
const METER_EVENT_STREAM_CREATE = {
  events: listOf({
    event_name: maxLength(100),
    identifier: maxLength(100),
    payload: METER_PAYLOAD,
    timestamp: ANY,
  }),
};

// ---- checking ----

// Parameter names as Stripe spells them in errors: form style for /v1
// ("line_items[0][price]"), JSON style for /v2 ("events[3].payload.value").
const NAMING = {
  form: (parent, key) => (parent === '' ? String(key) : `${parent}[${key}]`),
  json: (parent, key) => {
    if (parent === '') return String(key);
    return typeof key === 'number' ? `${parent}[${key}]` : `${parent}.${key}`;
  },
};

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function unknownParam(name) {
  return new StripeError(400, {
    code: 'parameter_unknown',
    param: name,
    message: `Received unknown parameter: ${name}`,
  });
}

// Stripe quotes a too-long string cut short.
function tooLong(name, value, max) {
  const shown = value.length > 40 ? `${value.slice(0, 40)}...` : value;
  return invalidParam(name, `Invalid string: ${shown}; must be at most ${max} characters`);
}

// Walks `params` against `keys`, calling visit(spec, value, name) for each
// parameter present; unknown names are refused on the way.
function walkKeys(keys, params, parent, name, visit) {
  for (const [key, value] of Object.entries(params)) {
    const full = name(parent, key);
    if (!Object.hasOwn(keys, key)) throw unknownParam(full);
    walk(keys[key], value, full, name, visit);
  }
}

// Containers of the wrong shape (a string where an object belongs) are left
// to the handler, which knows the message Stripe gives for that parameter.
function walk(spec, value, full, name, visit) {
  if (spec.kind === 'object' && isPlainObject(value)) walkKeys(spec.keys, value, full, name, visit);
  else if (spec.kind === 'list' && Array.isArray(value)) {
    // Array.from visits holes left by sparse indexes too.
    Array.from(value, (entry, n) => (isPlainObject(entry) ? walkKeys(spec.keys, entry, name(full, n), name, visit) : null));
  } else visit(spec, value, full);
}

function checkMetadata(value, full, name) {
  if (value === '') return; // metadata="" clears every key
  if (!isPlainObject(value)) throw invalidParam(full, 'Invalid object');
  const keys = Object.keys(value);
  if (keys.length > METADATA_MAX_KEYS) {
    throw invalidParam(full, `Metadata can have up to ${METADATA_MAX_KEYS} keys, but you've set ${keys.length}.`);
  }
  for (const key of keys) {
    const param = name(full, key);
    if (/[[\]]/.test(key)) throw invalidParam(param, `Invalid key: ${key}. Metadata keys may not contain '[' or ']'.`);
    if (key.length > METADATA_KEY_MAX) {
      throw invalidParam(param, `Invalid key: ${key} must be a string under ${METADATA_KEY_MAX} characters`);
    }
    const entry = value[key];
    if (typeof entry !== 'string') throw invalidParam(param, 'Invalid string');
    if (entry.length > METADATA_VALUE_MAX) {
      throw invalidParam(param, `Invalid val: ${entry} must be a string under ${METADATA_VALUE_MAX} characters`);
    }
  }
}

function checkValue(spec, value, full, name) {
  switch (spec.kind) {
    case 'bool':
      return boolParam(value, full);
    case 'enum':
      return enumParam(value, full, spec.values);
    case 'string':
      if (typeof value === 'string' && value.length > spec.max) throw tooLong(full, value, spec.max);
      return value;
    case 'metadata':
      return checkMetadata(value, full, name);
    default:
      return value;
  }
}

// Unknown names anywhere in the request are reported before bad values,
// as Stripe validates the parameter set before the values.
function checkParams(table, params, style = 'form') {
  const name = NAMING[style];
  // `expand` is global to every /v1 endpoint.
  const keys = style === 'form' ? { ...table, expand: ANY } : table;
  walkKeys(keys, params, '', name, () => {});
  walkKeys(keys, params, '', name, (spec, value, full) => checkValue(spec, value, full, name));
}

// Wraps a handler so it only runs on parameters its table allows.
function strict(table, handler, style = 'form') {
  return function strictHandler(ctx) {
    checkParams(table, ctx.params, style);
    return handler(ctx);
  };
}

module.exports = {
  strict,
  checkParams,
  unknownParam,
  METADATA_MAX_KEYS,
  CUSTOMER_CREATE,
  CUSTOMER_UPDATE,
  CUSTOMER_DELETE,
  CHECKOUT_SESSION_CREATE,
  PORTAL_SESSION_CREATE,
  SUBSCRIPTION_UPDATE,
  SUBSCRIPTION_CANCEL,
  SUBSCRIPTION_SCHEDULE_CREATE,
  SUBSCRIPTION_SCHEDULE_UPDATE,
  SUBSCRIPTION_SCHEDULE_RELEASE,
  SUBSCRIPTION_SCHEDULE_CANCEL,
  METER_EVENT_CREATE,
  INVOICE_PREVIEW,
  METER_EVENT_SESSION_CREATE,
  METER_EVENT_STREAM_CREATE,
};
