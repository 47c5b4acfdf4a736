//! The payload of every SOCP message type (PROTOCOL.md A5 and B), one
//! struct each. Each keeps the fields it does not know in `extra`, so a
//! frame parsed and written again has the same canonical payload, and so
//! the same signature. `messages.rs` names them in its catalogue and
//! re-exports them: code outside the wire module reaches them as
//! `wire::messages::X`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::envelope::ErrorCode;

/// Fields this version does not know, kept as received.
pub type Extra = Map<String, Value>;

/// Link-session offer carried in an acceptor's answer (PROTOCOL.md B, `mac-v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOffer {
    pub cap: String,
    pub wrapped: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A user's signed hello, attached to a presence claim (PROTOCOL.md C5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    pub payload: Map<String, Value>,
    pub sig: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `master` or `local`, as a server says in its link hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Local,
}

/// `dm` or `group`, the two ways a file travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileMode {
    Dm,
    Group,
}

macro_rules! payload {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
            #[serde(flatten)]
            pub extra: Extra,
        }
    };
}

payload!(
    /// `PEER_HELLO_LINK`: the first frame of a server link, both ways.
    PeerHelloLink {
        host: String,
        port: u16,
        pubkey: String,
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caps: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionOffer>,
    }
);

payload!(
    /// `USER_HELLO`: the first frame of a user connection.
    UserHello {
        client: String,
        pubkey: String,
        enc_pubkey: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caps: Option<Vec<String>>,
    }
);

payload!(
    /// `USER_WELCOME`: a node accepted a user's hello.
    UserWelcome {
        user_id: String,
        server_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionOffer>,
        /// What the node takes from its users beyond part A (a `socp`
        /// extension): [`CAP_UNDECRYPTABLE`] if it relays their
        /// `undecryptable` reports.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caps: Option<Vec<String>>,
    }
);

payload!(
    /// A payload with no fields of its own (`HEARTBEAT`).
    #[derive(Default)]
    Empty {}
);

payload!(
    /// `USER_LIST_REQ`: who is online. A reference client sends `{}`; a
    /// `socp` client may search (`prefix`), page (`after`: the last id of
    /// the previous page) and bound the answer (`limit`: ids at most; 0 asks
    /// for the count alone). Part B fields, ignored by reference nodes.
    #[derive(Default)]
    UserListReq {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    }
);

payload!(
    /// `USER_LIST`: users online anywhere in the mesh, sorted. A `socp`
    /// node answers one bounded page (PROTOCOL.md C13) and adds `total`
    /// (users online matching the request; with `total_capped`, at least
    /// that many: a search counts only so far) and `truncated` (more match
    /// after this page); a reference client reads `users` alone.
    UserList {
        users: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        truncated: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_capped: Option<bool>,
    }
);

payload!(
    /// `USER_DB_GET_USER`: a user asks for another user's directory key.
    UserLookup { user_id: String }
);

payload!(
    /// `USER_DB_USER`: the answer to a lookup.
    UserLookupAnswer {
        user_id: String,
        found: bool,
        pubkey: String,
    }
);

payload!(
    /// `MSG_PRIVATE`: an end-to-end encrypted DM from its sender.
    MsgPrivate {
        ciphertext: String,
        iv: String,
        tag: String,
        wrapped_key: String,
        sender_pub: String,
        content_sig: String,
        content_ts: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `PEER_DELIVER` / `USER_DELIVER`: a DM on its way to, or at, its recipient.
    Deliver {
        user_id: String,
        ciphertext: String,
        iv: String,
        tag: String,
        wrapped_key: String,
        sender: String,
        sender_pub: String,
        content_sig: String,
        content_ts: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// One member's copy of a group key, wrapped with the member's key.
    Share {
        member: String,
        wrapped_group_key: String,
    }
);

payload!(
    /// `GROUP_KEY_SHARE`: a group key created or rotated by `creator`.
    GroupKeyShare {
        group_id: String,
        shares: Vec<Share>,
        creator: String,
        creator_pub: String,
        content_sig: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `MSG_GROUP`: a message sealed with the group key.
    MsgGroup {
        group_id: String,
        ciphertext: String,
        iv: String,
        tag: String,
        from: String,
        ts: i64,
        sender_pub: String,
        content_sig: String,
        content_ts: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `FILE_START`: the manifest of a file transfer.
    FileStart {
        file_id: String,
        name: String,
        size: u64,
        sha256: String,
        mode: FileMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_sig: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `FILE_CHUNK`: one sealed 61440-byte piece of a file.
    FileChunk {
        file_id: String,
        index: u64,
        ciphertext: String,
        iv: String,
        tag: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wrapped_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `FILE_END`: the sender has sent every chunk.
    FileEnd {
        file_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg_id: Option<String>,
    }
);

payload!(
    /// `USER_ADVERTISE` / `USER_REMOVE`: a user is (no longer) at `location`.
    Presence {
        user_id: String,
        location: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
    }
);

payload!(
    /// `PRESENCE_SUBSCRIBE` (a `socp` addition, `presence-lookup-v1`): a
    /// local asks its master to tell it where these users are (answered
    /// with `USER_ADVERTISE` for those online) and to relay their presence
    /// from now on; `unsubscribe` ends that. At most
    /// `SUBSCRIBE_BATCH` ids each.
    PresenceSubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscribe: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unsubscribe: Option<Vec<String>>,
    }
);

payload!(
    /// `DB_REGISTER_USER`: a local tells the master a user said hello there.
    RegisterUser {
        user_id: String,
        pubkey: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
        /// Part B, to a `socp` master only: answer this registration with
        /// `DB_USER` carrying this `req_id` (or an `ERROR` naming the
        /// user), so a login needs one round trip, not a register and a
        /// lookup.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<String>,
    }
);

payload!(
    /// `DB_GET_USER`: a local asks the master for a user's key.
    DirectoryLookup { user_id: String, req_id: String }
);

payload!(
    /// `DB_USER`: the master's answer to `DB_GET_USER`.
    DirectoryAnswer {
        user_id: String,
        found: bool,
        pubkey: String,
        req_id: String,
    }
);

payload!(
    /// `ACK`: the sender of these ids may forget them (PROTOCOL.md B).
    Ack { msg_ids: Vec<String> }
);

/// The `RECEIPT` status for a DM its recipient's client could not decrypt
/// (a `socp` extension, DESIGN.md "Undecryptable content"): sent by that
/// client to its node, in place of `delivered` to the sender.
pub const UNDECRYPTABLE: &str = "undecryptable";

/// The capability that goes with [`UNDECRYPTABLE`]: a client lists it in its
/// `USER_HELLO` `caps` to be sent such receipts (an older client would show
/// a status it does not know as delivered), a node in its `USER_WELCOME`
/// `caps` to say it takes such reports from its users.
pub const CAP_UNDECRYPTABLE: &str = "receipt-undecryptable-v1";

payload!(
    /// `RECEIPT` (a `socp` extension): what became of content `user_id` sent:
    /// `queued` (in the master's mailbox), `delivered` (the recipient's
    /// client acknowledged it) or [`UNDECRYPTABLE`]. Routed back to the
    /// sender, best effort. From a user (to its node) only as an
    /// `undecryptable` report about content it was handed, `user_id`
    /// naming that content's sender.
    Receipt {
        user_id: String,
        msg_ids: Vec<String>,
        status: String,
    }
);

payload!(
    /// `ERROR`: why the previous frame was refused.
    ErrorBody { code: String, detail: String }
);

impl Deliver {
    /// The DM as its sender wrote it (what the content signature covers and
    /// the recipient opens).
    pub fn to_private(&self) -> MsgPrivate {
        MsgPrivate {
            ciphertext: self.ciphertext.clone(),
            iv: self.iv.clone(),
            tag: self.tag.clone(),
            wrapped_key: self.wrapped_key.clone(),
            sender_pub: self.sender_pub.clone(),
            content_sig: self.content_sig.clone(),
            content_ts: self.content_ts,
            msg_id: self.msg_id.clone(),
            extra: Map::new(),
        }
    }
}

impl ErrorBody {
    /// An `ERROR` payload with a known code.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ErrorBody {
            code: code.as_str().to_owned(),
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// An `ERROR` about one piece of content: it names the `msg_id`, so the
    /// sender's client knows which message was refused (PROTOCOL.md C12).
    pub fn about(code: ErrorCode, detail: impl Into<String>, msg_id: Option<&str>) -> Self {
        let mut body = ErrorBody::new(code, detail);
        if let Some(id) = msg_id {
            body.extra
                .insert(MSG_ID.into(), Value::String(id.to_owned()));
        }
        body
    }

    /// The code, if it is one `socp` knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }

    /// The `msg_id` of the content an error is about, if it names one.
    pub fn msg_id(&self) -> Option<&str> {
        self.extra.get(MSG_ID).and_then(Value::as_str)
    }
}

/// The field that names a piece of content (PROTOCOL.md B).
pub const MSG_ID: &str = "msg_id";
