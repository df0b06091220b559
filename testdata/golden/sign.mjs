// sign.mjs -- generates golden fal.ai webhook test vectors with an
// implementation independent of the Go code under test: Node's node:crypto
// Ed25519 (RFC 8032, pure Ed25519).
//
// Regenerate from the repository root with:
//
//	node testdata/golden/sign.mjs
//
// It writes testdata/golden/vectors.json (next to this script). CI does NOT
// run this script; vectors.json is committed and the Go tests read it. The
// output is deterministic (fixed seeds, fixed inputs, and Ed25519 signatures
// are deterministic), so re-running it must leave vectors.json unchanged.
//
// Only node:crypto, node:fs and node:path are used; no npm packages.
//
// Signed message (UTF-8, no trailing newline):
//
//	request_id + "\n" + user_id + "\n" + timestamp + "\n" + hex(sha256(body))
//
// The signature is sent as 128 lower-case hex digits in
// X-Fal-Webhook-Signature. The timestamp is signed as the exact header string.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);
const outFile = path.join(here, 'vectors.json');

// PKCS#8 DER prefix for an Ed25519 private key; the 32-byte seed follows.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

function keyFromSeed(name, seed) {
  if (seed.length !== 32) throw new Error(`seed ${name} must be 32 bytes`);
  const privateKey = crypto.createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, seed]),
    format: 'der',
    type: 'pkcs8',
  });
  const publicKey = crypto.createPublicKey(privateKey);
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519') throw new Error('not an Ed25519 key');
  const pub = Buffer.from(jwk.x, 'base64url');
  if (pub.length !== 32) throw new Error('public key is not 32 bytes');
  // The SPKI DER of an Ed25519 public key ends with the raw 32-byte key.
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  if (!spki.subarray(spki.length - 32).equals(pub)) throw new Error('SPKI/JWK mismatch');
  return { name, seed, privateKey, publicKey, pub };
}

const keys = [
  keyFromSeed('A', Buffer.alloc(32, 0x01)),
  keyFromSeed('B', Buffer.alloc(32, 0x02)),
  keyFromSeed('C', Buffer.from(Array.from({ length: 32 }, (_, i) => i))),
];
const keyByName = Object.fromEntries(keys.map((k) => [k.name, k]));

// Bodies. Every byte is significant: the sha256 is over the raw bytes.
const realOK = Buffer.from(
  '{"error": null, "gateway_request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "payload": {"has_nsfw_concepts": [false], "images": [{"content_type": "image/jpeg", "height": 1024, "url": "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.jpeg", "width": 1024}], "prompt": "dog", "seed": 17454220438242315174, "timings": {"inference": 2.107286686077714}}, "request_id": "5057fca7-2eb3-468f-b95d-cefe92b0b9d4", "status": "OK"}',
  'utf8',
);

const error422 = Buffer.from(
  '{"request_id":"0b6a3b1e-8f4c-4d2a-9e7f-1c2d3e4f5a6b","gateway_request_id":"0b6a3b1e-8f4c-4d2a-9e7f-1c2d3e4f5a6b","status":"ERROR","payload":{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]},"error":"Invalid status code: 422"}',
  'utf8',
);

const unicodeBody = Buffer.from(
  '{"request_id":"req-unicode","status":"OK","payload":{"prompt":"🐕 Café crème brûlée, naïve façade, Ærøskøbing, 日本語, Привет 🎨✨"}}',
  'utf8',
);

// Not valid UTF-8: BOM-like 0xff 0xfe, lone continuation bytes, an overlong
// encoding, a truncated sequence, a surrogate encoding and a NUL.
const invalidUTF8 = Buffer.from([
  0xff, 0xfe, 0x00, 0x80, 0xbf, 0xc0, 0xaf, 0xe2, 0x82, 0xed, 0xa0, 0x80,
  0xf8, 0x88, 0x80, 0x80, 0x80, 0x7b, 0x7d, 0xfe, 0xff,
]);

const trailingNewline = Buffer.from('{"request_id":"req-newline","status":"OK","payload":{}}\n', 'utf8');

const crlfBody = Buffer.from(
  '{\r\n  "request_id": "req-crlf",\r\n  "status": "OK",\r\n  "payload": {}\r\n}\r\n',
  'utf8',
);

// Exactly 64 KiB of deterministic JSON: a filler string of a repeating
// alphabet, padded so the whole body is 65536 bytes.
function bigBody(size) {
  const head = '{"request_id":"req-64k","status":"OK","payload":{"filler":"';
  const tail = '"}}';
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const n = size - head.length - tail.length;
  let filler = '';
  while (filler.length < n) filler += alphabet;
  const b = Buffer.from(head + filler.slice(0, n) + tail, 'utf8');
  if (b.length !== size) throw new Error('big body has the wrong size');
  return b;
}
const body64k = bigBody(64 * 1024);

const simple = (rid) => Buffer.from(`{"request_id":"${rid}","status":"OK","payload":{}}`, 'utf8');

const specs = [
  {
    name: 'ok_real_delivery',
    key: 'A',
    request_id: '5057fca7-2eb3-468f-b95d-cefe92b0b9d4',
    user_id: 'user-1234',
    timestamp: '1700000000',
    body: realOK,
  },
  {
    name: 'error_422',
    key: 'A',
    request_id: '0b6a3b1e-8f4c-4d2a-9e7f-1c2d3e4f5a6b',
    user_id: 'user-1234',
    timestamp: '1700000001',
    body: error422,
  },
  { name: 'empty_body', key: 'A', request_id: 'req-empty', user_id: 'user-1234', timestamp: '1700000002', body: Buffer.alloc(0) },
  { name: 'unicode_body', key: 'A', request_id: 'req-unicode', user_id: 'user-1234', timestamp: '1700000003', body: unicodeBody },
  { name: 'invalid_utf8_body', key: 'A', request_id: 'req-binary', user_id: 'user-1234', timestamp: '1700000004', body: invalidUTF8 },
  { name: 'trailing_newline_body', key: 'A', request_id: 'req-newline', user_id: 'user-1234', timestamp: '1700000005', body: trailingNewline },
  { name: 'crlf_body', key: 'A', request_id: 'req-crlf', user_id: 'user-1234', timestamp: '1700000006', body: crlfBody },
  { name: 'body_64kib', key: 'A', request_id: 'req-64k', user_id: 'user-1234', timestamp: '1700000007', body: body64k },
  { name: 'unicode_user_id', key: 'A', request_id: 'req-unicode-user', user_id: 'üser-ß', timestamp: '1700000008', body: simple('req-unicode-user') },
  { name: 'timestamp_leading_zeros', key: 'A', request_id: 'req-leading-zeros', user_id: 'user-1234', timestamp: '01700000000', body: simple('req-leading-zeros') },
  { name: 'signed_by_key_b', key: 'B', request_id: 'req-key-b', user_id: 'user-1234', timestamp: '1700000009', body: simple('req-key-b') },
  { name: 'signed_by_key_c_not_in_jwks', key: 'C', request_id: 'req-key-c', user_id: 'user-1234', timestamp: '1700000010', body: simple('req-key-c') },
  {
    name: 'uuid_request_id',
    key: 'B',
    request_id: 'f47ac10b-58cc-4372-a567-0e02b2c3d479',
    user_id: 'user-1234',
    timestamp: '1699999999',
    body: simple('f47ac10b-58cc-4372-a567-0e02b2c3d479'),
  },
];

const vectors = specs.map((s) => {
  const k = keyByName[s.key];
  const bodyHash = crypto.createHash('sha256').update(s.body).digest('hex');
  const message = `${s.request_id}\n${s.user_id}\n${s.timestamp}\n${bodyHash}`;
  const msgBytes = Buffer.from(message, 'utf8');
  const sig = crypto.sign(null, msgBytes, k.privateKey);
  if (sig.length !== 64) throw new Error('signature is not 64 bytes');
  if (!crypto.verify(null, msgBytes, k.publicKey, sig)) throw new Error(`${s.name}: self-check failed`);
  return {
    name: s.name,
    key: s.key,
    request_id: s.request_id,
    user_id: s.user_id,
    timestamp: s.timestamp,
    body_b64: s.body.toString('base64'),
    body_sha256_hex: bodyHash,
    message,
    signature_hex: sig.toString('hex'),
  };
});

const out = {
  source: 'testdata/golden/sign.mjs (node:crypto Ed25519)',
  keys: keys.map((k) => ({
    name: k.name,
    seed_hex: k.seed.toString('hex'),
    public_hex: k.pub.toString('hex'),
    x: k.pub.toString('base64url'),
  })),
  jwks: {
    keys: ['A', 'B'].map((n) => ({
      kty: 'OKP',
      crv: 'Ed25519',
      x: keyByName[n].pub.toString('base64url'),
      use: 'sig',
      kid: n,
    })),
  },
  vectors,
};

fs.writeFileSync(outFile, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${path.relative(process.cwd(), outFile) || outFile}: ${vectors.length} vectors`);
