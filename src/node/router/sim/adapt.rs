//! The one place the simulator (and the router's unit tests) touch the
//! router's frame and custody types: `Outgoing`, custody `Entry`, the
//! store's bodies, pages of rows, counts and failures. When those change, only this file follows;
//! everything else works on envelopes, as they travel on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::super::{ConnId, Input, Outgoing, StoreFailure, StoreOp};
use crate::node::custody::{Dest, Entry, OnDisk, Summary};
use crate::node::policy::PolicyOp;
use crate::node::state::{MemRead, RowsAsk, RowsRead};
use crate::wire::Envelope;
use crate::wire::messages::Kind;

/// The frame type of an outgoing frame.
pub(crate) fn kind_of(out: &Outgoing) -> Kind {
    out.kind()
}

/// The `to` of an outgoing frame.
pub(crate) fn to_of(out: &Outgoing) -> &str {
    &out.to
}

/// The payload of an outgoing frame, as it goes on the wire.
pub(crate) fn payload_of(out: &Outgoing) -> Map<String, Value> {
    out.payload()
}

/// The envelope a connection writes for `out`, from server `me` at `ts`
/// (unsigned: the simulator's links carry frames that would verify).
pub(crate) fn envelope_of(out: Outgoing, me: &str, ts: i64) -> Envelope {
    let mut env = out.into_envelope(me);
    env.ts = ts;
    env
}

/// A custody entry's sequence number (its row).
pub(crate) fn seq_of(e: &Entry) -> u64 {
    e.seq
}

/// What the store counts at start: every destination's rows on disk only.
pub(crate) fn summary(rows: &BTreeMap<u64, Entry>) -> Summary {
    let mut dests: BTreeMap<Dest, OnDisk> = BTreeMap::new();
    let mut senders: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in rows.values() {
        let d = dests.entry(e.dest.clone()).or_insert(OnDisk {
            oldest_ms: i64::MAX,
            ..Default::default()
        });
        d.frames += 1;
        d.bytes += e.bytes;
        d.oldest_ms = d.oldest_ms.min(e.created_ms);
        d.upto = d.upto.max(e.seq);
        let s = senders.entry(e.sender.clone()).or_default();
        s.0 += 1;
        s.1 += e.bytes;
    }
    Summary {
        max_seq: rows.keys().next_back().copied().unwrap_or(0),
        dests: dests.into_iter().collect(),
        senders: senders.into_iter().map(|(s, (f, b))| (s, f, b)).collect(),
    }
}

/// The store's answer to `LoadRows`: a page of a destination's rows.
pub(crate) fn rows_read(rows: &BTreeMap<u64, Entry>, ask: RowsAsk) -> Input {
    let page: Vec<Entry> = rows
        .range(ask.after + 1..=ask.upto.max(ask.after))
        .map(|(_, e)| e)
        .filter(|e| e.dest == ask.dest)
        .take(ask.limit)
        .cloned()
        .collect();
    let done = page.len() < ask.limit;
    Input::RowsRead(RowsRead {
        ask,
        rows: Some((page, done)),
    })
}

/// Keeps the rows the router reads (users, custody) in step with `op`.
pub(crate) fn mirror(read: &MemRead, op: &StoreOp) {
    let mut rows = read.0.lock().unwrap_or_else(|e| e.into_inner());
    match op {
        StoreOp::PinUser(id, rec) => {
            rows.users.entry(id.clone()).or_insert_with(|| rec.clone());
        }
        StoreOp::Policy(PolicyOp::ReplaceKey { user, pubkey }) => {
            if let Some(rec) = rows.users.get_mut(user) {
                rec.pubkey = pubkey.as_str().into();
            }
        }
        StoreOp::Custody(e) => {
            rows.custody.insert(e.seq, e.clone());
        }
        StoreOp::Release(seqs) => {
            for seq in seqs {
                rows.custody.remove(seq);
            }
        }
        _ => {}
    }
}

/// The store's answer to `LoadBodies`: the bodies of these rows, read
/// back from `rows` (None for a row that is not there).
pub(crate) fn bodies_read(rows: &BTreeMap<u64, Entry>, seqs: &[u64]) -> Input {
    let bodies = seqs
        .iter()
        .map(|seq| {
            let body = rows.get(seq).and_then(|e| e.body.as_ref());
            (*seq, body.map(|b| Arc::new(b.to_payload())))
        })
        .collect();
    Input::BodiesRead {
        bodies,
        unread: Vec::new(),
    }
}

/// The store's report of a batch it could not write: these custody rows,
/// these pins, and the acknowledgements (connection, peer, msg_id) that
/// waited for them.
pub(crate) fn store_failed(
    custody: Vec<u64>,
    users: Vec<String>,
    acks: Vec<(ConnId, String, String)>,
) -> Input {
    Input::StoreFailed(StoreFailure {
        custody,
        users,
        acks: acks
            .into_iter()
            .map(|(conn, to, msg_id)| crate::node::state::PendingAck { conn, to, msg_id })
            .collect(),
        error: "the disk is full (simulated)".to_owned(),
    })
}
