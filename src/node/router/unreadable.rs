//! `undecryptable` reports: a user's client says it could not decrypt a DM
//! it was handed, and its sender's client is told so in place of
//! `delivered` (DESIGN.md "Undecryptable content"). A user may report only
//! a DM addressed to it that is in flight on its own connection (handed
//! to it, not yet acknowledged), so it can neither speak for content it
//! never received nor for anyone else's; the report only marks the DM, and
//! its `ACK` then sends `undecryptable` instead of `delivered`, exactly
//! once, back the way `delivered` goes.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use super::{ConnId, Router, truncate};
use crate::node::custody::{Dest, Hop};
use crate::wire::ErrorCode;
use crate::wire::messages::{Proof, Receipt, UNDECRYPTABLE};

/// Marks remembered at once (a mark is taken by the DM's `ACK`; one left
/// by a connection that dropped first waits for the DM's next delivery).
pub const UNREADABLE_MAX: usize = 65_536;

/// Most `msg_ids` one report may name: a client reports DMs one by one.
pub const REPORT_IDS_MAX: usize = 64;

/// DMs reported undecryptable by their recipient, not yet acknowledged,
/// kept as keyed hashes of (recipient, sender, msg_id).
#[derive(Default)]
pub(crate) struct Unreadable {
    hasher: RandomState,
    marked: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Unreadable {
    fn key(&self, recipient: &str, sender: &str, msg_id: &str) -> u64 {
        self.hasher.hash_one((recipient, sender, msg_id))
    }

    /// `recipient` could not decrypt `sender`'s DM `msg_id`.
    pub fn mark(&mut self, recipient: &str, sender: &str, msg_id: &str) {
        let key = self.key(recipient, sender, msg_id);
        if self.marked.insert(key) {
            self.order.push_back(key);
        }
        while self.order.len() > UNREADABLE_MAX {
            if let Some(old) = self.order.pop_front() {
                self.marked.remove(&old);
            }
        }
    }

    /// True (once) if the DM was marked.
    pub fn take(&mut self, recipient: &str, sender: &str, msg_id: &str) -> bool {
        if self.marked.is_empty() {
            return false; // the usual case: no hashing per acknowledged DM
        }
        // The FIFO keeps the key until it reaches the front: bounded by the
        // same cap.
        let key = self.key(recipient, sender, msg_id);
        self.marked.remove(&key)
    }
}

/// True if a signed hello listed `cap`.
pub(super) fn lists_cap(proof: Option<&Proof>, cap: &str) -> bool {
    proof
        .and_then(|p| p.payload.get("caps"))
        .and_then(|c| c.as_array())
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(cap)))
}

impl Router {
    /// A `RECEIPT` from `user` on `conn`: an `undecryptable` report about
    /// DMs from `r.user_id` that this connection was handed and has not
    /// acknowledged yet. Ids that are not such DMs are dropped (counted in
    /// the log); any other status is refused.
    pub(super) fn user_report(&mut self, conn: ConnId, user: &str, r: Receipt) {
        if r.status != UNDECRYPTABLE {
            return self.error(
                conn,
                user,
                ErrorCode::NotAllowed,
                format!("a user may send RECEIPT only with status {UNDECRYPTABLE}"),
            );
        }
        if r.msg_ids.len() > REPORT_IDS_MAX {
            return self.error(
                conn,
                user,
                ErrorCode::BadFrame,
                format!("a report names at most {REPORT_IDS_MAX} msg_ids"),
            );
        }
        let hop = Hop::Conn(conn);
        let dest = Dest::User(user.to_owned());
        let mut forged = 0;
        for id in &r.msg_ids {
            if self.custody.in_flight(&hop, id) && self.custody.holds(&r.user_id, id, &dest) {
                self.unreadable.mark(user, &r.user_id, id);
            } else {
                forged += 1;
            }
        }
        if forged > 0 {
            tracing::debug!(user = %truncate(user), sender = %truncate(&r.user_id), ids = forged, "dropped undecryptable reports for content not in flight to that user");
        }
    }

    /// True if `user`'s session asked for `undecryptable` receipts.
    pub(super) fn takes_undecryptable(&self, user: &str) -> bool {
        self.sessions.get(user).is_some_and(|s| s.undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_taken_once_for_its_recipient_sender_and_id_and_is_bounded() {
        let mut u = Unreadable::default();
        u.mark("bob", "alice", "m1");
        assert!(!u.take("carol", "alice", "m1"));
        assert!(!u.take("bob", "mallory", "m1"));
        assert!(u.take("bob", "alice", "m1"));
        assert!(!u.take("bob", "alice", "m1"));
        for i in 0..UNREADABLE_MAX + 10 {
            u.mark("bob", "a", &i.to_string());
        }
        assert!(u.marked.len() <= UNREADABLE_MAX);
        assert!(!u.take("bob", "a", "0"));
        assert!(u.take("bob", "a", &(UNREADABLE_MAX + 9).to_string()));
    }
}
