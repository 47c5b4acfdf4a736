//! Custody bodies live on disk while they wait (PROTOCOL.md C14): once a
//! waiting entry's row is written, its body leaves memory (the entry keeps
//! the metadata: destination, order, sizes); when the entry is next to be
//! sent, bodies are read back from SQLite a page at a time. So the offline
//! mailbox, and the backlog of a recipient that does not keep up, cost
//! memory per frame, not per byte.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Output, Router, StoreOp, custody::Dest};

/// Bodies read back from disk at a time, per destination.
pub const BODY_PAGE: usize = 256;

impl Router {
    /// These custody rows are on disk: the waiting ones drop their bodies.
    pub(super) fn stored(&mut self, seqs: Vec<u64>) {
        for seq in seqs {
            self.custody.evict(seq);
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

    /// Payload bytes in custody, of those in memory, and the cap.
    pub fn custody_bytes(&self) -> (usize, usize, usize) {
        let (total, resident) = self.custody.bytes();
        (total, resident, self.cfg.limits.max_total_bytes)
    }
}
