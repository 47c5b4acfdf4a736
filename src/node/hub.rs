//! The hub: the one task that owns the router. It feeds the router the
//! connections' events in order, hands its frames to the connections'
//! bounded queues (a full queue disconnects that peer, never blocks the
//! others), passes its writes to the store thread and arms its timers.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use super::conn::ConnCmd;
use super::router::{ConnId, Input, Outgoing, Output, Router};
use super::state::{Outcome, Writer};
use crate::wire::messages::{Ack, Message};
use crate::wire::now_ms;

/// Events the hub consumes.
pub(crate) enum HubEvent {
    /// A connection's queue, before its hello is delivered.
    Register(ConnId, mpsc::Sender<ConnCmd>),
    Unregister(ConnId),
    Input(Box<Input>),
    Status(oneshot::Sender<Status>),
    /// What the store committed (acks to send) or could not write.
    Persisted(Outcome),
    /// Flush the store and stop (every connection has ended).
    Stop,
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

/// One live link, as the metrics name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub server: String,
    /// `master`, `local`, or `unknown` for a server not pinned yet.
    pub role: &'static str,
    /// We dialed it (else it dialed us).
    pub dialed: bool,
}

/// Store writes queued before user frames are held back.
const WRITE_BACKLOG: usize = 20_000;
/// How often a throttled hub looks at the store again.
const THROTTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs the hub until told to stop.
pub(crate) async fn run(
    mut router: Router,
    writer: Writer,
    tx: mpsc::Sender<HubEvent>,
    mut rx: mpsc::Receiver<HubEvent>,
    mut users: mpsc::Receiver<HubEvent>,
) {
    let mut conns: HashMap<ConnId, mpsc::Sender<ConnCmd>> = HashMap::new();
    let mut slow_disconnects = 0u64;
    loop {
        // Receipts wait for a quiet moment, so that under load one frame
        // carries many. Checked before every wait, whatever the last event
        // was (an event handled without the router must not leave them held).
        if rx.is_empty() && users.is_empty() && router.has_pending_receipts() {
            let outputs = router.step(now_ms(), Input::Idle);
            carry_out(outputs, &mut conns, &writer, &tx, &mut slow_disconnects);
        }
        // Links, acks and timers first: they keep frames moving out. User
        // frames only bring more in.
        // When the store falls behind, new content from users waits (in
        // their sockets) instead of piling up in memory.
        let throttled = writer.backlog() > WRITE_BACKLOG;
        let event = tokio::select! {
            biased;
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            Some(e) = users.recv(), if !throttled => e,
            () = tokio::time::sleep(THROTTLE_PAUSE), if throttled => continue,
        };
        let input = match event {
            HubEvent::Register(conn, queue) => {
                conns.insert(conn, queue);
                continue;
            }
            HubEvent::Unregister(conn) => {
                conns.remove(&conn);
                continue;
            }
            HubEvent::Status(reply) => {
                let mut linked = router.linked();
                linked.sort();
                let (custody, expired) = router.custody_stats();
                let (mailbox, mailbox_bytes) = router.mailbox_len();
                let (fullest_user, fullest_sender) = router.fullest();
                let (node_id, master) = router.me();
                let (custody_bytes, custody_resident_bytes, custody_max_bytes) =
                    router.custody_bytes();
                let _ = reply.send(Status {
                    online: router.online(),
                    linked,
                    slow_disconnects,
                    custody,
                    expired,
                    mailbox,
                    unwritten: writer.skipped(),
                    in_flight: router.in_flight(),
                    dead_letters: router.dead_letters(),
                    custody_bytes,
                    custody_resident_bytes,
                    custody_max_bytes,
                    node_id: node_id.to_owned(),
                    master,
                    users_here: router.users_here(),
                    links: router.link_status(),
                    mailbox_bytes,
                    fullest_user,
                    fullest_sender,
                    limits: router.limits(),
                });
                continue;
            }
            HubEvent::Input(input) => {
                if let Input::LinkHello(_) = *input {
                    reread_admitted(&mut router);
                }
                *input
            }
            HubEvent::Persisted(outcome) => {
                send_acks(&conns, outcome.acks);
                let mut inputs = Vec::new();
                // The router forgets what is not on disk and answers its
                // senders `STORAGE` instead of the ack.
                if let Some(failure) = outcome.failure {
                    inputs.push(Input::StoreFailed(failure));
                }
                if !outcome.written.is_empty() {
                    inputs.push(Input::Stored(outcome.written));
                }
                if !outcome.bodies.is_empty() || !outcome.unread.is_empty() {
                    inputs.push(Input::BodiesRead {
                        bodies: outcome.bodies,
                        unread: outcome.unread,
                    });
                }
                for input in inputs {
                    let outputs = router.step(now_ms(), input);
                    carry_out(outputs, &mut conns, &writer, &tx, &mut slow_disconnects);
                }
                continue;
            }
            HubEvent::Stop => break,
        };
        let outputs = router.step(now_ms(), input);
        carry_out(outputs, &mut conns, &writer, &tx, &mut slow_disconnects);
    }
    writer.flush().await;
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
fn send_acks(conns: &HashMap<ConnId, mpsc::Sender<ConnCmd>>, acks: Vec<(ConnId, String, String)>) {
    let mut by_conn: HashMap<ConnId, (String, Vec<String>)> = HashMap::new();
    for (conn, to, id) in acks {
        by_conn
            .entry(conn)
            .or_insert_with(|| (to, Vec::new()))
            .1
            .push(id);
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
        if queue.try_send(ConnCmd::Frame(frame)).is_err() {
            tracing::warn!(conn, "could not queue an ACK; the peer will resend");
        }
    }
}

/// Carries out the router's actions.
fn carry_out(
    outputs: Vec<Output>,
    conns: &mut HashMap<ConnId, mpsc::Sender<ConnCmd>>,
    writer: &Writer,
    tx: &mpsc::Sender<HubEvent>,
    slow_disconnects: &mut u64,
) {
    for output in outputs {
        match output {
            Output::Send(conn, frame) => {
                let Some(queue) = conns.get(&conn) else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    queue.try_send(ConnCmd::Frame(frame))
                {
                    // Dropping the queue ends the connection task, which
                    // reports the close like any other.
                    tracing::warn!(conn, "send queue full: disconnecting the slow peer");
                    *slow_disconnects += 1;
                    conns.remove(&conn);
                }
            }
            Output::Close(conn) => {
                if let Some(queue) = conns.get(&conn)
                    && queue.try_send(ConnCmd::Close).is_err()
                {
                    conns.remove(&conn);
                }
            }
            Output::Persist(op) => writer.write(op),
            Output::LoadBodies(seqs) => writer.load(seqs),
            Output::AckAfterPersist { conn, to, msg_id } => writer.ack(conn, to, msg_id),
            Output::Timer { req_id, after } => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx
                        .send(HubEvent::Input(Box::new(Input::Timeout(req_id))))
                        .await;
                });
            }
        }
    }
}
