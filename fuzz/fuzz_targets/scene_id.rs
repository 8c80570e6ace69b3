//! The scene id rule and percent-decoding never panic, and an id they accept is one the
//! rule accepts once decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_proto::scene::{is_scene_id, percent_decode, scene_id};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = percent_decode(&text);
    if let Some(id) = scene_id(&text) {
        assert!(is_scene_id(&id), "{id:?}");
    }
});
