//! One path per recipient while DMs are in flight (DESIGN.md "Reliable
//! delivery": order holds because all of one sender's content to one
//! recipient takes the same path). A local that handed a DM to its master
//! (the recipient was offline, unknown, or not linked directly) keeps
//! routing that recipient's DMs through the master until the master path
//! has delivered them (`delivered` receipts), so a direct link that appears
//! meanwhile cannot overtake the master's mailbox. What went through the
//! master before a restart is not known: for [`STICKY_MS`] after its start a
//! local sends each recipient's DMs through the master (while it is up)
//! until one of them is confirmed delivered, which shows the master's
//! queue for that recipient drained.

use std::collections::{HashMap, HashSet, VecDeque};

/// DMs remembered at once; beyond it the oldest are forgotten (their
/// recipient may then switch paths early: a reordering, never a loss).
pub const STICKY_MAX: usize = 100_000;
/// How long a DM handed to the master keeps its recipient on that path
/// without a receipt (receipts are best effort).
pub const STICKY_MS: i64 = 10 * 60 * 1000;

/// DMs handed to the master and not yet confirmed delivered.
#[derive(Default)]
pub(crate) struct ViaMaster {
    /// (sender, msg_id) -> (recipient, when it left).
    ids: HashMap<(String, String), (String, i64)>,
    order: VecDeque<(String, String)>,
    /// Outstanding DMs by recipient.
    by_recipient: HashMap<String, usize>,
    /// The router resumed from a store that had linked before: what it
    /// handed the master before the restart is not known.
    resumed: bool,
    /// When this router started (its first step), if it resumed.
    started: Option<i64>,
    /// Recipients whose master path was seen drained since the start.
    cleared: HashSet<String>,
}

impl ViaMaster {
    /// `sender`'s DM `msg_id` to `recipient` left through the master.
    pub fn record(&mut self, sender: &str, msg_id: &str, recipient: &str, now: i64) {
        let key = (sender.to_owned(), msg_id.to_owned());
        if self.ids.contains_key(&key) {
            return;
        }
        self.ids.insert(key.clone(), (recipient.to_owned(), now));
        self.order.push_back(key);
        *self.by_recipient.entry(recipient.to_owned()).or_default() += 1;
        while self.ids.len() > STICKY_MAX {
            self.forget_oldest();
        }
    }

    /// For a router that `resumed` from a store that had linked before.
    pub fn new(resumed: bool) -> Self {
        ViaMaster {
            resumed,
            ..Default::default()
        }
    }

    /// Notes the start of a resumed router (the first call counts).
    pub fn start(&mut self, now: i64) {
        if self.resumed {
            self.resumed = false;
            self.started = Some(now);
        }
    }

    /// The DM was delivered: it no longer holds its recipient's path.
    pub fn confirm(&mut self, sender: &str, msg_id: &str) {
        let key = (sender.to_owned(), msg_id.to_owned());
        if let Some((recipient, _)) = self.ids.remove(&key) {
            self.release(&recipient);
            if self.started.is_some() && self.cleared.len() < STICKY_MAX {
                self.cleared.insert(recipient);
            }
        }
    }

    /// True if DMs to `recipient` went through the master and may still be
    /// on their way: they must wait for it.
    pub fn holds(&self, recipient: &str) -> bool {
        self.by_recipient.contains_key(recipient)
    }

    /// True if, so soon after the start, DMs to `recipient` may still be
    /// in the master's queue from before it: they go through the master
    /// while it is up.
    pub fn unsure(&self, recipient: &str) -> bool {
        self.started.is_some() && !self.cleared.contains(recipient)
    }

    /// Forgets what is older than [`STICKY_MS`], and ends the start's
    /// doubt once it is that old.
    pub fn expire(&mut self, now: i64) {
        if self.started.is_some_and(|at| now - at >= STICKY_MS) {
            self.started = None;
            self.cleared = HashSet::new();
        }
        while let Some(key) = self.order.front() {
            match self.ids.get(key) {
                Some((_, at)) if now - *at < STICKY_MS => return,
                _ => self.forget_oldest(),
            }
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(key) = self.order.pop_front()
            && let Some((recipient, _)) = self.ids.remove(&key)
        {
            self.release(&recipient);
        }
    }

    fn release(&mut self, recipient: &str) {
        if let Some(n) = self.by_recipient.get_mut(recipient) {
            *n -= 1;
            if *n == 0 {
                self.by_recipient.remove(recipient);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_is_held_until_every_dm_is_confirmed_or_old() {
        let mut v = ViaMaster::default();
        v.record("alice", "m1", "bob", 0);
        v.record("alice", "m2", "bob", 5);
        v.record("alice", "m2", "bob", 6);
        v.confirm("alice", "m1");
        assert!(v.holds("bob"));
        v.confirm("alice", "m2");
        assert!(!v.holds("bob"));
        v.confirm("alice", "m2");
        v.record("alice", "m3", "carol", 10);
        v.expire(10 + STICKY_MS - 1);
        assert!(v.holds("carol"));
        v.expire(10 + STICKY_MS);
        assert!(!v.holds("carol"));
    }

    #[test]
    fn after_a_start_each_recipient_is_unsure_until_a_delivery_or_long_enough() {
        let mut fresh = ViaMaster::new(false);
        fresh.start(100);
        assert!(!fresh.unsure("bob"));
        let mut v = ViaMaster::new(true);
        v.start(100);
        v.start(200);
        assert!(v.unsure("bob"));
        v.record("alice", "m1", "bob", 150);
        v.confirm("alice", "m1");
        assert!(!v.unsure("bob") && v.unsure("carol"));
        v.expire(100 + STICKY_MS);
        assert!(!v.unsure("carol"));
    }
}
