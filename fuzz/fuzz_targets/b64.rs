//! base64url: whatever decodes re-encodes (unpadded) and decodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socp::wire::b64;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(bytes) = b64::decode(text) {
        let again = b64::encode(&bytes);
        assert!(!again.contains('='));
        assert_eq!(b64::decode(&again).unwrap(), bytes);
    }
    let encoded = b64::encode(data);
    assert_eq!(b64::decode(&encoded).unwrap(), data);
});
