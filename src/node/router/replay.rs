//! The replay state a node keeps about hellos, and how it stays bounded:
//! the hello replay cache (`seen_hellos`) and the owners of presence proofs
//! (`proof_owners`, PROTOCOL.md C5) would otherwise grow by one entry per
//! login forever, and are loaded at every start.
//!
//! `seen_hellos` holds the signatures of `socp` link hellos too: such a
//! hello signs its `ts` and, when the dialer knows it, the server it is meant
//! for (`to`), so one captured (every `socp` local is handed the others'
//! hellos by `PEER_ANNOUNCE`) cannot be sent again, to us or elsewhere. A
//! reference link hello signs neither: `links.rs` and `link_hold.rs` do what
//! can be done for it.
//!
//! What is safe to forget:
//! - a hello seen more than twice the freshness window ago: its `ts` check
//!   refuses it anyway (a `ts` accepted at time s is at most s + window, so
//!   after s + 2 x window it is stale);
//! - a proof whose owner no longer needs it: a proof is first accepted only
//!   when fresh, so once it is past the freshness window no other server
//!   can claim it (unknown and stale is refused). The one server that may
//!   still present it is its owner, re-advertising the user's current
//!   session after a link re-forms; so each user's newest proof is kept,
//!   and an older one is forgotten once it is stale. An old session's proof
//!   presented again is then refused (that session is over: the user has
//!   said a newer hello since). Bound: one row per user, plus the logins of
//!   the last two freshness windows.

use std::collections::HashMap;

use super::links::NoLink;
use super::{HELLO_FRESHNESS_MS, LinkHelloIn, ProofOwner, Router, StoreOp, proof_digest};
use crate::wire::ErrorCode;
use crate::wire::announce::{HELLO_TO, HELLO_TS};

/// How long a seen hello or a superseded proof is kept.
const REPLAY_KEEP_MS: i64 = 2 * HELLO_FRESHNESS_MS;

impl Router {
    /// `server` is the first to present this proof of `user`'s presence.
    pub(super) fn own_proof(&mut self, digest: [u8; 32], server: &str, user: &str) {
        self.proof_owners.insert(
            digest,
            ProofOwner {
                server: server.to_owned(),
                user: user.to_owned(),
                first_ms: self.now,
            },
        );
        self.persist(StoreOp::ProofOwner(
            digest,
            server.to_owned(),
            user.to_owned(),
        ));
    }

    /// Why a link hello we did not ask for is refused as not fresh, not
    /// ours, or seen before, if its payload signs `ts` (a `socp` one; a
    /// reference hello has none and is not refused here).
    pub(super) fn link_hello_replayed(&self, hello: &LinkHelloIn) -> Option<NoLink> {
        let proof = hello.signed.as_ref()?;
        if let Some(to) = proof.payload.get(HELLO_TO)
            && to.as_str() != Some(self.cfg.me.as_str())
        {
            tracing::warn!(server = %hello.server_id, "refused link: its hello is signed for another server");
            return Some(NoLink::Refuse(
                ErrorCode::NotAllowed,
                "link hello is meant for another server (replayed?)",
            ));
        }
        let ts = proof.payload.get(HELLO_TS)?;
        let Some(ts) = ts.as_i64() else {
            return Some(NoLink::Refuse(
                ErrorCode::BadFrame,
                "link hello ts must be Unix ms",
            ));
        };
        if self.now.abs_diff(ts) > HELLO_FRESHNESS_MS as u64 {
            tracing::warn!(server = %hello.server_id, skew_ms = self.now - ts, "refused link: its hello is not fresh");
            return Some(NoLink::Refuse(
                ErrorCode::InvalidSig,
                "link hello ts is more than 120 s away from this server's clock (replayed, or check the clocks)",
            ));
        }
        if self.seen_hellos.contains_key(&proof_digest(proof)) {
            tracing::warn!(server = %hello.server_id, "refused link: replayed hello");
            return Some(NoLink::Refuse(
                ErrorCode::InvalidSig,
                "replayed link hello: sign a fresh one",
            ));
        }
        None
    }

    /// A `socp` link hello we took (or hold): it is not taken again.
    pub(super) fn remember_link_hello(&mut self, hello: &LinkHelloIn) {
        let Some(proof) = hello.signed.as_ref() else {
            return;
        };
        if hello.dialed || !proof.payload.contains_key(HELLO_TS) {
            return;
        }
        let digest = proof_digest(proof);
        self.seen_hellos.insert(digest, self.now);
        self.persist(StoreOp::SeenHello(digest, self.now));
    }

    /// Forgets the hellos and proofs that can never be accepted again (run
    /// by the periodic tick; the store prunes its rows of seen hellos itself).
    pub(super) fn prune_replay_state(&mut self) {
        let cutoff = self.now - REPLAY_KEEP_MS;
        self.seen_hellos.retain(|_, seen| *seen >= cutoff);
        let mut newest: HashMap<&str, ([u8; 32], i64)> = HashMap::new();
        for (digest, owner) in &self.proof_owners {
            let best = newest
                .entry(owner.user.as_str())
                .or_insert((*digest, owner.first_ms));
            if (owner.first_ms, *digest) > (best.1, best.0) {
                *best = (*digest, owner.first_ms);
            }
        }
        let forget: Vec<[u8; 32]> = self
            .proof_owners
            .iter()
            .filter(|(digest, owner)| {
                owner.first_ms < cutoff
                    && newest
                        .get(owner.user.as_str())
                        .is_some_and(|(keep, _)| keep != *digest)
            })
            .map(|(digest, _)| *digest)
            .collect();
        if forget.is_empty() {
            return;
        }
        for digest in &forget {
            self.proof_owners.remove(digest);
        }
        tracing::debug!(proofs = forget.len(), "forgot superseded presence proofs");
        self.persist(StoreOp::ForgetProofs(forget));
    }

    /// Entries of the replay state, for tests: (seen hellos, proof owners).
    #[cfg(test)]
    pub(super) fn replay_state_len(&self) -> (usize, usize) {
        (self.seen_hellos.len(), self.proof_owners.len())
    }
}
