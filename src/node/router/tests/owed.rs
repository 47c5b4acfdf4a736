//! What a link is owed in bulk goes out a chunk at a time, as its queue
//! drains (`owed.rs`), and tells each user's presence as it is when sent.
//! Review finding M4: a link-up queued a frame or two per user in one
//! step, and past ~4,096 users the hub dropped the link as slow.

use super::super::owed::CHUNK;
use super::*;
use crate::node::records::PresenceRecord;

const USERS: usize = 3 * CHUNK + 10;

fn user(i: usize) -> String {
    format!("user{i:05}")
}

/// User `i` live at `server`, as that server's link would leave them.
fn live_at(r: &mut Router, i: usize, server: &str) {
    r.presence.insert(
        user(i),
        PresenceRecord {
            location: server.into(),
            via: server.into(),
            proof: None,
            live: true,
            updated_ms: 0,
        },
    );
    r.online.set(&user(i), super::super::online::REMOTE, true);
}

fn when_drained(out: &[Output]) -> Vec<ConnId> {
    out.iter()
        .filter_map(|o| match o {
            Output::WhenDrained(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// (kind, user, location) of each presence frame sent on `conn`.
fn presence_to(out: &[Output], conn: ConnId) -> Vec<(Kind, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, f) if *c == conn => {
                let kind = kind_of(f);
                let p = payload_of(f);
                let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                matches!(kind, Kind::UserAdvertise | Kind::UserRemove)
                    .then(|| (kind, field("user_id"), field("location")))
            }
            _ => None,
        })
        .collect()
}

/// Steps `Drained` on `conn` for as long as the router asks for it; what
/// each step sent, in order.
fn drain(r: &mut Router, conn: ConnId) -> Vec<Vec<(Kind, String, String)>> {
    let mut steps = Vec::new();
    loop {
        let out = r.step(0, Input::Drained(conn));
        steps.push(presence_to(&out, conn));
        if !when_drained(&out).contains(&conn) {
            return steps;
        }
    }
}

#[test]
fn a_link_up_sends_the_snapshot_a_chunk_at_a_time_as_the_link_drains() {
    let mut r = router(true);
    for i in 0..USERS {
        live_at(&mut r, i, "server_x");
    }
    let out = r.step(0, local_link(7, "server_b"));
    let first = presence_to(&out, 7);
    assert_eq!(first.len(), CHUNK, "one chunk at once");
    assert_eq!(when_drained(&out), [7], "and the hub asked to say when");
    // Nothing more until the hub says the link drained.
    let out = r.step(0, Input::Tick);
    assert!(presence_to(&out, 7).is_empty());
    assert!(when_drained(&out).is_empty());
    assert_eq!(r.owed.len("server_b"), USERS - CHUNK);

    // Meanwhile one user not yet sent leaves, another moves.
    let sent: std::collections::HashSet<String> = first.iter().map(|f| f.1.clone()).collect();
    let mut unsent = (0..USERS).filter(|i| !sent.contains(&user(*i)));
    let (left, moved) = (unsent.next().unwrap(), unsent.next().unwrap());
    r.presence.get_mut(&user(left)).unwrap().live = false;
    r.online
        .set(&user(left), super::super::online::REMOTE, false);
    live_at(&mut r, moved, "server_y");

    let steps = drain(&mut r, 7);
    assert!(steps.iter().all(|s| s.len() <= CHUNK), "a chunk at a time");
    let rest: Vec<_> = steps.into_iter().flatten().collect();
    assert_eq!(rest.len() + first.len(), USERS - 1, "everyone online, once");
    assert!(rest.iter().all(|f| f.0 == Kind::UserAdvertise));
    assert!(
        !rest.iter().any(|f| f.1 == user(left)),
        "not the one who left"
    );
    let moved = rest.iter().find(|f| f.1 == user(moved)).unwrap();
    assert_eq!(moved.2, "server_y", "the one who moved, where they are now");
    assert_eq!(r.owed.len("server_b"), 0);
}

#[test]
fn a_local_going_down_is_told_to_the_others_as_they_drain() {
    let mut r = router(true);
    r.step(0, local_link(7, "server_b"));
    r.step(0, local_link(8, "server_c"));
    for i in 0..USERS {
        live_at(&mut r, i, "server_c");
    }
    let out = r.step(0, Input::LinkClosed(8));
    let first = presence_to(&out, 7);
    assert_eq!(first.len(), CHUNK);
    assert!(
        first
            .iter()
            .all(|f| f.0 == Kind::UserRemove && f.2 == "server_c")
    );
    assert_eq!(when_drained(&out), [7]);
    // One of those not yet told about comes back at another server (its
    // advert went to every link then) before the rest is sent.
    let sent: std::collections::HashSet<String> = first.iter().map(|f| f.1.clone()).collect();
    let back = (0..USERS).find(|i| !sent.contains(&user(*i))).unwrap();
    live_at(&mut r, back, "server_d");
    let rest: Vec<_> = drain(&mut r, 7).into_iter().flatten().collect();
    assert_eq!(rest.len() + first.len(), USERS);
    let told: Vec<_> = rest.iter().filter(|f| f.1 == user(back)).collect();
    assert_eq!(
        told,
        [&(Kind::UserAdvertise, user(back), "server_d".to_owned())],
        "told as they are now, not as they were"
    );
}

#[test]
fn a_local_registers_and_advertises_its_users_a_chunk_at_a_time() {
    let mut r = router(false);
    let n = CHUNK + 3;
    // Sessions as logins would leave them (the master is not linked yet).
    for i in 0..n {
        session_here(&mut r, &user(i), 100 + i as ConnId);
    }
    let out = r.step(0, master_link(9));
    let registered = sends(&out)
        .iter()
        .filter(|(c, k, _)| *c == 9 && *k == Kind::DbRegisterUser)
        .count();
    assert_eq!(registered, CHUNK);
    assert_eq!(presence_to(&out, 9).len(), CHUNK);
    assert_eq!(when_drained(&out), [9]);
    // The link drops before it drained: what it was owed is forgotten.
    r.step(0, Input::LinkClosed(9));
    assert_eq!(r.owed.len("master_server_m"), 0);
    let mut again = link(10, "master_server_m", key("carol"), Role::Master, true);
    again.ts += 1;
    let out = r.step(0, Input::LinkHello(again));
    assert_eq!(presence_to(&out, 10).len(), CHUNK, "owed again");
    let rest: usize = drain(&mut r, 10).iter().map(Vec::len).sum();
    assert_eq!(rest, 3);
}

#[test]
fn content_for_the_master_waits_until_our_users_are_registered_there() {
    // Review of the change: with the snapshot paced, custody went to the
    // master ahead of most registrations and adverts, and the master
    // mailboxed or dropped what concerned users it did not know yet.
    let mut r = router(false);
    session_here(&mut r, "alice", 1);
    for i in 0..CHUNK + 3 {
        session_here(&mut r, &user(i), 100 + i as ConnId);
    }
    // alice writes to someone not here while the master is away.
    r.step(0, dm("alice", "zed"));
    let content = |out: &[Output]| {
        sends(out)
            .iter()
            .filter(|(c, k, _)| *c == 9 && matches!(k, Kind::PeerDeliver | Kind::MsgPrivate))
            .count()
    };
    let out = r.step(0, master_link(9));
    assert!(presence_to(&out, 9).len() >= CHUNK);
    assert_eq!(content(&out), 0, "content waits for the registrations");
    let out = r.step(0, Input::Drained(9));
    assert!(when_drained(&out).is_empty(), "all owed is out");
    assert_eq!(content(&out), 1, "then goes, after them");
}
