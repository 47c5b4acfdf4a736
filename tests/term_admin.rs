//! Issue 14 item 10: `socp admin users` given a client's keyring says so,
//! instead of printing a raw SQL error.

mod common;

use std::time::Duration;

use common::termproc::{Proc, Stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_users_on_a_client_keyring_says_it_is_not_a_node_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("alice.sqlite");
    socp::client::keyring::Keyring::open(&db).unwrap();
    let mut p = Proc::socp(&["admin", "users", "--db", db.to_str().unwrap()]);
    let status = p.exited_within(Duration::from_secs(20)).await.unwrap();
    assert!(!status.success());
    let out = p.collect_for(Duration::from_millis(200)).await;
    let err: Vec<&str> = out
        .iter()
        .filter(|(s, _)| *s == Stream::Err)
        .map(|(_, l)| l.as_str())
        .collect();
    let text = err.join("\n");
    assert!(
        text.contains("client's keyring") && text.contains("--db of a node"),
        "{text}"
    );
    assert!(!text.contains("no such table"), "{text}");
}
