//! `undecryptable` reports: a user's client says it could not decrypt a DM
//! it was handed, and its sender's client is told so in place of
//! `delivered` (DESIGN.md "Undecryptable content"). A user may report only
//! a DM addressed to it that is in flight on its own connection (handed
//! to it, not yet acknowledged), so it can neither speak for content it
//! never received nor for anyone else's; the report only marks the DM, and
//! its `ACK` then sends `undecryptable` instead of `delivered`, exactly
//! once, back the way `delivered` goes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use super::{ConnId, Router, truncate};
use crate::node::custody::{Dest, Hop, WINDOW};
use crate::wire::ErrorCode;
use crate::wire::messages::{Proof, Receipt, UNDECRYPTABLE};

/// Marks remembered at once, all connections together. Each connection
/// holds at most [`UNREADABLE_PER_CONN`], so filling this takes 256 users
/// each holding a full window of DMs unacknowledged; past it new reports
/// are dropped (their DMs get `delivered`, as before reports existed).
pub const UNREADABLE_MAX: usize = 65_536;

/// Marks one connection may hold: a mark is only for a DM in flight to it,
/// and no more than a window of frames is.
pub const UNREADABLE_PER_CONN: usize = WINDOW;

/// Most `msg_ids` one report may name: a client reports DMs one by one.
pub const REPORT_IDS_MAX: usize = 64;

/// DMs reported undecryptable by their recipient, not yet acknowledged,
/// by the connection they are in flight on, each a keyed hash of (sender,
/// msg_id) (the connection names the recipient). A mark lives as long as
/// the delivery it is about: its `ACK` takes it (whatever the content), and
/// the connection's close drops the rest; a DM handed on again after a
/// reconnect is reported again by a client that still cannot open it.
#[derive(Default)]
pub(crate) struct Unreadable {
    hasher: RandomState,
    by_conn: HashMap<ConnId, HashSet<u64>>,
    /// Marks in `by_conn`, all connections together.
    total: usize,
}

impl Unreadable {
    fn key(&self, sender: &str, msg_id: &str) -> u64 {
        self.hasher.hash_one((sender, msg_id))
    }

    /// The user on `conn` could not decrypt `sender`'s DM `msg_id`, in
    /// flight to it there. False if there was no room for the mark.
    pub fn mark(&mut self, conn: ConnId, sender: &str, msg_id: &str) -> bool {
        let key = self.key(sender, msg_id);
        let full = self.total >= UNREADABLE_MAX;
        let marks = self.by_conn.entry(conn).or_default();
        if marks.contains(&key) {
            return true;
        }
        if full || marks.len() >= UNREADABLE_PER_CONN {
            if marks.is_empty() {
                self.by_conn.remove(&conn);
            }
            return false;
        }
        marks.insert(key);
        self.total += 1;
        true
    }

    /// True (once) if `sender`'s `msg_id`, acknowledged on `conn`, was marked.
    pub fn take(&mut self, conn: ConnId, sender: &str, msg_id: &str) -> bool {
        if self.total == 0 {
            return false; // the usual case: no hashing per acknowledged DM
        }
        let key = self.key(sender, msg_id);
        let Some(marks) = self.by_conn.get_mut(&conn) else {
            return false;
        };
        let taken = marks.remove(&key);
        if taken {
            self.total -= 1;
            if marks.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        taken
    }

    /// `conn` closed: its marks go with the deliveries they were about.
    pub fn forget(&mut self, conn: ConnId) {
        if let Some(marks) = self.by_conn.remove(&conn) {
            self.total -= marks.len();
        }
    }

    /// Marks held, all connections together.
    pub fn len(&self) -> usize {
        self.total
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
        let (mut forged, mut full) = (0, 0);
        for id in &r.msg_ids {
            if !(self.custody.in_flight(&hop, id) && self.custody.holds(&r.user_id, id, &dest)) {
                forged += 1;
            } else if !self.unreadable.mark(conn, &r.user_id, id) {
                full += 1;
            }
        }
        if forged > 0 {
            tracing::debug!(user = %truncate(user), sender = %truncate(&r.user_id), ids = forged, "dropped undecryptable reports for content not in flight to that user");
        }
        if full > 0 {
            tracing::warn!(user = %truncate(user), sender = %truncate(&r.user_id), ids = full, marks = self.unreadable.len(), "dropped undecryptable reports: no room for their marks");
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
    fn a_mark_is_taken_once_for_its_connection_sender_and_id() {
        let mut u = Unreadable::default();
        assert!(u.mark(1, "alice", "m1"));
        assert!(!u.take(2, "alice", "m1"));
        assert!(!u.take(1, "mallory", "m1"));
        assert!(!u.take(1, "alice", "m2"));
        assert!(u.take(1, "alice", "m1"));
        assert!(!u.take(1, "alice", "m1"));
        assert_eq!(u.len(), 0);
        assert!(u.by_conn.is_empty());
    }

    #[test]
    fn one_connection_cannot_push_out_anothers_marks() {
        // Review finding: the marks were one FIFO for everyone, so one
        // recipient's reports evicted everyone else's.
        let mut u = Unreadable::default();
        assert!(u.mark(2, "alice", "theirs"));
        for i in 0..UNREADABLE_MAX + 10 {
            u.mark(1, "a", &i.to_string());
        }
        assert_eq!(u.len(), UNREADABLE_PER_CONN + 1);
        assert!(!u.mark(1, "a", "one more"));
        // Marked again (the same delivery reported twice): still one mark.
        assert!(u.mark(1, "a", "0"));
        assert_eq!(u.len(), UNREADABLE_PER_CONN + 1);
        assert!(u.take(2, "alice", "theirs"));
        // Taken marks free their room at once.
        assert!(u.take(1, "a", "0"));
        assert!(u.mark(1, "a", "one more"));
        assert!(u.take(1, "a", "one more"));
    }

    #[test]
    fn a_closed_connection_leaves_no_marks_and_the_total_is_bounded() {
        let mut u = Unreadable::default();
        let conns = (UNREADABLE_MAX / UNREADABLE_PER_CONN) as u64;
        for conn in 0..conns {
            for i in 0..UNREADABLE_PER_CONN {
                assert!(u.mark(conn, "a", &i.to_string()));
            }
        }
        assert_eq!(u.len(), UNREADABLE_MAX);
        assert!(!u.mark(conns, "a", "0"), "over the total");
        assert!(!u.by_conn.contains_key(&conns));
        u.forget(0);
        assert_eq!(u.len(), UNREADABLE_MAX - UNREADABLE_PER_CONN);
        assert!(!u.take(0, "a", "0"));
        assert!(u.mark(conns, "a", "0"));
        for conn in 1..=conns {
            u.forget(conn);
        }
        assert_eq!(u.len(), 0);
        assert!(u.by_conn.is_empty());
    }
}
