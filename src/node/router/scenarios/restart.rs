//! Restarts: a server rebuilt from its rows carries on where it stopped.

use super::{all_handed_on, two_locals};
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

#[test]
fn a_restarted_master_delivers_its_mailbox_from_disk() {
    let mut mesh = two_locals(60);
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    mesh.dm("alice", "bob", "before");
    mesh.dm("alice", "bob", "the restart");
    mesh.run();
    assert_eq!(mesh.mailbox("M"), 2);
    mesh.restart("M");
    assert_eq!(mesh.mailbox("M"), 2, "read back from its rows");
    mesh.advance(1_000); // the locals dial again
    assert!(mesh.linked("A", "M") && mesh.linked("B", "M"));
    assert_eq!(mesh.online("M"), ["alice"], "A told the new master again");
    mesh.user("bob", "B");
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: before", "alice: the restart"]
    );
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 2);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_local_that_crashed_sends_what_it_had_taken() {
    let mut mesh = two_locals(61);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold("A", "M");
    let id = mesh.dm("alice", "bob", "kept on disk");
    mesh.run();
    assert_eq!(mesh.acked("alice"), [id], "taken: A wrote it");
    mesh.crash("A");
    assert!(!mesh.connected("alice"));
    assert_eq!(mesh.custody("A"), 1);
    mesh.advance(1_000);
    assert!(mesh.linked("A", "M"));
    assert_eq!(mesh.delivered("bob"), ["alice: kept on disk"]);
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 1);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_disk_that_cannot_write_refuses_content_and_keeps_what_it_takes_when_sent_again() {
    let mut mesh = two_locals(62);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold("A", "M");
    mesh.fail_store("A", true);
    let id = mesh.dm("alice", "bob", "retry me");
    mesh.run();
    assert_eq!(mesh.error_about("alice", &id), Some(ErrorCode::Storage));
    assert!(
        mesh.acked("alice").is_empty(),
        "refused content is never acknowledged"
    );
    mesh.fail_store("A", false);
    mesh.resend("alice", &id);
    mesh.run();
    assert_eq!(mesh.acked("alice"), [id]);
    // What was acknowledged is on disk: it survives a crash.
    mesh.crash("A");
    mesh.advance(1_000);
    assert_eq!(mesh.delivered("bob"), ["alice: retry me"]);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}
