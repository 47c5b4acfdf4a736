//! What the store thread hands back to the hub after each pass: the acks
//! whose writes are committed, what could not be written, the custody rows
//! now on disk and the bodies read back.

use super::custody_rows::Bodies;
use crate::node::custody::{Dest, Entry};
use crate::node::records::ConnId;

/// What a commit put on disk: custody rows (by `seq`; their bodies may
/// leave memory) and directory records (the router's copies may leave its
/// cache).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Written {
    pub custody: Vec<u64>,
    pub users: Vec<String>,
}

impl Written {
    pub fn is_empty(&self) -> bool {
        self.custody.is_empty() && self.users.is_empty()
    }
}

impl From<Vec<u64>> for Written {
    fn from(custody: Vec<u64>) -> Self {
        Written {
            custody,
            users: Vec::new(),
        }
    }
}

/// A page of a destination's custody rows to read back: `seq` in
/// `(after, upto]`, in order, at most `limit`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowsAsk {
    pub dest: Dest,
    pub after: u64,
    pub upto: u64,
    pub limit: usize,
}

/// The answer to a [`RowsAsk`]: the rows and whether they were the last
/// (None: they could not be read; asked again later).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowsRead {
    pub ask: RowsAsk,
    pub rows: Option<(Vec<Entry>, bool)>,
}

/// An acknowledgement that waits for the writes queued before it: the
/// `msg_id` to acknowledge, on which connection, to which peer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingAck {
    pub conn: ConnId,
    /// The peer's id (the ACK's `to`).
    pub to: String,
    pub msg_id: String,
}

/// What the store could not write (PROTOCOL.md C14: a write the store could
/// not make is never acknowledged, and memory never claims what the disk
/// does not hold). Custody rows and user pins are not retried: the router
/// forgets them (a resend is taken and written afresh) and tells who sent
/// them; every other write is kept and retried (`Pipeline::settle`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StoreFailure {
    /// Custody rows (by `seq`) that are not on disk.
    pub custody: Vec<u64>,
    /// Users whose pin is not on disk.
    pub users: Vec<String>,
    /// Acknowledgements that must not be sent: answer `STORAGE` instead.
    pub acks: Vec<PendingAck>,
    /// The store's error, for the answer and the log.
    pub error: String,
}

/// What became of one pass of the store thread, handed back to the hub.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Acks whose frames are committed: send them.
    pub acks: Vec<PendingAck>,
    /// What failed, if anything did.
    pub failure: Option<StoreFailure>,
    /// Custody rows and directory records now on disk.
    pub written: Written,
    /// Custody bodies read back, as asked.
    pub bodies: Bodies,
    /// Custody bodies asked for that could not be read (asked again later).
    pub unread: Vec<u64>,
    /// Pages of custody rows read back, as asked.
    pub rows: Vec<RowsRead>,
}

impl Outcome {
    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.failure.is_none()
            && self.written.is_empty()
            && self.bodies.is_empty()
            && self.unread.is_empty()
            && self.rows.is_empty()
    }
}
