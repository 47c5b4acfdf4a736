//! The master off the data path: locals learn each other from the master
//! (`PEER_ANNOUNCE`) and link directly; DMs between them take one hop; with
//! the master gone, users on two directly linked locals keep talking, and
//! what waited for the master arrives once when it is back.

use serde_json::{Value, json};

use super::{Mesh, all_handed_on};
use crate::wire::messages::Kind;

/// A master and three locals that only know the master's address.
fn three_locals(seed: u64) -> Mesh {
    Mesh::new(seed)
        .discover()
        .master("M")
        .local("A")
        .local("B")
        .local("C")
        .link("A", "M")
        .link("B", "M")
        .link("C", "M")
}

#[test]
fn locals_announced_by_the_master_link_to_each_other() {
    let mesh = three_locals(70);
    for (a, b) in [("A", "B"), ("A", "C"), ("B", "C")] {
        assert!(mesh.linked(a, b), "{a} and {b} are linked");
        assert!(mesh.linked(b, a), "{b} and {a} are linked");
    }
    assert_eq!(mesh.carried("M", "A", Kind::PeerAnnounce), 2);
}

#[test]
fn a_dm_between_announced_locals_skips_the_master() {
    let mut mesh = three_locals(71);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "C");
    let id = mesh.dm("alice", "bob", "one hop");
    mesh.dm("carol", "alice", "also");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: one hop"]);
    assert_eq!(mesh.delivered("alice"), ["carol: also"]);
    assert_eq!(mesh.receipts("alice", "delivered"), [id]);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 1);
    assert_eq!(mesh.carried("C", "A", Kind::PeerDeliver), 1);
    for local in ["A", "B", "C"] {
        assert_eq!(mesh.carried(local, "M", Kind::PeerDeliver), 0);
        assert_eq!(mesh.carried("M", local, Kind::PeerDeliver), 0);
    }
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn a_local_does_not_link_a_server_its_admit_list_leaves_out() {
    let mut mesh = Mesh::new(72)
        .discover()
        .master("M")
        .local("A")
        .local("B")
        .local("C");
    mesh = mesh.admit("A", &["M", "B"]);
    let mesh = mesh.link("A", "M").link("B", "M").link("C", "M");
    assert!(mesh.linked("A", "B"));
    assert!(!mesh.linked("A", "C"), "C is not admitted at A");
    assert!(mesh.linked("B", "C"));
}

#[test]
fn with_the_master_down_linked_locals_keep_exchanging_dms() {
    let mut mesh = three_locals(73);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "C");
    mesh.disconnect("carol");
    mesh.run();
    mesh.cut("A", "M");
    mesh.cut("B", "M");
    mesh.cut("C", "M");
    mesh.run();
    assert!(
        mesh.online("A").contains(&"bob".to_owned()),
        "bob is still online at A"
    );
    let direct = mesh.dm("alice", "bob", "still here");
    mesh.dm("bob", "alice", "me too");
    let queued = mesh.dm("alice", "carol", "for later");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: still here"]);
    assert_eq!(mesh.delivered("alice"), ["bob: me too"]);
    assert_eq!(mesh.custody("A"), 1, "the DM for offline carol waits at A");
    // The master is back: what waited goes to its mailbox, then to carol.
    mesh.heal("A", "M");
    mesh.heal("B", "M");
    mesh.heal("C", "M");
    mesh.run();
    assert_eq!(mesh.custody("A"), 0);
    assert_eq!(mesh.mailbox("M"), 1);
    mesh.connect("carol", "C");
    mesh.run();
    assert_eq!(mesh.delivered("carol"), ["alice: for later"]);
    assert_eq!(mesh.receipts("alice", "delivered"), [direct, queued]);
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn a_user_who_leaves_while_the_master_is_down_is_gone_at_the_peers() {
    let mut mesh = three_locals(74);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.run();
    mesh.cut("A", "M");
    mesh.cut("B", "M");
    mesh.run();
    mesh.disconnect("bob");
    mesh.run();
    assert!(!mesh.online("A").contains(&"bob".to_owned()));
    mesh.dm("alice", "bob", "later");
    mesh.run();
    assert_eq!(mesh.custody("A"), 1, "waits for the master's mailbox");
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 0);
}

#[test]
fn a_peer_cannot_replay_an_old_proof_to_draw_a_users_dms() {
    let mut mesh = three_locals(75);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "C");
    mesh.lookup("alice", "carol"); // A caches carol's directory key
    mesh.run();
    let proof = mesh
        .carried_frames("M", "B", Kind::UserAdvertise)
        .iter()
        .find(|f| f.payload["user_id"] == "carol")
        .map(|f| f.payload["proof"].clone())
        .expect("carol's advert reached B");
    mesh.disconnect("carol");
    mesh.run();
    mesh.cut("A", "M");
    mesh.cut("B", "M");
    mesh.advance(300_000); // her proof is stale now
    let Value::Object(claim) =
        json!({"user_id": "carol", "location": mesh.id("B"), "proof": proof})
    else {
        unreachable!()
    };
    mesh.inject("B", "A", Kind::UserAdvertise, "*", claim);
    mesh.run();
    assert!(!mesh.online("A").contains(&"carol".to_owned()));
    mesh.dm("alice", "carol", "not for B");
    mesh.run();
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 0);
    assert_eq!(mesh.custody("A"), 1, "waits for the master");
}

#[test]
fn group_messages_fan_out_from_the_senders_local() {
    let mut mesh = three_locals(76);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "C");
    mesh.user("dave", "M");
    mesh.user("erin", "C");
    mesh.share_group(
        "alice",
        "group_g",
        &["alice", "bob", "carol", "dave", "erin"],
    );
    mesh.run();
    mesh.disconnect("erin");
    mesh.run();
    mesh.group_msg("alice", "group_g", "hi");
    mesh.run();
    for member in ["bob", "carol", "dave"] {
        assert_eq!(mesh.delivered(member), ["alice in group_g: hi"], "{member}");
    }
    // One frame to each local hosting members, straight from A; the master
    // gets one, for its own member and the offline one.
    assert_eq!(mesh.carried("A", "B", Kind::MsgGroup), 1);
    assert_eq!(mesh.carried("A", "C", Kind::MsgGroup), 1);
    let to_master = mesh.carried_frames("A", "M", Kind::MsgGroup);
    assert_eq!(to_master.len(), 1);
    assert_eq!(to_master[0].payload["recipients"], json!(["dave", "erin"]));
    assert_eq!(mesh.carried("M", "B", Kind::MsgGroup), 0);
    assert_eq!(mesh.carried("M", "C", Kind::MsgGroup), 0);
    mesh.connect("erin", "C");
    mesh.run();
    assert_eq!(mesh.delivered("erin"), ["alice in group_g: hi"]);
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn a_direct_link_does_not_overtake_the_masters_mailbox() {
    let mut mesh = three_locals(77);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.run();
    mesh.dm("alice", "bob", "first");
    mesh.run();
    assert_eq!(mesh.mailbox("M"), 1);
    // bob is back; the master's mailbox is slow to reach B.
    mesh.hold("M", "B");
    mesh.connect("bob", "B");
    mesh.run();
    mesh.dm("alice", "bob", "second");
    mesh.run();
    mesh.release("M", "B");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first", "alice: second"]);
    // "second" waited for the master's path to deliver "first", then went
    // direct (`sticky.rs`): the master carried only what left before bob
    // was back.
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 1);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 1);
    // Once the master path has delivered, DMs go direct at once.
    mesh.dm("alice", "bob", "third");
    mesh.run();
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 2);
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: first", "alice: second", "alice: third"]
    );
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn a_local_gone_a_minute_is_withdrawn_and_the_others_stop_dialing_it() {
    let mut mesh = three_locals(76);
    // The one of A and C that dialed the other is the one told to stop.
    let (dialer, gone) = if mesh.dials("A", "C") > 0 {
        ("A", "C")
    } else {
        ("C", "A")
    };
    assert!(mesh.dials(dialer, gone) > 0);
    mesh.halt(gone);
    // A moment's drop is not worth telling: no withdrawal yet, and the
    // dialer keeps dialing.
    mesh.advance(30_000);
    assert_eq!(mesh.carried("M", dialer, Kind::PeerWithdraw), 0);
    let before = mesh.dials(dialer, gone);
    mesh.advance(31_000);
    assert_eq!(mesh.carried("M", dialer, Kind::PeerWithdraw), 1);
    assert_eq!(mesh.carried("M", "B", Kind::PeerWithdraw), 1);
    assert!(
        mesh.dials(dialer, gone) > before,
        "dialed while not withdrawn"
    );
    let withdrawn = mesh.dials(dialer, gone);
    mesh.advance(120_000);
    assert_eq!(
        mesh.dials(dialer, gone),
        withdrawn,
        "no dial once withdrawn"
    );
    // It comes back: the master announces it again, and it is dialed again.
    mesh.start(gone);
    mesh.advance(30_000);
    assert!(mesh.linked(gone, "M"));
    assert!(
        mesh.linked(dialer, gone),
        "linked again once announced again"
    );
    assert!(mesh.linked("B", gone));
}

#[test]
fn a_local_back_within_the_minute_is_not_withdrawn() {
    let mut mesh = three_locals(77);
    mesh.halt("C");
    mesh.advance(20_000);
    mesh.start("C");
    mesh.advance(70_000);
    assert!(mesh.linked("C", "M"));
    for local in ["A", "B"] {
        assert_eq!(mesh.carried("M", local, Kind::PeerWithdraw), 0);
        assert!(mesh.linked(local, "C"), "{local} and C are linked again");
    }
}

#[test]
fn a_withdrawal_leaves_a_live_direct_link_alone() {
    // The master lost C (a cut between them only): C is alive and linked
    // to A and B, and stays so after the withdrawal.
    let mut mesh = three_locals(78);
    mesh.cut("C", "M");
    mesh.advance(61_000);
    assert_eq!(mesh.carried("M", "A", Kind::PeerWithdraw), 1);
    assert!(mesh.linked("A", "C"));
    assert!(mesh.linked("B", "C"));
}
