//! Issue 14, the terminal client as its users expect it: each item through
//! the real binary (`socp client`, terminal and `--json` front ends).

mod common;

use std::time::Duration;

use common::cluster::{TestNode, connect, send_dm};
use common::termproc::{Proc, Stream};
use serde_json::Value;

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

/// A `ws://` URL where nothing listens.
/// Alice pins Bob's key on one mesh and quits; then she connects to a
/// second mesh where "bob" is a session with Carol's key: what a key change
/// looks like to her client. Returns both meshes (kept alive), her folder,
/// her client and the new "bob".
async fn alice_pinned_bob_then_meets_another_bob() -> (
    [TestNode; 2],
    tempfile::TempDir,
    Proc,
    socp::client::Session,
) {
    let first = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    connect(&first.url(), "bob").await.close().await;
    let mut alice = Proc::client(dir.path(), "alice", &first.url(), &["--json"]);
    alice.expect_json("connected", is("connected")).await;
    alice.line("/dbget bob").await;
    alice.expect_json("pubkey", is("pubkey")).await;
    alice.close_stdin();
    alice.exited_within(Duration::from_secs(10)).await.unwrap();
    let second = TestNode::master().await;
    let other_bob =
        socp::client::Session::connect(&second.url(), "bob", common::cluster::user_key("carol"))
            .await
            .unwrap();
    let mut alice = Proc::client(dir.path(), "alice", &second.url(), &["--json"]);
    alice.expect_json("connected", is("connected")).await;
    ([first, second], dir, alice, other_bob)
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// Item 8: `/quit` exits at once, with stdin still open (no second Enter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_exits_at_once_with_stdin_still_open() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    for json in [true, false] {
        let extra: &[&str] = if json { &["--json"] } else { &[] };
        let mut c = Proc::client(dir.path(), "alice", &node.url(), extra);
        c.expect("connected", |_, l| l.contains("connected")).await;
        c.line("/quit").await;
        let status = c
            .exited_within(Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("json={json}: still running 3 s after /quit"));
        assert!(status.success(), "json={json}: {status:?}");
    }
}

/// Item 7: a second client under a name already connected stops with a
/// clear message (and a non-zero exit) instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_use_stops_with_a_clear_message() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = Proc::client(&dir.path().join("1"), "alice", &node.url(), &["--json"]);
    first.expect_json("connected", is("connected")).await;
    let mut second = Proc::client(&dir.path().join("2"), "alice", &node.url(), &[]);
    let line = second
        .expect("the refusal", |_, l| l.contains("NAME_IN_USE"))
        .await;
    assert!(line.contains("already connected"), "{line}");
    let status = second
        .exited_within(Duration::from_secs(5))
        .await
        .expect("the second client stops");
    assert!(!status.success());
    assert!(
        second.seen.iter().all(|(_, l)| !l.contains("reconnecting")),
        "{:?}",
        second.seen
    );
}

/// Item 7: every reconnect line says why, and each attempt is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_lines_say_why_once_per_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let mut c = Proc::client(dir.path(), "alice", &url, &["--json"]);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let ev = c.expect_json("reconnecting", is("reconnecting")).await;
        let reason = ev["reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.to_lowercase().contains("refused"), "{ev}");
        attempts.push(ev["attempt"].as_u64().unwrap());
    }
    assert_eq!(attempts, [1, 2, 3]);
    // The terminal says it too.
    let mut t = Proc::client(&dir.path().join("t"), "alice", &url, &[]);
    let line = t
        .expect("reconnecting", |_, l| l.contains("reconnecting"))
        .await;
    assert!(
        line.contains("(attempt 1)") && line.contains("refused"),
        "{line}"
    );
}

/// Item 9: `/help` says how group names are made, and `/all` does not fail
/// out of the box: it is gone, with a word on what to use instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_says_the_group_rules_and_all_says_what_to_use() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Proc::client(dir.path(), "alice", &node.url(), &["--json"]);
    c.expect_json("connected", is("connected")).await;
    c.line("/help").await;
    let help = c.expect_json("help", is("help")).await;
    let text = help["text"].as_str().unwrap();
    assert!(text.contains("group_"), "{text}");
    assert!(!text.contains("/all"), "{text}");
    c.line("/all hello").await;
    let e = c.expect_json("error", is("error")).await;
    assert_eq!(e["code"], "USAGE");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("/gshare") && detail.contains("/gmsg"),
        "{e}"
    );
    assert!(!detail.contains("NO_KEY"), "{e}");
}

/// Item 4: a user the directory did not know a moment ago joins and writes:
/// their messages verify (the negative answer expired; content from a user
/// not in the keyring asks the directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_unknown_a_moment_ago_verifies_once_they_join() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Proc::client(dir.path(), "alice", &node.url(), &["--json"]);
    alice.expect_json("connected", is("connected")).await;
    alice.line("/dbget carol").await;
    let miss = alice.expect_json("pubkey", is("pubkey")).await;
    assert_eq!(miss["found"], false);
    tokio::time::sleep(socp::client::lookups::UNKNOWN_TTL + Duration::from_millis(200)).await;
    let mut carol = connect(&node.url(), "carol").await;
    send_dm(&mut carol, "alice", b"hi, I am new").await;
    let dm = alice.expect_json("dm", is("dm")).await;
    assert_eq!(dm["text"], "hi, I am new");
    assert_eq!(dm["verified"], true, "{dm}");
}

/// Item 3: content whose signature fails with the pinned key makes the
/// client ask the directory at once: the key change is announced loudly,
/// sending to that user stops until `/trust`, and `/fingerprint` shows
/// both keys — with no `/dbget` from the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_that_fails_with_the_pinned_key_reveals_a_key_change() {
    let (_meshes, _dir, mut alice, mut impostor) = alice_pinned_bob_then_meets_another_bob().await;
    let dm = socp::content::seal_dm(
        &common::cluster::user_key("carol"),
        "bob",
        "alice",
        common::cluster::user_key("alice").public(),
        b"it is me",
        socp::wire::now_ms(),
    )
    .unwrap();
    impostor
        .send("alice", &socp::wire::messages::Message::MsgPrivate(dm))
        .await
        .unwrap();
    let shown = alice.expect_json("dm", is("dm")).await;
    assert_eq!(shown["verified"], false);
    let changed = alice.expect_json("key_changed", is("key_changed")).await;
    let (old, new) = (
        common::cluster::user_key("bob").public().fingerprint(),
        common::cluster::user_key("carol").public().fingerprint(),
    );
    assert_eq!(
        (changed["old"].as_str(), changed["new"].as_str()),
        (Some(&*old), Some(&*new))
    );
    alice.line("/msg bob are you?").await;
    assert_eq!(
        alice.expect_json("error", is("error")).await["code"],
        "KEY_CHANGED"
    );
    alice.line("/fingerprint bob").await;
    let fp = alice.expect_json("fingerprint", is("fingerprint")).await;
    assert_eq!(
        (fp["fingerprint"].as_str(), fp["pending"].as_str()),
        (Some(&*old), Some(&*new))
    );
}

/// Item 5: the terminal tells queued (not connected), sent (the server has
/// it), stored (the recipient is offline), delivered and failed apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sent_stored_delivered_and_failed_read_differently() {
    let mut node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Proc::client(&dir.path().join("b"), "bob", &node.url(), &["--json"]);
    bob.expect_json("connected", is("connected")).await;
    let mut alice = Proc::client(&dir.path().join("a"), "alice", &node.url(), &[]);
    alice
        .expect("connected", |_, l| l.contains("connected as"))
        .await;
    let out = |want: &'static str| move |s: Stream, l: &str| s == Stream::Out && l.contains(want);
    alice.line("/msg bob one").await;
    let sent = alice.expect("sent", out("sent (")).await;
    assert!(sent.contains("dm to bob") && !sent.contains("✓✓"), "{sent}");
    let delivered = alice.expect("delivered", out("delivered (")).await;
    assert!(delivered.contains("✓✓"), "{delivered}");
    bob.line("/quit").await;
    bob.exited_within(Duration::from_secs(10)).await.unwrap();
    node.wait_offline("bob").await;
    alice.line("/msg bob two").await;
    alice.expect("sent", out("sent (")).await;
    let stored = alice.expect("stored", out("stored (")).await;
    assert!(
        stored.contains("bob") && stored.contains("offline") && !stored.contains("✓✓"),
        "{stored}"
    );
    node.stop().await;
    alice.expect("disconnected", out("disconnected")).await;
    alice.line("/msg bob three").await;
    let queued = alice.expect("queued", out("queued (")).await;
    assert!(
        queued.contains("bob") && !queued.contains("sent"),
        "{queued}"
    );
    alice.line("/msg carol four").await;
    let waiting = alice.expect("queued for carol", out("carol")).await;
    assert!(waiting.contains("queued"), "{waiting}");
    node.restart().await;
    let id = queued
        .split("queued (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_owned();
    let sent = alice
        .expect("three sent", |s, l| {
            s == Stream::Out && l.contains(&format!("sent ({id})"))
        })
        .await;
    assert!(sent.contains("bob"), "{sent}");
    let failed = alice.expect("carol refused", out("nothing was sent")).await;
    assert!(failed.contains("carol"), "{failed}");
}

/// Item 11: the JSON command form; its `id` is echoed on every event the
/// command causes, the later ones too (the key lookup, "sent", the receipt,
/// the `/dbget` answer), and plain lines still work beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_commands_have_their_id_on_every_event_they_cause() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Proc::client(&dir.path().join("b"), "bob", &node.url(), &["--json"]);
    bob.expect_json("connected", is("connected")).await;
    let mut alice = Proc::client(&dir.path().join("a"), "alice", &node.url(), &["--json"]);
    alice.expect_json("connected", is("connected")).await;
    // Bob's key is not pinned yet: the DM waits for a lookup first.
    alice
        .line(r#"{"id": "c1", "command": "/msg bob hi"}"#)
        .await;
    alice
        .line(r#"{"id": "c2", "command": "/fingerprint"}"#)
        .await;
    let fp = alice.expect_json("fingerprint", is("fingerprint")).await;
    assert_eq!(fp["id"], "c2");
    let sent = alice.expect_json("sent", is("sent")).await;
    assert_eq!(sent["id"], "c1", "{sent} {:?}", alice.seen);
    let d = alice.expect_json("delivery", is("delivery")).await;
    assert_eq!(
        (d["id"].as_str(), d["msg_id"].as_str()),
        (Some("c1"), sent["msg_id"].as_str())
    );
    alice
        .line(r#"{"id": "c3", "command": "/dbget carol"}"#)
        .await;
    alice.line("/pubget").await;
    let answer = alice.expect_json("pubkey", is("pubkey")).await;
    assert_eq!(answer["id"], "c3");
    let plain = alice.expect_json("pubget", is("pubget")).await;
    assert!(plain.get("id").is_none(), "{plain}");
    alice.line(r#"{"id": "c4", "command": "/msg"}"#).await;
    let e = alice.expect_json("usage error", is("error")).await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("c4"), Some("USAGE"))
    );
    alice.line(r#"{"id": "c5", "command": }"#).await;
    let e = alice.expect_json("bad json", is("error")).await;
    assert!(
        e["detail"].as_str().unwrap().contains("JSON command"),
        "{e}"
    );
    alice.line(r#"{"id": "c6", "command": "/quit"}"#).await;
    assert!(
        alice
            .exited_within(Duration::from_secs(5))
            .await
            .unwrap()
            .success()
    );
}

/// Item 2: a file the node had not acknowledged whole when the connection
/// dropped goes on after a reconnect (tests/files_resume.rs); one that
/// cannot go on (here the node never comes back) is reported not sent, with
/// a word to send it again — never left as if it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_by_a_lost_connection_is_reported_not_sent() {
    let mut node = common::fakenode::FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, vec![7u8; 200_000]).unwrap();
    let mut alice = Proc::client(&dir.path().join("a"), "alice", &node.url, &["--json"]);
    alice.expect_json("connected", is("connected")).await;
    alice.line(&format!("/file bob {}", file.display())).await;
    node.expect("FILE_END").await;
    // The node goes away before it acknowledges anything.
    drop(node);
    let ns = alice.expect_json("not_sent", is("not_sent")).await;
    assert_eq!(
        (ns["to"].as_str(), ns["code"].as_str()),
        (Some("bob"), Some("FILE"))
    );
    let detail = ns["detail"].as_str().unwrap();
    assert!(
        detail.contains("big.bin") && detail.contains("/file"),
        "{ns}"
    );
    let later = alice.collect_for(Duration::from_millis(500)).await;
    assert!(
        later.iter().all(|(_, l)| !l.contains("\"event\":\"sent\"")),
        "{later:?}"
    );
}

/// Item 3: the first DM to a pinned user since connecting asks the
/// directory again first, so a key that changed while we were away is
/// announced and nothing is sealed to the old key (which the recipient
/// could not open, while we showed ✓✓).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_dm_since_connecting_checks_the_pinned_key_first() {
    // Bob's key changed (here: another mesh where "bob" has Carol's key).
    let (_meshes, _dir, mut alice, mut new_bob) = alice_pinned_bob_then_meets_another_bob().await;
    alice.line("/msg bob sealed to which key?").await;
    let changed = alice.expect_json("key_changed", is("key_changed")).await;
    assert_eq!(changed["user"], "bob");
    let e = alice.expect_json("error", is("error")).await;
    assert_eq!(e["code"], "KEY_CHANGED", "{e}");
    let got = common::cluster::drain(&mut new_bob, Duration::from_millis(500)).await;
    assert!(
        got.iter().all(|(env, _)| env.kind != "USER_DELIVER"),
        "something was sent to bob: {got:?}"
    );
    // A pinned key the directory confirms is used as before.
    alice.line("/msg alice note to self").await;
    alice.expect_json("sent", is("sent")).await;
}
