//! Parsing a client frame must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_node::protocol::{parse_client_frame, ParseLimits};

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_frame(data, &ParseLimits::default());
});
