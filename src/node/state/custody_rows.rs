//! How custody entries are kept in the `custody` table: the one place their
//! rows are written, counted at start (no row is loaded) and read back (a
//! destination's rows in order, a page at a time, when it can be sent to;
//! the bodies of entries in memory whose body left it).

use std::sync::Arc;

use rusqlite::{Connection, Transaction, params};
use serde_json::{Map, Value};

use crate::node::custody::{Content, ContentKind, Dest, Entry, OnDisk, Summary};

/// Custody bodies read back from disk, by `seq` (None: no such row, or one
/// whose body does not read; the router drops it either way).
pub(crate) type Bodies = Vec<(u64, Option<Arc<Map<String, Value>>>)>;

/// Writes one custody entry, its body with it.
pub(super) fn insert(tx: &Transaction<'_>, e: &Entry) -> rusqlite::Result<()> {
    let (dest_kind, dest) = match &e.dest {
        Dest::User(u) => ("user", u),
        Dest::Server(s) => ("server", s),
    };
    let payload = serde_json::to_string(&e.body.as_deref()).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO custody (seq, msg_id, dest_kind, dest, kind, to_id, via, sender, payload, bytes, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.seq as i64,
        e.msg_id,
        dest_kind,
        dest,
        e.kind,
        e.to,
        e.via,
        e.sender,
        payload,
        e.bytes as i64,
        e.created_ms
    ])?;
    Ok(())
}

/// What custody holds, counted per destination and per sender without
/// reading a row (index scans: see migration 05). Every destination starts
/// on disk only.
pub(super) fn summary(conn: &Connection) -> rusqlite::Result<Summary> {
    let mut stmt = conn.prepare(
        "SELECT dest_kind, dest, count(*), sum(bytes), min(created_ms), max(seq)
         FROM custody INDEXED BY custody_by_dest GROUP BY dest_kind, dest",
    )?;
    let mut max_seq = 0u64;
    let dests = stmt
        .query_map([], |r| {
            let upto = r.get::<_, i64>(5)? as u64;
            Ok((
                dest_of(&r.get::<_, String>(0)?, r.get(1)?),
                OnDisk {
                    frames: r.get::<_, i64>(2)? as usize,
                    bytes: r.get::<_, i64>(3)? as usize,
                    oldest_ms: r.get(4)?,
                    after: 0,
                    upto,
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (_, d) in &dests {
        max_seq = max_seq.max(d.upto);
    }
    let mut stmt = conn.prepare(
        "SELECT sender, count(*), sum(bytes) FROM custody INDEXED BY custody_by_sender GROUP BY sender",
    )?;
    let senders = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as usize,
                r.get::<_, i64>(2)? as usize,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Summary {
        dests,
        senders,
        max_seq,
    })
}

fn dest_of(kind: &str, dest: String) -> Dest {
    if kind == "server" {
        Dest::Server(dest)
    } else {
        Dest::User(dest)
    }
}

/// `dest`'s rows with `seq` in `(after, upto]`, in order, at most `limit`,
/// with their bodies, and whether that was the last of them. A row whose
/// body does not read comes without one (logged): the router drops it.
pub(crate) fn read_rows(
    conn: &Connection,
    dest: &Dest,
    after: u64,
    upto: u64,
    limit: usize,
) -> rusqlite::Result<(Vec<Entry>, bool)> {
    let (kind, name) = super::read::dest_columns(dest);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, msg_id, kind, to_id, via, sender, payload, bytes, created_ms
         FROM custody WHERE dest_kind = ?1 AND dest = ?2 AND seq > ?3 AND seq <= ?4
         ORDER BY seq LIMIT ?5",
    )?;
    let mut rows = stmt.query(params![kind, name, after as i64, upto as i64, limit as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let kind: ContentKind = r.get(2)?;
        let payload = r.get_ref(6)?.as_str()?;
        let body = serde_json::from_str::<Map<String, Value>>(payload)
            .map_err(|e| e.to_string())
            .and_then(|m| Content::from_payload(kind, m).map_err(|e| e.log_summary().to_string()));
        let body = match body {
            Ok(b) => Some(Arc::new(b)),
            Err(problem) => {
                tracing::error!(table = "custody", seq, %problem, "corrupt row: its payload is not the content it says");
                None
            }
        };
        out.push(Entry {
            seq,
            msg_id: r.get(1)?,
            dest: dest.clone(),
            kind,
            body,
            to: r.get(3)?,
            via: r.get(4)?,
            sender: r.get(5)?,
            bytes: r.get::<_, i64>(7)? as usize,
            created_ms: r.get(8)?,
            mailbox: false,
        });
    }
    let done = out.len() < limit;
    Ok((out, done))
}

/// Reads custody bodies back from disk. A body that does not read as a
/// JSON object is logged with its row and comes back as None.
pub(super) fn read_bodies(conn: &Connection, seqs: &[u64]) -> rusqlite::Result<Bodies> {
    let mut stmt = conn.prepare_cached("SELECT payload FROM custody WHERE seq = ?1")?;
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let text: Option<String> = stmt
            .query_row([seq as i64], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let body = text
            .and_then(|t| {
                serde_json::from_str(&t)
                    .inspect_err(|e| {
                        tracing::error!(table = "custody", seq, error = %e, "corrupt row: its payload is not a JSON object");
                    })
                    .ok()
            })
            .map(Arc::new);
        out.push((seq, body));
    }
    Ok(out)
}
