//! Reliable delivery (PROTOCOL.md B): custody, the offline mailbox with its
//! limits, receipts, and the client outbox.

mod common;

use std::time::Duration;

use common::clientproc::ClientProc;
use common::cluster::{TestNode, connect, wait_until};
use serde_json::Value;
use socp::node::MailboxLimits;

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_to_an_offline_user_waits_and_is_delivered_once_on_another_server() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    // Bob registers on the first local, then leaves.
    connect(&l1.url(), "bob").await.close().await;
    master.wait_offline("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &l1.url()).await;
    alice.cmd("/msg bob are you there?").await;
    let sent = alice.expect("sent", is("sent")).await;
    let queued = alice.expect("delivery", is("delivery")).await;
    assert_eq!(
        (queued["msg_id"].clone(), queued["status"].as_str()),
        (sent["msg_id"].clone(), Some("queued"))
    );
    assert!(
        wait_until(|| async { master.status().await.custody == 1 }).await,
        "the master holds it"
    );
    // Bob comes back on the other local.
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &l2.url()).await;
    let dm = bob.expect("dm", is("dm")).await;
    assert_eq!(
        (
            dm["text"].as_str(),
            dm["verified"].as_bool(),
            dm["msg_id"].clone()
        ),
        (Some("are you there?"), Some(true), sent["msg_id"].clone())
    );
    let delivered = alice.expect("delivery", is("delivery")).await;
    assert_eq!(
        (delivered["msg_id"].clone(), delivered["status"].as_str()),
        (sent["msg_id"].clone(), Some("delivered"))
    );
    // Once: nothing more, and every node let go of it.
    assert!(
        bob.drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|e| e["event"] != "dm")
    );
    for n in [&master, &l1, &l2] {
        assert!(
            wait_until(|| async { n.status().await.custody == 0 }).await,
            "custody left on {}",
            n.id()
        );
    }
}

/// What the recipient's client acknowledges within a few ms is handed on
/// before any node writes it: no custody row, no delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_acknowledged_at_once_never_reach_a_nodes_disk() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &master.url()).await;
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &local.url()).await;
    for i in 0..20 {
        alice.cmd(&format!("/msg bob number {i}")).await;
    }
    for _ in 0..20 {
        bob.expect("dm", is("dm")).await;
    }
    for n in [&master, &local] {
        assert!(
            wait_until(|| async { n.status().await.custody == 0 }).await,
            "custody left on {}",
            n.id()
        );
        let unwritten = n.status().await.unwritten;
        assert!(unwritten > 0, "{} wrote every row", n.id());
    }
}

/// A master that keeps at most `frames` frames per recipient, for `age_ms`.
async fn master_with_quota(frames: usize, age_ms: i64) -> TestNode {
    let limits = MailboxLimits {
        max_age_ms: age_ms,
        max_frames: frames,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    TestNode::master_with(|c| c.mailbox = limits).await
}

/// Alice sends four DMs to Bob over a quota of three: the fourth is refused
/// with `QUOTA_EXCEEDED` and a detail that says `why`.
async fn the_fourth_dm_to_bob_is_refused(alice: &mut ClientProc, why: &str) {
    for i in 0..4 {
        alice.cmd(&format!("/msg bob message {i}")).await;
    }
    // Refused, not lost: the client says so and keeps it for a later try.
    let err = alice.expect("not_sent", is("not_sent")).await;
    assert_eq!(err["code"], "QUOTA_EXCEEDED");
    assert_eq!(err["kept"], true, "{err}");
    assert!(err["detail"].as_str().unwrap().contains(why), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_quota_refuses_and_expiry_drops() {
    let master = master_with_quota(3, 1500).await;
    connect(&master.url(), "bob").await.close().await;
    master.wait_offline("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &master.url()).await;
    the_fourth_dm_to_bob_is_refused(&mut alice, "mailbox is full").await;
    assert_eq!(master.status().await.custody, 3);
    // Past the age limit the frames are dropped and counted.
    assert!(wait_until(|| async { master.status().await.expired >= 3 }).await);
    // The refused fourth message was kept by alice's client and is taken
    // once there is room: it is the one bob finds.
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &master.url()).await;
    let dm = bob.expect("the kept DM", is("dm")).await;
    assert_eq!(dm["text"], "message 3", "{dm}");
    assert!(
        bob.drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|e| e["event"] != "dm")
    );
}

/// A recipient that is online but never acknowledges cannot make a node
/// hold more for it than an offline one could: the same quota applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_that_never_acknowledges_is_held_to_the_quota() {
    let master = master_with_quota(3, 60_000).await;
    let mut bob = connect(&master.url(), "bob").await; // reads, never acknowledges
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &master.url()).await;
    the_fourth_dm_to_bob_is_refused(&mut alice, "waiting").await;
    assert_eq!(master.status().await.custody, 3);
    let delivered = common::cluster::drain(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(delivered.len(), 3, "bob got the three that were taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_outbox_holds_what_is_sent_while_the_node_is_down() {
    let master = TestNode::master().await;
    let mut local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &master.url()).await;
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &local.url()).await;
    alice.cmd("/dbget bob").await;
    alice.expect("pubkey", is("pubkey")).await;
    local.stop().await;
    alice.expect("disconnected", is("disconnected")).await;
    for i in 0..3 {
        alice.cmd(&format!("/msg bob while down {i}")).await;
        alice.expect("pending", is("pending")).await;
    }
    // Alice's client is killed and restarted before the node is back: the
    // outbox survives in her keyring.
    drop(alice);
    let local_url = local.url();
    local.restart().await;
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &local_url).await;
    for i in 0..3 {
        let dm = bob.expect("dm", is("dm")).await;
        assert_eq!(dm["text"], format!("while down {i}"));
    }
    assert!(
        bob.drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|e| e["event"] != "dm")
    );
    alice
        .expect("delivery", |e| e["status"] == "delivered")
        .await;
}
