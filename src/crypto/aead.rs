//! AES-256-GCM content sealing with a 12-byte random IV and the 16-byte tag
//! carried separately (PROTOCOL.md A4), no associated data.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::CryptoError;

/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Bytes of a GCM tag.
pub const TAG_LEN: usize = 16;

/// Ciphertext, IV and tag of one sealed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub iv: [u8; NONCE_LEN],
    pub tag: [u8; TAG_LEN],
}

/// A fresh random AES-256 key.
pub fn new_key() -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| CryptoError::Random)?;
    Ok(key)
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut out = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

fn aes_key(key: &[u8]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::BadKey(format!("AES-256 key of {} bytes", key.len())))
}

/// Seals `plaintext` under `key` with a fresh random IV.
pub fn seal(key: &[u8], plaintext: &[u8]) -> Result<Sealed, CryptoError> {
    let key = aes_key(key)?;
    let mut iv = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| CryptoError::Random)?;
    let mut ciphertext = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::empty(),
            &mut ciphertext,
        )
        .map_err(|_| CryptoError::Seal)?;
    let mut tag_bytes = [0u8; TAG_LEN];
    tag_bytes.copy_from_slice(tag.as_ref());
    Ok(Sealed {
        ciphertext,
        iv,
        tag: tag_bytes,
    })
}

/// Opens a sealed message; fails if anything was changed.
pub fn open(key: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = aes_key(key)?;
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| CryptoError::Open)?;
    if tag.len() != TAG_LEN {
        return Err(CryptoError::Open);
    }
    let mut buf = ciphertext.to_vec();
    key.open_in_place_separate_tag(nonce, Aad::empty(), tag, &mut buf)
        .map_err(|_| CryptoError::Open)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let key = new_key().unwrap();
        let sealed = seal(key.as_ref(), b"hello").unwrap();
        assert_eq!(
            open(key.as_ref(), &sealed.iv, &sealed.ciphertext, &sealed.tag).unwrap(),
            b"hello"
        );
        let mut bad = sealed.tag;
        bad[0] ^= 1;
        assert!(open(key.as_ref(), &sealed.iv, &sealed.ciphertext, &bad).is_err());
        assert!(
            open(
                key.as_ref(),
                &sealed.iv[..11],
                &sealed.ciphertext,
                &sealed.tag
            )
            .is_err()
        );
    }
}
