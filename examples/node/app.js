'use strict';
// An Express + node-postgres app using stripe_billing:
//   POST /stripe/webhook   Stripe's webhooks, verified and applied by the database
//   POST /checkout         a Checkout session for the signed-in user
//   GET  /reports          a page gated by row-level security on the user's plan
// The signed-in user is the X-User header here (stand-in for your session
// middleware). Configure with the usual PG* variables and PORT.
const express = require('express');
const { Pool } = require('pg');

const pool = new Pool({ max: 4 });
const app = express();

// What the caller is told for each SQLSTATE: an answer, never the details
// (Stripe's detail names request ids and parameters). The log keeps them.
function answerFor(code) {
  if (/^SB[SE]/.test(code)) return [400, 'invalid webhook'];             // bad signature or event
  if (code === '22023' || code === '22004') return [400, 'invalid request'];
  if (code === 'SBA01') return [400, 'the payment provider refused the request'];
  if (code === 'SBA02') return [402, 'the card was declined'];
  if (code === 'P0002') return [404, 'no billing account yet'];
  if (code === '55000') return [409, 'not possible for this subscription'];
  if (['SBA04', 'SBA05', 'SBA07', '40001', '40P01', '55P03', '57014'].includes(code)) {
    return [503, 'try again'];                                           // retry, same idempotency key
  }
  return [500, 'server error'];                                          // configuration, bugs
}

function fail(res, where, e) {
  console.error(JSON.stringify({ where, code: e.code, message: e.message, detail: e.detail, hint: e.hint }));
  const [status, message] = answerFor(e.code || '');
  res.status(status).json({ error: message });
}

// The raw body: the signature is over the exact bytes Stripe sent.
app.post('/stripe/webhook', express.raw({ type: '*/*' }), async (req, res) => {
  try {
    const { rows } = await pool.query('SELECT stripe_billing.stripe_handle_webhook($1::bytea, $2) AS outcome',
      [req.body, req.get('stripe-signature') ?? null]);
    res.json({ outcome: rows[0].outcome });
  } catch (e) {
    fail(res, 'webhook', e);
  }
});

app.post('/checkout', express.json(), async (req, res) => {
  const user = req.get('x-user');
  if (!user) return res.status(401).json({ error: 'sign in first' });
  try {
    const { rows } = await pool.query(
      `SELECT url, trial_granted FROM stripe_billing.stripe_create_checkout(
         $1, $2, $3, $4, trial_days => $5, metadata => $6, idempotency_key => $7)`,
      [user, req.body.price, 'https://app.example/welcome', 'https://app.example/pricing',
       req.body.trial_days ?? null, JSON.stringify(req.body.metadata ?? {}), req.get('idempotency-key') ?? null]);
    res.json(rows[0]);
  } catch (e) {
    fail(res, 'checkout', e);
  }
});

// The user is set for this request's transaction only: safe on a pooled
// connection (and behind PgBouncer in transaction mode).
app.get('/reports', async (req, res) => {
  const user = req.get('x-user');
  if (!user) return res.status(401).json({ error: 'sign in first' });
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query("SELECT set_config('app.user_ref', $1, true)", [user]);
    const { rows } = await client.query('SELECT id, title FROM reports ORDER BY id');
    await client.query('COMMIT');
    res.json({ reports: rows });
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    fail(res, 'reports', e);
  } finally {
    client.release();
  }
});

const server = app.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => pool.end()));
