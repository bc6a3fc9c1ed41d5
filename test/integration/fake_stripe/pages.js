'use strict';
// The hosted pages behind session urls, so a demo can click through:
// /pay/<checkout session id> shows the session and a Pay button that
// completes it (as POST /_fake/checkout/sessions/:id/complete does) and
// redirects to success_url; /portal/<portal session id> links back.

const { Router } = require('./router');
const { StripeError, noSuch } = require('./errors');
const { sendHtml, sendText } = require('./http_io');
const { completeCheckout } = require('./billing');

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>` +
    `<body style="font-family:sans-serif;max-width:32em;margin:3em auto">${body}</body></html>`;
}

function amountText(session) {
  if (session.amount_total === null) return 'nothing due now';
  return `${(session.amount_total / 100).toFixed(2)} ${String(session.currency).toUpperCase()}`;
}

// The session (of any account: session ids are unique across accounts) and
// its account's state.
function findSession(store, id) {
  const found = store.locate(id, 'checkout.session');
  if (!found) throw noSuch('checkout.session', id);
  return found;
}

function showCheckout({ store, path }) {
  const { object: session } = findSession(store, path.id);
  const action = session.status === 'open'
    ? `<form method="post"><button type="submit">Pay ${escapeHtml(amountText(session))}</button></form>`
    : `<p>This session is ${escapeHtml(session.status)}.</p>`;
  return page('Fake Stripe Checkout', `<h1>Fake Stripe Checkout</h1>` +
    `<p>Session <code>${escapeHtml(session.id)}</code>, mode ${escapeHtml(session.mode)}.</p>${action}`);
}

// Completes the session; returns the url to redirect to, if any.
function payCheckout({ store, path }) {
  const { state, object } = findSession(store, path.id);
  const { session } = completeCheckout(state, object);
  if (session.success_url) return { redirect: session.success_url.replace('{CHECKOUT_SESSION_ID}', session.id) };
  return page('Payment complete', '<h1>Payment complete</h1>');
}

function showPortal({ store, path }) {
  const found = store.locate(path.id, 'billing_portal.session');
  if (!found) throw noSuch('billing_portal.session', path.id);
  const session = found.object;
  const back = session.return_url ? `<p><a href="${escapeHtml(session.return_url)}">Return</a></p>` : '';
  return page('Fake Stripe billing portal', `<h1>Fake Stripe billing portal</h1>` +
    `<p>Customer <code>${escapeHtml(session.customer)}</code>.</p>${back}`);
}

const router = new Router()
  .add('GET', '/pay/:id', showCheckout)
  .add('POST', '/pay/:id', payCheckout)
  .add('GET', '/portal/:id', showPortal);

function createPages({ store }) {
  return function handlePage(req, res, url) {
    const route = router.match(req.method, url.pathname);
    if (!route) return sendHtml(res, 404, page('Not found', '<h1>Not found</h1>'));
    try {
      const result = route.handler({ store, path: route.params });
      if (typeof result === 'string') return sendHtml(res, 200, result);
      return sendText(res, 303, 'text/plain', `See ${result.redirect}`, { Location: result.redirect });
    } catch (err) {
      if (!(err instanceof StripeError)) throw err;
      return sendHtml(res, err.status, page('Error', `<p>${escapeHtml(err.message)}</p>`));
    }
  };
}

module.exports = { createPages };
