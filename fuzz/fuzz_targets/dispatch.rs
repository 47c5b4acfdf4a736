//! Dispatch: arbitrary frames from a connected user and from a linked
//! server go through the router's state machine; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    socp::node::fuzz::dispatch(data);
});
