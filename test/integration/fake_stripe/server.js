#!/usr/bin/env node
'use strict';
// Loopback fake of the Stripe API for integration tests and demos.
//
//   node test/integration/fake_stripe/server.js --port 0 --key sk_test_fake [--port-file PATH]
//
// Binds 127.0.0.1 only and prints exactly one line, "listening <port>", once
// ready. /v1/... and /v2/... emulate Stripe, /_fake/... is the control API (README.md),
// /pay/... and /portal/... are the hosted pages behind session urls.

const http = require('node:http');
const fs = require('node:fs');
const { Store } = require('./state');
const { FaultInjector } = require('./faults');
const { RateLimiter } = require('./rate_limit');
const { Latency } = require('./latency');
const { createGateway } = require('./gateway');
const { createControl } = require('./control');
const { createPages } = require('./pages');
const { readBody, BodyTooLarge, sendJson } = require('./http_io');

const USAGE = 'usage: server.js --port N --key KEY [--port-file PATH]';

function parseArgs(argv) {
  const args = { port: 0, key: null, portFile: null };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    if (flag === '--port') args.port = Number(value);
    else if (flag === '--key') args.key = value;
    else if (flag === '--port-file') args.portFile = value;
    else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (!args.key) throw new Error(`--key is required\n${USAGE}`);
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new Error(`bad --port\n${USAGE}`);
  return args;
}

// Written atomically so a test polling the file never reads half a number.
function writePortFile(file, port) {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${port}\n`);
  fs.renameSync(tmp, file);
}

function requestUrl(req) {
  // Origin-form targets ("/v1/x") are appended so "//x" cannot become a host.
  return new URL(req.url.startsWith('/') ? `http://127.0.0.1${req.url}` : req.url);
}

function createDispatcher(handlers) {
  return async function dispatch(req, res) {
    const url = requestUrl(req);
    let rawBody;
    try {
      rawBody = await readBody(req);
    } catch (err) {
      if (err instanceof BodyTooLarge) return sendJson(res, 413, { error: { message: err.message } });
      throw err;
    }
    const { pathname } = url;
    if (/^\/v[12](\/|$)/.test(pathname)) return handlers.stripe(req, res, url, rawBody);
    if (pathname.startsWith('/_fake/')) return handlers.control(req, res, url, rawBody);
    if (pathname.startsWith('/pay/') || pathname.startsWith('/portal/')) return handlers.pages(req, res, url);
    return sendJson(res, 404, { error: { message: `Not found: ${req.method} ${pathname}` } });
  };
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }

  const store = new Store();
  const faults = new FaultInjector();
  const limiter = new RateLimiter();
  const latency = new Latency();
  let baseUrl = null; // known once listening
  const dispatch = createDispatcher({
    stripe: createGateway({ store, faults, limiter, latency, apiKey: args.key, baseUrl: () => baseUrl }),
    control: createControl({ store, faults, limiter, latency }),
    pages: createPages({ store }),
  });

  const server = http.createServer((req, res) => {
    dispatch(req, res).catch((err) => {
      console.error('fake_stripe: unexpected error', err);
      if (!res.headersSent) sendJson(res, 500, { error: { type: 'api_error', message: err.message } });
      else res.destroy();
    });
  });
  // Clients are expected to reuse connections; keep idle ones around like
  // Stripe's edge does rather than Node's 5 s default.
  server.keepAliveTimeout = 60_000;
  server.headersTimeout = 65_000;

  // Every socket is tracked so shutdown can drop idle and hung ones at once.
  const sockets = new Set();
  let connectionSeq = 0;
  server.on('connection', (socket) => {
    connectionSeq += 1;
    socket.fakeConnectionId = connectionSeq;
    store.connectionsOpened += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  server.listen(args.port, '127.0.0.1', () => {
    const { port } = server.address();
    baseUrl = `http://127.0.0.1:${port}`;
    if (args.portFile) writePortFile(args.portFile, port);
    process.stdout.write(`listening ${port}\n`);
  });

  const stop = () => {
    server.close();
    for (const socket of sockets) socket.destroy();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
