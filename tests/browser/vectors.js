// Runs in the page (WebDriver execute/async): the shared vectors against
// the app's own modules. Returns {checked, failures}.
const [canon, sigs, e2e, bobPem, done] = arguments;
(async () => {
  const c = await import("/js/canonical.js");
  const wc = await import("/js/crypto.js");
  const kf = await import("/js/keyfile.js");
  const b64 = await import("/js/b64.js");
  const failures = [];
  let checked = 0;
  const check = (ok, what) => {
    checked++;
    if (!ok) failures.push(what);
  };
  for (const v of canon) {
    const got = c.canonical(c.parseJson(v.input));
    check(got === v.canonical, `canonical ${v.input}: got ${got}`);
  }
  for (const [i, v] of sigs.entries()) {
    check(c.canonical(v.payload) === v.canonical, `signature vector ${i}: canonical payload`);
    const ok = await wc.verify(e2e.pubkeys[v.signer], new TextEncoder().encode(v.canonical), v.sig);
    check(ok === v.valid, `signature vector ${i} (${v.why || "valid"}, salt ${v.salt}): verify gave ${ok}`);
  }
  const bob = await wc.identityFromPkcs8(await kf.importKeyFile(bobPem));
  check(bob.pubkey === e2e.pubkeys.bob, "bob's key file gives bob's public key");
  const dm = e2e.dm;
  const signedDm = { ...dm.content_signed };
  check(c.canonical(signedDm) === c.canonical({ ciphertext: dm.payload.ciphertext, iv: dm.payload.iv, tag: dm.payload.tag, from: dm.from, to: dm.to, ts: dm.payload.content_ts }), "dm signed fields");
  check(await wc.verify(e2e.pubkeys.alice, c.canonicalBytes(signedDm), dm.payload.content_sig), "dm content_sig verifies with alice's key");
  check(!(await wc.verify(e2e.pubkeys.bob, c.canonicalBytes(signedDm), dm.payload.content_sig)), "dm content_sig fails with bob's key");
  const dmKey = await wc.unwrap(bob.decKey, dm.payload.wrapped_key);
  const text = new TextDecoder().decode(await wc.open(dmKey, dm.payload));
  check(text === dm.plaintext, `dm opens: ${text}`);
  let tampered = false;
  try {
    await wc.open(await wc.unwrap(bob.decKey, e2e.tampered_dm.wrapped_key), e2e.tampered_dm);
  } catch {
    tampered = true;
  }
  check(tampered, "a tampered dm does not open");
  const share = e2e.group_key_share.payload;
  const signedShare = { group_id: share.group_id, shares: share.shares, creator_pub: share.creator_pub, creator: share.creator };
  check(await wc.verify(e2e.pubkeys.alice, c.canonicalBytes(signedShare), share.content_sig), "group key share verifies");
  const mine = share.shares.find((s) => s.member === "bob");
  const gk = await wc.unwrap(bob.decKey, mine.wrapped_group_key);
  check(b64.encode(gk) === e2e.group_key_share.group_key_b64u, "bob's group key share opens to the group key");
  const gm = e2e.group_msg;
  check(await wc.verify(e2e.pubkeys.alice, c.canonicalBytes(gm.content_signed), gm.payload.content_sig), "group message verifies");
  check(new TextDecoder().decode(await wc.open(gk, gm.payload)) === gm.plaintext, "group message opens");
  const f = e2e.file_dm;
  const parts = [];
  for (const ch of f.chunks) {
    const k = await wc.unwrap(bob.decKey, ch.wrapped_key);
    parts.push(await wc.open(k, ch));
  }
  const whole = new Uint8Array(await new Blob(parts).arrayBuffer());
  check(whole.length === f.manifest.size, "file size");
  check(b64.hex(await wc.sha256(whole)) === f.plaintext_sha256, "file sha256");
  return { checked, failures };
})().then(done, (e) => done({ checked: -1, failures: [String(e && e.stack || e)] }));
