//! The lock file beside a node's database (`DB.lock`): one node per
//! database, and `socp admin` edits of the directory wait until it stops.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file beside a node's database (`DB.lock`).
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock that says a node runs on `db`: one node per database, and
/// `socp admin` edits of the directory wait until it stops.
pub(super) fn lock_db(db: &Path) -> Result<std::fs::File> {
    let path = lock_path(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the database folder {}", dir.display()))?;
    }
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another socp node is running on {} (it holds {}); stop it first",
            db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
