//! Where the router's request ids come from (the `req_id` of a directory
//! lookup through the master, and the name of the timer that waits for
//! it). A running node draws them at random, as it always has; the mesh
//! simulator seeds them, so that a run repeats exactly.

/// A source of request ids: `<uuid4>-<n>`, `n` counting from 1.
pub(crate) struct ReqIds {
    /// Random (None) or drawn from this seeded generator.
    seeded: Option<SplitMix>,
    count: u64,
}

impl ReqIds {
    /// Ids from the system's randomness (production).
    pub fn random() -> Self {
        ReqIds {
            seeded: None,
            count: 0,
        }
    }

    /// Ids that are the same for the same seed.
    #[cfg(test)]
    pub fn seeded(seed: u64) -> Self {
        ReqIds {
            seeded: Some(SplitMix(seed)),
            count: 0,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> String {
        self.count += 1;
        let uuid = match &mut self.seeded {
            None => uuid::Uuid::new_v4(),
            Some(rng) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
                uuid::Builder::from_random_bytes(bytes).into_uuid()
            }
        };
        format!("{uuid}-{}", self.count)
    }
}

/// The SplitMix64 generator: tiny, and good enough to spread test ids.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_look_like_random_ones() {
        let take = |mut ids: ReqIds| (ids.next_id(), ids.next_id());
        let (a1, a2) = take(ReqIds::seeded(7));
        assert_eq!((a1.clone(), a2.clone()), take(ReqIds::seeded(7)));
        assert_ne!(a1, take(ReqIds::seeded(8)).0);
        let (r1, r2) = take(ReqIds::random());
        for (id, n) in [(&a1, "1"), (&a2, "2"), (&r1, "1"), (&r2, "2")] {
            let (uuid, count) = id.rsplit_once('-').unwrap();
            assert_eq!(count, n);
            assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 4);
        }
    }
}
