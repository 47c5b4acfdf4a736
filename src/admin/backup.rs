//! `socp admin backup` and `socp admin restore`: a consistent copy of a
//! node's database taken with SQLite's online backup API while the node
//! runs, and a checked, atomic put-back while it is stopped.
//!
//! A backup reads one snapshot (WAL lets the node keep writing meanwhile)
//! into a temporary file beside the output, checks it, fsyncs it and renames
//! it into place, so a half-written backup never carries the output's name.
//! A restore checks the backup (integrity, schema version) before it touches
//! the database, moves the old database (and its WAL) aside, and renames a
//! fresh copy into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::Schema;
use crate::wire::now_ms;

/// Times a backup step may find the source busy before giving up.
const BUSY_RETRIES: u32 = 100;
/// Pause between two tries on a busy source.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// Copy every page in one step: one read snapshot, so a busy node's writes
/// (which WAL lets go on meanwhile) never restart the copy.
const ALL_PAGES: std::ffi::c_int = -1;

/// What a backup holds, as the commands report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `PRAGMA user_version`: the last migration applied.
    pub version: usize,
    pub users: i64,
    pub servers: i64,
    /// Frames in custody (on a master, the offline mailbox among them).
    pub custody_frames: i64,
    pub custody_bytes: i64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "schema version {}, {} users, {} servers, {} frames in custody ({} bytes)",
            self.version, self.users, self.servers, self.custody_frames, self.custody_bytes
        )
    }
}

/// What `restore` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub summary: Summary,
    /// Where the database that was replaced now is (None: there was none).
    pub kept: Option<PathBuf>,
}

fn summarize(conn: &Connection) -> Result<Summary> {
    let count = |sql: &str| -> Result<i64> {
        conn.query_row(sql, [], |r| r.get(0))
            .with_context(|| format!("reading the backup ({sql})"))
    };
    Ok(Summary {
        version: user_version(conn)?,
        users: count("SELECT COUNT(*) FROM users")?,
        servers: count("SELECT COUNT(*) FROM servers")?,
        custody_frames: count("SELECT COUNT(*) FROM custody")?,
        custody_bytes: count("SELECT COALESCE(SUM(bytes), 0) FROM custody")?,
    })
}

fn user_version(conn: &Connection) -> Result<usize> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .context("reading the schema version")?;
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

/// `PRAGMA integrity_check`, which answers one row "ok" or the problems.
fn integrity_ok(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if rows != ["ok"] {
        bail!(
            "the integrity check failed: {}",
            rows.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(())
}

fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Copies `src` into `dst` page by page with the online backup API.
fn copy_pages(src: &Connection, dst: &mut Connection) -> Result<()> {
    let backup = Backup::new(src, dst).context("starting the online backup")?;
    for _ in 0..BUSY_RETRIES {
        match backup.step(ALL_PAGES).context("copying pages")? {
            StepResult::Done => return Ok(()),
            // More (cannot happen with ALL_PAGES), Busy, Locked: try again.
            _ => std::thread::sleep(BUSY_PAUSE),
        }
    }
    bail!(
        "the database stayed busy for {:?}; try again",
        BUSY_PAUSE * BUSY_RETRIES
    )
}

/// Copies `src` into a new temporary file in `dir`, as one self-contained
/// file (rollback journal, no WAL beside it), checked and fsynced.
fn copy_to_temp(src: &Connection, dir: &Path) -> Result<(tempfile::NamedTempFile, Summary)> {
    let tmp = tempfile::Builder::new()
        .prefix(".socp-copy-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let summary = {
        let mut dst = Connection::open(tmp.path())
            .with_context(|| format!("opening {}", tmp.path().display()))?;
        copy_pages(src, &mut dst)?;
        // The copied header says WAL if the source was; one file is what a
        // backup should be.
        dst.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))
            .context("switching the copy to a rollback journal")?;
        integrity_ok(&dst).context("checking the copy")?;
        summarize(&dst)?
    };
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("fsyncing {}", tmp.path().display()))?;
    Ok((tmp, summary))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsyncing the folder {}", dir.display()))?;
    Ok(())
}

/// `path` with `suffix` appended to its file name (`DB-wal`, `DB.lock`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Copies the node database `db` to `out` (replacing it), safe while the
/// node runs: the copy is one snapshot of committed transactions.
pub fn backup(db: &Path, out: &Path) -> Result<Summary> {
    if !db.exists() {
        bail!("{} does not exist; give the --db of the node", db.display());
    }
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(db).ok() {
        bail!("--out {} is the database itself", out.display());
    }
    let src = open_read_only(db)?;
    let dir = parent_dir(out);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (tmp, summary) =
        copy_to_temp(&src, &dir).with_context(|| format!("backing up {}", db.display()))?;
    tmp.persist(out)
        .with_context(|| format!("renaming the backup to {}", out.display()))?;
    sync_dir(&dir)?;
    Ok(summary)
}

/// Checks that `file` is a sound node database this binary can run: the
/// integrity check passes and its schema is not newer than ours.
pub fn check(file: &Path) -> Result<Summary> {
    if !file.exists() {
        bail!("{} does not exist", file.display());
    }
    let conn = open_read_only(file)?;
    integrity_ok(&conn)
        .with_context(|| format!("{} is not a sound SQLite database", file.display()))?;
    let supported = Schema::Node.latest_version();
    let version = user_version(&conn)?;
    if version == 0 {
        bail!(
            "{} has no socp schema (user_version 0): not a node database backup",
            file.display()
        );
    }
    if version > supported {
        bail!(
            "{} has schema version {version}, newer than this socp understands ({supported}); \
             restore it with the socp that wrote it, or upgrade socp",
            file.display()
        );
    }
    summarize(&conn).with_context(|| format!("{} is not a node database", file.display()))
}

/// Puts the backup `from` in place of the stopped node's database `db`.
pub fn restore(from: &Path, db: &Path) -> Result<Restored> {
    check(from)?;
    let dir = parent_dir(db);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = super::lock_stopped(db)?;
    let src = open_read_only(from)?;
    let (tmp, summary) =
        copy_to_temp(&src, &dir).with_context(|| format!("copying {}", from.display()))?;
    drop(src);

    // The old database stays readable beside the new one, with its WAL (a
    // WAL left beside the new file would be replayed into it).
    let wal = with_suffix(db, "-wal");
    let kept = if db.exists() {
        let aside = with_suffix(db, &format!(".before-restore-{}", now_ms()));
        if std::fs::hard_link(db, &aside).is_err() {
            std::fs::copy(db, &aside)
                .with_context(|| format!("keeping the old database as {}", aside.display()))?;
        }
        if wal.exists() {
            std::fs::rename(&wal, with_suffix(&aside, "-wal"))
                .with_context(|| format!("moving {} aside", wal.display()))?;
        }
        Some(aside)
    } else {
        None
    };
    for stale in [wal, with_suffix(db, "-shm")] {
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", stale.display())),
        }
    }
    tmp.persist(db)
        .with_context(|| format!("renaming the copy to {}", db.display()))?;
    sync_dir(&dir)?;
    Ok(Restored { summary, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_db(path: &Path) {
        let pool = crate::store::open(path, Schema::Node).unwrap();
        let conn = pool.get().unwrap();
        conn.execute(
            "INSERT INTO custody (msg_id, dest_kind, dest, kind, sender, payload, bytes, created_ms)
             VALUES ('m1', 'user', 'bob', 'DELIVER', 'alice', '{}', 7, 1)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn backup_then_restore_round_trips_and_keeps_the_old_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.sqlite");
        node_db(&db);
        let out = dir.path().join("b/backup.sqlite");
        let summary = backup(&db, &out).unwrap();
        assert_eq!(summary.custody_frames, 1);
        assert_eq!(summary.custody_bytes, 7);
        assert_eq!(summary.version, Schema::Node.latest_version());
        assert!(!with_suffix(&out, "-wal").exists());

        let restored = restore(&out, &db).unwrap();
        assert_eq!(restored.summary, summary);
        let kept = restored.kept.unwrap();
        assert!(kept.exists());
        assert!(!with_suffix(&db, "-wal").exists());
        assert_eq!(check(&db).unwrap().custody_frames, 1);
    }

    #[test]
    fn restore_refuses_a_corrupt_file_and_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("node.sqlite");
        let junk = dir.path().join("junk.sqlite");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        let err = restore(&junk, &db).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a sound SQLite database"),
            "{err:#}"
        );
        assert!(!db.exists());

        let newer = dir.path().join("newer.sqlite");
        node_db(&newer);
        let conn = Connection::open(&newer).unwrap();
        let v = Schema::Node.latest_version() as i64 + 1;
        conn.pragma_update(None, "user_version", v).unwrap();
        drop(conn);
        let err = restore(&newer, &db).unwrap_err();
        assert!(
            format!("{err:#}").contains("newer than this socp"),
            "{err:#}"
        );
        assert!(!db.exists());

        let empty = dir.path().join("empty.sqlite");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = restore(&empty, &db).unwrap_err();
        assert!(format!("{err:#}").contains("no socp schema"), "{err:#}");
    }
}
