//! `socp admin status` through the real binary: a master and a local serving
//! metrics, two users online, DMs waiting in the master's mailbox for a user
//! online nowhere. The table and the JSON show the links, the users, the
//! mailbox and the quotas in use.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{WAIT, connect, expect, send_dm};
use common::procs::start_node;
use serde_json::Value;
use socp::wire::messages::Message;

const BIN: &str = env!("CARGO_BIN_EXE_socp");
/// DMs left waiting for Carol.
const WAITING: usize = 5;

/// Runs `socp admin status` for these metrics addresses; (success, stdout).
async fn admin_status(metrics: &[&str], json: bool) -> (bool, String) {
    let mut args = vec!["admin".to_owned(), "status".into(), "--metrics".into()];
    args.extend(metrics.iter().map(|m| m.to_string()));
    if json {
        args.push("--json".into());
    }
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_links_users_mailbox_and_quotas_of_a_running_mesh() {
    let root = tempfile::tempdir().unwrap();
    let metrics_flag = ["--metrics".to_owned(), "127.0.0.1:0".to_owned()];
    let master = start_node(root.path().join("m"), "master", "server-0", &metrics_flag);
    let mut local_args = vec!["--master-url".to_owned(), master.url()];
    local_args.extend(metrics_flag.iter().cloned());
    let local = start_node(root.path().join("l"), "local", "server-1", &local_args);
    let (m_url, l_url) = (
        master.metrics.clone().unwrap(),
        local.metrics.clone().unwrap(),
    );

    // Carol registers and leaves; Alice (on the local) writes to her.
    connect(&master.url(), "carol").await.close().await;
    let _bob = connect(&master.url(), "bob").await;
    let mut alice = connect(&local.url(), "alice").await;
    for i in 0..WAITING {
        send_dm(&mut alice, "carol", format!("waiting {i}").as_bytes()).await;
    }
    let mut acked = BTreeSet::new();
    while acked.len() < WAITING {
        if let (_, Message::Ack(a)) =
            expect(&mut alice, "ACK", |_, m| matches!(m, Message::Ack(_))).await
        {
            acked.extend(a.msg_ids);
        }
    }

    // The JSON, once the mesh has settled (links up, both users seen at
    // the master; the local holds presence on demand, the default: it knows
    // of its own user only, nobody there having addressed bob).
    let deadline = tokio::time::Instant::now() + WAIT;
    let nodes = loop {
        let (ok, out) = admin_status(&[&m_url, &l_url], true).await;
        assert!(ok, "socp admin status failed: {out}");
        let nodes: Vec<Value> = serde_json::from_str(&out).unwrap();
        let settled = nodes
            .iter()
            .all(|n| n["links"].as_array().is_some_and(|l| l.len() == 1))
            && nodes[0]["users_online"] == 2
            && nodes[1]["users_online"] == 1
            && nodes[0]["mailbox"]["frames"] == WAITING;
        if settled {
            break nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status never showed the mesh: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (m, l) = (&nodes[0], &nodes[1]);
    assert_eq!(m["id"], master.id.as_str(), "{m}");
    assert_eq!(m["role"], "master");
    assert_eq!(l["id"], local.id.as_str(), "{l}");
    assert_eq!(l["role"], "local");
    assert_eq!(m["presence_on_demand"], false, "{m}");
    assert_eq!(l["presence_on_demand"], true, "{l}");
    // Each end of the link names the other.
    assert_eq!(m["links"][0]["server"], local.id.as_str(), "{m}");
    assert_eq!(m["links"][0]["role"], "local");
    assert_eq!(m["links"][0]["direction"], "accepted");
    assert_eq!(l["links"][0]["server"], master.id.as_str(), "{l}");
    assert_eq!(l["links"][0]["role"], "master");
    assert_eq!(l["links"][0]["direction"], "dialed");
    // Bob on the master, Alice on the local.
    assert_eq!(m["users_here"], 1);
    assert_eq!(l["users_here"], 1);
    // The mailbox and the quotas it uses.
    let bytes = m["mailbox"]["bytes"].as_u64().unwrap();
    assert!(bytes > 0, "{m}");
    assert!(m["custody"]["frames"].as_u64().unwrap() >= WAITING as u64);
    let quota = |name: &str| {
        m["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no quota {name} in {m}"))
            .clone()
    };
    assert_eq!(quota("fullest user queue, frames")["used"], WAITING);
    assert_eq!(quota("fullest user queue, frames")["cap"], 10_000);
    assert_eq!(quota("fullest user queue, bytes")["used"], bytes);
    assert_eq!(quota("custody bytes")["cap"], 1u64 << 30);
    assert!(quota("custody bytes")["used"].as_u64().unwrap() >= bytes);

    // The table shows the same.
    let (ok, table) = admin_status(&[&m_url, &l_url], false).await;
    assert!(ok, "{table}");
    println!("{table}");
    for needle in [
        format!("{} (master)", master.id),
        format!("{} (local)", local.id),
        "users online: 2 in the mesh, 1 here".to_owned(),
        "users online: 1 known here (presence on demand: the master has the mesh's), 1 here"
            .to_owned(),
        format!("mailbox (users online nowhere): {WAITING} frames, {bytes} bytes"),
        "LINK".to_owned(),
        "QUOTA".to_owned(),
    ] {
        assert!(table.contains(&needle), "{needle:?} not in:\n{table}");
    }
    let fullest = table
        .lines()
        .find(|l| l.contains("fullest user queue, frames"))
        .unwrap();
    assert!(
        fullest.contains(&format!(" {WAITING} ")) && fullest.contains("10000"),
        "{fullest}"
    );

    // A node that does not answer is named, and the command fails.
    drop(local);
    let (ok, out) = admin_status(&[&m_url, &l_url], false).await;
    assert!(!ok, "{out}");
    assert!(out.contains(&l_url), "{out}");
}
