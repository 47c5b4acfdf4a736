//! The typed catalogue of every SOCP message (PROTOCOL.md A5 and B). Each
//! payload keeps the fields it does not know in `extra`, so a frame parsed
//! and written again has the same canonical payload, and so the same
//! signature.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::envelope::{Envelope, ErrorCode, WireError};

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
    }
);

payload!(
    /// A payload with no fields of its own (`USER_LIST_REQ`, `HEARTBEAT`).
    #[derive(Default)]
    Empty {}
);

payload!(
    /// `USER_LIST`: users online anywhere in the mesh, sorted.
    UserList { users: Vec<String> }
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
    /// `DB_REGISTER_USER`: a local tells the master a user said hello there.
    RegisterUser {
        user_id: String,
        pubkey: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
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

payload!(
    /// `RECEIPT` (a `socp` extension): what became of content `user_id` sent:
    /// `queued` (in the master's mailbox) or `delivered` (the recipient's
    /// client acknowledged it). Routed back to the sender, best effort.
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

macro_rules! catalogue {
    ($($variant:ident($ty:ty) = $name:literal),* $(,)?) => {
        /// Every frame type `socp` knows, with its typed payload.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $($variant($ty),)*
        }

        /// Every frame type `socp` knows, without its payload: what code
        /// outside this module names a frame type by, instead of a string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $($variant,)*
        }

        /// Every frame type name `socp` knows.
        pub const TYPE_NAMES: &[&str] = &[$($name,)*];

        /// The static name of a known frame type.
        pub fn static_type_name(kind: &str) -> Option<&'static str> {
            TYPE_NAMES.iter().copied().find(|n| *n == kind)
        }

        impl Kind {
            /// The envelope `type` of this kind of frame.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }

            /// The kind an envelope `type` names, if `socp` knows it.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Kind::$variant),)*
                    _ => None,
                }
            }
        }

        impl Message {
            /// The kind of this message.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Message::$variant(_) => Kind::$variant,)*
                }
            }

            /// The envelope `type` of this message.
            pub fn type_name(&self) -> &'static str {
                self.kind().name()
            }

            /// Parses a payload of the given envelope `type`.
            pub fn from_payload(kind: &str, payload: Map<String, Value>) -> Result<Self, WireError> {
                match kind {
                    $($name => Ok(Message::$variant(typed(kind, payload)?)),)*
                    other => Err(WireError::UnknownType(truncated(other))),
                }
            }

            /// The payload as a JSON object, unknown fields included.
            pub fn to_payload(&self) -> Map<String, Value> {
                match self {
                    $(Message::$variant(p) => untyped(p),)*
                }
            }

            /// The fields of the payload this version does not know.
            pub fn extra_mut(&mut self) -> &mut Extra {
                match self {
                    $(Message::$variant(p) => &mut p.extra,)*
                }
            }
        }
    };
}

catalogue!(
    PeerHelloLink(PeerHelloLink) = "PEER_HELLO_LINK",
    UserHello(UserHello) = "USER_HELLO",
    UserWelcome(UserWelcome) = "USER_WELCOME",
    UserListReq(Empty) = "USER_LIST_REQ",
    UserList(UserList) = "USER_LIST",
    UserDbGetUser(UserLookup) = "USER_DB_GET_USER",
    UserDbUser(UserLookupAnswer) = "USER_DB_USER",
    MsgPrivate(MsgPrivate) = "MSG_PRIVATE",
    PeerDeliver(Deliver) = "PEER_DELIVER",
    UserDeliver(Deliver) = "USER_DELIVER",
    GroupKeyShare(GroupKeyShare) = "GROUP_KEY_SHARE",
    MsgGroup(MsgGroup) = "MSG_GROUP",
    FileStart(FileStart) = "FILE_START",
    FileChunk(FileChunk) = "FILE_CHUNK",
    FileEnd(FileEnd) = "FILE_END",
    UserAdvertise(Presence) = "USER_ADVERTISE",
    UserRemove(Presence) = "USER_REMOVE",
    DbRegisterUser(RegisterUser) = "DB_REGISTER_USER",
    DbGetUser(DirectoryLookup) = "DB_GET_USER",
    DbUser(DirectoryAnswer) = "DB_USER",
    Heartbeat(Empty) = "HEARTBEAT",
    Ack(Ack) = "ACK",
    Receipt(Receipt) = "RECEIPT",
    Error(ErrorBody) = "ERROR",
);

impl Kind {
    /// True for the frames that bring user content into a node (PROTOCOL.md
    /// C12): what content limits and custody apply to. (`USER_DELIVER`
    /// only ever leaves a node.)
    pub fn brings_content(self) -> bool {
        matches!(
            self,
            Kind::MsgPrivate
                | Kind::PeerDeliver
                | Kind::GroupKeyShare
                | Kind::MsgGroup
                | Kind::FileStart
                | Kind::FileChunk
                | Kind::FileEnd
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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

impl Message {
    /// Parses the payload of an envelope by its `type`.
    pub fn from_envelope(env: &Envelope) -> Result<Self, WireError> {
        Self::from_payload(&env.kind, env.payload.clone())
    }

    /// The `msg_id` of a content message (None: not content, or it has none).
    pub fn msg_id(&self) -> Option<&str> {
        match self {
            Message::MsgPrivate(MsgPrivate { msg_id, .. })
            | Message::PeerDeliver(Deliver { msg_id, .. })
            | Message::UserDeliver(Deliver { msg_id, .. })
            | Message::GroupKeyShare(GroupKeyShare { msg_id, .. })
            | Message::MsgGroup(MsgGroup { msg_id, .. })
            | Message::FileStart(FileStart { msg_id, .. })
            | Message::FileChunk(FileChunk { msg_id, .. })
            | Message::FileEnd(FileEnd { msg_id, .. }) => msg_id.as_deref(),
            _ => None,
        }
    }

    /// Sets the `msg_id` of a content message (no effect on other messages).
    pub fn set_msg_id(&mut self, id: String) {
        match self {
            Message::MsgPrivate(MsgPrivate { msg_id, .. })
            | Message::PeerDeliver(Deliver { msg_id, .. })
            | Message::UserDeliver(Deliver { msg_id, .. })
            | Message::GroupKeyShare(GroupKeyShare { msg_id, .. })
            | Message::MsgGroup(MsgGroup { msg_id, .. })
            | Message::FileStart(FileStart { msg_id, .. })
            | Message::FileChunk(FileChunk { msg_id, .. })
            | Message::FileEnd(FileEnd { msg_id, .. }) => *msg_id = Some(id),
            _ => {}
        }
    }

    /// A group key share entry as a JSON object, unknown fields included.
    pub fn share_payload(share: &Share) -> Map<String, Value> {
        untyped(share)
    }

    /// An unsigned envelope carrying this message.
    pub fn into_envelope(&self, from: &str, to: &str) -> Envelope {
        Envelope::new(self.type_name(), from, to, self.to_payload())
    }
}

/// Parses a payload of envelope `type` `kind` into its typed form (the
/// payload's strings move, they are not copied).
pub fn typed<T: DeserializeOwned>(kind: &str, payload: Map<String, Value>) -> Result<T, WireError> {
    serde_json::from_value(Value::Object(payload)).map_err(|e| WireError::BadPayload {
        kind: kind.to_owned(),
        detail: e.to_string(),
    })
}

/// A typed payload as a JSON object, unknown fields included.
pub fn untyped<T: Serialize>(payload: &T) -> Map<String, Value> {
    // Every payload type serializes to an object of plain JSON values.
    match serde_json::to_value(payload) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_unknown_fields() {
        let payload = json!({"user_id": "Bob", "found": true, "pubkey": "", "zz": [1, {"b": 2}]});
        let Value::Object(map) = payload else {
            unreachable!()
        };
        let msg = Message::from_payload("USER_DB_USER", map.clone()).unwrap();
        assert_eq!(msg.to_payload(), map);
    }

    #[test]
    fn refuses_unknown_types_and_bad_payloads() {
        assert!(matches!(
            Message::from_payload("DEBUG_DUMP", Map::new()),
            Err(WireError::UnknownType(_))
        ));
        let Value::Object(map) = json!({"user_id": 5}) else {
            unreachable!()
        };
        assert!(matches!(
            Message::from_payload("USER_DB_GET_USER", map),
            Err(WireError::BadPayload { .. })
        ));
    }
}
