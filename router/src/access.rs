//! Who may use the REST endpoints for a scene: the same tokens and grants as the
//! WebSocket, presented as `Authorization: Bearer <token>`. A `view` grant reads, an `edit`
//! grant reads and writes. Every scene-scoped endpoint asks [`authorize`], so they all
//! follow one rule.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use troupe_membership::ClusterState;
use troupe_proto::token::{Claims, Role, Verifier};

use crate::http::{error, Body};

/// What a request needs in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This router has no key to check tokens with.
    NoKeys,
    /// No `Authorization: Bearer` token.
    NoToken,
    /// A token that is invalid or expired.
    BadToken,
    /// An operator revoked the token's user (`troupectl revoke`).
    Revoked,
    /// A valid token that does not grant what the request needs in the scene.
    NotGranted,
}

impl Refusal {
    /// The answer: 503, 401 (with `WWW-Authenticate: Bearer`) or 403, as JSON.
    pub fn response(self) -> Response<Body> {
        match self {
            Refusal::NoKeys => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "tokens_unchecked",
                "this router cannot check tokens: set TROUPE_JWT_SECRET or TROUPE_JWT_PUBLIC_KEY_FILE",
            ),
            Refusal::NoToken => unauthorized("send the token as Authorization: Bearer <token>"),
            Refusal::BadToken => unauthorized("the token is invalid or expired"),
            Refusal::Revoked => unauthorized("access revoked"),
            Refusal::NotGranted => error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token does not grant this scene",
            ),
        }
    }
}

/// The claims of the request's token if it grants `need` in `scene` and the cluster
/// (`state`, once the router has heard from it) has not revoked its user.
pub fn authorize(
    headers: &HeaderMap,
    verifier: Option<&Verifier>,
    state: Option<&ClusterState>,
    scene: &str,
    need: Need,
) -> Result<Claims, Refusal> {
    let verifier = verifier.ok_or(Refusal::NoKeys)?;
    let token = bearer(headers).ok_or(Refusal::NoToken)?;
    let claims = verifier.verify(token).map_err(|_| Refusal::BadToken)?;
    if state.is_some_and(|state| state.revokes(&claims)) {
        return Err(Refusal::Revoked);
    }
    let granted = match (claims.role_in(scene), need) {
        (Some(Role::Edit), _) | (Some(Role::View), Need::Read) => true,
        (Some(Role::View), Need::Write) | (None, _) => false,
    };
    if granted {
        Ok(claims)
    } else {
        Err(Refusal::NotGranted)
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    troupe_proto::token::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// A 401 that asks for a bearer token.
pub(crate) fn unauthorized(message: &str) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
