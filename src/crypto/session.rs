//! Link sessions (PROTOCOL.md B, capability `mac-v1`): after a signed hello,
//! frames on a connection between two `socp` peers are authenticated with
//! HMAC-SHA256 under a per-direction key instead of an RSA signature per
//! frame, and carry a sequence number so none can be replayed, dropped or
//! reordered unnoticed.

use aws_lc_rs::{hkdf, hmac};

use super::{CryptoError, PrivateKey, PublicKey, aead};
use crate::wire::{Envelope, b64};

/// The capability name in hellos.
pub const CAP_MAC_V1: &str = "mac-v1";
/// Bytes of the session secret.
pub const SECRET_LEN: usize = 32;

/// Why a frame failed its session check; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("frame has no mac on a mac-v1 session")]
    Missing,
    #[error("frame seq {got:?} is not the next one ({want})")]
    Sequence { got: Option<u64>, want: u64 },
    #[error("frame mac does not verify")]
    Invalid,
}

/// The acceptor's half of the setup: a fresh secret and its wrap for the dialer.
pub fn offer(dialer: &PublicKey) -> Result<([u8; SECRET_LEN], String), CryptoError> {
    let secret: [u8; SECRET_LEN] = aead::random_bytes(SECRET_LEN)?
        .try_into()
        .map_err(|_| CryptoError::Random)?;
    let wrapped = b64::encode(dialer.wrap(&secret)?);
    Ok((secret, wrapped))
}

/// The dialer's half: the secret from the acceptor's offer (RSA, ~1.5 ms).
pub fn accept(key: &PrivateKey, wrapped: &str) -> Result<[u8; SECRET_LEN], CryptoError> {
    let bytes = b64::decode(wrapped).map_err(|_| CryptoError::Unwrap)?;
    let secret = key.unwrap_key(&bytes)?;
    secret
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Unwrap)
}

struct HmacLen;
impl hkdf::KeyType for HmacLen {
    fn len(&self) -> usize {
        32
    }
}

/// A direction's HMAC key, kept as its 32 bytes: aws-lc's prepared key is
/// about 1.2 KiB and every connection on a session holds two, where
/// preparing it again for each frame costs two SHA-256 blocks. Links (few,
/// and carrying most frames) keep it prepared ([`MacSession::prepared`]).
enum DirectionKey {
    Raw(zeroize::Zeroizing<[u8; 32]>),
    Prepared(Box<hmac::Key>),
}

impl DirectionKey {
    fn hmac(&self) -> std::borrow::Cow<'_, hmac::Key> {
        match self {
            DirectionKey::Raw(raw) => {
                std::borrow::Cow::Owned(hmac::Key::new(hmac::HMAC_SHA256, &raw[..]))
            }
            DirectionKey::Prepared(key) => std::borrow::Cow::Borrowed(key),
        }
    }

    fn prepared(self) -> Self {
        match self {
            DirectionKey::Raw(raw) => {
                DirectionKey::Prepared(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &raw[..])))
            }
            prepared => prepared,
        }
    }
}

fn direction_key(secret: &[u8], dialer: &str, acceptor: &str, dir: &str) -> DirectionKey {
    let info = format!("socp mac-v1 {dialer} {acceptor} {dir}");
    let prk = hkdf::Salt::none(hkdf::HKDF_SHA256).extract(secret);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    let info_parts = [info.as_bytes()];
    // Expanding 32 bytes from SHA-256 cannot fail.
    if let Ok(okm) = prk.expand(&info_parts, HmacLen) {
        let _ = okm.fill(&mut out[..]);
    }
    DirectionKey::Raw(out)
}

/// One side of a link session: the half that seals what we send and the
/// half that opens what we receive, which a connection's writer and reader
/// own separately (see [`MacSession::split`]).
pub struct MacSession {
    seal: MacSeal,
    open: MacOpen,
}

/// The sending half of a session: our direction's key and sequence.
pub struct MacSeal {
    key: DirectionKey,
    seq: u64,
}

/// The receiving half of a session: the peer's direction's key and sequence.
pub struct MacOpen {
    key: DirectionKey,
    seq: u64,
}

impl MacSession {
    /// Derives both directions' keys (HKDF-SHA256, no salt, info
    /// `"socp mac-v1 <dialer> <acceptor> d2a|a2d"`).
    pub fn new(secret: &[u8], dialer: &str, acceptor: &str, we_dialed: bool) -> Self {
        let d2a = direction_key(secret, dialer, acceptor, "d2a");
        let a2d = direction_key(secret, dialer, acceptor, "a2d");
        let (send, recv) = if we_dialed { (d2a, a2d) } else { (a2d, d2a) };
        MacSession {
            seal: MacSeal { key: send, seq: 0 },
            open: MacOpen { key: recv, seq: 0 },
        }
    }

    /// The same session with both keys prepared once, for a link: a link
    /// carries frames all the time, where preparing per frame costs CPU;
    /// users (many, mostly idle) keep the 32 raw bytes.
    pub fn prepared(self) -> Self {
        MacSession {
            seal: MacSeal {
                key: self.seal.key.prepared(),
                seq: self.seal.seq,
            },
            open: MacOpen {
                key: self.open.key.prepared(),
                seq: self.open.seq,
            },
        }
    }

    /// The two halves, for a writer and a reader that run side by side.
    pub fn split(self) -> (MacSeal, MacOpen) {
        (self.seal, self.open)
    }

    /// See [`MacSeal::seal`].
    pub fn seal(&mut self, env: &mut Envelope) -> Result<(), CryptoError> {
        self.seal.seal(env)
    }

    /// See [`MacSeal::seal_to_json`].
    pub fn seal_to_json(&mut self, env: &mut Envelope) -> Result<String, CryptoError> {
        self.seal.seal_to_json(env)
    }

    /// See [`MacOpen::open`].
    pub fn open(&mut self, env: &Envelope) -> Result<(), MacError> {
        self.open.open(env)
    }
}

impl MacSeal {
    /// Stamps the next `seq` and the `mac` on an outgoing frame (`sig` empty).
    pub fn seal(&mut self, env: &mut Envelope) -> Result<(), CryptoError> {
        self.seq += 1;
        env.seq = Some(self.seq);
        env.sig.clear();
        env.mac = None;
        let bytes = env
            .mac_bytes()
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        env.mac = Some(b64::encode(hmac::sign(&self.key.hmac(), &bytes)));
        Ok(())
    }

    /// Stamps the next `seq` and the `mac` and returns the frame as sent:
    /// what [`MacSeal::seal`] then `to_json` give, serializing the payload
    /// once instead of twice.
    pub fn seal_to_json(&mut self, env: &mut Envelope) -> Result<String, CryptoError> {
        self.seq += 1;
        env.seq = Some(self.seq);
        let key = self.key.hmac();
        env.to_json_with_mac(|bytes| b64::encode(hmac::sign(&key, bytes)))
            .map_err(|e| CryptoError::BadKey(e.to_string()))
    }
}

impl MacOpen {
    /// Checks an incoming frame: the next `seq`, and a `mac` that verifies.
    pub fn open(&mut self, env: &Envelope) -> Result<(), MacError> {
        let want = self.seq + 1;
        if env.seq != Some(want) {
            return Err(MacError::Sequence { got: env.seq, want });
        }
        let mac = env.mac.as_deref().ok_or(MacError::Missing)?;
        let tag = b64::decode(mac).map_err(|_| MacError::Invalid)?;
        let bytes = env.mac_bytes().map_err(|_| MacError::Invalid)?;
        hmac::verify(&self.key.hmac(), &bytes, &tag).map_err(|_| MacError::Invalid)?;
        self.seq = want;
        Ok(())
    }

    /// Takes the place in the sequence of a frame that could not be parsed
    /// (so it could not be checked either) but names the next `seq`: it is
    /// refused, and the frames after it still line up. True if it did.
    pub fn skip_unparsed(&mut self, seq: Option<u64>) -> bool {
        if seq == Some(self.seq + 1) {
            self.seq += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::Kind;
    use serde_json::Map;

    fn frame() -> Envelope {
        let mut p = Map::new();
        p.insert("x".into(), 1.into());
        Envelope::new(Kind::Heartbeat.name(), "server_a", "server_b", p)
    }

    #[test]
    fn both_ends_agree_and_detect_tampering_replay_and_gaps() {
        let secret = [7u8; 32];
        let mut dialer = MacSession::new(&secret, "d", "a", true);
        let mut acceptor = MacSession::new(&secret, "d", "a", false);
        let mut f1 = frame();
        dialer.seal(&mut f1).unwrap();
        assert_eq!(f1.seq, Some(1));
        assert!(f1.sig.is_empty());
        acceptor.open(&f1).unwrap();
        // Replay of the same frame: wrong seq.
        assert!(matches!(acceptor.open(&f1), Err(MacError::Sequence { .. })));
        // Tampering with the header (not covered by RSA) is caught.
        let mut f2 = frame();
        dialer.seal(&mut f2).unwrap();
        f2.to = "server_c".into();
        assert_eq!(acceptor.open(&f2), Err(MacError::Invalid));
        // The other direction uses another key.
        let mut back = frame();
        acceptor.seal(&mut back).unwrap();
        dialer.open(&back).unwrap();
        let mut wrong_dir = frame();
        dialer.seal(&mut wrong_dir).unwrap();
        let mut dialer2 = MacSession::new(&secret, "d", "a", true);
        assert!(dialer2.open(&wrong_dir).is_err());
    }

    #[test]
    fn seal_to_json_sends_what_seal_and_to_json_would() {
        let secret = [9u8; 32];
        let mut a = MacSession::new(&secret, "d", "a", true);
        let mut b = MacSession::new(&secret, "d", "a", true);
        let mut acceptor = MacSession::new(&secret, "d", "a", false);
        for text in ["plain", "é 😀 \"quoted\" \u{1} <tag>"] {
            let mut p = Map::new();
            p.insert("text".into(), text.into());
            p.insert(
                "list".into(),
                serde_json::json!([2, {"b": null, "a": true}]),
            );
            let env = Envelope::new(Kind::MsgPrivate.name(), "alice", "bob", p);
            let (mut one, mut two) = (env.clone(), env);
            a.seal(&mut one).unwrap();
            let wire = b.seal_to_json(&mut two).unwrap();
            assert_eq!(one, two);
            let parsed = Envelope::parse(&wire).unwrap();
            assert_eq!(parsed, one);
            let as_value = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
            assert_eq!(as_value(&wire), as_value(&one.to_json()));
            acceptor.open(&parsed).unwrap();
        }
    }
}
