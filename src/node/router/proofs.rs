//! Presence proofs checked once (PROTOCOL.md C5): a login at a local brings
//! the master the same signed hello twice (with the registration of a new
//! id, then with the user's advertisement), and a re-formed link brings it
//! again. The master remembers the proofs whose signature it verified, so
//! each costs one RSA verification, whatever it is attached to.
//!
//! A session keeps its user's proof for the advertisements it sends each
//! link that forms ([`KeptProof`]): compactly, since every idle user holds
//! one.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::proof_signed_by;
use crate::crypto;
use crate::wire::messages::Proof;
use crate::wire::{b64, canonical};

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

/// A signed hello's proof as a session keeps it: the payload without the
/// key (which the session holds once) as canonical JSON text, and the
/// signature as bytes; [`KeptProof::proof`] rebuilds the very same proof.
/// About 0.6 KiB where the parsed proof (the key twice, the signature in
/// base64, a map of values) was about 3 KiB.
pub(super) enum KeptProof {
    Compact {
        /// The payload less `pubkey` and `enc_pubkey` where they are the
        /// session's key, canonical.
        rest: Box<str>,
        sig: Box<[u8]>,
        /// Which of `pubkey` ([`PUBKEY`]) and `enc_pubkey` ([`ENC_PUBKEY`])
        /// were the key.
        keys: u8,
    },
    /// A proof the compact form would not give back exactly (fields beside
    /// the payload, a signature not in canonical base64, numbers that do
    /// not round-trip): kept as it came.
    Whole(Box<Proof>),
}

impl super::Session {
    /// The user's hello proof as it came (None for a legacy hello).
    pub(super) fn proof(&self) -> Option<Proof> {
        self.proof.as_ref().map(|p| p.proof(&self.key))
    }
}

const PUBKEY: u8 = 1;
const ENC_PUBKEY: u8 = 2;

impl KeptProof {
    /// Keeps `proof`, whose payload names `key`.
    pub fn keep(proof: Proof, key: &str) -> Self {
        match Self::compact(&proof, key) {
            Some(kept) if kept.proof(key) == proof => kept,
            _ => KeptProof::Whole(Box::new(proof)),
        }
    }

    fn compact(proof: &Proof, key: &str) -> Option<Self> {
        if !proof.extra.is_empty() {
            return None;
        }
        let mut payload = proof.payload.clone();
        let mut keys = 0;
        for (field, bit) in [("pubkey", PUBKEY), ("enc_pubkey", ENC_PUBKEY)] {
            if payload.get(field).and_then(Value::as_str) == Some(key) {
                payload.remove(field);
                keys |= bit;
            }
        }
        Some(KeptProof::Compact {
            rest: canonical::map_to_string(&payload).ok()?.into(),
            sig: b64::decode(&proof.sig).ok()?.into(),
            keys,
        })
    }

    /// The proof as it came, for an advertisement or a registration.
    pub fn proof(&self, key: &str) -> Proof {
        match self {
            KeptProof::Whole(p) => (**p).clone(),
            KeptProof::Compact { rest, sig, keys } => {
                let mut payload: Map<String, Value> =
                    serde_json::from_str(rest).unwrap_or_default();
                for (field, bit) in [("pubkey", PUBKEY), ("enc_pubkey", ENC_PUBKEY)] {
                    if keys & bit != 0 {
                        payload.insert(field.into(), Value::String(key.to_owned()));
                    }
                }
                Proof {
                    payload,
                    sig: b64::encode(sig),
                    extra: Map::new(),
                }
            }
        }
    }
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

    fn alice_proof(extra_field: Option<(&str, Value)>) -> (Proof, String) {
        let key = crate::node::router::sim::key("alice");
        let pubkey = key.public().to_b64().to_owned();
        let mut payload = Map::new();
        payload.insert("pubkey".into(), Value::String(pubkey.clone()));
        payload.insert("enc_pubkey".into(), Value::String(pubkey.clone()));
        payload.insert("user_id".into(), Value::String("alice".into()));
        payload.insert("caps".into(), serde_json::json!(["mac-v1"]));
        payload.insert("ts".into(), Value::from(1_700_000_000_000_i64));
        if let Some((k, v)) = extra_field {
            payload.insert(k.into(), v);
        }
        let bytes = canonical::map_to_string(&payload).unwrap();
        let proof = Proof {
            sig: key.sign_b64(bytes.as_bytes()).unwrap(),
            payload,
            extra: Map::new(),
        };
        (proof, pubkey)
    }

    #[test]
    fn a_kept_proof_is_compact_and_gives_back_the_same_proof() {
        let (proof, pubkey) = alice_proof(None);
        let kept = KeptProof::keep(proof.clone(), &pubkey);
        let KeptProof::Compact { rest, sig, keys } = &kept else {
            panic!("kept whole");
        };
        assert!(!rest.contains(&pubkey[..40]), "the key is not kept twice");
        assert_eq!(sig.len(), crypto::keys::RSA_BYTES);
        assert_eq!(*keys, PUBKEY | ENC_PUBKEY);
        let back = kept.proof(&pubkey);
        assert_eq!(back, proof);
        assert!(proof_signed_by(&back, "alice", &pubkey));
    }

    #[test]
    fn a_proof_the_compact_form_would_change_is_kept_whole() {
        // Another enc_pubkey stays in the payload; a float that does not
        // round-trip through text, or fields beside the payload, keep it whole.
        let (proof, pubkey) = alice_proof(Some(("enc_pubkey", Value::from("other"))));
        let kept = KeptProof::keep(proof.clone(), &pubkey);
        assert!(matches!(kept, KeptProof::Compact { keys: PUBKEY, .. }));
        assert_eq!(kept.proof(&pubkey), proof);
        let (mut proof, pubkey) = alice_proof(None);
        proof.extra.insert("x".into(), Value::from(1));
        let kept = KeptProof::keep(proof.clone(), &pubkey);
        assert!(matches!(kept, KeptProof::Whole(_)));
        assert_eq!(kept.proof(&pubkey), proof);
        let (mut proof, pubkey) = alice_proof(None);
        proof.sig.push_str("==");
        assert_eq!(
            KeptProof::keep(proof.clone(), &pubkey).proof(&pubkey),
            proof
        );
    }
}
