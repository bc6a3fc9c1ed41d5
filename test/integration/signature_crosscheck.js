// Makes signature cases with the official stripe SDK and records the SDK's
// own verdict, for test/integration/signature_crosscheck.sh to compare with the
// extension's.  Prints a JSON array; argv[2] = number of cases per kind.
'use strict';
const crypto = require('crypto');
const Stripe = require('stripe');

const stripe = Stripe('sk_test_unused');
const perKind = Number(process.argv[2] || 100);
const TOLERANCE = 300;

// Random JSON-ish payloads: ASCII, accents, emoji, escapes, newlines.
const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 "\\\n\téüß€😀{}[],:';
function randomPayload() {
  const len = 1 + crypto.randomInt(2000);
  let s = '';
  const chars = [...alphabet];
  for (let i = 0; i < len; i++) s += chars[crypto.randomInt(chars.length)];
  return JSON.stringify({ id: 'evt_' + crypto.randomBytes(8).toString('hex'), object: 'event', body: s });
}
const randomSecret = () => 'whsec_' + crypto.randomBytes(24).toString('base64').replace(/[+/=]/g, 'x');
const sign = (payload, secret, timestamp) =>
  stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp });

function sdkVerdict(payload, header, secret, nowSeconds) {
  try {
    return stripe.webhooks.signature.verifyHeader(payload, header, secret, TOLERANCE, undefined, nowSeconds * 1000);
  } catch (e) {
    if (e.type !== 'StripeSignatureVerificationError') throw e;
    return false;
  }
}

// Each kind makes one case from a fresh payload, secret and time.
const kinds = {
  valid: (p, s, now) => ({ payload: p, header: sign(p, s, now - crypto.randomInt(TOLERANCE)), secret: s }),
  future: (p, s, now) => ({ payload: p, header: sign(p, s, now + 1 + crypto.randomInt(86400)), secret: s }),
  expired: (p, s, now) => ({ payload: p, header: sign(p, s, now - TOLERANCE - 1 - crypto.randomInt(86400)), secret: s }),
  boundary: (p, s, now) => ({ payload: p, header: sign(p, s, now - TOLERANCE - crypto.randomInt(2)), secret: s }),
  tampered: (p, s, now) => {
    const header = sign(p, s, now);
    const chars = [...p];  // code points: never split a surrogate pair
    const at = crypto.randomInt(chars.length);
    chars[at] = chars[at] === 'x' ? 'y' : 'x';
    return { payload: chars.join(''), header, secret: s };
  },
  wrong_secret: (p, s, now) => ({ payload: p, header: sign(p, randomSecret(), now), secret: s }),
  rotation: (p, s, now) => {
    const other = sign(p, randomSecret(), now).split(',')[1];
    return { payload: p, header: sign(p, s, now) + ',' + other, secret: s };
  },
};

const now = Math.floor(Date.now() / 1000);
const cases = [];
for (const [kind, make] of Object.entries(kinds)) {
  for (let i = 0; i < perKind; i++) {
    const c = make(randomPayload(), randomSecret(), now);
    cases.push({ kind, ...c, now, sdk: sdkVerdict(c.payload, c.header, c.secret, now) });
  }
}
process.stdout.write(JSON.stringify(cases));
