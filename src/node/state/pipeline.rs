//! When each write and each acknowledgement leaves, decided without I/O:
//! custody rows and acks queue in order; a row is written when its hold
//! expires (a mailbox row, which nothing downstream will acknowledge soon,
//! is not held: it goes in the next transaction), or dropped when a
//! release for it arrives first (the next hop has it); an ack for content
//! with a held row leaves when everything queued before it is written or
//! dropped, any other ack with this pass's transaction (its rows are in
//! it, or already on disk), and only once that transaction commits. Other writes (directory, presence,
//! releases of written rows) go straight to the next transaction. A failed
//! transaction is sorted out here too: what must be refused, forgotten or
//! retried. An ack for content whose row failed is never sent: refused if
//! it was queued when the write failed, or taken before the router
//! forgot the row (it was sent for that row, not for a resend).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreOp;
use super::outcome::{Outcome, PendingAck, RowsAsk, StoreFailure, Written};
use crate::node::policy::PolicyOp;

/// What the store thread is asked to do, in order.
pub(super) enum Job {
    /// Read these custody bodies back (after what is queued is committed).
    Load(Vec<u64>),
    /// Read a page of a destination's rows back (the same way).
    Rows(RowsAsk),
    Op(StoreOp),
    /// Acknowledge this to the connection once the batch is committed.
    Ack(PendingAck),
    Flush(oneshot::Sender<()>),
}

/// How long a new custody row waits in memory before it is written. A frame
/// the next hop acknowledges within this time is durable there, so it never
/// reaches our disk: neither its row nor the delete. The previous hop's ack
/// waits for that acknowledgement or for our commit, whichever comes first,
/// so "ack after persist" still holds (persisted here or further on). Long
/// enough to cover the queueing of a saturated mesh (windows of thousands
/// of frames at over 10,000 frames/s): writing rows only because the node
/// is busy would make it slower exactly when it is busiest. Mailbox rows
/// (`Entry::mailbox`) are not held.
const HOLD: Duration = Duration::from_millis(250);
/// Payload bytes held at most; beyond it the oldest rows are written early.
const HOLD_BYTES: usize = 32 << 20;

/// What the store thread does with the jobs it is given (see the module
/// doc); the thread (`writer.rs`) does the I/O.
#[derive(Default)]
pub(super) struct Pipeline {
    queue: VecDeque<(Instant, Job)>,
    /// Custody rows in `queue`.
    held: HashSet<u64>,
    /// Custody rows in `queue` by a hash of their `msg_id`: an ack with
    /// none waits for nothing queued (its rows are in the batch, on disk,
    /// or there are none) and leaves with this pass's commit. A collision
    /// only makes an ack wait its turn.
    held_msgs: HashMap<u64, usize>,
    ids: std::hash::RandomState,
    /// Rows released while held: dropped when they reach the front.
    handed_on: HashSet<u64>,
    /// Writes for the next transaction, acks and flushes after its commit.
    batch: Vec<StoreOp>,
    acks: Vec<PendingAck>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Writes taken in and resolved (written or dropped), for the backlog.
    resolved: usize,
    /// Rows that never reached the disk.
    skipped: u64,
    /// Payload bytes of the rows in `queue`.
    held_bytes: usize,
    /// Custody rows whose write failed, until the router forgets them (its
    /// release of them). An ack for their `msg_id` queued before the
    /// failure, or taken before that release, is refused (`refused`): the
    /// router sent it for a row it still held, which is not on disk, even
    /// when the release comes in the same pass and the next batch commits.
    ///
    /// Kept by `msg_id` alone, on purpose (not by destination): content
    /// fanned out to several destinations (a group message, a group file)
    /// has one row per destination under one `msg_id`, and the previous
    /// hop's ack names only that `msg_id` (one frame came in for them
    /// all). So the ack is refused while any of its rows failed, and a
    /// row forgotten lowers only its own count (`failed_ids`): one
    /// destination's release never clears another's failure. Another
    /// sender's content under the same `msg_id` (identity is (sender,
    /// `msg_id`), PROTOCOL.md C11) is refused too until then: a `STORAGE`
    /// error too many, answered by a resend, never an ack too many.
    failed: HashMap<u64, String>,
    failed_ids: HashMap<String, usize>,
    /// Acks refused since the last commit: answered `STORAGE` with it.
    refused: Vec<PendingAck>,
    /// Writes of failed batches that are neither custody nor pins, retried
    /// (in order, before anything newer) until they commit.
    retry: Vec<StoreOp>,
    /// Custody bodies to read back after this pass's commit.
    loads: Vec<u64>,
    /// Pages of rows to read back after this pass's commit.
    row_loads: Vec<RowsAsk>,
}

impl Pipeline {
    pub(super) fn take(&mut self, job: Job, now: Instant) {
        match job {
            // Nothing downstream will acknowledge a mailbox row soon:
            // holding it would only hold its sender's ack. It goes in this
            // pass's transaction, ahead of held rows; its ack leaves when
            // that commits.
            Job::Op(StoreOp::Custody(e)) if e.mailbox => self.batch.push(StoreOp::Custody(e)),
            Job::Op(StoreOp::Custody(e)) => {
                self.held.insert(e.seq);
                self.held_bytes += e.bytes;
                *self
                    .held_msgs
                    .entry(self.ids.hash_one(&e.msg_id))
                    .or_default() += 1;
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
            // The router acknowledged content it held in a row whose write
            // failed (it has not forgotten the row yet): not on disk.
            Job::Ack(ack) if self.failed_ids.contains_key(&ack.msg_id) => self.refused.push(ack),
            Job::Ack(ack) if !self.held_msgs.contains_key(&self.ids.hash_one(&ack.msg_id)) => {
                self.acks.push(ack)
            }
            Job::Ack(_) => self.queue.push_back((now, job)),
            Job::Load(seqs) => self.loads.extend(seqs),
            Job::Rows(ask) => self.row_loads.push(ask),
            Job::Flush(done) => {
                // Everything queued before it goes to disk now.
                for (at, _) in self.queue.iter_mut() {
                    *at = now.min(*at);
                }
                self.flushes.push(done);
            }
        }
    }

    /// A held row of `msg_id` left the queue.
    fn unhold(&mut self, msg_id: &str) {
        let h = self.ids.hash_one(msg_id);
        if let Some(n) = self.held_msgs.get_mut(&h) {
            *n -= 1;
            if *n == 0 {
                self.held_msgs.remove(&h);
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
    pub(super) fn next_batch(&mut self, retry_due: bool) -> Vec<StoreOp> {
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
    pub(super) fn settle(
        &mut self,
        result: Result<(), rusqlite::Error>,
        batch: Vec<StoreOp>,
        acks: Vec<PendingAck>,
    ) -> Outcome {
        let refused = std::mem::take(&mut self.refused);
        let error = match result {
            Ok(()) => {
                let failure = (!refused.is_empty()).then(|| StoreFailure {
                    acks: refused,
                    error: "an earlier write of this content failed".into(),
                    ..Default::default()
                });
                let mut written = Written::default();
                for op in &batch {
                    match op {
                        StoreOp::Custody(e) => written.custody.push(e.seq),
                        StoreOp::PinUser(id, _) => written.users.push(id.clone()),
                        StoreOp::Policy(PolicyOp::ReplaceKey { user, .. }) => {
                            written.users.push(user.clone())
                        }
                        _ => {}
                    }
                }
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
        // Acks still queued for content that just failed wait for nothing
        // that will be written: refused now, with the others.
        let failed_ids = &self.failed_ids;
        self.queue.retain_mut(|(_, job)| match job {
            Job::Ack(ack) if failed_ids.contains_key(&ack.msg_id) => {
                f.acks.push(ack.clone());
                false
            }
            _ => true,
        });
        f.acks.extend(refused);
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
    pub(super) fn advance(&mut self, now: Instant) -> Option<Instant> {
        while let Some((due, job)) = self.queue.pop_front() {
            match job {
                Job::Op(StoreOp::Custody(e)) if self.handed_on.remove(&e.seq) => {
                    self.unhold(&e.msg_id);
                    self.held_bytes -= e.bytes;
                    self.resolved += 1;
                    self.skipped += 1;
                }
                Job::Op(StoreOp::Custody(e)) if due > now && self.held_bytes <= HOLD_BYTES => {
                    self.queue.push_front((due, Job::Op(StoreOp::Custody(e))));
                    return Some(due);
                }
                Job::Op(StoreOp::Custody(e)) => {
                    self.unhold(&e.msg_id);
                    self.held_bytes -= e.bytes;
                    self.held.remove(&e.seq);
                    self.batch.push(StoreOp::Custody(e));
                }
                Job::Ack(ack) => self.acks.push(ack),
                Job::Op(op) => self.batch.push(op),
                Job::Flush(done) => self.flushes.push(done),
                Job::Load(seqs) => self.loads.extend(seqs),
                Job::Rows(ask) => self.row_loads.push(ask),
            }
        }
        None
    }

    /// Stopping: everything held is due now, nothing stays in memory.
    pub(super) fn release_all(&mut self, now: Instant) {
        for (at, _) in self.queue.iter_mut() {
            *at = now;
        }
    }

    /// Writes waiting for the next transaction (retries not counted).
    pub(super) fn pending_writes(&self) -> usize {
        self.batch.len()
    }

    /// Writes resolved since last asked, for the backlog.
    pub(super) fn take_resolved(&mut self) -> usize {
        std::mem::take(&mut self.resolved)
    }

    /// Custody rows that never reached the disk, since start.
    pub(super) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Acks whose turn has come (they leave if the commit succeeds).
    pub(super) fn take_acks(&mut self) -> Vec<PendingAck> {
        std::mem::take(&mut self.acks)
    }

    /// Custody bodies to read back now.
    pub(super) fn take_loads(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.loads)
    }

    /// Pages of rows to read back after this pass's commit.
    pub(super) fn take_row_loads(&mut self) -> Vec<RowsAsk> {
        std::mem::take(&mut self.row_loads)
    }

    /// Flushes whose writes are committed.
    pub(super) fn take_flushes(&mut self) -> Vec<oneshot::Sender<()>> {
        std::mem::take(&mut self.flushes)
    }

    /// True while writes of a failed batch wait for a retry.
    pub(super) fn retrying(&self) -> bool {
        !self.retry.is_empty()
    }
}

/// How often writes of a failed batch are retried when nothing new comes.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);
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

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
