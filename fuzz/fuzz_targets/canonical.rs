//! Canonical JSON: any JSON value without floats canonicalizes, parses back
//! to the same value, and canonicalizes to the same bytes again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socp::wire::canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(once) = canonical::to_string(&value) else { return };
    let parsed: serde_json::Value = serde_json::from_str(&once).expect("canonical JSON parses");
    assert_eq!(parsed, value);
    assert_eq!(canonical::to_string(&parsed).unwrap(), once);
});
