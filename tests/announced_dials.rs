//! A local dials the servers its master announces, but not without end: an
//! announced server whose address leads nowhere is given up after a bounded
//! number of failed dials, and dialed again when the master announces it
//! again (it linked to the master again).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{TestNode, cached_key};
use common::raw::{Raw, signed};
use serde_json::json;
use socp::crypto::PrivateKey;
use socp::wire::ids::TO_SERVER;
use tokio::net::TcpListener;

/// Larger than any other local id: the local dials it, not the reverse.
const ROGUE: &str = "server_ffffffff-ffff-4fff-bfff-ffffffffffff";

/// Links to the master at `master` as a `socp` local that says it is
/// dialed at `url`.
async fn link_announcing(master: &str, url: &str, key: &PrivateKey) -> Raw {
    let mut raw = Raw::connect(master).await;
    let payload = json!({"host": "127.0.0.1", "port": 1, "pubkey": key.public().to_b64(),
        "role": "local", "caps": ["socp-v1"], "url": url});
    raw.send(&signed("PEER_HELLO_LINK", ROGUE, TO_SERVER, payload, key))
        .await;
    raw.expect_kind("PEER_HELLO_LINK").await;
    raw
}

/// Keeps `link` alive (a heartbeat a second) until `dials` reaches `n` or
/// `limit` passes; the count reached.
async fn wait_dials(
    link: &mut Raw,
    key: &PrivateKey,
    dials: &AtomicUsize,
    n: usize,
    limit: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    while dials.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
        link.send(&signed("HEARTBEAT", ROGUE, TO_SERVER, json!({}), key))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    dials.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_server_that_never_answers_is_given_up_until_announced_again() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    assert!(local.id().as_str() < ROGUE);
    // An address that takes each connection and drops it.
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", sink.local_addr().unwrap());
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = sink.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let mut rogue = link_announcing(&master.url(), &url, &key).await;

    let max = 8; // dial::MAX_ANNOUNCED_FAILURES
    let reached = wait_dials(&mut rogue, &key, &dials, max, Duration::from_secs(60)).await;
    assert_eq!(reached, max, "the local dialed the announced address");
    // The backoff is at most 10 s: a dialer still at it dials again within 15.
    let after = wait_dials(&mut rogue, &key, &dials, max + 1, Duration::from_secs(15)).await;
    assert_eq!(
        after, max,
        "the local kept dialing a server that never answered"
    );

    // Announced again (it linked to the master again): dialed again.
    let mut again = link_announcing(&master.url(), &url, &key).await;
    let resumed = wait_dials(&mut again, &key, &dials, max + 1, Duration::from_secs(15)).await;
    // (It may dial more than once before the next look: its first
    // retries come sooner than the 1 s between looks.)
    assert!(resumed > max, "a new announce starts a new dialer");
}
