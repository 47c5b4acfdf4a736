//! Groups: the key share goes through the master to every member, and
//! group messages fan out once to each member wherever they are.

use super::{Mesh, all_handed_on, two_locals};
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

/// Alice (A) creates `group_team` with carol (A), bob (B) and dave (M).
fn team() -> Mesh {
    let mut mesh = two_locals(40);
    mesh.user("alice", "A");
    mesh.user("carol", "A");
    mesh.user("bob", "B");
    mesh.user("dave", "M");
    mesh.share_group("alice", "group_team", &["alice", "bob", "carol", "dave"]);
    mesh.run();
    mesh
}

#[test]
fn a_group_key_share_and_messages_reach_every_member_once() {
    let mut mesh = team();
    for member in ["bob", "carol", "dave"] {
        assert_eq!(mesh.shares(member), ["group_team"], "{member}");
        assert_eq!(mesh.received(member, Kind::GroupKeyShare), 1, "{member}");
    }
    mesh.group_msg("alice", "group_team", "hi all");
    mesh.run();
    mesh.group_msg("bob", "group_team", "hi alice");
    mesh.run();
    for member in ["carol", "dave"] {
        assert_eq!(
            mesh.delivered(member),
            ["alice in group_team: hi all", "bob in group_team: hi alice"],
            "{member}"
        );
        assert_eq!(mesh.received(member, Kind::MsgGroup), 2, "{member}");
    }
    assert_eq!(mesh.delivered("bob"), ["alice in group_team: hi all"]);
    assert_eq!(mesh.delivered("alice"), ["bob in group_team: hi alice"]);
    // One copy per server on each link, not one per member.
    assert_eq!(mesh.carried("A", "M", Kind::MsgGroup), 1);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_key_share_from_anyone_but_the_owner_is_refused() {
    let mut mesh = team();
    let id = mesh.share_group("bob", "group_team", &["bob", "carol"]);
    mesh.run();
    assert_eq!(mesh.error_about("bob", &id), Some(ErrorCode::NotAllowed));
    assert_eq!(
        mesh.received("carol", Kind::GroupKeyShare),
        1,
        "only alice's"
    );
    // The group is unchanged: alice's next message still reaches dave.
    mesh.group_msg("alice", "group_team", "still mine");
    mesh.run();
    assert_eq!(mesh.delivered("dave"), ["alice in group_team: still mine"]);
}
