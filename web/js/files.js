// Files (PROTOCOL.md B, C7): sent now in 61440-byte chunks sealed with a
// fresh key (DMs) or the group key; received into memory, checked against
// the signed manifest's SHA-256 before the download link appears. Methods
// of Engine (mixed in by engine.js).
import * as b64 from "./b64.js";
import { canonicalBytes } from "./canonical.js";
import * as wc from "./crypto.js";
import * as store from "./store.js";
import { validGroup } from "./engine.js";

export const CHUNK = 61440;
export const MAX_FILE = 5 * 1024 * 1024;

export const FileMethods = {
  /** Sends a file now, in chunks. Files are not queued: offline (or if
   *  the connection drops during the transfer) it is refused, said so,
   *  and must be sent again; only text waits in the outbox. */
  async sendFile(to, file, progress) {
    if (!this.session) throw new Error("not sent: files are not queued while disconnected (only messages are); send it again once connected");
    if (file.size > MAX_FILE) throw new Error(`${file.name} is over the ${MAX_FILE}-byte limit`);
    const group = validGroup(to);
    const data = new Uint8Array(await file.arrayBuffer());
    const sha = b64.hex(await wc.sha256(data));
    const file_id = wc.uuid();
    const mode = group ? "group" : "dm";
    let key, wrapped = null;
    if (group) {
      const g = await store.get(this.k("g", to));
      if (!g) throw new Error(`no key for ${to}`);
      key = g.key;
    } else {
      const raw = wc.randomBytes(32);
      wrapped = await wc.wrap(await this.sendKey(to), raw);
      key = await wc.aesKey(raw);
    }
    const name = file.name || "file";
    const manifest = { file_id, name, size: data.length, sha256: sha, mode, from: this.me, to };
    const start = { file_id, name, size: data.length, sha256: sha, mode, content_sig: await wc.sign(this.ident.signKey, canonicalBytes(manifest)), msg_id: wc.uuid(), from: this.me };
    if (group) start.group_id = to;
    const rec = { id: start.msg_id, dir: "out", peer: to, from: this.me, text: `file ${name} (${data.length} bytes, sha256 ${sha})`, ts: Date.now(), state: "queued", verified: true };
    await this.remember(rec);
    progress(0, data.length);
    try {
      await this.send("FILE_START", to, start);
      for (let i = 0, index = 0; i < data.length || index === 0; i += CHUNK, index++) {
        const sealed = await wc.seal(key, data.subarray(i, i + CHUNK));
        const chunk = { file_id, index, ...sealed, msg_id: wc.uuid() };
        if (wrapped) chunk.wrapped_key = wrapped;
        while (this.session && this.session.buffered() > 1 << 20) await new Promise((r) => setTimeout(r, 20));
        await this.send("FILE_CHUNK", to, chunk);
        progress(Math.min(i + CHUNK, data.length), data.length);
        if (data.length === 0) break;
      }
      await this.send("FILE_END", to, { file_id, msg_id: wc.uuid() });
    } catch (e) {
      progress(data.length, data.length);
      await this.setState(rec.id, "failed", "the connection was lost during the transfer: send the file again");
      throw new Error("not sent: the connection was lost during the transfer (files are not queued); send it again");
    }
    await this.setState(rec.id, "sent");
  },

  async fileStart(p) {
    if (typeof p.file_id !== "string" || !Number.isSafeInteger(p.size) || p.size < 0) throw new Error("a bad file manifest");
    if (p.size > MAX_FILE) throw new Error(`${p.name} is over the ${MAX_FILE}-byte limit: refused`);
    const to = p.mode === "group" ? p.group_id : this.me;
    const manifest = { file_id: p.file_id, name: p.name, size: p.size, sha256: p.sha256, mode: p.mode, from: p.from, to };
    const verified = !!p.content_sig && (await this.verified(p.from, canonicalBytes(manifest), p.content_sig));
    this.incoming.set(p.file_id, { p, verified, parts: [], got: 0, key: null });
    this.ui.progress(p.file_id, `receiving ${safeName(p.name)} from ${p.from}`, 0, p.size);
  },

  async fileChunk(c) {
    const t = this.incoming.get(c.file_id);
    if (!t || !Number.isSafeInteger(c.index)) return;
    try {
      if (!t.key) {
        if (t.p.mode === "group") t.key = (await store.get(this.k("g", t.p.group_id))).key;
        else t.key = await wc.aesKey(await wc.unwrap(this.ident.decKey, c.wrapped_key));
      }
      const plain = await wc.open(t.key, c);
      t.parts[c.index] = plain;
      t.got += plain.length;
      if (t.got > t.p.size) throw new Error("more data than announced");
      this.ui.progress(c.file_id, `receiving ${safeName(t.p.name)} from ${t.p.from}`, t.got, t.p.size);
    } catch (e) {
      this.incoming.delete(c.file_id);
      this.ui.error(`${safeName(t.p.name)} from ${t.p.from}: ${e.message}; dropped`);
    }
  },

  async fileEnd(e) {
    const t = this.incoming.get(e.file_id);
    if (!t) return;
    this.incoming.delete(e.file_id);
    const blob = new Blob(t.parts.filter(Boolean));
    const data = new Uint8Array(await blob.arrayBuffer());
    const sha = b64.hex(await wc.sha256(data));
    const ok = sha === t.p.sha256 && data.length === t.p.size;
    const name = safeName(t.p.name);
    const rec = {
      id: t.p.msg_id || wc.uuid(), dir: "in", peer: t.p.mode === "group" ? t.p.group_id : t.p.from, from: t.p.from,
      text: ok ? `file ${name} (${data.length} bytes, sha256 ${sha})` : `file ${name}: SHA-256 mismatch, discarded`,
      ts: Date.now(), verified: t.verified, file: ok ? { name, sha256: sha, size: data.length } : null,
    };
    await this.remember(rec);
    if (ok) this.ui.download(rec, new Blob([data], { type: "application/octet-stream" }));
  },
};

/** A received file name reduced to a safe base name (C7). */
export function safeName(name) {
  let n = String(name || "file").split(/[\\/]/).pop().replace(/[\u0000-\u001f\u007f]/g, "_").replace(/^\.+/, "");
  if (!n || n === "." || n === "..") n = "file";
  return n.slice(0, 120);
}
