//! Custody rows that are on disk only. A destination nobody can reach
//! (the master's offline mailbox) keeps no entry in memory once its rows
//! are written: only its counts (frames, bytes, oldest) and which rows are
//! on disk only, a range of `seq`. When it can be sent to again, its rows
//! are read back in order, a page at a time, by the store thread; new
//! entries taken meanwhile (higher `seq`) wait behind them. At start every
//! destination is on disk only, so starting costs memory per destination
//! and per sender, not per frame.

use super::{Custody, Dest, Entry};

/// The rows of one destination that are on disk only: those with `seq` in
/// `(after, upto]` (none of them in memory), with their counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OnDisk {
    pub frames: usize,
    pub bytes: usize,
    /// No row is older than this (a lower bound once some were read).
    pub oldest_ms: i64,
    pub after: u64,
    pub upto: u64,
}

/// What the store holds, counted at start (`state::load`): per
/// destination and per sender, without a row in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Summary {
    pub dests: Vec<(Dest, OnDisk)>,
    /// Frames and bytes held from each sender.
    pub senders: Vec<(String, usize, usize)>,
    /// The highest `seq` on disk: new entries are numbered after it.
    pub max_seq: u64,
}

impl Custody {
    /// Resumes from what the store holds: every destination on disk only.
    pub fn load(summary: Summary) -> Self {
        let mut c = Custody {
            next_seq: summary.max_seq,
            ..Default::default()
        };
        for (sender, frames, bytes) in summary.senders {
            c.per_sender.insert(sender, (frames, bytes));
        }
        for (dest, d) in summary.dests {
            if d.frames == 0 {
                continue;
            }
            c.frames += d.frames;
            c.total_bytes += d.bytes;
            c.disk_bytes += d.bytes;
            c.per_dest.insert(dest.clone(), (d.frames, d.bytes));
            c.disk.insert(dest, d);
        }
        c
    }

    /// True if `dest` has rows on disk only.
    pub fn on_disk(&self, dest: &Dest) -> bool {
        self.disk.contains_key(dest)
    }

    /// The disk-only rows to read next for `dest`, as `(after, upto)`,
    /// when they must be read before anything in memory can leave: none of
    /// its entries in memory is pending before them.
    pub fn rows_first(&self, dest: &Dest) -> Option<(u64, u64)> {
        let d = self.disk.get(dest)?;
        let head_first = self
            .pending
            .get(dest)
            .and_then(|p| p.first())
            .is_some_and(|s| *s <= d.after);
        (!head_first).then_some((d.after, d.upto))
    }

    /// The disk-only rows to read ahead for `dest` while fewer than `low`
    /// of its entries wait in memory.
    pub fn rows_ahead(&self, dest: &Dest, low: usize) -> Option<(u64, u64)> {
        let d = self.disk.get(dest)?;
        let waiting = self
            .pending
            .get(dest)
            .map_or(0, |p| p.range(..=d.after).count());
        (waiting < low).then_some((d.after, d.upto))
    }

    /// True if every entry of `dest` in memory is written and waiting (none
    /// in flight, none held unwritten), and there is at least one: then it
    /// can leave memory.
    pub fn can_park(&self, dest: &Dest) -> bool {
        let Some(pending) = self.pending.get(dest) else {
            return false;
        };
        let held = self.per_dest.get(dest).map_or(0, |n| n.0);
        let on_disk = self.disk.get(dest).map_or(0, |d| d.frames);
        !pending.is_empty()
            && held == pending.len() + on_disk
            && pending.iter().all(|s| !self.unwritten.contains(s))
    }

    /// Drops `dest`'s entries from memory (see `can_park`): all its rows
    /// are on disk only from now on, read again from the first.
    pub fn park(&mut self, dest: &Dest) {
        if !self.can_park(dest) {
            return;
        }
        let seqs: Vec<u64> = self
            .pending
            .get(dest)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        let mut d = self.disk.remove(dest).unwrap_or(OnDisk {
            oldest_ms: i64::MAX,
            ..Default::default()
        });
        for seq in seqs {
            if let Some(e) = self.unresident(seq) {
                d.frames += 1;
                d.bytes += e.bytes;
                self.disk_bytes += e.bytes;
                d.oldest_ms = d.oldest_ms.min(e.created_ms);
                d.upto = d.upto.max(e.seq);
            }
        }
        d.after = 0;
        self.disk.insert(dest.clone(), d);
    }

    /// Rows of `dest` read back from disk after `after` (`done`: the last
    /// of them): they are in memory again, pending, in order. False if
    /// they are not the rows asked for (the destination changed since).
    pub fn rows_read(&mut self, dest: &Dest, after: u64, rows: Vec<Entry>, done: bool) -> bool {
        let Some(d) = self.disk.get_mut(dest) else {
            return false;
        };
        if d.after != after {
            return false;
        }
        let mut read = Vec::with_capacity(rows.len());
        for e in rows {
            if e.seq <= d.after || e.seq > d.upto || &e.dest != dest {
                continue;
            }
            d.after = e.seq;
            d.frames = d.frames.saturating_sub(1);
            d.bytes = d.bytes.saturating_sub(e.bytes);
            d.oldest_ms = d.oldest_ms.max(e.created_ms);
            self.disk_bytes = self.disk_bytes.saturating_sub(e.bytes);
            read.push(e);
        }
        if done || d.frames == 0 {
            let left = self.disk.remove(dest).unwrap_or_default();
            if left.frames > 0 || left.bytes > 0 {
                // Counted at start or parked, and gone from disk since:
                // never expected; the counts follow the disk.
                tracing::warn!(frames = left.frames, "custody rows counted but not on disk");
                self.disk_bytes = self.disk_bytes.saturating_sub(left.bytes);
                self.total_bytes = self.total_bytes.saturating_sub(left.bytes);
                self.frames = self.frames.saturating_sub(left.frames);
                if let Some(n) = self.per_dest.get_mut(dest) {
                    n.0 = n.0.saturating_sub(left.frames);
                    n.1 = n.1.saturating_sub(left.bytes);
                    if n.0 == 0 {
                        self.per_dest.remove(dest);
                    }
                }
            }
        }
        for mut e in read {
            e.mailbox = false;
            self.resident(e);
        }
        true
    }

    /// Entries just sent whose rows are written drop their bodies (the
    /// frame on its way holds its own reference): a backlog in flight
    /// costs its metadata, and a lost hop puts them back to be read again.
    pub fn sent(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if self.unwritten.contains(seq) {
                continue;
            }
            if let Some(e) = self.entries.get_mut(seq)
                && e.body.is_some()
                && self.evicted.insert(*seq)
            {
                e.body = None;
                self.evicted_bytes += e.bytes;
            }
        }
    }

    /// Destinations on disk only whose oldest row may be older than
    /// `cutoff`, among those `stuck` says have nowhere to go.
    pub fn stale_on_disk(&self, cutoff: i64, stuck: impl Fn(&Dest) -> bool) -> Vec<Dest> {
        self.disk
            .iter()
            .filter(|(dest, d)| d.oldest_ms < cutoff && stuck(dest))
            .map(|(dest, _)| dest.clone())
            .collect()
    }

    /// Destinations with entries in memory that could leave it.
    pub fn parkable(&self) -> Vec<Dest> {
        self.pending
            .keys()
            .filter(|d| matches!(d, Dest::User(_)) && self.can_park(d))
            .cloned()
            .collect()
    }

    /// Entries in memory (the rest are on disk only).
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.entries.len()
    }
}
