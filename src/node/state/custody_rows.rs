//! How custody entries are kept in the `custody` table: the one place their
//! rows are written, loaded at start (without their bodies) and read back
//! (their bodies, a page at a time, when they are next to be sent).

use std::sync::Arc;

use rusqlite::{Connection, Transaction, params};
use serde_json::{Map, Value};

use crate::node::custody::{Dest, Entry};

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

/// Every custody entry, in order, without its body: bodies stay on disk
/// and are read back in pages when they are sent.
pub(super) fn load(conn: &Connection) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, msg_id, dest_kind, dest, kind, to_id, via, sender, bytes, created_ms
         FROM custody ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let dest: String = r.get(3)?;
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            msg_id: r.get(1)?,
            dest: if r.get::<_, String>(2)? == "server" {
                Dest::Server(dest)
            } else {
                Dest::User(dest)
            },
            kind: r.get(4)?,
            to: r.get(5)?,
            via: r.get(6)?,
            sender: r.get(7)?,
            body: None,
            bytes: r.get::<_, i64>(8)? as usize,
            created_ms: r.get(9)?,
        })
    })?;
    rows.collect()
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
