//! Routing DMs: on one server, across locals through the master, over a
//! direct link, to the master's mailbox, and to nobody.

use super::{Mesh, all_handed_on, two_locals};
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

#[test]
fn a_dm_between_users_of_one_local_never_leaves_it() {
    let mut mesh = two_locals(10);
    mesh.user("alice", "A");
    mesh.user("bob", "A");
    let id = mesh.dm("alice", "bob", "hi");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: hi"]);
    assert_eq!(mesh.receipts("alice", "delivered"), [id]);
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 0);
    assert!(all_handed_on(&mesh, &["A"]));
}

#[test]
fn a_dm_across_locals_is_carried_by_the_master_and_confirmed() {
    let mut mesh = two_locals(11);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    let id = mesh.dm("alice", "bob", "hi");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: hi"]);
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 1);
    assert_eq!(mesh.acked("alice"), [id.as_str()]);
    assert_eq!(mesh.receipts("alice", "delivered"), [id]);
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 1);
    assert_eq!(mesh.carried("M", "B", Kind::PeerDeliver), 1);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn users_on_the_master_and_on_a_local_reach_each_other() {
    let mut mesh = two_locals(12);
    mesh.user("dave", "M");
    mesh.user("alice", "A");
    mesh.dm("alice", "dave", "up");
    mesh.dm("dave", "alice", "down");
    mesh.run();
    assert_eq!(mesh.delivered("dave"), ["alice: up"]);
    assert_eq!(mesh.delivered("alice"), ["dave: down"]);
    assert!(all_handed_on(&mesh, &["A", "M"]));
}

#[test]
fn a_direct_link_between_locals_carries_their_dms() {
    let mut mesh = Mesh::new(13)
        .master("M")
        .local("A")
        .local("B")
        .link("A", "M")
        .link("B", "M")
        .link("A", "B");
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.dm("alice", "bob", "direct");
    mesh.dm("bob", "alice", "back");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: direct"]);
    assert_eq!(mesh.delivered("alice"), ["bob: back"]);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 1);
    assert_eq!(mesh.carried("B", "A", Kind::PeerDeliver), 1);
    assert_eq!(
        mesh.carried("A", "M", Kind::PeerDeliver),
        0,
        "the master is skipped"
    );
    assert_eq!(
        mesh.carried("B", "M", Kind::PeerDeliver),
        0,
        "the master is skipped"
    );
}

#[test]
fn content_for_an_offline_user_waits_at_the_master_and_drains_in_order_at_login() {
    let mut mesh = two_locals(14);
    for (user, node) in [("bob", "B"), ("dave", "M")] {
        mesh.user(user, node);
        mesh.disconnect(user);
    }
    mesh.user("alice", "A");
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|text| mesh.dm("alice", "bob", text))
        .collect();
    mesh.dm("alice", "dave", "four");
    mesh.run();
    assert_eq!(mesh.receipts("alice", "queued")[..3], ids);
    assert_eq!(mesh.mailbox("M"), 4);
    assert!(all_handed_on(&mesh, &["A"]), "the master holds them");
    // Bob comes back on another local: his mail follows him there.
    mesh.user("bob", "A");
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: one", "alice: two", "alice: three"]
    );
    assert_eq!(mesh.receipts("alice", "delivered"), ids);
    // Dave comes back on the master itself.
    mesh.user("dave", "M");
    assert_eq!(mesh.delivered("dave"), ["alice: four"]);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_dm_to_an_unknown_user_comes_back_as_an_error() {
    let mut mesh = two_locals(15);
    mesh.user("alice", "A");
    let id = mesh.dm("alice", "zed", "anyone?");
    mesh.run();
    assert_eq!(
        mesh.error_about("alice", &id),
        Some(ErrorCode::UserNotFound)
    );
    assert_eq!(
        mesh.carried("A", "M", Kind::PeerDeliver),
        1,
        "only the master knows"
    );
    assert!(all_handed_on(&mesh, &["A", "M"]), "set aside, not kept");
}

#[test]
fn mailbox_frames_past_their_age_are_dropped_at_a_tick() {
    let mut mesh = Mesh::new(16)
        .node("M", true, |cfg| cfg.limits.max_age_ms = 60_000)
        .local("A")
        .link("A", "M");
    mesh.user("bob", "A");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    mesh.dm("alice", "bob", "too old");
    mesh.run();
    mesh.advance(50_000);
    assert_eq!(mesh.mailbox("M"), 1, "still young");
    mesh.dm("alice", "bob", "young");
    mesh.run();
    mesh.advance(30_000); // the master ticks every quarter of the age limit
    assert_eq!(mesh.mailbox("M"), 1, "the first expired, not the second");
    mesh.user("bob", "A");
    assert_eq!(mesh.delivered("bob"), ["alice: young"]);
    assert!(all_handed_on(&mesh, &["A", "M"]));
}
