//! Envelope parsing and the typed catalogue: anything a peer sends either
//! parses into a message that writes back to the same canonical payload, or
//! is refused with an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socp::wire::messages::Message;
use socp::wire::{Envelope, canonical};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(env) = Envelope::parse(text) else { return };
    let original = canonical::map_to_string(&env.payload).expect("parse checked the canonical form");
    let _ = env.mac_bytes();
    if let Ok(msg) = Message::from_envelope(&env) {
        let again = canonical::map_to_string(&msg.to_payload()).expect("typed payloads are canonical");
        // Optional fields given as null are dropped on the way back; all else is kept.
        if !original.contains("null") {
            assert_eq!(again, original, "{} changed on round trip", env.kind);
        }
    }
});
