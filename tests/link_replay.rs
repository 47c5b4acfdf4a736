//! A local's signed link hello is handed to every other `socp` local
//! (`PEER_ANNOUNCE`), so any of them may send it again, under a fresh
//! envelope `ts`, to the master or to another local. Neither may let it take
//! the local's live link: its users' DMs keep flowing over the real link, and
//! nothing reaches the connection that replayed the hello.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, cached_key, connect, expect, user_key};
use common::raw::{Raw, map, signed};
use serde_json::json;
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::Envelope;
use socp::wire::ids::{TO_SERVER, new_local_server_id};
use socp::wire::messages::Message;

/// A DM from `from` to `to` arrives and opens.
async fn dm_flows(from: &mut socp::client::Session, to: &mut socp::client::Session) {
    let key = user_key(to.user()).public().clone();
    let dm = content::seal_dm(
        from.key(),
        from.user(),
        to.user(),
        &key,
        b"still here",
        socp::wire::now_ms(),
    )
    .unwrap();
    let recipient = to.user().to_owned();
    from.send(&recipient, &Message::MsgPrivate(dm))
        .await
        .unwrap();
    expect(to, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
}

/// Links to the master at `url` as a `socp` local (a rogue one, with its
/// own key), and waits for the master to announce the local `victim` to
/// it: the victim's signed link hello, as the master passes it on.
async fn capture_hello(url: &str, victim: &str) -> (Raw, serde_json::Value) {
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let id = new_local_server_id();
    let mut rogue = Raw::connect(url).await;
    let payload = json!({"host": "127.0.0.1", "port": 1, "pubkey": key.public().to_b64(),
        "role": "local", "caps": ["socp-v1"], "url": "ws://127.0.0.1:1"});
    rogue
        .send(&signed("PEER_HELLO_LINK", &id, TO_SERVER, payload, &key))
        .await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    loop {
        let env = rogue.expect_kind("PEER_ANNOUNCE").await;
        if env.payload["server_id"] == victim {
            return (rogue, env.payload["hello"].clone());
        }
    }
}

/// Sends `victim`'s captured hello to `url` on a new connection, with a
/// current envelope `ts` (the one field of it the signature leaves out).
async fn replay(url: &str, victim: &str, hello: &serde_json::Value) -> Raw {
    let mut raw = Raw::connect(url).await;
    let mut env = Envelope::new(
        "PEER_HELLO_LINK",
        victim,
        TO_SERVER,
        map(hello["payload"].clone()),
    );
    env.sig = hello["sig"].as_str().unwrap_or_default().to_owned();
    raw.send(&env).await;
    raw
}

/// True if `raw` gets a `PEER_DELIVER` within `wait`: DMs routed to it.
async fn draws_dms(raw: &mut Raw, wait: Duration) -> bool {
    while let Some(env) = raw.recv_within(wait).await {
        if env.kind == "PEER_DELIVER" {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locals_hello_replayed_to_the_master_is_refused_and_its_link_kept() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut bob = connect(&local.url(), "bob").await;
    let mut alice = connect(&master.url(), "alice").await;
    master.wait_online(&["alice", "bob"]).await;

    let (_rogue, hello) = capture_hello(&master.url(), &local.id()).await;
    let mut replayed = replay(&master.url(), &local.id(), &hello).await;
    let answer = replayed.recv().await.map(|e| e.kind);
    assert_eq!(
        answer.as_deref(),
        Some("ERROR"),
        "a replayed link hello is refused"
    );
    assert!(replayed.closed().await);
    assert!(master.status().await.linked.contains(&local.id()));
    dm_flows(&mut alice, &mut bob).await;
    dm_flows(&mut bob, &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locals_hello_replayed_to_another_local_does_not_take_their_link() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    // The smaller id dials the other: its hello is the one that link was
    // formed with, and the one a replay would displace it with.
    let (small, big) = if l1.id() < l2.id() {
        (&l1, &l2)
    } else {
        (&l2, &l1)
    };
    assert!(
        common::cluster::wait_until(|| async { big.status().await.linked.contains(&small.id()) })
            .await,
        "the locals linked directly"
    );
    let mut bob = connect(&small.url(), "bob").await;
    let mut carol = connect(&big.url(), "carol").await;
    big.wait_online(&["bob", "carol"]).await;

    let (_rogue, hello) = capture_hello(&master.url(), &small.id()).await;
    let mut replayed = replay(&big.url(), &small.id(), &hello).await;
    // Whatever the answer, the DMs go over the real link.
    let _ = replayed.recv_within(Duration::from_secs(2)).await;
    dm_flows(&mut carol, &mut bob).await;
    assert!(
        !draws_dms(&mut replayed, Duration::from_millis(500)).await,
        "the replayed hello drew the local's DMs"
    );
    dm_flows(&mut bob, &mut carol).await;
    assert!(big.status().await.linked.contains(&small.id()));
}
