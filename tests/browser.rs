//! The browser client in a real headless Chromium (WebDriver): the shared
//! vectors run in the page against the app's own modules; browser and
//! terminal users on two servers exchange DMs; hostile content stays text.
//! Needs Debian's `chromium` and `chromium-driver` (the tests fail saying so
//! when they are missing; `.ci/run` installs them).

mod common;

#[path = "browser/files.rs"]
mod files;
#[path = "browser/groups.rs"]
mod groups;

use common::browser::{Driver, expect_message, page, profile, screenshot, send, sign_in};
use common::clientproc::ClientProc;
use common::cluster::TestNode;
use common::{vector_json, vectors_dir};
use serde_json::{Value, json};

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

/// A master and a local, linked.
pub async fn two_servers() -> (TestNode, TestNode) {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    local.wait_linked(1).await;
    (master, local)
}

pub fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_a_terminal_on_two_servers_exchange_dms_and_hostile_text_stays_text() {
    let (master, local) = two_servers().await;
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let alice = driver.browser(&profile(root.path(), "alice")).await;
    let bob = driver.browser(&profile(root.path(), "bob")).await;
    sign_in(&alice, &page(&master), "alice").await;
    sign_in(&bob, &page(&local), "bob").await;
    let mut carol = ClientProc::start(&root.path().join("carol"), "carol", &local.url()).await;
    master.wait_online(&["alice", "bob", "carol"]).await;
    alice
        .wait_text("#online", "the online list", |t| {
            ["alice", "bob", "carol"].iter().all(|u| t.contains(u))
        })
        .await;

    // Browser to browser, both ways, across the two servers.
    send(&alice, "bob", "hello bob, from a browser").await;
    expect_message(&bob, &["alice", "hello bob, from a browser"]).await;
    expect_message(&alice, &["hello bob, from a browser", "delivered"]).await;
    send(&bob, "alice", "hi alice é 😀").await;
    let line = expect_message(&alice, &["bob", "hi alice é 😀"]).await;
    assert!(!line.contains("unverified"), "{line}");

    // Browser and terminal, both ways, from each server.
    send(&alice, "carol", "carol, it is alice").await;
    let dm = carol.expect("dm", is("dm")).await;
    assert_eq!(
        (
            dm["from"].as_str(),
            dm["text"].as_str(),
            dm["verified"].as_bool()
        ),
        (Some("alice"), Some("carol, it is alice"), Some(true))
    );
    send(&bob, "carol", "carol, it is bob").await;
    let dm = carol.expect("dm", is("dm")).await;
    assert_eq!(
        (dm["from"].as_str(), dm["verified"].as_bool()),
        (Some("bob"), Some(true))
    );
    carol.cmd("/msg alice terminal to browser").await;
    expect_message(&alice, &["carol", "terminal to browser"]).await;
    carol.cmd("/msg bob terminal to the other browser").await;
    expect_message(&bob, &["carol", "terminal to the other browser"]).await;

    // Hostile text is shown as its characters: no element is made of it.
    let hostile = "<img src=x onerror=\"document.title='owned'\"><b>bold</b>";
    carol.cmd(&format!("/msg alice {hostile}")).await;
    expect_message(&alice, &["carol", hostile]).await;
    let made = alice
        .execute(
            "return [document.querySelectorAll('#messages img, #messages b').length, document.title]",
            vec![],
        )
        .await;
    assert_eq!(made, json!([0, "socp"]));
    send(&bob, "alice", "<script>alert(1)</script>").await;
    expect_message(&alice, &["bob", "<script>alert(1)</script>"]).await;
    assert_eq!(
        alice
            .execute(
                "return document.querySelectorAll('#messages script').length",
                vec![]
            )
            .await,
        json!(0)
    );
    screenshot(&alice, "chat").await;
    alice.quit().await;
    bob.quit().await;
}

const TAB: &str = "\u{E004}";
/// Shift held down around Tab.
const SHIFT_TAB: &str = "\u{E008}\u{E004}\u{E008}";
const ENTER: &str = "\u{E007}";

/// Presses `keys` and says which control has the focus then.
async fn press(b: &common::browser::Browser, keys: &str) -> String {
    b.keys(keys).await;
    b.focused().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_by_keyboard_alone_survives_reload_and_a_key_change_blocks_sending() {
    let master = TestNode::master().await;
    let addr = master.addr();
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let mut bobc = ClientProc::start(&root.path().join("bob"), "bob", &master.url()).await;
    let dave = driver.browser(&profile(root.path(), "dave")).await;
    // Keyboard only, from the start: the focus is in "User name", Tab goes
    // through the sign-in form in order, Enter connects. No key file: the
    // page makes an RSA-4096 key itself (once in the suite).
    dave.goto(&page(&master)).await;
    dave.named("input", "User name").await;
    assert_eq!(dave.focused().await, "User name");
    dave.keys("dave").await;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(press(&dave, TAB).await);
    }
    assert_eq!(order, ["Import key file", "Key file passphrase", "Connect"]);
    dave.keys(ENTER).await;
    dave.wait_text("#status", "connected", |t| t.starts_with("connected to"))
        .await;
    let fp = dave
        .wait_text("#me", "fingerprint", |t| t.contains("fingerprint"))
        .await;
    // Signed in, the focus is on "To"; going back, the controls come in
    // the order they are shown: the verify form, the group form, the
    // online list, the export form.
    dave.wait_text("#online", "bob online", |t| t.contains("bob"))
        .await;
    assert_eq!(dave.focused().await, "To");
    let mut order = Vec::new();
    for _ in 0..20 {
        let now = press(&dave, SHIFT_TAB).await;
        order.push(now.clone());
        if now == "Export passphrase" {
            break;
        }
    }
    assert_eq!(
        order,
        [
            "Show",
            "Fingerprint of",
            "Share group key",
            "Members",
            "Group",
            "dave",
            "bob",
            "Export key file",
            "Export passphrase"
        ]
    );
    // Bob is picked from the online list (Tab to him, Enter), then the
    // message is typed and sent with Enter.
    for _ in 0..2 {
        press(&dave, TAB).await;
    }
    assert_eq!(dave.focused().await, "bob");
    assert_eq!(press(&dave, ENTER).await, "Message");
    dave.keys(&format!("first, to the real bob{ENTER}")).await;
    assert_eq!(
        bobc.expect("dm", is("dm")).await["text"],
        "first, to the real bob"
    );
    expect_message(&dave, &["first, to the real bob", "delivered"]).await;
    screenshot(&dave, "identity").await;
    drop(bobc);

    // Reload: the identity, the history and the connection come back.
    // How long until the page is usable again is printed (a figure, not a
    // timed assertion: issue 15 asks for about 1 s once a key exists).
    let reload = std::time::Instant::now();
    dave.refresh().await;
    dave.wait_text("#status", "connected after reload", |t| {
        t.starts_with("connected to")
    })
    .await;
    eprintln!(
        "figure: the page was usable (signed in, connected) {} ms after a reload",
        reload.elapsed().as_millis()
    );
    assert_eq!(
        dave.wait_text("#me", "fingerprint", |t| t.contains("fingerprint"))
            .await,
        fp
    );
    expect_message(&dave, &["first, to the real bob"]).await;

    // Offline: what Dave writes waits in the outbox; the page reloaded as
    // soon as the node is back still has it, and sends it.
    let mut master = master;
    master.stop().await;
    dave.wait_text("#status", "disconnected", |t| {
        t.contains("not connected") || t.contains("disconnected")
    })
    .await;
    send(&dave, "bob", "written while offline").await;
    expect_message(&dave, &["written while offline", "queued"]).await;
    // Files are not queued: offline, the page says so and lists nothing.
    let offline = root.path().join("offline-notes.txt");
    std::fs::write(&offline, "not for the outbox").unwrap();
    let attach = dave.named("input[type=file]", "Attach file").await;
    dave.type_into(&attach, &offline.display().to_string())
        .await;
    let said = dave
        .wait_text("#errors", "the refusal", |t| {
            t.contains("offline-notes.txt")
        })
        .await;
    assert!(said.contains("not sent: files are not queued"), "{said}");
    assert_eq!(
        dave.execute(
            "return [...document.querySelectorAll('#log li')].filter((l) => l.textContent.includes('offline-notes')).length",
            vec![]
        )
        .await,
        json!(0)
    );
    master.restart().await;
    dave.refresh().await;
    expect_message(&dave, &["written while offline"]).await;
    let mut bobc = ClientProc::start(&root.path().join("bob"), "bob", &master.url()).await;
    assert_eq!(
        bobc.expect("dm", is("dm")).await["text"],
        "written while offline"
    );
    expect_message(&dave, &["written while offline", "delivered"]).await;
    drop(bobc);
    master.stop().await;

    // The same address now runs a mesh where "bob" has another key: the
    // change is shown loudly, the queued message is not sealed to it, and
    // nothing more can be sent to bob until the new key is accepted.
    let second = TestNode::master_with(|c| c.listen = addr).await;
    let mut impostor =
        socp::client::Session::connect(&second.url(), "bob", common::cluster::user_key("carol"))
            .await
            .unwrap();
    dave.wait_text("#status", "connected to the new node", |t| {
        t.starts_with("connected to")
    })
    .await;
    send(&dave, "bob", "must not go").await;
    let warning = dave
        .wait_text("#warnings", "the key-change warning", |t| {
            t.contains("bob's key has changed")
        })
        .await;
    assert!(warning.contains("blocked"), "{warning}");
    expect_message(&dave, &["must not go", "failed"]).await;
    send(&dave, "bob", "must not go either").await;
    dave.wait_text("#errors", "refusal", |t| t.contains("key changed"))
        .await;
    screenshot(&dave, "key-change").await;
    dave.click(&dave.named("button", "Accept new key for bob").await)
        .await;
    send(&dave, "bob", "after accepting").await;
    let (_, m) = common::cluster::expect(&mut impostor, "the DM after acceptance", |_, m| {
        matches!(m, socp::wire::messages::Message::UserDeliver(_))
    })
    .await;
    let socp::wire::messages::Message::UserDeliver(d) = m else {
        unreachable!()
    };
    assert_eq!(d.sender, "dave");
    dave.quit().await;
}

/// What the page shows as the safety number with `other`.
async fn safety_number(b: &common::browser::Browser, other: &str) -> String {
    let field = b.named("input", "Fingerprint of").await;
    b.clear(&field).await;
    b.type_into(&field, other).await;
    b.click(&b.named("button", "Show").await).await;
    let out = b.named("output", "Safety number").await;
    let deadline = std::time::Instant::now() + common::browser::WAIT;
    loop {
        let t = b.text(&out).await;
        if !t.is_empty() {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "no safety number");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_users_see_the_same_safety_number() {
    let master = TestNode::master().await;
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let alice = driver.browser(&profile(root.path(), "alice")).await;
    let bob = driver.browser(&profile(root.path(), "bob")).await;
    sign_in(&alice, &page(&master), "alice").await;
    sign_in(&bob, &page(&master), "bob").await;
    let a = safety_number(&alice, "bob").await;
    let b = safety_number(&bob, "alice").await;
    assert_eq!(a, b, "alice and bob see different safety numbers");
    alice
        .execute(
            "document.getElementById('safetybox').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await;
    screenshot(&alice, "safety-number").await;
    let groups: Vec<&str> = a.split(' ').collect();
    assert!(
        groups.len() == 10
            && groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())),
        "{a}"
    );
    // The fingerprint each shows for the other is the one the other shows
    // for themself.
    let alices_own = alice.text(&alice.all("#me").await[0]).await;
    let bobs_view = bob.text(&bob.all("#fpout").await[0]).await;
    let fp = bobs_view.trim_start_matches("alice: ");
    assert!(alices_own.ends_with(fp), "{alices_own} / {bobs_view}");
    // With someone else, another number.
    let mut carol = ClientProc::start(&root.path().join("carol"), "carol", &master.url()).await;
    carol.cmd("/list").await;
    let c = safety_number(&alice, "carol").await;
    assert_ne!(a, c);
    alice.quit().await;
    bob.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_key_imports_in_a_fresh_profile_with_the_same_fingerprint() {
    let (first, second) = (TestNode::master().await, TestNode::master().await);
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let old_profile = profile(root.path(), "old");
    let old = driver.browser(&old_profile).await;
    sign_in(&old, &page(&first), "alice").await;
    let fp = old
        .wait_text("#me", "fingerprint", |t| t.contains("fingerprint"))
        .await;
    let pass = old.named("input", "Export passphrase").await;
    old.type_into(&pass, "correct horse battery").await;
    old.click(&old.named("button", "Export key file").await)
        .await;
    let (name, exported) = common::browser::downloaded(&old_profile).await;
    assert_eq!(name, "alice.enc.pem");
    let text = String::from_utf8(exported).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
    let file = root.path().join("alice.enc.pem");
    std::fs::write(&file, &text).unwrap();
    old.quit().await;

    // A fresh profile: the wrong passphrase is refused in words; the right
    // one gives the same identity.
    let new = driver.browser(&profile(root.path(), "new")).await;
    new.goto(&page(&second)).await;
    new.type_into(&new.named("input", "User name").await, "alice")
        .await;
    let pick = new.named("input[type=file]", "Import key file").await;
    new.type_into(&pick, &file.display().to_string()).await;
    let pass = new.named("input", "Key file passphrase").await;
    new.type_into(&pass, "wrong horse").await;
    new.click(&new.named("button", "Connect").await).await;
    let refused = new
        .wait_text("#status", "the refusal", |t| t.starts_with("cannot start"))
        .await;
    assert!(refused.contains("wrong passphrase"), "{refused}");
    new.clear(&pass).await;
    new.type_into(&pass, "correct horse battery").await;
    new.click(&new.named("button", "Connect").await).await;
    new.wait_text("#status", "connected", |t| t.starts_with("connected to"))
        .await;
    assert_eq!(
        new.wait_text("#me", "fingerprint", |t| t.contains("fingerprint"))
            .await,
        fp
    );
    new.quit().await;
}
