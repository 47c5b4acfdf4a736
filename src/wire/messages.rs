//! The typed catalogue of every SOCP message (PROTOCOL.md A5 and B):
//! [`Message`], a frame's payload by type, and [`Kind`], its type alone, both
//! made from one table of envelope type names. The payload structs live in
//! `payloads.rs` and are re-exported here.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use super::announce::{PeerAnnounce, PeerWithdraw};
use super::envelope::{Envelope, WireError};
pub use super::payloads::*;

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

            /// Bytes of the payload as JSON, counted without building it
            /// (what a queued frame will cost to send).
            pub fn json_len(&self) -> usize {
                match self {
                    $(Message::$variant(p) => super::size::json_len(p),)*
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
    UserListReq(UserListReq) = "USER_LIST_REQ",
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
    PeerAnnounce(PeerAnnounce) = "PEER_ANNOUNCE",
    PresenceSubscribe(PresenceSubscribe) = "PRESENCE_SUBSCRIBE",
    PeerWithdraw(PeerWithdraw) = "PEER_WITHDRAW",
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
