//! Every frame of the reference run, fed to a master and to a local: each
//! parses, each answer parses, and the frames reach the routing.

use std::collections::BTreeSet;

use super::*;

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
