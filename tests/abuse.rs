//! Abuse resistance (issue 11, PROTOCOL.md C10-C15): what one user, one
//! server or a flood can do to everyone else, tried against real nodes.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, connect};
use common::flood::{eventually, flood};

/// Two users on two locals flood each other through the master at once:
/// every link carries heavy traffic both ways. A connection that cannot read
/// while a write is blocked wedges the link for good (both ends' buffers
/// full, each waiting for the other to read). Everything must arrive, and
/// the nodes must stop promptly even in the middle of a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_flooded_both_ways_keeps_flowing_and_stops_on_request() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    let alice = connect(&l1.url(), "alice").await;
    let bob = connect(&l2.url(), "bob").await;
    master.wait_online(&["alice", "bob"]).await;
    l1.wait_online(&["bob"]).await;
    l2.wait_online(&["alice"]).await;

    const N: usize = 600;
    const BYTES: usize = 48 << 10; // ~64 KiB frames: 38 MB each way
    let a = flood(alice, "bob", N, BYTES, "a");
    let b = flood(bob, "alice", N, BYTES, "b");
    let all_in = eventually(Duration::from_secs(60), || {
        a.received() == N && b.received() == N
    })
    .await;
    let (sent_a, sent_b, got_a, got_b) = (a.sent(), b.sent(), a.received(), b.received());
    let ra = a.stop().await;
    let rb = b.stop().await;
    assert!(
        all_in,
        "after 60 s: alice sent {sent_a} and got {got_a} of {N}; bob sent {sent_b} and got {got_b} of {N}; errors {:?} {:?}",
        ra.errors, rb.errors
    );
    drop((master, l1, l2));
}

/// A node stops on request while links are saturated both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_stop_promptly_during_a_two_way_flood() {
    let mut master = TestNode::master().await;
    let mut l1 = TestNode::local(&master.url()).await;
    let mut l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    let alice = connect(&l1.url(), "alice").await;
    let bob = connect(&l2.url(), "bob").await;
    l1.wait_online(&["bob"]).await;
    l2.wait_online(&["alice"]).await;
    let a = flood(alice, "bob", 100_000, 48 << 10, "a");
    let b = flood(bob, "alice", 100_000, 48 << 10, "b");
    // Let the buffers fill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in [&mut l1, &mut master, &mut l2] {
        let stopped = tokio::time::timeout(Duration::from_secs(10), node.stop()).await;
        assert!(
            stopped.is_ok(),
            "a node did not stop within 10 s of being asked during a flood"
        );
    }
    a.stop().await;
    b.stop().await;
}
