// Start-up: check for WebCrypto, find or make the identity (IndexedDB, as
// non-extractable keys), then connect to the node that served this page.
import * as wc from "./crypto.js";
import * as store from "./store.js";
import { Engine, validUser } from "./engine.js";
import { exportEncrypted, importKeyFile } from "./keyfile.js";
import { Ui } from "./ui.js";

const $ = (id) => document.getElementById(id);
const ui = new Ui();
let engine = null;
let exportable = null;

function nodeUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
}

async function identity(user) {
  const stored = await store.get(`id:${user}`);
  if (stored) return stored;
  const file = $("keyfile").files[0];
  let ident;
  if (file) {
    ui.status("importing the key file");
    const pkcs8 = await importKeyFile(await file.text(), $("keypass").value);
    ident = await wc.identityFromPkcs8(pkcs8);
  } else {
    ui.status("making an RSA-4096 key: this takes a few seconds");
    const bar = $("keygen");
    bar.hidden = false;
    const started = Date.now();
    const tick = setInterval(() => ui.status(`making an RSA-4096 key: ${((Date.now() - started) / 1000).toFixed(0)} s`), 500);
    try {
      ident = await wc.generateIdentity();
    } finally {
      clearInterval(tick);
      bar.hidden = true;
    }
  }
  exportable = ident.pkcs8;
  $("export").hidden = false;
  const keep = { user, signKey: ident.signKey, decKey: ident.decKey, pubkey: ident.pubkey };
  await store.put(`id:${user}`, keep);
  return keep;
}

async function start(user) {
  if (!validUser(user)) {
    ui.status("a user name is 1-64 of A-Z a-z 0-9 . _ - (not server_, master_server_ or group_)");
    return;
  }
  $("connect").disabled = true;
  try {
    const ident = await identity(user);
    await store.put("last", user);
    $("me").textContent = `you are ${user}; your key's fingerprint: ${await wc.fingerprint(ident.pubkey)}`;
    // Signed in: the form is done with; the keyboard goes to "To".
    $("login").hidden = true;
    $("keyhelp").hidden = true;
    $("chat").hidden = false;
    $("to").focus();
    engine = new Engine(user, ident, nodeUrl(), ui);
    ui.onAccept = (u) => engine.acceptKey(u);
    await engine.start();
  } catch (e) {
    ui.status("cannot start: " + e.message);
    $("connect").disabled = false;
  }
}

function wire() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!engine) start($("user").value.trim());
  });
  $("compose").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const to = $("to").value.trim(), text = $("message").value;
    if (!engine || !to || !text) return;
    try {
      await engine.sendText(to, text);
      $("message").value = "";
    } catch (e) {
      ui.error(e.message);
    }
  });
  $("attach").addEventListener("change", async () => {
    const file = $("attach").files[0];
    const to = $("to").value.trim();
    if (!engine || !file) return;
    if (!to) return ui.error("choose who to send the file to (To) first");
    try {
      await engine.sendFile(to, file, (done, total) => ui.progress("up", `sending ${file.name}`, done, total));
    } catch (e) {
      ui.error(`${file.name}: ${e.message}`);
    }
    $("attach").value = "";
  });
  $("groupform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const members = $("members").value.split(/[\s,]+/).filter(Boolean);
    try {
      await engine.shareGroup($("groupid").value.trim(), members);
    } catch (e) {
      ui.error(e.message);
    }
  });
  $("fpform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const u = $("fpuser").value.trim();
    if (!engine || !u) return;
    const p = u === engine.me ? { pubkey: engine.ident.pubkey } : await engine.keyOf(u, false);
    $("fpout").textContent = p ? `${u}: ${await wc.fingerprint(p.pubkey)}${p.pending ? " (a new key waits for your acceptance)" : ""}` : `no key known for ${u}`;
    const show = p && !p.pending && u !== engine.me;
    $("safetybox").hidden = !show;
    $("safety").textContent = show ? await wc.safetyNumber(engine.ident.pubkey, p.pubkey) : "";
  });
  $("exportkey").addEventListener("click", async () => {
    try {
      const text = await exportEncrypted(exportable, $("exportpass").value);
      const a = $("exportlink");
      a.href = URL.createObjectURL(new Blob([text], { type: "application/x-pem-file" }));
      a.download = `${engine ? engine.me : "key"}.enc.pem`;
      a.hidden = false;
      a.click();
    } catch (e) {
      ui.error(e.message);
    }
  });
}

async function main() {
  if (!wc.available()) {
    $("nocrypto").hidden = false;
    $("connect").disabled = true;
    ui.status("no WebCrypto here: see the message below");
    return;
  }
  wire();
  const last = await store.get("last");
  if (last && (await store.get(`id:${last}`))) {
    $("user").value = last;
    start(last);
  }
}

main();
