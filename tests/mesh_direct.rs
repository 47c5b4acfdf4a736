//! The master off the data path, with real processes: two locals given only
//! the master's URL learn each other from it and link directly; with the
//! master killed (SIGKILL), their users keep exchanging DMs; what was sent
//! meanwhile to a user online nowhere reaches her once the master is back,
//! exactly once.

mod common;

use std::time::{Duration, Instant};

use common::clientproc::ClientProc;
use common::procs::{NodeProc, start_node};
use serde_json::Value;

/// How long the locals get to find and link each other.
const LINK_WAIT: Duration = Duration::from_secs(30);

/// Waits until `node` logged a link up with the server `id` `times` times.
fn wait_link_up(node: &NodeProc, id: &str, times: usize) -> bool {
    let deadline = Instant::now() + LINK_WAIT;
    while Instant::now() < deadline {
        let ups = node
            .log_lines()
            .iter()
            .filter(|l| l.contains("link up") && l.contains(id))
            .count();
        if ups >= times {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The texts of the DMs among `events`, with their sender.
fn dms(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "dm")
        .map(|e| {
            (
                e["from"].as_str().unwrap_or_default().to_owned(),
                e["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Collects events until `n` DMs arrived (or a minute passed).
async fn collect_dms(c: &mut ClientProc, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n && Instant::now() < deadline {
        got.extend(dms(&c.collect_for(Duration::from_millis(200)).await));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_between_linked_locals_flow_with_the_master_down_and_queued_ones_arrive_once() {
    master_down(&["--presence-cache", "0"]).await;
}

/// The same with locals that hold presence on demand (`--presence-cache`,
/// the default): what they looked up before the master died keeps them
/// talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_presence_on_demand_dms_flow_with_the_master_down_too() {
    master_down(&[]).await;
}

async fn master_down(local_flags: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let mut master = start_node(root.path().join("m"), "master", "server-0", &[]);
    let mut to_master = vec!["--master-url".to_owned(), master.url()];
    to_master.extend(local_flags.iter().map(|f| (*f).to_owned()));
    let l1 = start_node(root.path().join("l1"), "local", "server-1", &to_master);
    let l2 = start_node(root.path().join("l2"), "local", "server-2", &to_master);
    let linked = tokio::task::block_in_place(|| wait_link_up(&l1, &l2.id, 1));
    assert!(
        linked,
        "the locals linked directly, announced by the master"
    );

    let mut alice = ClientProc::start(&root.path().join("alice"), "alice", &l1.url()).await;
    let mut bob = ClientProc::start(&root.path().join("bob"), "bob", &l2.url()).await;
    let carol_dir = root.path().join("carol");
    let carol = ClientProc::start(&carol_dir, "carol", &l2.url()).await;
    carol.quit().await;
    for target in ["bob", "carol"] {
        alice.cmd(&format!("/dbget {target}")).await;
        alice.expect("pubkey", |e| e["event"] == "pubkey").await;
    }
    bob.cmd("/dbget alice").await;
    bob.expect("pubkey", |e| e["event"] == "pubkey").await;
    // Online through the master, then direct: one DM each way first.
    alice.cmd("/msg bob before").await;
    assert_eq!(
        collect_dms(&mut bob, 1).await,
        [("alice".to_owned(), "before".to_owned())]
    );
    // Its path (through the master, just after the start) is drained.
    alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["status"] == "delivered"
        })
        .await;

    tokio::task::block_in_place(|| master.kill9());
    for i in 0..5 {
        alice.cmd(&format!("/msg bob down {i}")).await;
        bob.cmd(&format!("/msg alice back {i}")).await;
    }
    for i in 0..3 {
        alice.cmd(&format!("/msg carol queued {i}")).await;
    }
    let to_bob = collect_dms(&mut bob, 5).await;
    let to_alice = collect_dms(&mut alice, 5).await;
    let expected = |from: &str, what: &str| -> Vec<(String, String)> {
        (0..5)
            .map(|i| (from.to_owned(), format!("{what} {i}")))
            .collect()
    };
    assert_eq!(
        to_bob,
        expected("alice", "down"),
        "alice -> bob, master down"
    );
    assert_eq!(
        to_alice,
        expected("bob", "back"),
        "bob -> alice, master down"
    );

    tokio::task::block_in_place(|| master.restart().unwrap());
    let relinked = tokio::task::block_in_place(|| wait_link_up(&l1, &master.id, 2));
    assert!(relinked, "l1 linked to the master again");
    let mut carol = ClientProc::start(&carol_dir, "carol", &l2.url()).await;
    let mut got = collect_dms(&mut carol, 3).await;
    // Anything repeated would show up now.
    got.extend(dms(&carol.drain(Duration::from_secs(3)).await));
    let queued: Vec<(String, String)> = (0..3)
        .map(|i| ("alice".to_owned(), format!("queued {i}")))
        .collect();
    assert_eq!(got, queued, "each queued DM arrives once, in order");
    let again = dms(&bob.drain(Duration::from_millis(500)).await);
    assert!(again.is_empty(), "bob saw DMs twice: {again:?}");
}
