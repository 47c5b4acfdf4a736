//! The browser client in a real headless Chromium (WebDriver): the shared
//! vectors run in the page against the app's own modules; browser and
//! terminal users on two servers exchange DMs; hostile content stays text.
//! Needs Debian's `chromium` and `chromium-driver` (the tests fail saying so
//! when they are missing; `.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};

use common::browser::{Browser, Driver};
use common::clientproc::{ClientProc, fixture_pem};
use common::cluster::TestNode;
use common::{vector_json, vectors_dir};
use serde_json::{Value, json};

/// The page's identity for `user`: the fixture key imported from its
/// `socp client` key file, then Connect.
async fn sign_in(b: &Browser, url: &str, user: &str) {
    b.goto(url).await;
    let name = b.named("input", "User name").await;
    b.type_into(&name, user).await;
    let file = b.named("input[type=file]", "Import key file").await;
    b.type_into(&file, &fixture_pem(user).display().to_string())
        .await;
    let connect = b.named("button", "Connect").await;
    b.click(&connect).await;
    b.wait_text("#status", "connected", |t| t.starts_with("connected to"))
        .await;
}

/// Sends `text` to `to` from the page.
async fn send(b: &Browser, to: &str, text: &str) {
    let field = b.named("input", "To").await;
    b.clear(&field).await;
    b.type_into(&field, to).await;
    let msg = b.named("input", "Message").await;
    b.type_into(&msg, text).await;
    let send = b.named("button", "Send").await;
    b.click(&send).await;
}

/// Waits for a line in the "Messages" region containing all of `parts`.
async fn expect_message(b: &Browser, parts: &[&str]) -> String {
    let what = parts.join(" + ");
    b.wait_text("#log li", &what, |t| parts.iter().all(|p| t.contains(p)))
        .await
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
}

fn page(node: &TestNode) -> String {
    format!("http://{}/", node.addr())
}

fn profile(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vectors_pass_in_the_browser() {
    let master = TestNode::master().await;
    let driver = Driver::start();
    let root = tempfile::tempdir().unwrap();
    let b = driver.browser(&profile(root.path(), "v")).await;
    b.goto(&page(&master)).await;
    let bob_pem = std::fs::read_to_string(vectors_dir().join("keys/bob.pem")).unwrap();
    let out: Value = b
        .execute_async(
            include_str!("browser/vectors.js"),
            vec![
                vector_json("canonical.json"),
                vector_json("signatures.json"),
                vector_json("e2e.json"),
                json!(bob_pem),
            ],
        )
        .await;
    assert_eq!(out["failures"], json!([]), "{out}");
    assert!(out["checked"].as_u64().unwrap_or(0) > 40, "{out}");
    b.quit().await;
}
