//! The store under pressure (PROTOCOL.md C14): with the master's database
//! on a full filesystem, nothing is acknowledged that is not on disk, the
//! sender is told `STORAGE`, a resend once there is room is written and
//! acknowledged, and after kill -9 every acknowledged DM is delivered; a
//! registration made while the disk is full does not leave a session on an
//! unpinned id (and one that the write-ahead log had room for is pinned).
//!
//! The filesystem is a small tmpfs (tests run as root here and in CI); where
//! mounting is impossible the tests say so and return.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{connect, expect, user_key, wait_until};
use common::procs::start_node;
use common::tmpfs::Tmpfs;
use socp::client::{Session, SessionError};
use socp::wire::messages::Message;

/// A DM from `from` to `to` with a fixed `msg_id`, so that it can be sent again.
fn sealed(from: &Session, to: &str, text: &[u8]) -> (String, Message) {
    let mut dm = socp::content::seal_dm(
        from.key(),
        from.user(),
        to,
        user_key(to).public(),
        text,
        socp::wire::now_ms(),
    )
    .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    dm.msg_id = Some(id.clone());
    (id, Message::MsgPrivate(dm))
}

/// What the node answered about each of `ids`: true for an `ACK`, false
/// for `ERROR STORAGE`. Fails if one gets neither within the wait, or both.
async fn answers(s: &mut Session, ids: &BTreeSet<String>) -> BTreeMap<String, bool> {
    let mut got: BTreeMap<String, bool> = BTreeMap::new();
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        while got.len() < ids.len() {
            let Ok(Some((_, m))) = s.recv().await else {
                panic!("{}: connection lost while waiting for answers", s.user());
            };
            match m {
                Message::Ack(a) => {
                    for id in a.msg_ids.into_iter().filter(|i| ids.contains(i)) {
                        assert_ne!(
                            got.insert(id.clone(), true),
                            Some(false),
                            "{id}: ACK after STORAGE"
                        );
                    }
                }
                Message::Error(e) if e.code == "STORAGE" => {
                    let id = e
                        .extra
                        .get("msg_id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_else(|| panic!("a STORAGE error names no msg_id: {}", e.detail));
                    assert_ne!(
                        got.insert(id.to_owned(), false),
                        Some(true),
                        "{id}: STORAGE after ACK"
                    );
                }
                Message::Error(e) => panic!("unexpected error {}: {}", e.code, e.detail),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} of {} DMs were neither acknowledged nor refused with STORAGE (answered: {got:?})",
        ids.len() - got.len(),
        ids.len()
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_dms_are_refused_not_acknowledged_and_acknowledged_ones_survive_kill_9() {
    let Some(fs) = Tmpfs::mount("6m") else {
        return;
    };
    let mut master = start_node(fs.path().join("m"), "master", "server-0", &[]);
    let mut alice = connect(&master.url(), "alice").await;
    connect(&master.url(), "bob").await.close().await;
    let filler = fs.fill();

    // Bob is offline: his DMs wait in the master's mailbox, on the full disk.
    let dms: Vec<(String, Message)> = (0..24)
        .map(|i| {
            sealed(
                &alice,
                "bob",
                format!("dm {i} {}", "x".repeat(40_000)).as_bytes(),
            )
        })
        .collect();
    for (_, m) in &dms {
        alice.send("bob", m).await.unwrap();
    }
    let ids: BTreeSet<String> = dms.iter().map(|(id, _)| id.clone()).collect();
    let first = answers(&mut alice, &ids).await;
    let refused: Vec<&String> = first
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(id, _)| id)
        .collect();
    assert!(
        !refused.is_empty(),
        "the disk is full, yet every DM was acknowledged"
    );

    // Room again: what was refused is sent again (same msg_id) and taken.
    std::fs::remove_file(&filler).unwrap();
    let again: BTreeSet<String> = refused.iter().map(|id| (*id).clone()).collect();
    for (id, m) in &dms {
        if again.contains(id) {
            alice.send("bob", m).await.unwrap();
        }
    }
    let second = answers(&mut alice, &again).await;
    assert!(
        second.values().all(|ok| *ok),
        "with room again, a resend was refused: {second:?}"
    );

    // kill -9, restart: every acknowledged DM reaches Bob.
    master.kill9();
    master.restart().unwrap();
    let mut bob = connect(&master.url(), "bob").await;
    let delivered = receive_all(&mut bob, ids.len()).await;
    let lost: Vec<&String> = ids.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged DMs were lost after kill -9: {lost:?}",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_on_a_full_disk_is_refused_and_pinned_once_there_is_room() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let mut master = start_node(fs.path().join("m"), "master", "server-0", &[]);
    // Alice registers while there is room; the disk then fills up, with no
    // room left in the write-ahead log either (a log that a checkpoint has
    // folded back is written again from its start, in space it holds: a pin
    // that fits there is written on a full disk).
    connect(&master.url(), "alice").await.close().await;
    let db = master.dir.join("node.sqlite");
    let filler = fs.fill_with_empty_wal(&db);

    // Dave's pin cannot be written: his session does not stand.
    match Session::connect(&master.url(), "dave", user_key("dave")).await {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "STORAGE"),
        Err(e) => panic!("dave: unexpected failure {e}"),
        Ok(mut dave) => {
            let (_, m) = expect(
                &mut dave,
                "STORAGE",
                |_, m| matches!(m, Message::Error(e) if e.code == "STORAGE"),
            )
            .await;
            println!("dave was refused after the welcome: {m:?}");
        }
    }
    // Nothing half-pinned: after kill -9 the id is free, and Erin's key
    // could take it. Dave takes it instead, now that there is room.
    std::fs::remove_file(&filler).unwrap();
    master.kill9();
    master.restart().unwrap();
    let readable = wait_until(|| async { pinned_key(&db, "alice").is_some() }).await;
    assert!(readable, "alice's pin is not read back");
    assert_eq!(
        read_pin(&db, "dave").unwrap(),
        None,
        "a refused registration left a pin"
    );
    let dave = connect(&master.url(), "dave").await;
    let pinned = wait_until(|| async { pinned_key(&db, "dave").is_some() }).await;
    assert!(pinned, "dave's key was never written");
    dave.close().await;
    master.kill9();
    master.restart().unwrap();
    // Pinned: another key for the same id is refused after a kill -9.
    match Session::connect(&master.url(), "dave", user_key("erin")).await {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "BAD_KEY"),
        Err(e) => panic!("unexpected failure {e}"),
        Ok(_) => panic!("dave's id took another key after a restart: the pin was lost"),
    }
}

/// The other side of the test above: SQLite writes a log that a checkpoint
/// has folded back again from its start, over pages the file holds, so a
/// pin that fits there is written on a full disk. Then the session stands,
/// and it must be because the pin is on disk: it survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_written_into_the_logs_room_on_a_full_disk_stands_and_survives_kill_9() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let mut master = start_node(fs.path().join("m"), "master", "server-0", &[]);
    connect(&master.url(), "alice").await.close().await;
    let db = master.dir.join("node.sqlite");
    let filler = fs.fill_with_wal_room(&db);

    let dave = connect(&master.url(), "dave").await;
    let pinned = wait_until(|| async { pinned_key(&db, "dave").is_some() }).await;
    assert!(
        pinned,
        "dave was welcomed on a full disk and his key never written"
    );
    dave.close().await;
    master.kill9();
    std::fs::remove_file(&filler).unwrap();
    master.restart().unwrap();
    match Session::connect(&master.url(), "dave", user_key("erin")).await {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "BAD_KEY"),
        Err(e) => panic!("unexpected failure {e}"),
        Ok(_) => panic!("dave's id took another key after a restart: the pin was lost"),
    }
}

/// The key `user` is pinned to in a node's database, read beside the
/// running node (SQLite's WAL lets a reader in).
fn pinned_key(db: &std::path::Path, user: &str) -> Option<String> {
    read_pin(db, user).ok().flatten()
}

/// The key `user` is pinned to, `None` if there is no row; an error if the
/// database could not be read.
fn read_pin(db: &std::path::Path, user: &str) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("SELECT pubkey FROM users WHERE user_id = ?1", [user], |r| {
        r.get(0)
    })
    .optional()
}

/// Receives (and acknowledges) DMs until `n` distinct ones arrived or 20 s
/// passed; returns their ids.
async fn receive_all(bob: &mut Session, n: usize) -> BTreeSet<String> {
    let mut delivered = BTreeSet::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while delivered.len() < n {
            match bob.recv().await {
                Ok(Some((_, Message::UserDeliver(d)))) => {
                    if let Some(id) = d.msg_id.clone() {
                        let ack = Message::Ack(socp::wire::messages::Ack {
                            msg_ids: vec![id.clone()],
                            extra: Default::default(),
                        });
                        let _ = bob.send(socp::wire::ids::TO_SERVER, &ack).await;
                        delivered.insert(id);
                    }
                }
                Ok(Some(_)) => {}
                _ => return,
            }
        }
    })
    .await;
    delivered
}

/// Waits until `ids` are all acknowledged.
async fn acked(s: &mut Session, ids: &BTreeSet<String>) {
    let got = answers(s, ids).await;
    assert!(got.values().all(|ok| *ok), "refused: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_mailbox_waits_on_disk_and_is_read_back_in_order() {
    let master = common::cluster::TestNode::master().await;
    let mut alice = connect(&master.url(), "alice").await;
    connect(&master.url(), "bob").await.close().await;
    master.wait_offline("bob").await;
    const N: usize = 600;
    let body = "y".repeat(20_000);
    // Nodes never open content: the first and the last DM are sealed for
    // real (Bob opens them), the others carry a ciphertext of the same size
    // that is their number padded, so each is told apart on the way back
    // without 1,200 more RSA-4096 operations.
    let first = sealed(&alice, "bob", format!("0 {body}").as_bytes());
    let last = sealed(&alice, "bob", format!("{} {body}", N - 1).as_bytes());
    let Message::MsgPrivate(template) = &first.1 else {
        unreachable!()
    };
    let size = template.ciphertext.len();
    let mut dms: Vec<(String, Message)> = vec![first.clone()];
    for i in 1..N - 1 {
        let mut dm = template.clone();
        let id = uuid::Uuid::new_v4().to_string();
        dm.msg_id = Some(id.clone());
        dm.ciphertext = format!("{i:06}{}", "A".repeat(size - 6));
        dms.push((id, Message::MsgPrivate(dm)));
    }
    dms.push(last);
    for (_, m) in &dms {
        alice.send("bob", m).await.unwrap();
    }
    acked(&mut alice, &dms.iter().map(|(id, _)| id.clone()).collect()).await;
    // Written and acknowledged: the bodies left memory.
    let ok = common::cluster::wait_until(|| async {
        master.status().await.custody_resident_bytes < 1 << 20
    })
    .await;
    let status = master.status().await;
    assert!(
        ok,
        "{} of {} custody bytes still in memory",
        status.custody_resident_bytes, status.custody_bytes
    );
    assert!(status.custody_bytes >= N * 20_000, "{status:?}");
    // Bob comes online: everything, in order and intact, read back a page
    // at a time.
    let mut bob = connect(&master.url(), "bob").await;
    let key = user_key("bob");
    for (i, (id, sent)) in dms.iter().enumerate() {
        let (_, m) = expect(&mut bob, "USER_DELIVER", |_, m| {
            matches!(m, Message::UserDeliver(_))
        })
        .await;
        let (Message::UserDeliver(d), Message::MsgPrivate(sent)) = (m, sent) else {
            unreachable!()
        };
        assert_eq!(d.msg_id.as_ref(), Some(id), "DM {i} out of order");
        assert_eq!(d.ciphertext, sent.ciphertext, "DM {i} changed on disk");
        if i == 0 || i == N - 1 {
            let text = socp::content::open_dm(&key, &d.to_private()).unwrap();
            assert!(text.starts_with(format!("{i} ").as_bytes()), "DM {i}");
        }
        let ack = Message::Ack(socp::wire::messages::Ack {
            msg_ids: vec![id.clone()],
            extra: Default::default(),
        });
        bob.send(socp::wire::ids::TO_SERVER, &ack).await.unwrap();
    }
    let ok = common::cluster::wait_until(|| async { master.status().await.custody == 0 }).await;
    assert!(ok, "custody not released: {:?}", master.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_bytes_are_capped_for_all_recipients_together() {
    let master = common::cluster::TestNode::master_with(|c| {
        c.mailbox.max_total_bytes = 200_000;
    })
    .await;
    let mut alice = connect(&master.url(), "alice").await;
    connect(&master.url(), "bob").await.close().await;
    connect(&master.url(), "carol").await.close().await;
    master.wait_offline("bob").await;
    master.wait_offline("carol").await;
    // Well under the per-recipient quota, over the cap together.
    let body = "z".repeat(30_000);
    for i in 0..4 {
        for to in ["bob", "carol"] {
            let (_, m) = sealed(&alice, to, format!("{i} {body}").as_bytes());
            alice.send(to, &m).await.unwrap();
        }
    }
    let (_, m) = expect(
        &mut alice,
        "QUOTA_EXCEEDED",
        |_, m| matches!(m, Message::Error(e) if e.code == "QUOTA_EXCEEDED"),
    )
    .await;
    println!("{m:?}");
    let status = master.status().await;
    assert!(status.custody_bytes <= 200_000, "{status:?}");
    assert_eq!(status.custody_max_bytes, 200_000);
}

/// Content a local hands to a master whose disk is full is refused by the
/// master (`STORAGE`, nothing kept) and kept by the local, which sends it
/// again a little later: once there is room, all of it arrives, without the
/// link having to re-form (frames refused this way used to sit in the
/// link's window until it did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_a_full_master_refuses_is_sent_again_by_the_local() {
    let Some(fs) = Tmpfs::mount("6m") else {
        return;
    };
    let master = start_node(fs.path().join("m"), "master", "server-0", &[]);
    let local_dir = tempfile::tempdir().unwrap();
    let local = start_node(
        local_dir.path().join("l"),
        "local",
        "server-1",
        &["--master-url".to_owned(), master.url()],
    );
    connect(&master.url(), "bob").await.close().await;
    let mut alice = connect(&local.url(), "alice").await;
    let filler = fs.fill();
    let dms: Vec<(String, Message)> = (0..24)
        .map(|i| {
            sealed(
                &alice,
                "bob",
                format!("dm {i} {}", "x".repeat(40_000)).as_bytes(),
            )
        })
        .collect();
    for (_, m) in &dms {
        alice.send("bob", m).await.unwrap();
    }
    let ids: BTreeSet<String> = dms.iter().map(|(id, _)| id.clone()).collect();
    // The local takes them all (its disk has room).
    acked(&mut alice, &ids).await;
    // The full master refuses what the local hands it (the local logs it).
    let refused = wait_until(|| async {
        local
            .log_lines()
            .iter()
            .any(|l| l.contains("error from peer") && l.contains("code=STORAGE"))
    })
    .await;
    assert!(refused, "the full master refused nothing");
    std::fs::remove_file(&filler).unwrap();
    let mut bob = connect(&master.url(), "bob").await;
    let delivered = receive_all(&mut bob, ids.len()).await;
    let missing: Vec<&String> = ids.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "{} DMs did not arrive: {missing:?}",
        missing.len()
    );
    drop(local);
}
