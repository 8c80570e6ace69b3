//! The scene API of a node (`/v1/scenes/{scene}/…`), answered by the scene's owner:
//! [`content`] (the scene as blocks, text or Fountain; autosaves and edits merged into the
//! live document) and [`history`] (versions, and restoring one). The router checks tokens
//! too and forwards here; a node answers only for scenes it owns (421 elsewhere), so a
//! request never reads or changes a former owner's stale copy.

// A refusal is the answer itself, sent as it is: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod content;
pub mod history;

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::oneshot;
use troupe_membership::placement::Verdict;
use troupe_proto::scene::is_scene_id;
use troupe_proto::token::{Claims, Role};

use crate::content::blocks::Block;
use crate::http::text;
use crate::room::RoomCmd;
use crate::server::App;

/// A JSON error answer: `{"error": kind, "message": …}`.
pub(crate) fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_answer(status, serde_json::json!({ "error": kind, "message": message }))
}

/// A JSON answer, never cached.
pub(crate) fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    no_store(text(status, "application/json", body.to_string()))
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A request body as JSON of type `T`: 413 when it was over the port's limit, 422 (naming
/// what is wrong) when it does not parse.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, Response> {
    let body = body.map_err(|_| {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is too large",
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| json_error(StatusCode::UNPROCESSABLE_ENTITY, "bad_body", &e.to_string()))
}

/// The scene of the path, if it is a scene id.
fn scene_of(scene: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    scene
        .ok()
        .map(|Path(s)| s)
        .filter(|s| is_scene_id(s))
        .ok_or_else(|| json_error(StatusCode::NOT_FOUND, "bad_scene", "not a scene id"))
}

/// How a scene's blocks are answered: `?format=json|text|fountain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Fountain,
}

impl Format {
    fn of(format: Option<&str>) -> Result<Self, Response> {
        match format.unwrap_or("json") {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            "fountain" => Ok(Self::Fountain),
            _ => Err(json_error(
                StatusCode::BAD_REQUEST,
                "bad_format",
                "format is json, text or fountain",
            )),
        }
    }

    /// The answer: `json` (the blocks with `fields`) or plain text.
    fn render(self, blocks: &[Block], mut fields: serde_json::Value) -> Response {
        let as_text = |body| no_store(text(StatusCode::OK, "text/plain; charset=utf-8", body));
        match self {
            Self::Text => as_text(crate::content::fountain::plain_text(blocks)),
            Self::Fountain => as_text(crate::content::fountain::fountain(blocks)),
            Self::Json => {
                fields["blocks"] = serde_json::json!(blocks);
                json_answer(StatusCode::OK, fields)
            }
        }
    }
}

/// Asks the scene's room (started if needed) and waits for its answer; `None` when the
/// room is going (moving, unloading) or does not answer in time.
async fn ask_room<T>(
    app: &App,
    scene: &str,
    wait: Duration,
    command: impl FnOnce(oneshot::Sender<T>) -> RoomCmd,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    let room = app.rooms.get_or_start(scene);
    room.tx.send(command(reply)).await.ok()?;
    tokio::time::timeout(wait, answer).await.ok()?.ok()
}

/// The answer for a room that is going.
fn unavailable() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the scene is loading or moving; try again",
    )
}

/// The checks every scene request passes: a token that grants the scene (`need`: an
/// editor's role to change it), this node its owner, and a scene that exists (here or in
/// P1). Answers the token's claims, or the refusal to send.
pub(crate) async fn access(
    app: &App,
    headers: &HeaderMap,
    scene: &str,
    need: Role,
) -> Result<Claims, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(troupe_proto::token::bearer);
    let Some(claims) = token.and_then(|t| app.settings.verifier.verify(t).ok()) else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid token as Authorization: Bearer <token>",
        ));
    };
    if app.revocations.borrow().refuses(&claims) {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "access revoked",
        ));
    }
    let role = claims.role_in(scene);
    if role.is_none() || (need == Role::Edit && role != Some(Role::Edit)) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            if role.is_none() {
                "the token does not grant this scene"
            } else {
                "the token may only read this scene"
            },
        ));
    }
    let verdict = app.placement.borrow().verdict(app.settings.node_id, scene);
    match verdict {
        Verdict::Mine { .. } => {}
        Verdict::Elsewhere(route) => {
            return Err(json_error(
                StatusCode::MISDIRECTED_REQUEST,
                "moved",
                &format!("served by {}", route.url),
            ))
        }
        Verdict::NoOwner => {
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_owner",
                "no node serves this scene yet",
            ))
        }
    }
    if !app.rooms.is_live(scene) {
        let exists = match app.store.lease(scene).await {
            Ok(Some(_)) => true,
            Ok(None) => matches!(app.store.p1_version(scene).await, Ok(Some(_)) | Err(_)),
            Err(_) => {
                return Err(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store does not answer",
                ))
            }
        };
        if !exists {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                "no_such_scene",
                "no such scene",
            ));
        }
    }
    Ok(claims)
}
