//! The rows the router asks the store to write: one `StoreOp` each, applied
//! in order by the store writer (`sql::apply`).

use crate::node::custody::Entry;
use crate::node::policy::PolicyOp;
use crate::node::records::{GroupRecord, PresenceRecord, ServerRecord, UserRecord};

/// A row for the store writer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoreOp {
    PinUser(String, UserRecord),
    PinServer(String, ServerRecord),
    SetPresence(String, PresenceRecord),
    RemovePresence(String),
    SeenHello([u8; 32], i64),
    ProofOwner([u8; 32], String, String),
    /// Proofs that can never be presented again (see `replay.rs`).
    ForgetProofs(Vec<[u8; 32]>),
    SetGroup(String, GroupRecord),
    /// A frame taken into custody.
    Custody(Entry),
    /// Frames handed on and acknowledged (or expired).
    Release(Vec<u64>),
    /// Registration policy rows (invites used, key resets done).
    Policy(PolicyOp),
}
