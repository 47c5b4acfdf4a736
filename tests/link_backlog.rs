//! A server link is sent what a link-up owes it (a local's users, each
//! registered and advertised to its master; the master's snapshot of
//! everyone else to a local that holds full presence) at the pace its peer
//! reads, however many users that is.
//!
//! Review finding M4: all of it was queued in one step, and a link's queue
//! holds 8,192 frames, so a local with more than ~4,096 users online had
//! its master link dropped as "slow" at every re-link, then redialled, in a
//! loop: after a master restart its users never came back into the mesh.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{TestNode, user_key};
use common::raw::{hello_payload, signed};
use futures_util::{SinkExt, StreamExt};
use socp::crypto::PrivateKey;
use socp::node::NodeConfig;
use socp::wire::Envelope;
use socp::wire::ids::TO_SERVER;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// More than a link's queue holds as registrations and adverts (2 frames
/// per user, 8,192 frames), with room for what the link's writer sends
/// while they are queued.
const USERS: usize = 6_000;
/// How long the mesh may take to learn them all again.
const PATIENCE: Duration = Duration::from_secs(120);

/// Room for thousands of users from the test's few addresses.
fn roomy(c: &mut NodeConfig) {
    c.limits.max_conns_per_ip = USERS + 100;
    c.limits.max_conns = 4 * USERS;
    c.admission.per_address_hour = 0;
    c.admission.per_server_hour = 0;
}

/// Hellos for users `u00000..`, signed on the blocking pool (one shared
/// key: an id binds to a key, not the other way round).
async fn hellos(key: &Arc<PrivateKey>, n: usize) -> Vec<String> {
    let pubkey = key.public().to_b64().to_owned();
    let mut tasks = JoinSet::new();
    let threads = 4;
    for t in 0..threads {
        let (key, pubkey) = (key.clone(), pubkey.clone());
        tasks.spawn_blocking(move || {
            (t..n)
                .step_by(threads)
                .map(|i| {
                    let user = format!("u{i:05}");
                    let env = signed(
                        "USER_HELLO",
                        &user,
                        TO_SERVER,
                        hello_payload(&user, &pubkey),
                        &key,
                    );
                    (i, env.to_json())
                })
                .collect::<Vec<_>>()
        });
    }
    let mut all = vec![String::new(); n];
    while let Some(done) = tasks.join_next().await {
        for (i, hello) in done.unwrap() {
            all[i] = hello;
        }
    }
    all
}

/// Logs `hellos` in at `node`, each over an in-memory stream served as if
/// accepted (no file descriptors), and keeps them connected, reading and
/// dropping what the node sends, until `users` is dropped.
async fn log_in(node: &TestNode, hellos: Vec<String>, users: &mut JoinSet<()>) {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let n = hellos.len();
    for (i, hello) in hellos.into_iter().enumerate() {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (i / 1_000) as u8);
        node.node()
            .serve_connected(theirs, SocketAddr::new(ip.into(), 1));
        let (url, done) = (node.url(), done_tx.clone());
        users.spawn(async move {
            let (mut ws, _) = tokio_tungstenite::client_async(url, ours)
                .await
                .expect("WebSocket handshake");
            ws.send(WsMessage::text(hello)).await.expect("hello sent");
            while let Some(Ok(frame)) = ws.next().await {
                let WsMessage::Text(text) = frame else {
                    continue;
                };
                let env = Envelope::parse(text.as_str()).expect("a frame");
                match env.kind.as_str() {
                    "USER_WELCOME" => {
                        drop(permit);
                        let _ = done.send(Ok(()));
                        // From here on, it only reads.
                        break;
                    }
                    "ERROR" => {
                        let _ = done.send(Err(text.to_string()));
                        return;
                    }
                    _ => {}
                }
            }
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
    for _ in 0..n {
        match done_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("a user was refused: {e}"),
            None => panic!("the users' tasks ended early"),
        }
    }
}

/// Waits until `node` lists `n` users online; false after [`PATIENCE`].
async fn wait_count(node: &TestNode, n: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if node.status().await.online.len() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_users_at_a_local_come_back_into_the_mesh_after_a_master_restart() {
    let mut master = TestNode::master_with(roomy).await;
    let local = TestNode::local_with(&master.url(), roomy).await;
    // Holds everyone's presence (the test cluster's default): it gets the
    // master's whole snapshot when its link forms.
    let other = TestNode::local_with(&master.url(), roomy).await;
    local.wait_linked(1).await;
    other.wait_linked(1).await;

    let key = user_key("alice");
    let hellos = hellos(&key, USERS).await;
    let mut users = JoinSet::new();
    let started = Instant::now();
    log_in(&local, hellos, &mut users).await;
    eprintln!("{USERS} users logged in in {:?}", started.elapsed());
    assert!(wait_count(&master, USERS).await, "the master learns them");
    assert!(
        wait_count(&other, USERS).await,
        "the other local learns them"
    );

    master.restart().await;
    let back = Instant::now();
    let master_knows = wait_count(&master, USERS).await;
    let other_knows = wait_count(&other, USERS).await;
    let (local_status, master_status, other_status) = (
        local.status().await,
        master.status().await,
        other.status().await,
    );
    eprintln!(
        "after the restart, in {:?}: the master lists {}, the other local {}; dropped as slow: local {}, master {}",
        back.elapsed(),
        master_status.online.len(),
        other_status.online.len(),
        local_status.slow_disconnects,
        master_status.slow_disconnects,
    );
    assert_eq!(
        local_status.slow_disconnects, 0,
        "the local dropped its master link as slow"
    );
    assert_eq!(
        master_status.slow_disconnects, 0,
        "the master dropped a link as slow"
    );
    assert!(
        master_knows,
        "the master lists every user of the local again"
    );
    assert!(other_knows, "the other local lists every user again");
    assert!(
        local_status.linked.contains(&master.id()),
        "{:?}",
        local_status.linked
    );
    users.abort_all();
}
