//! Issue 14 item 3, the last part: a DM sealed to a key its recipient no
//! longer has. Bob's key is reset on the master while Alice stays connected
//! (to a local) with his old key pinned and already confirmed; her next DM
//! is sealed to the old key. Bob's client cannot decrypt it and says so;
//! Alice's client shows it as failed, never `delivered ✓✓`, and asks the
//! directory at once, which announces the key change.

mod common;

use std::time::Duration;

use common::cluster::TestNode;
use common::termproc::{Proc, Stream};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_socp");

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

/// The mesh after Bob's key changed: the master (Bob's node, restarted), the
/// local Alice is on, the folder, Alice's client (who sent Bob one DM
/// before, delivered) and Bob's client with his new key.
struct Changed {
    _master: TestNode,
    _local: TestNode,
    _dir: tempfile::TempDir,
    alice: Proc,
    bob: Proc,
}

async fn bob_changes_key_while_alice_stays(alice_args: &[&str]) -> Changed {
    let mut master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    local.wait_linked(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = Proc::client(&dir.path().join("bob1"), "bob", &master.url(), &["--json"]);
    bob.expect_json("bob connected", is("connected")).await;
    let mut alice = Proc::client(&dir.path().join("alice"), "alice", &local.url(), alice_args);
    alice
        .expect("alice connected", |_, l| l.contains("connected"))
        .await;
    // Alice pins Bob's key and confirms it with the directory: delivered.
    alice.line("/msg bob first").await;
    alice.expect("first sent", |_, l| l.contains("sent")).await;
    alice
        .expect("first delivered", |_, l| {
            l.contains("delivered") && !l.contains("undecryptable")
        })
        .await;
    bob.expect_json("first dm", is("dm")).await;
    bob.line("/quit").await;
    bob.exited_within(Duration::from_secs(10)).await.unwrap();
    local.wait_offline("bob").await;

    // The operator resets Bob's key (he lost it); Bob comes back with a new one.
    master.stop().await;
    let out = std::process::Command::new(BIN)
        .args(["admin", "reset-key", "bob", "--db"])
        .arg(&master.config.db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    master.restart().await;
    master.wait_linked(1).await;
    let bob_dir = dir.path().join("bob2");
    std::fs::create_dir_all(bob_dir.join("keys")).unwrap();
    std::fs::copy(
        common::clientproc::fixture_pem("carol"),
        bob_dir.join("keys/bob.pem"),
    )
    .unwrap();
    let mut bob = Proc::client(&bob_dir, "bob", &master.url(), &["--json"]);
    bob.expect_json("new bob connected", is("connected")).await;
    local.wait_online(&["bob"]).await;
    Changed {
        _master: master,
        _local: local,
        _dir: dir,
        alice,
        bob,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_its_recipient_cannot_decrypt_is_shown_as_failed_in_json() {
    // Bound whole: the nodes must live to the end.
    let mut mesh = bob_changes_key_while_alice_stays(&["--json"]).await;
    let (alice, bob) = (&mut mesh.alice, &mut mesh.bob);
    alice.line("/msg bob sealed to your old key").await;
    let sent = alice.expect_json("sent", is("sent")).await;
    let id = sent["msg_id"].as_str().unwrap().to_owned();
    let about = |id: String| move |e: &Value| e["event"] == "delivery" && e["msg_id"] == *id;
    let failed = alice.expect_json("its fate", about(id.clone())).await;
    assert_eq!(failed["status"], "undecryptable", "{failed}");
    assert_eq!(failed["to"], "bob", "{failed}");
    let e = bob.expect_json("bob's error", is("error")).await;
    assert_eq!(e["code"], "DECRYPT", "{e}");
    // Asked at once: the directory has Bob's new key.
    let changed = alice.expect_json("key_changed", is("key_changed")).await;
    assert_eq!(changed["user"], "bob");
    alice.line("/msg bob again?").await;
    assert_eq!(
        alice.expect_json("held", is("error")).await["code"],
        "KEY_CHANGED"
    );
    // Nothing about that DM ever says delivered.
    alice.collect_for(Duration::from_millis(500)).await;
    let delivered = alice.seen.iter().any(|(_, l)| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["msg_id"] == *id && v["status"] == "delivered")
    });
    assert!(!delivered, "{:#?}", alice.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_its_recipient_cannot_decrypt_is_shown_as_failed_in_json() {
    let mut mesh = bob_changes_key_while_alice_stays(&["--json"]).await;
    let src = mesh._dir.path().join("report.bin");
    std::fs::write(&src, vec![7u8; 200_000]).unwrap();
    let (alice, bob) = (&mut mesh.alice, &mut mesh.bob);
    alice.line(&format!("/file bob {}", src.display())).await;
    let sent = alice.expect_json("file sent", is("sent")).await;
    let id = sent["msg_id"].as_str().unwrap().to_owned();
    let about = |id: String| move |e: &Value| e["event"] == "delivery" && e["msg_id"] == *id;
    let failed = alice
        .expect_json("the file's fate", about(id.clone()))
        .await;
    if failed["status"] != "undecryptable" {
        bob.collect_for(Duration::from_millis(300)).await;
        panic!("{failed}; bob saw {:#?}", bob.seen);
    }
    assert_eq!(failed["status"], "undecryptable", "{failed}");
    assert_eq!(failed["to"], "bob", "{failed}");
    assert_eq!(failed["file"], "report.bin", "{failed}");
    let e = bob.expect_json("bob's error", is("error")).await;
    assert_eq!(e["code"], "FILE", "{e}");
    alice.collect_for(Duration::from_millis(500)).await;
    let delivered = alice.seen.iter().any(|(_, l)| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["msg_id"] == *id && v["status"] == "delivered")
    });
    assert!(!delivered, "{:#?}", alice.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_its_recipient_cannot_decrypt_never_shows_two_ticks_in_the_terminal() {
    let mut mesh = bob_changes_key_while_alice_stays(&[]).await;
    let alice = &mut mesh.alice;
    alice.line("/msg bob sealed to your old key").await;
    let sent = alice
        .expect("sent", |s, l| s == Stream::Out && l.contains("sent ("))
        .await;
    let id = short_id(&sent, "sent (");
    let failed = alice
        .expect("failed", |s, l| {
            s == Stream::Out && l.contains(&format!("failed ({id})"))
        })
        .await;
    assert!(
        failed.contains("bob could not decrypt it") && failed.contains("/dbget bob"),
        "{failed}"
    );
    alice
        .expect("key change", |_, l| l.contains("bob's KEY CHANGED"))
        .await;
    alice.collect_for(Duration::from_millis(500)).await;
    let ticks = alice
        .seen
        .iter()
        .any(|(_, l)| l.contains(&format!("({id})")) && l.contains("✓✓"));
    assert!(!ticks, "{:#?}", alice.seen);
}

/// The short id the terminal shows after `prefix`.
fn short_id(line: &str, prefix: &str) -> String {
    line.split(prefix)
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no id in {line}"))
        .to_owned()
}
