//! What a test does to a mesh besides its users' actions: hold, release,
//! reorder, drop and forge frames on links, cut and heal links, make a disk
//! fail, and restart or crash nodes.

use serde_json::{Map, Value};

use super::super::Input;
use super::net::{Chan, InFlight, Item, Tag};
use super::{LINK_LATENCY_MS, Mesh, kind_named};
use crate::wire::messages::Kind;
use crate::wire::{Envelope, ErrorCode};

impl Mesh {
    /// The link between two nodes (either dialed the other).
    fn wire_between(&self, a: &str, b: &str) -> usize {
        self.wires
            .iter()
            .position(|w| (w.dialer == a && w.acceptor == b) || (w.dialer == b && w.acceptor == a))
            .unwrap_or_else(|| panic!("no link between {a} and {b}"))
    }

    fn link_chan(&self, from: &str, to: &str) -> Chan {
        let wire = self.wire_between(from, to);
        Chan::Link {
            wire,
            from_dialer: self.wires[wire].dialer == from,
        }
    }

    /// Frames from `from` to `to` wait (a slow link) until [`Mesh::release`].
    pub fn hold(&mut self, from: &str, to: &str) {
        let chan = self.link_chan(from, to);
        self.chans.entry(chan).or_default().held = true;
    }

    /// Held frames from `from` to `to` go on, in the order they are queued.
    pub fn release(&mut self, from: &str, to: &str) {
        let chan = self.link_chan(from, to);
        self.chans.entry(chan).or_default().held = false;
    }

    /// Frames from `from` to `to` still on their way, by type.
    pub fn in_flight(&self, from: &str, to: &str) -> Vec<Kind> {
        let chan = self.link_chan(from, to);
        self.chans.get(&chan).map_or_else(Vec::new, |c| {
            c.queue
                .iter()
                .filter_map(|f| match &f.item {
                    Item::Frame(env) => Some(kind_named(&env.kind)),
                    Item::Close => None,
                })
                .collect()
        })
    }

    /// The frames on their way from `from` to `to` arrive in reverse order.
    pub fn reverse(&mut self, from: &str, to: &str) {
        let chan = self.link_chan(from, to);
        if let Some(c) = self.chans.get_mut(&chan) {
            let times: Vec<(i64, u64)> = c.queue.iter().map(|f| (f.due, f.seq)).collect();
            let mut frames: Vec<InFlight> = c.queue.drain(..).collect();
            frames.reverse();
            for (mut f, (due, seq)) in frames.into_iter().zip(times) {
                (f.due, f.seq) = (due, seq);
                c.queue.push_back(f);
            }
        }
    }

    /// `from` sends a frame of its own making to `to` on their link, as a
    /// server running other software could (its router is not asked).
    pub fn inject(
        &mut self,
        from: &str,
        to: &str,
        kind: Kind,
        to_id: &str,
        payload: Map<String, Value>,
    ) {
        let chan = self.link_chan(from, to);
        let Chan::Link { wire, .. } = chan else {
            unreachable!()
        };
        let mut env = Envelope::new(kind.name(), &self.id(from), to_id, payload);
        env.ts = self.now;
        let tag = Tag::Link(self.wires[wire].epoch);
        self.enqueue(chan, tag, Item::Frame(env), LINK_LATENCY_MS);
    }

    /// The next `kind` frame `from` sends to `to` is lost (the link stays up).
    pub fn drop_next(&mut self, from: &str, to: &str, kind: Kind) {
        let chan = self.link_chan(from, to);
        self.chans.entry(chan).or_default().drops.push(kind);
    }

    /// The link between `a` and `b` breaks, and stays broken until healed.
    pub fn cut(&mut self, a: &str, b: &str) {
        let wire = self.wire_between(a, b);
        self.wires[wire].blocked = true;
        self.close_wire(wire);
    }

    /// A cut link can form again: its dialer dials at once.
    pub fn heal(&mut self, a: &str, b: &str) {
        let wire = self.wire_between(a, b);
        self.wires[wire].blocked = false;
        self.dial(wire);
    }

    /// True if `a`'s router has a live link to `b`.
    pub fn linked(&self, a: &str, b: &str) -> bool {
        self.router(a).linked().contains(&self.id(b))
    }

    /// The code of the last `ERROR` that refused `dialer`'s hello to `acceptor`.
    pub fn refused(&self, dialer: &str, acceptor: &str) -> Option<ErrorCode> {
        self.wires[self.wire_between(dialer, acceptor)].refused
    }

    /// `node`'s disk fails every write from now on (or works again).
    pub fn fail_store(&mut self, node: &str, failing: bool) {
        self.node_mut(node).failing = failing;
    }

    /// Stops a node as `Node::shutdown` does (peers hear its users are
    /// gone, then every connection closes) and starts it again from the
    /// rows on its disk. Its users must connect again; links are dialed
    /// again after the dialer's backoff.
    pub fn restart(&mut self, node: &str) {
        self.step(node, Input::Shutdown);
        self.run();
        self.stop(node);
        self.boot(node);
    }

    /// Kills a node (what it was sending is lost) and starts it again from
    /// the rows on its disk.
    pub fn crash(&mut self, node: &str) {
        self.stop(node);
        self.boot(node);
    }

    /// Stops a node and leaves it down (its peers' dials to it fail) until
    /// [`Mesh::start`].
    pub fn halt(&mut self, node: &str) {
        self.stop(node);
    }

    /// Starts a halted node again from the rows on its disk; its dialers
    /// dial at their next try.
    pub fn start(&mut self, node: &str) {
        self.boot(node);
    }

    /// Dials `dialer` has made to `acceptor` so far (failed ones included).
    pub fn dials(&self, dialer: &str, acceptor: &str) -> u64 {
        self.wires
            .iter()
            .filter(|w| w.dialer == dialer && w.acceptor == acceptor)
            .map(|w| w.dials)
            .sum()
    }

    fn stop(&mut self, node: &str) {
        self.node_mut(node).down = true;
        for wire in 0..self.wires.len() {
            let w = &self.wires[wire];
            if w.dialer == node || w.acceptor == node {
                self.close_wire(wire);
            }
        }
        let here: Vec<String> = self
            .users
            .iter()
            .filter(|(_, u)| u.at.as_ref().is_some_and(|(n, _)| n == node))
            .map(|(h, _)| h.clone())
            .collect();
        for handle in here {
            self.disconnect(&handle);
        }
        self.node_mut(node).conns.clear();
    }
}
