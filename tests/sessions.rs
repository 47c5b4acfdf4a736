//! Link sessions (`mac-v1`): negotiated in the hellos, frames then carry
//! `seq` and `mac` instead of an RSA signature; a forged, replayed or
//! unauthenticated frame closes the connection; `--no-mac` keeps RSA.

mod common;

use common::cluster::{TestNode, connect, expect, send_dm, user_key};
use common::raw::{Raw, hello_payload, signed};
use serde_json::json;
use socp::crypto::session::{self, MacSession};
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_the_welcome_are_macd_and_a_mesh_runs_on_sessions() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut alice = connect(&local.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    master.wait_online(&["alice", "bob"]).await;
    bob.send(TO_SERVER, &Message::UserListReq(Default::default()))
        .await
        .unwrap();
    let (env, _) = expect(&mut bob, "USER_LIST", |_, m| {
        matches!(m, Message::UserList(_))
    })
    .await;
    assert!(
        env.mac.is_some() && env.seq.is_some() && env.sig.is_empty(),
        "{env:?}"
    );
    // A DM across the (mac'd) link arrives, mac'd too.
    send_dm(&mut alice, "bob", b"hi").await;
    let (env, _) = expect(&mut bob, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    assert!(env.mac.is_some());
}

/// A raw user that negotiates a session by hand.
async fn session_user(url: &str) -> (Raw, MacSession) {
    let alice = user_key("alice");
    let mut raw = Raw::connect(url).await;
    let mut hello = hello_payload("alice", alice.public().to_b64());
    hello["caps"] = json!(["mac-v1"]);
    raw.send(&signed("USER_HELLO", "alice", TO_SERVER, hello, &alice))
        .await;
    let welcome = raw.expect_kind("USER_WELCOME").await;
    let wrapped = welcome.payload["session"]["wrapped"]
        .as_str()
        .expect("a session offer")
        .to_owned();
    let secret = session::accept(&alice, &wrapped).unwrap();
    let server = welcome.payload["server_id"].as_str().unwrap().to_owned();
    (raw, MacSession::new(&secret, "alice", &server, true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_or_unauthenticated_frames_close_the_session() {
    let master = TestNode::master().await;
    // A good frame is answered.
    let (mut raw, mut mac) = session_user(&master.url()).await;
    let mut list = Message::UserListReq(Default::default()).into_envelope("alice", TO_SERVER);
    mac.seal(&mut list).unwrap();
    raw.send(&list).await;
    raw.expect_kind("USER_LIST").await;
    // The same frame again (a replay): closed.
    raw.send(&list).await;
    assert!(raw.closed().await);

    // A forged mac: closed.
    let (mut raw, mut mac) = session_user(&master.url()).await;
    let mut list = Message::UserListReq(Default::default()).into_envelope("alice", TO_SERVER);
    mac.seal(&mut list).unwrap();
    list.to = "server_*x".into();
    raw.send(&list).await;
    assert!(raw.closed().await);

    // A signed frame after the session started: closed.
    let (mut raw, mut mac) = session_user(&master.url()).await;
    let mut list = Message::UserListReq(Default::default()).into_envelope("alice", TO_SERVER);
    mac.seal(&mut list).unwrap();
    raw.send(&list).await;
    raw.expect_kind("USER_LIST").await;
    raw.send(&signed(
        "USER_LIST_REQ",
        "alice",
        TO_SERVER,
        json!({}),
        &user_key("alice"),
    ))
    .await;
    assert!(raw.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mac_nodes_sign_every_frame() {
    let master = TestNode::master_with(|c| c.mac = false).await;
    let mut bob = connect(&master.url(), "bob").await;
    bob.send(TO_SERVER, &Message::UserListReq(Default::default()))
        .await
        .unwrap();
    let (env, _) = expect(&mut bob, "USER_LIST", |_, m| {
        matches!(m, Message::UserList(_))
    })
    .await;
    assert!(env.mac.is_none() && !env.sig.is_empty());
}
