//! Every input of the fuzz targets' seed corpora (`fuzz/seeds/<target>/`, and what local
//! fuzzing grew in `fuzz/corpus/<target>/`) replayed through the same checks as the target,
//! on every test run: a crash once found and added there stays fixed.

use std::path::{Path, PathBuf};

use troupe_node::http::connect_query;
use troupe_node::protocol::{parse_client_frame, ParseLimits};
use troupe_proto::scene::{is_scene_id, percent_decode, scene_id};
use troupe_proto::token::{bearer, offered_protocols, query_without_token, Verifier};

/// The inputs of `target`: its committed seeds and any local corpus.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut all = Vec::new();
    for dir in [fuzz.join("seeds").join(target), fuzz.join("corpus").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                all.push((entry.path(), bytes));
            }
        }
    }
    all
}

#[test]
fn token_inputs() {
    let inputs = inputs("token");
    assert!(inputs.len() >= 10, "the token seeds are missing");
    let verifier = Verifier::from_secret(b"fuzzing-secret-0123456789abcdef0123", "troupe").with_dev_tokens();
    for (path, data) in inputs {
        let text = String::from_utf8_lossy(&data);
        assert!(
            verifier.verify(&text).is_err(),
            "{path:?} verified with the fuzzing secret"
        );
        if let Some(token) = bearer(&text) {
            let _ = verifier.verify(token);
        }
        if let (_, Some(token)) = offered_protocols(&text) {
            let _ = verifier.verify(token);
        }
        let kept = query_without_token(&text);
        assert!(
            kept.split('&')
                .all(|pair| pair.split('=').next() != Some("token")),
            "{path:?}"
        );
    }
}

#[test]
fn scene_id_inputs() {
    let inputs = inputs("scene_id");
    assert!(inputs.len() >= 10, "the scene id seeds are missing");
    for (path, data) in inputs {
        let text = String::from_utf8_lossy(&data);
        let _ = percent_decode(&text);
        if let Some(id) = scene_id(&text) {
            assert!(is_scene_id(&id), "{path:?}: {id:?}");
        }
    }
}

#[test]
fn connect_query_inputs() {
    let inputs = inputs("connect_query");
    assert!(inputs.len() >= 10, "the query seeds are missing");
    for (_, data) in inputs {
        let _ = connect_query(&String::from_utf8_lossy(&data));
    }
    assert_eq!(
        connect_query("token=a.b.c&acks=1").token.as_deref(),
        Some("a.b.c")
    );
    assert_eq!(
        connect_query("token=a&token=b").token,
        None,
        "a token given twice is none"
    );
}

#[test]
fn message_inputs() {
    for (_, data) in inputs("decode_message") {
        let _ = parse_client_frame(&data, &ParseLimits::default());
    }
}
