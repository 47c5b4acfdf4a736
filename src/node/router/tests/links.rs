//! A router and its server links: forwarding to the master, presence
//! claims and their proofs, lookups the master does not answer, crossed
//! dials, and the replay state kept for hellos and proofs.

use super::*;

#[test]
fn local_forwards_unknown_recipients_to_the_master() {
    let mut r = router(false);
    // A reference master (a `socp` one answers the registration itself).
    let mut master = link(9, "master_server_m", key("carol"), Role::Master, true);
    master.socp = false;
    master.answers_registrations = false;
    r.step(0, Input::LinkHello(master));
    let out = r.step(0, signed_hello(1, "alice", key("alice"), 0));
    // Unknown user: register, then confirm the pinned key, before welcoming.
    assert_eq!(
        sends(&out).iter().map(|s| s.1).collect::<Vec<_>>(),
        [Kind::DbRegisterUser, Kind::DbGetUser]
    );
    let req = out
        .iter()
        .find_map(|o| match o {
            Output::Send(_, f) if kind_of(f) == Kind::DbGetUser => {
                Some(payload_of(f)["req_id"].clone())
            }
            _ => None,
        })
        .unwrap();
    let Value::Object(answer) = json!({"user_id": "alice", "found": true,
            "pubkey": key("alice").public().to_b64(), "req_id": req})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::DbUser.name(), "master_server_m", "server_l", answer);
    let msg = Message::from_envelope(&env).unwrap();
    let out = r.step(0, Input::LinkFrame { conn: 9, env, msg });
    assert!(sends(&out).contains(&(1, Kind::UserWelcome, "alice".into())));
    let out = r.step(0, dm("alice", "zed"));
    assert_eq!(
        sends(&out),
        vec![(9, Kind::PeerDeliver, "master_server_m".into())]
    );
}

#[test]
fn master_refuses_presence_without_proof_and_drops_dormant_users_of_socp_peers() {
    let mut r = router(true);
    let l1 = "server_11111111-1111-4111-8111-111111111111";
    r.step(0, local_link(7, l1));
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    r.step(0, Input::UserClosed(1));
    // A claim without proof for a signed user is refused.
    let Value::Object(p) = json!({"user_id": "alice", "location": l1}) else {
        unreachable!()
    };
    let env = Envelope::new(Kind::UserAdvertise.name(), l1, "*", p);
    let msg = Message::from_envelope(&env).unwrap();
    r.step(0, Input::LinkFrame { conn: 7, env, msg });
    assert!(r.online().is_empty());
    // With alice's fresh signed hello as proof, it is accepted and listed.
    let Input::UserHello(h) = signed_hello(0, "alice", key("alice"), 10) else {
        unreachable!()
    };
    let proof = serde_json::to_value(h.proof.unwrap()).unwrap();
    let Value::Object(p) = json!({"user_id": "alice", "location": l1, "proof": proof}) else {
        unreachable!()
    };
    let env = Envelope::new(Kind::UserAdvertise.name(), l1, "*", p);
    let msg = Message::from_envelope(&env).unwrap();
    r.step(10, Input::LinkFrame { conn: 7, env, msg });
    assert_eq!(r.online(), ["alice"]);
    // The link drops: alice is no longer listed; a socp peer re-advertises
    // after relinking, so the dormant entry is dropped, not restored.
    r.step(20, Input::LinkClosed(7));
    assert!(r.online().is_empty());
    let mut again = link(8, l1, key("carol"), Role::Local, false);
    again.ts = 6;
    r.step(30, Input::LinkHello(again));
    assert!(r.online().is_empty());
}

#[test]
fn a_lookup_the_master_does_not_answer_times_out() {
    let mut r = router(false);
    r.step(0, master_link(9));
    let out = r.step(0, signed_hello(1, "alice", key("alice"), 0));
    let req = out
        .iter()
        .find_map(|o| match o {
            Output::Timer { req_id, after } => {
                assert_eq!(*after, LOOKUP_TIMEOUT);
                Some(req_id.clone())
            }
            _ => None,
        })
        .unwrap();
    let out = r.step(5000, Input::Timeout(req));
    assert_eq!(error_code(&out), Some(ErrorCode::Timeout));
    assert!(out.contains(&Output::Close(1)));
}

#[test]
fn crossed_dials_keep_one_link_and_redials_replace_it() {
    let mut r = router(false); // me = "server_l"
    let lower = "server_a";
    let higher = "server_z";
    // A peer with a smaller id dialed us; our own dial to it is the duplicate.
    r.step(0, local_link(1, lower));
    let mut ours = link(2, lower, key("carol"), Role::Local, false);
    ours.dialed = true;
    ours.ts = 6;
    let out = r.step(1, Input::LinkHello(ours));
    assert!(
        out.contains(&Output::Close(2)),
        "our crossed dial to a smaller id is closed"
    );
    assert_eq!(r.linked(), vec![lower.to_owned()]);
    // The peer dials again (its old link died quietly): the new one wins.
    let mut again = link(3, lower, key("carol"), Role::Local, false);
    again.ts = 7;
    let out = r.step(2, Input::LinkHello(again));
    assert!(out.contains(&Output::Close(1)));
    // With a larger id, our own dial is the one kept.
    r.step(
        3,
        Input::LinkHello(link(4, higher, key("bob"), Role::Local, false)),
    );
    let mut ours = link(5, higher, key("bob"), Role::Local, false);
    ours.dialed = true;
    ours.ts = 6;
    let out = r.step(4, Input::LinkHello(ours));
    assert!(
        out.contains(&Output::Close(4)),
        "their crossed dial is replaced by ours"
    );
}

/// A presence claim by `server` for `user`, with a fresh proof signed at `ts`.
fn claim(server: &str, user: &str, ts: i64) -> crate::wire::messages::Presence {
    let Input::UserHello(h) = signed_hello(0, user, key(user), ts) else {
        unreachable!()
    };
    crate::wire::messages::Presence {
        user_id: user.into(),
        location: server.into(),
        proof: h.proof,
        extra: Map::new(),
    }
}

#[test]
fn many_logins_keep_the_replay_state_bounded() {
    let mut r = router(true);
    let l1 = "server_11111111-1111-4111-8111-111111111111";
    r.step(0, local_link(7, l1));
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    r.step(0, Input::UserClosed(1));
    let first = claim(l1, "alice", 1);
    r.now = 1;
    assert_eq!(r.check_claim(l1, &first), Ok(()));
    // One login a minute for an hour, each presented by l1 and a tick.
    let mut last = first.clone();
    for minute in 1..=60 {
        let now = minute * 60_000;
        r.step(
            now,
            signed_hello(minute as u64 + 10, "bob", key("bob"), now),
        );
        last = claim(l1, "alice", now);
        r.now = now;
        assert_eq!(r.check_claim(l1, &last), Ok(()));
        r.step(now, Input::Tick);
    }
    let (hellos, proofs) = r.replay_state_len();
    assert!(
        hellos <= 5 && proofs <= 5,
        "{hellos} hellos and {proofs} proofs kept after 60 logins"
    );
    // The owner may still present the current proof; the first one is
    // stale and forgotten, so no server may present it.
    // Ten minutes later, only the newest proof is kept.
    let now = 70 * 60_000;
    r.step(now, Input::Tick);
    r.now = now;
    assert_eq!(r.check_claim(l1, &last), Ok(()));
    assert_eq!(r.check_claim(l1, &first), Err("stale proof"));
    assert_eq!(r.replay_state_len().1, 1);
}
