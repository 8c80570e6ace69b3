//! Who may use the REST endpoints for a scene: the same tokens and grants as the
//! WebSocket, presented as `Authorization: Bearer <token>`. A `view` grant reads, an `edit`
//! grant reads and writes. Every scene-scoped endpoint asks [`authorize`], so they all
//! follow one rule.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use troupe_proto::token::{Claims, Role, Verifier};

use crate::http::{error, Body};

/// What a request needs in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// The claims of the request's token if it grants `need` in `scene`, or the answer to
/// send: 503 when this router cannot check tokens, 401 without a valid token, 403 when
/// the token does not grant the scene.
pub fn authorize(
    headers: &HeaderMap,
    verifier: Option<&Verifier>,
    scene: &str,
    need: Need,
) -> Result<Claims, Response<Body>> {
    let Some(verifier) = verifier else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tokens_unchecked",
            "this router cannot check tokens: set TROUPE_JWT_SECRET or TROUPE_JWT_PUBLIC_KEY_FILE",
        ));
    };
    let Some(token) = bearer(headers) else {
        return Err(unauthorized("send the token as Authorization: Bearer <token>"));
    };
    let claims = verifier
        .verify(token)
        .map_err(|_| unauthorized("the token is invalid or expired"))?;
    let granted = match (claims.role_in(scene), need) {
        (Some(Role::Edit), _) | (Some(Role::View), Need::Read) => true,
        (Some(Role::View), Need::Write) | (None, _) => false,
    };
    if !granted {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not grant this scene",
        ));
    }
    Ok(claims)
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
