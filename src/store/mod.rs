//! SQLite storage: an r2d2 pool of connections with the PRAGMAs set in the
//! pool's init hook, and the versioned migrations of `migrations/` applied at
//! open in one transaction.

use std::path::Path;
use std::time::Duration;

use include_dir::{Dir, include_dir};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use rusqlite_migration::{Migrations, SchemaVersion};

/// How long a connection waits for SQLite's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in a pool. SQLite has one writer; the rest serve reads.
pub const POOL_SIZE: u32 = 4;

static NODE_MIGRATIONS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations/node");
static CLIENT_MIGRATIONS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations/client");

/// Which database: a node's (master or local) or a client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Node,
    Client,
}

impl Schema {
    fn dir(self) -> &'static Dir<'static> {
        match self {
            Schema::Node => &NODE_MIGRATIONS,
            Schema::Client => &CLIENT_MIGRATIONS,
        }
    }

    /// The migrations of this schema, in order.
    pub fn migrations(self) -> Result<Migrations<'static>, StoreError> {
        Migrations::from_directory(self.dir()).map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// The schema version this binary writes.
    pub fn latest_version(self) -> usize {
        self.dir().dirs().count()
    }
}

/// What went wrong with a database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error(
        "database schema version {found} is newer than this socp understands ({supported}); \
         it was written by a newer socp: upgrade socp, or point --db at another file"
    )]
    TooNew { found: usize, supported: usize },
    #[error("cannot create the database folder {0}: {1}")]
    Dir(String, #[source] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A pool of connections to one database file.
pub type Pool = r2d2::Pool<SqliteConnectionManager>;

/// Sets the per-connection PRAGMAs (they do not persist in the file).
fn init_connection(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Applies every pending migration in one transaction, refusing a database
/// written by a newer binary.
pub fn migrate(conn: &mut Connection, schema: Schema) -> Result<(), StoreError> {
    let migrations = schema.migrations()?;
    let supported = schema.latest_version();
    let found = match migrations.current_version(conn) {
        Ok(SchemaVersion::NoneSet) => 0,
        Ok(SchemaVersion::Inside(v)) => v.get(),
        Ok(SchemaVersion::Outside(v)) => v.get(),
        Err(e) => return Err(StoreError::Migration(e.to_string())),
    };
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    migrations
        .to_latest(conn)
        .map_err(|e| StoreError::Migration(e.to_string()))
}

/// Opens (creating if needed) the database at `path`, migrated to the latest
/// schema, behind a connection pool.
pub fn open(path: &Path, schema: Schema) -> Result<Pool, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.display().to_string(), e))?;
    }
    let mut conn = Connection::open(path)?;
    init_connection(&mut conn)?;
    migrate(&mut conn, schema)?;
    drop(conn);
    let manager = SqliteConnectionManager::file(path).with_init(init_connection);
    Ok(r2d2::Pool::builder().max_size(POOL_SIZE).build(manager)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_apply_to_memory() {
        for schema in [Schema::Node, Schema::Client] {
            schema.migrations().unwrap().validate().unwrap();
            let mut conn = Connection::open_in_memory().unwrap();
            migrate(&mut conn, schema).unwrap();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version as usize, schema.latest_version());
            // Applying again is a no-op.
            migrate(&mut conn, schema).unwrap();
        }
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Schema::Node).unwrap();
        let newer = Schema::Node.latest_version() as i64 + 1;
        conn.pragma_update(None, "user_version", newer).unwrap();
        let err = migrate(&mut conn, Schema::Node).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer"));
    }

    #[test]
    fn opens_a_file_with_wal() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(&dir.path().join("sub/n.sqlite"), Schema::Node).unwrap();
        let conn = pool.get().unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }
}
