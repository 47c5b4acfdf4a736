//! Helpers shared by the integration tests: where the shared vectors are,
//! and the fixture keys (so no test pays for RSA-4096 key generation).
#![allow(dead_code)]

use std::path::PathBuf;

use socp::crypto::PrivateKey;

/// `../shared/vectors` beside the repository (override with `SOCP_VECTORS`).
pub fn vectors_dir() -> PathBuf {
    std::env::var_os("SOCP_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"))
}

/// Reads a vector file as JSON.
pub fn vector_json(name: &str) -> serde_json::Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture private key from `vectors/keys/NAME.pem` (or a path below vectors).
pub fn fixture_key(rel: &str) -> PrivateKey {
    let path = vectors_dir().join(rel);
    PrivateKey::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub mod browser;
pub mod clientproc;
pub mod cluster;
pub mod fakenode;
pub mod flood;
pub mod procs;
pub mod pty;
pub mod raw;
pub mod termproc;
pub mod tmpfs;
