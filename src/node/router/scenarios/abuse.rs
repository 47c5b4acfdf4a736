//! Abuse: servers that are not admitted, servers that claim what is not
//! theirs, users that claim to be someone else, and content over the
//! bounds a server keeps.

use serde_json::{Value, json};

use super::super::sim::Mesh;
use super::{all_handed_on, two_locals};
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

#[test]
fn a_server_that_is_not_admitted_cannot_link_and_its_users_stay_unseen() {
    let mut mesh = Mesh::new(50)
        .master("M")
        .local("A")
        .local("R")
        .admit("M", &["A"])
        .link("A", "M")
        .link("R", "M");
    assert_eq!(mesh.refused("R", "M"), Some(ErrorCode::NotAllowed));
    assert!(mesh.linked("A", "M") && !mesh.linked("R", "M"));
    mesh.user("alice", "A");
    mesh.connect("erin", "R");
    mesh.advance(30_000); // R keeps dialing, and keeps being refused
    assert!(!mesh.linked("R", "M"));
    assert_eq!(
        mesh.errors("erin"),
        [ErrorCode::Timeout],
        "R cannot check her key"
    );
    assert_eq!(mesh.online("M"), ["alice"]);
    assert_eq!(mesh.online("A"), ["alice"]);
}

#[test]
fn a_server_cannot_claim_or_remove_a_user_hosted_elsewhere() {
    let mut mesh = Mesh::new(51)
        .master("M")
        .local("A")
        .local("R")
        .link("A", "M")
        .link("R", "M");
    mesh.user("alice", "A");
    mesh.user("dave", "M");
    // The master relayed alice's presence, proof included, to R.
    let relayed = mesh.carried_frames("M", "R", Kind::UserAdvertise);
    let proof = relayed
        .iter()
        .find(|f| f.payload["user_id"] == "alice")
        .map(|f| f.payload["proof"].clone())
        .expect("alice's advert reached R");
    let (r, a) = (mesh.id("R"), mesh.id("A"));
    let claim = |location: &str, proof: Value| {
        let Value::Object(p) = json!({"user_id": "alice", "location": location, "proof": proof})
        else {
            unreachable!()
        };
        p
    };
    mesh.inject("R", "M", Kind::UserAdvertise, "*", claim(&r, proof.clone()));
    mesh.inject("R", "M", Kind::UserRemove, "*", claim(&a, Value::Null));
    mesh.run();
    mesh.dm("dave", "alice", "where are you?");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["dave: where are you?"]);
    assert_eq!(mesh.carried("M", "R", Kind::PeerDeliver), 0);
    assert_eq!(mesh.online("M"), ["alice", "dave"]);
}

#[test]
fn a_frame_whose_from_is_not_its_user_is_refused() {
    let mut mesh = two_locals(52);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "A");
    let Value::Object(dm) = json!({"ciphertext": "aGk", "iv": "aXY", "tag": "dGFn",
        "wrapped_key": "a2V5", "sender_pub": "cHVi", "content_sig": "c2ln",
        "content_ts": 1, "msg_id": "forged-1"})
    else {
        unreachable!()
    };
    mesh.send_forged("alice", "carol", Kind::MsgPrivate, "bob", dm);
    mesh.run();
    assert_eq!(mesh.errors("alice"), [ErrorCode::NotAllowed]);
    assert!(mesh.delivered("bob").is_empty());
    assert!(mesh.errors("carol").is_empty());
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_full_mailbox_refuses_more_and_tells_the_sender() {
    let mut mesh = Mesh::new(53)
        .node("M", true, |cfg| cfg.limits.max_frames = 2)
        .local("A")
        .local("B")
        .link("A", "M")
        .link("B", "M");
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    let ids: Vec<String> = (1..=3)
        .map(|n| mesh.dm("alice", "bob", &n.to_string()))
        .collect();
    mesh.run();
    assert_eq!(mesh.receipts("alice", "queued"), ids[..2]);
    assert_eq!(
        mesh.error_about("alice", &ids[2]),
        Some(ErrorCode::QuotaExceeded)
    );
    assert!(all_handed_on(&mesh, &["A"]), "A is not left holding it");
    mesh.user("bob", "B");
    assert_eq!(mesh.delivered("bob"), ["alice: 1", "alice: 2"]);
}

#[test]
fn content_over_the_servers_bounds_is_refused_where_it_enters() {
    let mut mesh = Mesh::new(54)
        .master("M")
        .node("A", false, |cfg| {
            cfg.max_file_size = 1000;
            cfg.max_group_members = 2;
        })
        .link("A", "M");
    mesh.user("alice", "A");
    mesh.user("bob", "A");
    mesh.user("carol", "A");
    let Value::Object(start) = json!({"file_id": "f1", "name": "big.bin", "size": 5000,
        "sha256": "00", "mode": "dm", "from": "alice", "msg_id": "file-1"})
    else {
        unreachable!()
    };
    mesh.send_frame("alice", Kind::FileStart, "bob", start);
    let share = mesh.share_group("alice", "group_big", &["alice", "bob", "carol"]);
    mesh.run();
    assert_eq!(
        mesh.error_about("alice", "file-1"),
        Some(ErrorCode::TooLarge)
    );
    assert_eq!(mesh.error_about("alice", &share), Some(ErrorCode::TooLarge));
    assert_eq!(mesh.received("bob", Kind::FileStart), 0);
    assert!(mesh.shares("bob").is_empty() && mesh.shares("carol").is_empty());
    assert!(all_handed_on(&mesh, &["A", "M"]));
}
