//! Custody lives on disk while it waits (PROTOCOL.md C14). Once a waiting
//! entry's row is written, its body leaves memory (the entry keeps the
//! metadata: destination, order, sizes), and is read back a page at a time
//! when it is next to be sent: so the backlog of a recipient that does not
//! keep up costs memory per frame, not per byte. A destination nobody can
//! reach (the offline mailbox) keeps nothing per frame in memory once its
//! rows are written: only its counts (`custody/disk.rs`); its rows are read
//! back in order, a page at a time, when it can be sent to, or when the
//! oldest may have outlived the mailbox's age limit.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Output, Router, StoreOp, custody::Dest};
use crate::node::state::{RowsAsk, RowsRead, Written};

/// Bodies read back from disk at a time, per destination.
pub const BODY_PAGE: usize = 256;
/// Rows of a destination on disk only read back at a time; the next page
/// is asked for while fewer than half a page wait in memory.
pub const ROW_PAGE: usize = 256;
/// Payload bytes of custody in memory (bodies read back and waiting,
/// rows held before writing) beyond which pages shrink to
/// [`ROW_PAGE_MIN`] and none is read ahead: a thousand recipients coming
/// online at once must not bring a page each into memory.
pub const ROWS_BUDGET: usize = 32 << 20;
pub const ROW_PAGE_MIN: usize = 32;

impl Router {
    /// These custody rows and directory records are on disk: the waiting
    /// entries drop their bodies, a destination nobody can reach leaves
    /// memory, the directory's copies may leave it.
    pub(super) fn stored(&mut self, written: Written) {
        self.users.written(written.users);
        let mut dests = HashSet::new();
        for seq in written.custody {
            if let Some(dest) = self.custody.dest_of(seq) {
                self.custody.evict(seq);
                dests.insert(dest);
            }
        }
        for dest in dests {
            self.park_if_stuck(&dest);
        }
    }

    /// `dest`'s entries leave memory if nobody can be sent them and they
    /// are all written and waiting.
    fn park_if_stuck(&mut self, dest: &Dest) {
        if matches!(dest, Dest::User(_))
            && !self.paging.contains(dest)
            && !self.may_route(dest)
            && self.custody.can_park(dest)
        {
            self.custody.park(dest);
        }
    }

    /// True if content for `dest` may have a route now (without looking
    /// at an entry: a local's own users' content for an unknown recipient
    /// goes to the master, what came over a link waits).
    pub(super) fn may_route(&self, dest: &Dest) -> bool {
        match dest {
            Dest::User(u) => {
                self.sessions.contains_key(u)
                    || self
                        .presence
                        .get(u)
                        .is_some_and(|p| p.live && p.location != self.cfg.me)
                    || (!self.cfg.master && self.master_link().is_some())
            }
            Dest::Server(s) => self.links.contains_key(s),
        }
    }

    /// `dest` has rows on disk only: asks for the next page when they come
    /// next, or soon. True if they come next (`pump` waits for them).
    pub(super) fn rows_needed(&mut self, dest: &Dest) -> bool {
        if !self.custody.on_disk(dest) {
            return false;
        }
        if !self.may_route(dest) {
            return true;
        }
        let first = self.custody.rows_first(dest);
        if self.custody.bytes().1 > ROWS_BUDGET {
            if let Some((after, upto)) = first {
                self.ask_rows(dest, after, upto, ROW_PAGE_MIN);
            }
        } else if let Some((after, upto)) =
            first.or_else(|| self.custody.rows_ahead(dest, ROW_PAGE / 2))
        {
            self.ask_rows(dest, after, upto, ROW_PAGE);
        }
        first.is_some()
    }

    fn ask_rows(&mut self, dest: &Dest, after: u64, upto: u64, limit: usize) {
        if self.paging.insert(dest.clone()) {
            self.out.push(Output::LoadRows(RowsAsk {
                dest: dest.clone(),
                after,
                upto,
                limit,
            }));
        }
    }

    /// A page of rows came back from disk: in memory again, in order; then
    /// sent on, or (nobody to send them to) expired and out of memory again.
    pub(super) fn rows_read(&mut self, read: RowsRead) {
        let RowsRead { ask, rows } = read;
        let dest = ask.dest;
        self.paging.remove(&dest);
        let Some((rows, done)) = rows else {
            return; // asked again at the next pump or tick
        };
        let missing: Vec<u64> = rows
            .iter()
            .filter(|e| e.body.is_none())
            .map(|e| e.seq)
            .collect();
        if !self.custody.rows_read(&dest, ask.after, rows, done) {
            return self.pump(&dest);
        }
        if !missing.is_empty() {
            self.custody.release(&missing);
            self.persist(StoreOp::Release(missing));
        }
        if self.may_route(&dest) {
            return self.pump(&dest);
        }
        // Read for expiry: drop what is too old, read on while the rest
        // may be too, then out of memory again.
        if self.cfg.master {
            let cutoff = self.now - self.cfg.limits.max_age_ms;
            let gone = self.custody.expire(cutoff, |d| d == &dest);
            self.expired_frames(gone);
            if !self
                .custody
                .stale_on_disk(cutoff, |d| d == &dest)
                .is_empty()
                && let Some((after, upto)) = self.custody.rows_first(&dest)
            {
                return self.ask_rows(&dest, after, upto, ROW_PAGE);
            }
        }
        self.park_if_stuck(&dest);
    }

    /// True if `sender`'s `msg_id` for `dest` is already held on disk only
    /// (a resend after a lost ack or a restart). Reads the disk only for a
    /// destination with rows there: the mailbox, not online traffic.
    pub(super) fn held_on_disk(&self, sender: &str, msg_id: &str, dest: &Dest) -> bool {
        if !self.custody.on_disk(dest) {
            return false;
        }
        self.users
            .store()
            .holds(sender, msg_id, dest)
            .inspect_err(|e| tracing::error!(error = %e, "cannot read custody rows"))
            .unwrap_or(false)
    }

    /// Mailbox frames dropped for age: counted, logged, deleted.
    pub(super) fn expired_frames(&mut self, gone: Vec<super::custody::Entry>) {
        if gone.is_empty() {
            return;
        }
        self.expired += gone.len() as u64;
        tracing::info!(
            frames = gone.len(),
            total = self.expired,
            "dropped mailbox frames past their age limit"
        );
        self.persist(StoreOp::Release(gone.iter().map(|e| e.seq).collect()));
    }

    /// Housekeeping: entries of destinations nobody can reach leave memory
    /// (a hop lost while they were in flight put them back), rows a failed
    /// read left on disk are asked again, and at the master destinations
    /// on disk only whose oldest row may be past the age limit are read.
    pub(super) fn sweep_custody(&mut self) {
        for dest in self.custody.parkable() {
            self.park_if_stuck(&dest);
        }
        for dest in self.custody.pending_dests() {
            if self.custody.on_disk(&dest) && self.may_route(&dest) && !self.paging.contains(&dest)
            {
                self.pump(&dest);
            }
        }
        if self.cfg.master {
            let cutoff = self.now - self.cfg.limits.max_age_ms;
            let stuck = |d: &Dest| !self.may_route(d);
            for dest in self.custody.stale_on_disk(cutoff, stuck) {
                if let Some((after, upto)) = self.custody.rows_first(&dest) {
                    self.ask_rows(&dest, after, upto, ROW_PAGE);
                }
            }
        }
    }

    /// `dest`'s next entry has its body on disk only: ask for a page of them.
    pub(super) fn page_in(&mut self, dest: &Dest) {
        if self.paging.contains(dest) {
            return;
        }
        let seqs = self.custody.evicted_page(dest, BODY_PAGE);
        if !seqs.is_empty() {
            self.paging.insert(dest.clone());
            self.out.push(Output::LoadBodies(seqs));
        }
    }

    /// Bodies came back from disk: put them in and send on.
    pub(super) fn bodies_read(&mut self, bodies: super::super::state::Bodies, unread: Vec<u64>) {
        let mut dests = HashSet::new();
        let mut retry = HashSet::new();
        let mut missing = Vec::new();
        for (seq, body) in bodies {
            let Some(dest) = self.custody.dest_of(seq) else {
                continue; // released meanwhile
            };
            let restored = body.map(|b| self.custody.restore(seq, Arc::unwrap_or_clone(b)));
            match restored {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::error!(seq, error = %e.log_summary(), "a custody row on disk is not the content it says");
                    missing.push(seq);
                }
                None => missing.push(seq),
            }
            dests.insert(dest);
        }
        for seq in unread {
            if let Some(dest) = self.custody.dest_of(seq) {
                retry.insert(dest);
            }
        }
        if !missing.is_empty() {
            // Never expected: a body is dropped only once its row is written.
            tracing::error!(
                frames = missing.len(),
                "custody rows missing or unreadable on disk; their frames are dropped"
            );
            self.custody.release(&missing);
            self.persist(StoreOp::Release(missing));
        }
        // What could not be read is asked again at the next pump; what
        // came back goes out now.
        for dest in retry {
            self.paging.remove(&dest);
        }
        for dest in dests {
            self.paging.remove(&dest);
            self.pump(&dest);
        }
    }

    /// Custody entries in memory (the others are on disk only).
    #[cfg(test)]
    pub fn custody_in_memory(&self) -> usize {
        self.custody.in_memory()
    }

    /// Payload bytes in custody, of those in memory, and the cap.
    pub fn custody_bytes(&self) -> (usize, usize, usize) {
        let (total, resident) = self.custody.bytes();
        (total, resident, self.cfg.limits.max_total_bytes)
    }
}
