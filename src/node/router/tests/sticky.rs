//! The wait for the master's path to drain (`sticky.rs`), at one router:
//! only where a direct path and receipts exist.

use super::*;
use crate::node::records::PresenceRecord;

/// A local with alice here, its master on conn 9, `server_b` linked
/// directly on conn 7, bob live there (with his hello's proof or without
/// one, as a client without a signed hello has), and one of alice's DMs to
/// bob still on the master's path.
fn local_with_bob_at_b(proof: bool) -> Router {
    let mut r = router(false);
    r.step(0, master_link(9));
    r.step(0, local_link(7, "server_b"));
    session_here(&mut r, "alice", 1);
    let proof = proof.then(|| {
        let Input::UserHello(h) = signed_hello(0, "bob", key("bob"), 0) else {
            unreachable!()
        };
        h.proof.unwrap()
    });
    r.presence.insert(
        "bob".into(),
        PresenceRecord {
            location: "server_b".into(),
            via: "server_b".into(),
            proof,
            live: true,
            updated_ms: 0,
        },
    );
    r.online.set("bob", super::super::online::REMOTE, true);
    r.via_master.record("alice", "earlier", "bob", 0);
    r
}

fn content_to(out: &[Output], conn: ConnId) -> usize {
    sends(out)
        .iter()
        .filter(|(c, k, _)| *c == conn && matches!(k, Kind::PeerDeliver | Kind::MsgPrivate))
        .count()
}

fn timers(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Timer { .. }))
        .count()
}

#[test]
fn a_dm_waits_for_the_masters_path_when_it_can_then_go_direct() {
    let mut r = local_with_bob_at_b(true);
    let out = r.step(1, dm("alice", "bob"));
    assert_eq!(content_to(&out, 9) + content_to(&out, 7), 0, "it waits");
    assert_eq!(timers(&out), 1, "at most so long");
}

#[test]
fn no_wait_for_a_recipient_whose_client_sends_no_receipts() {
    // Review of the wait: a client without a signed hello sends no
    // `delivered` receipts, so the master's path would never be seen to
    // drain and every DM to it would wait a second.
    let mut r = local_with_bob_at_b(false);
    let out = r.step(1, dm("alice", "bob"));
    assert_eq!(
        content_to(&out, 9),
        1,
        "after the earlier one, via the master"
    );
    assert_eq!(timers(&out), 0);
}
