//! Readiness for a supervisor: what `/readyz` on the `--metrics` address
//! checks. The store thread and the master's dialer report here as they
//! go; a probe reads the figures and the database's filesystem, never
//! waiting on the store.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A failed store write keeps the node unready this long, unless a later
/// commit succeeds first (an idle node has no later commit: the free-space
/// check then speaks for the disk).
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30);
/// Below this many free bytes on the database's filesystem the store counts
/// as unwritable: SQLite needs room for its WAL before a commit can land.
pub const MIN_FREE_BYTES: u64 = 64 * 1024;

/// What the node's parts report about themselves.
#[derive(Debug)]
pub(crate) struct Health {
    db: PathBuf,
    store_alive: AtomicBool,
    /// The last failed commit, until a later one succeeds.
    store_failure: Mutex<Option<(Instant, String)>>,
    /// `None` on a master; on a local, whether the master link is up.
    master_link: Option<AtomicBool>,
}

impl Health {
    /// A node about to start: its store thread is alive, and a local has
    /// no master link yet.
    pub fn new(db: &Path, master: bool) -> Self {
        Health {
            db: db.to_owned(),
            store_alive: AtomicBool::new(true),
            store_failure: Mutex::new(None),
            master_link: (!master).then(|| AtomicBool::new(false)),
        }
    }

    /// The store thread reports each commit.
    pub fn store_committed(&self, result: Result<(), String>) {
        if let Ok(mut f) = self.store_failure.lock() {
            *f = result.err().map(|e| (Instant::now(), e));
        }
    }

    /// The store thread reports that it stopped (or panicked).
    pub fn store_stopped(&self) {
        self.store_alive.store(false, Ordering::Relaxed);
    }

    /// The master's dialer reports the link going up or down.
    pub fn master_linked(&self, up: bool) {
        if let Some(link) = &self.master_link {
            link.store(up, Ordering::Relaxed);
        }
    }

    /// Why the node is not ready, one short reason a line; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.store_alive.load(Ordering::Relaxed) {
            why.push("store: the store thread has stopped".to_owned());
        }
        if let Ok(f) = self.store_failure.lock()
            && let Some((at, error)) = f.as_ref()
            && at.elapsed() < FAILURE_MEMORY
        {
            why.push(format!(
                "store: the last write failed {} s ago: {error}",
                at.elapsed().as_secs()
            ));
        }
        if let Some(problem) = filesystem_problem(&self.db) {
            why.push(format!("store: {problem}"));
        }
        if let Some(link) = &self.master_link
            && !link.load(Ordering::Relaxed)
        {
            why.push("master: no link to the master (--master-url)".to_owned());
        }
        why
    }
}

/// A full or read-only filesystem under the database, if it is one.
#[cfg(unix)]
fn filesystem_problem(db: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` is a buffer of the
    // right type; statvfs only writes into it.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Some(format!("cannot inspect {}: {e}", dir.display()));
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    if st.f_flag & libc::ST_RDONLY != 0 {
        return Some(format!("{} is on a read-only filesystem", dir.display()));
    }
    // The field types vary by platform (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    (free < MIN_FREE_BYTES).then(|| {
        format!(
            "no space left for the database in {} ({free} bytes free)",
            dir.display()
        )
    })
}

#[cfg(not(unix))]
fn filesystem_problem(_db: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_with_a_working_store_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let h = Health::new(&dir.path().join("n.sqlite"), true);
        assert!(h.not_ready().is_empty(), "{:?}", h.not_ready());
        h.master_linked(false);
        assert!(h.not_ready().is_empty(), "a master has no master link");
    }

    #[test]
    fn a_local_is_ready_only_with_its_master_link() {
        let dir = tempfile::tempdir().unwrap();
        let h = Health::new(&dir.path().join("n.sqlite"), false);
        assert!(h.not_ready()[0].starts_with("master:"));
        h.master_linked(true);
        assert!(h.not_ready().is_empty());
        h.master_linked(false);
        assert_eq!(h.not_ready().len(), 1);
    }

    #[test]
    fn a_failed_write_counts_until_a_commit_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let h = Health::new(&dir.path().join("n.sqlite"), true);
        h.store_committed(Err("database or disk is full".into()));
        let why = h.not_ready();
        assert!(why[0].contains("database or disk is full"), "{why:?}");
        h.store_committed(Ok(()));
        assert!(h.not_ready().is_empty());
        h.store_stopped();
        assert!(h.not_ready()[0].contains("stopped"));
    }
}
