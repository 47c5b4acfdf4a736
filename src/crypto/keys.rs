//! RSA-4096 identities: key generation, PKCS#8 PEM files, SPKI public keys,
//! the key policy of PROTOCOL.md C1, PSS signatures and OAEP key wrap.
//!
//! aws-lc-rs does every private-key operation (constant time, fastest here);
//! the `rsa` crate only verifies PSS signatures with the maximum salt that the
//! reference implementation makes, a public-key operation.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{self, ParsedPublicKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use super::CryptoError;
use crate::wire::b64;

/// The only modulus size SOCP accepts.
pub const RSA_BITS: u32 = 4096;
/// The only public exponent SOCP accepts.
pub const RSA_EXPONENT: u32 = 65537;
/// The salt `socp` signs with: the SHA-256 output length.
pub const PSS_SALT_LEN: usize = 32;
/// The largest salt for RSA-4096 with SHA-256 (emLen - hLen - 2), which the
/// reference signs with.
pub const PSS_MAX_SALT_LEN: usize = 512 - 32 - 2;
/// Bytes of an RSA-4096 signature or OAEP ciphertext.
pub const RSA_BYTES: usize = 512;

const PEM_LABEL: &str = "PRIVATE KEY";

/// A public key that passed the key policy: RSA, 4096 bits, e = 65537.
/// Cheap to clone; parsed once for verifying and wrapping.
#[derive(Clone)]
pub struct PublicKey(Arc<PublicInner>);

struct PublicInner {
    spki: Vec<u8>,
    /// Shared: a user's session, its directory record and its connection
    /// keep this one copy (see DESIGN.md, "Memory per idle connection").
    b64: Arc<str>,
    verify: ParsedPublicKey,
    verify_max_salt: rsa::pss::VerifyingKey<sha2::Sha256>,
    oaep: OaepPublicEncryptingKey,
}

impl PublicKey {
    /// Parses base64url SPKI DER, as keys travel on the wire, and applies the
    /// key policy (C1).
    pub fn from_b64(text: &str) -> Result<Self, CryptoError> {
        let der = b64::decode(text).map_err(|_| CryptoError::BadKey("not base64url".into()))?;
        Self::from_spki_der(&der)
    }

    /// Parses DER SubjectPublicKeyInfo and applies the key policy (C1).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let parsed = rsa::PublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::BadKey(format!("not an RSA SubjectPublicKeyInfo: {e}")))?;
        let bits = parsed.n().as_ref().bit_width();
        if bits != RSA_BITS {
            return Err(CryptoError::BadKey(format!(
                "RSA-{bits} key; SOCP requires RSA-{RSA_BITS}"
            )));
        }
        if *parsed.e() != rsa::BoxedUint::from(RSA_EXPONENT) {
            return Err(CryptoError::BadKey(format!(
                "public exponent is not {RSA_EXPONENT}"
            )));
        }
        let verify = ParsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, der)
            .map_err(|e| CryptoError::BadKey(format!("aws-lc refused the key: {e}")))?;
        let oaep = PublicEncryptingKey::from_der(der)
            .map_err(|e| CryptoError::BadKey(format!("aws-lc refused the key: {e}")))
            .and_then(|k| {
                OaepPublicEncryptingKey::new(k)
                    .map_err(|_| CryptoError::BadKey("aws-lc refused the key for OAEP".into()))
            })?;
        Ok(PublicKey(Arc::new(PublicInner {
            spki: der.to_vec(),
            b64: b64::encode(der).into(),
            verify,
            verify_max_salt: rsa::pss::VerifyingKey::new_with_salt_len(parsed, PSS_MAX_SALT_LEN),
            oaep,
        })))
    }

    /// The key as it travels on the wire: base64url of the SPKI DER.
    pub fn to_b64(&self) -> &str {
        &self.0.b64
    }

    /// The same text, shared rather than copied: whatever keeps a peer's
    /// key for long (a session, a directory record) holds one allocation.
    pub fn b64_shared(&self) -> Arc<str> {
        self.0.b64.clone()
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.0.spki
    }

    /// SHA-256 of the SPKI DER in groups of four hex digits, for people to
    /// compare out of band.
    pub fn fingerprint(&self) -> String {
        super::fingerprint(&self.0.spki)
    }

    /// Verifies an RSASSA-PSS SHA-256 signature with a 32-byte or maximum salt.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if sig.len() != RSA_BYTES {
            return Err(CryptoError::BadSignature);
        }
        if self.0.verify.verify_sig(message, sig).is_ok() {
            return Ok(());
        }
        let sig = rsa::pss::Signature::try_from(sig).map_err(|_| CryptoError::BadSignature)?;
        self.0
            .verify_max_salt
            .verify(message, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies a base64url signature, as carried in `sig` and `content_sig`.
    pub fn verify_b64(&self, message: &[u8], sig: &str) -> Result<(), CryptoError> {
        let sig = b64::decode(sig).map_err(|_| CryptoError::BadSignature)?;
        self.verify(message, &sig)
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, no label) of a short secret.
    pub fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; self.0.oaep.ciphertext_size()];
        let len = self
            .0
            .oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, secret, &mut out, None)
            .map_err(|_| CryptoError::Wrap)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.spki == other.0.spki
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A private RSA-4096 identity: signs, unwraps, and knows its public key.
pub struct PrivateKey {
    signer: KeyPair,
    decrypter: OaepPrivateDecryptingKey,
    public: PublicKey,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl PrivateKey {
    /// Generates a fresh RSA-4096 key (about a second of CPU: keep it off
    /// the async reactor).
    pub fn generate() -> Result<Self, CryptoError> {
        let pair = KeyPair::generate(KeySize::Rsa4096).map_err(|_| CryptoError::KeyGen)?;
        let pkcs8 = pair.as_der().map_err(|_| CryptoError::KeyGen)?;
        Self::from_pkcs8_der(pkcs8.as_ref())
    }

    /// Loads a PKCS#8 DER private key and applies the key policy to its public half.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let signer = KeyPair::from_pkcs8(der)
            .map_err(|e| CryptoError::BadKey(format!("not an RSA PKCS#8 private key: {e}")))?;
        let private = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| CryptoError::BadKey(format!("not an RSA PKCS#8 private key: {e}")))?;
        let spki = private
            .public_key()
            .as_der()
            .map_err(|_| CryptoError::BadKey("cannot encode the public key".into()))?;
        let decrypter = OaepPrivateDecryptingKey::new(private).map_err(|_| CryptoError::KeyGen)?;
        let public = PublicKey::from_spki_der(spki.as_ref())?;
        Ok(PrivateKey {
            signer,
            decrypter,
            public,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// Parses a PKCS#8 PEM file's text (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| CryptoError::BadKey(format!("not a PEM file: {e}")))?;
        let der = Zeroizing::new(der);
        if label != PEM_LABEL {
            return Err(CryptoError::BadKey(format!(
                "PEM label is {label:?}; expected an unencrypted PKCS#8 \"{PEM_LABEL}\""
            )));
        }
        Self::from_pkcs8_der(&der)
    }

    /// The key as PKCS#8 PEM text.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(
            pem_rfc7468::encode_string(PEM_LABEL, pem_rfc7468::LineEnding::LF, &self.pkcs8)
                .unwrap_or_default(),
        )
    }

    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| CryptoError::Io(path.display().to_string(), e))?,
        );
        Self::from_pem(&text).map_err(|e| CryptoError::BadKey(format!("{}: {e}", path.display())))
    }

    /// Writes the key file, readable by its owner only (mode 0600), without
    /// ever leaving a wider-permission file on disk.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let io_err = |e| CryptoError::Io(path.display().to_string(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io_err)?;
        std::io::Write::write_all(&mut file, self.to_pem().as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    /// Loads the key at `path`, or generates and saves one if there is none.
    /// Returns the key and whether it was created.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), CryptoError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok((key, true))
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// RSASSA-PSS, SHA-256, 32-byte salt.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut sig = vec![0u8; self.signer.public_modulus_len()];
        self.signer
            .sign(
                &signature::RSA_PSS_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| CryptoError::Sign)?;
        Ok(sig)
    }

    /// [`Self::sign`], base64url-encoded.
    pub fn sign_b64(&self, message: &[u8]) -> Result<String, CryptoError> {
        self.sign(message).map(b64::encode)
    }

    /// RSA-OAEP decryption of a wrapped secret.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut out = Zeroizing::new(vec![0u8; self.decrypter.min_output_size()]);
        let len = self
            .decrypter
            .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, &mut out, None)
            .map_err(|_| CryptoError::Unwrap)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.public.fingerprint())
    }
}
