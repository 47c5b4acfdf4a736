// Key files: a `socp client` key is an unencrypted PKCS#8 PEM
// ("PRIVATE KEY"); the browser exports an encrypted PKCS#8 PEM ("ENCRYPTED
// PRIVATE KEY", PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC), which
// `openssl pkcs8 -in FILE -out USER.pem` turns into a `socp client` key, and
// which this page imports with its passphrase.
import * as b64 from "./b64.js";

const ITERATIONS = 600000;

function b64std(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function pem(label, der) {
  const body = b64std(der).match(/.{1,64}/g).join("\n");
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}

/** [label, der] of a PEM text. */
export function readPem(text) {
  const m = /-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/.exec(text);
  if (!m) throw new Error("not a PEM key file");
  const bin = atob(m[2].replace(/\s+/g, ""));
  return [m[1], Uint8Array.from(bin, (c) => c.charCodeAt(0))];
}

// Minimal DER: enough to write and read the one structure we produce.
function len(n) {
  if (n < 128) return [n];
  const out = [];
  while (n > 0) {
    out.unshift(n & 255);
    n >>= 8;
  }
  return [0x80 | out.length, ...out];
}
function tlv(tag, bytes) {
  return Uint8Array.from([tag, ...len(bytes.length), ...bytes]);
}
const cat = (...parts) => Uint8Array.from(parts.flatMap((p) => [...p]));
const seq = (...parts) => tlv(0x30, cat(...parts));
const oid = (hexs) => Uint8Array.from(hexs.match(/../g).map((h) => parseInt(h, 16)));
const PBES2 = oid("06092a864886f70d01050d");
const PBKDF2 = oid("06092a864886f70d01050c");
const HMAC256 = oid("06082a864886f70d0209");
const AES256CBC = oid("060960864801650304012a");

function int(n) {
  const out = [];
  do {
    out.unshift(n & 255);
    n = Math.floor(n / 256);
  } while (n > 0);
  if (out[0] & 0x80) out.unshift(0);
  return tlv(0x02, Uint8Array.from(out));
}

async function kek(pass, salt, iterations) {
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(pass), "PBKDF2", false, ["deriveKey"]);
  return crypto.subtle.deriveKey({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, base, { name: "AES-CBC", length: 256 }, false, ["encrypt", "decrypt"]);
}

/** The PKCS#8 bytes, encrypted under `pass`, as PEM text. */
export async function exportEncrypted(pkcs8, pass) {
  if (!pass || pass.length < 8) throw new Error("choose a passphrase of at least 8 characters");
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(16));
  const ct = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-CBC", iv }, await kek(pass, salt, ITERATIONS), pkcs8));
  const kdf = seq(PBKDF2, seq(tlv(0x04, salt), int(ITERATIONS), seq(HMAC256, Uint8Array.of(5, 0))));
  const alg = seq(PBES2, seq(kdf, seq(AES256CBC, tlv(0x04, iv))));
  return pem("ENCRYPTED PRIVATE KEY", seq(alg, tlv(0x04, ct)));
}

// A DER reader: [tag, contents, rest].
function next(bytes) {
  const tag = bytes[0];
  let n = bytes[1], at = 2;
  if (n & 0x80) {
    const k = n & 0x7f;
    n = 0;
    for (let i = 0; i < k; i++) n = n * 256 + bytes[2 + i];
    at = 2 + k;
  }
  if (at + n > bytes.length) throw new Error("truncated key file");
  return [tag, bytes.subarray(at, at + n), bytes.subarray(at + n)];
}
function items(bytes) {
  const out = [];
  while (bytes.length) {
    const [t, c, rest] = next(bytes);
    out.push([t, c]);
    bytes = rest;
  }
  return out;
}
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** PKCS#8 bytes from a key file's text: plain, or encrypted as we export. */
export async function importKeyFile(text, pass) {
  const [label, der] = readPem(text);
  if (label === "PRIVATE KEY") return der;
  if (label !== "ENCRYPTED PRIVATE KEY") throw new Error(`a PEM "${label}" is not a private key`);
  if (!pass) throw new Error("this key file is encrypted: give its passphrase");
  try {
    const [[, top]] = items(der);
    const [[, alg], [, ct]] = items(top);
    const [[, algOid], [, params]] = items(alg);
    if (!same(tlv(0x06, algOid), PBES2)) throw new Error();
    const [[, kdf], [, enc]] = items(params);
    const [[, kdfOid], [, kdfParams]] = items(kdf);
    if (!same(tlv(0x06, kdfOid), PBKDF2)) throw new Error();
    const kp = items(kdfParams);
    const salt = kp[0][1];
    const iterations = kp[1][1].reduce((a, b) => a * 256 + b, 0);
    const [[, encOid], [, iv]] = items(enc);
    if (!same(tlv(0x06, encOid), AES256CBC)) throw new Error();
    if (iterations > 10000000) throw new Error();
    return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-CBC", iv }, await kek(pass, salt, iterations), ct));
  } catch {
    throw new Error("cannot open this key file: wrong passphrase, or not PBES2/PBKDF2-SHA256/AES-256-CBC");
  }
}

export { b64 };
