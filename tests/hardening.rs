//! Abuse limits, metrics and graceful shutdown: each limit answers with its
//! error and the node keeps serving everyone else.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, connect, expect, expect_dm, send_dm, user_key};
use common::procs::start_node;
use common::raw::Raw;
use socp::content;
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::{FileMode, FileStart, Message};

async fn list_works(s: &mut socp::client::Session) {
    s.send(TO_SERVER, &Message::UserListReq(Default::default()))
        .await
        .unwrap();
    expect(s, "USER_LIST", |_, m| matches!(m, Message::UserList(_))).await;
}

fn error_code(m: &Message) -> Option<&str> {
    match m {
        Message::Error(e) => Some(&e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_frame_rate_is_limited_and_others_are_not() {
    let master = TestNode::master_with(|c| {
        c.limits.user_rate = 5.0;
        c.limits.user_burst = 5.0;
    })
    .await;
    let mut noisy = connect(&master.url(), "alice").await;
    let mut calm = connect(&master.url(), "bob").await;
    for _ in 0..20 {
        noisy
            .send(TO_SERVER, &Message::UserListReq(Default::default()))
            .await
            .unwrap();
    }
    let (_, m) = expect(&mut noisy, "RATE_LIMITED", |_, m| {
        error_code(m) == Some("RATE_LIMITED")
    })
    .await;
    assert!(matches!(m, Message::Error(e) if e.detail.contains("slow down")));
    list_works(&mut calm).await;
    // The limited user is still connected and served once it slows down
    // (to one request every 250 ms, under its rate of 5 a second).
    let _ = common::cluster::drain(&mut noisy, Duration::from_millis(200)).await;
    let deadline = tokio::time::Instant::now() + common::cluster::WAIT;
    loop {
        noisy
            .send(TO_SERVER, &Message::UserListReq(Default::default()))
            .await
            .unwrap();
        let (_, m) = expect(&mut noisy, "USER_LIST or RATE_LIMITED", |_, m| {
            matches!(m, Message::UserList(_)) || error_code(m) == Some("RATE_LIMITED")
        })
        .await;
        if matches!(m, Message::UserList(_)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a user that slowed down is still refused"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_bounded() {
    let master = TestNode::master_with(|c| c.limits.max_conns_per_ip = 2).await;
    let mut a = connect(&master.url(), "alice").await;
    let _b = connect(&master.url(), "bob").await;
    let mut third = Raw::connect(&master.url()).await;
    assert_eq!(third.expect_error().await, "RATE_LIMITED");
    assert!(third.closed().await);
    list_works(&mut a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let master = TestNode::master_with(|c| c.limits.hello_timeout = Duration::from_secs(1)).await;
    let mut silent = Raw::connect(&master.url()).await;
    assert_eq!(silent.expect_error().await, "TIMEOUT");
    assert!(silent.closed().await);
    let mut alice = connect(&master.url(), "alice").await;
    list_works(&mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_group_shares_and_files_are_refused() {
    let master = TestNode::master_with(|c| {
        c.limits.max_group_members = 2;
        c.limits.max_file_size = 1000;
    })
    .await;
    let mut alice = connect(&master.url(), "alice").await;
    let members: Vec<(String, socp::crypto::PublicKey)> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| (u.to_string(), user_key(u).public().clone()))
        .collect();
    let (_, share) =
        content::new_group_share(&user_key("alice"), "alice", "group_big", &members).unwrap();
    alice
        .send(TO_SERVER, &Message::GroupKeyShare(share))
        .await
        .unwrap();
    let (_, m) = expect(&mut alice, "TOO_LARGE", |_, m| error_code(m).is_some()).await;
    assert_eq!(error_code(&m), Some("TOO_LARGE"));
    connect(&master.url(), "bob").await.close().await;
    let start = FileStart {
        file_id: "f".into(),
        name: "big.bin".into(),
        size: 2000,
        sha256: "00".into(),
        mode: FileMode::Dm,
        group_id: None,
        user_id: None,
        content_sig: None,
        msg_id: None,
        extra: Default::default(),
    };
    alice.send("bob", &Message::FileStart(start)).await.unwrap();
    let (_, m) = expect(&mut alice, "TOO_LARGE", |_, m| error_code(m).is_some()).await;
    assert!(
        matches!(&m, Message::Error(e) if e.code == "TOO_LARGE" && e.detail.contains("file limit")),
        "{m:?}"
    );
    list_works(&mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_lists_the_counters_after_traffic() {
    let master = TestNode::master_with(|c| c.metrics = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    send_dm(&mut alice, "bob", b"hi").await;
    expect(&mut bob, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    let mut raw = Raw::connect(&master.url()).await; // a refused hello, counted
    raw.send_text("{}".into()).await;
    let _ = raw.closed().await;
    let body = master.metrics().await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "socp_connections 2",
        "socp_users_online 2",
        "socp_frames_in_total{type=\"MSG_PRIVATE\"} 1",
        "socp_frames_out_total{type=\"USER_DELIVER\"} 1",
        "socp_refused_total{reason=\"BAD_FRAME\"} 1",
        "socp_custody_frames",
        "socp_mailbox_frames 0",
        "socp_rsa_operations_total",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_five_seconds_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut master = start_node(root.path().join("m"), "master", "server-0", &[]);
    connect(&master.url(), "bob").await.close().await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut dm = content::seal_dm(
        alice.key(),
        "alice",
        "bob",
        user_key("bob").public(),
        b"kept",
        1,
    )
    .unwrap();
    dm.msg_id = Some("kept-1".into());
    alice.send("bob", &Message::MsgPrivate(dm)).await.unwrap();
    expect(
        &mut alice,
        "queued receipt",
        |_, m| matches!(m, Message::Receipt(r) if r.status == "queued"),
    )
    .await;
    let started = std::time::Instant::now();
    let status = master.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    master.restart().unwrap();
    let mut bob = connect(&master.url(), "bob").await;
    assert_eq!(expect_dm(&mut bob, &user_key("bob")).await, b"kept");
}

/// A master that takes the TCP connection and never answers the WebSocket
/// upgrade does not stall the local's dialer: the connect is timed like the
/// hello answer, and the local dials again (review finding: it waited for
/// good on the first connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_never_answers_the_upgrade_is_dialed_again() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", silent.local_addr().unwrap());
    let _local = TestNode::local(&url).await;
    let mut held = Vec::new();
    let deadline = Duration::from_secs(30);
    let accepts = tokio::time::timeout(deadline, async {
        while held.len() < 2 {
            let (sock, _) = silent.accept().await.unwrap();
            held.push(sock); // kept open, never answered
        }
    })
    .await;
    assert!(
        accepts.is_ok(),
        "the local dialed {} time(s) in {deadline:?}: its dialer is stuck on a connection that never answers",
        held.len()
    );
}
