//! Custody's order, windows, eviction and stored rows.

use rusqlite::types::{ToSql, ToSqlOutput};

use super::*;
use crate::wire::messages::{Deliver, Kind};

fn dm(user: &str) -> Deliver {
    Deliver {
        user_id: user.into(),
        ciphertext: "c".into(),
        iv: "i".into(),
        tag: "t".into(),
        wrapped_key: "w".into(),
        sender: "a".into(),
        sender_pub: "p".into(),
        content_sig: "s".into(),
        content_ts: 1,
        msg_id: None,
        extra: Map::new(),
    }
}

fn entry(msg: &str, user: &str) -> Entry {
    Entry {
        seq: 0,
        msg_id: msg.into(),
        dest: Dest::User(user.into()),
        kind: ContentKind::Dm,
        body: Some(Arc::new(Content::Dm(dm(user)))),
        to: None,
        via: None,
        sender: "a".into(),
        bytes: 10,
        created_ms: 0,
        mailbox: false,
    }
}

#[test]
fn keeps_order_across_a_lost_hop() {
    let mut c = Custody::default();
    for i in 0..3 {
        c.admit(entry(&format!("m{i}"), "bob"));
    }
    let bob = Dest::User("bob".into());
    let hop = Hop::Link("s".into());
    let first = c.next_pending(&bob).unwrap().clone();
    assert_eq!(first.msg_id, "m0");
    c.send(&hop, "m0", &[first.seq]);
    let second = c.next_pending(&bob).unwrap().clone();
    c.send(&hop, "m1", &[second.seq]);
    assert_eq!(c.room(&hop), LINK_WINDOW - 2);
    // The hop dies: both are pending again, oldest first.
    assert_eq!(c.hop_down(&hop), vec![bob.clone()]);
    assert_eq!(c.next_pending(&bob).unwrap().msg_id, "m0");
    let hop2 = Hop::Conn(1);
    c.send(&hop2, "m0", &[first.seq]);
    let released = c.ack(&hop2, &["m0".into()]);
    assert_eq!(released.len(), 1);
    assert_eq!(c.next_pending(&bob).unwrap().msg_id, "m1");
    assert_eq!(c.load_of(&bob), (2, 20));
    assert!(c.holds("a", "m2", &bob));
    assert!(
        !c.holds("b", "m2", &bob),
        "another sender's id is not a duplicate"
    );
    assert!(!c.holds("a", "m0", &bob));
}

#[test]
fn a_reused_msg_id_does_not_leak_window_slots() {
    let mut c = Custody::default();
    let hop = Hop::Link("s".into());
    let a = c.admit(entry("x", "bob"));
    let b = c.admit(entry("x", "carol"));
    c.send(&hop, "x", &[a.seq]);
    assert!(c.in_flight(&hop, "x"));
    c.send(&hop, "x", &[b.seq]);
    assert_eq!(c.room(&hop), LINK_WINDOW - 1);
    c.ack(&hop, &["x".into()]);
    assert_eq!(c.room(&hop), LINK_WINDOW);
    assert!(!c.in_flight(&hop, "x"));
}

#[test]
fn a_waiting_body_leaves_memory_and_comes_back() {
    let mut c = Custody::default();
    let bob = Dest::User("bob".into());
    let a = c.admit(entry("m0", "bob"));
    let b = c.admit(entry("m1", "bob"));
    let hop = Hop::Conn(1);
    c.send(&hop, "m0", &[a.seq]);
    // In flight: kept; waiting: on disk only.
    assert!(!c.evict(a.seq));
    assert!(c.evict(b.seq));
    assert_eq!(c.bytes(), (20, 10));
    assert!(c.next_pending(&bob).unwrap().body.is_none());
    assert_eq!(c.evicted_page(&bob, 10), vec![b.seq]);
    let mut body = dm("bob");
    body.extra.insert("zz".into(), Value::from(1));
    let row = serde_json::to_string(&Content::Dm(body.clone())).unwrap();
    let Ok(Value::Object(read)) = serde_json::from_str(&row) else {
        unreachable!()
    };
    assert!(c.restore(b.seq, Map::new()).is_err(), "not a DM");
    assert!(c.is_evicted(b.seq));
    c.restore(b.seq, read).unwrap();
    assert!(!c.is_evicted(b.seq));
    assert_eq!(
        c.next_pending(&bob).unwrap().body.as_deref(),
        Some(&Content::Dm(body))
    );
    assert_eq!(c.bytes(), (20, 20));
    c.evict(b.seq);
    c.release(&[b.seq]);
    assert_eq!(c.bytes(), (10, 10));
}

#[test]
fn a_dm_stored_under_its_old_kind_loads_after_the_migration() {
    use crate::store::Schema;
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    Schema::Node
        .migrations()
        .unwrap()
        .to_version(&mut conn, 3)
        .unwrap();
    let mut body = dm("bob");
    body.extra.insert("zz".into(), Value::from("kept"));
    let row = serde_json::to_string(&body).unwrap();
    conn.execute(
        "INSERT INTO custody (seq, msg_id, dest_kind, dest, kind, sender, payload, bytes, created_ms)
         VALUES (1, 'm1', 'user', 'bob', 'DELIVER', 'a', ?1, 10, 0)",
        [&row],
    )
    .unwrap();
    crate::store::migrate(&mut conn, Schema::Node).unwrap();
    let snap = crate::node::state::load(&conn, 0).unwrap();
    let bob = Dest::User("bob".into());
    assert_eq!(snap.custody.dests.len(), 1);
    assert_eq!(snap.custody.dests[0].0, bob);
    assert_eq!(snap.custody.dests[0].1.frames, 1);
    let mut c = Custody::load(snap.custody);
    assert!(c.on_disk(&bob) && c.next_pending(&bob).is_none());
    let (after, upto) = c.rows_first(&bob).unwrap();
    let (rows, done) =
        crate::node::state::custody_rows::read_rows(&conn, &bob, after, upto, 10).unwrap();
    assert_eq!(rows[0].kind, ContentKind::Dm);
    assert!(c.rows_read(&bob, after, rows, done));
    assert!(!c.on_disk(&bob));
    let restored = c.next_pending(&bob).unwrap().body.clone().unwrap();
    assert_eq!(*restored, Content::Dm(body));
    // Written back as it leaves on a link.
    assert_eq!(
        ContentKind::Dm.to_sql().unwrap(),
        ToSqlOutput::from(Kind::PeerDeliver.name())
    );
}

#[test]
fn expires_only_stuck_entries() {
    let mut c = Custody::default();
    c.admit(entry("old", "bob"));
    c.admit(Entry {
        created_ms: 100,
        ..entry("new", "bob")
    });
    c.admit(entry("carol", "carol"));
    let gone = c.expire(50, |d| d == &Dest::User("bob".into()));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].msg_id, "old");
    assert_eq!(c.len(), 2);
}

#[test]
fn a_parked_destination_keeps_its_counts_and_reads_back_in_order() {
    let mut c = Custody::default();
    let bob = Dest::User("bob".into());
    let taken: Vec<Entry> = (0..3)
        .map(|i| c.admit(entry(&format!("m{i}"), "bob")))
        .collect();
    assert!(!c.can_park(&bob), "not written yet");
    for e in &taken {
        c.evict(e.seq);
    }
    assert!(c.can_park(&bob));
    c.park(&bob);
    assert_eq!(c.in_memory(), 0);
    assert_eq!(
        (c.len(), c.load_of(&bob), c.load_from("a")),
        (3, (3, 30), (3, 30))
    );
    assert_eq!(c.bytes(), (30, 0));
    // Taken meanwhile: waits behind what is on disk.
    let late = c.admit(entry("late", "bob"));
    assert!(c.next_pending(&bob).is_some_and(|e| e.seq == late.seq));
    assert_eq!(c.rows_first(&bob), Some((0, taken[2].seq)));
    // A page of two, then the last one.
    let rows = |r: &[Entry]| r.to_vec();
    assert!(c.rows_read(&bob, 0, rows(&taken[..2]), false));
    assert_eq!(c.next_pending(&bob).unwrap().msg_id, "m0");
    assert!(!c.rows_read(&bob, 0, rows(&taken[2..]), true), "stale page");
    let hop = Hop::Conn(1);
    for e in &taken[..2] {
        assert_eq!(c.next_pending(&bob).unwrap().seq, e.seq);
        c.send(&hop, &e.msg_id, &[e.seq]);
    }
    assert_eq!(c.rows_first(&bob), Some((taken[1].seq, taken[2].seq)));
    assert!(c.rows_read(&bob, taken[1].seq, rows(&taken[2..]), true));
    assert!(!c.on_disk(&bob));
    assert_eq!(c.next_pending(&bob).unwrap().msg_id, "m2");
    assert_eq!(c.len(), 4);
}

#[test]
fn counts_at_start_come_from_the_summary() {
    let bob = Dest::User("bob".into());
    let c = Custody::load(Summary {
        dests: vec![(
            bob.clone(),
            OnDisk {
                frames: 2,
                bytes: 20,
                oldest_ms: 5,
                after: 0,
                upto: 9,
            },
        )],
        senders: vec![("a".into(), 2, 20)],
        max_seq: 9,
    });
    assert_eq!(
        (c.len(), c.load_of(&bob), c.load_from("a")),
        (2, (2, 20), (2, 20))
    );
    assert_eq!(c.stale_on_disk(6, |_| true), std::slice::from_ref(&bob));
    assert!(c.stale_on_disk(5, |_| true).is_empty());
    assert_eq!(c.pending_dests(), [bob]);
}
