//! The attacks of PROTOCOL.md C1-C5, C8 and C9, each as its own test against
//! real nodes: every one is refused, and the node keeps serving everyone else.

mod common;

use common::cluster::{TestNode, cached_key, connect, directory_key, expect, user_key};
use common::raw::{Raw, hello_payload, link_as, signed, unsigned};
use serde_json::json;
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::Message;

/// A DM from `from` to `to` arrives and opens.
async fn dm_flows(from: &mut socp::client::Session, to: &mut socp::client::Session) {
    let key = user_key(to.user()).public().clone();
    let dm = content::seal_dm(
        from.key(),
        from.user(),
        to.user(),
        &key,
        b"still works",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_weak_keys_are_refused() {
    let master = TestNode::master_with(|c| c.allow_legacy_clients = true).await;
    let vectors = common::vector_json("pubkeys.json");
    for (name, case) in vectors.as_object().unwrap() {
        if case["acceptable"].as_bool().unwrap() {
            continue;
        }
        let pubkey = case["pubkey"].as_str().unwrap();
        let mut raw = Raw::connect(&master.url()).await;
        let hello = unsigned(
            "USER_HELLO",
            "mallory",
            TO_SERVER,
            json!({"client": "x", "pubkey": pubkey, "enc_pubkey": pubkey}),
        );
        raw.send(&hello).await;
        assert_eq!(raw.expect_error().await, "BAD_KEY", "{name}");
        assert!(raw.closed().await, "{name}: connection left open");
    }
    assert_eq!(directory_key(&master.url(), "alice", "mallory").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_registered_user_with_a_new_key_is_refused_and_the_key_kept() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    connect(&local.url(), "alice").await.close().await;
    let carol = user_key("carol");
    for url in [master.url(), local.url()] {
        let mut raw = Raw::connect(&url).await;
        raw.send(&signed(
            "USER_HELLO",
            "alice",
            TO_SERVER,
            hello_payload("alice", carol.public().to_b64()),
            &carol,
        ))
        .await;
        assert_eq!(raw.expect_error().await, "BAD_KEY");
        assert!(raw.closed().await);
    }
    let stored = directory_key(&master.url(), "bob", "alice").await.unwrap();
    assert_eq!(stored, user_key("alice").public().to_b64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_unsigned_hello_without_the_legacy_flag_is_refused() {
    let master = TestNode::master().await;
    let alice = user_key("alice");
    let mut raw = Raw::connect(&master.url()).await;
    let pk = alice.public().to_b64();
    raw.send(&unsigned(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        json!({"client": "ref", "pubkey": pk, "enc_pubkey": pk}),
    ))
    .await;
    assert_eq!(raw.expect_error().await, "INVALID_SIG");
    assert!(raw.closed().await);
    // With the flag, the same hello is admitted.
    let legacy = TestNode::master_with(|c| c.allow_legacy_clients = true).await;
    let mut raw = Raw::connect(&legacy.url()).await;
    raw.send(&unsigned(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        json!({"client": "ref", "pubkey": pk, "enc_pubkey": pk}),
    ))
    .await;
    raw.expect_kind("USER_WELCOME").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_hello_signed_by_another_key_is_refused() {
    let master = TestNode::master().await;
    let alice = user_key("alice");
    let bob = user_key("bob");
    let mut raw = Raw::connect(&master.url()).await;
    raw.send(&signed(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        hello_payload("alice", alice.public().to_b64()),
        &bob,
    ))
    .await;
    assert_eq!(raw.expect_error().await, "INVALID_SIG");
    assert!(raw.closed().await);
    // A stale hello (ts 10 minutes old) is refused too.
    let mut stale = hello_payload("alice", alice.public().to_b64());
    stale["ts"] = json!(socp::wire::now_ms() - 600_000);
    let mut raw = Raw::connect(&master.url()).await;
    raw.send(&signed("USER_HELLO", "alice", TO_SERVER, stale, &alice))
        .await;
    assert_eq!(raw.expect_error().await, "INVALID_SIG");
    // A hello naming another user id in its signed payload is refused.
    let mut raw = Raw::connect(&master.url()).await;
    raw.send(&signed(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        hello_payload("bob", alice.public().to_b64()),
        &alice,
    ))
    .await;
    assert_eq!(raw.expect_error().await, "NOT_ALLOWED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_replayed_hello_is_refused() {
    let master = TestNode::master().await;
    let alice = user_key("alice");
    let hello = signed(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        hello_payload("alice", alice.public().to_b64()),
        &alice,
    );
    let mut first = Raw::connect(&master.url()).await;
    first.send(&hello).await;
    first.expect_kind("USER_WELCOME").await;
    drop(first);
    master.wait_offline("alice").await;
    let mut replay = Raw::connect(&master.url()).await;
    replay.send(&hello).await;
    assert_eq!(replay.expect_error().await, "INVALID_SIG");
    assert!(replay.closed().await);
    // Even after a restart (the replay cache is persisted).
    let mut master = master;
    master.restart().await;
    let mut replay = Raw::connect(&master.url()).await;
    replay.send(&hello).await;
    assert_eq!(replay.expect_error().await, "INVALID_SIG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_spoofed_from_is_refused_and_the_session_kept() {
    let master = TestNode::master().await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let dm = content::seal_dm(
        &user_key("carol"),
        "carol",
        "bob",
        user_key("bob").public(),
        b"spoof",
        1,
    )
    .unwrap();
    // Authenticated as Alice's session, but claiming to be from Carol.
    let env = Message::MsgPrivate(dm).into_envelope("carol", "bob");
    alice.send_authenticated(env).await.unwrap();
    let (_, m) = expect(&mut alice, "ERROR", |_, m| matches!(m, Message::Error(_))).await;
    let Message::Error(e) = m else { unreachable!() };
    assert_eq!(e.code, "NOT_ALLOWED");
    // Alice is still connected, and the forged DM never reached Bob.
    dm_flows(&mut alice, &mut bob).await;
    let got = common::cluster::drain(&mut bob, std::time::Duration::from_millis(300)).await;
    assert!(
        got.iter()
            .all(|(_, m)| !matches!(m, Message::UserDeliver(d) if d.sender == "carol"))
    );
    // A user may not send server frames either.
    alice
        .send(
            TO_SERVER,
            &Message::UserAdvertise(socp::wire::messages::Presence {
                user_id: "alice".into(),
                location: master.id(),
                proof: None,
                extra: Default::default(),
            }),
        )
        .await
        .unwrap();
    let (_, m) = expect(&mut alice, "ERROR", |_, m| matches!(m, Message::Error(_))).await;
    assert!(matches!(m, Message::Error(e) if e.code == "NOT_ALLOWED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_forged_link_for_an_existing_server_id_is_refused() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut bob = connect(&local.url(), "bob").await;
    let mut alice = connect(&master.url(), "alice").await;
    master.wait_online(&["alice", "bob"]).await;
    let forger = PrivateKey::load(&cached_key("server-5")).unwrap();
    let mut raw = link_as(&master.url(), &local.id(), &forger).await;
    assert_eq!(raw.expect_error().await, "BAD_KEY");
    assert!(raw.closed().await);
    // A hello not signed by the key it presents is refused as well.
    let real = PrivateKey::load(&cached_key("server-4")).unwrap();
    let mut raw = Raw::connect(&master.url()).await;
    let pk = real.public().to_b64();
    raw.send(&signed(
        "PEER_HELLO_LINK",
        &socp::wire::ids::new_local_server_id(),
        TO_SERVER,
        json!({"host": "h", "port": 1, "pubkey": pk, "role": "local"}),
        &forger,
    ))
    .await;
    assert_eq!(raw.expect_error().await, "INVALID_SIG");
    // The real link is intact.
    assert!(master.status().await.linked.contains(&local.id()));
    dm_flows(&mut alice, &mut bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_rogue_server_cannot_draw_a_users_traffic() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut bob = connect(&local.url(), "bob").await;
    let mut alice = connect(&master.url(), "alice").await;
    master.wait_online(&["alice", "bob"]).await;

    let rogue_key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let rogue_id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &rogue_id, &rogue_key).await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    // The snapshot hands the rogue Bob's proof; it tries both without and with it.
    let bob_advert = loop {
        let env = rogue.expect_kind("USER_ADVERTISE").await;
        if env.payload["user_id"] == "bob" {
            break env;
        }
    };
    let proof = bob_advert.payload["proof"].clone();
    assert!(proof.is_object(), "relayed presence carries the proof");
    rogue
        .send(&signed(
            "USER_ADVERTISE",
            &rogue_id,
            "*",
            json!({"user_id": "bob", "location": rogue_id}),
            &rogue_key,
        ))
        .await;
    rogue
        .send(&signed(
            "USER_ADVERTISE",
            &rogue_id,
            "*",
            json!({"user_id": "bob", "location": rogue_id, "proof": proof}),
            &rogue_key,
        ))
        .await;
    // Claims for another location, from a server that is not the master, are refused too.
    rogue
        .send(&signed(
            "USER_ADVERTISE",
            &rogue_id,
            "*",
            json!({"user_id": "bob", "location": local.id(), "proof": proof}),
            &rogue_key,
        ))
        .await;
    rogue
        .send(&signed(
            "USER_REMOVE",
            &rogue_id,
            "*",
            json!({"user_id": "bob", "location": local.id()}),
            &rogue_key,
        ))
        .await;
    // Once the master has handled all of it, DMs still reach the real Bob,
    // and nothing reaches the rogue.
    rogue.barrier(&rogue_id, &rogue_key).await;
    dm_flows(&mut alice, &mut bob).await;
    dm_flows(&mut alice, &mut bob).await;
    while let Some(env) = rogue
        .recv_within(std::time::Duration::from_millis(300))
        .await
    {
        assert_ne!(env.kind, "PEER_DELIVER", "the rogue drew Bob's DM");
    }
    assert!(master.status().await.online.contains(&"bob".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c8_oversized_frame_is_refused_and_others_are_served() {
    let master = TestNode::master().await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let mut mallory = connect(&master.url(), "carol").await;
    let huge = format!(
        r#"{{"type":"USER_LIST_REQ","from":"carol","to":"server_*","ts":1,"payload":{{"pad":"{}"}},"sig":""}}"#,
        "x".repeat(2 << 20)
    );
    let _ = mallory.send_text(huge).await;
    let closed = tokio::time::timeout(common::cluster::WAIT, async {
        loop {
            match mallory.recv().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node kept a connection that sent 2 MiB");
    dm_flows(&mut alice, &mut bob).await;
    // Pre-hello too.
    let mut raw = Raw::connect(&master.url()).await;
    raw.send_text("y".repeat(2 << 20)).await;
    assert!(raw.closed().await);
    dm_flows(&mut bob, &mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_unknown_frame_types_are_refused() {
    let master = TestNode::master().await;
    // As a first frame: UNKNOWN_TYPE, then closed.
    for kind in ["DEBUG_DUMP", "ADMIN", "SHUTDOWN", "HEARTBEAT"] {
        let mut raw = Raw::connect(&master.url()).await;
        raw.send(&unsigned(kind, "alice", TO_SERVER, json!({})))
            .await;
        assert_eq!(raw.expect_error().await, "UNKNOWN_TYPE", "{kind}");
        assert!(raw.closed().await);
    }
    // In a session: UNKNOWN_TYPE, and the session goes on.
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let env = unsigned("DEBUG_DUMP", "alice", TO_SERVER, json!({"all": true}));
    alice.send_authenticated(env).await.unwrap();
    let (_, m) = expect(&mut alice, "ERROR", |_, m| matches!(m, Message::Error(_))).await;
    assert!(matches!(m, Message::Error(e) if e.code == "UNKNOWN_TYPE"));
    dm_flows(&mut alice, &mut bob).await;
}
