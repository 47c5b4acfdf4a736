//! The one path every node write takes: a thread that runs the pipeline
//! (`pipeline.rs`) over the jobs it is sent and applies what falls due in
//! one transaction per pass, then hands the outcome back to the hub; and a
//! second thread beside it that checkpoints the write-ahead log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use r2d2::PooledConnection;
use r2d2_sqlite::SqliteConnectionManager;

use super::StateError;
use super::StoreOp;
use super::custody_rows;
use super::outcome::{Outcome, PendingAck, RowsAsk, RowsRead};
use super::pipeline::{Job, Pipeline, RETRY_EVERY};
use super::sql;
use crate::node::health::Health;
use crate::node::records::ConnId;
use crate::store::{Pool, StoreError};

/// How often the write-ahead log is folded back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How the store thread hands outcomes back to the hub.
pub(crate) type Committed = Box<dyn Fn(Outcome) + Send>;

type Conn = PooledConnection<SqliteConnectionManager>;

/// The handle the hub writes through; dropping it lets the store thread
/// write what it holds and waits for it to end.
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
    /// Writes queued and not yet applied.
    backlog: Arc<AtomicUsize>,
    /// Custody rows handed on before they were written.
    skipped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    /// Dropped with the writer: the checkpoint thread then ends.
    _stop_checkpoints: mpsc::Sender<()>,
}

impl Writer {
    /// Starts the store thread and its checkpointer on `pool`'s database.
    pub fn start(
        pool: Pool,
        committed: Committed,
        health: Arc<Health>,
    ) -> Result<Self, StateError> {
        let conn = pool.get().map_err(StoreError::from)?;
        // Checkpoints run beside the writer (PASSIVE, so they never block it)
        // rather than inside a commit, where they would stall every ack.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let stop_checkpoints = start_checkpoints(pool.get().map_err(StoreError::from)?)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let store = StoreThread {
            conn,
            rx,
            committed,
            health,
            pipeline: Pipeline::default(),
            backlog: backlog.clone(),
            skipped: skipped.clone(),
            hellos_since_prune: 0,
            last_try: None,
        };
        let thread = std::thread::Builder::new()
            .name("socp-store".into())
            .spawn(move || store.run())
            .map_err(|source| StateError::Thread {
                name: "store",
                source,
            })?;
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
        let _ = self.tx.send(Job::Ack(PendingAck { conn, to, msg_id }));
    }

    /// Reads these custody bodies back; they come in an `Outcome`.
    pub fn load(&self, seqs: Vec<u64>) {
        let _ = self.tx.send(Job::Load(seqs));
    }

    /// Reads a page of a destination's custody rows back; it comes in an
    /// `Outcome`.
    pub fn rows(&self, ask: RowsAsk) {
        let _ = self.tx.send(Job::Rows(ask));
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

/// Starts the thread that checkpoints the WAL every `CHECKPOINT_EVERY`
/// until the returned sender is dropped.
fn start_checkpoints(conn: Conn) -> Result<mpsc::Sender<()>, StateError> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("socp-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|source| StateError::Thread {
            name: "checkpoint",
            source,
        })?;
    Ok(stop)
}

/// What the store thread owns.
struct StoreThread {
    conn: Conn,
    rx: mpsc::Receiver<Job>,
    committed: Committed,
    health: Arc<Health>,
    pipeline: Pipeline,
    /// Shared with the [`Writer`]: writes queued and not yet applied.
    backlog: Arc<AtomicUsize>,
    /// Shared with the [`Writer`]: custody rows never written.
    skipped: Arc<AtomicU64>,
    hellos_since_prune: usize,
    /// When a transaction was last tried (retries wait `RETRY_EVERY`).
    last_try: Option<Instant>,
}

/// What the store thread woke up to.
enum Woke {
    Job(Job),
    /// The front of the queue (or a retry) fell due.
    Due,
    /// The writer is gone: write everything and stop.
    Closed,
}

impl StoreThread {
    /// Passes until the writer is dropped; the last pass writes everything.
    fn run(mut self) {
        // Readiness hears when this thread ends, panics included.
        let _alive = StoreAlive(self.health.clone());
        let mut next_due = None;
        loop {
            let woke = self.wait(next_due);
            let open = !matches!(woke, Woke::Closed);
            let first = match woke {
                Woke::Job(job) => Some(job),
                Woke::Due | Woke::Closed => None,
            };
            next_due = self.pass(first, open);
            if !open {
                return;
            }
        }
    }

    /// Waits for work, or for the front of the queue to fall due.
    fn wait(&self, due: Option<Instant>) -> Woke {
        let received = match due {
            Some(due) => self
                .rx
                .recv_timeout(due.saturating_duration_since(Instant::now())),
            None => self
                .rx
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(job) => Woke::Job(job),
            Err(mpsc::RecvTimeoutError::Timeout) => Woke::Due,
            Err(mpsc::RecvTimeoutError::Disconnected) => Woke::Closed,
        }
    }

    /// One pass: takes in what is queued, commits what is due, reads back
    /// what was asked, hands the outcome to the hub. Returns when the next
    /// pass is due, if one is before new work comes.
    fn pass(&mut self, first: Option<Job>, open: bool) -> Option<Instant> {
        let now = Instant::now();
        for job in first.into_iter().chain(self.rx.try_iter()) {
            self.pipeline.take(job, now);
        }
        if !open {
            // Stopping: nothing stays in memory.
            self.pipeline.release_all(now);
        }
        let mut next_due = self.pipeline.advance(now);
        let mut outcome = self.commit_due(now, open);
        self.read_back(&mut outcome);
        if !outcome.is_empty() {
            (self.committed)(outcome);
        }
        if self.pipeline.retrying() {
            let again = now + RETRY_EVERY;
            next_due = Some(next_due.map_or(again, |d| d.min(again)));
        }
        for done in self.pipeline.take_flushes() {
            let _ = done.send(());
        }
        next_due
    }

    /// Commits what is due (failed writes again once `RETRY_EVERY` has
    /// passed, or when stopping) and sorts out which acks may leave: only
    /// what is committed, here or at the next hop, is acknowledged.
    fn commit_due(&mut self, now: Instant, open: bool) -> Outcome {
        let retry_due = self.last_try.is_none_or(|t| now >= t + RETRY_EVERY) || !open;
        let writes = self.pipeline.pending_writes();
        let batch = self.pipeline.next_batch(retry_due);
        let acks = self.pipeline.take_acks();
        let result = if batch.is_empty() {
            Ok(())
        } else {
            self.last_try = Some(now);
            let result = sql::commit(&mut self.conn, &batch, &mut self.hellos_since_prune);
            self.health
                .store_committed(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            result
        };
        let resolved = writes + self.pipeline.take_resolved();
        self.backlog.fetch_sub(resolved, Ordering::Relaxed);
        self.skipped
            .store(self.pipeline.skipped(), Ordering::Relaxed);
        self.pipeline.settle(result, batch, acks)
    }

    /// Reads back the custody bodies asked for; those that cannot be read
    /// are asked again at the router's next pump.
    fn read_back(&mut self, outcome: &mut Outcome) {
        for ask in self.pipeline.take_row_loads() {
            let rows =
                custody_rows::read_rows(&self.conn, &ask.dest, ask.after, ask.upto, ask.limit)
                    .inspect_err(|e| tracing::error!(error = %e, "cannot read custody rows back"))
                    .ok();
            outcome.rows.push(RowsRead { ask, rows });
        }
        let loads = self.pipeline.take_loads();
        if loads.is_empty() {
            return;
        }
        match custody_rows::read_bodies(&self.conn, &loads) {
            Ok(bodies) => outcome.bodies = bodies,
            Err(e) => {
                tracing::error!(error = %e, "cannot read custody bodies back");
                outcome.unread = loads;
            }
        }
    }
}

/// Tells readiness that the store thread ended when dropped.
struct StoreAlive(Arc<Health>);

impl Drop for StoreAlive {
    fn drop(&mut self) {
        self.0.store_stopped();
    }
}
