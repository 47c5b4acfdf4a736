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
//!
//! A recipient held this way while a direct link to their server exists is
//! a trap for a sender that never pauses: some DM is always unconfirmed, so
//! the whole stream stayed on the master (review finding). So new DMs to
//! them *wait* instead, at most [`BARRIER_MS`], for the master's path to
//! drain (every DM on it confirmed), then go direct: the order holds, and
//! the master carries only what left before the direct path was known. If
//! it has not drained by then (confirmations are slow or lost), what waited
//! goes the master's way after the rest, and the next DM waits again.

use std::collections::{HashMap, HashSet, VecDeque};

/// DMs remembered at once; beyond it the oldest are forgotten (their
/// recipient may then switch paths early: a reordering, never a loss).
pub const STICKY_MAX: usize = 100_000;
/// How long a DM handed to the master keeps its recipient on that path
/// without a receipt (receipts are best effort).
pub const STICKY_MS: i64 = 10 * 60 * 1000;
/// How long new DMs wait for the master's path to drain before they take
/// it after all.
pub const BARRIER_MS: i64 = 1_000;

/// Where a recipient's wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// New DMs wait, since then (ms).
    Since(i64),
    /// The wait ran out: DMs take the master's path until then (ms), and
    /// the next one after it waits again.
    OverUntil(i64),
}

/// What a DM to a held recipient with a direct path does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Barrier {
    /// Waits (the first to: arm the timer that ends the wait begun then).
    New(i64),
    Waiting,
    /// Takes the master's path: the wait ran out.
    Over,
}

/// DMs handed to the master and not yet confirmed delivered.
#[derive(Default)]
pub(crate) struct ViaMaster {
    /// (sender, msg_id) -> (recipient, when it left).
    ids: HashMap<(String, String), (String, i64)>,
    order: VecDeque<(String, String)>,
    /// Outstanding DMs by (sender, recipient): order is kept per pair, so
    /// one sender's unconfirmed DMs hold no one else's.
    by_pair: HashMap<(String, String), usize>,
    /// The router resumed from a store that had linked before: what it
    /// handed the master before the restart is not known.
    resumed: bool,
    /// When this router started (its first step), if it resumed.
    started: Option<i64>,
    /// Recipients whose master path was seen drained since the start.
    cleared: HashSet<String>,
    /// (sender, recipient) pairs whose new DMs wait for the master's path
    /// to drain.
    barriers: HashMap<(String, String), Wait>,
    /// Recipients whose wait ended because their master path was released
    /// (confirmed, expired or forgotten): what waited may go now.
    freed: Vec<String>,
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
        *self
            .by_pair
            .entry((sender.to_owned(), recipient.to_owned()))
            .or_default() += 1;
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
    /// Returns the recipient if that was the last DM of its sender holding
    /// it (what waited may go).
    pub fn confirm(&mut self, sender: &str, msg_id: &str) -> Option<String> {
        let key = (sender.to_owned(), msg_id.to_owned());
        let (recipient, _) = self.ids.remove(&key)?;
        self.release(sender, &recipient);
        if self.started.is_some() && self.cleared.len() < STICKY_MAX {
            self.cleared.insert(recipient.clone());
        }
        (!self.holds(sender, &recipient)).then_some(recipient)
    }

    /// A DM from `sender` to `recipient`, held by the master's path while a
    /// direct one exists: does it wait for the master's path to drain?
    pub fn barrier(&mut self, sender: &str, recipient: &str, now: i64) -> Barrier {
        let pair = (sender.to_owned(), recipient.to_owned());
        match self.barriers.get(&pair) {
            Some(Wait::Since(_)) => Barrier::Waiting,
            Some(Wait::OverUntil(until)) if now < *until => Barrier::Over,
            _ => {
                self.barriers.insert(pair, Wait::Since(now));
                Barrier::New(now)
            }
        }
    }

    /// The wait of `sender`'s DMs to `recipient` begun at `since` ran out at
    /// `now`: what waited, and what comes for [`BARRIER_MS`], takes the
    /// master's path (a body read back from disk meanwhile still goes);
    /// then the next DM waits again. A timer of an earlier wait ends
    /// nothing.
    pub fn barrier_over(&mut self, sender: &str, recipient: &str, since: i64, now: i64) {
        let pair = (sender.to_owned(), recipient.to_owned());
        if let Some(b) = self.barriers.get_mut(&pair)
            && *b == Wait::Since(since)
        {
            *b = Wait::OverUntil(now + BARRIER_MS);
        }
    }

    /// Recipients whose wait ended since the last call (their master path
    /// was released): the router sends what waited.
    pub fn take_freed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.freed)
    }

    /// True if `sender`'s DMs to `recipient` went through the master and
    /// may still be on their way: the next ones must not overtake them.
    pub fn holds(&self, sender: &str, recipient: &str) -> bool {
        self.by_pair
            .contains_key(&(sender.to_owned(), recipient.to_owned()))
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
            self.release(&key.0, &recipient);
        }
    }

    fn release(&mut self, sender: &str, recipient: &str) {
        let pair = (sender.to_owned(), recipient.to_owned());
        if let Some(n) = self.by_pair.get_mut(&pair) {
            *n -= 1;
            if *n == 0 {
                self.by_pair.remove(&pair);
                if self.barriers.remove(&pair).is_some() {
                    self.freed.push(pair.1);
                }
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
        assert_eq!(v.confirm("alice", "m1"), None);
        assert!(v.holds("alice", "bob"));
        assert!(!v.holds("erin", "bob"), "one sender holds no one else");
        assert_eq!(v.confirm("alice", "m2").as_deref(), Some("bob"));
        assert!(!v.holds("alice", "bob"));
        assert_eq!(v.confirm("alice", "m2"), None);
        v.record("alice", "m3", "carol", 10);
        v.expire(10 + STICKY_MS - 1);
        assert!(v.holds("alice", "carol"));
        v.expire(10 + STICKY_MS);
        assert!(!v.holds("alice", "carol"));
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

    #[test]
    fn new_dms_wait_until_the_master_path_drains_or_the_wait_runs_out() {
        let mut v = ViaMaster::default();
        v.record("alice", "m1", "bob", 0);
        assert_eq!(v.barrier("alice", "bob", 1), Barrier::New(1));
        assert_eq!(v.barrier("alice", "bob", 2), Barrier::Waiting);
        // Drained: the wait ends with it, and says so.
        assert_eq!(v.confirm("alice", "m1").as_deref(), Some("bob"));
        assert!(v.barriers.is_empty());
        assert_eq!(v.take_freed(), ["bob"]);
        // Not drained in time: the master's path for a while, then a new
        // wait. The first wait's timer ends nothing of a later one.
        v.record("alice", "m2", "bob", 3);
        assert_eq!(v.barrier("alice", "bob", 4), Barrier::New(4));
        v.barrier_over("alice", "bob", 1, 1001);
        assert_eq!(v.barrier("alice", "bob", 1002), Barrier::Waiting);
        v.barrier_over("alice", "bob", 4, 1004);
        assert_eq!(v.barrier("alice", "bob", 1005), Barrier::Over);
        assert_eq!(v.barrier("alice", "bob", 2003), Barrier::Over);
        assert_eq!(v.barrier("alice", "bob", 2004), Barrier::New(2004));
        // Released without a receipt (too old): freed all the same.
        v.expire(3 + STICKY_MS);
        assert!(!v.holds("alice", "bob"));
        assert_eq!(v.take_freed(), ["bob"]);
    }
}
