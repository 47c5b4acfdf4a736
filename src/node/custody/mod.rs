//! Custody (PROTOCOL.md B): the frames a node has taken responsibility for
//! and not yet handed on. Each entry is one piece of content for one
//! destination (a user, or a server for group fan-out), kept typed and in
//! arrival order until the next hop acknowledges it. Entries with nowhere to
//! go wait; at the master that waiting set is the offline mailbox. Pure data:
//! the router decides routes, this keeps order, windows and acknowledgements.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::records::ConnId;
use crate::wire::WireError;

mod content;
mod disk;
#[cfg(test)]
mod tests;

pub(crate) use content::{Content, ContentKind};
pub(crate) use disk::{OnDisk, Summary};

/// Where an entry is going.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dest {
    /// The final recipient.
    User(String),
    /// A server that fans a group frame out (a local hands these to the master).
    Server(String),
}

/// The next hop a frame leaves on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Hop {
    Conn(ConnId),
    Link(String),
}

/// Frames in flight to one user before it must acknowledge some.
pub const WINDOW: usize = 256;
/// Frames in flight on one server link before it must acknowledge some: a
/// link carries many users' traffic, and its acks come when the next hop
/// has handed the frames on or written them (up to the store's hold, see
/// `state::HOLD`), so it needs room for tens of ms at full rate.
pub const LINK_WINDOW: usize = 4096;

/// One piece of content in custody, for one destination.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub msg_id: String,
    pub dest: Dest,
    pub kind: ContentKind,
    /// Shared between custody, the store write and every send; None while
    /// the body is on disk only.
    pub body: Option<Arc<Content>>,
    /// The `to` of the frame, when the destination does not imply it (a
    /// group file handed to the master names the group).
    pub to: Option<String>,
    /// The server it came from (None: our own user).
    pub via: Option<String>,
    /// The user who sent the content (receipts go back to them).
    pub sender: String,
    pub bytes: usize,
    pub created_ms: i64,
    /// Taken with nowhere to go (the offline mailbox): nothing downstream
    /// will acknowledge it soon, so its row is written at once rather
    /// than held (`state::HOLD`), and the sender's ack leaves then.
    pub mailbox: bool,
}

/// Pending and in-flight entries.
#[derive(Default)]
pub(crate) struct Custody {
    entries: HashMap<u64, Entry>,
    pending: HashMap<Dest, BTreeSet<u64>>,
    by_msg: HashMap<String, BTreeSet<u64>>,
    inflight: HashMap<Hop, HashMap<String, Vec<u64>>>,
    inflight_count: HashMap<Hop, usize>,
    /// Destinations that stopped for a full window, by hop.
    blocked: HashMap<Hop, HashSet<Dest>>,
    per_dest: HashMap<Dest, (usize, usize)>,
    /// Frames and bytes held from each sender (all destinations together).
    per_sender: HashMap<String, (usize, usize)>,
    next_seq: u64,
    /// Entries whose body is on disk only (written, and waiting): their
    /// `body` is None until `restore` brings it back for sending.
    evicted: HashSet<u64>,
    /// Payload bytes of all entries, and of the evicted ones.
    total_bytes: usize,
    evicted_bytes: usize,
    /// Entries held in all, on disk only ones included.
    frames: usize,
    /// Entries taken and not yet reported written (`written`).
    unwritten: HashSet<u64>,
    /// Destinations with rows on disk only (not in `entries`), see `disk.rs`.
    disk: HashMap<Dest, OnDisk>,
    /// Payload bytes of the rows on disk only.
    disk_bytes: usize,
}

impl Custody {
    /// A written entry that waits (pending, not in flight) drops its body
    /// from memory; true if it did. Its row is on disk from now on.
    pub fn evict(&mut self, seq: u64) -> bool {
        self.unwritten.remove(&seq);
        let Some(e) = self.entries.get_mut(&seq) else {
            return false;
        };
        let waiting = self.pending.get(&e.dest).is_some_and(|p| p.contains(&seq));
        if !waiting || !self.evicted.insert(seq) {
            return false;
        }
        e.body = None;
        self.evicted_bytes += e.bytes;
        true
    }

    /// Where an entry goes, if it is held.
    pub fn dest_of(&self, seq: u64) -> Option<Dest> {
        self.entries.get(&seq).map(|e| e.dest.clone())
    }

    /// True if the entry's body is on disk only.
    pub fn is_evicted(&self, seq: u64) -> bool {
        self.evicted.contains(&seq)
    }

    /// Puts a body read back from disk into its entry; an error if it is
    /// not the content the entry says (a corrupt row).
    pub fn restore(&mut self, seq: u64, payload: Map<String, Value>) -> Result<(), WireError> {
        if let Some(e) = self.entries.get_mut(&seq)
            && self.evicted.contains(&seq)
        {
            e.body = Some(Arc::new(Content::from_payload(e.kind, payload)?));
            self.evicted.remove(&seq);
            self.evicted_bytes -= e.bytes;
        }
        Ok(())
    }

    /// The first `n` pending entries of `dest` whose bodies are on disk only.
    pub fn evicted_page(&self, dest: &Dest, n: usize) -> Vec<u64> {
        self.pending
            .get(dest)
            .map(|p| {
                p.iter()
                    .filter(|s| self.evicted.contains(s))
                    .take(n)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Payload bytes held in all, and of those in memory.
    pub fn bytes(&self) -> (usize, usize) {
        (
            self.total_bytes,
            self.total_bytes - self.evicted_bytes - self.disk_bytes,
        )
    }

    /// Puts an entry in memory, pending (its counts are kept apart).
    fn resident(&mut self, e: Entry) {
        self.pending
            .entry(e.dest.clone())
            .or_default()
            .insert(e.seq);
        self.by_msg
            .entry(e.msg_id.clone())
            .or_default()
            .insert(e.seq);
        self.entries.insert(e.seq, e);
    }

    fn insert(&mut self, e: Entry) {
        self.count(&e.dest, &e.sender, e.bytes);
        self.resident(e);
    }

    /// Counts one more entry for `dest` from `sender`.
    fn count(&mut self, dest: &Dest, sender: &str, bytes: usize) {
        let n = self.per_dest.entry(dest.clone()).or_default();
        n.0 += 1;
        n.1 += bytes;
        // Looked up before inserting: no allocation for a sender already held.
        match self.per_sender.get_mut(sender) {
            Some(n) => {
                n.0 += 1;
                n.1 += bytes;
            }
            None => {
                self.per_sender.insert(sender.to_owned(), (1, bytes));
            }
        }
        self.total_bytes += bytes;
        self.frames += 1;
    }

    /// True if an entry for this sender's message and this destination is
    /// already held. Content identity is (sender, msg_id) (PROTOCOL.md C11):
    /// another sender's content under the same id is not a duplicate.
    pub fn holds(&self, sender: &str, msg_id: &str, dest: &Dest) -> bool {
        self.by_msg.get(msg_id).is_some_and(|seqs| {
            seqs.iter().any(|s| {
                self.entries
                    .get(s)
                    .is_some_and(|e| &e.dest == dest && e.sender == sender)
            })
        })
    }

    /// True if a frame under `msg_id` is in flight on `hop`: an ACK names
    /// only the id, so a second one must wait until the first is
    /// acknowledged (else one ACK would release both, whoever sent them).
    pub fn in_flight(&self, hop: &Hop, msg_id: &str) -> bool {
        self.inflight
            .get(hop)
            .is_some_and(|f| f.contains_key(msg_id))
    }

    /// Frames and bytes held from `sender`, for every destination.
    pub fn load_from(&self, sender: &str) -> (usize, usize) {
        self.per_sender.get(sender).copied().unwrap_or_default()
    }

    /// The fullest user queue and the fullest sender, each as (frames,
    /// bytes), each figure the largest of its kind: how close any one user
    /// is to the per-user and per-sender quotas.
    pub fn fullest(&self) -> ((usize, usize), (usize, usize)) {
        let max = |it: &mut dyn Iterator<Item = (usize, usize)>| {
            it.fold((0, 0), |(f, b), (nf, nb)| (f.max(nf), b.max(nb)))
        };
        let users = max(&mut self
            .per_dest
            .iter()
            .filter(|(d, _)| matches!(d, Dest::User(_)))
            .map(|(_, n)| *n));
        let senders = max(&mut self.per_sender.values().copied());
        (users, senders)
    }

    /// Frames and bytes held for `dest`.
    pub fn load_of(&self, dest: &Dest) -> (usize, usize) {
        self.per_dest.get(dest).copied().unwrap_or_default()
    }

    /// Takes a new entry; returns it with its sequence number.
    pub fn admit(&mut self, mut e: Entry) -> Entry {
        self.next_seq += 1;
        e.seq = self.next_seq;
        self.unwritten.insert(e.seq);
        self.insert(e.clone());
        e
    }

    /// Destinations with pending entries, in memory or on disk only.
    pub fn pending_dests(&self) -> Vec<Dest> {
        let mut dests: HashSet<&Dest> = self
            .pending
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(d, _)| d)
            .collect();
        dests.extend(self.disk.keys());
        dests.into_iter().cloned().collect()
    }

    /// Window slots taken on every hop.
    pub fn slots_taken(&self) -> usize {
        self.inflight_count.values().sum()
    }

    /// Room left in `hop`'s window.
    pub fn room(&self, hop: &Hop) -> usize {
        let window = match hop {
            Hop::Conn(_) => WINDOW,
            Hop::Link(_) => LINK_WINDOW,
        };
        window.saturating_sub(self.inflight_count.get(hop).copied().unwrap_or(0))
    }

    /// The oldest pending entry for `dest`.
    pub fn next_pending(&self, dest: &Dest) -> Option<&Entry> {
        let seq = self.pending.get(dest)?.first()?;
        self.entries.get(seq)
    }

    /// Pending entries of this sender's message (for coalescing a group frame).
    pub fn pending_with_msg(&self, sender: &str, msg_id: &str) -> Vec<&Entry> {
        let Some(seqs) = self.by_msg.get(msg_id) else {
            return Vec::new();
        };
        seqs.iter()
            .filter_map(|s| self.entries.get(s))
            .filter(|e| e.sender == sender)
            .filter(|e| {
                self.pending
                    .get(&e.dest)
                    .is_some_and(|p| p.contains(&e.seq))
            })
            .collect()
    }

    /// Marks entries as sent on `hop` under `msg_id`, awaiting its ack.
    pub fn send(&mut self, hop: &Hop, msg_id: &str, seqs: &[u64]) {
        for seq in seqs {
            if let Some(e) = self.entries.get(seq)
                && let Some(p) = self.pending.get_mut(&e.dest)
            {
                p.remove(seq);
            }
        }
        let flight = self.inflight.entry(hop.clone()).or_default();
        // The window counts ids in flight, as acks release them: one ACK
        // frees one slot, however the id was reused.
        let new_id = !flight.contains_key(msg_id);
        flight
            .entry(msg_id.to_owned())
            .or_default()
            .extend_from_slice(seqs);
        if new_id {
            *self.inflight_count.entry(hop.clone()).or_default() += 1;
        }
    }

    /// Remembers that `dest` waits for room on `hop`.
    pub fn block(&mut self, hop: &Hop, dest: &Dest) {
        self.blocked
            .entry(hop.clone())
            .or_default()
            .insert(dest.clone());
    }

    /// Takes the destinations that waited for room on `hop`.
    pub fn unblock(&mut self, hop: &Hop) -> Vec<Dest> {
        self.blocked
            .remove(hop)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }

    /// `hop` acknowledged `msg_ids`: those entries are released and returned.
    pub fn ack(&mut self, hop: &Hop, msg_ids: &[String]) -> Vec<Entry> {
        let mut released = Vec::new();
        let Some(flight) = self.inflight.get_mut(hop) else {
            return released;
        };
        let mut frames = 0;
        let mut seqs = Vec::new();
        for id in msg_ids {
            if let Some(s) = flight.remove(id) {
                frames += 1;
                seqs.extend(s);
            }
        }
        if let Some(n) = self.inflight_count.get_mut(hop) {
            *n = n.saturating_sub(frames);
        }
        for seq in seqs {
            if let Some(e) = self.remove(seq) {
                released.push(e);
            }
        }
        released
    }

    /// Releases entries that were handed to a hop that never acknowledges.
    pub fn release(&mut self, seqs: &[u64]) -> Vec<Entry> {
        seqs.iter().filter_map(|s| self.remove(*s)).collect()
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.unresident(seq)?;
        self.uncount(&e.dest, &e.sender, e.bytes, 1);
        Some(e)
    }

    /// Takes an entry out of memory (its counts stay).
    fn unresident(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.unwritten.remove(&seq);
        if self.evicted.remove(&seq) {
            self.evicted_bytes -= e.bytes;
        }
        if let Some(p) = self.pending.get_mut(&e.dest) {
            p.remove(&seq);
            if p.is_empty() {
                self.pending.remove(&e.dest);
            }
        }
        if let Some(m) = self.by_msg.get_mut(&e.msg_id) {
            m.remove(&seq);
            if m.is_empty() {
                self.by_msg.remove(&e.msg_id);
            }
        }
        Some(e)
    }

    /// Counts `frames` entries of `bytes` fewer for `dest` from `sender`.
    fn uncount(&mut self, dest: &Dest, sender: &str, bytes: usize, frames: usize) {
        self.total_bytes = self.total_bytes.saturating_sub(bytes);
        self.frames = self.frames.saturating_sub(frames);
        if let Some(n) = self.per_dest.get_mut(dest) {
            n.0 = n.0.saturating_sub(frames);
            n.1 = n.1.saturating_sub(bytes);
            if n.0 == 0 {
                self.per_dest.remove(dest);
            }
        }
        if let Some(n) = self.per_sender.get_mut(sender) {
            n.0 = n.0.saturating_sub(frames);
            n.1 = n.1.saturating_sub(bytes);
            if n.0 == 0 {
                self.per_sender.remove(sender);
            }
        }
    }

    /// `hop` could not store the frame under `msg_id` (it said `STORAGE`):
    /// it is pending again, to be resent later. Returns its destinations.
    pub fn requeue(&mut self, hop: &Hop, msg_id: &str) -> Vec<Dest> {
        let Some(seqs) = self.inflight.get_mut(hop).and_then(|f| f.remove(msg_id)) else {
            return Vec::new();
        };
        if let Some(n) = self.inflight_count.get_mut(hop) {
            *n = n.saturating_sub(1);
        }
        let mut dests = Vec::new();
        for seq in seqs {
            if let Some(e) = self.entries.get(&seq) {
                self.pending.entry(e.dest.clone()).or_default().insert(seq);
                dests.push(e.dest.clone());
            }
        }
        dests
    }

    /// `hop` went away: what was in flight on it is pending again, in order.
    /// Returns the destinations to route anew.
    pub fn hop_down(&mut self, hop: &Hop) -> Vec<Dest> {
        self.inflight_count.remove(hop);
        let blocked = self.blocked.remove(hop).unwrap_or_default();
        let mut dests: HashSet<Dest> = blocked;
        for (_, seqs) in self.inflight.remove(hop).unwrap_or_default() {
            for seq in seqs {
                if let Some(e) = self.entries.get(&seq) {
                    self.pending.entry(e.dest.clone()).or_default().insert(seq);
                    dests.insert(e.dest.clone());
                }
            }
        }
        dests.into_iter().collect()
    }

    /// Pending entries older than `cutoff` for destinations `stuck` says
    /// have nowhere to go; they are removed and returned.
    pub fn expire(&mut self, cutoff: i64, stuck: impl Fn(&Dest) -> bool) -> Vec<Entry> {
        let old: Vec<u64> = self
            .pending
            .iter()
            .filter(|(d, _)| stuck(d))
            .flat_map(|(_, seqs)| seqs.iter().copied())
            .filter(|s| self.entries.get(s).is_some_and(|e| e.created_ms < cutoff))
            .collect();
        old.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    /// Entries held in all (on disk only ones included).
    pub fn len(&self) -> usize {
        self.frames
    }
}
