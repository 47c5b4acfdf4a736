//! What the client does with content it sends: the size a frame may have
//! (refused at compose time, never queued), what a node's refusal means for
//! the outbox (drop, or keep and retry later, and set aside after repeated
//! refusals so nothing waits behind it), and how an entry is named to the
//! user.

use std::time::Duration;

use super::events::OutboxEntry;
use super::keyring::{Outgoing, Waiting};
use crate::wire::MAX_CONTENT_FRAME_BYTES;
use crate::wire::messages::Message;

/// Room kept for what authenticates a frame and is added after the size
/// check: an RSA-4096 signature in base64 (684 bytes) or a `mac-v1` MAC and
/// sequence number.
pub const AUTH_ROOM: usize = 1024;
/// Transient refusals after which an entry is set aside (held) instead of
/// being sent again on its own.
pub const HOLD_AFTER: u32 = 5;
/// First wait before a transiently refused entry is sent again; doubles
/// with each refusal, up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// What a node's `ERROR` about content means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It will never be taken (`TOO_LARGE`, `USER_NOT_FOUND`,
    /// `NOT_ALLOWED`, `BAD_FRAME`, and codes we do not know): drop it.
    Permanent,
    /// It may be taken later (`QUOTA_EXCEEDED`, `STORAGE`, `RATE_LIMITED`):
    /// keep it and try again.
    Transient,
}

impl Refusal {
    pub fn of(code: &str) -> Refusal {
        match code {
            "QUOTA_EXCEEDED" | "STORAGE" | "RATE_LIMITED" => Refusal::Transient,
            _ => Refusal::Permanent,
        }
    }
}

/// The wait before the next try after `refusals` transient refusals.
pub fn retry_delay(refusals: u32) -> Duration {
    let factor = 1u32 << refusals.clamp(1, 6).saturating_sub(1);
    (RETRY_MIN * factor).min(RETRY_MAX)
}

/// Content too big for any node to take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} too long: {} bytes once encrypted, the limit is {}; {advice}",
    thousands(*size),
    thousands(*limit)
)]
pub struct TooLong {
    pub what: &'static str,
    pub size: usize,
    pub limit: usize,
    pub advice: &'static str,
}

/// Checks that `msg`, sent by `user` to `to` and authenticated, fits in
/// [`MAX_CONTENT_FRAME_BYTES`] (what a node accepts from a user, leaving
/// room for every hop); returns its size.
pub fn check_size(user: &str, to: &str, msg: &Message) -> Result<usize, TooLong> {
    let size = msg.into_envelope(user, to).to_json().len() + AUTH_ROOM;
    if size <= MAX_CONTENT_FRAME_BYTES {
        return Ok(size);
    }
    let (what, advice) = match msg {
        Message::GroupKeyShare(_) => ("key share", "name fewer members"),
        Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_) => {
            ("file frame", "this file cannot be sent")
        }
        _ => ("message", "split it"),
    };
    Err(TooLong {
        what,
        size,
        limit: MAX_CONTENT_FRAME_BYTES,
        advice,
    })
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What an outbox entry is, as events name it.
pub fn kind_name(frame_type: &str) -> &'static str {
    match frame_type {
        "MSG_PRIVATE" => "dm",
        "MSG_GROUP" => "group_msg",
        "GROUP_KEY_SHARE" => "group_key",
        _ => "content",
    }
}

/// Whom an entry is for, as the user named it (a key share goes to the
/// server but is for its group).
pub fn shown_to(out: &Outgoing) -> String {
    match out.payload.get("group_id").and_then(|g| g.as_str()) {
        Some(group) if out.to.starts_with("server_") => group.to_owned(),
        _ => out.to.clone(),
    }
}

/// An entry as `/outbox` lists it.
pub fn entry(w: &Waiting) -> OutboxEntry {
    OutboxEntry {
        msg_id: w.out.msg_id.clone(),
        kind: kind_name(&w.out.kind).to_owned(),
        to: shown_to(&w.out),
        last_error: w.last_error.clone(),
        held: w.held,
    }
}

/// The one entry `id` names: its full `msg_id` or a prefix of exactly one.
pub fn find<'a>(waiting: &'a [Waiting], id: &str) -> Result<&'a Waiting, String> {
    if let Some(w) = waiting.iter().find(|w| w.out.msg_id == id) {
        return Ok(w);
    }
    let matches: Vec<&Waiting> = waiting
        .iter()
        .filter(|w| !id.is_empty() && w.out.msg_id.starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("nothing in the outbox is {id}; /outbox lists it")),
        _ => Err(format!(
            "{id} names {} entries; give more of the id",
            matches.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::MsgGroup;

    #[test]
    fn refusals_sort_into_permanent_and_transient() {
        for code in [
            "TOO_LARGE",
            "USER_NOT_FOUND",
            "NOT_ALLOWED",
            "BAD_FRAME",
            "X",
        ] {
            assert_eq!(Refusal::of(code), Refusal::Permanent, "{code}");
        }
        for code in ["QUOTA_EXCEEDED", "STORAGE", "RATE_LIMITED"] {
            assert_eq!(Refusal::of(code), Refusal::Transient, "{code}");
        }
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn too_long_names_the_size_and_the_limit() {
        assert_eq!(thousands(917_504), "917,504");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(1_000), "1,000");
        let m = |n: usize| {
            Message::MsgGroup(MsgGroup {
                group_id: "group_x".into(),
                from: "alice".into(),
                ciphertext: "A".repeat(n),
                iv: String::new(),
                tag: String::new(),
                ts: 0,
                sender_pub: String::new(),
                content_sig: String::new(),
                content_ts: 0,
                msg_id: None,
                extra: Default::default(),
            })
        };
        assert!(check_size("alice", "group_x", &m(1000)).is_ok());
        let e = check_size("alice", "group_x", &m(MAX_CONTENT_FRAME_BYTES)).unwrap_err();
        assert!(e.size > MAX_CONTENT_FRAME_BYTES);
        let text = e.to_string();
        assert!(
            text.starts_with("message too long: ")
                && text.contains("the limit is 917,504; split it"),
            "{text}"
        );
    }
}
