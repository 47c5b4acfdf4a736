//! What a node keeps in SQLite: the records the router works with, loading
//! them at start, and the single writer thread that applies the router's
//! `StoreOp`s in batched transactions (SQLite has one writer; keeping every
//! write on one path avoids lock contention and keeps the router free of I/O).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// The server that first presented a presence proof (PROTOCOL.md C5).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProofOwner {
    pub server: String,
    pub user: String,
    /// When it was first presented (this node's clock).
    pub first_ms: i64,
}

/// A group's members, from the latest key share.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRecord {
    pub members: Vec<String>,
    pub updated_ms: i64,
    /// The creator of the first share seen (None: recorded before owners
    /// were kept; the next share pins its creator).
    pub owner: Option<String>,
}

/// Everything the router resumes from.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub users: HashMap<String, UserRecord>,
    pub servers: HashMap<String, ServerRecord>,
    pub presence: HashMap<String, PresenceRecord>,
    pub groups: HashMap<String, GroupRecord>,
    pub seen_hellos: HashMap<[u8; 32], i64>,
    pub proof_owners: HashMap<[u8; 32], ProofOwner>,
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
    let mut stmt = conn.prepare("SELECT group_id, members, updated_ms, owner FROM groups")?;
    let rows = stmt.query_map([], |r| {
        let members: String = r.get(1)?;
        Ok((
            r.get::<_, String>(0)?,
            GroupRecord {
                members: serde_json::from_str(&members).unwrap_or_default(),
                updated_ms: r.get(2)?,
                owner: r.get(3)?,
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
        "SELECT seq, msg_id, dest_kind, dest, kind, to_id, via, sender, bytes, created_ms
         FROM custody ORDER BY seq",
    )?;
    // Bodies stay on disk: they are read back in pages when they are sent.
    let rows = stmt.query_map([], |r| {
        let dest: String = r.get(3)?;
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
            body: None,
            bytes: r.get::<_, i64>(8)? as usize,
            created_ms: r.get(9)?,
        })
    })?;
    for row in rows {
        snap.custody.push(row?);
    }
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
    for row in rows {
        let (digest, owner) = row?;
        if let Some(d) = digest_of(digest) {
            snap.proof_owners.insert(d, owner);
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
        StoreOp::ForgetProofs(digests) => {
            let mut stmt = tx.prepare_cached("DELETE FROM proof_owners WHERE digest = ?1")?;
            for digest in digests {
                stmt.execute([digest.as_slice()])?;
            }
        }
        StoreOp::Custody(e) => {
            let (dest_kind, dest) = match &e.dest {
                Dest::User(u) => ("user", u),
                Dest::Server(s) => ("server", s),
            };
            let payload = serde_json::to_string(&e.body.as_deref()).unwrap_or_default();
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
        StoreOp::Policy(op) => crate::node::policy::apply(tx, op)?,
        StoreOp::SetGroup(group, rec) => {
            let members = Value::from(rec.members.clone()).to_string();
            tx.prepare_cached("INSERT INTO groups (group_id, members, updated_ms, owner) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (group_id) DO UPDATE SET members = excluded.members, updated_ms = excluded.updated_ms, owner = excluded.owner")?.execute(params![group, members, rec.updated_ms, rec.owner],
            )?;
        }
    }
    Ok(())
}

/// How often the write-ahead log is folded back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Custody bodies read back from disk, by `seq` (None: no such row).
pub(crate) type Bodies = Vec<(u64, Option<std::sync::Arc<serde_json::Map<String, Value>>>)>;

/// Reads custody bodies back from disk.
fn read_bodies(conn: &Connection, seqs: &[u64]) -> rusqlite::Result<Bodies> {
    let mut stmt = conn.prepare_cached("SELECT payload FROM custody WHERE seq = ?1")?;
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let text: Option<String> = stmt
            .query_row([seq as i64], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let body = text
            .and_then(|t| serde_json::from_str(&t).ok())
            .map(std::sync::Arc::new);
        out.push((seq, body));
    }
    Ok(out)
}

enum Job {
    /// Read these custody bodies back (after what is queued is committed).
    Load(Vec<u64>),
    Op(StoreOp),
    /// Acknowledge this to the connection once the batch is committed.
    Ack(Committed1),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// One acknowledgement: connection, its peer's id, `msg_id`.
pub(crate) type Committed1 = (ConnId, String, String);

/// What the store could not write (PROTOCOL.md C14: a write the store could
/// not make is never acknowledged, and memory never claims what the disk
/// does not hold). Custody rows and user pins are not retried: the router
/// forgets them (a resend is taken and written afresh) and tells who sent
/// them; every other write is kept and retried (see `Retry`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StoreFailure {
    /// Custody rows (by `seq`) that are not on disk.
    pub custody: Vec<u64>,
    /// Users whose pin is not on disk.
    pub users: Vec<String>,
    /// Acknowledgements that must not be sent: answer `STORAGE` instead.
    pub acks: Vec<Committed1>,
    /// The store's error, for the answer and the log.
    pub error: String,
}

/// What became of one pass of the store thread, handed back to the hub.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Acks whose frames are committed: send them.
    pub acks: Vec<Committed1>,
    /// What failed, if anything did.
    pub failure: Option<StoreFailure>,
    /// Custody rows now on disk: their bodies may leave memory.
    pub written: Vec<u64>,
    /// Custody bodies read back, as asked.
    pub bodies: Bodies,
    /// Custody bodies asked for that could not be read (asked again later).
    pub unread: Vec<u64>,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.failure.is_none()
            && self.written.is_empty()
            && self.bodies.is_empty()
            && self.unread.is_empty()
    }
}

/// How the store thread hands outcomes back to the hub.
pub(crate) type Committed = Box<dyn Fn(Outcome) + Send>;

/// How long a new custody row waits in memory before it is written. A frame
/// the next hop acknowledges within this time is durable there, so it never
/// reaches our disk: neither its row nor the delete. The previous hop's ack
/// waits for that acknowledgement or for our commit, whichever comes first,
/// so "ack after persist" still holds (persisted here or further on). Long
/// enough to cover the queueing of a saturated mesh (windows of thousands
/// of frames at over 10,000 frames/s): writing rows only because the node
/// is busy would make it slower exactly when it is busiest.
const HOLD: Duration = Duration::from_millis(250);
/// Payload bytes held at most; beyond it the oldest rows are written early.
const HOLD_BYTES: usize = 32 << 20;

/// What the store thread does with the jobs it is given, without the I/O:
/// custody rows and acks queue in order; a row is written when its hold
/// expires, or dropped when a release for it arrives first; an ack leaves
/// when everything queued before it is written or dropped. Other writes
/// (directory, presence, releases of written rows) go straight through.
#[derive(Default)]
struct Pipeline {
    queue: VecDeque<(Instant, Job)>,
    /// Custody rows in `queue`.
    held: HashSet<u64>,
    /// Rows released while held: dropped when they reach the front.
    handed_on: HashSet<u64>,
    /// Writes for the next transaction, acks and flushes after its commit.
    batch: Vec<StoreOp>,
    acks: Vec<Committed1>,
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Writes taken in and resolved (written or dropped), for the backlog.
    resolved: usize,
    /// Rows that never reached the disk.
    skipped: u64,
    /// Payload bytes of the rows in `queue`.
    held_bytes: usize,
    /// Custody rows whose write failed, until the router forgets them (its
    /// release of them): an ack for their `msg_id` is refused meanwhile,
    /// even when it comes in a later batch that commits.
    failed: HashMap<u64, String>,
    failed_ids: HashMap<String, usize>,
    /// Writes of failed batches that are neither custody nor pins, retried
    /// (in order, before anything newer) until they commit.
    retry: Vec<StoreOp>,
    /// Custody bodies to read back after this pass's commit.
    loads: Vec<u64>,
}

impl Pipeline {
    fn take(&mut self, job: Job, now: Instant) {
        match job {
            Job::Op(StoreOp::Custody(e)) => {
                self.held.insert(e.seq);
                self.held_bytes += e.bytes;
                self.queue
                    .push_back((now + HOLD, Job::Op(StoreOp::Custody(e))));
            }
            Job::Op(StoreOp::Release(seqs)) => {
                // A row that failed to write has nothing to delete.
                let seqs: Vec<u64> = seqs.into_iter().filter(|s| !self.forget(*s)).collect();
                let (dropped, written): (Vec<u64>, Vec<u64>) =
                    seqs.into_iter().partition(|s| self.held.remove(s));
                self.handed_on.extend(dropped);
                if written.is_empty() {
                    self.resolved += 1;
                } else {
                    self.batch.push(StoreOp::Release(written));
                }
            }
            Job::Op(op) => self.batch.push(op),
            Job::Ack(_) => self.queue.push_back((now, job)),
            Job::Load(seqs) => self.loads.extend(seqs),
            Job::Flush(done) => {
                // Everything queued before it goes to disk now.
                for (at, _) in self.queue.iter_mut() {
                    *at = now.min(*at);
                }
                self.flushes.push(done);
            }
        }
    }

    /// The router forgot a row whose write failed: true if `seq` was one.
    fn forget(&mut self, seq: u64) -> bool {
        let Some(msg_id) = self.failed.remove(&seq) else {
            return false;
        };
        if let Some(n) = self.failed_ids.get_mut(&msg_id) {
            *n -= 1;
            if *n == 0 {
                self.failed_ids.remove(&msg_id);
            }
        }
        true
    }

    /// The next transaction: writes to retry first, then the new batch.
    /// Retries wait for new writes or for `RETRY_EVERY`.
    fn next_batch(&mut self, retry_due: bool) -> Vec<StoreOp> {
        let batch = std::mem::take(&mut self.batch);
        if self.retry.is_empty() || (batch.is_empty() && !retry_due) {
            return batch;
        }
        let mut all = std::mem::take(&mut self.retry);
        all.extend(batch);
        all
    }

    /// Sorts out what a commit of `batch` did: which acks may leave, and
    /// what the router must forget and answer when it failed.
    fn settle(
        &mut self,
        result: Result<(), rusqlite::Error>,
        batch: Vec<StoreOp>,
        acks: Vec<Committed1>,
    ) -> Outcome {
        let error = match result {
            Ok(()) => {
                let (refused, acks): (Vec<_>, Vec<_>) = acks
                    .into_iter()
                    .partition(|(_, _, id)| self.failed_ids.contains_key(id));
                let failure = (!refused.is_empty()).then(|| StoreFailure {
                    acks: refused,
                    error: "an earlier write of this content failed".into(),
                    ..Default::default()
                });
                let written = batch
                    .iter()
                    .filter_map(|op| match op {
                        StoreOp::Custody(e) => Some(e.seq),
                        _ => None,
                    })
                    .collect();
                return Outcome {
                    acks,
                    failure,
                    written,
                    ..Default::default()
                };
            }
            Err(e) => e,
        };
        let transient = is_transient(&error);
        let mut f = StoreFailure {
            acks,
            error: error.to_string(),
            ..Default::default()
        };
        let mut dropped = 0usize;
        for op in batch {
            match op {
                StoreOp::Custody(e) => {
                    f.custody.push(e.seq);
                    *self.failed_ids.entry(e.msg_id.clone()).or_default() += 1;
                    self.failed.insert(e.seq, e.msg_id);
                }
                StoreOp::PinUser(id, _) => f.users.push(id),
                op if transient => self.retry.push(op),
                _ => dropped += 1,
            }
        }
        if self.retry.len() > MAX_RETRY {
            let over = self.retry.len() - MAX_RETRY;
            self.retry.drain(..over);
            dropped += over;
        }
        tracing::error!(
            error = %f.error,
            rows = f.custody.len(),
            pins = f.users.len(),
            refused_acks = f.acks.len(),
            retrying = self.retry.len(),
            dropped,
            "store write failed: its content is refused (STORAGE), other writes are retried"
        );
        Outcome {
            failure: Some(f),
            ..Default::default()
        }
    }

    /// Moves what is due (or dropped) from the front of the queue into the
    /// batch; returns when the front is due next, if anything is held.
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        while let Some((due, job)) = self.queue.pop_front() {
            match job {
                Job::Op(StoreOp::Custody(e)) if self.handed_on.remove(&e.seq) => {
                    self.held_bytes -= e.bytes;
                    self.resolved += 1;
                    self.skipped += 1;
                }
                Job::Op(StoreOp::Custody(e)) if due > now && self.held_bytes <= HOLD_BYTES => {
                    self.queue.push_front((due, Job::Op(StoreOp::Custody(e))));
                    return Some(due);
                }
                Job::Op(StoreOp::Custody(e)) => {
                    self.held_bytes -= e.bytes;
                    self.held.remove(&e.seq);
                    self.batch.push(StoreOp::Custody(e));
                }
                Job::Ack(ack) => self.acks.push(ack),
                Job::Op(op) => self.batch.push(op),
                Job::Flush(done) => self.flushes.push(done),
                Job::Load(seqs) => self.loads.extend(seqs),
            }
        }
        None
    }
}

/// How often writes of a failed batch are retried when nothing new comes.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Writes kept for a retry at most (directory, presence, releases: small
/// rows); beyond it the oldest are dropped, with an error in the log.
const MAX_RETRY: usize = 100_000;

/// A failure that may go away by itself (a full disk, an I/O error, a
/// locked database), as opposed to one that would fail every retry.
fn is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DiskFull
                | C::SystemIoFailure
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::OutOfMemory
                | C::CannotOpen
        )
    )
}

/// Applies one batch in one transaction. Every 1,000 hellos recorded, the
/// replay cache drops what is past the freshness window.
fn commit(
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

/// The one path every node write takes: a thread that applies ops in
/// batches, one transaction per batch.
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
    /// Writes queued and not yet applied.
    backlog: std::sync::Arc<AtomicUsize>,
    /// Custody rows handed on before they were written.
    skipped: std::sync::Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    _stop_checkpoints: mpsc::Sender<()>,
}

impl Writer {
    pub fn start(
        pool: Pool,
        committed: Committed,
        health: std::sync::Arc<super::health::Health>,
    ) -> Result<Self, StoreError> {
        let mut conn = pool.get()?;
        let backlog = std::sync::Arc::new(AtomicUsize::new(0));
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
        let skipped = std::sync::Arc::new(AtomicU64::new(0));
        let skipped_count = skipped.clone();
        let thread = std::thread::Builder::new()
            .name("socp-store".into())
            .spawn(move || {
                // Readiness hears when this thread ends, panics included.
                let _alive = StoreAlive(health.clone());
                let mut pruned_at = 0usize;
                let mut p = Pipeline::default();
                let mut next_due: Option<Instant> = None;
                let mut last_try: Option<Instant> = None;
                let mut open = true;
                while open {
                    // Wait for work, or for the front of the queue to fall due.
                    let first = match next_due {
                        Some(due) => {
                            match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                                Ok(job) => Some(job),
                                Err(mpsc::RecvTimeoutError::Timeout) => None,
                                Err(mpsc::RecvTimeoutError::Disconnected) => {
                                    open = false;
                                    None
                                }
                            }
                        }
                        None => match rx.recv() {
                            Ok(job) => Some(job),
                            Err(_) => {
                                open = false;
                                None
                            }
                        },
                    };
                    let now = Instant::now();
                    for job in first.into_iter().chain(rx.try_iter()) {
                        p.take(job, now);
                    }
                    if !open {
                        // Stopping: nothing stays in memory.
                        for (at, _) in p.queue.iter_mut() {
                            *at = now;
                        }
                    }
                    next_due = p.advance(now);
                    let retry_due = last_try.is_none_or(|t| now >= t + RETRY_EVERY) || !open;
                    let writes = p.batch.len();
                    let batch = p.next_batch(retry_due);
                    let acks = std::mem::take(&mut p.acks);
                    let result = if batch.is_empty() {
                        Ok(())
                    } else {
                        last_try = Some(now);
                        let result = commit(&mut conn, &batch, &mut pruned_at);
                        health.store_committed(
                            result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                        );
                        result
                    };
                    applied.fetch_sub(writes + std::mem::take(&mut p.resolved), Ordering::Relaxed);
                    skipped_count.store(p.skipped, Ordering::Relaxed);
                    // Ack after persist: only what is committed (here or at
                    // the next hop) is acknowledged; the rest is answered.
                    let mut outcome = p.settle(result, batch, acks);
                    let loads = std::mem::take(&mut p.loads);
                    if !loads.is_empty() {
                        match read_bodies(&conn, &loads) {
                            Ok(bodies) => outcome.bodies = bodies,
                            // Asked again at the next pump.
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read custody bodies back");
                                outcome.unread = loads;
                            }
                        }
                    }
                    if !outcome.is_empty() {
                        committed(outcome);
                    }
                    if !p.retry.is_empty() {
                        let again = now + RETRY_EVERY;
                        next_due = Some(next_due.map_or(again, |d| d.min(again)));
                    }
                    for done in std::mem::take(&mut p.flushes) {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the store thread: {e}")))?;
        Ok(Writer {
            tx,
            backlog,
            skipped,
            thread: Some(thread),
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// Writes queued and not yet applied.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Custody rows that the next hop acknowledged before they were written.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Queues a write.
    pub fn write(&self, op: StoreOp) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Job::Op(op)).is_err() {
            tracing::error!("store thread is gone; a write was lost");
        }
    }

    /// Queues an acknowledgement for after the writes queued before it.
    pub fn ack(&self, conn: ConnId, to: String, msg_id: String) {
        let _ = self.tx.send(Job::Ack((conn, to, msg_id)));
    }

    /// Reads these custody bodies back; they come in an `Outcome`.
    pub fn load(&self, seqs: Vec<u64>) {
        let _ = self.tx.send(Job::Load(seqs));
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Tells readiness that the store thread ended when dropped.
struct StoreAlive(std::sync::Arc<super::health::Health>);

impl Drop for StoreAlive {
    fn drop(&mut self) {
        self.0.store_stopped();
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
            kind: crate::node::custody::ContentKind::Dm,
            body: None,
            to: None,
            via: None,
            sender: "alice".into(),
            bytes: 1,
            created_ms: 0,
        }
    }

    fn ack(n: u64) -> Job {
        Job::Ack((0, "alice".into(), format!("m{n}")))
    }

    fn written(p: &mut Pipeline) -> Vec<String> {
        std::mem::take(&mut p.batch)
            .into_iter()
            .map(|op| match op {
                StoreOp::Custody(e) => format!("row {}", e.seq),
                StoreOp::Release(s) => format!("delete {s:?}"),
                _ => "other".into(),
            })
            .collect()
    }

    fn acked(p: &mut Pipeline) -> Vec<String> {
        std::mem::take(&mut p.acks)
            .into_iter()
            .map(|(_, _, id)| id)
            .collect()
    }

    #[test]
    fn a_frame_handed_on_within_its_hold_never_reaches_the_disk() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        p.take(Job::Op(StoreOp::Custody(entry(1))), t0);
        p.take(ack(1), t0);
        p.take(Job::Op(StoreOp::Custody(entry(2))), t0);
        p.take(ack(2), t0);
        // Held: nothing written, nobody acknowledged yet.
        assert_eq!(p.advance(t0), Some(t0 + HOLD));
        assert!(written(&mut p).is_empty() && acked(&mut p).is_empty());
        // The next hop acknowledges 2 (and 3, written long ago).
        p.take(Job::Op(StoreOp::Release(vec![2, 3])), t0);
        assert_eq!(written(&mut p), ["delete [3]"]);
        // 1 falls due: written, then both acks leave (2's row never does).
        let due = t0 + HOLD;
        assert_eq!(p.advance(due), None);
        assert_eq!(written(&mut p), ["row 1"]);
        assert_eq!(acked(&mut p), ["m1", "m2"]);
        assert_eq!(p.skipped, 1);
        // A later release of 1 is a delete.
        p.take(Job::Op(StoreOp::Release(vec![1])), due);
        assert_eq!(written(&mut p), ["delete [1]"]);
    }

    #[test]
    fn an_ack_waits_for_everything_queued_before_it() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        p.take(Job::Op(StoreOp::Custody(entry(1))), t0);
        p.take(Job::Op(StoreOp::Custody(entry(2))), t0);
        p.take(ack(2), t0);
        p.take(Job::Op(StoreOp::Release(vec![2])), t0);
        p.advance(t0);
        assert!(
            acked(&mut p).is_empty(),
            "1 is neither written nor handed on"
        );
        p.take(Job::Op(StoreOp::Release(vec![1])), t0);
        assert_eq!(p.advance(t0), None);
        assert!(written(&mut p).is_empty());
        assert_eq!(acked(&mut p), ["m2"]);
        assert_eq!((p.skipped, p.resolved), (2, 4));
    }

    #[test]
    fn a_flush_writes_what_is_held() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        let mut s = entry(1);
        s.dest = Dest::Server("master".into());
        p.take(Job::Op(StoreOp::Custody(s)), t0);
        p.take(ack(1), t0);
        let (done, _wait) = tokio::sync::oneshot::channel();
        p.take(Job::Flush(done), t0);
        assert_eq!(p.advance(t0), None);
        assert_eq!(written(&mut p), ["row 1"]);
        assert_eq!(acked(&mut p), ["m1"]);
        assert_eq!(p.flushes.len(), 1);
    }

    #[test]
    fn forgotten_proofs_are_not_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let pool =
            crate::store::open(&dir.path().join("n.sqlite"), crate::store::Schema::Node).unwrap();
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

    fn disk_full() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None)
    }

    #[test]
    fn a_failed_write_is_never_acknowledged_and_the_rest_is_retried() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        let seen = StoreOp::SeenHello([7; 32], 1);
        p.take(Job::Op(seen.clone()), t0);
        p.take(Job::Op(StoreOp::Custody(entry(1))), t0);
        p.take(
            Job::Op(StoreOp::PinUser(
                "dave".into(),
                UserRecord::new("k".into(), false, 1),
            )),
            t0,
        );
        p.advance(t0 + HOLD);
        let batch = p.next_batch(false);
        let out = p.settle(
            Err(disk_full()),
            batch,
            vec![(0, "alice".into(), "m1".into())],
        );
        let f = out.failure.expect("a failure");
        assert!(out.acks.is_empty());
        assert_eq!(
            (f.custody, f.users, f.acks.len()),
            (vec![1], vec!["dave".into()], 1)
        );
        // The resend's ack comes before the router forgot row 1: refused,
        // though its own (empty) batch commits.
        let out = p.settle(Ok(()), Vec::new(), vec![(0, "alice".into(), "m1".into())]);
        assert!(out.acks.is_empty() && out.failure.is_some_and(|f| f.acks.len() == 1));
        // The router forgets row 1: nothing to delete, and m1 is clean again.
        p.take(Job::Op(StoreOp::Release(vec![1])), t0);
        assert_eq!(p.resolved, 1);
        let out = p.settle(Ok(()), Vec::new(), vec![(0, "alice".into(), "m1".into())]);
        assert_eq!(out.acks.len(), 1);
        // The replay cache row is retried first, before anything newer.
        p.take(Job::Op(StoreOp::Release(vec![9])), t0);
        assert_eq!(p.next_batch(false), vec![seen, StoreOp::Release(vec![9])]);
    }

    #[test]
    fn rows_past_the_byte_budget_are_written_early() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        for seq in 1..=3 {
            let mut e = entry(seq);
            e.bytes = HOLD_BYTES / 2;
            p.take(Job::Op(StoreOp::Custody(e)), t0);
        }
        // 1.5 budgets held: the oldest goes to disk, the others wait.
        assert_eq!(p.advance(t0), Some(t0 + HOLD));
        assert_eq!(written(&mut p), ["row 1"]);
        assert_eq!(p.held_bytes, HOLD_BYTES);
    }
}
