//! The journal of content shown: one line per `msg_id`, appended right after
//! the content is shown. A kill between showing and recording is then a
//! window of one system call, not of an SQLite transaction, so a message is
//! not shown twice after a crash (and never lost: it is recorded only once
//! shown). The keyring takes the journal's ids in at the next start.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Ids shown since the keyring last took them in.
pub struct Journal {
    path: PathBuf,
    file: File,
    ids: HashSet<String>,
}

impl Journal {
    /// Opens the journal at `path`; returns it and the ids a previous run
    /// recorded but did not hand to the keyring.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Vec<String>)> {
        let left: Vec<String> = match File::open(path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                ids: HashSet::new(),
            },
            left,
        ))
    }

    /// Records `msg_id` as shown: one `write` of one line.
    pub fn record(&mut self, msg_id: &str) -> std::io::Result<()> {
        let line = format!("{}\n", msg_id.replace('\n', " "));
        self.file.write_all(line.as_bytes())?;
        self.ids.insert(msg_id.to_owned());
        Ok(())
    }

    /// True if `msg_id` was recorded in this run.
    pub fn contains(&self, msg_id: &str) -> bool {
        self.ids.contains(msg_id)
    }

    /// Ids recorded in this run.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True if nothing was recorded in this run.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids recorded in this run, for the keyring to store.
    pub fn ids(&self) -> Vec<String> {
        self.ids.iter().cloned().collect()
    }

    /// Forgets the ids (and empties the file) once the keyring has stored
    /// them: never before, or a crash in between would lose them.
    pub fn stored(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.ids.clear();
        Ok(())
    }

    /// Empties the file once its leftover ids are stored.
    pub fn clear_file(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_a_restart_until_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.shown");
        let (mut j, left) = Journal::open(&path).unwrap();
        assert!(left.is_empty());
        j.record("a").unwrap();
        j.record("b").unwrap();
        assert!(j.contains("a"));
        drop(j);
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, ["a", "b"]);
        j.clear_file().unwrap();
        j.record("c").unwrap();
        assert_eq!(j.ids(), ["c"]);
        drop(j);
        // Not yet stored: still there after a crash.
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, ["c"]);
        j.stored().unwrap();
        drop(j);
        assert!(Journal::open(&path).unwrap().1.is_empty());
    }
}
