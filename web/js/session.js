// A user's WebSocket session with its node: the signed USER_HELLO (PROTOCOL.md
// B), the node's USER_WELCOME with a mac-v1 offer, then frames authenticated
// with HMAC-SHA256 and a sequence number per direction. Frames are sealed and
// opened strictly in order.
import * as b64 from "./b64.js";
import { canonical, canonicalBytes, parseJson } from "./canonical.js";
import * as wc from "./crypto.js";

const WELCOME_TIMEOUT_MS = 15000;

export class Session {
  /** `onFrame(env)` gets every frame after the welcome; `onClose(reason)` once. */
  constructor(url, user, ident, onFrame, onClose) {
    Object.assign(this, { url, user, ident, onFrame, onClose });
    this.sendChain = Promise.resolve();
    this.recvChain = Promise.resolve();
    this.seal = null;
    this.open = null;
    this.sendSeq = 0;
    this.recvSeq = 0;
    this.serverId = null;
    this.closed = false;
  }

  /** Opens the socket, says hello; resolves once welcomed, rejects with the
   *  node's ERROR (code, detail) or why the connection failed. */
  connect() {
    return new Promise((resolve, reject) => {
      let welcomed = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      const timer = setTimeout(() => fail(new Error("no welcome from the node")), WELCOME_TIMEOUT_MS);
      const fail = (e) => {
        clearTimeout(timer);
        if (!welcomed) reject(e);
        this.close(e.message);
      };
      ws.onopen = () => this.hello().catch(fail);
      ws.onerror = () => fail(new Error("cannot reach the node at " + this.url));
      ws.onclose = (ev) => {
        if (!welcomed) fail(new Error(`the node closed the connection (${ev.code})`));
        else this.close("connection lost");
      };
      ws.onmessage = (ev) => {
        this.recvChain = this.recvChain.then(async () => {
          if (this.closed) return;
          let env;
          try {
            env = parseJson(ev.data);
          } catch {
            return this.close("a frame from the node is not JSON");
          }
          if (!welcomed) {
            if (env.type === "USER_WELCOME") {
              await this.welcome(env.payload);
              welcomed = true;
              clearTimeout(timer);
              resolve();
            } else if (env.type === "USER_LIST") {
              // A reference node sends no welcome.
              this.serverId = env.from;
              welcomed = true;
              clearTimeout(timer);
              resolve();
              this.onFrame(env);
            } else if (env.type === "ERROR") {
              const e = new Error(`${env.payload.code}: ${env.payload.detail}`);
              e.code = env.payload.code;
              fail(e);
            }
            return;
          }
          if (this.open && !(await this.check(env))) {
            return this.close("a frame failed its session check");
          }
          try {
            await this.onFrame(env);
          } catch (e) {
            console.error("frame handler", e);
          }
        });
      };
    });
  }

  async hello() {
    const pubkey = this.ident.pubkey;
    const payload = { client: "socp-web", pubkey, enc_pubkey: pubkey, ts: Date.now(), caps: ["mac-v1"], user_id: this.user };
    const env = { type: "USER_HELLO", from: this.user, to: "server_*", ts: Date.now(), payload };
    env.sig = await wc.sign(this.ident.signKey, canonicalBytes(payload));
    this.ws.send(canonical(env));
  }

  async welcome(w) {
    this.serverId = w.server_id;
    if (w.session && w.session.cap === "mac-v1") {
      const secret = await wc.unwrap(this.ident.decKey, w.session.wrapped);
      this.seal = await wc.macKey(secret, this.user, w.server_id, "d2a");
      this.open = await wc.macKey(secret, this.user, w.server_id, "a2d");
    }
  }

  async check(env) {
    if (env.seq !== this.recvSeq + 1 || typeof env.mac !== "string") return false;
    const { sig: _s, mac, ...rest } = env;
    if (!(await wc.hmacVerify(this.open, canonicalBytes(rest), mac))) return false;
    this.recvSeq += 1;
    return true;
  }

  /** Sends one frame (mac'd, or RSA-signed on a node without mac-v1). */
  send(type, to, payload) {
    const p = this.sendChain.then(async () => {
      if (this.closed || !this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error("not connected");
      const env = { type, from: this.user, to, ts: Date.now(), payload };
      if (this.seal) {
        env.seq = ++this.sendSeq;
        env.mac = b64.encode(await wc.hmac(this.seal, canonicalBytes(env)));
        env.sig = "";
      } else {
        env.sig = await wc.sign(this.ident.signKey, canonicalBytes(payload));
      }
      this.ws.send(canonical(env));
    });
    this.sendChain = p.catch(() => {});
    return p;
  }

  /** Bytes the socket still has to write (for pacing file uploads). */
  buffered() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  close(reason) {
    if (this.closed) return;
    this.closed = true;
    try {
      this.ws && this.ws.close();
    } catch {}
    this.onClose(reason);
  }
}
