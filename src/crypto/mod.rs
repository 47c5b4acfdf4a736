//! Cryptography: RSA-4096 identities (PSS signatures, OAEP key wrap),
//! AES-256-GCM content, SHA-256 and key fingerprints (PROTOCOL.md A4, C1).

pub mod aead;
pub mod keys;
pub mod session;

pub use keys::{PrivateKey, PublicKey};

/// What went wrong in a cryptographic operation. Deliberately vague about
/// signature and decryption failures: the caller knows which input it was.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("unacceptable key: {0}")]
    BadKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing failed")]
    Sign,
    #[error("key generation failed")]
    KeyGen,
    #[error("RSA-OAEP wrap failed")]
    Wrap,
    #[error("RSA-OAEP unwrap failed (not wrapped for this key, or altered)")]
    Unwrap,
    #[error("AES-GCM seal failed")]
    Seal,
    #[error("AES-GCM open failed (wrong key, or altered)")]
    Open,
    #[error("the system random source failed")]
    Random,
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex, as file manifests carry SHA-256 (A4).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A key fingerprint for people: SHA-256 of the SPKI DER as 16 groups of four
/// hex digits (`a1b2 c3d4 …`).
pub fn fingerprint(spki_der: &[u8]) -> String {
    let digest = hex(&sha256(spki_der));
    digest
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}
