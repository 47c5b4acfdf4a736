//! What a node keeps in SQLite: the records the router works with, loading
//! them at start, and the single writer thread that applies the router's
//! `StoreOp`s in batched transactions (SQLite has one writer; keeping every
//! write on one path avoids lock contention and keeps the router free of I/O).

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use serde_json::Value;

use super::custody::{Dest, Entry};
use super::router::{ConnId, HELLO_FRESHNESS_MS, StoreOp};
use crate::store::{Pool, StoreError};
use crate::wire::messages::{Proof, Role};

/// A directory entry: the key a user id is pinned to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRecord {
    pub pubkey: String,
    /// Registered through an unsigned (reference) hello.
    pub legacy: bool,
    pub first_seen_ms: i64,
}

impl UserRecord {
    pub fn new(pubkey: String, legacy: bool, now: i64) -> Self {
        UserRecord {
            pubkey,
            legacy,
            first_seen_ms: now,
        }
    }
}

/// A server of the mesh, pinned to its first key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerRecord {
    pub pubkey: String,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// `ts` of the last link hello accepted from it: a hello must be newer.
    pub hello_ts: i64,
    pub last_seen_ms: i64,
}

/// Where a remote user is, and which link told us.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PresenceRecord {
    pub location: String,
    pub via: String,
    pub proof: Option<Proof>,
    /// Listed as online: the link it came over is up.
    pub live: bool,
    pub updated_ms: i64,
}

/// A group's members, from the latest key share.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRecord {
    pub members: Vec<String>,
    pub updated_ms: i64,
}

/// Everything the router resumes from.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub users: HashMap<String, UserRecord>,
    pub servers: HashMap<String, ServerRecord>,
    pub presence: HashMap<String, PresenceRecord>,
    pub groups: HashMap<String, GroupRecord>,
    pub seen_hellos: HashMap<[u8; 32], i64>,
    pub proof_owners: HashMap<[u8; 32], String>,
    pub custody: Vec<Entry>,
}

fn digest_of(bytes: Vec<u8>) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

fn role_of(text: &str) -> Role {
    if text == "master" {
        Role::Master
    } else {
        Role::Local
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Local => "local",
    }
}

/// Loads the router's state. Hellos older than the freshness window are
/// left out: their `ts` check refuses them anyway.
pub(crate) fn load(conn: &Connection, now: i64) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot::default();
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
    for row in rows {
        let (id, rec) = row?;
        snap.users.insert(id, rec);
    }
    let mut stmt = conn.prepare(
        "SELECT server_id, pubkey, role, host, port, hello_ts, last_seen_ms FROM servers",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ServerRecord {
                pubkey: r.get(1)?,
                role: role_of(&r.get::<_, String>(2)?),
                host: r.get(3)?,
                port: r.get::<_, i64>(4)?.clamp(0, 65535) as u16,
                hello_ts: r.get(5)?,
                last_seen_ms: r.get(6)?,
            },
        ))
    })?;
    for row in rows {
        let (id, rec) = row?;
        snap.servers.insert(id, rec);
    }
    let mut stmt =
        conn.prepare("SELECT user_id, location, via, proof, updated_ms FROM presence")?;
    let rows = stmt.query_map([], |r| {
        let proof: Option<String> = r.get(3)?;
        Ok((
            r.get::<_, String>(0)?,
            PresenceRecord {
                location: r.get(1)?,
                via: r.get(2)?,
                proof: proof.and_then(|p| serde_json::from_str(&p).ok()),
                live: false,
                updated_ms: r.get(4)?,
            },
        ))
    })?;
    for row in rows {
        let (id, rec) = row?;
        snap.presence.insert(id, rec);
    }
    let mut stmt = conn.prepare("SELECT group_id, members, updated_ms FROM groups")?;
    let rows = stmt.query_map([], |r| {
        let members: String = r.get(1)?;
        Ok((
            r.get::<_, String>(0)?,
            GroupRecord {
                members: serde_json::from_str(&members).unwrap_or_default(),
                updated_ms: r.get(2)?,
            },
        ))
    })?;
    for row in rows {
        let (id, rec) = row?;
        snap.groups.insert(id, rec);
    }
    let mut stmt = conn.prepare("SELECT digest, seen_ms FROM seen_hellos WHERE seen_ms >= ?1")?;
    let rows = stmt.query_map([now - 2 * HELLO_FRESHNESS_MS], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (digest, at) = row?;
        if let Some(d) = digest_of(digest) {
            snap.seen_hellos.insert(d, at);
        }
    }
    let mut stmt = conn.prepare(
        "SELECT seq, msg_id, dest_kind, dest, kind, to_id, via, sender, payload, bytes, created_ms
         FROM custody ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let dest: String = r.get(3)?;
        let payload: String = r.get(8)?;
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            msg_id: r.get(1)?,
            dest: if r.get::<_, String>(2)? == "server" {
                Dest::Server(dest)
            } else {
                Dest::User(dest)
            },
            kind: r.get(4)?,
            to: r.get(5)?,
            via: r.get(6)?,
            sender: r.get(7)?,
            payload: std::sync::Arc::new(serde_json::from_str(&payload).unwrap_or_default()),
            bytes: r.get::<_, i64>(9)? as usize,
            created_ms: r.get(10)?,
        })
    })?;
    for row in rows {
        snap.custody.push(row?);
    }
    let mut stmt = conn.prepare("SELECT digest, server_id FROM proof_owners")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (digest, server) = row?;
        if let Some(d) = digest_of(digest) {
            snap.proof_owners.insert(d, server);
        }
    }
    Ok(snap)
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &StoreOp, now: i64) -> rusqlite::Result<()> {
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
            tx.prepare_cached("INSERT INTO servers (server_id, pubkey, role, host, port, hello_ts, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (server_id) DO UPDATE SET role = excluded.role, host = excluded.host,
                   port = excluded.port, hello_ts = excluded.hello_ts, last_seen_ms = excluded.last_seen_ms")?.execute(params![id, rec.pubkey, role_name(rec.role), rec.host, rec.port, rec.hello_ts, rec.last_seen_ms],
            )?;
        }
        StoreOp::SetPresence(user, rec) => {
            let proof = rec
                .proof
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok());
            tx.prepare_cached("INSERT INTO presence (user_id, location, via, proof, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET location = excluded.location, via = excluded.via,
                   proof = excluded.proof, updated_ms = excluded.updated_ms")?.execute(params![user, rec.location, rec.via, proof, rec.updated_ms],
            )?;
        }
        StoreOp::RemovePresence(user) => {
            tx.prepare_cached("DELETE FROM presence WHERE user_id = ?1")?
                .execute([user])?;
        }
        StoreOp::SeenHello(digest, at) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO seen_hellos (digest, seen_ms) VALUES (?1, ?2)",
            )?
            .execute(params![digest.as_slice(), at])?;
        }
        StoreOp::ProofOwner(digest, server, user) => {
            tx.prepare_cached("INSERT OR IGNORE INTO proof_owners (digest, server_id, user_id, first_ms) VALUES (?1, ?2, ?3, ?4)")?.execute(params![digest.as_slice(), server, user, now],
            )?;
        }
        StoreOp::Custody(e) => {
            let (dest_kind, dest) = match &e.dest {
                Dest::User(u) => ("user", u),
                Dest::Server(s) => ("server", s),
            };
            let payload = serde_json::to_string(&*e.payload).unwrap_or_default();
            tx.prepare_cached("INSERT INTO custody (seq, msg_id, dest_kind, dest, kind, to_id, via, sender, payload, bytes, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")?.execute(params![e.seq as i64, e.msg_id, dest_kind, dest, e.kind, e.to, e.via, e.sender, payload, e.bytes as i64, e.created_ms],
            )?;
        }
        StoreOp::Release(seqs) => {
            let mut stmt = tx.prepare_cached("DELETE FROM custody WHERE seq = ?1")?;
            for seq in seqs {
                stmt.execute([*seq as i64])?;
            }
        }
        StoreOp::SetGroup(group, rec) => {
            let members = Value::from(rec.members.clone()).to_string();
            tx.prepare_cached("INSERT INTO groups (group_id, members, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET members = excluded.members, updated_ms = excluded.updated_ms")?.execute(params![group, members, rec.updated_ms],
            )?;
        }
    }
    Ok(())
}

/// How often the write-ahead log is folded back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

enum Job {
    Op(StoreOp),
    /// Acknowledge this to the connection once the batch is committed.
    Ack(Committed1),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// One acknowledgement: connection, its peer's id, `msg_id`.
pub(crate) type Committed1 = (ConnId, String, String);
/// Acks whose frames are committed, handed back to the hub to send.
pub(crate) type Committed = Box<dyn Fn(Vec<Committed1>) + Send>;

/// A frame taken into custody and released again within one batch was
/// acknowledged by the next hop before it reached the disk: the next hop
/// holds it durably now, so neither row is written. (The previous hop's
/// ack still waits for this batch's commit.)
fn cancel_handed_on(batch: Vec<Job>) -> Vec<Job> {
    let taken: std::collections::HashSet<u64> = batch
        .iter()
        .filter_map(|j| match j {
            Job::Op(StoreOp::Custody(e)) => Some(e.seq),
            _ => None,
        })
        .collect();
    let handed_on: std::collections::HashSet<u64> = batch
        .iter()
        .filter_map(|j| match j {
            Job::Op(StoreOp::Release(seqs)) => {
                Some(seqs.iter().copied().filter(|s| taken.contains(s)))
            }
            _ => None,
        })
        .flatten()
        .collect();
    if handed_on.is_empty() {
        return batch;
    }
    batch
        .into_iter()
        .filter_map(|j| match j {
            Job::Op(StoreOp::Custody(e)) if handed_on.contains(&e.seq) => None,
            Job::Op(StoreOp::Release(seqs)) => {
                let left: Vec<u64> = seqs
                    .into_iter()
                    .filter(|s| !handed_on.contains(s))
                    .collect();
                (!left.is_empty()).then_some(Job::Op(StoreOp::Release(left)))
            }
            other => Some(other),
        })
        .collect()
}

/// The one path every node write takes: a thread that applies ops in
/// batches, one transaction per batch.
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
    /// Writes queued and not yet applied.
    backlog: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    _stop_checkpoints: mpsc::Sender<()>,
}

impl Writer {
    pub fn start(pool: Pool, committed: Committed) -> Result<Self, StoreError> {
        let mut conn = pool.get()?;
        let backlog = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let applied = backlog.clone();
        // Checkpoints run beside the writer (PASSIVE, so they never block it)
        // rather than inside a commit, where they would stall every ack.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = pool.get()?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("socp-checkpoint".into())
            .spawn(move || {
                // Runs until the writer is dropped (its sender with it).
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("socp-store".into())
            .spawn(move || {
                let mut pruned_at = 0usize;
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let writes = batch.iter().filter(|j| matches!(j, Job::Op(_))).count();
                    let now = crate::wire::now_ms();
                    let mut flushes = Vec::new();
                    let mut acks = Vec::new();
                    let batch = cancel_handed_on(batch);
                    let result = (|| -> rusqlite::Result<()> {
                        let tx = conn.transaction()?;
                        for job in batch {
                            match job {
                                Job::Op(op) => {
                                    if matches!(op, StoreOp::SeenHello(..)) {
                                        pruned_at += 1;
                                    }
                                    apply(&tx, &op, now)?;
                                }
                                Job::Ack(ack) => acks.push(ack),
                                Job::Flush(done) => flushes.push(done),
                            }
                        }
                        if pruned_at >= 1000 {
                            pruned_at = 0;
                            tx.execute(
                                "DELETE FROM seen_hellos WHERE seen_ms < ?1",
                                [now - 2 * HELLO_FRESHNESS_MS],
                            )?;
                        }
                        tx.commit()
                    })();
                    applied.fetch_sub(writes, std::sync::atomic::Ordering::Relaxed);
                    match result {
                        // Ack after persist: only what is committed is acknowledged.
                        Ok(()) if !acks.is_empty() => committed(acks),
                        Ok(()) => {}
                        Err(e) => tracing::error!(error = %e, unacked = acks.len(), "store write failed; the previous hops will resend"),
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the store thread: {e}")))?;
        Ok(Writer {
            tx,
            backlog,
            thread: Some(thread),
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// Writes queued and not yet applied.
    pub fn backlog(&self) -> usize {
        self.backlog.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a write.
    pub fn write(&self, op: StoreOp) {
        self.backlog
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.tx.send(Job::Op(op)).is_err() {
            tracing::error!("store thread is gone; a write was lost");
        }
    }

    /// Queues an acknowledgement for after the writes queued before it.
    pub fn ack(&self, conn: ConnId, to: String, msg_id: String) {
        let _ = self.tx.send(Job::Ack((conn, to, msg_id)));
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::custody::Dest;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            msg_id: format!("m{seq}"),
            dest: Dest::User("bob".into()),
            kind: "DELIVER".into(),
            payload: Default::default(),
            to: None,
            via: None,
            sender: "alice".into(),
            bytes: 1,
            created_ms: 0,
        }
    }

    #[test]
    fn frames_handed_on_within_a_batch_never_reach_the_disk() {
        let batch = vec![
            Job::Op(StoreOp::Custody(entry(1))),
            Job::Op(StoreOp::Custody(entry(2))),
            Job::Op(StoreOp::Release(vec![1, 3])),
        ];
        let left = cancel_handed_on(batch);
        assert_eq!(left.len(), 2);
        assert!(matches!(&left[0], Job::Op(StoreOp::Custody(e)) if e.seq == 2));
        assert!(matches!(&left[1], Job::Op(StoreOp::Release(s)) if s == &vec![3]));
    }
}
