//! What the client does with content it sends: the size a frame may have
//! (refused at compose time, never queued), what a node's refusal means for
//! the outbox (drop, or keep and retry later, and set aside after repeated
//! refusals so nothing waits behind it), and how an entry is named to the
//! user.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::events::OutboxEntry;
use super::keyring::{Outgoing, Waiting};
use crate::backoff::Backoff;
use crate::wire::messages::Message;
use crate::wire::{ErrorCode, MAX_CONTENT_FRAME_BYTES, ids};

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
const RETRY: Backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
/// The node's codes for a refusal that may not hold later.
const TRANSIENT: [ErrorCode; 3] = [
    ErrorCode::QuotaExceeded,
    ErrorCode::Storage,
    ErrorCode::RateLimited,
];

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
    /// What the code of a node's `ERROR` means (it may be one we do not know).
    pub fn of(code: &str) -> Refusal {
        if TRANSIENT.iter().any(|c| c.as_str() == code) {
            Refusal::Transient
        } else {
            Refusal::Permanent
        }
    }
}

/// The wait before the next try after `refusals` transient refusals.
pub fn retry_delay(refusals: u32) -> Duration {
    RETRY.delay(refusals)
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

/// The frame an outbox entry holds (None if it no longer parses).
pub fn message(out: &Outgoing) -> Option<Message> {
    Message::from_payload(&out.kind, out.payload.clone()).ok()
}

/// What content is, as events name it.
pub fn kind_name(msg: &Message) -> &'static str {
    match msg {
        Message::MsgPrivate(_) => "dm",
        Message::MsgGroup(_) => "group_msg",
        Message::GroupKeyShare(_) => "group_key",
        _ => "content",
    }
}

/// What an outbox entry is, as events name it.
pub fn entry_kind(out: &Outgoing) -> &'static str {
    message(out).map_or("content", |msg| kind_name(&msg))
}

/// Whom an entry is for, as the user named it (a key share goes to the
/// server but is for its group).
pub fn shown_to(out: &Outgoing) -> String {
    match out.payload.get("group_id").and_then(|g| g.as_str()) {
        Some(group) if out.to.starts_with(ids::SERVER_PREFIX) => group.to_owned(),
        _ => out.to.clone(),
    }
}

/// An entry as `/outbox` lists it.
pub fn entry(w: &Waiting) -> OutboxEntry {
    OutboxEntry {
        msg_id: w.out.msg_id.clone(),
        kind: entry_kind(&w.out).to_owned(),
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

/// How many sent `msg_id`s the client remembers for their receipts.
pub const SENT_REMEMBERED: usize = 100_000;

/// The `msg_id`s of content the node took from us lately (and whom each was
/// for), at most `limit`: receipts are shown only for these (and for what is
/// still in the outbox), and a refusal from further on names its recipient.
#[derive(Debug)]
pub struct SentIds {
    to: HashMap<String, String>,
    order: VecDeque<String>,
    limit: usize,
}

impl Default for SentIds {
    fn default() -> Self {
        SentIds::new(SENT_REMEMBERED)
    }
}

impl SentIds {
    pub fn new(limit: usize) -> SentIds {
        SentIds {
            to: HashMap::new(),
            order: VecDeque::new(),
            limit,
        }
    }

    /// Remembers `id`, for `to`, forgetting the oldest beyond the limit.
    pub fn insert(&mut self, id: &str, to: &str) {
        if self.to.insert(id.to_owned(), to.to_owned()).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.order.len() > self.limit {
            if let Some(old) = self.order.pop_front() {
                self.to.remove(&old);
            }
        }
    }

    /// Whom content we sent under `id` was for.
    pub fn recipient(&self, id: &str) -> Option<&str> {
        self.to.get(id).map(String::as_str)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.to.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::MsgGroup;

    #[test]
    fn refusals_sort_into_permanent_and_transient() {
        use ErrorCode::*;
        for code in [TooLarge, UserNotFound, NotAllowed, BadFrame] {
            assert_eq!(Refusal::of(code.as_str()), Refusal::Permanent, "{code}");
        }
        assert_eq!(Refusal::of("X"), Refusal::Permanent);
        for code in [QuotaExceeded, Storage, RateLimited] {
            assert_eq!(Refusal::of(code.as_str()), Refusal::Transient, "{code}");
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

    #[test]
    fn sent_ids_forget_the_oldest() {
        let mut sent = SentIds::new(2);
        sent.insert("a", "bob");
        sent.insert("b", "carol");
        sent.insert("a", "bob");
        assert_eq!(sent.recipient("a"), Some("bob"));
        sent.insert("c", "group_x");
        assert!(!sent.contains("a") && sent.contains("b") && sent.contains("c"));
        assert_eq!(sent.recipient("c"), Some("group_x"));
    }
}
