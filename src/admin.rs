//! `socp admin`: the tables of a node's database, read-only, for operators.
//! Safe on a running node: SQLite's WAL lets readers look while it writes.

use std::path::Path;

use anyhow::{Context, Result};
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
