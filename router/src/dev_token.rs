//! Dev tokens (`TROUPE_DEV_TOKENS=1`): `GET /v1/dev/token?user=NAME` signs a token that
//! edits every scene, so the demo page works without an app backend to mint tokens.
//!
//! The token is what the nodes verify ([`troupe_proto::token`]): HS256 with their
//! `TROUPE_JWT_SECRET`, claims `sub` and `name` (the user), `aud`, `exp` an hour ahead and
//! `scenes: {"*": "edit"}`. Anyone who can reach the router gets one, hence off by default
//! and a loud warning when on. Tokens are never logged.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use troupe_proto::clock::now_secs;
pub use troupe_proto::token::MIN_SECRET_LEN;
use troupe_proto::token::{Claims, Role, Signer};

use crate::http::Body;

/// `GET /v1/dev/token?user=NAME`.
pub const PATH: &str = "/v1/dev/token";

/// How long a dev token is valid.
pub const TTL: Duration = Duration::from_secs(3600);

/// Logged and printed at start while dev tokens are on.
pub const WARNING: &str =
    "dev tokens are ON: anyone who can reach this router can edit every scene; never enable in production";

/// Longest user name, in characters.
pub const MAX_USER_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevTokenError {
    #[error("TROUPE_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    #[error("TROUPE_JWT_AUDIENCE must not be empty")]
    NoAudience,
}

/// Why a user name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadUser {
    #[error("give the user's name: ?user=NAME")]
    Missing,
    #[error("a user name is 1-32 letters, digits, spaces and -_. (no space at either end)")]
    Invalid,
}

/// What signs dev tokens. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DevTokens {
    secret: String,
    audience: String,
}

impl fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevTokens")
            .field("secret", &"<hidden>")
            .field("audience", &self.audience)
            .finish()
    }
}

impl DevTokens {
    /// Signs with `secret` for `audience` ([`troupe_proto::token::DEV_AUDIENCE`], which
    /// nodes accept only when told to).
    pub fn new(secret: &str, audience: &str) -> Result<DevTokens, DevTokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(DevTokenError::ShortSecret);
        }
        if audience.is_empty() {
            return Err(DevTokenError::NoAudience);
        }
        Ok(DevTokens {
            secret: secret.to_string(),
            audience: audience.to_string(),
        })
    }

    /// A token for `user` (already checked) editing every scene, valid for [`TTL`] from
    /// `now` (seconds since the Unix epoch).
    pub fn mint(&self, user: &str, now: u64) -> Result<String, troupe_proto::token::JwtError> {
        let claims = Claims {
            sub: user.to_owned(),
            exp: now.saturating_add(TTL.as_secs()),
            aud: self.audience.clone(),
            name: Some(user.to_owned()),
            scenes: BTreeMap::from([("*".to_owned(), Role::Edit)]),
            iat: Some(now),
            presence: false,
        };
        Signer::from_secret(self.secret.as_bytes()).sign(&claims)
    }
}

/// Whether `name` may be a user's name: it ends up in every peer's presence list.
pub fn valid_user(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_USER_CHARS).contains(&chars)
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
}

/// The query of `GET /v1/dev/token`: `user`, decoded (`+` and `%20` are spaces).
#[derive(Debug, Default, Deserialize)]
pub struct TokenQuery {
    pub user: Option<String>,
}

/// The user a query asks a token for, checked. A query that does not parse (`user` given
/// twice) names no valid user.
pub fn user_of(query: Result<Query<TokenQuery>, QueryRejection>) -> Result<String, BadUser> {
    let Ok(Query(TokenQuery { user })) = query else {
        return Err(BadUser::Invalid);
    };
    match user {
        None => Err(BadUser::Missing),
        Some(name) if name.is_empty() => Err(BadUser::Missing),
        Some(name) if valid_user(&name) => Ok(name),
        Some(_) => Err(BadUser::Invalid),
    }
}

/// `GET /v1/dev/token?user=NAME`; without dev tokens, the same 404 as any unknown path.
pub fn answer(user: Result<String, BadUser>, tokens: Option<&DevTokens>) -> Response<Body> {
    let Some(tokens) = tokens else {
        return crate::http::error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
    let user = match user {
        Ok(user) => user,
        Err(bad) => {
            return crate::http::no_store(crate::http::error(
                StatusCode::BAD_REQUEST,
                "bad_user",
                &bad.to_string(),
            ))
        }
    };
    match tokens.mint(&user, now_secs()) {
        Ok(token) => {
            tracing::info!(%user, "dev token issued");
            let body = json!({ "token": token, "user": user, "expires_in": TTL.as_secs() });
            crate::http::no_store(crate::http::text(
                StatusCode::OK,
                "application/json",
                format!("{body}\n"),
            ))
        }
        Err(error) => {
            tracing::error!(%error, "cannot sign a dev token");
            crate::http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot sign a token",
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;
    use hyper::{header, Uri};
    use troupe_proto::token::Verifier;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    async fn json_of(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_nodes_accept_a_dev_token() {
        let tokens = DevTokens::new(SECRET, "troupe").unwrap();
        let token = tokens.mint("Ada Lovelace", now_secs()).unwrap();
        let claims = Verifier::from_secret(SECRET.as_bytes(), "troupe")
            .verify(&token)
            .unwrap();
        assert_eq!(claims.sub, "Ada Lovelace");
        assert_eq!(claims.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(claims.role_in("any-scene"), Some(Role::Edit));
        assert!(claims.exp >= now_secs() + 3590 && claims.exp <= now_secs() + 3600);

        // Another secret, another audience or an expired token is refused.
        let other = Verifier::from_secret(b"another secret of 16+", "troupe");
        assert!(other.verify(&token).is_err());
        let other_aud = Verifier::from_secret(SECRET.as_bytes(), "prod");
        assert!(other_aud.verify(&token).is_err());
        let old = tokens.mint("ada", now_secs() - 2 * 3600).unwrap();
        assert!(Verifier::from_secret(SECRET.as_bytes(), "troupe")
            .verify(&old)
            .is_err());
    }

    #[test]
    fn secrets_follow_the_node_rule_and_stay_hidden() {
        assert_eq!(DevTokens::new("short", "troupe"), Err(DevTokenError::ShortSecret));
        assert_eq!(
            DevTokens::new(&"x".repeat(31), "troupe"),
            Err(DevTokenError::ShortSecret)
        );
        assert_eq!(DevTokens::new(SECRET, ""), Err(DevTokenError::NoAudience));
        let tokens = DevTokens::new(SECRET, "troupe").unwrap();
        assert!(!format!("{tokens:?}").contains(SECRET));
    }

    /// The user of a request's query, as the route extracts it.
    fn user_param(query: Option<&str>) -> Result<String, BadUser> {
        let uri: Uri = match query {
            Some(query) => format!("{PATH}?{query}"),
            None => PATH.to_string(),
        }
        .parse()
        .unwrap();
        user_of(Query::try_from_uri(&uri))
    }

    #[test]
    fn user_names() {
        for (query, want) in [
            ("user=ada", "ada"),
            ("user=Ada%20Lovelace", "Ada Lovelace"),
            ("user=Ada+Lovelace", "Ada Lovelace"),
            ("x=1&user=a.b-c_d", "a.b-c_d"),
            ("user=Zo%C3%AB", "Zoë"),
            ("user=7", "7"),
        ] {
            assert_eq!(user_param(Some(query)).as_deref(), Ok(want), "{query}");
        }
        let longest = "x".repeat(32);
        assert_eq!(user_param(Some(&format!("user={longest}"))), Ok(longest));
        for (query, want) in [
            (None, BadUser::Missing),
            (Some(""), BadUser::Missing),
            (Some("name=ada"), BadUser::Missing),
            (Some("user="), BadUser::Missing),
            (Some("user=%20ada"), BadUser::Invalid),
            (Some("user=ada+"), BadUser::Invalid),
            (Some("user=a/b"), BadUser::Invalid),
            (Some("user=%3Cscript%3E"), BadUser::Invalid),
            (Some("user=a%00b"), BadUser::Invalid),
            (Some("user=a%0Ab"), BadUser::Invalid),
            (Some("user=%zz"), BadUser::Invalid),
            (Some("user=a%2Bb"), BadUser::Invalid),
            (Some("user=%C3"), BadUser::Invalid),
            (Some("user=ada&user=bob"), BadUser::Invalid),
        ] {
            assert_eq!(user_param(query), Err(want), "{query:?}");
        }
        let too_long = format!("user={}", "x".repeat(33));
        assert_eq!(user_param(Some(&too_long)), Err(BadUser::Invalid));
        // Characters, not bytes: 32 two-byte letters are fine.
        let accents = format!("user={}", "%C3%A9".repeat(32));
        assert_eq!(user_param(Some(&accents)).map(|u| u.chars().count()), Ok(32));
    }

    #[tokio::test]
    async fn the_endpoint() {
        let off = answer(Ok("ada".into()), None);
        assert_eq!(off.status(), StatusCode::NOT_FOUND);
        assert_eq!(json_of(off).await["error"], "not_found");

        let tokens = DevTokens::new(SECRET, "troupe").unwrap();
        let r = answer(user_param(Some("user=ada")), Some(&tokens));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let json = json_of(r).await;
        assert_eq!(json["user"], "ada");
        assert_eq!(json["expires_in"], 3600);
        let token = json["token"].as_str().unwrap();
        let claims = Verifier::from_secret(SECRET.as_bytes(), "troupe")
            .verify(token)
            .unwrap();
        assert_eq!(claims.sub, "ada");

        let bad = answer(user_param(Some("user=%3Cb%3E")), Some(&tokens));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let json = json_of(bad).await;
        assert_eq!(json["error"], "bad_user");
        assert!(json["message"].as_str().unwrap().contains("1-32"));
        assert_eq!(
            answer(user_param(None), Some(&tokens)).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
