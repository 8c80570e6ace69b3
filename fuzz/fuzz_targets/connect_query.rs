//! The node's WebSocket endpoint reads its query (token, acks) from whatever a client
//! sends, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_node::http::connect_query;

fuzz_target!(|data: &[u8]| {
    let _ = connect_query(&String::from_utf8_lossy(data));
});
