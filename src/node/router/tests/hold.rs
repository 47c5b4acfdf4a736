//! Link hellos that could be replays (DESIGN.md "Links"): a `socp` hello's
//! signed `ts` and `to`, the seen-hello cache, and a second link held until
//! its first frame proves the key.

use super::*;
use crate::wire::announce::{HELLO_TO, HELLO_TS};

const L1: &str = "server_11111111-1111-4111-8111-111111111111";

/// A `socp` local's hello to us (the master) on `conn`, signing `ts` (and
/// `to`, if given); `sig` stands for its signature (checked by the
/// connection, not the router). With `session`, we offered `mac-v1`.
fn socp_hello(conn: ConnId, ts: i64, to: Option<&str>, sig: &str, session: bool) -> Input {
    let mut h = link(conn, L1, key("carol"), Role::Local, false);
    let mut payload = Map::new();
    payload.insert(HELLO_TS.into(), ts.into());
    if let Some(to) = to {
        payload.insert(HELLO_TO.into(), to.into());
    }
    h.ts = ts;
    h.signed = Some(Proof {
        payload,
        sig: sig.into(),
        extra: Map::new(),
    });
    h.session = session.then(|| "wrapped".to_owned());
    Input::LinkHello(h)
}

fn heartbeat(conn: ConnId) -> Input {
    let env = Envelope::new(Kind::Heartbeat.name(), L1, TO_SERVER, Map::new());
    let msg = Message::Heartbeat(Default::default());
    Input::LinkFrame { conn, env, msg }
}

fn closes(out: &[Output]) -> Vec<ConnId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn link_conn(r: &Router) -> Option<ConnId> {
    r.links.get(L1).map(|l| l.conn)
}

use crate::wire::ids::TO_SERVER;

#[test]
fn a_socp_link_hello_is_taken_once_fresh_and_only_by_the_server_it_names() {
    let mut r = router(true);
    let now = 1_000_000;
    r.step(
        now,
        socp_hello(1, now, Some("master_server_m"), "s1", false),
    );
    assert_eq!(link_conn(&r), Some(1));
    // The same signed hello again, under a later envelope ts.
    let out = r.step(
        now + 10,
        socp_hello(2, now, Some("master_server_m"), "s1", false),
    );
    assert_eq!(error_code(&out), Some(ErrorCode::InvalidSig));
    // Signed for another server.
    let out = r.step(
        now + 20,
        socp_hello(3, now + 20, Some("server_x"), "s3", false),
    );
    assert_eq!(error_code(&out), Some(ErrorCode::NotAllowed));
    // Signed too long ago (its signature forgotten since).
    let later = now + 10 * HELLO_FRESHNESS_MS;
    r.step(later, Input::Tick);
    let out = r.step(later, socp_hello(4, now + 30, None, "s4", false));
    assert_eq!(error_code(&out), Some(ErrorCode::InvalidSig));
    assert_eq!(link_conn(&r), Some(1));
    // A fresh one, meant for us, replaces the link (no session: at once).
    let out = r.step(later, socp_hello(5, later, None, "s5", false));
    assert_eq!(closes(&out), [1]);
    assert_eq!(link_conn(&r), Some(5));
}

/// L1 linked on `conn` with a session: its hello, then its first frame.
fn linked_with_session(r: &mut Router, conn: ConnId, now: i64) {
    r.step(now, socp_hello(conn, now, None, &format!("s{conn}"), true));
    r.step(now, heartbeat(conn));
    assert_eq!(link_conn(r), Some(conn));
}

#[test]
fn a_first_link_with_a_session_is_held_until_its_first_frame() {
    // A hello without `to` (the dialer did not know our id yet) that the
    // master announced: replayed here within its freshness, it must not
    // take the server's place before the real one links (review finding).
    let mut r = router(true);
    let out = r.step(1_000, socp_hello(1, 1_000, None, "s1", true));
    assert!(
        sends(&out)
            .iter()
            .any(|s| s.0 == 1 && s.1 == Kind::PeerHelloLink)
    );
    assert_eq!(link_conn(&r), None, "not a link before it proves its key");
    let out = r.step(1_100, heartbeat(1));
    assert!(closes(&out).is_empty());
    assert_eq!(link_conn(&r), Some(1));
}

#[test]
fn a_second_link_with_a_session_is_held_until_its_first_frame() {
    let mut r = router(true);
    linked_with_session(&mut r, 1, 1_000);
    let out = r.step(2_000, socp_hello(2, 2_000, None, "s2", true));
    // Answered (so the real dialer gets its session), the old link kept.
    assert!(
        sends(&out)
            .iter()
            .any(|s| s.0 == 2 && s.1 == Kind::PeerHelloLink)
    );
    assert!(closes(&out).is_empty());
    assert_eq!(link_conn(&r), Some(1));
    // Its first frame passed the session's MAC: it takes the link.
    let out = r.step(2_100, heartbeat(2));
    assert_eq!(closes(&out), [1]);
    assert_eq!(link_conn(&r), Some(2));
}

#[test]
fn a_held_link_that_proves_nothing_is_closed_and_the_live_one_kept() {
    let mut r = router(true);
    linked_with_session(&mut r, 1, 1_000);
    let out = r.step(2_000, socp_hello(2, 2_000, None, "s2", true));
    let timer = out
        .iter()
        .find_map(|o| match o {
            Output::Timer { req_id, after } if *after == super::super::link_hold::LINK_HOLD => {
                Some(req_id.clone())
            }
            _ => None,
        })
        .expect("a held link has a deadline");
    let out = r.step(22_000, Input::Timeout(timer));
    assert_eq!(closes(&out), [2]);
    assert_eq!(link_conn(&r), Some(1));
    // Frames on the live link go on.
    let out = r.step(22_100, heartbeat(1));
    assert!(closes(&out).is_empty());
    assert_eq!(link_conn(&r), Some(1));
}

#[test]
fn held_links_per_server_are_bounded_and_close_with_their_connection() {
    let mut r = router(true);
    linked_with_session(&mut r, 1, 1_000);
    r.step(1_001, socp_hello(2, 1_001, None, "s2", true));
    r.step(1_002, socp_hello(3, 1_002, None, "s3", true));
    let out = r.step(1_003, socp_hello(4, 1_003, None, "s4", true));
    assert_eq!(closes(&out), [2], "the oldest held link makes room");
    r.step(1_004, Input::LinkClosed(3));
    assert_eq!(r.held.len(), 1);
    assert_eq!(link_conn(&r), Some(1));
}

#[test]
fn a_dialer_proves_its_key_at_once_and_answers_sign_whom_they_answer() {
    let mut r = router(false);
    let out = r.step(0, master_link(9));
    assert!(sends(&out).contains(&(9, Kind::Heartbeat, "master_server_m".into())));
    let out = r.step(1_000, local_link(3, L1));
    let answer = out
        .iter()
        .find_map(|o| match o {
            Output::Send(3, f) if kind_of(f) == Kind::PeerHelloLink => Some(payload_of(f)),
            _ => None,
        })
        .unwrap();
    assert_eq!(answer[HELLO_TO], L1);
    assert_eq!(answer[HELLO_TS], 1_000);
}
