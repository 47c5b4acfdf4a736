//! A router and its users: hellos, pinned keys and second sessions, DMs
//! delivered, queued and refused, receipts, and the user list.

use super::*;
// In full: `users` in here names this file, not the router's module.
use crate::node::router::online::USER_LIST_MAX_BYTES;
use crate::wire::messages::UserListReq;

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

/// Marks `user` live at another server, as a link's advertisement would.
fn live_elsewhere(r: &mut Router, user: &str) {
    r.presence.insert(
        user.to_owned(),
        PresenceRecord {
            location: "server_x".into(),
            via: "server_x".into(),
            proof: None,
            live: true,
            updated_ms: 0,
        },
    );
    r.online.set(user, super::super::online::REMOTE, true);
}

/// Alice's `USER_LIST_REQ` with this payload, and the node's answer.
fn ask_list(r: &mut Router, now: i64, payload: Value) -> Value {
    let Value::Object(payload) = payload else {
        unreachable!()
    };
    let env = Envelope::new(Kind::UserListReq.name(), "alice", "server_*", payload);
    let msg = Message::from_envelope(&env).unwrap();
    let out = r.step(now, Input::UserFrame { conn: 1, env, msg });
    let frame = out
        .iter()
        .find_map(|o| match o {
            Output::Send(1, f) if kind_of(f) == Kind::UserList => Some(f),
            _ => None,
        })
        .expect("a USER_LIST answer");
    Value::Object(payload_of(frame).clone())
}

#[test]
fn user_list_stays_within_its_bound_and_says_when_it_is_cut() {
    let mut r = router(true);
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    for i in 0..20_000 {
        live_elsewhere(
            &mut r,
            &format!("user_with_a_long_name_{i:06}_padding_padding"),
        );
    }
    // A reference client's `{}`: as many as fit, sorted, in a list it can
    // parse (the counts are fields it ignores).
    let list = ask_list(&mut r, 0, json!({}));
    let text = serde_json::to_string(&list).unwrap();
    assert!(text.len() <= USER_LIST_MAX_BYTES + 128, "{}", text.len());
    let users: Vec<String> = serde_json::from_value(list["users"].clone()).unwrap();
    assert!(users.len() > 1000);
    assert!(users.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(users[0], "alice");
    assert_eq!(list["truncated"], true);
    assert_eq!(list["total"], 20_001);
    // A small mesh is listed whole.
    let mut small = router(true);
    small.step(0, signed_hello(1, "alice", key("alice"), 0));
    live_elsewhere(&mut small, "bob");
    let list = ask_list(&mut small, 0, json!({}));
    assert_eq!(list["users"], json!(["alice", "bob"]));
    assert_eq!(list["truncated"], false);
    assert_eq!(list["total"], 2);
}

#[test]
fn user_list_pages_and_searches() {
    let mut r = router(true);
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    for u in ["bob", "albert", "alina", "zed", "al"] {
        live_elsewhere(&mut r, u);
    }
    let mut now = 0;
    let mut ask = |r: &mut Router, payload: Value| {
        now += 1000; // past the rate limit
        ask_list(r, now, payload)
    };
    // The first page of everyone, then the next one after its last id.
    let page = ask(&mut r, json!({"limit": 2}));
    assert_eq!(page["users"], json!(["al", "albert"]));
    assert_eq!(
        (page["total"].clone(), page["truncated"].clone()),
        (json!(6), json!(true))
    );
    let page = ask(&mut r, json!({"limit": 3, "after": "albert"}));
    assert_eq!(page["users"], json!(["alice", "alina", "bob"]));
    assert_eq!(page["truncated"], true);
    let page = ask(&mut r, json!({"limit": 3, "after": "bob"}));
    assert_eq!(page["users"], json!(["zed"]));
    assert_eq!(page["truncated"], false);
    // A search, and its pages.
    let page = ask(&mut r, json!({"prefix": "ali", "limit": 1}));
    assert_eq!(page["users"], json!(["alice"]));
    assert_eq!(
        (page["total"].clone(), page["truncated"].clone()),
        (json!(2), json!(true))
    );
    let page = ask(
        &mut r,
        json!({"prefix": "ali", "limit": 1, "after": "alice"}),
    );
    assert_eq!(page["users"], json!(["alina"]));
    assert_eq!(page["truncated"], false);
    let page = ask(&mut r, json!({"prefix": "q"}));
    assert_eq!(page["users"], json!([]));
    assert_eq!(
        (page["total"].clone(), page["truncated"].clone()),
        (json!(0), json!(false))
    );
    // The count alone (a client's acceptance probe): no ids.
    let page = ask(&mut r, json!({"limit": 0}));
    assert_eq!(page["users"], json!([]));
    assert_eq!(
        (page["total"].clone(), page["truncated"].clone()),
        (json!(6), json!(true))
    );
    // Users who leave leave the list.
    r.step(now, Input::UserClosed(1));
    assert_eq!(r.online(), ["al", "albert", "alina", "bob", "zed"]);
}

#[test]
fn a_search_counts_only_so_far() {
    use crate::node::router::online::LIST_COUNT_MAX;
    let mut r = router(true);
    r.step(0, signed_hello(1, "alice", key("alice"), 0));
    for i in 0..LIST_COUNT_MAX + 5 {
        r.online
            .set(&format!("u{i:06}"), super::super::online::REMOTE, true);
    }
    let page = r.user_list(&UserListReq {
        prefix: Some("u".into()),
        limit: Some(3),
        ..Default::default()
    });
    assert_eq!(page.users, ["u000000", "u000001", "u000002"]);
    assert_eq!(page.total, Some(LIST_COUNT_MAX as u64));
    assert_eq!(page.total_capped, Some(true));
    // Everyone is counted exactly, at no cost.
    let page = r.user_list(&UserListReq::default());
    assert_eq!(page.total, Some(LIST_COUNT_MAX as u64 + 6));
    assert_eq!(page.total_capped, None);
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

/// The kinds of the frames a local sent its master (on conn 9).
fn to_master(out: &[Output]) -> Vec<Kind> {
    sends(out)
        .into_iter()
        .filter(|s| s.0 == 9)
        .map(|s| s.1)
        .collect()
}

/// The payload of the first frame of `kind` in `out`.
fn first_of(out: &[Output], kind: Kind) -> Map<String, Value> {
    out.iter()
        .find_map(|o| match o {
            Output::Send(_, f) if kind_of(f) == kind => Some(payload_of(f).clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind} in {out:?}"))
}

/// The master's `DB_USER` for alice on the local's link (conn 9).
fn master_says_alice_is(req_id: &Value) -> Input {
    let Value::Object(answer) = json!({"user_id": "alice", "found": true,
            "pubkey": key("alice").public().to_b64(), "req_id": req_id})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::DbUser.name(), "master_server_m", "server_l", answer);
    let msg = Message::from_envelope(&env).unwrap();
    Input::LinkFrame { conn: 9, env, msg }
}

#[test]
fn a_login_at_a_local_asks_a_socp_master_once_and_a_cached_one_not_at_all() {
    let mut r = router(false);
    r.step(0, master_link(9));
    // A new id: one registration, which asks for an answer.
    let out = r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    assert_eq!(to_master(&out), [Kind::DbRegisterUser]);
    let reg = first_of(&out, Kind::DbRegisterUser);
    assert!(reg["proof"].is_object());
    let out = r.step(1000, master_says_alice_is(&reg["req_id"]));
    assert!(sends(&out).contains(&(1, Kind::UserWelcome, "alice".into())));
    // The master hears she is here, and nothing more of her directory entry.
    assert_eq!(to_master(&out), [Kind::UserAdvertise]);
    // She comes back: the local knows her key, and asks nothing.
    r.step(2000, Input::UserClosed(1));
    let out = r.step(3000, signed_hello(2, "alice", key("alice"), 3000));
    assert!(sends(&out).contains(&(2, Kind::UserWelcome, "alice".into())));
    assert_eq!(to_master(&out), [Kind::UserAdvertise]);
}

#[test]
fn a_login_at_a_local_registers_once_at_a_reference_master() {
    let mut r = router(false);
    let mut hello = link(9, "master_server_m", key("carol"), Role::Master, true);
    hello.socp = false;
    hello.answers_registrations = false;
    r.step(0, Input::LinkHello(hello));
    // Part A: a registration, then a lookup of the key the id is pinned to.
    let out = r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    assert_eq!(to_master(&out), [Kind::DbRegisterUser, Kind::DbGetUser]);
    assert!(first_of(&out, Kind::DbRegisterUser).get("req_id").is_none());
    let ask = first_of(&out, Kind::DbGetUser);
    let out = r.step(1000, master_says_alice_is(&ask["req_id"]));
    assert!(sends(&out).contains(&(1, Kind::UserWelcome, "alice".into())));
    // Not registered a second time.
    assert_eq!(to_master(&out), [Kind::UserAdvertise]);
    // A reference master hears of every hello through a registration.
    r.step(2000, Input::UserClosed(1));
    let out = r.step(3000, signed_hello(2, "alice", key("alice"), 3000));
    assert_eq!(to_master(&out), [Kind::DbRegisterUser, Kind::UserAdvertise]);
}

/// A `DB_REGISTER_USER` or `USER_ADVERTISE` for alice from `server_l1`
/// (conn 7), with her hello as proof.
fn from_local(kind: Kind, proof: &Value, extra: Value) -> Input {
    let mut payload = json!({"user_id": "alice", "proof": proof});
    if kind == Kind::UserAdvertise {
        payload["location"] = json!("server_l1");
    } else {
        payload["pubkey"] = json!(key("alice").public().to_b64());
    }
    for (k, v) in extra.as_object().unwrap() {
        payload[k] = v.clone();
    }
    let Value::Object(payload) = payload else {
        unreachable!()
    };
    let env = Envelope::new(kind.name(), "server_l1", "master_server_m", payload);
    let msg = Message::from_envelope(&env).unwrap();
    Input::LinkFrame { conn: 7, env, msg }
}

#[test]
fn a_socp_master_answers_a_registration_and_checks_its_proof_once() {
    let mut r = router(true);
    r.step(0, local_link(7, "server_l1"));
    let Input::UserHello(h) = signed_hello(0, "alice", key("alice"), 10) else {
        unreachable!()
    };
    let proof = serde_json::to_value(h.proof.unwrap()).unwrap();
    let out = r.step(
        10,
        from_local(Kind::DbRegisterUser, &proof, json!({"req_id": "r1"})),
    );
    let answer = first_of(&out, Kind::DbUser);
    assert_eq!(answer["req_id"], "r1");
    assert_eq!(answer["found"], true);
    assert_eq!(answer["pubkey"], key("alice").public().to_b64());
    // The advertisement that follows carries the same proof: accepted
    // without verifying the signature again.
    r.step(11, from_local(Kind::UserAdvertise, &proof, json!({})));
    assert_eq!(r.online(), ["alice"]);
    assert_eq!(r.verified.len(), 1);
    // A registration with another key is refused, naming the user.
    let Input::UserHello(h) = signed_hello(0, "alice", key("bob"), 12) else {
        unreachable!()
    };
    let mut other = serde_json::to_value(h.proof.unwrap()).unwrap();
    other["payload"]["pubkey"] = json!(key("bob").public().to_b64());
    let mut frame = from_local(Kind::DbRegisterUser, &other, json!({"req_id": "r2"}));
    if let Input::LinkFrame { env, msg, .. } = &mut frame {
        env.payload["pubkey"] = json!(key("bob").public().to_b64());
        *msg = Message::from_envelope(env).unwrap();
    }
    let out = r.step(12, frame);
    assert_eq!(error_code(&out), Some(ErrorCode::BadKey));
    assert!(!sends(&out).iter().any(|s| s.1 == Kind::DbUser));
}

#[test]
fn a_hello_waits_its_turn_while_the_master_answers_others() {
    let mut r = router(false);
    r.step(0, master_link(9));
    let out = r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    let alice_req = first_of(&out, Kind::DbRegisterUser)["req_id"].clone();
    let out = r.step(1000, signed_hello(2, "bob", key("bob"), 1000));
    let bob_req = first_of(&out, Kind::DbRegisterUser)["req_id"].clone();
    // A storm: the master is busy, but answering (bob's registration).
    let Value::Object(answer) = json!({"user_id": "bob", "found": true,
            "pubkey": key("bob").public().to_b64(), "req_id": bob_req})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::DbUser.name(), "master_server_m", "server_l", answer);
    let msg = Message::from_envelope(&env).unwrap();
    let out = r.step(5900, Input::LinkFrame { conn: 9, env, msg });
    assert!(sends(&out).contains(&(2, Kind::UserWelcome, "bob".into())));
    // Alice's wait is over, but the master answered lately: she waits on.
    let timeout = || Input::Timeout(alice_req.as_str().unwrap().to_owned());
    let out = r.step(6000, timeout());
    assert_eq!(error_code(&out), None);
    assert!(out.iter().any(|o| matches!(o, Output::Timer { .. })));
    // Then it goes silent: she is told.
    let out = r.step(11_000, timeout());
    assert_eq!(error_code(&out), Some(ErrorCode::Timeout));
    assert!(out.contains(&Output::Close(1)));
    // Had it answered her in time, she would have been welcomed.
    let out = r.step(11_001, master_says_alice_is(&alice_req));
    assert!(!sends(&out).iter().any(|s| s.1 == Kind::UserWelcome));
}

#[test]
fn an_older_socp_master_gets_the_registration_and_the_lookup() {
    // It lists socp-v1 but does not answer registrations with a req_id.
    let mut r = router(false);
    let mut hello = link(9, "master_server_m", key("carol"), Role::Master, true);
    hello.answers_registrations = false;
    r.step(0, Input::LinkHello(hello));
    let out = r.step(1000, signed_hello(1, "alice", key("alice"), 1000));
    assert_eq!(to_master(&out), [Kind::DbRegisterUser, Kind::DbGetUser]);
    let ask = first_of(&out, Kind::DbGetUser);
    let out = r.step(1000, master_says_alice_is(&ask["req_id"]));
    assert!(sends(&out).contains(&(1, Kind::UserWelcome, "alice".into())));
    assert_eq!(to_master(&out), [Kind::UserAdvertise]);
}

#[test]
fn in_a_storm_hellos_wait_their_turn_for_the_master() {
    use crate::node::router::users::MAX_CONFIRMING;
    let mut r = router(false);
    r.step(0, master_link(9));
    let mut registrations = Vec::new();
    for i in 0..=MAX_CONFIRMING {
        let conn = 100 + i as ConnId;
        let out = r.step(
            1000,
            signed_hello(conn, &format!("u{i}"), key("alice"), 1000),
        );
        registrations.extend(
            out.iter()
                .filter_map(|o| match o {
                    Output::Send(9, f) if kind_of(f) == Kind::DbRegisterUser => {
                        Some(payload_of(f).clone())
                    }
                    _ => None,
                })
                .map(|p| (p["user_id"].clone(), p["req_id"].clone())),
        );
    }
    // The last one waits: the link carries at most MAX_CONFIRMING.
    assert_eq!(registrations.len(), MAX_CONFIRMING);
    // One answer makes room for it.
    let (user, req_id) = registrations[0].clone();
    let Value::Object(answer) = json!({"user_id": user, "found": true,
            "pubkey": key("alice").public().to_b64(), "req_id": req_id})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::DbUser.name(), "master_server_m", "server_l", answer);
    let msg = Message::from_envelope(&env).unwrap();
    let out = r.step(1100, Input::LinkFrame { conn: 9, env, msg });
    assert!(sends(&out).contains(&(100, Kind::UserWelcome, "u0".into())));
    let reg = first_of(&out, Kind::DbRegisterUser);
    assert_eq!(reg["user_id"], format!("u{MAX_CONFIRMING}"));
}

/// User `u`'s `USER_LIST_REQ` at a lookup local whose master link is conn
/// 9: (1, 0) if forwarded, (0, 1) if answered here.
fn ask_list_at_lookup_local(r: &mut Router, now: i64, u: usize) -> (usize, usize) {
    let name = format!("user{u:03}");
    let conn = 100 + u as ConnId;
    let env = Envelope::new(Kind::UserListReq.name(), &name, "server_*", Map::new());
    let msg = Message::from_envelope(&env).unwrap();
    let out = r.step(now, Input::UserFrame { conn, env, msg });
    let (mut forwarded, mut here) = (0, 0);
    for o in &out {
        match o {
            Output::Send(9, f) if kind_of(f) == Kind::UserListReq => forwarded += 1,
            Output::Send(c, f) if *c == conn && kind_of(f) == Kind::UserList => {
                assert_eq!(payload_of(f)["partial"], true, "marked partial");
                here += 1;
            }
            _ => {}
        }
    }
    (forwarded, here)
}

#[test]
fn a_lookup_local_answers_lists_itself_past_what_its_master_would_take() {
    // Review finding L1: the master answers a lookup local's forwarded
    // `USER_LIST` requests `LIST_RATE` a second and drops the rest without
    // a word: past that rate a user asked and never heard back.
    let mut r = router(false);
    r.cfg.presence_cache = 100;
    let mut hello = link(9, "master_server_m", key("carol"), Role::Master, true);
    hello.lookup = true;
    r.step(0, Input::LinkHello(hello));
    assert!(r.lookup_mode());
    let users = 41;
    let (mut forwarded, mut here) = (0, 0);
    for u in 0..users {
        session_here(&mut r, &format!("user{u:03}"), 100 + u as ConnId);
        for _ in 0..LIST_BURST {
            let (f, h) = ask_list_at_lookup_local(&mut r, 0, u);
            (forwarded, here) = (forwarded + f, here + h);
        }
    }
    let asked = users * LIST_BURST as usize;
    assert_eq!(forwarded, lookup::LIST_FORWARD_RATE as usize);
    assert_eq!(here, asked - forwarded, "every request answered");
    // Refilled as time passes: a second later, forwarded again.
    assert_eq!(ask_list_at_lookup_local(&mut r, 1_000, 0), (1, 0));
}
