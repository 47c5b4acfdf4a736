//! Custody: what a server keeps until the next hop acknowledges it, and
//! what becomes of it when frames are lost, repeated or reordered, when a
//! link drops, and when a recipient does not keep up.

use super::super::custody::WINDOW;
use super::{Mesh, all_handed_on, two_locals};
use crate::wire::messages::Kind;

#[test]
fn a_frame_lost_on_a_link_is_sent_again_after_the_link_drops_and_delivered_once() {
    let mut mesh = two_locals(20);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.drop_next("A", "M", Kind::PeerDeliver);
    mesh.dm("alice", "bob", "lost once");
    mesh.run();
    assert!(mesh.delivered("bob").is_empty());
    assert_eq!(mesh.custody("A"), 1, "A keeps it: nobody acknowledged it");
    mesh.cut("A", "M");
    mesh.heal("A", "M");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: lost once"]);
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 1);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn what_was_in_flight_when_a_link_broke_reaches_the_client_once() {
    let mut mesh = two_locals(21);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    // B's acknowledgements to the master are on their way when the link breaks.
    mesh.hold("B", "M");
    for text in ["one", "two", "three"] {
        mesh.dm("alice", "bob", text);
    }
    mesh.run();
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 3);
    assert_eq!(mesh.custody("M"), 3, "unacknowledged on the link to B");
    mesh.cut("B", "M");
    mesh.heal("B", "M");
    mesh.run();
    // The master sent them again; the client shows each once, in order.
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 6);
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: one", "alice: two", "alice: three"]
    );
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_repeated_dm_is_taken_once_but_another_senders_same_id_is_not_a_repeat() {
    let mut mesh = two_locals(22);
    mesh.user("alice", "A");
    mesh.user("carol", "A");
    mesh.user("bob", "B");
    let id = mesh.dm("alice", "bob", "hi");
    mesh.resend("alice", &id);
    // Content identity is (sender, msg_id): carol's is other content.
    mesh.dm_with_id("carol", "bob", "hello", &id);
    mesh.run();
    assert_eq!(
        mesh.acked("alice"),
        [id.clone(), id.clone()],
        "both acknowledged"
    );
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 2);
    assert_eq!(mesh.delivered("bob"), ["alice: hi", "carol: hello"]);
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 2);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn frames_and_acks_reordered_on_a_link_are_each_delivered_once() {
    let mut mesh = two_locals(23);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold("A", "M");
    for text in ["one", "two", "three"] {
        mesh.dm("alice", "bob", text);
    }
    mesh.run();
    assert_eq!(mesh.in_flight("A", "M"), [Kind::PeerDeliver; 3]);
    mesh.reverse("A", "M");
    mesh.hold("M", "A");
    mesh.release("A", "M");
    mesh.run();
    let back = mesh.in_flight("M", "A");
    assert_eq!(
        back.iter().filter(|k| **k == Kind::Ack).count(),
        3,
        "{back:?}"
    );
    mesh.reverse("M", "A");
    mesh.release("M", "A");
    mesh.run();
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: three", "alice: two", "alice: one"],
        "in the order the master got them"
    );
    assert_eq!(mesh.received("bob", Kind::UserDeliver), 3);
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn interleavings_of_several_links_change_nothing_users_see() {
    for seed in 0..6 {
        let mut mesh = Mesh::new(seed)
            .jitter(7)
            .master("M")
            .local("A")
            .local("B")
            .local("C")
            .link("A", "M")
            .link("B", "M")
            .link("C", "M");
        mesh.user("alice", "A");
        mesh.user("carol", "B");
        mesh.user("bob", "C");
        for n in 0..5 {
            mesh.dm("alice", "bob", &format!("a{n}"));
            mesh.dm("carol", "bob", &format!("c{n}"));
        }
        mesh.run();
        let got = mesh.delivered("bob");
        for sender in ["alice", "carol"] {
            let from: Vec<&String> = got.iter().filter(|l| l.starts_with(sender)).collect();
            let want: Vec<String> = (0..5)
                .map(|n| format!("{sender}: {}{n}", &sender[..1]))
                .collect();
            assert_eq!(from, want.iter().collect::<Vec<_>>(), "seed {seed}");
        }
        assert_eq!(mesh.received("bob", Kind::UserDeliver), 10, "seed {seed}");
        assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]), "seed {seed}");
    }
}

#[test]
fn a_recipient_that_does_not_acknowledge_is_sent_one_window_at_a_time() {
    let mut mesh = two_locals(24);
    mesh.user("alice", "A");
    mesh.user("bob", "A");
    mesh.hold_acks("bob");
    let total = WINDOW + 20;
    for n in 0..total {
        mesh.dm("alice", "bob", &n.to_string());
    }
    mesh.run();
    assert_eq!(mesh.received("bob", Kind::UserDeliver), WINDOW);
    assert_eq!(mesh.custody("A"), total, "the rest waits at A");
    mesh.ack_now("bob");
    mesh.run();
    assert_eq!(mesh.received("bob", Kind::UserDeliver), total);
    mesh.ack_now("bob");
    mesh.run();
    let want: Vec<String> = (0..total).map(|n| format!("alice: {n}")).collect();
    assert_eq!(mesh.delivered("bob"), want);
    assert_eq!(mesh.receipts("alice", "delivered").len(), total);
    assert!(all_handed_on(&mesh, &["A"]));
}
