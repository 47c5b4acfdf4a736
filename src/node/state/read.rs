//! What the router reads from the store as it goes, rather than keeping
//! it all in memory: a directory record, and whether content is already on
//! disk only. Reads see committed rows; what the router wrote and the
//! store has not committed yet the router still has in memory (see
//! `router/directory.rs`). A node reads through its own read-only SQLite
//! connection; the simulator and unit tests back it with memory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::node::custody::{Dest, Entry};
use crate::node::records::UserRecord;

/// The router's synchronous reads of committed rows.
pub(crate) trait StoreRead: Send {
    /// `id`'s directory record.
    fn user(&self, id: &str) -> rusqlite::Result<Option<UserRecord>>;
    /// True if a custody row for `sender`'s `msg_id` to `dest` is on disk.
    fn holds(&self, sender: &str, msg_id: &str, dest: &Dest) -> rusqlite::Result<bool>;
}

/// How a destination is stored: its `dest_kind` and `dest` columns.
pub(crate) fn dest_columns(dest: &Dest) -> (&'static str, &str) {
    match dest {
        Dest::User(u) => ("user", u),
        Dest::Server(s) => ("server", s),
    }
}

/// Reads through a read-only connection of its own (WAL lets it read
/// beside the store thread's writes).
pub(crate) struct SqliteRead {
    conn: Connection,
}

impl SqliteRead {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(SqliteRead { conn })
    }
}

impl StoreRead for SqliteRead {
    fn user(&self, id: &str) -> rusqlite::Result<Option<UserRecord>> {
        self.conn
            .prepare_cached("SELECT pubkey, legacy, first_seen_ms FROM users WHERE user_id = ?1")?
            .query_row([id], |r| {
                Ok(UserRecord {
                    pubkey: r.get(0)?,
                    legacy: r.get::<_, i64>(1)? != 0,
                    first_seen_ms: r.get(2)?,
                })
            })
            .optional()
    }

    fn holds(&self, sender: &str, msg_id: &str, dest: &Dest) -> rusqlite::Result<bool> {
        let (kind, dest) = dest_columns(dest);
        self.conn
            .prepare_cached(
                "SELECT 1 FROM custody WHERE msg_id = ?1 AND sender = ?2 AND dest_kind = ?3 AND dest = ?4 LIMIT 1",
            )?
            .query_row(params![msg_id, sender, kind, dest], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }
}

/// Rows in memory, shared with whoever writes them (the simulator's disk).
#[derive(Default)]
pub(crate) struct MemRows {
    pub users: HashMap<String, UserRecord>,
    pub custody: BTreeMap<u64, Entry>,
}

/// A [`StoreRead`] over [`MemRows`].
#[derive(Default, Clone)]
pub(crate) struct MemRead(pub Arc<Mutex<MemRows>>);

impl MemRead {
    /// A store holding these users and no custody rows.
    pub fn with_users(users: HashMap<String, UserRecord>) -> Self {
        MemRead(Arc::new(Mutex::new(MemRows {
            users,
            custody: BTreeMap::new(),
        })))
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, MemRows> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreRead for MemRead {
    fn user(&self, id: &str) -> rusqlite::Result<Option<UserRecord>> {
        Ok(self.rows().users.get(id).cloned())
    }

    fn holds(&self, sender: &str, msg_id: &str, dest: &Dest) -> rusqlite::Result<bool> {
        Ok(self
            .rows()
            .custody
            .values()
            .any(|e| e.msg_id == msg_id && e.sender == sender && &e.dest == dest))
    }
}
