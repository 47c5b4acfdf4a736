//! Unit tests of `sql`.

use super::*;

fn database() -> (tempfile::TempDir, crate::store::Pool) {
    let dir = tempfile::tempdir().unwrap();
    let pool =
        crate::store::open(&dir.path().join("n.sqlite"), crate::store::Schema::Node).unwrap();
    (dir, pool)
}

#[test]
fn a_user_coming_online_or_going_is_last_seen_then() {
    let (_dir, pool) = database();
    let mut conn = pool.get().unwrap();
    let mut n = 0;
    let rec = UserRecord {
        pubkey: "k".into(),
        legacy: false,
        first_seen_ms: 1,
    };
    let presence = PresenceRecord {
        location: "s1".into(),
        via: "s1".into(),
        proof: None,
        live: true,
        updated_ms: 2,
    };
    commit(&mut conn, &[StoreOp::PinUser("alice".into(), rec)], &mut n).unwrap();
    let seen = |conn: &Connection| -> (i64, i64) {
        conn.query_row(
            "SELECT first_seen_ms, last_seen_ms FROM users WHERE user_id = 'alice'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(seen(&conn), (1, 1));
    let ops = [StoreOp::SetPresence("alice".into(), presence)];
    commit(&mut conn, &ops, &mut n).unwrap();
    let (first, online) = seen(&conn);
    assert_eq!(first, 1, "the first sighting stays");
    assert!(online > 1_000_000, "seen when it came online: {online}");
    std::thread::sleep(std::time::Duration::from_millis(5));
    commit(
        &mut conn,
        &[StoreOp::RemovePresence("alice".into())],
        &mut n,
    )
    .unwrap();
    assert!(seen(&conn).1 > online, "seen again when it went");
}

#[test]
fn forgotten_proofs_are_not_loaded_again() {
    let (_dir, pool) = database();
    let mut conn = pool.get().unwrap();
    let mut n = 0;
    let ops = [
        StoreOp::ProofOwner([1; 32], "s1".into(), "alice".into()),
        StoreOp::ProofOwner([2; 32], "s1".into(), "alice".into()),
        StoreOp::ForgetProofs(vec![[1; 32]]),
    ];
    commit(&mut conn, &ops, &mut n).unwrap();
    let snap = load(&conn, 0).unwrap();
    assert_eq!(snap.proof_owners.len(), 1);
    let owner = &snap.proof_owners[&[2; 32]];
    assert_eq!(
        (owner.server.as_str(), owner.user.as_str()),
        ("s1", "alice")
    );
}

#[test]
fn what_is_written_loads_back_the_same() {
    let (_dir, pool) = database();
    let mut conn = pool.get().unwrap();
    let server = ServerRecord {
        pubkey: "k".into(),
        role: Role::Master,
        host: "h".into(),
        port: 9101,
        hello_ts: 5,
        last_seen_ms: 6,
    };
    let presence = PresenceRecord {
        location: "s1".into(),
        via: "s1".into(),
        proof: Some(Proof {
            payload: Default::default(),
            sig: "sig".into(),
            extra: Default::default(),
        }),
        live: false,
        updated_ms: 7,
    };
    let group = GroupRecord {
        members: vec!["alice".into(), "bob".into()],
        updated_ms: 8,
        owner: Some("alice".into()),
    };
    let ops = [
        StoreOp::PinServer("s1".into(), server.clone()),
        StoreOp::SetPresence("bob".into(), presence.clone()),
        StoreOp::SetGroup("g1".into(), group.clone()),
        StoreOp::SeenHello([3; 32], 10),
    ];
    commit(&mut conn, &ops, &mut 0).unwrap();
    let snap = load(&conn, 0).unwrap();
    assert_eq!(snap.servers["s1"], server);
    assert_eq!(snap.presence["bob"], presence);
    assert_eq!(snap.groups["g1"], group);
    assert_eq!(snap.seen_hellos[&[3; 32]], 10);
}

/// Loads after `sql` has put a bad row in: the error's text.
fn load_error(sql: &str) -> String {
    let (_dir, pool) = database();
    let conn = pool.get().unwrap();
    conn.execute_batch(sql).unwrap();
    match load(&conn, 0) {
        Err(e @ StateError::CorruptRow { .. }) => e.to_string(),
        other => panic!("expected a corrupt row, got {other:?}"),
    }
}

#[test]
fn a_group_whose_members_do_not_decode_is_an_error_naming_it() {
    let text =
        load_error("INSERT INTO groups (group_id, members, updated_ms) VALUES ('g1', '{oops', 1)");
    assert!(
        text.contains("groups row group_id=\"g1\"") && text.contains("members"),
        "{text}"
    );
}

#[test]
fn a_presence_proof_that_does_not_decode_is_an_error_naming_it() {
    let text = load_error(
        "INSERT INTO presence (user_id, location, via, proof, updated_ms)
         VALUES ('bob', 's1', 's1', '[1,2]', 1)",
    );
    assert!(
        text.contains("presence row user_id=\"bob\"") && text.contains("proof"),
        "{text}"
    );
}

#[test]
fn a_server_port_out_of_range_is_an_error_naming_it() {
    let text = load_error(
        "INSERT INTO servers (server_id, pubkey, role, host, port, hello_ts, first_seen_ms, last_seen_ms)
         VALUES ('s1', 'k', 'local', 'h', 70000, 0, 0, 0)",
    );
    assert!(
        text.contains("servers row server_id=\"s1\"") && text.contains("70000"),
        "{text}"
    );
}

#[test]
fn a_digest_of_the_wrong_length_is_an_error_naming_it() {
    let text = load_error("INSERT INTO seen_hellos (digest, seen_ms) VALUES (x'0102', 1)");
    assert!(
        text.contains("seen_hellos row digest=x'0102'") && text.contains("2 bytes"),
        "{text}"
    );
    let text = load_error(
        "INSERT INTO proof_owners (digest, server_id, user_id, first_ms) VALUES (x'ff', 's1', 'bob', 1)",
    );
    assert!(text.contains("proof_owners row digest=x'ff'"), "{text}");
}
