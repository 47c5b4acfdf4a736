//! The node's tables in SQL: loading the router's state at start (a row
//! that does not decode is an error naming it, never a default) and
//! applying the router's `StoreOp`s in one transaction per batch.

use std::collections::HashMap;
use std::fmt::Display;

use rusqlite::{Connection, Transaction, params};
use serde_json::Value;

use super::StateError;
use super::StoreOp;
use super::custody_rows;
use super::read::{MemRead, SqliteRead, StoreRead};
use crate::node::custody::Summary;
use crate::node::records::{GroupRecord, PresenceRecord, ProofOwner, ServerRecord, UserRecord};
use crate::wire::HELLO_FRESHNESS_MS;
use crate::wire::messages::{Proof, Role};

/// Everything the router resumes from. The directory and custody rows
/// stay on disk: the router reads them through `store` (records) and in
/// pages (custody), starting from per-destination counts.
pub(crate) struct Snapshot {
    pub store: Box<dyn StoreRead>,
    pub servers: HashMap<String, ServerRecord>,
    pub presence: HashMap<String, PresenceRecord>,
    pub groups: HashMap<String, GroupRecord>,
    pub seen_hellos: HashMap<[u8; 32], i64>,
    pub proof_owners: HashMap<[u8; 32], ProofOwner>,
    pub custody: Summary,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("servers", &self.servers.len())
            .field("custody", &self.custody.dests.len())
            .finish_non_exhaustive()
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            store: Box::new(MemRead::default()),
            servers: HashMap::new(),
            presence: HashMap::new(),
            groups: HashMap::new(),
            seen_hellos: HashMap::new(),
            proof_owners: HashMap::new(),
            custody: Summary::default(),
        }
    }
}

/// Loads the router's state. Hellos older than the freshness window are
/// left out: their `ts` check refuses them anyway.
pub(crate) fn load(conn: &Connection, now: i64) -> Result<Snapshot, StateError> {
    // A database in a file is read through a connection of its own; one
    // in memory (tests) has no other connection: its users are copied.
    let store: Box<dyn StoreRead> = match conn.path().filter(|p| !p.is_empty()) {
        Some(path) => Box::new(SqliteRead::open(std::path::Path::new(path))?),
        None => Box::new(MemRead::with_users(load_users(conn)?)),
    };
    Ok(Snapshot {
        store,
        servers: load_servers(conn)?,
        presence: load_presence(conn)?,
        groups: load_groups(conn)?,
        seen_hellos: load_seen_hellos(conn, now - 2 * HELLO_FRESHNESS_MS)?,
        proof_owners: load_proof_owners(conn)?,
        custody: custody_rows::summary(conn)?,
    })
}

/// The error for a row that does not decode.
fn corrupt(table: &'static str, row: impl Display, problem: impl Display) -> StateError {
    StateError::CorruptRow {
        table,
        row: row.to_string(),
        problem: problem.to_string(),
    }
}

fn load_users(conn: &Connection) -> Result<HashMap<String, UserRecord>, StateError> {
    let mut stmt = conn.prepare("SELECT user_id, pubkey, legacy, first_seen_ms FROM users")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            UserRecord {
                pubkey: r.get(1)?,
                legacy: r.get::<_, i64>(2)? != 0,
                first_seen_ms: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn load_servers(conn: &Connection) -> Result<HashMap<String, ServerRecord>, StateError> {
    let mut stmt = conn.prepare(
        "SELECT server_id, pubkey, role, host, port, hello_ts, last_seen_ms FROM servers",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut servers = HashMap::new();
    for row in rows {
        let (id, pubkey, role, host, port, hello_ts, last_seen_ms) = row?;
        let row = || format!("server_id={id:?}");
        let role = role_of(&role).ok_or_else(|| {
            corrupt(
                "servers",
                row(),
                format!("role {role:?} is neither master nor local"),
            )
        })?;
        let port = u16::try_from(port)
            .map_err(|_| corrupt("servers", row(), format!("port {port} is not a TCP port")))?;
        let record = ServerRecord {
            pubkey,
            role,
            host,
            port,
            hello_ts,
            last_seen_ms,
        };
        servers.insert(id, record);
    }
    Ok(servers)
}

fn load_presence(conn: &Connection) -> Result<HashMap<String, PresenceRecord>, StateError> {
    let mut stmt =
        conn.prepare("SELECT user_id, location, via, proof, updated_ms FROM presence")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut presence = HashMap::new();
    for row in rows {
        let (user, location, via, proof, updated_ms) = row?;
        let proof = match proof {
            Some(text) => Some(serde_json::from_str::<Proof>(&text).map_err(|e| {
                corrupt(
                    "presence",
                    format!("user_id={user:?}"),
                    format!("proof is not a signed hello: {e}"),
                )
            })?),
            None => None,
        };
        let record = PresenceRecord {
            location,
            via,
            proof,
            live: false,
            updated_ms,
        };
        presence.insert(user, record);
    }
    Ok(presence)
}

fn load_groups(conn: &Connection) -> Result<HashMap<String, GroupRecord>, StateError> {
    let mut stmt = conn.prepare("SELECT group_id, members, updated_ms, owner FROM groups")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut groups = HashMap::new();
    for row in rows {
        let (group, members, updated_ms, owner) = row?;
        let members = serde_json::from_str::<Vec<String>>(&members).map_err(|e| {
            corrupt(
                "groups",
                format!("group_id={group:?}"),
                format!("members is not a JSON list of user ids: {e}"),
            )
        })?;
        let record = GroupRecord {
            members,
            updated_ms,
            owner,
        };
        groups.insert(group, record);
    }
    Ok(groups)
}

fn load_seen_hellos(conn: &Connection, since: i64) -> Result<HashMap<[u8; 32], i64>, StateError> {
    let mut stmt = conn.prepare("SELECT digest, seen_ms FROM seen_hellos WHERE seen_ms >= ?1")?;
    let rows = stmt.query_map([since], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut seen = HashMap::new();
    for row in rows {
        let (digest, at) = row?;
        seen.insert(digest_of("seen_hellos", digest)?, at);
    }
    Ok(seen)
}

fn load_proof_owners(conn: &Connection) -> Result<HashMap<[u8; 32], ProofOwner>, StateError> {
    let mut stmt = conn.prepare("SELECT digest, server_id, user_id, first_ms FROM proof_owners")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            ProofOwner {
                server: r.get(1)?,
                user: r.get(2)?,
                first_ms: r.get(3)?,
            },
        ))
    })?;
    let mut owners = HashMap::new();
    for row in rows {
        let (digest, owner) = row?;
        owners.insert(digest_of("proof_owners", digest)?, owner);
    }
    Ok(owners)
}

/// A SHA-256 digest column: 32 bytes, or the row is corrupt.
fn digest_of(table: &'static str, bytes: Vec<u8>) -> Result<[u8; 32], StateError> {
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        corrupt(
            table,
            format!("digest=x'{hex}'"),
            format!("the digest is {} bytes, not 32", bytes.len()),
        )
    })
}

fn role_of(text: &str) -> Option<Role> {
    match text {
        "master" => Some(Role::Master),
        "local" => Some(Role::Local),
        _ => None,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Local => "local",
    }
}

/// Applies one batch in one transaction. Every 1,000 hellos recorded, the
/// replay cache drops what is past the freshness window.
pub(super) fn commit(
    conn: &mut Connection,
    batch: &[StoreOp],
    hellos_since_prune: &mut usize,
) -> rusqlite::Result<()> {
    let now = crate::wire::now_ms();
    let tx = conn.transaction()?;
    for op in batch {
        if matches!(op, StoreOp::SeenHello(..)) {
            *hellos_since_prune += 1;
        }
        apply(&tx, op, now)?;
    }
    if *hellos_since_prune >= 1000 {
        *hellos_since_prune = 0;
        tx.execute(
            "DELETE FROM seen_hellos WHERE seen_ms < ?1",
            [now - 2 * HELLO_FRESHNESS_MS],
        )?;
    }
    tx.commit()
}

fn apply(tx: &Transaction<'_>, op: &StoreOp, now: i64) -> rusqlite::Result<()> {
    match op {
        StoreOp::PinUser(id, rec) => {
            // Pinning: the first key stays; a later insert only refreshes last_seen.
            tx.prepare_cached(
                "INSERT INTO users (user_id, pubkey, legacy, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![
                id,
                rec.pubkey,
                rec.legacy as i64,
                rec.first_seen_ms
            ])?;
        }
        StoreOp::PinServer(id, rec) => {
            tx.prepare_cached(
                "INSERT INTO servers (server_id, pubkey, role, host, port, hello_ts, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (server_id) DO UPDATE SET role = excluded.role, host = excluded.host,
                   port = excluded.port, hello_ts = excluded.hello_ts, last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![
                id,
                rec.pubkey,
                role_name(rec.role),
                rec.host,
                rec.port,
                rec.hello_ts,
                rec.last_seen_ms
            ])?;
        }
        StoreOp::SetPresence(user, rec) => {
            let proof = rec
                .proof
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok());
            tx.prepare_cached(
                "INSERT INTO presence (user_id, location, via, proof, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET location = excluded.location, via = excluded.via,
                   proof = excluded.proof, updated_ms = excluded.updated_ms",
            )?
            .execute(params![user, rec.location, rec.via, proof, rec.updated_ms])?;
            seen(tx, user, now)?;
        }
        StoreOp::RemovePresence(user) => {
            tx.prepare_cached("DELETE FROM presence WHERE user_id = ?1")?
                .execute([user])?;
            seen(tx, user, now)?;
        }
        StoreOp::SeenHello(digest, at) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO seen_hellos (digest, seen_ms) VALUES (?1, ?2)",
            )?
            .execute(params![digest.as_slice(), at])?;
        }
        StoreOp::ProofOwner(digest, server, user) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO proof_owners (digest, server_id, user_id, first_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![digest.as_slice(), server, user, now])?;
        }
        StoreOp::ForgetProofs(digests) => {
            let mut stmt = tx.prepare_cached("DELETE FROM proof_owners WHERE digest = ?1")?;
            for digest in digests {
                stmt.execute([digest.as_slice()])?;
            }
        }
        StoreOp::Custody(e) => custody_rows::insert(tx, e)?,
        StoreOp::Release(seqs) => {
            let mut stmt = tx.prepare_cached("DELETE FROM custody WHERE seq = ?1")?;
            for seq in seqs {
                stmt.execute([*seq as i64])?;
            }
        }
        StoreOp::Policy(op) => crate::node::policy::apply(tx, op)?,
        StoreOp::SetGroup(group, rec) => {
            let members = Value::from(rec.members.clone()).to_string();
            tx.prepare_cached(
                "INSERT INTO groups (group_id, members, updated_ms, owner) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (group_id) DO UPDATE SET members = excluded.members, updated_ms = excluded.updated_ms, owner = excluded.owner",
            )?
            .execute(params![group, members, rec.updated_ms, rec.owner])?;
        }
    }
    Ok(())
}

/// A user came online or went: the directory's `last_seen_ms` says when
/// (what `socp admin users` shows as LAST SEEN).
fn seen(tx: &Transaction<'_>, user: &str, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE users SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE user_id = ?1")?
        .execute(params![user, now])?;
    Ok(())
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
