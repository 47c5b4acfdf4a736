//! Who may join the mesh: servers (`--admit`, PROTOCOL.md C5), users
//! (`--registration`, the per-address and per-server registration rates,
//! C14) and registrations over a link (they need the user's proof, C13).
//! Real nodes over real sockets; what a server or user is told.

mod common;

use std::path::Path;

use common::cluster::{TestNode, WAIT, cached_key, connect, directory_key, user_key, wait_until};
use common::raw::{Raw, hello_payload, link_as, signed};
use serde_json::{Value, json};
use socp::client::Session;
use socp::crypto::PrivateKey;
use socp::node::Registration;
use socp::wire::ids::TO_SERVER;

/// Says a signed hello as `user` with the fixture key of `key_of`, with
/// `invite` in the payload if given; returns the first answer's kind and code.
async fn hello(url: &str, user: &str, key_of: &str, invite: Option<&str>) -> (String, String) {
    let key = user_key(key_of);
    let mut payload = hello_payload(user, key.public().to_b64());
    if let Some(code) = invite {
        payload["invite"] = Value::String(code.into());
    }
    let mut raw = Raw::connect(url).await;
    raw.send(&signed("USER_HELLO", user, TO_SERVER, payload, &key))
        .await;
    loop {
        let env = raw.recv().await.expect("an answer to the hello");
        match env.kind.as_str() {
            "USER_WELCOME" => return (env.kind, String::new()),
            "ERROR" => {
                let code = env.payload["code"].as_str().unwrap_or_default().to_owned();
                return (env.kind, code);
            }
            _ => continue,
        }
    }
}

fn welcomed() -> (String, String) {
    ("USER_WELCOME".into(), String::new())
}

fn refused(code: &str) -> (String, String) {
    ("ERROR".into(), code.into())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

// ---- item 8 (C13): DB_REGISTER_USER needs a proof ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_over_a_link_without_proof_is_refused() {
    let master = TestNode::master().await;
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &id, &key).await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    let carol = user_key("carol").public().to_b64().to_owned();
    for user in ["mallory", "mallory2"] {
        rogue
            .send(&signed(
                "DB_REGISTER_USER",
                &id,
                &master.id(),
                json!({"user_id": user, "pubkey": carol}),
                &key,
            ))
            .await;
        let err = rogue.expect_kind("ERROR").await;
        assert_eq!(err.payload["code"], "NOT_ALLOWED", "{err:?}");
    }
    assert_eq!(directory_key(&master.url(), "alice", "mallory").await, None);
    // The ids are still free for their real owners.
    assert_eq!(
        hello(&master.url(), "mallory", "bob", None).await,
        welcomed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_over_a_link_without_proof_is_legacy_only_with_the_flag() {
    let master = TestNode::master_with(|c| c.allow_legacy_clients = true).await;
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &id, &key).await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    let carol = user_key("carol").public().to_b64().to_owned();
    rogue
        .send(&signed(
            "DB_REGISTER_USER",
            &id,
            &master.id(),
            json!({"user_id": "ref_user", "pubkey": carol}),
            &key,
        ))
        .await;
    let ok = wait_until(|| async {
        directory_key(&master.url(), "alice", "ref_user").await == Some(carol.clone())
    })
    .await;
    assert!(
        ok,
        "a legacy registration is accepted with --allow-legacy-clients"
    );
}

// ---- item 7 (C5): --admit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_with_admit_links_only_listed_servers_and_rereads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let admit = dir.path().join("admit.txt");
    write(&admit, "# servers allowed to link\n");
    let master = TestNode::master_with(|c| {
        c.admission.admit = Some(admit.clone());
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    // The master's refusals of links, counted as the ERRORs it sent.
    let errors_sent = || master.metric("socp_frames_out_total{type=\"ERROR\"}");
    // A server that is not listed is told why and closed.
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &id, &key).await;
    assert_eq!(rogue.expect_error().await, "NOT_ALLOWED");
    assert!(rogue.closed().await);
    assert!(master.status().await.linked.is_empty());

    // A real local is kept out until its id is listed, then links (the
    // file is read at every link hello).
    let refused_before = errors_sent().await.unwrap_or(0);
    let local = TestNode::local(&master.url()).await;
    let refused = wait_until(|| async { errors_sent().await > Some(refused_before) }).await;
    assert!(refused, "the unlisted local was never refused");
    assert!(master.status().await.linked.is_empty());
    write(
        &admit,
        &format!("# servers allowed to link\n{}\n", local.id()),
    );
    master.wait_linked(1).await;
    let mut alice = connect(&master.url(), "alice").await;
    let _bob = connect(&local.url(), "bob").await;
    master.wait_online(&["alice", "bob"]).await;
    common::cluster::send_dm(&mut alice, "bob", b"hi").await;

    // A key fingerprint, as `socp gen` prints it, admits that key.
    let fingerprint = key.public().fingerprint();
    write(
        &admit,
        &format!("{}\n{fingerprint}  # the rogue, now trusted\n", local.id()),
    );
    let mut admitted = link_as(&master.url(), &id, &key).await;
    admitted.expect_kind("PEER_HELLO_LINK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_with_admit_refuses_unlisted_peers() {
    let master = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let admit = dir.path().join("admit.txt");
    write(&admit, "");
    let local = TestNode::local_with(&master.url(), |c| {
        c.admission.admit = Some(admit.clone());
    })
    .await;
    // Its master needs no entry: the local dialed it and pins it.
    local.wait_linked(1).await;
    let key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&local.url(), &id, &key).await;
    assert_eq!(rogue.expect_error().await, "NOT_ALLOWED");
    assert!(rogue.closed().await);
    write(&admit, &format!("{id}\n"));
    let mut admitted = link_as(&local.url(), &id, &key).await;
    admitted.expect_kind("PEER_HELLO_LINK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_admit_file_stops_the_start_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let admit = dir.path().join("admit.txt");
    write(&admit, "# ok\nnot-a-server-id\n");
    let mut config = TestNode::master().await.config.clone();
    config.db = dir.path().join("db.sqlite");
    config.admission.admit = Some(admit.clone());
    let err = socp::node::Node::start(config)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("line 2") && text.contains("not-a-server-id"),
        "{text}"
    );
}

// ---- item 11 (C14): registration policy ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_admits_known_users_only() {
    let mut master = TestNode::master().await;
    let mut local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    connect(&master.url(), "alice").await.close().await;
    local.stop().await;
    master.config.admission.registration = Registration::Closed;
    master.restart().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    assert_eq!(
        hello(&master.url(), "bob", "bob", None).await,
        refused("NOT_ALLOWED")
    );
    assert_eq!(
        hello(&local.url(), "carol", "carol", None).await,
        refused("NOT_ALLOWED")
    );
    assert_eq!(
        hello(&local.url(), "alice", "alice", None).await,
        welcomed()
    );
    assert_eq!(directory_key(&master.url(), "alice", "bob").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_needed_and_used_once() {
    let master = TestNode::master_with(|c| {
        c.admission.registration = Registration::Invite;
    })
    .await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let db = master.config.db.clone();
    // Made on the running master's database.
    let code = socp::admin::make_invite(&db).unwrap();
    assert_eq!(
        hello(&master.url(), "bob", "bob", None).await,
        refused("NOT_ALLOWED")
    );
    assert_eq!(
        hello(&master.url(), "bob", "bob", Some("not-a-code")).await,
        refused("NOT_ALLOWED")
    );
    assert_eq!(
        hello(&master.url(), "bob", "bob", Some(&code)).await,
        welcomed()
    );
    assert_eq!(
        hello(&master.url(), "carol", "carol", Some(&code)).await,
        refused("NOT_ALLOWED"),
        "an invite is used once"
    );
    // Through a local: the invite travels inside the signed hello (the proof).
    let second = socp::admin::make_invite(&db).unwrap();
    assert_eq!(
        hello(&local.url(), "carol", "carol", None).await,
        refused("NOT_ALLOWED")
    );
    assert_eq!(
        hello(&local.url(), "carol", "carol", Some(&second)).await,
        welcomed()
    );
    // Known users need none.
    master.wait_offline("bob").await;
    assert_eq!(hello(&master.url(), "bob", "bob", None).await, welcomed());
    let listed = socp::admin::invites(&db).unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.code == code && i.used_by.as_deref() == Some("bob")),
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|i| i.code == second && i.used_by.as_deref() == Some("carol")),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_per_address_and_per_local_are_bounded() {
    let master = TestNode::master_with(|c| {
        c.admission.per_address_hour = 2;
        c.admission.per_server_hour = 1;
    })
    .await;
    assert_eq!(
        hello(&master.url(), "alice", "alice", None).await,
        welcomed()
    );
    assert_eq!(hello(&master.url(), "bob", "bob", None).await, welcomed());
    assert_eq!(
        hello(&master.url(), "carol", "carol", None).await,
        refused("RATE_LIMITED")
    );
    // Known users are not registrations.
    master.wait_offline("alice").await;
    assert_eq!(
        hello(&master.url(), "alice", "alice", None).await,
        welcomed()
    );
    // Through a local, the master bounds what that server registers.
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    assert_eq!(
        hello(&local.url(), "carol", "carol", None).await,
        welcomed()
    );
    assert_eq!(
        hello(&local.url(), "dave", "dave", None).await,
        refused("RATE_LIMITED")
    );
    assert_eq!(directory_key(&master.url(), "alice", "dave").await, None);
}

// ---- item 11: remove a user, reset a key ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_key_and_remove_user_need_a_stopped_node_and_take_effect() {
    let mut master = TestNode::master().await;
    connect(&master.url(), "alice").await.close().await;
    connect(&master.url(), "bob").await.close().await;
    let db = master.config.db.clone();
    let err = socp::admin::reset_key(&db, "alice").unwrap_err();
    assert!(format!("{err:#}").contains("running"), "{err:#}");
    master.stop().await;
    socp::admin::reset_key(&db, "alice").unwrap();
    socp::admin::remove_user(&db, "bob").unwrap();
    assert!(socp::admin::remove_user(&db, "nobody").is_err());
    master.restart().await;
    // Alice lost her key: her next hello pins the new one.
    assert_eq!(
        hello(&master.url(), "alice", "carol", None).await,
        welcomed()
    );
    let carol = user_key("carol").public().to_b64().to_owned();
    assert_eq!(
        directory_key(&master.url(), "erin", "alice").await,
        Some(carol.clone())
    );
    // And only once: the old key is now the wrong one.
    master.wait_offline("alice").await;
    assert_eq!(
        hello(&master.url(), "alice", "alice", None).await,
        refused("BAD_KEY")
    );
    assert_eq!(directory_key(&master.url(), "erin", "bob").await, None);
}

/// A client session with an invite, as `socp client --invite` says hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_presents_an_invite() {
    let master = TestNode::master_with(|c| {
        c.admission.registration = Registration::Invite;
    })
    .await;
    let code = socp::admin::make_invite(&master.config.db).unwrap();
    let s = tokio::time::timeout(
        WAIT,
        Session::connect_invited(&master.url(), "alice", user_key("alice"), &code),
    )
    .await
    .unwrap();
    assert!(s.is_ok(), "{:?}", s.err());
}
