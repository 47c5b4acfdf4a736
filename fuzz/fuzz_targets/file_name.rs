//! The received-file-name sanitizer (PROTOCOL.md C7): whatever a peer names
//! a file, what we save is one safe base name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socp::client::files::{MAX_NAME_BYTES, safe_name};

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let safe = safe_name(&name);
    assert!(!safe.is_empty());
    assert!(safe.len() <= MAX_NAME_BYTES, "{} bytes", safe.len());
    assert!(!safe.contains('/') && !safe.contains('\\'));
    assert!(!safe.starts_with('.'));
    assert!(!safe.chars().any(char::is_control));
    assert_ne!(safe, "..");
});
