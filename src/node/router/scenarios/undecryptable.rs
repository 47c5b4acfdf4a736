//! `undecryptable` reports (DESIGN.md "Undecryptable content"): a recipient
//! whose client could not decrypt a DM says so before acknowledging it; its
//! sender's client is told `undecryptable` instead of `delivered`, across
//! the mesh. A user can report only DMs for it that it was handed and has
//! not acknowledged: nobody can speak for content they never received.

use super::{Mesh, all_handed_on, two_locals};
use crate::wire::ErrorCode;
use crate::wire::messages::{Kind, UNDECRYPTABLE};

/// `alice` (on `at_a`) sends `bob` (on `at_b`) a DM he cannot decrypt: he
/// reports it, then acknowledges it. Returns the mesh and the DM's id.
fn unreadable_dm(seed: u64, at_a: &str, at_b: &str) -> (Mesh, String) {
    let mut mesh = two_locals(seed);
    mesh.user("alice", at_a);
    mesh.user("bob", at_b);
    mesh.hold_acks("bob");
    let id = mesh.dm("alice", "bob", "sealed to your old key");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: sealed to your old key"]);
    mesh.report_undecryptable("bob", "alice", &[&id]);
    mesh.ack_now("bob");
    mesh.run();
    (mesh, id)
}

#[test]
fn a_dm_its_recipient_cannot_decrypt_is_reported_across_locals_never_delivered() {
    let (mut mesh, id) = unreadable_dm(300, "A", "B");
    assert_eq!(
        mesh.receipts("alice", UNDECRYPTABLE),
        std::slice::from_ref(&id)
    );
    assert!(mesh.receipts("alice", "delivered").is_empty());
    assert!(mesh.errors("bob").is_empty(), "{:?}", mesh.errors("bob"));
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
    // The next one, readable, is delivered as usual.
    mesh.ack_now("bob");
    let next = mesh.dm("alice", "bob", "and now?");
    mesh.run();
    mesh.ack_now("bob");
    mesh.run();
    assert_eq!(mesh.receipts("alice", "delivered"), [next]);
    assert_eq!(mesh.receipts("alice", UNDECRYPTABLE), [id]);
}

#[test]
fn a_report_reaches_a_sender_on_the_same_server_and_on_the_master() {
    for (seed, a, b) in [(301, "A", "A"), (302, "M", "B"), (303, "A", "M")] {
        let (mesh, id) = unreadable_dm(seed, a, b);
        assert_eq!(mesh.receipts("alice", UNDECRYPTABLE), [id], "{a} -> {b}");
        assert!(mesh.receipts("alice", "delivered").is_empty(), "{a} -> {b}");
    }
}

#[test]
fn a_dm_from_the_mailbox_is_reported_back_to_its_sender() {
    let mut mesh = two_locals(304);
    mesh.user("bob", "B");
    mesh.disconnect("bob");
    mesh.user("alice", "A");
    let id = mesh.dm("alice", "bob", "while you were away");
    mesh.run();
    assert_eq!(mesh.receipts("alice", "queued"), std::slice::from_ref(&id));
    mesh.hold_acks("bob");
    mesh.user("bob", "B");
    mesh.run();
    mesh.report_undecryptable("bob", "alice", &[&id]);
    mesh.ack_now("bob");
    mesh.run();
    assert_eq!(mesh.receipts("alice", UNDECRYPTABLE), [id]);
    assert!(mesh.receipts("alice", "delivered").is_empty());
}

#[test]
fn reports_for_content_the_reporter_was_not_handed_are_dropped() {
    let mut mesh = two_locals(305);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "B");
    mesh.hold_acks("carol");
    mesh.hold_acks("bob");
    // Alice's DM to Carol, in flight to Carol: Bob cannot report it.
    let to_carol = mesh.dm("alice", "carol", "for carol");
    // Alice's DM to Bob: reported under another sender's name, or with an
    // id nobody sent, it is not marked.
    let to_bob = mesh.dm("alice", "bob", "for bob");
    mesh.run();
    mesh.report_undecryptable("bob", "alice", &[&to_carol, "made-up-id"]);
    mesh.report_undecryptable("bob", "carol", &[&to_bob]);
    mesh.ack_now("carol");
    mesh.ack_now("bob");
    mesh.run();
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
    let mut delivered = mesh.receipts("alice", "delivered");
    delivered.sort();
    let mut want = vec![to_carol, to_bob.clone()];
    want.sort();
    assert_eq!(delivered, want);
    assert!(mesh.receipts("carol", UNDECRYPTABLE).is_empty());
    // Once acknowledged, it is too late to report it.
    mesh.report_undecryptable("bob", "alice", &[&to_bob]);
    mesh.run();
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
    assert!(mesh.errors("bob").is_empty(), "{:?}", mesh.errors("bob"));
}

#[test]
fn a_user_may_send_no_other_receipt_nor_a_flood_of_ids() {
    let mut mesh = two_locals(306);
    mesh.user("alice", "A");
    mesh.user("bob", "A");
    mesh.hold_acks("bob");
    let id = mesh.dm("alice", "bob", "hi");
    mesh.run();
    let receipt = |status: &str, ids: Vec<String>| {
        let r = crate::wire::messages::Message::Receipt(crate::wire::messages::Receipt {
            user_id: "alice".into(),
            msg_ids: ids,
            status: status.into(),
            extra: Default::default(),
        });
        (r.kind(), r.to_payload())
    };
    let (kind, forged) = receipt("delivered", vec![id.clone()]);
    mesh.send_frame("bob", kind, "alice", forged);
    let mut many: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
    many.push(id.clone());
    let (kind, flood) = receipt(UNDECRYPTABLE, many);
    mesh.send_frame("bob", kind, "alice", flood);
    mesh.run();
    assert_eq!(
        mesh.errors("bob"),
        [ErrorCode::NotAllowed, ErrorCode::BadFrame]
    );
    mesh.ack_now("bob");
    mesh.run();
    // Neither made Alice's DM anything but delivered, once.
    assert_eq!(mesh.receipts("alice", "delivered"), [id]);
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
}

#[test]
fn a_sender_whose_client_did_not_ask_gets_no_undecryptable_receipt() {
    let mut mesh = two_locals(307);
    mesh.old_client("alice");
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold_acks("bob");
    let id = mesh.dm("alice", "bob", "hi");
    mesh.run();
    mesh.report_undecryptable("bob", "alice", &[&id]);
    mesh.ack_now("bob");
    mesh.run();
    // Nothing it could take for "delivered", and nothing it cannot read.
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
    assert!(mesh.receipts("alice", "delivered").is_empty());
    assert!(all_handed_on(&mesh, &["A", "M", "B"]));
}

#[test]
fn a_report_ends_with_the_connection_it_was_made_on() {
    // Review finding: a mark outlived the connection that made it, so the
    // DM handed on again was `undecryptable` even when the client (with
    // its key back) opened it and said nothing.
    let mut mesh = two_locals(308);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.hold_acks("bob");
    let id = mesh.dm("alice", "bob", "sealed to a key bob found again");
    mesh.run();
    mesh.report_undecryptable("bob", "alice", &[&id]);
    mesh.run();
    mesh.disconnect("bob");
    mesh.run();
    assert_eq!(mesh.router("B").unreadable.len(), 0);
    mesh.user("bob", "B");
    mesh.run();
    assert_eq!(
        mesh.received("bob", Kind::UserDeliver),
        2,
        "handed on again"
    );
    mesh.ack_now("bob");
    mesh.run();
    assert_eq!(mesh.receipts("alice", "delivered"), [id]);
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
}

#[test]
fn a_report_about_content_without_receipts_leaves_no_mark_once_acknowledged() {
    // Review finding: a reported group message kept its mark after its
    // `ACK` (only DMs took theirs), so a member could pile marks up.
    let mut mesh = two_locals(309);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.share_group("alice", "group_team", &["alice", "bob"]);
    mesh.run();
    mesh.hold_acks("bob");
    let ids: Vec<String> = (0..3)
        .map(|i| mesh.group_msg("alice", "group_team", &format!("m{i}")))
        .collect();
    mesh.run();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    mesh.report_undecryptable("bob", "alice", &ids);
    mesh.run();
    assert_eq!(mesh.router("B").unreadable.len(), 3);
    mesh.ack_now("bob");
    mesh.run();
    assert_eq!(mesh.router("B").unreadable.len(), 0);
    assert!(mesh.receipts("alice", UNDECRYPTABLE).is_empty());
    assert!(mesh.errors("bob").is_empty(), "{:?}", mesh.errors("bob"));
}
