// Makes thin event notifications (event destinations) with the official
// stripe SDK and records its own verdict, parseEventNotification's, for
// test/integration/signature_crosscheck.sh to compare with
// stripe_handle_webhook's: accepted or refused, and for the accepted ones
// what the SDK read (id, type, context, related object).  Cases: valid,
// with the diagnostics items Stripe may add (secret= masked, destination=,
// payload= the last 8 hex digits of the body's SHA-256) and unknown ones,
// signed in the future, too old, tampered (with and without the items),
// signed with another secret (with and without), without v1, without a
// header.  Prints a JSON array; argv[2] = number of cases per kind.  The
// times are relative to now: the extension judges them at the call.
'use strict';
const crypto = require('crypto');
const Stripe = require('stripe');

const stripe = Stripe('sk_test_unused');
const perKind = Number(process.argv[2] || 20);
const TOLERANCE = 300;

const TYPES = [
  ['v1.customer.subscription.updated', 'subscription', '/v1/subscriptions/'],
  ['v1.customer.subscription.item_price_changed', 'subscription', '/v1/subscriptions/'],
  ['v1.invoice.paid', 'invoice', '/v1/invoices/'],
  ['v1.checkout.session.completed', 'checkout.session', '/v1/checkout/sessions/'],
  ['v1.billing.meter.error_report_triggered', 'billing.meter', '/v1/billing/meters/'],
  ['v1.billing.meter.no_meter_found', null, null],
  ['v1.entitlements.active_entitlement_summary.updated', null, null],
  ['v2.core.account.updated', 'v2.core.account', '/v2/core/accounts/'],
  ['v2.core.account[requirements].updated', 'v2.core.account', '/v2/core/accounts/'],
  ['v2.core.event_destination.ping', 'v2.core.event_destination', '/v2/core/event_destinations/'],
  ['v1.payment_method.attached', 'payment_method', '/v1/payment_methods/'],
];

const pick = (list) => list[crypto.randomInt(list.length)];
const alnum = (n) => crypto.randomBytes(n).toString('base64').replace(/[^A-Za-z0-9]/g, '').slice(0, n) || 'x';

// A notification as a destination sends it (the key order of Stripe's, and
// its pretty-printing half of the time).
function randomNotification() {
  const [type, relatedType, path] = pick(TYPES);
  const note = {
    id: `evt_test_65${alnum(30)}`,
    object: 'v2.core.event',
    type,
    livemode: false,
    created: new Date(Date.now() - crypto.randomInt(86400000)).toISOString(),
  };
  if (crypto.randomInt(3) === 0) note.context = `acct_1${alnum(15)}`;
  if (relatedType) {
    const id = `${relatedType.replace(/\W/g, '_').slice(0, 6)}_${alnum(14)}`;
    note.related_object = { id, type: relatedType, url: path + id };
  }
  return crypto.randomInt(2) ? JSON.stringify(note, null, 2) : JSON.stringify(note);
}
const randomSecret = () => 'whsec_' + crypto.randomBytes(24).toString('base64').replace(/[+/=]/g, 'x');
const sign = (payload, secret, timestamp) =>
  stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp });
// Stripe's diagnostics items, for the secret it signed with and the body it sent.
const items = (sentBody, signingSecret) => `,secret=whsec_****${signingSecret.slice(-4)}`
  + `,destination=ed_test_${alnum(12)},payload=${crypto.createHash('sha256').update(sentBody).digest('hex').slice(-8)}`;

function tamper(p) {
  const chars = [...p];
  const at = chars.findIndex((c) => c === 'e');   // (inside a value or a key: still JSON)
  chars[at >= 0 ? at : 0] = 'E';
  return chars.join('');
}

// Each kind makes one case; `diagnosis` is what the extension's error must say went wrong.
const kinds = {
  valid: (p, s, now) => ({ payload: p, header: sign(p, s, now - crypto.randomInt(TOLERANCE)), secret: s }),
  valid_items: (p, s, now) => ({ payload: p, header: sign(p, s, now) + items(p, s) + ',foo=bar,v0=00', secret: s }),
  future: (p, s, now) => ({ payload: p, header: sign(p, s, now + 1 + crypto.randomInt(86400)), secret: s }),
  expired: (p, s, now) => ({ payload: p, header: sign(p, s, now - TOLERANCE - 1 - crypto.randomInt(86400)), secret: s }),
  tampered: (p, s, now) => ({ payload: tamper(p), header: sign(p, s, now), secret: s }),
  tampered_items: (p, s, now) => ({ payload: tamper(p), header: sign(p, s, now) + items(p, s), secret: s, diagnosis: 'body' }),
  wrong_secret: (p, s, now) => ({ payload: p, header: sign(p, randomSecret(), now), secret: s }),
  wrong_secret_items: (p, s, now) => {
    const other = randomSecret();
    return { payload: p, header: sign(p, other, now) + items(p, other), secret: s, diagnosis: 'secret' };
  },
  rotation: (p, s, now) => ({ payload: p, header: sign(p, s, now) + ',' + sign(p, randomSecret(), now).split(',')[1], secret: s }),
  no_v1: (p, s, now) => ({ payload: p, header: sign(p, s, now).replace('v1=', 'v0='), secret: s }),
  no_header: (p, s) => ({ payload: p, header: '', secret: s }),
};

function sdkVerdict(payload, header, secret, nowSeconds) {
  try {
    const n = stripe.parseEventNotification(payload, header, secret, TOLERANCE, undefined, nowSeconds * 1000);
    return {
      sdk: true,
      sdk_id: n.id,
      sdk_type: n.type,
      sdk_context: n.context ? n.context.toString() : null,
      sdk_related_url: n.related_object ? n.related_object.url : null,
    };
  } catch (e) {
    if (e.type !== 'StripeSignatureVerificationError') throw e;
    return { sdk: false, sdk_error: e.message.split('\n')[0] };
  }
}

const now = Math.floor(Date.now() / 1000);
const cases = [];
for (const [kind, make] of Object.entries(kinds)) {
  for (let i = 0; i < perKind; i++) {
    const c = make(randomNotification(), randomSecret(), now);
    cases.push({ kind, diagnosis: null, ...c, ...sdkVerdict(c.payload, c.header, c.secret, now) });
  }
}
process.stdout.write(JSON.stringify(cases));
