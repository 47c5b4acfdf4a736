//! A small tmpfs for full-disk tests (tests run as root here and in CI);
//! where mounting is impossible, `mount` says so and the test returns.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tmpfs of a few MiB, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs for the full-disk test (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount for the full-disk test: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes to the filler file (appending, so a second call tops it up)
    /// until the filesystem is full.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

/// Folds the write-ahead log of `db` (open in a running node) into the
/// database and truncates it to nothing (`wal_checkpoint(TRUNCATE)`, which
/// moves pages, never changes what the database holds). Whether it worked
/// is read off the log's size.
fn truncate_wal(db: &Path) {
    checkpoint(db, "TRUNCATE");
}

/// Runs `PRAGMA wal_checkpoint(MODE)` on `db`; returns whether it folded
/// the whole log back.
fn checkpoint(db: &Path, mode: &str) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|busy| busy == 0)
}

impl Tmpfs {
    /// Fills the filesystem with the write-ahead log of the node database
    /// `db` empty, so that the node's next commit needs new space and fails.
    ///
    /// `fill` alone is not enough for that: once a checkpoint has folded the
    /// whole log back, SQLite writes the log again from its start, over
    /// pages the file already holds, and a commit that fits in them is
    /// written (and durable) on a full disk. A commit needs a header and a
    /// 4 KiB page frame, more than the one page an empty log can have
    /// gained from a write that failed.
    pub fn fill_with_empty_wal(&self, db: &Path) -> PathBuf {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        for _ in 0..20 {
            truncate_wal(db);
            let filler = self.fill();
            if std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
                return filler;
            }
            // The node wrote (or checkpointed) in between: room, and again.
            std::fs::remove_file(&filler).unwrap();
        }
        panic!(
            "the write-ahead log of {} never stayed empty while the disk filled",
            db.display()
        );
    }

    /// Fills the filesystem after folding the whole write-ahead log of `db`
    /// back (`wal_checkpoint(RESTART)`): the log keeps its pages, and the
    /// node's next commit is written over them from the log's start.
    pub fn fill_with_wal_room(&self, db: &Path) -> PathBuf {
        assert!(checkpoint(db, "RESTART"), "the log was not folded back");
        self.fill()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
