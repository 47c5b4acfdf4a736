//! Key files, key wrap and fingerprints, with the fixture keys and a single
//! generated key.

mod common;

use common::fixture_key;
use socp::crypto::{PrivateKey, PublicKey};

#[test]
fn generated_key_saves_with_mode_0600_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/me.pem");
    let (key, created) = PrivateKey::load_or_generate(&path).unwrap();
    assert!(created);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
    let (again, created) = PrivateKey::load_or_generate(&path).unwrap();
    assert!(!created);
    assert_eq!(again.public(), key.public());
    // 4096-bit, e = 65537: passes our own policy.
    PublicKey::from_b64(key.public().to_b64()).unwrap();
    // Saving never overwrites an existing key file.
    assert!(key.save(&path).is_err());
}

#[test]
fn oaep_wraps_for_the_key_holder_only() {
    let alice = fixture_key("keys/alice.pem");
    let bob = fixture_key("keys/bob.pem");
    let wrapped = bob
        .public()
        .wrap(b"0123456789abcdef0123456789abcdef")
        .unwrap();
    assert_eq!(wrapped.len(), 512);
    assert_eq!(
        &bob.unwrap_key(&wrapped).unwrap()[..],
        b"0123456789abcdef0123456789abcdef"
    );
    assert!(alice.unwrap_key(&wrapped).is_err());
}

#[test]
fn fingerprint_is_grouped_sha256_hex() {
    let alice = fixture_key("keys/alice.pem");
    let fp = alice.public().fingerprint();
    let groups: Vec<&str> = fp.split(' ').collect();
    assert_eq!(groups.len(), 16);
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_ne!(fp, fixture_key("keys/bob.pem").public().fingerprint());
}

#[test]
fn refuses_garbage_and_wrong_pem_labels() {
    assert!(PrivateKey::from_pem("not a key").is_err());
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    let err = PrivateKey::from_pem(pem).unwrap_err().to_string();
    assert!(err.contains("PKCS#8") || err.contains("PEM"), "{err}");
    assert!(PublicKey::from_b64("!!!").is_err());
}
