//! `PEER_ANNOUNCE` (a `socp` addition, part B as documented in DESIGN.md
//! "Discovery"): the master passes a linked local's own signed
//! `PEER_HELLO_LINK` payload to the other `socp` locals, so they can dial
//! each other without hand-made peer lists. Kept apart from `payloads.rs`:
//! it is the one frame the mesh's discovery adds.

use serde::{Deserialize, Serialize};

use super::payloads::{Extra, Proof};

/// `PEER_ANNOUNCE {server_id, hello: {payload, sig}}`: `hello` is the
/// announced server's link hello payload and its signature by the key that
/// payload names (the receiver checks it; the master cannot make one up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAnnounce {
    pub server_id: String,
    pub hello: Proof,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The field of a `socp` link hello that names the URL other servers dial
/// it at (`--advertise-url`, else the listening address).
pub const HELLO_URL: &str = "url";
