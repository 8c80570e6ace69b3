//! Minting Troupe access tokens (HS256 JWTs) for simulated editors, with the shared claims
//! and signer ([`troupe_proto::token`]), so a token minted here is exactly what nodes verify.

use std::time::Duration;

use troupe_proto::token::Signer;
pub use troupe_proto::token::{Claims, Role as Access, DEFAULT_AUDIENCE as AUDIENCE};

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
    let claims = Claims::grant(user, AUDIENCE, scenes, ttl);
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
        let secret = b"a-secret-of-at-least-32-characters";
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
