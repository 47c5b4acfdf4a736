// What the browser client does, as `socp client` does it (PROTOCOL.md A5, B,
// C6, C10): sealing and opening DMs, group keys and messages, files (files.js); key
// pinning with a change held until the user accepts it; the outbox kept in
// IndexedDB until the node acknowledges; ACKs for what we were delivered.
// It knows nothing of the page: it reports to `ui` (see ui.js).
import * as b64 from "./b64.js";
import { canonical, canonicalBytes } from "./canonical.js";
import * as wc from "./crypto.js";
import * as store from "./store.js";
import { Session } from "./session.js";
import { FileMethods, safeName } from "./files.js";

const LOOKUP_MS = 10000;
const LIST_MS = 2000;
const RETRY_MS = [500, 1000, 2000, 4000, 8000];
const CONTENT = new Set(["USER_DELIVER", "GROUP_KEY_SHARE", "MSG_GROUP", "FILE_START", "FILE_CHUNK", "FILE_END"]);
const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

export function validUser(id) {
  return ID_RE.test(id) && !/^(server_|master_server_|group_)/.test(id);
}
export function validGroup(id) {
  return /^group_[A-Za-z0-9._-]{1,58}$/.test(id);
}

export class Engine {
  constructor(me, ident, url, ui) {
    Object.assign(this, { me, ident, url, ui });
    this.session = null;
    this.lookups = new Map();
    this.confirmed = new Set();
    this.acks = new Set();
    this.incoming = new Map(); // file_id -> transfer
    this.recent = new Map(); // msg_id -> history key
    this.stopped = false;
    this.tries = 0;
  }

  k(kind, rest) {
    return `${kind}:${this.me}:${rest}`;
  }

  async start() {
    for (const [, rec] of await store.prefix(this.k("h", ""))) this.ui.message(rec);
    const groups = this.k("g", "");
    for (const [key, g] of await store.prefix(groups)) this.ui.group(key.slice(groups.length), g.members || []);
    for (const [, out] of await store.prefix(this.k("out", ""))) this.ui.message(await this.record(out.hist));
    this.connect();
  }

  async record(key) {
    return (await store.get(key)) || null;
  }

  async connect() {
    if (this.stopped) return;
    this.ui.status("connecting");
    const s = new Session(this.url, this.me, this.ident, (env) => this.frame(env), (why) => this.lost(s, why));
    this.session = s;
    try {
      await s.connect();
    } catch (e) {
      this.ui.status("not connected: " + e.message);
      if (e.code === "BAD_KEY" || e.code === "NAME_IN_USE" || e.code === "NOT_ALLOWED") {
        this.stopped = true;
        this.ui.error(`the node refused us: ${e.message}`);
      }
      return;
    }
    this.tries = 0;
    this.confirmed.clear();
    this.ui.status(`connected to ${s.serverId} as ${this.me}`);
    this.ui.connected(true);
    await this.send("USER_LIST_REQ", "server_*", {});
    clearInterval(this.listTimer);
    // The node does not push presence to users: ask again now and then.
    this.listTimer = setInterval(() => {
      if (this.session === s) this.send("USER_LIST_REQ", "server_*", {}).catch(() => {});
    }, LIST_MS);
    this.flush();
  }

  lost(s, why) {
    if (s !== this.session) return;
    this.session = null;
    this.ui.connected(false);
    for (const [, waiters] of this.lookups) waiters.forEach((w) => w(null));
    this.lookups.clear();
    if (this.stopped) return;
    const wait = RETRY_MS[Math.min(this.tries++, RETRY_MS.length - 1)];
    this.ui.status(`disconnected (${why}); retrying in ${wait / 1000} s`);
    setTimeout(() => this.connect(), wait);
  }

  async send(type, to, payload) {
    if (!this.session) throw new Error("not connected");
    return this.session.send(type, to, payload);
  }

  // ---- keys (C6) ----

  /** Asks the directory for `user`'s key: the base64url key or null. */
  lookup(user) {
    return new Promise((resolve) => {
      if (!this.session) return resolve(null);
      const first = !this.lookups.has(user);
      if (first) this.lookups.set(user, []);
      this.lookups.get(user).push(resolve);
      if (first) this.send("USER_DB_GET_USER", "server_*", { user_id: user }).catch(() => {});
      setTimeout(() => resolve(null), LOOKUP_MS);
    });
  }

  async pin(user) {
    return store.get(this.k("pin", user));
  }

  /** Records what the directory says `user`'s key is: pinned the first
   *  time, a different one held pending (and shown loudly). */
  async observe(user, pubkey) {
    try {
      await wc.checkPublic(pubkey);
    } catch {
      this.ui.error(`the directory's key for ${user} is not an RSA-4096 key: ignored`);
      return this.pin(user);
    }
    const p = await this.pin(user);
    if (!p) {
      const n = { pubkey, pending: null };
      await store.put(this.k("pin", user), n);
      return n;
    }
    if (p.pubkey === pubkey) {
      if (p.pending) await store.put(this.k("pin", user), { pubkey, pending: null });
      return { pubkey, pending: null };
    }
    if (p.pending !== pubkey) {
      p.pending = pubkey;
      await store.put(this.k("pin", user), p);
      this.ui.keyChanged(user, await wc.fingerprint(p.pubkey), await wc.fingerprint(pubkey));
    }
    return p;
  }

  /** The pinned key of `user` (looked up if none), or null. */
  async keyOf(user, fresh) {
    let p = await this.pin(user);
    if (!p || (fresh && !this.confirmed.has(user))) {
      const found = await this.lookup(user);
      if (found) {
        p = await this.observe(user, found);
        this.confirmed.add(user);
      }
    }
    return p || null;
  }

  /** The key to send to: refuses while a key change waits for acceptance. */
  async sendKey(user) {
    const p = await this.keyOf(user, true);
    if (!p) throw new Error(`no key for ${user}: the directory does not know this user`);
    if (p.pending) throw new Error(`${user}'s key changed: compare fingerprints and accept the new key before sending`);
    return p.pubkey;
  }

  async acceptKey(user) {
    const p = await this.pin(user);
    if (!p || !p.pending) return false;
    await store.put(this.k("pin", user), { pubkey: p.pending, pending: null });
    this.ui.notice(`${user}'s new key is now trusted (${await wc.fingerprint(p.pending)})`);
    return true;
  }

  // ---- history and outbox ----

  async remember(rec) {
    const key = this.k("h", `${String(rec.ts).padStart(15, "0")}:${rec.id}`);
    rec.key = key;
    await store.put(key, rec);
    this.recent.set(rec.id, key);
    this.ui.message(rec);
    return key;
  }

  async setState(msgId, state, detail) {
    const key = this.recent.get(msgId) || (await store.get(this.k("idx", msgId)));
    if (!key) return false;
    const rec = await store.get(key);
    if (!rec || rec.state === "delivered" || (rec.state === "failed" && state !== "failed")) return !!rec;
    rec.state = state;
    if (detail) rec.detail = detail;
    await store.put(key, rec);
    this.ui.message(rec);
    return true;
  }

  /** Queues a text for `to` (a user or a group): kept in the outbox until
   *  the node acknowledges it, across reloads and reconnects. */
  async sendText(to, text) {
    if (!validUser(to) && !validGroup(to)) throw new Error(`${to} is not a user or group id`);
    if (validUser(to)) {
      const p = await this.pin(to);
      if (p && p.pending) throw new Error(`${to}'s key changed: accept the new key before sending`);
    }
    const id = wc.uuid();
    const rec = { id, dir: "out", peer: to, from: this.me, text, ts: Date.now(), state: "queued", verified: true };
    const hist = await this.remember(rec);
    await store.put(this.k("idx", id), hist);
    await store.put(this.k("out", `${String(rec.ts).padStart(15, "0")}:${id}`), { id, to, text, hist, payload: null });
    this.flush();
    return id;
  }

  /** Seals what has not been sealed, sends what is unacknowledged, in order. */
  async flush() {
    if (this.flushing || !this.session) return;
    this.flushing = true;
    try {
      for (const [key, out] of await store.prefix(this.k("out", ""))) {
        if (!this.session) break;
        if (!out.payload) {
          try {
            out.payload = validGroup(out.to) ? await this.sealGroup(out.to, out.text) : await this.sealDm(out.to, out.text);
          } catch (e) {
            await this.setState(out.id, "failed", e.message);
            await store.del(key);
            this.ui.error(`not sent to ${out.to}: ${e.message}`);
            continue;
          }
          out.payload.msg_id = out.id;
          await store.put(key, out);
        }
        const type = validGroup(out.to) ? "MSG_GROUP" : "MSG_PRIVATE";
        await this.send(type, out.to, out.payload).catch(() => {});
      }
    } finally {
      this.flushing = false;
    }
  }

  async sealDm(to, text) {
    const recipient = await this.sendKey(to);
    const key = wc.randomBytes(32);
    const sealed = await wc.seal(key, new TextEncoder().encode(text));
    const content_ts = Date.now();
    const signed = { ...sealed, from: this.me, to, ts: content_ts };
    return {
      ...sealed,
      wrapped_key: await wc.wrap(recipient, key),
      sender_pub: this.ident.pubkey,
      content_sig: await wc.sign(this.ident.signKey, canonicalBytes(signed)),
      content_ts,
    };
  }

  async sealGroup(group, text) {
    const g = await store.get(this.k("g", group));
    if (!g) throw new Error(`no key for ${group}: its owner must share one`);
    const sealed = await wc.seal(g.key, new TextEncoder().encode(text));
    const ts = Date.now();
    const signed = { group_id: group, ...sealed, from: this.me, ts };
    return { ...signed, sender_pub: this.ident.pubkey, content_sig: await wc.sign(this.ident.signKey, canonicalBytes(signed)), content_ts: ts };
  }

  async outboxDone(ids) {
    for (const [key, out] of await store.prefix(this.k("out", ""))) {
      if (ids.includes(out.id)) await store.del(key);
    }
  }

  // ---- groups (C10) ----

  /** A fresh key for `group`, wrapped for each member; only its owner may. */
  async shareGroup(group, members) {
    if (!validGroup(group)) throw new Error("a group id is group_ and 1-58 of A-Z a-z 0-9 . _ -");
    const owner = await store.get(this.k("gown", group));
    if (owner && owner !== this.me) throw new Error(`${group} belongs to ${owner}: only its owner can share a new key`);
    const all = [...new Set([...members, this.me])];
    const raw = wc.randomBytes(32);
    const shares = [];
    for (const m of all) {
      const pub = m === this.me ? this.ident.pubkey : await this.sendKey(m);
      shares.push({ member: m, wrapped_group_key: await wc.wrap(pub, raw) });
    }
    const signed = { group_id: group, shares, creator_pub: this.ident.pubkey, creator: this.me };
    const payload = { ...signed, content_sig: await wc.sign(this.ident.signKey, canonicalBytes(signed)), msg_id: wc.uuid() };
    await store.put(this.k("gown", group), this.me);
    await store.put(this.k("g", group), { key: await wc.aesKey(raw), creator: this.me, members: all });
    raw.fill(0);
    await this.send("GROUP_KEY_SHARE", "server_*", payload);
    this.ui.group(group, all);
    this.ui.notice(`${group}: new key shared with ${all.join(", ")}`);
  }

  // ---- frames from the node ----

  /** A frame from the node. Content is handled in order on a chain of its
   *  own, so that the answers it waits for (key lookups) are not stuck
   *  behind it on the session's chain. */
  frame(env) {
    if (CONTENT.has(env.type)) {
      this.contentChain = (this.contentChain || Promise.resolve()).then(() => this.handle(env)).catch((e) => this.ui.error(`${env.type}: ${e.message}`));
      return undefined;
    }
    return this.handle(env);
  }

  async handle(env) {
    const p = env.payload || {};
    switch (env.type) {
      case "USER_LIST":
        return this.ui.online((p.users || []).filter((u) => typeof u === "string"));
      case "USER_DB_USER": {
        const waiters = this.lookups.get(p.user_id) || [];
        this.lookups.delete(p.user_id);
        const key = p.found && p.pubkey ? p.pubkey : null;
        if (key) await this.observe(p.user_id, key);
        return waiters.forEach((w) => w(key));
      }
      case "ACK":
        for (const id of p.msg_ids || []) await this.setState(id, "sent");
        return this.outboxDone(p.msg_ids || []);
      case "RECEIPT":
        for (const id of p.msg_ids || []) {
          if (p.status === "delivered") await this.setState(id, "delivered");
        }
        return this.outboxDone(p.msg_ids || []);
      case "ERROR": {
        const about = typeof p.msg_id === "string" ? p.msg_id : null;
        if (about && (await this.setState(about, "failed", `${p.code}: ${p.detail}`))) await this.outboxDone([about]);
        return this.ui.error(`the node says ${p.code}: ${p.detail}`);
      }
      case "USER_DELIVER":
        return this.content(env, p, p.sender, () => this.openDm(p));
      case "GROUP_KEY_SHARE":
        return this.content(env, p, p.creator, () => this.openShare(p));
      case "MSG_GROUP":
        return this.content(env, p, p.from, () => this.openGroup(p));
      case "FILE_START":
        return this.content(env, p, p.from, () => this.fileStart(p));
      case "FILE_CHUNK":
        await this.fileChunk(p);
        return this.ack(p.msg_id);
      case "FILE_END":
        await this.fileEnd(p);
        return this.ack(p.msg_id);
      default:
        return undefined;
    }
  }

  ack(msgId) {
    if (typeof msgId !== "string") return;
    this.acks.add(msgId);
    if (!this.ackTimer) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        const ids = [...this.acks];
        this.acks.clear();
        if (ids.length) this.send("ACK", "server_*", { msg_ids: ids }).catch(() => {});
      }, 50);
    }
  }

  /** Content from `sender`: shown once (by sender and msg_id), then acknowledged. */
  async content(env, p, sender, handle) {
    if (typeof sender !== "string" || !validUser(sender)) {
      this.ui.error(`dropped ${env.type} whose sender is not a valid user id`);
      return this.ack(p.msg_id);
    }
    const id = typeof p.msg_id === "string" ? p.msg_id : "sha256:" + b64.hex(await wc.sha256(canonicalBytes(p)));
    const seen = this.k("seen", `${sender} ${id}`);
    if (!(await store.get(seen))) {
      try {
        await handle(id);
      } catch (e) {
        this.ui.error(`${env.type} from ${sender}: ${e.message}`);
      }
      await store.put(seen, 1);
    }
    this.ack(p.msg_id);
  }

  /** Verifies with the sender's pinned directory key (never sender_pub). */
  async verified(sender, bytes, sig) {
    const p = await this.keyOf(sender, false);
    if (!p) return false;
    if (await wc.verify(p.pubkey, bytes, sig)) return true;
    // A failure may mean the directory key changed: ask once.
    const found = await this.lookup(sender);
    if (found) await this.observe(sender, found);
    return false;
  }

  async openDm(p) {
    const signed = { ciphertext: p.ciphertext, iv: p.iv, tag: p.tag, from: p.sender, to: this.me, ts: p.content_ts };
    const verified = await this.verified(p.sender, canonicalBytes(signed), p.content_sig);
    const key = await wc.unwrap(this.ident.decKey, p.wrapped_key);
    const text = new TextDecoder().decode(await wc.open(key, p));
    key.fill(0);
    await this.remember({ id: p.msg_id || wc.uuid(), dir: "in", peer: p.sender, from: p.sender, text, ts: Date.now(), verified });
  }

  async openShare(p) {
    const signed = { group_id: p.group_id, shares: p.shares, creator_pub: p.creator_pub, creator: p.creator };
    const verified = await this.verified(p.creator, canonicalBytes(signed), p.content_sig);
    if (!validGroup(p.group_id)) throw new Error("not a group id");
    const owner = await store.get(this.k("gown", p.group_id));
    if (owner && owner !== p.creator) throw new Error(`${p.creator} is not the owner of ${p.group_id} (${owner} is): share refused`);
    if (!verified) throw new Error(`the key share for ${p.group_id} does not verify with ${p.creator}'s key: refused`);
    const mine = (p.shares || []).find((s) => s.member === this.me);
    if (!mine) {
      this.ui.notice(`${p.group_id}: ${p.creator} shared a new key without you`);
      await store.del(this.k("g", p.group_id));
      this.ui.group(p.group_id, null);
      return;
    }
    const raw = await wc.unwrap(this.ident.decKey, mine.wrapped_group_key);
    const members = (p.shares || []).map((s) => s.member);
    await store.put(this.k("gown", p.group_id), p.creator);
    await store.put(this.k("g", p.group_id), { key: await wc.aesKey(raw), creator: p.creator, members });
    raw.fill(0);
    this.ui.group(p.group_id, members);
    this.ui.notice(`${p.group_id}: ${p.creator} shared the group key with ${members.join(", ")}`);
  }

  async openGroup(p) {
    if (p.from === this.me) return;
    const g = await store.get(this.k("g", p.group_id));
    if (!g) throw new Error(`no key for ${p.group_id}`);
    const signed = { group_id: p.group_id, ciphertext: p.ciphertext, iv: p.iv, tag: p.tag, from: p.from, ts: p.ts };
    const verified = await this.verified(p.from, canonicalBytes(signed), p.content_sig);
    const text = new TextDecoder().decode(await wc.open(g.key, p));
    await this.remember({ id: p.msg_id || wc.uuid(), dir: "in", peer: p.group_id, from: p.from, text, ts: Date.now(), verified });
  }
}

export { canonical };

// Sending and receiving files: files.js.
Object.assign(Engine.prototype, FileMethods);

export { safeName };
