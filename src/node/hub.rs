//! The hub: the one task that owns the router. It feeds the router the
//! connections' events in order, hands its frames to the connections'
//! bounded queues (a full queue disconnects that peer, never blocks the
//! others), passes its writes to the store thread and keeps its timers.
//! At shutdown it has the router say goodbye and closes every connection
//! through its queue, then flushes the store.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use super::router::LinkStatus;
use super::router::{ConnId, DialAsk, Input, Outgoing, Output, Router};
use super::state::{Outcome, PendingAck, Writer};
use super::timers::Timers;
use crate::wire::messages::{Ack, Message};
use crate::wire::now_ms;

/// Events the hub consumes.
pub(crate) enum HubEvent {
    /// A connection's queue, before its hello is delivered.
    Register(ConnId, super::conn::SendQueue),
    Unregister(ConnId),
    Input(Box<Input>),
    Status(oneshot::Sender<Status>),
    /// What the store committed (acks to send) or could not write.
    Persisted(Box<Outcome>),
    /// The node is stopping: tell the peers our users are gone, then close
    /// every connection once what is queued for it is sent (and any that
    /// registers from now on). Answered when no connection is left.
    Shutdown(oneshot::Sender<()>),
    /// Flush the store and stop (every connection has ended).
    Stop,
}

/// What the hub tells a connection.
#[derive(Debug)]
///
/// Small (boxed variants): a connection's queue holds these in one
/// buffer while they wait (`conn/queue.rs`).
pub(crate) enum ConnCmd {
    Frame(Box<Outgoing>),
    /// Answer the peer's ping with these bytes (boxed: one word, where a
    /// `Vec` would make every queued command three).
    #[allow(clippy::box_collection)]
    Pong(Box<Vec<u8>>),
    /// Close once the frames queued before it are sent.
    Close,
}

/// What tests and operators can ask a running node.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Users online anywhere in the mesh, as `USER_LIST` would say.
    pub online: Vec<String>,
    /// Servers with a live link.
    pub linked: Vec<String>,
    /// Connections dropped because their queue was full.
    pub slow_disconnects: u64,
    /// Frames in custody (at the master, the offline mailbox included).
    pub custody: usize,
    /// Mailbox frames dropped for age since start.
    pub expired: u64,
    /// Frames waiting for users online nowhere (the master's mailbox).
    pub mailbox: usize,
    /// Custody frames the next hop acknowledged before they were written.
    pub unwritten: u64,
    /// Window slots taken on every hop: frames sent and not yet
    /// acknowledged (0 once everything sent was acknowledged).
    pub in_flight: usize,
    /// Content refused after a previous hop handed it on: set aside
    /// (acknowledged to that hop, its sender told) instead of resent.
    pub dead_letters: u64,
    /// Payload bytes in custody (bounded by `--custody-max-bytes`), and of
    /// those, bytes in memory (the rest are on disk only).
    pub custody_bytes: usize,
    pub custody_resident_bytes: usize,
    pub custody_max_bytes: usize,
    /// This node's id, and whether it is the master.
    pub node_id: String,
    pub master: bool,
    /// Users connected to this node itself (`online` is the whole mesh's).
    pub users_here: usize,
    /// A local holding presence on demand: `online` lists the users here
    /// and those its users addressed, not the whole mesh.
    pub presence_on_demand: bool,
    /// The live links, by server id.
    pub links: Vec<LinkStatus>,
    /// Payload bytes waiting for users online nowhere (master).
    pub mailbox_bytes: usize,
    /// The fullest user queue, as (frames, bytes), each the largest of its
    /// kind: held to `limits.max_frames` and `limits.max_bytes`.
    pub fullest_user: (usize, usize),
    /// The fullest sender, likewise (`limits.max_sender_*`).
    pub fullest_sender: (usize, usize),
    /// The quotas this node runs with.
    pub limits: super::MailboxLimits,
}

/// Asks the hub for its [`Status`]; None if it does not answer `within`
/// (it is gone, or too busy to be of use to the one asking).
pub(crate) async fn ask_status(hub: &mpsc::Sender<HubEvent>, within: Duration) -> Option<Status> {
    tokio::time::timeout(within, async {
        let (tx, rx) = oneshot::channel();
        hub.send(HubEvent::Status(tx)).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// Store writes queued before user frames are held back.
const WRITE_BACKLOG: usize = 20_000;
/// How often a throttled hub looks at the store again.
const THROTTLE_PAUSE: Duration = Duration::from_millis(2);
/// How often the hub looks at the queues of links owed more (`owed.rs`)
/// when nothing else wakes it.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// Runs the hub until told to stop, then flushes the store.
pub(crate) async fn run(
    router: Router,
    writer: Writer,
    mut rx: mpsc::Receiver<HubEvent>,
    mut users: mpsc::Receiver<HubEvent>,
    dials: mpsc::UnboundedSender<super::router::DialAsk>,
) {
    let mut hub = Hub {
        dials,
        router,
        writer,
        conns: HashMap::new(),
        slow_disconnects: 0,
        timers: Timers::default(),
        closing: None,
        owed: HashSet::new(),
    };
    loop {
        // Links owed more than they were sent get it once their queue has
        // drained, whatever woke the hub.
        hub.feed_drained();
        // Receipts wait for a quiet moment, so that under load one frame
        // carries many. Checked before every wait, whatever the last event
        // was (an event handled without the router must not leave them held).
        if rx.is_empty() && users.is_empty() && hub.router.has_pending_receipts() {
            hub.step(Input::Idle);
        }
        // Links, acks and timers first: they keep frames moving out. User
        // frames only bring more in.
        // When the store falls behind, new content from users waits (in
        // their sockets) instead of piling up in memory.
        let throttled = hub.writer.backlog() > WRITE_BACKLOG;
        let event = tokio::select! {
            biased;
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            fired = hub.timers.expired() => {
                for req_id in fired {
                    hub.step(Input::Timeout(req_id));
                }
                continue;
            }
            Some(e) = users.recv(), if !throttled => e,
            () = tokio::time::sleep(THROTTLE_PAUSE), if throttled => continue,
            () = tokio::time::sleep(DRAIN_POLL), if !hub.owed.is_empty() => continue,
        };
        if let HubEvent::Stop = event {
            break;
        }
        hub.handle(event);
    }
    hub.writer.flush().await;
}

/// What the hub task owns.
struct Hub {
    router: Router,
    writer: Writer,
    /// The connections' queues, by connection.
    conns: HashMap<ConnId, super::conn::SendQueue>,
    slow_disconnects: u64,
    timers: Timers,
    /// Set at shutdown: answered once no connection is left.
    closing: Option<oneshot::Sender<()>>,
    /// Servers to dial, to the announced-peer dialer (`dial.rs`).
    dials: mpsc::UnboundedSender<super::router::DialAsk>,
    /// Links owed more than they were sent, to tell the router when their
    /// queue has drained (`Output::WhenDrained`).
    owed: HashSet<ConnId>,
}

impl Hub {
    fn handle(&mut self, event: HubEvent) {
        match event {
            HubEvent::Register(conn, queue) => {
                if self.closing.is_some() {
                    // A redial during shutdown: closed at once.
                    let _ = queue.try_send(ConnCmd::Close);
                }
                self.conns.insert(conn, queue);
            }
            HubEvent::Unregister(conn) => {
                self.conns.remove(&conn);
                self.answer_when_closed();
            }
            HubEvent::Status(reply) => {
                let _ = reply.send(self.status());
            }
            HubEvent::Input(input) => {
                if let Input::LinkHello(_) = *input {
                    reread_admitted(&mut self.router);
                }
                self.step(*input);
            }
            HubEvent::Persisted(outcome) => self.persisted(*outcome),
            HubEvent::Shutdown(done) => {
                self.step(Input::Shutdown);
                // Each connection ends once its goodbyes are sent; one
                // whose queue is full is dropped (that ends it too).
                self.conns
                    .retain(|_, queue| queue.try_send(ConnCmd::Close).is_ok());
                self.closing = Some(done);
                self.answer_when_closed();
            }
            // `run` stops on it before it gets here.
            HubEvent::Stop => {}
        }
    }

    /// At shutdown, tells the node once no connection is left.
    fn answer_when_closed(&mut self) {
        if self.conns.is_empty()
            && let Some(done) = self.closing.take()
        {
            let _ = done.send(());
        }
    }

    /// Tells the router which links owed more have drained to
    /// [`super::conn::LINK_LOW_WATER`] frames other than content (or are
    /// gone): with custody's window of 4,096 and a chunk of at most 1,024
    /// frames, the queue stays within its 8,192.
    fn feed_drained(&mut self) {
        if self.owed.is_empty() {
            return;
        }
        let ready: Vec<ConnId> = self
            .owed
            .iter()
            .copied()
            .filter(|conn| {
                self.conns
                    .get(conn)
                    .is_none_or(|q| q.others_queued() <= super::conn::LINK_LOW_WATER)
            })
            .collect();
        for conn in ready {
            self.owed.remove(&conn);
            if self.conns.contains_key(&conn) {
                self.step(Input::Drained(conn));
            }
        }
    }

    /// Steps the router and carries out what it says.
    fn step(&mut self, input: Input) {
        let outputs = self.router.step(now_ms(), input);
        self.carry_out(outputs);
    }

    /// What the store did: acks to send; the router forgets what is not on
    /// disk and answers its senders `STORAGE` instead of the ack.
    fn persisted(&mut self, outcome: Outcome) {
        send_acks(&self.conns, outcome.acks);
        if let Some(failure) = outcome.failure {
            self.step(Input::StoreFailed(failure));
        }
        if !outcome.written.is_empty() {
            self.step(Input::Stored(outcome.written));
        }
        for rows in outcome.rows {
            self.step(Input::RowsRead(rows));
        }
        if !outcome.bodies.is_empty() || !outcome.unread.is_empty() {
            self.step(Input::BodiesRead {
                bodies: outcome.bodies,
                unread: outcome.unread,
            });
        }
    }

    fn status(&self) -> Status {
        let router = &self.router;
        let mut linked = router.linked();
        linked.sort();
        let (custody, expired) = router.custody_stats();
        let (mailbox, mailbox_bytes) = router.mailbox_len();
        let (fullest_user, fullest_sender) = router.fullest();
        let (node_id, master) = router.me();
        let (custody_bytes, custody_resident_bytes, custody_max_bytes) = router.custody_bytes();
        Status {
            online: router.online(),
            linked,
            slow_disconnects: self.slow_disconnects,
            custody,
            expired,
            mailbox,
            unwritten: self.writer.skipped(),
            in_flight: router.in_flight(),
            dead_letters: router.dead_letters(),
            custody_bytes,
            custody_resident_bytes,
            custody_max_bytes,
            node_id: node_id.to_owned(),
            master,
            users_here: router.users_here(),
            presence_on_demand: router.presence_on_demand(),
            links: router.link_status(),
            mailbox_bytes,
            fullest_user,
            fullest_sender,
            limits: router.limits(),
        }
    }

    /// Carries out the router's actions.
    fn carry_out(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send(conn, frame) => {
                    let Some(queue) = self.conns.get(&conn) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) =
                        queue.try_send(ConnCmd::Frame(Box::new(frame)))
                    {
                        // Dropping the queue ends the connection task, which
                        // reports the close like any other. (At shutdown a
                        // closing connection takes nothing more: not slow.)
                        if self.closing.is_none() {
                            tracing::warn!(conn, "send queue full: disconnecting the slow peer");
                            self.slow_disconnects += 1;
                        }
                        self.conns.remove(&conn);
                    }
                }
                Output::Close(conn) => {
                    if let Some(queue) = self.conns.get(&conn)
                        && queue.try_send(ConnCmd::Close).is_err()
                    {
                        self.conns.remove(&conn);
                    }
                }
                Output::Persist(op) => self.writer.write(op),
                Output::LoadBodies(seqs) => self.writer.load(seqs),
                Output::LoadRows(ask) => self.writer.rows(ask),
                Output::AckAfterPersist { conn, to, msg_id } => self.writer.ack(conn, to, msg_id),
                Output::Timer { req_id, after } => self.timers.arm(req_id, after),
                Output::Dial(peer) => {
                    let _ = self.dials.send(DialAsk::Dial(peer));
                }
                Output::Undial(server) => {
                    let _ = self.dials.send(DialAsk::Stop(server));
                }
                Output::WhenDrained(conn) => {
                    self.owed.insert(conn);
                }
            }
        }
        self.answer_when_closed();
    }
}

/// Reads the `--admit` file again, so a server listed since the start can
/// link without a restart; a file that became unreadable keeps the last list.
/// Link hellos are rare, and this one is the size of a few lines.
fn reread_admitted(router: &mut Router) {
    let Some(path) = router.admit_file() else {
        return;
    };
    match super::policy::AdmitList::load(path) {
        Ok(list) => router.set_admitted(list),
        Err(e) => tracing::error!(error = %e, "keeping the last admit list"),
    }
}

/// Sends one batched `ACK` per connection.
fn send_acks(conns: &HashMap<ConnId, super::conn::SendQueue>, acks: Vec<PendingAck>) {
    let mut by_conn: HashMap<ConnId, (String, Vec<String>)> = HashMap::new();
    for PendingAck { conn, to, msg_id } in acks {
        by_conn
            .entry(conn)
            .or_insert_with(|| (to, Vec::new()))
            .1
            .push(msg_id);
    }
    for (conn, (to, msg_ids)) in by_conn {
        let Some(queue) = conns.get(&conn) else {
            continue;
        };
        let ack = Ack {
            msg_ids,
            extra: Default::default(),
        };
        let frame = Outgoing::new(to, Message::Ack(ack));
        if queue.try_send(ConnCmd::Frame(Box::new(frame))).is_err() {
            tracing::warn!(conn, "could not queue an ACK; the peer will resend");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::conn::{QueueRx, send_queue};
    use crate::node::router::RouterConfig;
    use crate::node::state::Snapshot;

    const WAIT: Duration = Duration::from_secs(5);

    /// A hub over an empty master router and a fresh store.
    fn start() -> (
        tempfile::TempDir,
        mpsc::Sender<HubEvent>,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("n.sqlite");
        let pool = crate::store::open(&db, crate::store::Schema::Node).unwrap();
        let cfg = RouterConfig {
            me: crate::wire::ids::new_master_id(),
            master: true,
            allow_legacy: false,
            pubkey: "k".into(),
            host: "127.0.0.1".into(),
            port: 1,
            url: String::new(),
            limits: Default::default(),
            max_group_members: 16,
            max_file_size: 1 << 20,
            admission: Default::default(),
            presence_cache: 0,
        };
        let router = Router::new(cfg, Snapshot::default());
        let (tx, rx) = mpsc::channel(16);
        let (_users_tx, users_rx) = mpsc::channel(16);
        let acks = tx.clone();
        let health = std::sync::Arc::new(crate::node::health::Health::new(&db, true));
        let writer = Writer::start(
            pool,
            Box::new(move |o| {
                let _ = acks.blocking_send(HubEvent::Persisted(Box::new(o)));
            }),
            health,
        )
        .unwrap();
        let (dials, _) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(router, writer, rx, users_rx, dials));
        (dir, tx, task)
    }

    async fn next(queue: &mut QueueRx) -> Option<ConnCmd> {
        tokio::time::timeout(WAIT, queue.recv()).await.unwrap()
    }

    #[tokio::test]
    async fn shutdown_closes_every_connection_and_answers_when_none_is_left() {
        let (_dir, hub, task) = start();
        let (q1, mut r1) = send_queue(8, None);
        hub.send(HubEvent::Register(1, q1)).await.unwrap();
        let (done, mut closed) = oneshot::channel();
        hub.send(HubEvent::Shutdown(done)).await.unwrap();
        assert!(matches!(next(&mut r1).await, Some(ConnCmd::Close)));
        // A connection that registers meanwhile (a redial) is closed at once.
        let (q2, mut r2) = send_queue(8, None);
        hub.send(HubEvent::Register(2, q2)).await.unwrap();
        assert!(matches!(next(&mut r2).await, Some(ConnCmd::Close)));
        hub.send(HubEvent::Unregister(1)).await.unwrap();
        // Not answered while connection 2 is open.
        assert!(ask_status(&hub, WAIT).await.is_some());
        assert!(closed.try_recv().is_err());
        hub.send(HubEvent::Unregister(2)).await.unwrap();
        tokio::time::timeout(WAIT, closed).await.unwrap().unwrap();
        hub.send(HubEvent::Stop).await.unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[test]
    fn a_queued_command_is_two_words() {
        // A connection's queue holds its commands in one buffer: a burst of
        // 1,024 frames takes 16 KiB while it waits, not 1,024 x an `Outgoing`.
        assert!(std::mem::size_of::<ConnCmd>() <= 16);
    }

    #[tokio::test]
    async fn a_hub_without_connections_answers_the_shutdown_at_once() {
        let (_dir, hub, task) = start();
        let (done, closed) = oneshot::channel();
        hub.send(HubEvent::Shutdown(done)).await.unwrap();
        tokio::time::timeout(WAIT, closed).await.unwrap().unwrap();
        hub.send(HubEvent::Stop).await.unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}
