//! Minting Troupe access tokens (HS256 JWTs) for simulated editors.
//!
//! The claims and the signing are the node's own ([`troupe_node::auth`]), so a token minted
//! here is exactly what the node verifies.

use std::time::Duration;

use troupe_node::auth::{now_secs, Signer};

/// The claims of a Troupe token (the node's [`troupe_node::auth::Claims`]).
pub use troupe_node::auth::Claims;
/// What a token allows in a scene (the node's [`troupe_node::auth::Role`]).
pub use troupe_node::auth::Role as Access;

/// The audience every Troupe token carries (the node's default `TROUPE_JWT_AUDIENCE`).
pub const AUDIENCE: &str = "troupe";

/// Signs a token for `user` granting `scenes` (scene id or `*` -> access), valid for `ttl`.
///
/// ```
/// use troupe_chaos::client::{mint_token, Access};
/// let t = mint_token(b"0123456789abcdef", "ada", &[("*", Access::Edit)], std::time::Duration::from_secs(60)).unwrap();
/// assert_eq!(t.split('.').count(), 3);
/// ```
pub fn mint_token(
    secret: &[u8],
    user: &str,
    scenes: &[(&str, Access)],
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: user.to_owned(),
        exp: now_secs().saturating_add(ttl.as_secs()),
        aud: AUDIENCE.to_owned(),
        name: Some(user.to_owned()),
        scenes: scenes
            .iter()
            .map(|(scene, access)| ((*scene).to_owned(), *access))
            .collect(),
    };
    mint_claims(secret, &claims)
}

/// Signs arbitrary claims (for tests of expired tokens, wrong audiences, …).
pub fn mint_claims(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    Signer::from_secret(secret).sign(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    #[test]
    fn token_verifies_with_the_same_secret() {
        let secret = b"a-secret-of-16-chars";
        let token = mint_token(
            secret,
            "ada",
            &[("scene-1", Access::Edit), ("*", Access::View)],
            Duration::from_secs(60),
        )
        .expect("mint");
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        let data =
            jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(secret), &v).expect("verify");
        assert_eq!(data.claims.sub, "ada");
        assert_eq!(data.claims.scenes.get("scene-1"), Some(&Access::Edit));
        assert_eq!(data.claims.scenes.get("*"), Some(&Access::View));
        let json = serde_json::to_value(&data.claims).expect("json");
        assert_eq!(json["scenes"]["scene-1"], "edit");
    }
}
