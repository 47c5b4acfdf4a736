//! `socp admin`: the tables of a node's database for operators, and the
//! directory and admission edits they make. Reading is safe on a running
//! node (SQLite's WAL lets readers look while it writes); so is making an
//! invite (the master checks codes by their HMAC, not by reading). Removing
//! a user or resetting a key changes what a running node caches, so those
//! refuse while a node holds the database's lock.

use std::path::Path;

pub mod backup;
pub mod status;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use crate::crypto::PublicKey;
use crate::wire::now_ms;

/// Which table to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Users,
    Servers,
    Mailbox,
}

fn ago(ms: i64) -> String {
    let secs = ((now_ms() - ms) / 1000).max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m{}s ago", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m ago", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h ago", s / 86_400, (s % 86_400) / 3600),
    }
}

fn fingerprint(b64: &str) -> String {
    PublicKey::from_b64(b64)
        .map(|k| k.fingerprint())
        .unwrap_or_else(|_| "(unreadable key)".into())
}

fn print(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    let count = rows.len();
    for row in rows {
        println!("{}", line(row));
    }
    println!("({count} rows)");
}

/// Prints `table` of the node database at `db`.
pub fn show(db: &Path, table: Table) -> Result<()> {
    if !db.exists() {
        anyhow::bail!("{} does not exist; give the --db of the node", db.display());
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    check_node_db(&conn, db)?;
    let rows = match table {
        Table::Users => {
            let mut stmt = conn.prepare("SELECT user_id, pubkey, legacy, first_seen_ms, last_seen_ms FROM users ORDER BY user_id")?;
            let rows = stmt.query_map([], |r| {
                Ok(vec![
                    r.get::<_, String>(0)?,
                    fingerprint(&r.get::<_, String>(1)?),
                    if r.get::<_, i64>(2)? == 1 {
                        "legacy".into()
                    } else {
                        "signed".into()
                    },
                    ago(r.get(3)?),
                    ago(r.get(4)?),
                ])
            })?;
            let rows = rows.collect::<Result<Vec<_>, _>>()?;
            print(
                &[
                    "USER",
                    "KEY FINGERPRINT",
                    "HELLO",
                    "FIRST SEEN",
                    "LAST SEEN",
                ],
                rows,
            );
            return Ok(());
        }
        Table::Servers => {
            let mut stmt = conn.prepare("SELECT server_id, role, host, port, pubkey, last_seen_ms FROM servers ORDER BY role, server_id")?;
            let rows = stmt.query_map([], |r| {
                Ok(vec![
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    format!("{}:{}", r.get::<_, String>(2)?, r.get::<_, i64>(3)?),
                    fingerprint(&r.get::<_, String>(4)?),
                    ago(r.get(5)?),
                ])
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        }
        Table::Mailbox => {
            let mut stmt = conn.prepare(
                "SELECT dest_kind || ' ' || dest, COUNT(*), SUM(bytes), MIN(created_ms) FROM custody
                 GROUP BY dest_kind, dest ORDER BY COUNT(*) DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(vec![
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.to_string(),
                    r.get::<_, i64>(2)?.to_string(),
                    ago(r.get(3)?),
                ])
            })?;
            let rows = rows.collect::<Result<Vec<_>, _>>()?;
            print(&["DESTINATION", "FRAMES", "BYTES", "OLDEST"], rows);
            println!(
                "(frames in custody; on the master, those for users online nowhere are the offline mailbox)"
            );
            return Ok(());
        }
    };
    print(
        &["SERVER", "ROLE", "ADDRESS", "KEY FINGERPRINT", "LAST SEEN"],
        rows,
    );
    Ok(())
}

/// Says plainly when `db` is not a node's database (a client's keyring, or
/// another file) instead of failing on a missing table.
fn check_node_db(conn: &Connection, db: &Path) -> Result<()> {
    let has = |table: &str| -> Result<bool> {
        Ok(conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .with_context(|| format!("{} is not an SQLite database", db.display()))?
            > 0)
    };
    if has("users")? && has("custody")? {
        return Ok(());
    }
    if has("keyring")? {
        bail!(
            "{} is a client's keyring (socp client --keys), not a node database; give the --db of a node",
            db.display()
        );
    }
    bail!(
        "{} is not a socp node database (no users table); give the --db of a node",
        db.display()
    )
}

/// Opens an existing node database for writing, migrated to this binary's schema.
fn open_rw(db: &Path) -> Result<Connection> {
    if !db.exists() {
        bail!("{} does not exist; give the --db of the node", db.display());
    }
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    crate::store::migrate(&mut conn, crate::store::Schema::Node)
        .with_context(|| format!("migrating {}", db.display()))?;
    Ok(conn)
}

/// Takes the node's lock on `db`, or says that a node runs on it.
fn lock_stopped(db: &Path) -> Result<std::fs::File> {
    let path = crate::node::lock_path(db);
    let file = std::fs::File::create(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "a socp node is running on {} (it holds {}): stop it first, then run this again and restart it; \
             a running node keeps the directory in memory and would not see the change",
            db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Makes a one-use invite code on the master's database (safe while it runs).
pub fn make_invite(db: &Path) -> Result<String> {
    let conn = open_rw(db)?;
    let key = crate::node::policy::invite_key(&conn).context("reading the invite key")?;
    let code = crate::node::policy::new_invite(&key);
    conn.execute(
        "INSERT INTO invites (code, created_ms) VALUES (?1, ?2)",
        rusqlite::params![code, now_ms()],
    )
    .context("storing the invite")?;
    Ok(code)
}

/// An invite code as `socp admin invites` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub code: String,
    pub created_ms: i64,
    pub used_by: Option<String>,
    pub used_ms: Option<i64>,
}

/// The invite codes of a master's database, oldest first.
pub fn invites(db: &Path) -> Result<Vec<Invite>> {
    let conn = open_rw(db)?;
    let mut stmt = conn.prepare(
        "SELECT code, created_ms, used_by, used_ms FROM invites ORDER BY created_ms, code",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Invite {
            code: r.get(0)?,
            created_ms: r.get(1)?,
            used_by: r.get(2)?,
            used_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Prints the invite codes.
pub fn show_invites(db: &Path) -> Result<()> {
    let rows = invites(db)?
        .into_iter()
        .map(|i| {
            vec![
                i.code,
                ago(i.created_ms),
                i.used_by.unwrap_or_else(|| "(unused)".into()),
                i.used_ms.map(ago).unwrap_or_default(),
            ]
        })
        .collect();
    print(&["INVITE", "MADE", "USED BY", "USED"], rows);
    Ok(())
}

fn user_exists(conn: &Connection, user: &str) -> Result<()> {
    let found: Option<i64> = rusqlite::OptionalExtension::optional(conn.query_row(
        "SELECT 1 FROM users WHERE user_id = ?1",
        [user],
        |r| r.get(0),
    ))?;
    if found.is_none() {
        bail!("no user {user:?} in this directory (socp admin users lists them)");
    }
    Ok(())
}

/// Drops `user`'s pinned key, presence and proofs (what both removing a
/// user and resetting its key forget).
fn forget_user(tx: &rusqlite::Transaction<'_>, user: &str) -> Result<()> {
    tx.execute("DELETE FROM users WHERE user_id = ?1", [user])?;
    tx.execute("DELETE FROM presence WHERE user_id = ?1", [user])?;
    tx.execute("DELETE FROM proof_owners WHERE user_id = ?1", [user])?;
    Ok(())
}

/// Removes `user` from a stopped node's directory, with its presence and
/// mailbox: the id is free again.
pub fn remove_user(db: &Path, user: &str) -> Result<()> {
    let _lock = lock_stopped(db)?;
    let mut conn = open_rw(db)?;
    user_exists(&conn, user)?;
    let tx = conn.transaction()?;
    forget_user(&tx, user)?;
    tx.execute("DELETE FROM key_resets WHERE user_id = ?1", [user])?;
    let frames = tx.execute(
        "DELETE FROM custody WHERE dest_kind = 'user' AND dest = ?1",
        [user],
    )?;
    tx.commit()?;
    println!("removed {user} (and {frames} frames waiting for it)");
    Ok(())
}

/// Forgets `user`'s pinned key on a stopped node: its next hello pins a new one.
pub fn reset_key(db: &Path, user: &str) -> Result<()> {
    let _lock = lock_stopped(db)?;
    let mut conn = open_rw(db)?;
    user_exists(&conn, user)?;
    let tx = conn.transaction()?;
    forget_user(&tx, user)?;
    tx.execute(
        "INSERT OR REPLACE INTO key_resets (user_id, reset_ms) VALUES (?1, ?2)",
        rusqlite::params![user, now_ms()],
    )?;
    tx.commit()?;
    println!(
        "reset the key of {user}: its next hello pins a new key (run this on the master; locals learn it from the master)"
    );
    Ok(())
}

/// Lists an admit file's entries or, with `entry`, adds one.
pub fn admit(file: &Path, entry: Option<&str>) -> Result<()> {
    use crate::node::policy::{AdmitEntry, AdmitList};
    let list = if file.exists() {
        AdmitList::load(file)?
    } else {
        AdmitList::default()
    };
    let Some(entry) = entry else {
        for e in &list.entries {
            println!("{}", e.line());
        }
        println!("({} servers admitted)", list.entries.len());
        return Ok(());
    };
    let Some(parsed) = AdmitEntry::parse(entry) else {
        bail!(
            "{entry:?} is neither a server id nor a key fingerprint (64 hex digits, as `socp gen` prints it)"
        );
    };
    if list.entries.contains(&parsed) {
        println!(
            "{} is already admitted in {}",
            parsed.line(),
            file.display()
        );
        return Ok(());
    }
    use std::io::Write;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(f, "{sep}{}", parsed.line()).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "admitted {} in {} (nodes read it at every link hello)",
        parsed.line(),
        file.display()
    );
    Ok(())
}
