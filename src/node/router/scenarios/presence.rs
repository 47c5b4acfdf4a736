//! Presence: who is online where, as every server sees it.

use super::two_locals;
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

#[test]
fn presence_spreads_across_locals_and_goes_with_the_user() {
    let mut mesh = two_locals(1);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    for node in ["M", "A", "B"] {
        assert_eq!(mesh.online(node), ["alice", "bob"], "as {node} sees it");
    }
    mesh.disconnect("alice");
    mesh.run();
    for node in ["M", "A", "B"] {
        assert_eq!(mesh.online(node), ["bob"], "as {node} sees it");
    }
}

#[test]
fn a_user_who_moves_to_another_local_is_reached_there() {
    let mut mesh = two_locals(2);
    mesh.user("alice", "A");
    mesh.user("carol", "A");
    mesh.disconnect("alice");
    mesh.run();
    mesh.user("alice", "B");
    assert_eq!(mesh.online("A"), ["alice", "carol"]);
    mesh.dm("carol", "alice", "found you");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["carol: found you"]);
    assert_eq!(
        mesh.carried("M", "B", Kind::PeerDeliver),
        1,
        "via the master to B"
    );
}

#[test]
fn a_second_session_anywhere_in_the_mesh_is_refused() {
    let mut mesh = two_locals(3);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.twin("alice-again", "alice");
    mesh.connect("alice-again", "B");
    mesh.run();
    assert_eq!(mesh.errors("alice-again"), [ErrorCode::NameInUse]);
    assert!(!mesh.welcomed("alice-again") && !mesh.connected("alice-again"));
    // The first session is untouched: still listed, still reached.
    mesh.dm("bob", "alice", "still there?");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["bob: still there?"]);
    assert!(mesh.delivered("alice-again").is_empty());
    assert_eq!(mesh.online("M"), ["alice", "bob"]);
}
