//! What a node keeps in SQLite, and the one path its writes take (SQLite
//! has one writer; keeping every write on one thread avoids lock contention
//! and keeps the router free of I/O):
//!
//! - `records`: the router's records of users, servers, presence, groups;
//! - `sql`: the tables: loading the router's state, applying its writes;
//! - `custody_rows`: how custody entries and their bodies are stored;
//! - `read`: the router's synchronous reads (directory records, custody
//!   rows already on disk);
//! - `pipeline`: when each write and acknowledgement leaves (held custody
//!   rows, acks after what was queued before them, retries), without I/O;
//! - `outcome`: what each pass hands back to the hub;
//! - `writer`: the store thread that runs it all, and the WAL checkpointer.

pub(crate) mod custody_rows;
mod ops;
pub(crate) mod outcome;
mod pipeline;
pub(crate) mod read;
pub(crate) mod sql;
pub(crate) mod writer;

pub(crate) use custody_rows::Bodies;
pub(crate) use ops::StoreOp;
pub(crate) use outcome::{Outcome, PendingAck, RowsAsk, RowsRead, StoreFailure, Written};
#[cfg(test)]
pub(crate) use read::MemRead;
pub(crate) use read::StoreRead;
pub(crate) use sql::{Snapshot, load};
pub(crate) use writer::{Committed, Writer};

use crate::store::StoreError;

/// Why the node's state could not be loaded, or its store thread started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row that does not decode: the node refuses to start rather than
    /// load it as something else (an empty group, a missing proof).
    #[error("the {table} row {row} is corrupt: {problem}")]
    CorruptRow {
        table: &'static str,
        /// The row's key, as `column=value`.
        row: String,
        problem: String,
    },
    #[error("cannot start the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}
