//! The hub's jobs, done at once and in order: an input to a router, its
//! outputs carried out (frames to connections, rows to the store, timers),
//! the store's answers (acknowledgements, rows written, bodies read back),
//! and the clock that delivers frames and fires timers.

use std::collections::BTreeMap;

use serde_json::Map;

use super::super::{ConnId, Input, MailboxLimits, Output, StoreOp};
use super::{MAX_EVENTS, Mesh, Peer, Timer, adapt, net};
use crate::wire::messages::{Ack, Message};

impl Mesh {
    /// Opens a connection on `node` to `peer`.
    pub(super) fn open_conn(&mut self, node: &str, peer: Peer) -> ConnId {
        let node = self.node_mut(node);
        node.next_conn += 1;
        node.conns.insert(node.next_conn, peer);
        node.next_conn
    }

    /// A connection of `node` ended: its router hears `input` (once).
    pub(super) fn end_conn(&mut self, node: &str, conn: ConnId, input: Input) {
        if self.node_mut(node).conns.remove(&conn).is_some() {
            self.step(node, input);
        }
    }

    /// Feeds one input to a node's router and carries out what it says.
    pub(super) fn step(&mut self, name: &str, input: Input) {
        let now = self.now;
        let node = self.node_mut(name);
        if node.down {
            return;
        }
        let outputs = node.router.step(now, input);
        self.carry_out(name, outputs);
    }

    /// The hub's job: frames to connections, rows to the store, timers.
    pub(super) fn carry_out(&mut self, name: &str, outputs: Vec<Output>) {
        let (me, incarnation) = {
            let node = self.node_ref(name);
            (node.id.clone(), node.incarnation)
        };
        let mut ops = Vec::new();
        let mut acks = Vec::new();
        let mut loads = Vec::new();
        let mut rows = Vec::new();
        let mut drained = Vec::new();
        for output in outputs {
            match output {
                Output::Send(conn, out) => {
                    let env = adapt::envelope_of(out, &me, self.now);
                    self.send(name, conn, net::Item::Frame(env));
                }
                Output::Close(conn) => self.send(name, conn, net::Item::Close),
                Output::Persist(op) => ops.push(op),
                Output::Timer { req_id, after } => {
                    let at = self.now + after.as_millis() as i64;
                    let node = name.to_owned();
                    self.schedule(
                        at,
                        Timer::Timeout {
                            node,
                            incarnation,
                            req_id,
                        },
                    );
                }
                Output::AckAfterPersist { conn, to, msg_id } => acks.push((conn, to, msg_id)),
                Output::LoadBodies(seqs) => loads.extend(seqs),
                Output::Dial(peer) => self.dial_announced(name, &peer.server_id),
                Output::Undial(server) => self.undial_announced(name, &server),
                Output::LoadRows(ask) => rows.push(ask),
                // The simulated links have no queue bound: one drains as
                // soon as what was sent on it is handed to the network.
                Output::WhenDrained(conn) => drained.push(conn),
            }
        }
        self.commit(name, ops, acks, loads);
        for ask in rows {
            let input = adapt::rows_read(&self.node_ref(name).disk.custody, ask);
            self.step(name, input);
        }
        for conn in drained {
            self.step(name, Input::Drained(conn));
        }
    }

    /// The store writer's job: apply the rows, then send the acks that
    /// waited for them (one `ACK` per connection) and tell the router what
    /// is on disk; or, on a failing disk, report what was not written.
    pub(super) fn commit(
        &mut self,
        name: &str,
        ops: Vec<StoreOp>,
        acks: Vec<(ConnId, String, String)>,
        loads: Vec<u64>,
    ) {
        let now = self.now;
        let node = self.node_mut(name);
        let failing = node.failing;
        let (mut written, mut lost_rows, mut lost_pins) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                StoreOp::Custody(e) if failing => lost_rows.push(adapt::seq_of(&e)),
                StoreOp::PinUser(user, _) if failing => lost_pins.push(user),
                StoreOp::Custody(e) => {
                    written.push(adapt::seq_of(&e));
                    node.disk.apply(StoreOp::Custody(e), now);
                }
                // Other writes of a failed batch are retried until they
                // commit: here they commit at once.
                op => node.disk.apply(op, now),
            }
        }
        let me = node.id.clone();
        if failing {
            if !(lost_rows.is_empty() && lost_pins.is_empty() && acks.is_empty()) {
                self.step(name, adapt::store_failed(lost_rows, lost_pins, acks));
            }
        } else {
            let mut by_conn: BTreeMap<ConnId, (String, Vec<String>)> = BTreeMap::new();
            for (conn, to, msg_id) in acks {
                by_conn
                    .entry(conn)
                    .or_insert((to, Vec::new()))
                    .1
                    .push(msg_id);
            }
            for (conn, (to, msg_ids)) in by_conn {
                let ack = Message::Ack(Ack {
                    msg_ids,
                    extra: Map::new(),
                });
                let mut env = ack.into_envelope(&me, &to);
                env.ts = now;
                self.send(name, conn, net::Item::Frame(env));
            }
            if !written.is_empty() {
                self.step(name, Input::Stored(written.into()));
            }
        }
        if !loads.is_empty() {
            let input = adapt::bodies_read(&self.node_ref(name).disk.custody, &loads);
            self.step(name, input);
        }
    }

    /// Delivers frames until none is in flight (held links wait). Timers
    /// fire on the way if frames are still travelling when they are due.
    pub fn run(&mut self) {
        for _ in 0..MAX_EVENTS {
            if !self.frames_in_flight() {
                if self.quiet_moment() {
                    continue;
                }
                return;
            }
            self.next();
        }
        panic!("the mesh did not settle within {MAX_EVENTS} events");
    }

    /// Lets `ms` pass: everything due by then happens, in time order.
    pub fn advance(&mut self, ms: i64) {
        let until = self.now + ms;
        for _ in 0..MAX_EVENTS {
            if self.next_due().is_none_or(|due| due > until) {
                if self.quiet_moment() {
                    continue;
                }
                self.now = until;
                return;
            }
            self.next();
        }
        panic!("the mesh did not settle within {MAX_EVENTS} events");
    }

    /// Takes the next event in time order.
    pub(super) fn next(&mut self) {
        let Some(due) = self.next_due() else { return };
        if due > self.now && self.quiet_moment() {
            return;
        }
        self.now = self.now.max(due);
        let timer = self.timers.first_key_value().map(|(k, _)| *k);
        let frame = self.next_frame();
        match (timer, frame) {
            (Some(t), Some((f, _))) if t <= f => self.fire_timer(t),
            (_, Some((_, chan))) => self.arrive(chan),
            (Some(t), None) => self.fire_timer(t),
            (None, None) => {}
        }
    }

    pub(super) fn next_due(&self) -> Option<i64> {
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        let frame = self.next_frame().map(|((due, _), _)| due);
        timer.into_iter().chain(frame).min()
    }

    /// Before the clock moves: a hub with nothing queued sends the
    /// receipts it held back (`Input::Idle`). True if any did.
    pub(super) fn quiet_moment(&mut self) -> bool {
        let waiting: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.down && n.router.has_pending_receipts())
            .map(|(name, _)| name.clone())
            .collect();
        for name in &waiting {
            self.step(name, Input::Idle);
        }
        !waiting.is_empty()
    }

    pub(super) fn fire_timer(&mut self, key: (i64, u64)) {
        let Some(timer) = self.timers.remove(&key) else {
            return;
        };
        let current = |mesh: &Self, node: &str, inc: u64| {
            mesh.nodes
                .get(node)
                .is_some_and(|n| n.incarnation == inc && !n.down)
        };
        match timer {
            Timer::Timeout {
                node,
                incarnation,
                req_id,
            } if current(self, &node, incarnation) => self.step(&node, Input::Timeout(req_id)),
            Timer::Tick { node, incarnation } if current(self, &node, incarnation) => {
                self.note(|| format!("{node} ticks"));
                self.step(&node, Input::Tick);
                let every = tick_every(self.node_ref(&node).cfg.limits);
                self.schedule(self.now + every, Timer::Tick { node, incarnation });
            }
            Timer::Redial(wire) => self.redial(wire),
            _ => {}
        }
    }
}

/// How often a node ticks (as `node::tick` does).
pub(super) fn tick_every(limits: MailboxLimits) -> i64 {
    (limits.max_age_ms / 4).clamp(250, 60_000)
}
