//! `socp admin backup` and `restore` through the real binary: a master under
//! DM traffic is backed up while it runs, killed (SIGKILL), its database
//! deleted, restored from the backup and restarted. The directory (pinned
//! keys) and every mailbox row in the backup are back: the offline user
//! connects and receives them.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{WAIT, connect, expect, user_key, wait_until};
use common::procs::start_node;
use socp::client::{Session, SessionError};
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::{Ack, Message};

const BIN: &str = env!("CARGO_BIN_EXE_socp");
/// DMs acknowledged to the sender before the backup starts.
const BEFORE: usize = 60;

/// Runs `socp ARGS` to completion (under a timeout).
async fn socp(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap()
    });
    tokio::time::timeout(WAIT, run)
        .await
        .expect("socp admin finished in time")
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn send_dm(from: &mut Session, to: &str, msg_id: &str) {
    let mut dm = socp::content::seal_dm(
        from.key(),
        from.user(),
        to,
        user_key(to).public(),
        msg_id.as_bytes(),
        socp::wire::now_ms(),
    )
    .unwrap();
    dm.msg_id = Some(msg_id.to_owned());
    from.send(to, &Message::MsgPrivate(dm)).await.unwrap();
}

/// The msg_ids of the frames waiting for `user` in a node database.
fn mailbox_ids(db: &Path, user: &str) -> BTreeSet<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT msg_id FROM custody WHERE dest_kind = 'user' AND dest = ?1")
        .unwrap();
    stmt.query_map([user], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restored_from_a_live_backup_has_its_directory_and_mailbox() {
    let root = tempfile::tempdir().unwrap();
    let mut master = start_node(root.path().join("m"), "master", "server-0", &[]);
    let db = master.dir.join("node.sqlite");
    let backup = root.path().join("backups/master.sqlite");

    // Bob registers (his key is pinned) and goes offline.
    connect(&master.url(), "bob").await.close().await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut acked = BTreeSet::new();
    for i in 0..BEFORE {
        send_dm(&mut alice, "bob", &format!("before-{i}")).await;
    }
    while acked.len() < BEFORE {
        let (_, m) = expect(&mut alice, "ACK", |_, m| matches!(m, Message::Ack(_))).await;
        if let Message::Ack(a) = m {
            acked.extend(a.msg_ids);
        }
    }

    // Alice keeps writing to Bob's mailbox while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                send_dm(&mut alice, "bob", &format!("during-{n}")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                // Read the acks as they come, so the node never waits on us.
                let _ = tokio::time::timeout(Duration::from_millis(5), alice.recv()).await;
            }
            sent.load(Ordering::Relaxed)
        }
    });
    // The traffic flows before the backup starts and after it ends.
    let flowing = |past: usize| {
        let sent = sent.clone();
        wait_until(move || {
            let sent = sent.clone();
            async move { sent.load(Ordering::Relaxed) > past }
        })
    };
    assert!(flowing(0).await, "alice sends nothing");
    let out = socp(&[
        "admin",
        "backup",
        "--db",
        db.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "backup failed: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("backed up") && said.contains("keys"),
        "{said}"
    );
    // A restore over a running node is refused, and changes nothing.
    let refused = socp(&[
        "admin",
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ])
    .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a socp node is running"),
        "{}",
        text(&refused)
    );
    assert!(
        flowing(sent.load(Ordering::Relaxed)).await,
        "alice's traffic stopped during the backup"
    );
    stop.store(true, Ordering::Relaxed);
    let during = tokio::time::timeout(WAIT, traffic).await.unwrap().unwrap();
    assert!(during > 0, "no traffic while the backup was taken");

    // The backup is one self-contained file holding everything acked before it.
    assert!(!root.path().join("backups/master.sqlite-wal").exists());
    let in_backup = mailbox_ids(&backup, "bob");
    assert!(
        acked.is_subset(&in_backup),
        "acked before the backup but not in it: {:?}",
        acked.difference(&in_backup).collect::<Vec<_>>()
    );
    println!(
        "backup holds {} DMs for bob ({BEFORE} before, {during} sent during the backup)",
        in_backup.len()
    );

    // The master dies and its database is lost.
    master.kill9();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let out = socp(&[
        "admin",
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "restore failed: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("integrity ok") && said.contains("restored"),
        "{said}"
    );
    master.restart().unwrap();

    // The directory: Bob's id is still pinned to his key.
    match Session::connect(&master.url(), "bob", user_key("carol")).await {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "BAD_KEY"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bob's id accepted another key after the restore"),
    }
    // The mailbox: Bob receives every DM the backup held, and nothing else.
    let mut bob = connect(&master.url(), "bob").await;
    let mut got = BTreeSet::new();
    while got.len() < in_backup.len() {
        let (_, m) = expect(&mut bob, "USER_DELIVER", |_, m| {
            matches!(m, Message::UserDeliver(_))
        })
        .await;
        let Message::UserDeliver(d) = m else {
            unreachable!()
        };
        let text = socp::content::open_dm(bob.key(), &d.to_private()).unwrap();
        let id = d.msg_id.unwrap_or_default();
        assert_eq!(text, id.as_bytes());
        let ack = Message::Ack(Ack {
            msg_ids: vec![id.clone()],
            extra: Default::default(),
        });
        bob.send(TO_SERVER, &ack).await.unwrap();
        got.insert(id);
    }
    assert_eq!(got, in_backup);
}
