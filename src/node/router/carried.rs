//! Which server each DM was handed to, so that receipts for it are taken
//! only from there (PROTOCOL.md C13: a server may confirm only content it
//! carried). Kept as keyed hashes in a bounded first-in-first-out set: a
//! receipt that comes after its record was pushed out is dropped, which
//! costs a "delivered" tick, never content.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

/// DMs remembered at once (about 40 bytes each).
pub const CARRIED_MAX: usize = 500_000;

/// The record of DMs handed on over links.
#[derive(Default)]
pub(crate) struct Carried {
    hasher: RandomState,
    /// hash(sender, msg_id) -> hash(server it went to).
    to: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

impl Carried {
    fn key(&self, sender: &str, msg_id: &str) -> u64 {
        self.hasher.hash_one((sender, msg_id))
    }

    /// `sender`'s DM `msg_id` left on the link to `server`.
    pub fn record(&mut self, sender: &str, msg_id: &str, server: &str) {
        let key = self.key(sender, msg_id);
        let to = self.hasher.hash_one(server);
        if self.to.insert(key, to).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CARRIED_MAX {
            if let Some(old) = self.order.pop_front() {
                self.to.remove(&old);
            }
        }
    }

    /// True if `sender`'s DM `msg_id` went to `server`.
    pub fn went_to(&self, sender: &str, msg_id: &str, server: &str) -> bool {
        self.to
            .get(&self.key(sender, msg_id))
            .is_some_and(|to| *to == self.hasher.hash_one(server))
    }

    /// True if we handed `sender`'s DM `msg_id` to any server.
    pub fn carried(&self, sender: &str, msg_id: &str) -> bool {
        self.to.contains_key(&self.key(sender, msg_id))
    }

    /// Forgets a DM whose delivery was confirmed.
    pub fn forget(&mut self, sender: &str, msg_id: &str) {
        // The FIFO keeps its key until it reaches the front: cheap, and
        // bounded by the same cap.
        self.to.remove(&self.key(sender, msg_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_server_a_dm_went_to_matches_and_the_record_is_bounded() {
        let mut c = Carried::default();
        c.record("alice", "m1", "server_a");
        assert!(c.went_to("alice", "m1", "server_a"));
        assert!(!c.went_to("alice", "m1", "server_b"));
        assert!(!c.went_to("bob", "m1", "server_a"));
        c.forget("alice", "m1");
        assert!(!c.carried("alice", "m1"));
        for i in 0..CARRIED_MAX + 10 {
            c.record("a", &i.to_string(), "s");
        }
        assert!(c.to.len() <= CARRIED_MAX);
        assert!(!c.carried("a", "0"));
        assert!(c.carried("a", &(CARRIED_MAX + 9).to_string()));
    }
}
