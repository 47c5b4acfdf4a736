//! Files between a browser user and a terminal user on another server: a
//! 5 MiB file each way with the right SHA-256 on both sides, a progress
//! bar while sending, the download link only once all of it arrived and
//! checked, a hostile file name reduced to a safe one; a file that does
//! not match its signed manifest offers no download.

use std::path::Path;

use serde_json::json;

use crate::common::browser::{
    Driver, downloaded, expect_message, page, profile, screenshot, sign_in,
};
use crate::common::clientproc::ClientProc;
use crate::common::cluster::{connect, user_key};
use crate::two_servers;
use socp::content::{manifest_signed_bytes, seal_chunk};
use socp::wire::b64;
use socp::wire::messages::Message;
use socp::wire::messages::{FileEnd, FileMode, FileStart};

const SIZE: usize = 5 * 1024 * 1024;

/// `SIZE` bytes that differ by `seed` (xorshift: no two chunks alike).
fn data(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..SIZE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn hex(data: &[u8]) -> String {
    socp::crypto::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Records, while a transfer runs, what the page shows: the progress bar
/// (visible, value, max) and whether a download link exists.
const WATCH: &str = "window.seen = []; const p = document.getElementById('fileprogress'); \
    new MutationObserver(() => window.seen.push([!p.hidden, p.value, p.max, \
    document.querySelectorAll('#log a[download]').length])).observe(document.body, \
    {attributes: true, childList: true, subtree: true});";

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_file_each_way_between_a_browser_and_a_terminal_arrives_checked() {
    let (master, local) = two_servers().await;
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let alice_profile = profile(root.path(), "alice");
    let alice = driver.browser(&alice_profile).await;
    sign_in(&alice, &page(&master), "alice").await;
    let mut carol = ClientProc::start(&root.path().join("carol"), "carol", &local.url()).await;
    master.wait_online(&["alice", "carol"]).await;

    // Browser to terminal, with a progress bar while it goes.
    let up = data(7);
    let path = write(&root.path().join("files"), "report.bin", &up);
    let to = alice.named("input", "To").await;
    alice.type_into(&to, "carol").await;
    alice.execute(WATCH, vec![]).await;
    let attach = alice.named("input[type=file]", "Attach file").await;
    alice.type_into(&attach, &path.display().to_string()).await;
    let got = carol.expect("the file", |e| e["event"] == "file").await;
    assert_eq!(
        (
            got["from"].as_str(),
            got["name"].as_str(),
            got["size"].as_u64()
        ),
        (Some("alice"), Some("report.bin"), Some(SIZE as u64))
    );
    assert_eq!(
        (got["sha256_ok"].as_bool(), got["verified"].as_bool()),
        (Some(true), Some(true))
    );
    let saved = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert_eq!(hex(&saved), hex(&up));
    expect_message(&alice, &["file report.bin", &hex(&up), "sent"]).await;
    let seen = alice.execute("return window.seen", vec![]).await;
    let rows = seen.as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter()
            .any(|r| r[0] == true && r[1].as_f64() > Some(0.0) && r[1].as_f64() < r[2].as_f64()),
        "no progress bar part-way while sending: {seen}"
    );

    // Terminal to browser, under a hostile name: the page shows the link
    // only once all of it arrived and its SHA-256 matched, under a safe name.
    let down = data(11);
    let hostile = write(&root.path().join("files"), "..\\..\\evil<b>.txt", &down);
    alice.execute(WATCH, vec![]).await;
    carol
        .cmd(&format!("/file alice {}", hostile.display()))
        .await;
    let line = expect_message(&alice, &["carol", "evil<b>.txt", &hex(&down)]).await;
    assert!(!line.contains("unverified"), "{line}");
    let link = alice.named("a", "Download evil<b>.txt").await;
    let name = alice.property(&link, "download").await;
    assert_eq!(name, "evil<b>.txt");
    let seen = alice.execute("return window.seen", vec![]).await;
    let rows = seen.as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter()
            .any(|r| r[0] == true && r[1].as_f64() < r[2].as_f64()),
        "no progress shown while receiving: {seen}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r[0] == true && r[1].as_f64() < r[2].as_f64() && r[3] != 0),
        "a download link was shown before the file had all arrived: {seen}"
    );
    screenshot(&alice, "file").await;
    alice.click(&link).await;
    // (Chromium itself further replaces < and > when it saves the file.)
    let (saved_as, file) = downloaded(&alice_profile).await;
    assert!(
        saved_as.starts_with("evil") && saved_as.ends_with(".txt"),
        "{saved_as}"
    );
    assert_eq!(hex(&file), hex(&down));
    assert_eq!(
        alice
            .execute("return document.querySelectorAll('#log b').length", vec![])
            .await,
        json!(0)
    );

    // A sender whose file does not match its own signed manifest: the page
    // says so and offers nothing to download.
    let mut bob = connect(&local.url(), "bob").await;
    master.wait_online(&["bob"]).await;
    let announced = hex(b"what was announced");
    let sent: &[u8] = b"what was sent instead";
    let (file_id, name) = ("4f1c2a9e-tampered", "tampered.txt");
    let bob_key = user_key("bob");
    let signed = manifest_signed_bytes(
        file_id,
        name,
        sent.len() as u64,
        &announced,
        FileMode::Dm,
        "bob",
        "alice",
    )
    .unwrap();
    let start = FileStart {
        file_id: file_id.into(),
        name: name.into(),
        size: sent.len() as u64,
        sha256: announced,
        mode: FileMode::Dm,
        group_id: None,
        user_id: None,
        content_sig: Some(bob_key.sign_b64(&signed).unwrap()),
        msg_id: Some("6b7f0e52-0d7c-4a63-9d6b-0e1f2a3b4c5d".into()),
        extra: [("from".to_owned(), json!("bob"))].into_iter().collect(),
    };
    let key = [7u8; 32];
    let wrapped = b64::encode(user_key("alice").public().wrap(&key).unwrap());
    let mut chunk = seal_chunk(file_id, 0, &key, Some(&wrapped), sent).unwrap();
    chunk.msg_id = Some("0c9d8e7f-1a2b-4c3d-8e4f-5a6b7c8d9e0f".into());
    let end = FileEnd {
        file_id: file_id.into(),
        user_id: None,
        msg_id: Some("1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a".into()),
        extra: Default::default(),
    };
    for m in [
        Message::FileStart(start),
        Message::FileChunk(chunk),
        Message::FileEnd(end),
    ] {
        bob.send("alice", &m).await.unwrap();
    }
    expect_message(
        &alice,
        &["bob", "tampered.txt", "SHA-256 mismatch, discarded"],
    )
    .await;
    assert_eq!(
        alice
            .execute("return [...document.querySelectorAll('#log a')].filter((a) => a.textContent.includes('tampered')).length", vec![])
            .await,
        json!(0)
    );
    alice.quit().await;
}
