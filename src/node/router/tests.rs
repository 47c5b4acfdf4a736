use super::sim::{code_of, error_body, key, kind_of, payload_of, signed_hello, to_of};
use super::*;
use crate::crypto::PrivateKey;
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;
use serde_json::json;
use std::collections::BTreeSet;

fn router(master: bool) -> Router {
    let cfg = RouterConfig {
        me: if master {
            "master_server_m".into()
        } else {
            "server_l".into()
        },
        master,
        allow_legacy: false,
        pubkey: String::new(),
        host: "127.0.0.1".into(),
        port: 1,
        limits: MailboxLimits::default(),
        max_group_members: 1000,
        max_file_size: 1 << 30,
        admission: Default::default(),
    };
    Router::new(cfg, Snapshot::default())
}

fn sends(out: &[Output]) -> Vec<(ConnId, Kind, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, f) => Some((*c, kind_of(f), to_of(f).to_owned())),
            _ => None,
        })
        .collect()
}

fn error_code(out: &[Output]) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        Output::Send(_, f) if kind_of(f) == Kind::Error => {
            Some(code_of(&error_body(payload_of(f))))
        }
        _ => None,
    })
}

fn dm(from: &str, to: &str) -> Input {
    let Value::Object(payload) = json!({"ciphertext": "c", "iv": "i", "tag": "t", "wrapped_key": "w",
            "sender_pub": "p", "content_sig": "s", "content_ts": 1})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::MsgPrivate.name(), from, to, payload);
    let msg = Message::from_envelope(&env).unwrap();
    Input::UserFrame { conn: 1, env, msg }
}

#[test]
fn master_welcomes_pins_and_refuses_replays() {
    let mut r = router(true);
    let alice = key("alice");
    let hello = signed_hello(1, "alice", alice, 1000);
    let out = r.step(1000, hello.clone());
    assert_eq!(sends(&out), vec![(1, Kind::UserWelcome, "alice".into())]);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Persist(StoreOp::PinUser(u, _)) if u == "alice"))
    );
    assert_eq!(r.online(), vec!["alice".to_owned()]);
    r.step(1001, Input::UserClosed(1));
    assert!(r.online().is_empty());
    let Input::UserHello(mut again) = hello else {
        unreachable!()
    };
    again.conn = 2;
    let out = r.step(1002, Input::UserHello(again));
    assert_eq!(error_code(&out), Some(ErrorCode::InvalidSig));
    assert!(out.contains(&Output::Close(2)));
}

#[test]
fn pinned_key_and_second_session_are_refused() {
    let mut r = router(true);
    r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    let out = r.step(1000, signed_hello(2, "alice", key("alice"), 1000));
    assert_eq!(error_code(&out), Some(ErrorCode::NameInUse));
    r.step(1000, Input::UserClosed(1));
    let out = r.step(1000, signed_hello(3, "alice", key("bob"), 1000));
    assert_eq!(error_code(&out), Some(ErrorCode::BadKey));
}

#[test]
fn dms_are_delivered_here_queued_when_offline_or_reported() {
    let mut r = router(true);
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    r.step(0, signed_hello(2, "bob", key("bob"), 0));
    let out = r.step(0, dm("alice", "bob"));
    // Persisted, delivered, and acknowledged to Alice once committed.
    assert!(matches!(out[0], Output::Persist(StoreOp::Custody(_))));
    assert_eq!(sends(&out), vec![(2, Kind::UserDeliver, "bob".into())]);
    let frame = out
        .iter()
        .find_map(|o| match o {
            Output::Send(_, f) => Some(f),
            _ => None,
        })
        .unwrap();
    let frame = payload_of(frame);
    assert_eq!(frame["sender"], "alice");
    assert_eq!(frame["user_id"], "bob");
    let msg_id = frame["msg_id"].as_str().unwrap().to_owned();
    assert!(out.contains(&Output::AckAfterPersist {
        conn: 1,
        to: "alice".into(),
        msg_id: msg_id.clone()
    }));
    // Bob's client acknowledges: released, and Alice learns it was delivered.
    let ack = Message::Ack(crate::wire::messages::Ack {
        msg_ids: vec![msg_id.clone()],
        extra: Map::new(),
    });
    let env = ack.into_envelope("bob", "server_*");
    let out = r.step(
        0,
        Input::UserFrame {
            conn: 2,
            env,
            msg: ack,
        },
    );
    assert!(matches!(&out[0], Output::Persist(StoreOp::Release(s)) if s.len() == 1));
    // Receipts are batched: they go out when the hub has nothing else queued.
    assert!(r.has_pending_receipts());
    let out = r.step(0, Input::Idle);
    let receipt = out
        .iter()
        .find_map(|o| match o {
            Output::Send(1, f) if kind_of(f) == Kind::Receipt => Some(payload_of(f)),
            _ => None,
        })
        .unwrap();
    assert_eq!(receipt["status"], "delivered");
    assert_eq!(receipt["msg_ids"][0], msg_id.as_str());

    let out = r.step(0, dm("alice", "nobody"));
    assert_eq!(error_code(&out), Some(ErrorCode::UserNotFound));
    // Bob offline: kept in the mailbox, Alice is told it is queued.
    r.step(0, Input::UserClosed(2));
    let out = r.step(0, dm("alice", "bob"));
    let receipt = out
        .iter()
        .find_map(|o| match o {
            Output::Send(1, f) if kind_of(f) == Kind::Receipt => Some(payload_of(f)),
            _ => None,
        })
        .unwrap();
    assert_eq!(receipt["status"], "queued");
    assert_eq!(r.custody_stats().0, 1);
    // Bob comes back: the mailbox is delivered.
    let out = r.step(0, signed_hello(3, "bob", key("bob"), 1));
    assert!(sends(&out).contains(&(3, Kind::UserDeliver, "bob".into())));
    // Sender binding: a frame whose from is not the session's user.
    let out = r.step(0, dm("mallory", "alice"));
    assert_eq!(error_code(&out), Some(ErrorCode::NotAllowed));
}

fn link(conn: ConnId, id: &str, k: &PrivateKey, role: Role, dialed_master: bool) -> LinkHelloIn {
    LinkHelloIn {
        conn,
        server_id: id.into(),
        key: k.public().clone(),
        role,
        host: "h".into(),
        port: 1,
        ts: 5,
        socp: true,
        dialed: dialed_master,
        dialed_master,
        session: None,
    }
}

/// The link to our master (`master_server_m`), which we dialed, on `conn`.
fn master_link(conn: ConnId) -> Input {
    Input::LinkHello(link(
        conn,
        "master_server_m",
        key("carol"),
        Role::Master,
        true,
    ))
}

/// A `socp` local that dialed us, on `conn`.
fn local_link(conn: ConnId, id: &str) -> Input {
    Input::LinkHello(link(conn, id, key("carol"), Role::Local, false))
}

/// An unsigned (legacy) hello.
fn legacy_hello(conn: ConnId, user: &str) -> Input {
    Input::UserHello(UserHelloIn {
        conn,
        user_id: user.to_owned(),
        key: key("alice").public().clone(),
        proof: None,
        session: None,
        addr: None,
    })
}

#[test]
fn local_forwards_unknown_recipients_to_the_master() {
    let mut r = router(false);
    r.step(0, master_link(9));
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

/// The reference run's frames, parsed (`vectors/reference-run`).
fn reference_frames() -> Vec<(String, Envelope, Message)> {
    let path = super::sim::vectors().join("reference-run/frames.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            let raw = record["frame"].as_str().unwrap().to_owned();
            let env = Envelope::parse(&raw).unwrap();
            let msg = Message::from_envelope(&env).unwrap_or_else(|e| panic!("{}: {e}", env.kind));
            (raw, env, msg)
        })
        .collect()
}

/// Feeds one reference frame to a fresh router as the fuzz target does:
/// from a user (Alice and Bob said unsigned hellos) and from a linked peer.
fn feed_reference(master: bool, env: &Envelope, msg: &Message) -> Vec<Output> {
    let peer = "server_00000000-0000-4000-8000-000000000001";
    let mut r = router(master);
    r.cfg.allow_legacy = true;
    let role = if master { Role::Local } else { Role::Master };
    let mut out = r.step(
        0,
        Input::LinkHello(link(2, peer, key("carol"), role, !master)),
    );
    for (conn, user) in [(1, "Alice"), (3, "Bob")] {
        out.extend(r.step(0, legacy_hello(conn, user)));
    }
    let conn = if env.from == "Bob" { 3 } else { 1 };
    let (env, msg) = (env.clone(), msg.clone());
    let from_user = Input::UserFrame {
        conn,
        env: env.clone(),
        msg: msg.clone(),
    };
    out.extend(r.step(1, from_user));
    let env = Envelope {
        from: peer.to_owned(),
        ..env
    };
    out.extend(r.step(2, Input::LinkFrame { conn: 2, env, msg }));
    out
}

#[test]
fn the_reference_frames_parse_and_the_routers_answers_to_them_parse_too() {
    let frames = reference_frames();
    assert_eq!(frames.len(), 52, "every frame of the reference run parses");
    let mut answered = BTreeSet::new();
    for (raw, env, msg) in &frames {
        for master in [true, false] {
            for out in feed_reference(master, env, msg) {
                if let Output::Send(_, f) = out {
                    let parsed = Message::from_payload(kind_of(&f).name(), payload_of(&f));
                    assert!(
                        parsed.is_ok(),
                        "{} answered with a bad {}",
                        env.kind,
                        kind_of(&f)
                    );
                    answered.insert(kind_of(&f));
                }
            }
        }
        crate::node::fuzz::dispatch(raw.as_bytes());
    }
    crate::node::fuzz::dispatch(b"not json");
    // The frames reached the routing: users were welcomed, content was
    // delivered or refused with a reason, lists and lookups were answered.
    for kind in [
        Kind::UserWelcome,
        Kind::UserDeliver,
        Kind::UserDbUser,
        Kind::UserList,
        Kind::Error,
    ] {
        assert!(answered.contains(&kind), "no {kind} among {answered:?}");
    }
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

#[test]
fn user_list_stays_within_its_bound_and_says_when_it_is_cut() {
    let mut r = router(true);
    for i in 0..20_000 {
        r.presence.insert(
            format!("user_with_a_long_name_{i:06}_padding_padding"),
            PresenceRecord {
                location: "server_x".into(),
                via: "server_x".into(),
                proof: None,
                live: true,
                updated_ms: 0,
            },
        );
    }
    let list = r.user_list();
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        text.len() <= users::USER_LIST_MAX_BYTES + 64,
        "{}",
        text.len()
    );
    assert_eq!(list.extra["truncated"], true);
    assert_eq!(list.extra["total"], 20_000);
    // A small mesh is listed whole, without the markers.
    let mut small = router(true);
    small.presence.insert(
        "alice".into(),
        PresenceRecord {
            location: "server_x".into(),
            via: "server_x".into(),
            proof: None,
            live: true,
            updated_ms: 0,
        },
    );
    let list = small.user_list();
    assert_eq!(list.users, ["alice"]);
    assert!(!list.extra.contains_key("truncated"));
}

#[test]
fn user_lists_are_answered_a_few_at_once_then_one_a_second() {
    let mut r = router(true);
    r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    let ask = || {
        let env = Envelope::new(Kind::UserListReq.name(), "alice", "server_*", Map::new());
        let msg = Message::from_envelope(&env).unwrap();
        Input::UserFrame { conn: 1, env, msg }
    };
    let mut lists = 0;
    let mut limited = 0;
    for _ in 0..20 {
        let out = r.step(1000, ask());
        lists += sends(&out).iter().filter(|s| s.1 == Kind::UserList).count();
        limited += usize::from(error_code(&out) == Some(ErrorCode::RateLimited));
    }
    assert_eq!(
        (lists, limited),
        (LIST_BURST as usize, 20 - LIST_BURST as usize)
    );
    let out = r.step(2100, ask());
    assert_eq!(sends(&out)[0].1, Kind::UserList, "one more a second later");
}
