//! The simulated network: links between nodes (dialed with the hello
//! exchange, closed, dialed again with backoff), users' connections, and
//! what a test does to them: hold, release, reorder and drop frames, cut
//! and heal links, restart nodes, fail a disk.

use std::collections::VecDeque;

use serde_json::Value;

use super::super::{ConnId, Input, LinkHelloIn, our_caps};
use super::{LINK_LATENCY_MS, Mesh, Peer, code_of};
use crate::crypto::PublicKey;
use crate::wire::canonical;
use crate::wire::messages::{Kind, Message, PeerHelloLink, Role};
use crate::wire::{Envelope, ErrorCode, ids};

/// A dialer's first wait before dialing again, and its longest (`dial.rs`).
const REDIAL_MIN_MS: i64 = 250;
const REDIAL_MAX_MS: i64 = 10_000;
/// A link that lived this long starts the backoff over.
const STABLE_MS: i64 = 30_000;

/// A link the test declared: `dialer` dials `acceptor`, again after a loss.
pub(super) struct Wire {
    pub dialer: String,
    pub acceptor: String,
    /// The acceptor is the dialer's master (`--master-url`).
    pub to_master: bool,
    /// Bumped at each dial: frames of an earlier connection are void.
    pub epoch: u64,
    /// Dialing or linked.
    pub up: bool,
    /// Each side's connection, once its router has the hello.
    pub dialer_conn: Option<ConnId>,
    pub acceptor_conn: Option<ConnId>,
    /// Cut by the test: no dial until it heals the link.
    pub blocked: bool,
    pub backoff: i64,
    /// When the last dial went out.
    pub since: i64,
    /// The code of the last `ERROR` that answered our hello.
    pub refused: Option<ErrorCode>,
    /// Dialed because the master announced the acceptor.
    pub announced: bool,
    /// The master withdrew the acceptor: no dial until it announces it again.
    pub retired: bool,
    /// Dials made, those that found the acceptor down included.
    pub dials: u64,
}

/// One direction of a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Chan {
    Link { wire: usize, from_dialer: bool },
    ToUser(String),
    FromUser(String),
}

/// Frames on their way in one direction, in order.
#[derive(Default)]
pub(super) struct Channel {
    pub queue: VecDeque<InFlight>,
    /// Held by the test: nothing arrives until it is released.
    pub held: bool,
    last_due: i64,
    /// Frame types whose next frame is lost on the way.
    pub drops: Vec<Kind>,
}

pub(super) struct InFlight {
    pub due: i64,
    pub seq: u64,
    /// Which connection it belongs to (a later one ignores it).
    pub tag: Tag,
    pub item: Item,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tag {
    Link(u64),
    User(String, ConnId),
}

/// What travels: a frame, or the end of the connection after the frames
/// queued before it.
pub(super) enum Item {
    Frame(Envelope),
    Close,
}

impl Mesh {
    /// True if a frame can arrive (held links do not count).
    pub(super) fn frames_in_flight(&self) -> bool {
        self.chans.values().any(|c| !c.held && !c.queue.is_empty())
    }

    /// The earliest frame that can arrive: its (time, order) and channel.
    pub(super) fn next_frame(&self) -> Option<((i64, u64), Chan)> {
        self.chans
            .iter()
            .filter(|(_, c)| !c.held)
            .filter_map(|(chan, c)| c.queue.front().map(|f| ((f.due, f.seq), chan.clone())))
            .min_by_key(|(key, _)| *key)
    }

    pub(super) fn enqueue(&mut self, chan: Chan, tag: Tag, item: Item, latency: i64) {
        if let (Item::Frame(env), Some(c)) = (&item, self.chans.get_mut(&chan))
            && let Some(at) = c.drops.iter().position(|k| k.name() == env.kind)
        {
            c.drops.remove(at);
            return;
        }
        let jitter = match latency {
            0 => 0,
            _ if self.jitter > 0 => (self.rng.next_u64() % (self.jitter as u64 + 1)) as i64,
            _ => 0,
        };
        self.seq += 1;
        let seq = self.seq;
        let c = self.chans.entry(chan).or_default();
        let due = (self.now + latency + jitter).max(c.last_due);
        c.last_due = due;
        c.queue.push_back(InFlight {
            due,
            seq,
            tag,
            item,
        });
    }

    /// Queues `item` on a node's connection, as the hub hands a frame to a
    /// connection's queue (nothing, for a connection that has ended).
    pub(super) fn send(&mut self, node: &str, conn: ConnId, item: Item) {
        let Some(peer) = self.node_ref(node).conns.get(&conn).cloned() else {
            return;
        };
        match peer {
            Peer::Wire(i) => {
                let w = &self.wires[i];
                if !w.up {
                    return;
                }
                let chan = Chan::Link {
                    wire: i,
                    from_dialer: w.dialer == node,
                };
                let tag = Tag::Link(w.epoch);
                self.enqueue(chan, tag, item, LINK_LATENCY_MS);
            }
            Peer::User(handle) => {
                let tag = Tag::User(node.to_owned(), conn);
                self.enqueue(Chan::ToUser(handle), tag, item, 0);
            }
        }
    }

    /// Queues a frame from a user on its connection.
    pub(super) fn user_sends(&mut self, handle: &str, env: Envelope) {
        let Some((node, conn)) = self.user_ref(handle).at.clone() else {
            panic!("{handle} is not connected");
        };
        let tag = Tag::User(node, conn);
        self.enqueue(Chan::FromUser(handle.to_owned()), tag, Item::Frame(env), 0);
    }

    /// The next frame on `chan` arrives.
    pub(super) fn arrive(&mut self, chan: Chan) {
        let Some(f) = self.chans.get_mut(&chan).and_then(|c| c.queue.pop_front()) else {
            return;
        };
        match (chan, f.tag, f.item) {
            (Chan::Link { wire, from_dialer }, Tag::Link(epoch), item) => {
                if self.wires[wire].epoch != epoch || !self.wires[wire].up {
                    return;
                }
                match item {
                    Item::Frame(env) => self.link_frame(wire, from_dialer, env),
                    Item::Close => self.close_wire(wire),
                }
            }
            (Chan::ToUser(handle), Tag::User(node, conn), item) => {
                if self.user_ref(&handle).at != Some((node.clone(), conn)) {
                    return;
                }
                match item {
                    Item::Frame(env) => {
                        self.note(|| format!("{node} -> {handle}: {} {}", env.kind, brief(&env)));
                        self.user_receives(&handle, env)
                    }
                    Item::Close => {
                        self.user_mut(&handle).at = None;
                        self.end_conn(&node, conn, Input::UserClosed(conn));
                    }
                }
            }
            (Chan::FromUser(handle), Tag::User(node, conn), Item::Frame(mut env)) => {
                if self.user_ref(&handle).at != Some((node.clone(), conn)) {
                    return;
                }
                self.note(|| format!("{handle} -> {node}: {} {}", env.kind, brief(&env)));
                let payload = std::mem::take(&mut env.payload);
                let msg = Message::from_payload(&env.kind, payload)
                    .unwrap_or_else(|e| panic!("{handle} sent a frame that does not parse: {e}"));
                self.step(&node, Input::UserFrame { conn, env, msg });
            }
            _ => {}
        }
    }

    /// A frame on a link reaches the other end: the hello exchange first,
    /// then what the connection hands its router once checked.
    fn link_frame(&mut self, wire: usize, from_dialer: bool, mut env: Envelope) {
        let w = &self.wires[wire];
        let (from, to, conn) = if from_dialer {
            (w.dialer.clone(), w.acceptor.clone(), w.acceptor_conn)
        } else {
            (w.acceptor.clone(), w.dialer.clone(), w.dialer_conn)
        };
        let Some(conn) = conn else {
            return self.hello_arrives(wire, from_dialer, env);
        };
        // As `conn.rs`: only the linked server's own frames, no heartbeats.
        if env.from != self.id(&from) || env.kind == Kind::Heartbeat.name() {
            return;
        }
        let Ok(msg) = Message::from_payload(&env.kind, env.payload.clone()) else {
            return;
        };
        self.note(|| format!("{from} -> {to}: {} {}", env.kind, brief(&env)));
        self.carried.push((from, to.clone(), env.clone()));
        env.payload.clear();
        self.step(&to, Input::LinkFrame { conn, env, msg });
    }

    /// The first frame each way: the dialer's hello, then the acceptor's
    /// answer (its hello, or an `ERROR` before it closes).
    fn hello_arrives(&mut self, wire: usize, from_dialer: bool, env: Envelope) {
        let hello = match Message::from_envelope(&env) {
            Ok(Message::PeerHelloLink(h)) if ids::check_server(&env.from).is_ok() => h,
            Ok(Message::Error(e)) if !from_dialer => {
                self.wires[wire].refused = Some(code_of(&e));
                return self.close_wire(wire);
            }
            _ => return self.close_wire(wire),
        };
        let Ok(key) = PublicKey::from_b64(&hello.pubkey) else {
            return self.close_wire(wire);
        };
        let w = &self.wires[wire];
        let (node, dialed, dialed_master) = if from_dialer {
            (w.acceptor.clone(), false, false)
        } else {
            (w.dialer.clone(), true, w.to_master)
        };
        let conn = self.open_conn(&node, Peer::Wire(wire));
        let w = &mut self.wires[wire];
        if from_dialer {
            w.acceptor_conn = Some(conn);
        } else {
            w.dialer_conn = Some(conn);
            w.refused = None;
        }
        let hello = LinkHelloIn::new(conn, &env, hello, key, dialed, dialed_master, None);
        self.step(&node, Input::LinkHello(hello));
    }

    /// Declares a link and dials it.
    pub(super) fn add_link(&mut self, dialer: &str, acceptor: &str) {
        let to_master = self.node_ref(acceptor).cfg.master;
        self.wires.push(Wire {
            dialer: dialer.to_owned(),
            acceptor: acceptor.to_owned(),
            to_master,
            epoch: 0,
            up: false,
            dialer_conn: None,
            acceptor_conn: None,
            blocked: false,
            backoff: REDIAL_MIN_MS,
            since: self.now,
            refused: None,
            announced: false,
            retired: false,
            dials: 0,
        });
        self.dial(self.wires.len() - 1);
    }

    /// The dialer connects and says its hello.
    pub(super) fn dial(&mut self, wire: usize) {
        let w = &self.wires[wire];
        if w.up || w.retired {
            return;
        }
        let (dialer_down, acceptor_down) = (
            self.node_ref(&w.dialer).down,
            self.node_ref(&w.acceptor).down,
        );
        if dialer_down || acceptor_down {
            // Nobody dials from a stopped node; a dial to one is refused:
            // dialed again after the backoff.
            let w = &mut self.wires[wire];
            let backoff = w.backoff;
            if !dialer_down {
                w.dials += 1;
                w.backoff = (w.backoff * 2).min(REDIAL_MAX_MS);
            }
            self.schedule(self.now + backoff, super::Timer::Redial(wire));
            return;
        }
        let w = &mut self.wires[wire];
        w.dials += 1;
        w.epoch += 1;
        w.up = true;
        w.since = self.now;
        let tag = Tag::Link(w.epoch);
        let node = self.node_ref(&self.wires[wire].dialer);
        let hello = Message::PeerHelloLink(PeerHelloLink {
            host: node.cfg.host.clone(),
            port: node.cfg.port,
            pubkey: node.cfg.pubkey.clone(),
            role: if node.cfg.master {
                Role::Master
            } else {
                Role::Local
            },
            caps: Some(our_caps(false, node.cfg.lists_lookup())),
            session: None,
            extra: super::super::url_field(&node.cfg.url),
        });
        let mut env = hello.into_envelope(&node.id, ids::TO_SERVER);
        env.ts = self.now;
        // Signed for real: the master announces it, and locals check it.
        env.sig = super::server_key(&node.cfg.pubkey)
            .sign_b64(canonical::map_to_string(&env.payload).unwrap().as_bytes())
            .unwrap();
        let chan = Chan::Link {
            wire,
            from_dialer: true,
        };
        self.enqueue(chan, tag, Item::Frame(env), LINK_LATENCY_MS);
    }

    /// A link ends: what was on its way is lost, both routers hear it, and
    /// the dialer dials again after its backoff (unless the test cut it).
    pub(super) fn close_wire(&mut self, wire: usize) {
        let w = &self.wires[wire];
        if !w.up {
            return;
        }
        self.note(|| format!("link {} - {} closed", w.dialer, w.acceptor));
        let w = &mut self.wires[wire];
        w.up = false;
        if self.now - w.since >= STABLE_MS {
            w.backoff = REDIAL_MIN_MS;
        }
        let sides = [
            (w.dialer.clone(), w.dialer_conn.take()),
            (w.acceptor.clone(), w.acceptor_conn.take()),
        ];
        let (blocked, backoff) = (w.blocked, w.backoff);
        w.backoff = (w.backoff * 2).min(REDIAL_MAX_MS);
        for from_dialer in [true, false] {
            if let Some(c) = self.chans.get_mut(&Chan::Link { wire, from_dialer }) {
                c.queue.clear();
                c.held = false;
            }
        }
        for (node, conn) in sides {
            if let Some(conn) = conn {
                self.end_conn(&node, conn, Input::LinkClosed(conn));
            }
        }
        if !blocked {
            self.schedule(self.now + backoff, super::Timer::Redial(wire));
        }
    }

    /// A router asked to dial the server `id` (announced by its master):
    /// the link is declared and dialed, unless the two have one already.
    pub(super) fn dial_announced(&mut self, node: &str, id: &str) {
        if !self.discover {
            return;
        }
        let Some(target) = self
            .nodes
            .iter()
            .find(|(_, n)| n.id == id)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        let known = self.wires.iter().position(|w| {
            (w.dialer == node && w.acceptor == target) || (w.dialer == target && w.acceptor == node)
        });
        match known {
            None => {
                self.note(|| format!("{node} dials the announced {target}"));
                self.add_link(node, &target);
                let last = self.wires.len() - 1;
                self.wires[last].announced = true;
            }
            // Announced again after a withdrawal: dialed again.
            Some(wire) if self.wires[wire].retired && self.wires[wire].dialer == node => {
                self.wires[wire].retired = false;
                self.dial(wire);
            }
            Some(_) => {}
        }
    }

    /// A router's master withdrew the server `id`: the dialer it started
    /// for it dials no more (a live link stays until it drops).
    pub(super) fn undial_announced(&mut self, node: &str, id: &str) {
        let found = self.wires.iter().position(|w| {
            w.announced
                && w.dialer == node
                && self.nodes.get(&w.acceptor).is_some_and(|n| n.id == id)
        });
        if let Some(wire) = found {
            self.note(|| format!("{node} stops dialing the withdrawn {id}"));
            self.wires[wire].retired = true;
        }
    }

    pub(super) fn redial(&mut self, wire: usize) {
        if !self.wires[wire].blocked {
            self.dial(wire);
        }
    }
}

/// A frame's payload, cut short for the trace.
fn brief(env: &Envelope) -> String {
    let text = Value::Object(env.payload.clone()).to_string();
    text.chars().take(160).collect()
}
