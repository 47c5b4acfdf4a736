//! The mailbox and the directory stay on disk (issue 13): what a master
//! keeps for offline users leaves memory once written, a restart loads
//! neither rows nor records, and what comes back from disk arrives in
//! order, once, with what was taken since.

use super::{all_handed_on, two_locals};
use crate::wire::messages::Kind;

#[test]
fn an_offline_users_mailbox_leaves_memory_and_drains_in_order_after_a_restart() {
    let mut mesh = two_locals(90);
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    let first = mesh.dm("alice", "bob", "m0");
    // More than a page of rows (`ROW_PAGE`), read back in pages.
    for i in 1..1_100 {
        mesh.dm("alice", "bob", &format!("m{i}"));
    }
    mesh.run();
    assert_eq!(mesh.mailbox("M"), 1_100);
    assert_eq!(
        mesh.router("M").custody_in_memory(),
        0,
        "written rows of an offline user leave memory"
    );
    mesh.restart("M");
    assert_eq!(mesh.mailbox("M"), 1_100, "counted from its rows");
    assert_eq!(mesh.router("M").custody_in_memory(), 0);
    mesh.advance(1_000);
    assert!(mesh.linked("A", "M"));
    // Taken after the restart: behind what is on disk.
    mesh.dm("alice", "bob", "after");
    // A resend of what is on disk only is not taken twice.
    mesh.resend("alice", &first);
    mesh.run();
    assert_eq!(mesh.mailbox("M"), 1_101);
    mesh.user("bob", "B");
    let mut want: Vec<String> = (0..1_100).map(|i| format!("alice: m{i}")).collect();
    want.push("alice: after".into());
    assert_eq!(mesh.delivered("bob"), want);
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 1_101);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_mailbox_past_its_age_limit_is_dropped_from_disk() {
    let mut mesh = two_locals(91);
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    mesh.dm("alice", "bob", "old");
    mesh.run();
    mesh.restart("M");
    assert_eq!(mesh.mailbox("M"), 1);
    let week = 7 * 24 * 3600 * 1000;
    mesh.advance(week + 120_000);
    assert_eq!(mesh.mailbox("M"), 0, "expired although it was on disk only");
    assert_eq!(mesh.rows("M"), 0);
    mesh.user("bob", "B");
    assert!(mesh.delivered("bob").is_empty());
}

#[test]
fn a_restarted_master_reads_its_directory_from_disk() {
    let mut mesh = two_locals(92);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.disconnect("alice");
    mesh.restart("M");
    mesh.advance(1_000);
    // Known by the key on disk: welcomed, and a lookup finds her.
    mesh.user("alice", "A");
    mesh.lookup("bob", "alice");
    mesh.run();
    assert_eq!(mesh.lookups("bob"), [("alice".to_owned(), true)]);
    let id = mesh.dm("bob", "alice", "hi");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["bob: hi"]);
    assert!(mesh.acked("bob").contains(&id));
}
