//! The directory: key lookups through the master, and what happens when it
//! does not answer in time.

use std::time::Duration;

use super::super::LOOKUP_TIMEOUT;
use super::two_locals;
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

const TIMEOUT_MS: i64 = LOOKUP_TIMEOUT.as_millis() as i64;

#[test]
fn lookups_through_the_master_find_registered_users_only() {
    let mut mesh = two_locals(30);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.lookup("alice", "bob");
    mesh.lookup("alice", "zed");
    mesh.run();
    assert_eq!(
        mesh.lookups("alice"),
        [("bob".to_owned(), true), ("zed".to_owned(), false)]
    );
    assert_eq!(mesh.carried("A", "M", Kind::DbGetUser), 2);
    assert_eq!(
        mesh.carried("A", "M", Kind::DbRegisterUser),
        1,
        "alice's hello asked once, with its registration"
    );
    // A caches the answer: a second lookup is answered at A.
    mesh.lookup("alice", "bob");
    mesh.run();
    assert_eq!(mesh.lookups("alice").len(), 3);
    assert_eq!(mesh.carried("A", "M", Kind::DbGetUser), 2);
}

#[test]
fn a_lookup_the_master_does_not_answer_times_out() {
    let mut mesh = two_locals(31);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold("M", "A");
    mesh.lookup("alice", "bob");
    mesh.run();
    mesh.advance(TIMEOUT_MS - 10);
    assert!(mesh.errors("alice").is_empty(), "not before the timeout");
    mesh.advance(10);
    assert_eq!(mesh.errors("alice"), [ErrorCode::Timeout]);
    // The late answer finds nobody waiting for it.
    mesh.release("M", "A");
    mesh.run();
    assert!(mesh.lookups("alice").is_empty());
    assert!(mesh.connected("alice"));
}

#[test]
fn a_hello_the_master_cannot_confirm_in_time_is_refused_and_can_be_said_again() {
    let mut mesh = two_locals(32);
    mesh.hold("A", "M");
    mesh.connect("alice", "A");
    mesh.run();
    assert!(!mesh.welcomed("alice"));
    mesh.advance(TIMEOUT_MS);
    assert_eq!(mesh.errors("alice"), [ErrorCode::Timeout]);
    assert!(!mesh.connected("alice"));
    mesh.release("A", "M");
    mesh.run();
    mesh.advance(Duration::from_secs(1).as_millis() as i64);
    mesh.user("alice", "A");
    assert_eq!(mesh.online("M"), ["alice"]);
}
