//! The wire format: envelope, canonical JSON, ids, base64url and the typed
//! message catalogue (PROTOCOL.md A and B).

pub mod announce;
pub mod b64;
pub mod canonical;
pub mod envelope;
pub mod ids;
pub mod messages;
mod payloads;
pub mod size;

pub use envelope::{
    ENVELOPE_ROOM, Envelope, ErrorCode, HELLO_FRESHNESS_MS, MAX_CONTENT_FRAME_BYTES,
    MAX_FRAME_BYTES, WireError, now_ms,
};
pub use messages::Message;
