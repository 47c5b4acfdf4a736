//! What the client tells its user, as values, and the JSON front end that
//! prints them as one object per line (the terminal's lines are in
//! [`super::terminal`]).

use std::io::Write;

use serde::Serialize;

use super::codes::ClientCode;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Connected {
        user: String,
        server: String,
    },
    Disconnected {
        reason: String,
    },
    /// The next try at connecting: which, when, and why the last try (or
    /// the connection) failed.
    Reconnecting {
        attempt: u32,
        in_ms: u64,
        reason: String,
    },
    /// One page of who is online (PROTOCOL.md C13: the node's answer is
    /// bounded).
    List {
        users: Vec<String>,
        /// The `/list PREFIX` searched for.
        #[serde(skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Users online (matching the prefix), when the node says (a
        /// reference node does not).
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        /// `total` is a lower bound (a search counts only so far).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        at_least: bool,
        /// More users follow this page: `/more` lists them.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    Pubget {
        pubkey: String,
        fingerprint: String,
    },
    Pubkey {
        user: String,
        found: bool,
        fingerprint: Option<String>,
    },
    Sent {
        kind: &'static str,
        to: String,
        msg_id: String,
    },
    /// Queued: kept in the outbox while not connected, sent when the
    /// connection is back. No `msg_id` yet for a command that waits for the
    /// recipient's key (looked up once connected).
    Pending {
        #[serde(skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
        to: String,
        reason: String,
    },
    /// The node refused content (`ERROR` naming its `msg_id`): it was not
    /// sent. `kept`: still in the outbox for a later try (a transient
    /// refusal: `QUOTA_EXCEEDED`, `STORAGE`, `RATE_LIMITED`); otherwise
    /// dropped from it.
    NotSent {
        msg_id: String,
        to: String,
        code: String,
        detail: String,
        kept: bool,
    },
    /// What `/outbox` lists: content waiting for the node's `ACK`.
    Outbox {
        entries: Vec<OutboxEntry>,
    },
    /// What became of a sent DM: `queued` (recipient offline, in the
    /// mailbox), `delivered` (their client has it) or `undecryptable`
    /// (their client has it and could not decrypt it: failed).
    Delivery {
        msg_id: String,
        status: String,
        /// Whom it was for, as we sent it (when we still know).
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// The file's name, when it is a file we sent (and still know).
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    Dm {
        from: String,
        text: String,
        verified: bool,
        msg_id: String,
    },
    GroupKey {
        group: String,
        from: String,
        verified: bool,
    },
    /// A key share for a group whose pinned owner is someone else (or that
    /// does not verify with the owner's key) was not adopted (C10).
    GroupKeyRefused {
        group: String,
        from: String,
        owner: String,
        reason: String,
    },
    GroupMsg {
        group: String,
        from: String,
        text: String,
        verified: bool,
        msg_id: String,
    },
    File {
        from: Option<String>,
        mode: &'static str,
        group: Option<String>,
        name: String,
        path: String,
        size: u64,
        sha256_ok: bool,
        verified: bool,
    },
    Progress {
        direction: &'static str,
        name: String,
        done: u64,
        total: u64,
    },
    KeyChanged {
        user: String,
        old: String,
        new: String,
    },
    /// Content that was not shown at all (for example: its sender is not a
    /// valid user id).
    Dropped {
        from: String,
        reason: String,
    },
    /// The pinned key's fingerprint, and the directory's new one if it
    /// changed and waits for `/trust`.
    Fingerprint {
        user: String,
        fingerprint: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pending: Option<String>,
    },
    Trusted {
        user: String,
        fingerprint: String,
    },
    Help {
        text: String,
    },
    Error {
        code: String,
        detail: String,
    },
}

/// The `RECEIPT` status for content its recipient's client could not
/// decrypt.
pub use crate::wire::messages::UNDECRYPTABLE;

/// One entry of `/outbox`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub msg_id: String,
    /// What it is: `dm`, `group_msg`, `group_key`.
    pub kind: String,
    pub to: String,
    /// Why the node last refused it, if it did.
    pub last_error: Option<String>,
    /// Set aside after refusals: not sent again on its own.
    pub held: bool,
}

impl Event {
    /// A failure the client found, with its code (`USAGE`, `NO_KEY`,
    /// `FILE`, ...).
    pub fn error(code: ClientCode, detail: impl Into<String>) -> Event {
        Event::Error {
            code: code.to_string(),
            detail: detail.into(),
        }
    }
}

/// Where events go.
pub trait Frontend: Send {
    fn emit(&mut self, event: &Event);

    /// An event caused by the command the caller named `id` (the JSON
    /// command form); front ends that show no ids ignore it.
    fn emit_for(&mut self, event: &Event, id: Option<&str>) {
        let _ = id;
        self.emit(event);
    }
}

/// `--json`: one JSON object per line on stdout, nothing else there.
pub struct JsonFrontend;

impl Frontend for JsonFrontend {
    fn emit(&mut self, event: &Event) {
        self.emit_for(event, None);
    }

    fn emit_for(&mut self, event: &Event, id: Option<&str>) {
        if matches!(event, Event::Progress { .. }) {
            return;
        }
        let Ok(mut value) = serde_json::to_value(event) else {
            return;
        };
        if let (Some(id), Some(obj)) = (id, value.as_object_mut()) {
            obj.insert("id".into(), serde_json::Value::String(id.to_owned()));
        }
        let line = value.to_string();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

pub use super::terminal::TerminalFrontend;
