#!/usr/bin/env node
'use strict';
// A small client for the fake Stripe's control API, for test/integration/api_calls.sh
// (plain Node: the test may not assume curl or jq).
//
//   node test/integration/api/fake.js PORT METHOD PATH [BODY_JSON] [EXPR]
//   node test/integration/api/fake.js @FILE EXPR        (EXPR on JSON saved in FILE)
//
// Prints the JSON answer, or EXPR evaluated with `r` bound to it: a string
// is printed as is, an array of strings one per line, anything else as JSON.
// EXPR may use `env` (process.env), `since(records, seq)`, `pairs(record)`
// (its form body as sorted, decoded "key=value" lines).  Exits 1 when the
// answer is not 2xx.
const http = require('http');

const args = process.argv.slice(2);
const fromFile = args[0] && args[0].startsWith('@');
const [port, method, path, body, expr] = fromFile ? [args[0], 'FILE', args[0], '', args[1]] : args;
if (!port || !method || !path) {
  console.error('usage: fake.js PORT METHOD PATH [BODY_JSON] [EXPR]');
  process.exit(2);
}

const decoded = (text) => [...new URLSearchParams(text || '')].map(([k, v]) => `${k}=${v}`).sort();
const helpers = {
  env: process.env,
  since: (records, seq) => records.filter((x) => x.seq > Number(seq)),
  pairs: (record) => decoded(record.raw_body),
};

function show(value) {
  if (typeof value === 'string') return value;
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value.join('\n');
  return JSON.stringify(value);
}

function answer(r) {
  if (!expr) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const fn = new Function('r', ...Object.keys(helpers), `return (${expr});`);
  const out = show(fn(r, ...Object.values(helpers)));
  process.stdout.write(out === '' ? '' : `${out}\n`);
}

if (fromFile) {
  answer(JSON.parse(require('fs').readFileSync(port.slice(1), 'utf8')));
  return;
}

const data = body ? Buffer.from(body) : null;
const req = http.request({
  host: '127.0.0.1',
  port: Number(port),
  method,
  path,
  agent: false,
  headers: data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {},
}, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let r;
    try {
      r = JSON.parse(text);
    } catch (err) {
      console.error(`fake.js: ${method} ${path}: not JSON: ${text.slice(0, 200)}`);
      process.exit(1);
    }
    if (res.statusCode < 200 || res.statusCode > 299) {
      console.error(`fake.js: ${method} ${path}: HTTP ${res.statusCode} ${text.slice(0, 300)}`);
      process.exit(1);
    }
    answer(r);
  });
});
req.on('error', (err) => {
  console.error(`fake.js: ${method} ${path}: ${err.message}`);
  process.exit(1);
});
req.end(data);
