//! The one place the simulator (and the router's unit tests) touch the
//! router's frame and custody types: `Outgoing`, custody `Entry`, the
//! store's bodies and failures. When those change, only this file follows;
//! everything else works on envelopes, as they travel on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::super::{ConnId, Input, Outgoing, StoreFailure};
use crate::node::custody::Entry;
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

/// The entry as the store loads it at start: without its body.
pub(crate) fn without_body(mut e: Entry) -> Entry {
    e.body = None;
    e
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
