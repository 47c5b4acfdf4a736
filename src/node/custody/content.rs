//! What custody holds, typed: one piece of user content (a DM, a group
//! key share, a group message, a file frame) with its unknown fields, and
//! its kind, which a custody row keeps in its `kind` column while the body
//! waits on disk.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::wire::WireError;
use crate::wire::messages::{
    Deliver, Extra, FileChunk, FileEnd, FileStart, GroupKeyShare, Kind, Message, MsgGroup, typed,
    untyped,
};

/// One piece of user content as custody holds it: typed, unknown fields
/// kept (so content signatures over it still verify where it arrives).
/// Serialized as its payload: that is the custody row's `payload` column.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub(crate) enum Content {
    /// A DM, sent as `PEER_DELIVER` on a link and `USER_DELIVER` to its
    /// recipient.
    Dm(Deliver),
    KeyShare(GroupKeyShare),
    Group(MsgGroup),
    FileStart(FileStart),
    FileChunk(FileChunk),
    FileEnd(FileEnd),
}

/// What kind of content an entry holds, known while its body is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentKind {
    Dm,
    KeyShare,
    Group,
    FileStart,
    FileChunk,
    FileEnd,
}

impl ContentKind {
    /// The frame type it leaves as: a DM's depends on the hop.
    pub fn frame(self, on_link: bool) -> Kind {
        match self {
            ContentKind::Dm if on_link => Kind::PeerDeliver,
            ContentKind::Dm => Kind::UserDeliver,
            ContentKind::KeyShare => Kind::GroupKeyShare,
            ContentKind::Group => Kind::MsgGroup,
            ContentKind::FileStart => Kind::FileStart,
            ContentKind::FileChunk => Kind::FileChunk,
            ContentKind::FileEnd => Kind::FileEnd,
        }
    }

    /// The kind a frame type names, if it is content a node holds.
    pub fn of(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::PeerDeliver | Kind::UserDeliver => ContentKind::Dm,
            Kind::GroupKeyShare => ContentKind::KeyShare,
            Kind::MsgGroup => ContentKind::Group,
            Kind::FileStart => ContentKind::FileStart,
            Kind::FileChunk => ContentKind::FileChunk,
            Kind::FileEnd => ContentKind::FileEnd,
            _ => return None,
        })
    }

    /// Fanned out to a group's members (one frame per server on a link).
    pub fn is_group(self) -> bool {
        matches!(self, ContentKind::KeyShare | ContentKind::Group)
    }

    /// A piece of a file (it names its recipient in `user_id`).
    pub fn is_file(self) -> bool {
        matches!(
            self,
            ContentKind::FileStart | ContentKind::FileChunk | ContentKind::FileEnd
        )
    }
}

/// The custody row's `kind` column: the frame type (a DM's as it leaves on
/// a link; migration 04 renamed the rows written before).
impl ToSql for ContentKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.frame(true).name()))
    }
}

impl FromSql for ContentKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Kind::from_name(name)
            .and_then(ContentKind::of)
            .ok_or_else(|| FromSqlError::Other(format!("unknown custody kind {name:?}").into()))
    }
}

impl Content {
    pub fn kind(&self) -> ContentKind {
        match self {
            Content::Dm(_) => ContentKind::Dm,
            Content::KeyShare(_) => ContentKind::KeyShare,
            Content::Group(_) => ContentKind::Group,
            Content::FileStart(_) => ContentKind::FileStart,
            Content::FileChunk(_) => ContentKind::FileChunk,
            Content::FileEnd(_) => ContentKind::FileEnd,
        }
    }

    /// The content a frame carries, if it is content a node holds as it is
    /// (a user's `MSG_PRIVATE` becomes a DM once its sender is known).
    pub fn from_message(msg: Message) -> Option<Self> {
        Some(match msg {
            Message::PeerDeliver(d) | Message::UserDeliver(d) => Content::Dm(d),
            Message::GroupKeyShare(s) => Content::KeyShare(s),
            Message::MsgGroup(m) => Content::Group(m),
            Message::FileStart(f) => Content::FileStart(f),
            Message::FileChunk(f) => Content::FileChunk(f),
            Message::FileEnd(f) => Content::FileEnd(f),
            _ => return None,
        })
    }

    /// The fields this version does not know, kept as received.
    pub fn extra(&self) -> &Extra {
        match self {
            Content::Dm(c) => &c.extra,
            Content::KeyShare(c) => &c.extra,
            Content::Group(c) => &c.extra,
            Content::FileStart(c) => &c.extra,
            Content::FileChunk(c) => &c.extra,
            Content::FileEnd(c) => &c.extra,
        }
    }

    /// The `user_id` a file frame names (None for a group's, or not a file).
    pub fn file_user_id(&self) -> Option<&str> {
        match self {
            Content::FileStart(FileStart { user_id, .. })
            | Content::FileChunk(FileChunk { user_id, .. })
            | Content::FileEnd(FileEnd { user_id, .. }) => user_id.as_deref(),
            _ => None,
        }
    }

    /// Names the recipient of a file frame (no effect on other content).
    pub fn set_file_user_id(&mut self, user: String) {
        match self {
            Content::FileStart(FileStart { user_id, .. })
            | Content::FileChunk(FileChunk { user_id, .. })
            | Content::FileEnd(FileEnd { user_id, .. }) => *user_id = Some(user),
            _ => {}
        }
    }

    /// A body read back from its custody row.
    pub fn from_payload(kind: ContentKind, payload: Map<String, Value>) -> Result<Self, WireError> {
        let name = kind.frame(true).name();
        Ok(match kind {
            ContentKind::Dm => Content::Dm(typed(name, payload)?),
            ContentKind::KeyShare => Content::KeyShare(typed(name, payload)?),
            ContentKind::Group => Content::Group(typed(name, payload)?),
            ContentKind::FileStart => Content::FileStart(typed(name, payload)?),
            ContentKind::FileChunk => Content::FileChunk(typed(name, payload)?),
            ContentKind::FileEnd => Content::FileEnd(typed(name, payload)?),
        })
    }

    /// The payload as a JSON object, unknown fields included.
    pub fn to_payload(&self) -> Map<String, Value> {
        untyped(self)
    }

    /// Its size as compact JSON, for quotas (counted without writing it;
    /// escapes are not counted).
    pub fn json_len(&self) -> usize {
        crate::wire::size::json_len(self)
    }
}
