//! The limits a content frame must meet where it comes in (PROTOCOL.md
//! C12): it must fit every hop after this one, and name itself with a
//! bounded `msg_id`. What is refused here was never taken, so it is never
//! acknowledged either.

use serde_json::Value;

use crate::wire::messages::{Kind, MSG_ID};
use crate::wire::{ENVELOPE_ROOM, Envelope, ErrorCode, MAX_CONTENT_FRAME_BYTES, canonical};

/// The largest content frame a server may relay to us: a user's frame at its
/// limit plus what hops add (`user_id`, `sender`, a group's `recipients`).
pub const MAX_RELAYED_FRAME_BYTES: usize = MAX_CONTENT_FRAME_BYTES + ENVELOPE_ROOM * 3 / 4;

/// What a frame's envelope adds around its payload at most (type, from, to,
/// ts, an RSA signature or seq and MAC).
const ENVELOPE_HEADER: usize = 1024;

/// Longest `msg_id` a node takes: a uuid is 36 characters, a derived id 71.
pub const MAX_MSG_ID_LEN: usize = 128;

/// Why a content frame was refused at the edge.
pub(super) struct Refused {
    pub code: ErrorCode,
    pub detail: String,
    /// The `msg_id` it named, for an answer about that piece of content.
    pub msg_id: Option<String>,
}

/// Checks a frame before its payload is typed: `text` as received, `limit`
/// the largest content frame this peer may send. Frames without content
/// pass.
pub(super) fn check_content(env: &Envelope, text: &str, limit: usize) -> Result<(), Refused> {
    if !Kind::from_name(&env.kind).is_some_and(Kind::brings_content) {
        return Ok(());
    }
    let id = env.payload.get(MSG_ID);
    if let Some(detail) = bad_msg_id(id) {
        return Err(Refused {
            code: ErrorCode::BadFrame,
            detail,
            msg_id: None,
        });
    }
    // As the next hop will send it: canonical JSON escapes every non-ASCII
    // or control character (a DEL grows six-fold), and a hop adds its own
    // header.
    let size = text
        .len()
        .max(canonical::map_len(&env.payload) + ENVELOPE_HEADER);
    if size > limit {
        return Err(Refused {
            code: ErrorCode::TooLarge,
            detail: format!(
                "{} of {size} bytes (as servers pass it on) is over the {limit}-byte limit for content (1 MiB less room for what servers add on the way); it was not sent: make it smaller",
                env.kind.chars().take(32).collect::<String>(),
            ),
            msg_id: id.and_then(Value::as_str).map(str::to_owned),
        });
    }
    Ok(())
}

/// Why a content frame's `msg_id` is refused, if it is: it must be printable
/// ASCII of at most [`MAX_MSG_ID_LEN`] characters (ids travel in every ACK
/// and receipt, many to a frame: an unbounded one could push those past the
/// frame limit).
fn bad_msg_id(id: Option<&Value>) -> Option<String> {
    match id {
        None => None,
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_MSG_ID_LEN
                && s.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            None
        }
        Some(_) => Some(format!(
            "msg_id must be printable ASCII of 1 to {MAX_MSG_ID_LEN} characters (a uuid)"
        )),
    }
}
