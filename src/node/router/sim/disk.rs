//! A node's store, in memory: the rows the router's `Persist` outputs
//! write, applied as `state.rs` applies them, and the snapshot a restarted
//! node resumes from (as `state::load` reads it back).

use std::collections::BTreeMap;

// The router's own names for the records, wherever they are defined.
use super::super::{
    GroupRecord, HELLO_FRESHNESS_MS, PresenceRecord, ProofOwner, ServerRecord, Snapshot, StoreOp,
    UserRecord,
};
use super::adapt;
use crate::node::custody::Entry;
use crate::node::policy::PolicyOp;
use crate::node::state::MemRead;

/// The rows of one node.
#[derive(Default)]
pub(crate) struct Disk {
    users: BTreeMap<String, UserRecord>,
    servers: BTreeMap<String, ServerRecord>,
    presence: BTreeMap<String, PresenceRecord>,
    groups: BTreeMap<String, GroupRecord>,
    seen_hellos: BTreeMap<[u8; 32], i64>,
    proof_owners: BTreeMap<[u8; 32], ProofOwner>,
    /// Custody rows by `seq`, with their bodies.
    pub custody: BTreeMap<u64, Entry>,
    /// The users and custody rows again, as the router reads them.
    mirror: MemRead,
}

impl Disk {
    /// Applies one write at time `now`, with the same conflict rules as
    /// the SQL (a user's first key stays; a server keeps its first key).
    pub fn apply(&mut self, op: StoreOp, now: i64) {
        adapt::mirror(&self.mirror, &op);
        match op {
            StoreOp::PinUser(id, rec) => {
                self.users.entry(id).or_insert(rec);
            }
            StoreOp::PinServer(id, rec) => match self.servers.get_mut(&id) {
                Some(old) => {
                    *old = ServerRecord {
                        pubkey: old.pubkey.clone(),
                        ..rec
                    }
                }
                None => {
                    self.servers.insert(id, rec);
                }
            },
            StoreOp::SetPresence(user, rec) => {
                self.presence.insert(user, rec);
            }
            StoreOp::RemovePresence(user) => {
                self.presence.remove(&user);
            }
            StoreOp::SeenHello(digest, at) => {
                self.seen_hellos.entry(digest).or_insert(at);
            }
            StoreOp::ProofOwner(digest, server, user) => {
                self.proof_owners.entry(digest).or_insert(ProofOwner {
                    server,
                    user,
                    first_ms: now,
                });
            }
            StoreOp::ForgetProofs(digests) => {
                for d in digests {
                    self.proof_owners.remove(&d);
                }
            }
            StoreOp::SetGroup(group, rec) => {
                self.groups.insert(group, rec);
            }
            StoreOp::Custody(entry) => {
                self.custody.insert(adapt::seq_of(&entry), entry);
            }
            StoreOp::Release(seqs) => {
                for seq in seqs {
                    self.custody.remove(&seq);
                }
            }
            StoreOp::Policy(PolicyOp::ReplaceKey { user, pubkey }) => {
                if let Some(rec) = self.users.get_mut(&user) {
                    rec.pubkey = pubkey.into();
                }
            }
            // Invites and key resets: the simulated meshes use neither.
            StoreOp::Policy(PolicyOp::Registered { .. }) => {}
        }
    }

    /// What a node starting at `now` resumes from: every row, presence
    /// dormant, hellos past the replay window left out, custody without
    /// bodies (read back when sent).
    pub fn snapshot(&self, now: i64) -> Snapshot {
        let cutoff = now - 2 * HELLO_FRESHNESS_MS;
        Snapshot {
            store: Box::new(self.mirror.clone()),
            servers: self.servers.clone().into_iter().collect(),
            presence: self
                .presence
                .iter()
                .map(|(u, p)| {
                    let mut p = p.clone();
                    p.live = false;
                    (u.clone(), p)
                })
                .collect(),
            groups: self.groups.clone().into_iter().collect(),
            seen_hellos: self
                .seen_hellos
                .iter()
                .filter(|(_, at)| **at >= cutoff)
                .map(|(d, at)| (*d, *at))
                .collect(),
            proof_owners: self.proof_owners.clone().into_iter().collect(),
            custody: adapt::summary(&self.custody),
        }
    }
}
