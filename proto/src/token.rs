//! Access tokens: JWTs minted by the app's backend that scope a user to scenes.
//!
//! Claims: `sub`, `exp`, `aud`, optional `name`, and `scenes`, a map from scene id (or `*`)
//! to `edit` or `view`. Nodes verify the signature, expiry and audience on every connect;
//! `troupectl token`, the router's demo tokens and the test tools sign with the same
//! [`Signer`]. A token is never logged.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token allows in one scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and writes the document.
    Edit,
    /// Reads only: updates from this connection are never applied.
    View,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "edit" => Ok(Role::Edit),
            "view" => Ok(Role::View),
            other => Err(format!("role must be edit or view, not {other:?}")),
        }
    }
}

/// Why a token could not be signed or verified.
pub use jsonwebtoken::errors::Error as JwtError;

/// The audience nodes expect unless configured otherwise (`TROUPE_JWT_AUDIENCE`).
pub const DEFAULT_AUDIENCE: &str = "troupe";

/// Clock skew tolerated on `exp` (seconds): a token is refused, and a connection that
/// presented it closed, this long after it expires.
pub const LEEWAY_SECS: u64 = 5;

/// The audience of the demo tokens a router mints for anyone who asks (`TROUPE_DEV_TOKENS`):
/// nodes accept it only when told to (`TROUPE_ACCEPT_DEV_TOKENS`), so that a router serving
/// dev tokens by mistake hands out nothing a production node takes.
pub const DEV_AUDIENCE: &str = "troupe-dev";

/// The shortest HS256 secret (`TROUPE_JWT_SECRET`) a node or router accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The claims Troupe reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scenes: BTreeMap<String, Role>,
    /// When the token was issued (seconds since the Unix epoch). A revocation of the user
    /// refuses the tokens issued before it, and those that do not say when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Lets a view-only token publish presence (its cursor and name) to the scene's other
    /// users; editors always may. Without it a viewer's presence reaches nobody else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
}

impl Claims {
    /// What a connection keeps once admitted: who, until when, and when the token was
    /// issued (revocations). The scene grants, audience and display name were for admission,
    /// and a token may grant many scenes.
    pub fn into_identity(self) -> Claims {
        Claims {
            aud: String::new(),
            name: None,
            scenes: BTreeMap::new(),
            ..self
        }
    }

    /// The role this token grants in `scene`: an exact entry wins, then the longest
    /// prefix grant that matches (`project-42:*`), then `*`.
    pub fn role_in(&self, scene: &str) -> Option<Role> {
        if let Some(role) = self.scenes.get(scene) {
            return Some(*role);
        }
        self.scenes
            .iter()
            .filter_map(|(grant, role)| Some((grant.strip_suffix('*')?, role)))
            .filter(|(prefix, _)| scene.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, role)| *role)
    }

    /// Whether a revocation of this user at `not_before` (seconds since the Unix epoch)
    /// refuses this token: it was issued earlier, or does not say when.
    pub fn revoked_by(&self, not_before: u64) -> bool {
        self.iat.is_none_or(|issued| issued < not_before)
    }

    /// Whether a connection in `role` may publish presence.
    pub fn publishes_presence(&self, role: Role) -> bool {
        role == Role::Edit || self.presence
    }

    /// The name collaborators see: the token's `name`, or its subject when it has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sub)
    }

    /// How long until a connection that presented these claims must be closed (expiry
    /// plus [`LEEWAY_SECS`]), from `now` in seconds since the Unix epoch.
    pub fn valid_for(&self, now: u64) -> Duration {
        Duration::from_secs(self.exp.saturating_add(LEEWAY_SECS).saturating_sub(now))
    }

    /// Claims for `user` (also its display name) granting `scenes` (scene id or `*` ->
    /// role), valid for `ttl` from now.
    pub fn grant(user: &str, audience: &str, scenes: &[(&str, Role)], ttl: Duration) -> Claims {
        Claims {
            sub: user.to_owned(),
            exp: now_secs().saturating_add(ttl.as_secs()),
            aud: audience.to_owned(),
            name: Some(user.to_owned()),
            scenes: scenes
                .iter()
                .map(|(scene, role)| ((*scene).to_owned(), *role))
                .collect(),
            iat: Some(now_secs()),
            presence: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token rejected: it is valid for longer than the {0:?} allowed")]
    TooLong(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("key file {path} is not a PEM key for {alg:?}: {source}")]
    Parse {
        path: String,
        alg: Algorithm,
        source: jsonwebtoken::errors::Error,
    },
    #[error("unsupported JWT algorithm {0:?}: use HS256, RS256 or EdDSA")]
    Algorithm(String),
}

/// Parses the algorithm name used in configuration.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::Algorithm(other.to_string())),
    }
}

fn read_pem(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_string(),
        source,
    })
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme in any case).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The WebSocket subprotocol a client offers to say that it presents its token in the
/// handshake's `Sec-WebSocket-Protocol` header (browsers cannot set other headers on a
/// WebSocket), beside [`BEARER_PROTOCOL_PREFIX`]`<token>`. The node selects it.
pub const PROTOCOL: &str = "troupe";

/// The prefix of the offered subprotocol that carries the token: `troupe.bearer.<JWT>` (a
/// JWT's characters are all allowed in a subprotocol name).
pub const BEARER_PROTOCOL_PREFIX: &str = "troupe.bearer.";

/// What a `Sec-WebSocket-Protocol` request header offers: whether [`PROTOCOL`] is among
/// the subprotocols, and the token of a `troupe.bearer.<token>` one.
pub fn offered_protocols(header: &str) -> (bool, Option<&str>) {
    let mut troupe = false;
    let mut token = None;
    for offered in header.split(',').map(str::trim) {
        if offered == PROTOCOL {
            troupe = true;
        } else if let Some(t) = offered.strip_prefix(BEARER_PROTOCOL_PREFIX) {
            if !t.is_empty() {
                token = Some(t);
            }
        }
    }
    (troupe, token)
}

/// The query string without its `token` parameters (however the name is percent-encoded),
/// the others exactly as written: a redirect must not copy a token into a `Location`
/// header, which proxies and browsers record.
pub fn query_without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            percent_decoded(name).as_deref() != Some(b"token".as_slice())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `name` with `%XX` and `+` decoded, as a query parser reads it (`None` if malformed).
fn percent_decoded(name: &str) -> Option<Vec<u8>> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Whether a presented `Authorization` header carries the static bearer token `expected`
/// (e.g. the one that guards `/metrics`), compared in time that does not depend on where
/// the two differ.
pub fn has_static_bearer(authorization: Option<&str>, expected: &str) -> bool {
    let Some(token) = authorization.and_then(bearer) else {
        return false;
    };
    let (a, b) = (token.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Verifies tokens presented by clients.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// The `aud` required (besides [`DEV_AUDIENCE`] once dev tokens are accepted).
    audience: String,
    /// The longest a token may be valid from when it is checked; `None`: no limit.
    max_lifetime: Option<Duration>,
}

impl Verifier {
    /// A verifier for HS256 tokens signed with a shared secret.
    pub fn from_secret(secret: &[u8], audience: &str) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, audience)
    }

    /// A verifier for RS256 or EdDSA tokens, given the issuer's public key (PEM).
    pub fn from_public_key_file(path: &str, alg: Algorithm, audience: &str) -> Result<Self, KeyError> {
        let pem = read_pem(path)?;
        let key = match alg {
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|source| KeyError::Parse {
            path: path.to_string(),
            alg,
            source,
        })?;
        Ok(Self::new(key, alg, audience))
    }

    fn new(key: DecodingKey, alg: Algorithm, audience: &str) -> Self {
        // Only the configured algorithm is accepted, so `alg: none` and algorithm
        // confusion (an HS256 token "signed" with a public key) are refused.
        let mut validation = Validation::new(alg);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // `nbf` is optional; a token that carries one is refused before that time.
        validation.validate_nbf = true;
        Self {
            key,
            validation,
            audience: audience.to_string(),
            max_lifetime: None,
        }
    }

    /// Also accepts dev tokens ([`DEV_AUDIENCE`]).
    pub fn with_dev_tokens(mut self) -> Self {
        self.validation
            .set_audience(&[self.audience.as_str(), DEV_AUDIENCE]);
        self
    }

    /// Also requires `iss` to be `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
        self
    }

    /// Also refuses tokens that stay valid for longer than `max` from when they are
    /// checked, so that a leaked long-lived token is no use.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Checks signature, expiry and audience, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        if let Some(max) = self.max_lifetime {
            if data.claims.exp > now_secs().saturating_add(max.as_secs()) {
                return Err(AuthError::TooLong(max));
            }
        }
        Ok(data.claims)
    }
}

/// Mints tokens (`troupectl token`, the router's demo tokens, the test tools).
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
}

impl Signer {
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
            alg: Algorithm::HS256,
        }
    }

    pub fn from_private_key_file(path: &str, alg: Algorithm) -> Result<Self, KeyError> {
        let pem = read_pem(path)?;
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .map_err(|source| KeyError::Parse {
            path: path.to_string(),
            alg,
            source,
        })?;
        Ok(Self { key, alg })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key)
    }
}

use crate::clock::now_secs;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(scenes: &[(&str, Role)], exp: u64, aud: &str) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            aud: aud.into(),
            name: Some("Alice".into()),
            scenes: scenes.iter().map(|(s, r)| (s.to_string(), *r)).collect(),
            iat: None,
            presence: false,
        }
    }

    #[test]
    fn accepts_a_valid_token_and_scopes_scenes() {
        let signer = Signer::from_secret(b"secret");
        let verifier = Verifier::from_secret(b"secret", "troupe");
        let token = signer
            .sign(&claims(
                &[("s1", Role::Edit), ("*", Role::View)],
                now_secs() + 60,
                "troupe",
            ))
            .unwrap();
        let got = verifier.verify(&token).unwrap();
        assert_eq!(got.role_in("s1"), Some(Role::Edit));
        assert_eq!(got.role_in("other"), Some(Role::View));
        let only_s1 = signer
            .sign(&claims(&[("s1", Role::View)], now_secs() + 60, "troupe"))
            .unwrap();
        assert_eq!(verifier.verify(&only_s1).unwrap().role_in("s2"), None);
    }

    #[test]
    fn an_identity_keeps_who_until_when_and_since_when_only() {
        let mut full = claims(&[("s1", Role::Edit), ("*", Role::View)], 1_000, "troupe");
        full.iat = Some(500);
        full.presence = true;
        let identity = full.clone().into_identity();
        assert_eq!(
            (identity.sub.as_str(), identity.exp, identity.iat),
            ("alice", 1_000, Some(500))
        );
        assert!(identity.presence);
        assert!(identity.scenes.is_empty() && identity.aud.is_empty() && identity.name.is_none());
        // Revocation and expiry read the same from both.
        for not_before in [400, 500, 501] {
            assert_eq!(identity.revoked_by(not_before), full.revoked_by(not_before));
        }
        assert_eq!(identity.valid_for(900), full.valid_for(900));
    }

    #[test]
    fn rejects_bad_tokens() {
        let signer = Signer::from_secret(b"secret");
        let verifier = Verifier::from_secret(b"secret", "troupe");
        let scenes = [("s1", Role::Edit)];
        let expired = signer.sign(&claims(&scenes, now_secs() - 600, "troupe")).unwrap();
        let wrong_aud = signer.sign(&claims(&scenes, now_secs() + 60, "other")).unwrap();
        let wrong_key = Signer::from_secret(b"not the secret")
            .sign(&claims(&scenes, now_secs() + 60, "troupe"))
            .unwrap();
        // An unsigned token: header {"alg":"none"} and an empty signature.
        let unsigned = {
            use base64_url as b64;
            let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
            let body = b64::encode(
                serde_json::to_vec(&claims(&scenes, now_secs() + 60, "troupe"))
                    .unwrap()
                    .as_slice(),
            );
            format!("{header}.{body}.")
        };
        for token in [
            expired,
            wrong_aud,
            wrong_key,
            unsigned,
            "garbage".into(),
            "a.b.c".into(),
        ] {
            assert!(verifier.verify(&token).is_err(), "accepted {token}");
        }
        assert!(matches!(verifier.verify(""), Err(AuthError::Missing)));
    }

    #[test]
    fn static_bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(has_static_bearer(Some("Bearer s3cret"), "s3cret"));
        assert!(!has_static_bearer(Some("Bearer s3cre"), "s3cret"));
        assert!(!has_static_bearer(Some("Bearer s3creT"), "s3cret"));
        assert!(!has_static_bearer(None, "s3cret"));
    }

    #[test]
    fn grants_exact_then_longest_prefix_then_everything() {
        let c = claims(
            &[
                ("project-42:*", Role::Edit),
                ("project-42:drafts:*", Role::View),
                ("project-42:drafts:final", Role::Edit),
                ("*", Role::View),
            ],
            now_secs() + 60,
            "troupe",
        );
        assert_eq!(c.role_in("project-42:act-1"), Some(Role::Edit));
        assert_eq!(c.role_in("project-42:drafts:old"), Some(Role::View));
        assert_eq!(c.role_in("project-42:drafts:final"), Some(Role::Edit));
        assert_eq!(c.role_in("project-7:act-1"), Some(Role::View));
        let narrow = claims(&[("project-42:*", Role::Edit)], now_secs() + 60, "troupe");
        assert_eq!(narrow.role_in("project-43:x"), None);
        assert_eq!(
            narrow.role_in("project-42"),
            None,
            "the prefix includes the colon"
        );
    }

    #[test]
    fn not_before_issuer_and_lifetime_are_checked() {
        #[derive(serde::Serialize)]
        struct Extra<'a> {
            #[serde(flatten)]
            claims: Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            nbf: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
        }
        let sign = |exp: u64, nbf: Option<u64>, iss: Option<&str>| {
            let claims = claims(&[("s1", Role::Edit)], exp, "troupe");
            let key = EncodingKey::from_secret(b"secret");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &Extra { claims, nbf, iss }, &key).unwrap()
        };
        let verifier = Verifier::from_secret(b"secret", "troupe");
        let now = now_secs();
        assert!(verifier.verify(&sign(now + 60, Some(now - 10), None)).is_ok());
        assert!(
            verifier.verify(&sign(now + 60, Some(now + 600), None)).is_err(),
            "not yet valid"
        );
        let issuer = verifier.clone().with_issuer("https://app.example");
        assert!(issuer
            .verify(&sign(now + 60, None, Some("https://app.example")))
            .is_ok());
        assert!(issuer
            .verify(&sign(now + 60, None, Some("https://other")))
            .is_err());
        assert!(
            issuer.verify(&sign(now + 60, None, None)).is_err(),
            "iss required"
        );
        let short = verifier.with_max_lifetime(Duration::from_secs(3600));
        assert!(short.verify(&sign(now + 600, None, None)).is_ok());
        assert!(matches!(
            short.verify(&sign(now + 7 * 24 * 3600, None, None)),
            Err(AuthError::TooLong(_))
        ));
    }

    /// Minimal unpadded base64url, enough to forge test tokens.
    mod base64_url {
        pub fn encode(bytes: &[u8]) -> String {
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn redirects_drop_every_token_and_keep_the_rest_as_written() {
        assert_eq!(query_without_token("token=a.b.c&acks=1"), "acks=1");
        assert_eq!(
            query_without_token("acks=1&%74oken=x&x=%2F&token&tok=1"),
            "acks=1&x=%2F&tok=1"
        );
        assert_eq!(query_without_token("a=1&&b=2+3&tok%en=1"), "a=1&b=2+3&tok%en=1");
        assert_eq!(query_without_token("token=1&token=2"), "");
        assert_eq!(query_without_token(""), "");
    }

    #[test]
    fn the_token_rides_in_an_offered_subprotocol() {
        assert_eq!(
            offered_protocols("troupe, troupe.bearer.a.b-c_d"),
            (true, Some("a.b-c_d"))
        );
        assert_eq!(offered_protocols("troupe.bearer.x,troupe"), (true, Some("x")));
        assert_eq!(offered_protocols("chat"), (false, None));
        assert_eq!(offered_protocols("troupe, troupe.bearer."), (true, None));
    }
}
