// WebCrypto for SOCP (PROTOCOL.md A4): RSA-4096 keys used for RSASSA-PSS
// SHA-256 signatures and RSA-OAEP SHA-256 key wrap, AES-256-GCM with the
// tag carried apart, HKDF/HMAC for mac-v1 sessions, SHA-256 fingerprints.
import * as b64 from "./b64.js";

const subtle = globalThis.crypto && globalThis.crypto.subtle;
const PSS = { name: "RSA-PSS", hash: "SHA-256" };
const OAEP = { name: "RSA-OAEP", hash: "SHA-256" };
/** The salt socp signs with; verifiers accept it and the maximum. */
export const SALT = 32;
/** emLen - hLen - 2 for RSA-4096 with SHA-256 (what the reference signs with). */
export const MAX_SALT = 512 - 32 - 2;

export function available() {
  return !!subtle;
}

export function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

export function uuid() {
  return crypto.randomUUID();
}

/** A fresh RSA-4096 key pair, as non-extractable signing and decrypting
 *  keys plus the public key and (only for the caller to export once) the
 *  PKCS#8 bytes. */
export async function generateIdentity() {
  const pair = await subtle.generateKey(
    { ...PSS, modulusLength: 4096, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ["sign", "verify"],
  );
  const pkcs8 = new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey));
  return identityFromPkcs8(pkcs8);
}

/** Non-extractable keys from PKCS#8 bytes (a socp client key file's DER). */
export async function identityFromPkcs8(pkcs8) {
  const signKey = await subtle.importKey("pkcs8", pkcs8, PSS, false, ["sign"]);
  const decKey = await subtle.importKey("pkcs8", pkcs8, OAEP, false, ["decrypt", "unwrapKey"]);
  // The public half: import extractable once to read its SPKI.
  const tmp = await subtle.importKey("pkcs8", pkcs8, PSS, true, ["sign"]);
  const jwk = await subtle.exportKey("jwk", tmp);
  const pub = await subtle.importKey("jwk", { kty: "RSA", n: jwk.n, e: jwk.e, alg: "PS256", ext: true }, PSS, true, ["verify"]);
  const spki = new Uint8Array(await subtle.exportKey("spki", pub));
  if (jwk.e !== "AQAB" || b64.decode(jwk.n).length !== 512) {
    throw new Error("the key is not RSA-4096 with exponent 65537");
  }
  return { signKey, decKey, pubkey: b64.encode(spki), pkcs8 };
}

const verifyKeys = new Map();
const wrapKeys = new Map();

/** Checks a base64url SPKI is RSA-4096 / 65537 (PROTOCOL.md C1). */
export async function checkPublic(pubB64) {
  const k = await subtle.importKey("spki", b64.decode(pubB64), PSS, true, ["verify"]);
  const jwk = await subtle.exportKey("jwk", k);
  if (jwk.e !== "AQAB" || b64.decode(jwk.n).length !== 512) throw new Error("not an RSA-4096/65537 key");
  return k;
}

async function verifyKey(pubB64) {
  if (!verifyKeys.has(pubB64)) verifyKeys.set(pubB64, await checkPublic(pubB64));
  return verifyKeys.get(pubB64);
}

async function wrapKey(pubB64) {
  if (!wrapKeys.has(pubB64)) {
    await checkPublic(pubB64);
    wrapKeys.set(pubB64, await subtle.importKey("spki", b64.decode(pubB64), OAEP, false, ["encrypt"]));
  }
  return wrapKeys.get(pubB64);
}

export async function sign(signKey, bytes) {
  return b64.encode(await subtle.sign({ name: "RSA-PSS", saltLength: SALT }, signKey, bytes));
}

/** RSASSA-PSS SHA-256 with a 32-byte or the maximum salt. */
export async function verify(pubB64, bytes, sigB64) {
  try {
    const key = await verifyKey(pubB64);
    const sig = b64.decode(sigB64);
    if (sig.length !== 512) return false;
    for (const saltLength of [SALT, MAX_SALT]) {
      if (await subtle.verify({ name: "RSA-PSS", saltLength }, key, sig, bytes)) return true;
    }
  } catch {
    return false;
  }
  return false;
}

export async function wrap(pubB64, secret) {
  return b64.encode(await subtle.encrypt(OAEP, await wrapKey(pubB64), secret));
}

export async function unwrap(decKey, wrappedB64) {
  return new Uint8Array(await subtle.decrypt(OAEP, decKey, b64.decode(wrappedB64)));
}

/** AES-256-GCM, 12-byte IV, tag apart (A4). `key` is raw bytes or a CryptoKey. */
export async function seal(key, plaintext) {
  const k = key instanceof CryptoKey ? key : await aesKey(key);
  const iv = randomBytes(12);
  const out = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv }, k, plaintext));
  return {
    ciphertext: b64.encode(out.subarray(0, out.length - 16)),
    iv: b64.encode(iv),
    tag: b64.encode(out.subarray(out.length - 16)),
  };
}

export async function open(key, { ciphertext, iv, tag }) {
  const k = key instanceof CryptoKey ? key : await aesKey(key);
  const ct = b64.decode(ciphertext), t = b64.decode(tag);
  const joined = new Uint8Array(ct.length + t.length);
  joined.set(ct);
  joined.set(t, ct.length);
  return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: b64.decode(iv) }, k, joined));
}

/** A non-extractable AES-GCM key from raw bytes. */
export function aesKey(raw) {
  if (raw.length !== 32) throw new Error("AES key is not 32 bytes");
  return subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

/** SHA-256 of the SPKI DER in groups of four hex digits (as `socp client`). */
export async function fingerprint(pubB64) {
  const h = b64.hex(await sha256(b64.decode(pubB64)));
  return h.match(/.{4}/g).join(" ");
}

/** The number two people compare (read aloud, side by side) to check that
 *  each has the other's real key: SHA-256 over a label and both keys'
 *  fingerprints (hex, sorted, so both sides compute the same), shown as
 *  10 groups of 5 digits (each from 3 bytes of the digest, mod 100000). */
export async function safetyNumber(pubA, pubB) {
  const fps = [];
  for (const p of [pubA, pubB]) fps.push(b64.hex(await sha256(b64.decode(p))));
  fps.sort();
  const h = new Uint8Array(await sha256(new TextEncoder().encode(`socp safety number v1\n${fps[0]}\n${fps[1]}\n`)));
  const groups = [];
  for (let i = 0; i < 10; i++) {
    const v = ((h[3 * i] << 16) | (h[3 * i + 1] << 8) | h[3 * i + 2]) % 100000;
    groups.push(String(v).padStart(5, "0"));
  }
  return groups.join(" ");
}

/** The mac-v1 key of one direction: HKDF-SHA256, no salt. */
export async function macKey(secret, dialer, acceptor, dir) {
  const ikm = await subtle.importKey("raw", secret, "HKDF", false, ["deriveKey"]);
  return subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: new TextEncoder().encode(`socp mac-v1 ${dialer} ${acceptor} ${dir}`) },
    ikm,
    { name: "HMAC", hash: "SHA-256", length: 256 },
    false,
    ["sign", "verify"],
  );
}

export async function hmac(key, bytes) {
  return new Uint8Array(await subtle.sign("HMAC", key, bytes));
}

export async function hmacVerify(key, bytes, tagB64) {
  try {
    return await subtle.verify("HMAC", key, b64.decode(tagB64), bytes);
  } catch {
    return false;
  }
}
