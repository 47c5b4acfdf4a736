//! `PEER_ANNOUNCE` and `PEER_WITHDRAW` (`socp` additions, part B as
//! documented in DESIGN.md "Discovery"): the master passes a linked local's
//! own signed `PEER_HELLO_LINK` payload to the other `socp` locals, so they
//! can dial each other without hand-made peer lists, and tells them when
//! that local has been gone a while, so they stop dialing it. Kept apart
//! from `payloads.rs`: they are the frames the mesh's discovery adds.

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

/// `PEER_WITHDRAW {server_id}`: the master no longer announces this local
/// (its link has been gone a while); a local stops dialing it. Taken only
/// from the master link; a live direct link to that server stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerWithdraw {
    pub server_id: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The field of a `socp` link hello that names the URL other servers dial
/// it at (`--advertise-url`, else the listening address).
pub const HELLO_URL: &str = "url";

/// The field of a `socp` link hello that signs when it was made (Unix ms):
/// the envelope `ts` is outside the signature, so a captured hello could be
/// sent again under a new one. An acceptor takes it within the freshness
/// window, once (DESIGN.md "Links").
pub const HELLO_TS: &str = "ts";

/// The field of a `socp` link hello that signs which server it is meant for
/// (the envelope `to`, when the dialer knows the id): another server refuses it.
pub const HELLO_TO: &str = "to";
