//! A router and its users: hellos, pinned keys and second sessions, DMs
//! delivered, queued and refused, receipts, and the user list.

use super::*;
// In full: `users` in here names this file, not the router's module.
use crate::node::router::users::USER_LIST_MAX_BYTES;

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
    assert!(text.len() <= USER_LIST_MAX_BYTES + 64, "{}", text.len());
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
