//! The node's plain data that every part shares: connection ids and the
//! records the router keeps about users, servers, presence and groups, as
//! they are stored. A leaf: no SQL here (see `state::sql`), nothing of the
//! router, the hub or custody, so any part of the node may hold them.

use crate::wire::messages::{Proof, Role};

/// Identifies one connection of this node.
pub(crate) type ConnId = u64;

/// A directory entry: the key a user id is pinned to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRecord {
    /// Shared with the user's session and connection (one copy per user).
    pub pubkey: std::sync::Arc<str>,
    /// Registered through an unsigned (reference) hello.
    pub legacy: bool,
    pub first_seen_ms: i64,
}

impl UserRecord {
    pub fn new(pubkey: std::sync::Arc<str>, legacy: bool, now: i64) -> Self {
        UserRecord {
            pubkey,
            legacy,
            first_seen_ms: now,
        }
    }
}

/// A server of the mesh, pinned to its first key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerRecord {
    pub pubkey: String,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// `ts` of the last link hello accepted from it: a hello must be newer.
    pub hello_ts: i64,
    pub last_seen_ms: i64,
}

/// Where a remote user is, and which link told us.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PresenceRecord {
    pub location: String,
    pub via: String,
    pub proof: Option<Proof>,
    /// Listed as online: the link it came over is up.
    pub live: bool,
    pub updated_ms: i64,
}

/// The server that first presented a presence proof (PROTOCOL.md C5).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProofOwner {
    pub server: String,
    pub user: String,
    /// When it was first presented (this node's clock).
    pub first_ms: i64,
}

/// A group's members, from the latest key share.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRecord {
    pub members: Vec<String>,
    pub updated_ms: i64,
    /// The creator of the first share seen (None: recorded before owners
    /// were kept; the next share pins its creator).
    pub owner: Option<String>,
}
