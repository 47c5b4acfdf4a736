//! Files across crashes (issue 14, item 2), through the binaries: nodes
//! as real processes killed with SIGKILL mid-transfer and restarted on the
//! same database, clients as `socp client --json`. A file either arrives
//! whole (and its sender sees it delivered ✓✓) or its sender is told it was
//! not sent and can `/file` it again: never a silent "sent file" for
//! something that never arrived.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::clientproc::{ClientProc, TermProc};
use common::procs::{NodeProc, start_node};
use serde_json::Value;

/// Big enough that a debug build is still sending it when the kill comes.
const FILE_BYTES: usize = 12 << 20;
/// Received bytes (in the receiver's temporary file) at which to kill.
const KILL_AT: u64 = 1 << 20;
/// How long the rest of a file may take after a restart: a debug build on
/// a busy machine reads the custody rows back at about 1 MB/s.
const AFTER_RESTART: Duration = Duration::from_secs(90);

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

fn write_file(path: &Path, len: usize, seed: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// A master and two locals: alice on l1, bob on l2.
struct Mesh {
    _root: tempfile::TempDir,
    dir: PathBuf,
    nodes: Vec<NodeProc>,
    alice: ClientProc,
    bob: ClientProc,
}

async fn mesh() -> Mesh {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_owned();
    let master = start_node(dir.join("m"), "master", "server-0", &[]);
    let master_arg = vec!["--master-url".to_owned(), master.url()];
    let l1 = start_node(dir.join("l1"), "local", "server-1", &master_arg);
    let l2 = start_node(dir.join("l2"), "local", "server-2", &master_arg);
    let mut bob = ClientProc::start(&dir.join("bob"), "bob", &l2.url()).await;
    let mut alice = ClientProc::start(&dir.join("alice"), "alice", &l1.url()).await;
    alice.cmd("/dbget bob").await;
    alice.expect("pubkey", is("pubkey")).await;
    bob.cmd("/dbget alice").await;
    bob.expect("pubkey", is("pubkey")).await;
    Mesh {
        _root: root,
        dir,
        nodes: vec![master, l1, l2],
        alice,
        bob,
    }
}

/// Bytes of the largest partial file in `downloads` (0 if none).
fn partial_bytes(downloads: &Path) -> u64 {
    std::fs::read_dir(downloads)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0)
}

/// Waits until bob's client has received `at` bytes of the file (and
/// not all of it), then kills node `which` and starts it again.
async fn kill_mid_transfer(m: &mut Mesh, which: usize, at: u64) {
    let downloads = m.bob.downloads();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = partial_bytes(&downloads);
        if got >= at {
            assert!(got < FILE_BYTES as u64, "the whole file arrived first");
            break;
        }
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let node = &mut m.nodes[which];
    tokio::task::block_in_place(|| {
        node.kill9();
        std::thread::sleep(Duration::from_millis(300));
        node.restart().unwrap();
    });
}

/// The first event matching `pred` within `span` (the others are kept).
async fn wait_for(
    c: &mut ClientProc,
    what: &str,
    span: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + span;
    loop {
        let events = c.collect_for(Duration::from_millis(250)).await;
        let mut found = None;
        for e in events {
            if found.is_none() && pred(&e) {
                found = Some(e);
            } else {
                c.seen.push(e);
            }
        }
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no {what} within {span:?}; saw {:?}",
            c.user,
            c.seen
        );
    }
}

/// Bob's file event for `name`, checked against `data`.
async fn expect_file(bob: &mut ClientProc, name: &str, data: &[u8]) {
    let ev = wait_for(bob, "file", AFTER_RESTART, |e| {
        e["event"] == "file" && e["name"] == name
    })
    .await;
    assert_eq!(
        (ev["sha256_ok"].as_bool(), ev["verified"].as_bool()),
        (Some(true), Some(true)),
        "{ev}"
    );
    let got = std::fs::read(ev["path"].as_str().unwrap()).unwrap();
    assert!(got == data, "the saved file differs from the one sent");
}

/// The reproduction: `kill -9` of the recipient's node while the
/// file streams. Before: bob saw "transfer cut off by the disconnect;
/// nothing was saved", alice only "sent file", and nothing arrived after
/// the restart. Now bob gets the whole file once his node is back (the
/// frames his node had not handed on are in its custody on disk; his client
/// kept the verified prefix), and alice sees it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_by_a_crash_of_the_recipients_node_arrives_after_the_restart() {
    let mut m = mesh().await;
    let src = m.dir.join("big.bin");
    let data = write_file(&src, FILE_BYTES, 3);
    m.alice.cmd(&format!("/file bob {}", src.display())).await;
    kill_mid_transfer(&mut m, 2, KILL_AT).await;
    expect_file(&mut m.bob, "big.bin", &data).await;
    let sent = m
        .alice
        .expect("sent", |e| e["event"] == "sent" && e["kind"] == "file")
        .await;
    let id = sent["msg_id"].clone();
    let delivered = m
        .alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["msg_id"] == id
        })
        .await;
    assert_eq!(
        (delivered["status"].as_str(), delivered["to"].as_str()),
        (Some("delivered"), Some("bob")),
        "{delivered}"
    );
    let bob_rest = m.bob.drain(Duration::from_millis(500)).await;
    assert!(
        bob_rest.iter().all(|e| e["event"] != "error"),
        "bob: {bob_rest:?}"
    );
    assert!(
        m.alice.seen.iter().all(|e| e["event"] != "not_sent"),
        "alice: {:?}",
        m.alice.seen
    );
}

/// A file's delivery state reads like a DM's: sent ✓ (the node has all of
/// it), then delivered ✓✓ (the recipient's client has saved it), both under
/// the file's `msg_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_sent_then_delivered_like_a_dm() {
    let mut m = mesh().await;
    let src = m.dir.join("notes.bin");
    let data = write_file(&src, 300_000, 5);
    m.alice.cmd(&format!("/file bob {}", src.display())).await;
    expect_file(&mut m.bob, "notes.bin", &data).await;
    let sent = m
        .alice
        .expect("sent", |e| e["event"] == "sent" && e["kind"] == "file")
        .await;
    assert_eq!(sent["to"], "bob");
    let id = sent["msg_id"].clone();
    let delivered = m
        .alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["msg_id"] == id
        })
        .await;
    assert_eq!(delivered["status"], "delivered", "{delivered}");
}

/// `kill -9` of the sender's node while the file streams: alice's client
/// says the file waits (never "sent" before the node has all of it), sends
/// the rest from the first frame the node had not acknowledged once its
/// node is back, and bob gets the whole file once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_by_a_crash_of_the_senders_node_goes_on_after_the_restart() {
    let mut m = mesh().await;
    let src = m.dir.join("big.bin");
    let data = write_file(&src, FILE_BYTES, 4);
    m.alice.cmd(&format!("/file bob {}", src.display())).await;
    // As soon as the first chunk is through: alice's client is still
    // streaming the rest to its node.
    kill_mid_transfer(&mut m, 1, 1).await;
    expect_file(&mut m.bob, "big.bin", &data).await;
    let sent = m
        .alice
        .expect("sent", |e| e["event"] == "sent" && e["kind"] == "file")
        .await;
    let id = sent["msg_id"].clone();
    m.alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["msg_id"] == id && e["status"] == "delivered"
        })
        .await;
    let alice_rest = m.alice.drain(Duration::from_millis(500)).await;
    assert!(
        alice_rest.iter().all(|e| e["event"] != "not_sent"),
        "alice: {alice_rest:?}"
    );
    // The cut was said, as waiting for the reconnect.
    assert!(
        alice_rest
            .iter()
            .any(|e| e["event"] == "pending" && e["msg_id"] == id),
        "alice: {alice_rest:?}"
    );
    // Once: no second copy turns up.
    let bob_rest = m.bob.drain(Duration::from_secs(1)).await;
    assert!(
        bob_rest
            .iter()
            .all(|e| e["event"] != "file" && e["event"] != "error"),
        "bob: {bob_rest:?}"
    );
}

/// The same states as plain terminal lines, under one short id: queued
/// while a cut transfer waits for the reconnect, sent ✓, delivered ✓✓.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_shows_a_cut_file_queued_then_sent_then_delivered() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let master = start_node(dir.join("m"), "master", "server-0", &[]);
    let master_arg = vec!["--master-url".to_owned(), master.url()];
    let mut l1 = start_node(dir.join("l1"), "local", "server-1", &master_arg);
    let l2 = start_node(dir.join("l2"), "local", "server-2", &master_arg);
    let mut bob = ClientProc::start(&dir.join("bob"), "bob", &l2.url()).await;
    let mut alice = TermProc::start(&dir.join("alice"), "alice", &l1.url()).await;
    bob.cmd("/dbget alice").await;
    bob.expect("pubkey", is("pubkey")).await;
    alice.cmd("/dbget bob").await;
    alice
        .expect_line("bob's key", |l| l.contains("bob's key"))
        .await;
    let src = dir.join("big.bin");
    let data = write_file(&src, FILE_BYTES, 6);
    alice.cmd(&format!("/file bob {}", src.display())).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_bytes(&bob.downloads()) == 0 {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| {
        l1.kill9();
        std::thread::sleep(Duration::from_millis(300));
        l1.restart().unwrap();
    });
    expect_file(&mut bob, "big.bin", &data).await;
    let queued = alice
        .expect_line("queued", |l| {
            l.contains("queued (") && l.contains("for bob: big.bin: the connection dropped")
        })
        .await;
    let id = queued
        .split_once("queued (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.to_owned())
        .unwrap();
    alice
        .expect_line("sent", |l| {
            l.contains(&format!("sent ({id}) file to bob")) && l.contains('✓')
        })
        .await;
    alice
        .expect_line("delivered", |l| {
            l.contains(&format!("delivered ({id}) to bob ✓✓"))
        })
        .await;
    let lines = alice.drain(Duration::from_millis(300)).await;
    assert!(lines.iter().all(|l| !l.contains("NOT SENT")), "{lines:#?}");
    alice.quit().await;
}

/// A file for a user who is offline is stored (`delivery` `queued`, as for a
/// DM), then delivered ✓✓ once they connect and have it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_for_an_offline_user_is_stored_then_delivered() {
    let Mesh {
        _root,
        dir,
        nodes,
        mut alice,
        bob,
    } = mesh().await;
    bob.quit().await;
    // Until alice's server no longer sees bob online.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        alice.cmd("/list").await;
        let list = alice.expect("list", is("list")).await;
        let users = list["users"].as_array().cloned().unwrap_or_default();
        if !users.iter().any(|u| u == "bob") {
            break;
        }
        assert!(Instant::now() < deadline, "bob still listed: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let src = dir.join("later.bin");
    let data = write_file(&src, 200_000, 8);
    alice.cmd(&format!("/file bob {}", src.display())).await;
    let sent = alice
        .expect("sent", |e| e["event"] == "sent" && e["kind"] == "file")
        .await;
    let id = sent["msg_id"].clone();
    alice
        .expect("stored", |e| {
            e["event"] == "delivery" && e["msg_id"] == id && e["status"] == "queued"
        })
        .await;
    let mut bob = ClientProc::start(&dir.join("bob"), "bob", &nodes[2].url()).await;
    expect_file(&mut bob, "later.bin", &data).await;
    alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["msg_id"] == id && e["status"] == "delivered"
        })
        .await;
}

/// `/file` while not connected: queued (pending, "not connected"), sent
/// once the connection is back, then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_while_disconnected_is_queued_then_goes_out() {
    let mut m = mesh().await;
    tokio::task::block_in_place(|| m.nodes[1].kill9());
    m.alice.expect("disconnected", is("disconnected")).await;
    let src = m.dir.join("queued.bin");
    let data = write_file(&src, 200_000, 9);
    m.alice.cmd(&format!("/file bob {}", src.display())).await;
    let pending = m
        .alice
        .expect("pending", |e| {
            e["event"] == "pending" && e["reason"] == "queued.bin: not connected"
        })
        .await;
    assert!(
        m.alice.seen.iter().all(|e| e["event"] != "sent"),
        "{:?}",
        m.alice.seen
    );
    tokio::task::block_in_place(|| m.nodes[1].restart().unwrap());
    expect_file(&mut m.bob, "queued.bin", &data).await;
    let id = pending["msg_id"].clone();
    m.alice
        .expect("sent", |e| e["event"] == "sent" && e["msg_id"] == id)
        .await;
    m.alice
        .expect("delivered", |e| {
            e["event"] == "delivery" && e["msg_id"] == id && e["status"] == "delivered"
        })
        .await;
}
