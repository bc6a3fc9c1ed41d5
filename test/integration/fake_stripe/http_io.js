'use strict';
// Reading request bodies and writing JSON/HTML responses.

const MAX_BODY_BYTES = 64 * 1024 * 1024; // generous: control API event batches can be large

class BodyTooLarge extends Error {}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new BodyTooLarge(`request body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Stripe pretty-prints its JSON with two spaces; so do we, so clients parse
// the same whitespace they will meet in production.
function jsonText(body) {
  return JSON.stringify(body, null, 2);
}

function sendText(res, status, contentType, text, headers = {}) {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendJson(res, status, body, headers = {}) {
  sendText(res, status, 'application/json', jsonText(body), headers);
}

function sendHtml(res, status, html) {
  sendText(res, status, 'text/html; charset=utf-8', html);
}

module.exports = { readBody, BodyTooLarge, jsonText, sendText, sendJson, sendHtml };
