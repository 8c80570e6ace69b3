//! Whatever a client presents as a token — in the query, an `Authorization` header or an
//! offered subprotocol — is refused or accepted without a panic, and what the redirect
//! keeps of a query never holds a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_proto::token::{bearer, offered_protocols, query_without_token, Verifier};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let verifier = Verifier::from_secret(b"fuzzing-secret-0123456789abcdef0123", "troupe").with_dev_tokens();
    let _ = verifier.verify(&text);
    if let Some(token) = bearer(&text) {
        let _ = verifier.verify(token);
    }
    let (_, token) = offered_protocols(&text);
    if let Some(token) = token {
        let _ = verifier.verify(token);
    }
    let kept = query_without_token(&text);
    assert!(kept.split('&').all(|pair| pair.split('=').next() != Some("token")));
});
