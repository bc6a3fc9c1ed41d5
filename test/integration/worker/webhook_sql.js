// For test/integration/worker.sh: fetches from the fake Stripe every event after a given
// id (GET /v1/events pages, ending_before) and prints, oldest first and one
// per line, an SQL statement that hands the event to
// stripe_billing.stripe_handle_webhook, signed with the stripe SDK as
// Stripe would sign its delivery.
//   node webhook_sql.js <api base> <api key> <after event id> <webhook secret>
'use strict';
const Stripe = require('stripe');

const [base, key, afterId, secret] = process.argv.slice(2);
const stripe = Stripe('sk_test_unused');
const literal = (s) => "'" + s.replace(/'/g, "''") + "'";

async function eventsAfter(id) {
  const events = [];
  let cursor = id;
  for (;;) {
    const res = await fetch(`${base}/v1/events?limit=100&ending_before=${encodeURIComponent(cursor)}`,
      { headers: { Authorization: `Bearer ${key}` } });
    if (!res.ok) throw new Error(`GET /v1/events: ${res.status} ${await res.text()}`);
    const page = await res.json();
    if (page.data.length === 0) break;
    events.push(...page.data.reverse()); // a page is newest first
    cursor = events[events.length - 1].id;
    if (!page.has_more) break;
  }
  return events;
}

eventsAfter(afterId).then((events) => {
  for (const event of events) {
    const payload = JSON.stringify(event);
    const header = stripe.webhooks.generateTestHeaderString({ payload, secret });
    process.stdout.write(`SELECT stripe_billing.stripe_handle_webhook(${literal(payload)}, ${literal(header)});\n`);
  }
}).catch((err) => { console.error(err.message); process.exit(1); });
