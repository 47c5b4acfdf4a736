//! What a node writes to its log, read as an operator would: real `socp`
//! processes at `RUST_LOG=trace` carry a DM and a group message between two
//! servers, and no log line holds a message text, a ciphertext, a content
//! signature or a line of a private key (dependencies that print frames at
//! trace are capped unless `RUST_LOG` names them). `--log-format json`
//! writes one JSON object per line with the event's fields.

mod common;

use common::clientproc::{ClientProc, fixture_pem};
use common::cluster::{WAIT, connect, expect, user_key, wait_until};
use common::procs::start_node_logging;
use serde_json::Value;
use socp::wire::messages::Message;

const DM_TEXT: &str = "dm-plaintext-7c1e9a the eagle lands at noon";
const CLIENT_DM_TEXT: &str = "client-dm-plaintext-51b2 meet by the river";
const GROUP_TEXT: &str = "group-plaintext-d04f bring the maps";

/// The base64 body lines of a PEM file (each a secret, for a private key).
fn pem_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_owned)
        .collect()
}

/// A log line, text (`user=bob`) or JSON (`"user":"bob"`), that says
/// `user` went offline.
fn says_offline(line: &str, user: &str) -> bool {
    line.contains("user offline")
        && (line.contains(&format!("user={user} "))
            || line.contains(&format!("\"user\":\"{user}\"")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_session_at_trace_leaves_no_text_ciphertext_signature_or_key_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let json = ["--log-format".to_owned(), "json".to_owned()];
    let master = start_node_logging(dir.path().join("m"), "master", "server-0", &json, "trace");
    let local = start_node_logging(
        dir.path().join("l"),
        "local",
        "server-1",
        &["--master-url".into(), master.url()],
        "trace",
    );

    // A DM sealed here, so that its ciphertext and signature are known:
    // alice on the local, bob on the master.
    let mut alice = connect(&local.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let mut dm = socp::content::seal_dm(
        alice.key(),
        "alice",
        "bob",
        user_key("bob").public(),
        DM_TEXT.as_bytes(),
        socp::wire::now_ms(),
    )
    .unwrap();
    dm.msg_id = Some(uuid::Uuid::new_v4().to_string());
    let (ciphertext, content_sig) = (dm.ciphertext.clone(), dm.content_sig.clone());
    tokio::time::timeout(WAIT, alice.send("bob", &Message::MsgPrivate(dm.clone())))
        .await
        .unwrap()
        .unwrap();
    let (_, got) = expect(
        &mut bob,
        "alice's DM",
        |_, m| matches!(m, Message::UserDeliver(d) if d.ciphertext == ciphertext),
    )
    .await;
    assert!(matches!(got, Message::UserDeliver(_)));

    // The client binary: a DM and a group message, carol (master) to dave (local).
    let cdir = tempfile::tempdir().unwrap();
    let mut carol = ClientProc::start(&cdir.path().join("c"), "carol", &master.url()).await;
    let mut dave = ClientProc::start(&cdir.path().join("d"), "dave", &local.url()).await;
    let is = |kind: &'static str| move |e: &Value| e["event"] == kind;
    carol.cmd(&format!("/msg dave {CLIENT_DM_TEXT}")).await;
    assert_eq!(dave.expect("dm", is("dm")).await["text"], CLIENT_DM_TEXT);
    carol.cmd("/gshare group_ops dave").await;
    dave.expect("group_key", is("group_key")).await;
    carol.cmd(&format!("/gmsg group_ops {GROUP_TEXT}")).await;
    assert_eq!(
        dave.expect("group_msg", is("group_msg")).await["text"],
        GROUP_TEXT
    );
    carol.quit().await;
    dave.quit().await;
    alice.close().await;
    bob.close().await;
    // Everything about these sessions is in the logs once each node has
    // logged its users going offline.
    for (node, users) in [(&master, ["bob", "carol"]), (&local, ["alice", "dave"])] {
        let logged = wait_until(|| async {
            let log = node.log_lines();
            users.iter().all(|u| log.iter().any(|l| says_offline(l, u)))
        })
        .await;
        assert!(logged, "{users:?} going offline is not in the log");
    }

    let mut secrets: Vec<(String, String)> = vec![
        ("the DM's text".into(), DM_TEXT.into()),
        ("the client DM's text".into(), CLIENT_DM_TEXT.into()),
        ("the group message's text".into(), GROUP_TEXT.into()),
        ("the DM's ciphertext".into(), ciphertext.clone()),
        // A slice too, in case a line cuts it or escapes around it.
        ("the DM's ciphertext".into(), ciphertext[..40].to_owned()),
        ("the DM's content_sig".into(), content_sig[..40].to_owned()),
    ];
    for user in ["alice", "bob", "carol", "dave"] {
        for line in pem_lines(&fixture_pem(user)) {
            secrets.push((format!("{user}'s private key"), line));
        }
    }
    for (name, node) in [("master", &master), ("local", &local)] {
        for line in pem_lines(&node.dir.join("keys").join(format!("{name}.pem"))) {
            secrets.push((format!("the {name}'s private key"), line));
        }
    }
    for (name, node) in [("master", &master), ("local", &local)] {
        let log = node.log_lines();
        assert!(
            log.iter().any(|l| l.contains("content taken into custody")),
            "the {name} logged at trace: {} lines",
            log.len()
        );
        for line in &log {
            for (what, secret) in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "the {name}'s log shows {what}: {line}"
                );
            }
        }
    }

    // The master logged JSON: one object per line, with the event's fields.
    let log = master.log_lines();
    for line in &log {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
    }
    let events: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|v| v["message"] == "user online" && v["user"] == "bob"),
        "no 'user online' event with user=bob"
    );
    assert!(
        events
            .iter()
            .any(|v| v["message"] == "content taken into custody"
                && v["msg_id"] == dm.msg_id.as_deref().unwrap()
                && v["user"] == "alice"),
        "no custody event for alice's DM with its msg_id"
    );
}
