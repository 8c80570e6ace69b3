//! Minting Troupe access tokens (HS256 JWTs) for simulated editors.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The audience every Troupe token carries.
pub const AUDIENCE: &str = "troupe";

/// What a token allows in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Edit,
    View,
}

/// The claims of a Troupe token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scene id (or `*`) -> access.
    pub scenes: BTreeMap<String, Access>,
}

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
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let claims = Claims {
        sub: user.to_owned(),
        exp: (now + ttl).as_secs(),
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
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

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
