//! RS256 and EdDSA tokens: an issuer signs with its private key, nodes verify with the
//! public key only. The key pairs in `fixtures/` exist for these tests alone.

use std::collections::BTreeMap;

use troupe_proto::clock::now_secs;
use troupe_proto::token::{parse_algorithm, Claims, Role, Signer, Verifier};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn claims() -> Claims {
    Claims {
        sub: "alice".into(),
        exp: now_secs() + 60,
        aud: "troupe".into(),
        name: None,
        scenes: BTreeMap::from([("s1".to_string(), Role::Edit)]),
        iat: Some(now_secs()),
        presence: false,
    }
}

#[test]
fn public_key_tokens_verify_and_refuse_other_keys() {
    for (alg, private, public, other_public) in [
        (
            "EdDSA",
            "ed25519-private.pem",
            "ed25519-public.pem",
            "rsa-public.pem",
        ),
        ("RS256", "rsa-private.pem", "rsa-public.pem", "ed25519-public.pem"),
    ] {
        let alg = parse_algorithm(alg).unwrap();
        let token = Signer::from_private_key_file(&fixture(private), alg)
            .unwrap()
            .sign(&claims())
            .unwrap();
        let verifier = Verifier::from_public_key_file(&fixture(public), alg, "troupe").unwrap();
        assert_eq!(verifier.verify(&token).unwrap().role_in("s1"), Some(Role::Edit));
        // A verifier holding a different kind of key fails to load or refuses the token.
        if let Ok(wrong) = Verifier::from_public_key_file(&fixture(other_public), alg, "troupe") {
            assert!(wrong.verify(&token).is_err());
        }
        // An HS256 token "signed" with the public key's bytes is refused (algorithm confusion).
        let pem = std::fs::read(fixture(public)).unwrap();
        let forged = Signer::from_secret(&pem).sign(&claims()).unwrap();
        assert!(verifier.verify(&forged).is_err());
    }
}
