'use strict';
// Stripe Connect: the platform and its connected accounts.
//
//  - `Stripe-Account: acct_...` routes a /v1 (or /v2) request to that
//    account's state (state.js AccountState): its objects, events,
//    idempotency keys and meter events. A value that names no account the
//    platform can reach (malformed, unknown, or deauthorized) answers 403
//    account_invalid, as Stripe does.
//  - GET /v1/accounts lists the connected accounts (not the deauthorized
//    ones), GET /v1/accounts/:id retrieves one, GET /v1/account the account
//    the request acts on.
//  - The control API seeds accounts (POST /_fake/accounts) and plays their
//    part: account.updated, account.application.deauthorized / authorized.
//  - Checkout's Connect parameters (checkoutConnect): direct charges (on a
//    connected account, with an application fee) and destination charges
//    (on the platform, with transfer_data and on_behalf_of).

const {
  StripeError, BadRequest, maskKey, noSuch, missingParam, invalidParam, intParam,
} = require('./errors');
const { parseListParams, pageNewestFirst, checkCursors, createdMatcher, allOf, listBody } = require('./list');
const {
  ACCOUNT_TYPES, PLATFORM_APPLICATION, buildAccount, buildApplication, buildEvent,
} = require('./templates');
const { nowSeconds, previousAttributes, seededId, seededRandom } = require('./util');

// What Stripe's account ids look like; anything else names no account.
const ACCOUNT_ID = /^acct_[A-Za-z0-9]{1,64}$/;

// Stripe's answer to a Stripe-Account the key cannot act for (or a
// retrieve of such an account): 403, invalid_request_error, account_invalid.
function accountInvalid(presentedKey, account) {
  const key = presentedKey ? maskKey(presentedKey) : '';
  return new StripeError(403, {
    code: 'account_invalid',
    message: `The provided key '${key}' does not have access to account '${account}' (or that account does not exist). `
      + 'Application access may have been revoked.',
  });
}

// The AccountState a request acts on: the platform's without a
// Stripe-Account (or with the platform's own id), else the connected
// account's, which must be authorized. Throws accountInvalid otherwise.
function requestState(store, account, presentedKey) {
  if (account === undefined || account === null) return store.platform;
  const state = ACCOUNT_ID.test(account) ? store.state(account) : undefined;
  if (!state || (state.connected && !state.authorized)) throw accountInvalid(presentedKey, account);
  return state;
}

// ---- /v1 handlers (ctx.server is the Store, ctx.store the account's state) ----

// GET /v1/accounts: the platform's connected accounts, newest first; a
// connected account is no platform, so its list is empty.
function listAccounts({ server, store, params }) {
  const list = parseListParams(params);
  const listed = (id) => {
    const state = server.connected.get(id);
    return Boolean(state && state.authorized);
  };
  checkCursors(list, listed, 'account');
  if (store.connected) return listBody('/v1/accounts', { data: [], has_more: false });
  const inRange = createdMatcher(params.created);
  const page = pageNewestFirst(server.accountList, list, (id) => server.accountPositions.get(id),
    allOf([(state) => state.authorized, (state) => inRange(state.account)]));
  return listBody('/v1/accounts', { ...page, data: page.data.map((state) => state.account) });
}

// GET /v1/accounts/:id: an account the request may see (the platform sees
// itself and its connected accounts; a connected account only itself).
// Anything else is 403 account_invalid, not 404.
function getAccount({ server, store, path, presentedKey }) {
  const target = ACCOUNT_ID.test(path.id) ? server.state(path.id) : undefined;
  const visible = target && (target.connected ? target.authorized : true)
    && (!store.connected || target === store);
  if (!visible) throw accountInvalid(presentedKey, path.id);
  return target.account;
}

// GET /v1/account: the account the request acts on.
function getOwnAccount({ store }) {
  return store.account;
}

// ---- seeding (POST /_fake/accounts) ----

const FLAGS = ['charges_enabled', 'payouts_enabled', 'details_submitted'];

function checkFields(fields, where) {
  if (!fields || typeof fields !== 'object' || Array.isArray(fields)) throw new BadRequest(`${where} must be an object`);
  if (fields.id !== undefined && (typeof fields.id !== 'string' || !ACCOUNT_ID.test(fields.id))) {
    throw new BadRequest(`${where}.id must look like acct_ followed by letters and digits`);
  }
  if (fields.type !== undefined && !ACCOUNT_TYPES.includes(fields.type)) {
    throw new BadRequest(`${where}.type must be one of ${ACCOUNT_TYPES.join(', ')}`);
  }
  for (const flag of FLAGS) {
    if (fields[flag] !== undefined && typeof fields[flag] !== 'boolean') throw new BadRequest(`${where}.${flag} must be a boolean`);
  }
  if (fields.name !== undefined && fields.name !== null && typeof fields.name !== 'string') {
    throw new BadRequest(`${where}.name must be a string or null`);
  }
  if (fields.currently_due !== undefined
    && (!Array.isArray(fields.currently_due) || !fields.currently_due.every((f) => typeof f === 'string'))) {
    throw new BadRequest(`${where}.currently_due must be an array of strings`);
  }
  for (const key of ['object', 'catalogue', 'count', 'accounts', 'seed', 'authorized_event']) {
    if (fields[key] !== undefined) throw new BadRequest(`${where}.${key} cannot be set on an account`);
  }
  return fields;
}

const DEFAULT_FIELDS = ['type', 'country', 'default_currency', ...FLAGS, 'currently_due'];

function nonNegativeInt(value, name, fallback, max = Infinity) {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 0 || value > max) throw new BadRequest(`${name} must be an integer from 0 to ${max}`);
  return value;
}

// Stripe's "connected" event: the account authorized the platform's application.
function emitApplicationEvent(state, type, created = nowSeconds()) {
  return state.appendEvent(buildEvent({ type, object: buildApplication(), created }));
}

// {"count": N} and/or {"accounts": [{fields}, ...]}, with shared defaults
// (type, country, default_currency, the flags, currently_due), `seed`,
// `created` (the first account's; one second apart) and `catalogue` (each
// account starts with the platform's default products and prices, same
// ids). Checked whole before any account is added. No event unless
// "authorized_event": true (then account.application.authorized in each).
function seedAccounts(store, body) {
  const count = nonNegativeInt(body.count, 'count', 0, 100000);
  const given = body.accounts === undefined ? [] : body.accounts;
  if (!Array.isArray(given)) throw new BadRequest('"accounts" must be an array of account fields');
  if (count + given.length === 0) throw new BadRequest('give "count" and/or "accounts"');
  if (body.catalogue !== undefined && typeof body.catalogue !== 'boolean') throw new BadRequest('"catalogue" must be a boolean');
  if (body.authorized_event !== undefined && typeof body.authorized_event !== 'boolean') {
    throw new BadRequest('"authorized_event" must be a boolean');
  }
  const seed = nonNegativeInt(body.seed, 'seed', 1);
  const total = given.length + count;
  const start = nonNegativeInt(body.created, 'created', nowSeconds() - total);
  const defaults = {};
  for (const key of DEFAULT_FIELDS) if (body[key] !== undefined) defaults[key] = body[key];
  checkFields(defaults, 'defaults');

  // Drawn ids follow the seed and the position of the first new account,
  // so a fresh fake given the same calls makes the same accounts.
  const first = store.accountList.length + 1;
  const random = seededRandom((Math.imul(seed, 0x9E3779B1) + first) >>> 0);
  const specs = [...given.map((fields, i) => checkFields(fields, `accounts[${i}]`)), ...Array(count).fill({})];
  const ids = new Set();
  const accounts = specs.map((fields, i) => {
    const serial = first + i;
    const id = fields.id || seededId('acct_1', random, 15);
    if (ids.has(id) || store.state(id)) throw new BadRequest(`account ${id} exists already`);
    ids.add(id);
    return buildAccount({
      name: `Account ${serial}`,
      email: `owner${serial}@example.com`,
      created: start + i,
      ...defaults,
      ...fields,
      id,
    });
  });
  const catalogue = body.catalogue !== false;
  for (const account of accounts) {
    const state = store.addAccount(account, { catalogue });
    if (body.authorized_event) emitApplicationEvent(state, 'account.application.authorized', account.created);
  }
  return { created: accounts.length, ids: accounts.map((account) => account.id) };
}

// ---- account events (control API) ----

// The connected account `id` (authorized or not), for the control API.
function connectedState(store, id) {
  const state = store.connected.get(id);
  if (!state) throw new StripeError(404, { code: 'resource_missing', param: 'id', message: `No such account: '${id}'` });
  return state;
}

function mergeOneLevel(current, patch, name) {
  if (!patch || typeof patch !== 'object' || Array.isArray(patch)) throw new BadRequest(`${name} must be an object`);
  return { ...current, ...patch };
}

// Applies `fields` to a stored account and returns the event
// account.updated (with previous_attributes), or null when nothing changed.
// Shorthands: name (business_profile.name and the dashboard's display
// name), currently_due (requirements.currently_due and eventually_due);
// charges_enabled / payouts_enabled also set the capabilities.
// business_profile, requirements, settings, metadata and capabilities are
// merged one level deep; other fields replace the stored ones.
function updateAccount(state, fields, { created } = {}) {
  checkFields(fields, 'fields');
  if (fields.id !== undefined && fields.id !== state.id) throw new BadRequest('an account keeps its id');
  const account = state.account;
  const next = structuredClone(account);
  for (const [key, value] of Object.entries(fields)) {
    if (key === 'name') {
      next.business_profile = { ...next.business_profile, name: value };
      next.settings = { ...next.settings, dashboard: { ...next.settings.dashboard, display_name: value } };
    } else if (key === 'currently_due') {
      next.requirements = { ...next.requirements, currently_due: value, eventually_due: value };
    } else if (['business_profile', 'requirements', 'settings', 'metadata', 'capabilities'].includes(key)) {
      next[key] = mergeOneLevel(next[key], value, `fields.${key}`);
    } else if (key === 'type') {
      next.type = value;
      next.controller = buildAccount({ id: state.id, type: value }).controller;
    } else {
      next[key] = value;
    }
    if (key === 'charges_enabled') next.capabilities = { ...next.capabilities, card_payments: value ? 'active' : 'inactive' };
    if (key === 'payouts_enabled') next.capabilities = { ...next.capabilities, transfers: value ? 'active' : 'inactive' };
  }
  const previous = previousAttributes(account, next);
  if (Object.keys(previous).length === 0) return { account, event: null };
  // The stored object is updated in place: every holder (the list) sees it.
  for (const key of Object.keys(account)) delete account[key];
  Object.assign(account, next);
  const event = state.appendEvent(buildEvent({ type: 'account.updated', object: account, previousAttributes: previous, created }));
  return { account, event };
}

// The account revokes the platform's access: account.application.deauthorized
// (data.object the platform's application) on its event list; from then on
// its Stripe-Account answers 403 account_invalid and GET /v1/accounts leaves
// it out, until it authorizes again.
function deauthorizeAccount(state) {
  if (!state.authorized) throw new BadRequest(`account ${state.id} is deauthorized already`);
  state.authorized = false;
  return emitApplicationEvent(state, 'account.application.deauthorized');
}

function authorizeAccount(state) {
  if (state.authorized) throw new BadRequest(`account ${state.id} is authorized already`);
  state.authorized = true;
  return emitApplicationEvent(state, 'account.application.authorized');
}

// ---- Checkout's Connect parameters ----

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// A connected account of the platform's (authorized) named in a parameter.
// `what` names it in the error: "destination" for transfer_data, "account"
// for on_behalf_of.
function connectedAccountParam(server, id, param, what) {
  if (typeof id !== 'string') throw invalidParam(param, 'Invalid string');
  const state = server.connected.get(id);
  if (!state || !state.authorized) {
    throw new StripeError(400, { code: 'resource_missing', param, message: `No such ${what}: '${id}'` });
  }
  return id;
}

// A percentage as Stripe takes application_fee_percent and
// transfer_data[amount_percent]: a non-negative decimal from 0 to 100 with
// at most two decimal places. Returned as a number, as objects show it.
function percentParam(value, param) {
  const text = String(value);
  if (!/^\d+(\.\d{1,2})?$/.test(text) || Number(text) > 100) {
    throw invalidParam(param, `Invalid decimal: ${text}; must be a number from 0 to 100 with at most two decimal places`);
  }
  return Number(text);
}

function transferData(server, data, param, amountKey) {
  if (data === undefined) return null;
  if (!isPlainObject(data)) throw invalidParam(param, 'Invalid object');
  if (data.destination === undefined) throw missingParam(`${param}[destination]`);
  const destination = connectedAccountParam(server, data.destination, `${param}[destination]`, 'destination');
  const amount = data[amountKey] === undefined ? null
    : amountKey === 'amount' ? intParam(data.amount, `${param}[amount]`, { min: 0 })
      : percentParam(data[amountKey], `${param}[${amountKey}]`);
  return { [amountKey]: amount, destination };
}

// What a Checkout session's payment_intent_data / subscription_data ask of
// Connect, checked (the parameter tables already refused unknown names):
//   payment mode: application_fee_amount (a direct charge, on a connected
//     account, or a destination charge, with transfer_data[destination]),
//     transfer_data[destination|amount], on_behalf_of;
//   subscription mode: application_fee_percent (on a connected account
//     only), transfer_data[destination|amount_percent], on_behalf_of.
// Returns {application, applicationFeeAmount, applicationFeePercent,
// transferData, onBehalfOf} for completeCheckout to put on the payment
// intent and charge, or the subscription and its invoices.
function checkoutConnect({ server, account }, mode, paymentIntentData, subscriptionData) {
  const data = mode === 'payment' ? paymentIntentData : mode === 'subscription' ? subscriptionData : {};
  const prefix = mode === 'payment' ? 'payment_intent_data' : 'subscription_data';
  const amountKey = mode === 'payment' ? 'amount' : 'amount_percent';
  const transfer = transferData(server, data.transfer_data, `${prefix}[transfer_data]`, amountKey);
  const onBehalfOf = data.on_behalf_of === undefined ? null
    : connectedAccountParam(server, data.on_behalf_of, `${prefix}[on_behalf_of]`, 'account');
  let applicationFeeAmount = null;
  let applicationFeePercent = null;
  if (data.application_fee_amount !== undefined) {
    const param = `${prefix}[application_fee_amount]`;
    applicationFeeAmount = intParam(data.application_fee_amount, param, { min: 0 });
    // Stripe's words for a PaymentIntent that is neither.
    if (!account && !transfer) {
      throw new StripeError(400, {
        code: 'parameter_missing',
        param,
        message: 'Can only apply an application_fee_amount when the PaymentIntent is attempting a direct payment '
          + '(using an OAuth key or Stripe-Account header) or destination payment (using `transfer_data[destination]`).',
      });
    }
  }
  if (data.application_fee_percent !== undefined) {
    const param = `${prefix}[application_fee_percent]`;
    applicationFeePercent = percentParam(data.application_fee_percent, param);
    if (!account) {
      throw new StripeError(400, {
        param,
        message: 'To use an application fee percent, the request must be made on behalf of another account, '
          + 'using the `Stripe-Account` header or an OAuth key.',
      });
    }
  }
  return {
    application: account ? PLATFORM_APPLICATION.id : null,
    applicationFeeAmount,
    applicationFeePercent,
    transferData: transfer,
    onBehalfOf,
  };
}

// For the control API's "account" selector: the platform (absent, null or
// "platform") or a connected account (authorized or not).
function selectState(store, account) {
  if (account === undefined || account === null || account === 'platform' || account === store.platform.id) {
    return store.platform;
  }
  const state = typeof account === 'string' ? store.connected.get(account) : undefined;
  if (!state) throw new BadRequest(`no account ${JSON.stringify(account)}`);
  return state;
}

// For the generators' "accounts" selector: N (the first N connected
// accounts, in list order) or an array of account ids.
function selectStates(store, accounts) {
  if (Number.isInteger(accounts)) {
    if (accounts < 1 || accounts > store.accountList.length) {
      throw new BadRequest(`"accounts" must be from 1 to the ${store.accountList.length} connected accounts`);
    }
    return store.accountList.slice(0, accounts);
  }
  if (!Array.isArray(accounts) || accounts.length === 0) {
    throw new BadRequest('"accounts" must be a number of accounts or a non-empty array of account ids');
  }
  return accounts.map((id) => selectState(store, id));
}

module.exports = {
  ACCOUNT_ID,
  accountInvalid,
  requestState,
  listAccounts,
  getAccount,
  getOwnAccount,
  seedAccounts,
  connectedState,
  updateAccount,
  deauthorizeAccount,
  authorizeAccount,
  selectState,
  selectStates,
  checkoutConnect,
  noSuchAccount: (id, param) => noSuch('account', id, param, 400),
};
