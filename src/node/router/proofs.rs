//! Presence proofs checked once (PROTOCOL.md C5): a login at a local brings
//! the master the same signed hello twice (with the registration of a new
//! id, then with the user's advertisement), and a re-formed link brings it
//! again. The master remembers the proofs whose signature it verified, so
//! each costs one RSA verification, whatever it is attached to.

use std::collections::HashSet;

use super::proof_signed_by;
use crate::crypto;
use crate::wire::canonical;
use crate::wire::messages::Proof;

/// Verified proofs remembered at most; past it the memory starts over (a
/// miss only costs a verification again).
pub const VERIFIED_MAX: usize = 100_000;

/// Digests of (user, key, proof) triples whose signature verified.
#[derive(Debug, Default)]
pub(super) struct VerifiedProofs {
    seen: HashSet<[u8; 32]>,
}

impl VerifiedProofs {
    /// True if `proof` is `user`'s hello signed with `pubkey` (as
    /// [`proof_signed_by`]), verifying the signature only the first time.
    pub fn check(&mut self, proof: &Proof, user: &str, pubkey: &str) -> bool {
        let Some(digest) = digest(proof, user, pubkey) else {
            return false;
        };
        if self.seen.contains(&digest) {
            return true;
        }
        if !proof_signed_by(proof, user, pubkey) {
            return false;
        }
        if self.seen.len() >= VERIFIED_MAX {
            self.seen.clear();
        }
        self.seen.insert(digest);
        true
    }

    /// Proofs remembered, for tests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

/// SHA-256 over everything the verdict depends on: the user, the key, the
/// signed payload and the signature.
fn digest(proof: &Proof, user: &str, pubkey: &str) -> Option<[u8; 32]> {
    let payload = canonical::map_to_string(&proof.payload).ok()?;
    let mut bytes = Vec::with_capacity(user.len() + pubkey.len() + payload.len() + 700);
    for part in [user, pubkey, payload.as_str(), proof.sig.as_str()] {
        bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    Some(crypto::sha256(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    #[test]
    fn a_proof_verifies_once_and_a_changed_one_is_checked_again() {
        let key = crate::node::router::sim::key("alice");
        let pubkey = key.public().to_b64().to_owned();
        let mut payload = Map::new();
        payload.insert("pubkey".into(), Value::String(pubkey.clone()));
        payload.insert("user_id".into(), Value::String("alice".into()));
        payload.insert("ts".into(), Value::from(1));
        let bytes = canonical::map_to_string(&payload).unwrap();
        let proof = Proof {
            sig: key.sign_b64(bytes.as_bytes()).unwrap(),
            payload,
            extra: Map::new(),
        };
        let mut v = VerifiedProofs::default();
        assert!(v.check(&proof, "alice", &pubkey));
        assert!(v.check(&proof, "alice", &pubkey));
        assert_eq!(v.seen.len(), 1);
        // The same signature over another payload, or for another user.
        let mut forged = proof.clone();
        forged.payload.insert("ts".into(), Value::from(2));
        assert!(!v.check(&forged, "alice", &pubkey));
        assert!(!v.check(&proof, "bob", &pubkey));
        assert_eq!(v.seen.len(), 1);
    }
}
