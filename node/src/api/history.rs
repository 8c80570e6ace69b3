//! A scene's history over HTTP: `GET …/versions` lists it, `POST …/versions` saves the
//! scene as it is now under a name, `GET …/versions/{v}/content` reads one version, and
//! `POST …/restore` makes the live scene a version's content (or P1's) again.
//!
//! A restore is an ordinary merge into the live document whose base is the document as it
//! is now: connected editors see the blocks change in place, without reloading, with a
//! notice ("Restored to version 3 by ada") in the same change. The state it replaced is
//! saved first as a `before_restore` version, so a restore can itself be undone.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use troupe_proto::token::{Claims, Role};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use super::content::{merge_answer, ContentQuery};
use super::{access, ask_room, json_answer, json_body, json_error, scene_of, unavailable, Format};
use crate::content::blocks::{self, Block};
use crate::content::notice::Notice;
use crate::room::{Change, MergeRequest, RoomCmd, SaveVersion};
use crate::server::App;
use crate::store::history::VersionKind;

/// Longest a version's name may be, in characters.
const MAX_NAME: usize = 200;

/// `GET /v1/scenes/{scene}/versions`: the scene's versions, newest first.
pub async fn list(
    State(app): State<Arc<App>>,
    scene: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let scene = match scene_of(scene) {
        Ok(scene) => scene,
        Err(refused) => return refused,
    };
    if let Err(refused) = access(&app, &headers, &scene, Role::View).await {
        return refused;
    }
    match app.store.versions(&scene).await {
        Ok(versions) => json_answer(
            StatusCode::OK,
            serde_json::json!({ "scene": scene, "versions": versions }),
        ),
        Err(error) => json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &error.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveBody {
    name: String,
}

/// `POST /v1/scenes/{scene}/versions` `{"name": …}`: saves the scene as it is now.
pub async fn save(
    State(app): State<Arc<App>>,
    scene: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let scene = match scene_of(scene) {
        Ok(scene) => scene,
        Err(refused) => return refused,
    };
    let claims = match access(&app, &headers, &scene, Role::Edit).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let name = match json_body::<SaveBody>(body) {
        Ok(SaveBody { name }) => name.trim().to_string(),
        Err(refused) => return refused,
    };
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_name",
            &format!("a version's name is 1 to {MAX_NAME} characters, none of them control characters"),
        );
    }
    let saved = save_now(&app, &scene, VersionKind::Named, Some(name.clone()), &claims).await;
    match saved {
        Ok(version) => json_answer(
            StatusCode::CREATED,
            serde_json::json!({ "scene": scene, "version": version, "name": name }),
        ),
        Err(refused) => refused,
    }
}

/// Asks the room to save the document as it is now; answers the version's number.
async fn save_now(
    app: &App,
    scene: &str,
    kind: VersionKind,
    name: Option<String>,
    claims: &Claims,
) -> Result<u64, Response> {
    let by = Some(who(claims));
    let saved = ask_room(app, scene, Duration::from_secs(10), |reply| {
        RoomCmd::SaveVersion(Box::new(SaveVersion {
            kind,
            name,
            by,
            reply,
        }))
    })
    .await;
    match saved {
        Some(Ok(version)) => Ok(version),
        Some(Err(message)) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &message,
        )),
        None => Err(unavailable()),
    }
}

/// `GET /v1/scenes/{scene}/versions/{version}/content[?format=json|text|fountain]`.
pub async fn content(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ContentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path((scene, version))) = path else {
        return json_error(StatusCode::NOT_FOUND, "bad_scene", "not a scene id");
    };
    let scene = match scene_of(Ok(Path(scene))) {
        Ok(scene) => scene,
        Err(refused) => return refused,
    };
    let format = match Format::of(query.ok().and_then(|Query(q)| q.format).as_deref()) {
        Ok(format) => format,
        Err(refused) => return refused,
    };
    if let Err(refused) = access(&app, &headers, &scene, Role::View).await {
        return refused;
    }
    let Ok(version) = version.parse::<u64>() else {
        return no_such_version(&version);
    };
    match version_blocks(&app, &scene, version).await {
        Ok(blocks) => format.render(
            &blocks,
            serde_json::json!({ "scene": scene, "history_version": version }),
        ),
        Err(refused) => refused,
    }
}

/// What to restore.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// A version of the scene's history.
    version: Option<u64>,
    /// The content P1 holds in `content_blocks`.
    #[serde(default)]
    from_p1: bool,
}

/// `POST /v1/scenes/{scene}/restore` `{"version": V}` or `{"from_p1": true}`.
pub async fn restore(
    State(app): State<Arc<App>>,
    scene: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let scene = match scene_of(scene) {
        Ok(scene) => scene,
        Err(refused) => return refused,
    };
    let claims = match access(&app, &headers, &scene, Role::Edit).await {
        Ok(claims) => claims,
        Err(refused) => return refused,
    };
    let body = match json_body::<RestoreBody>(body) {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let (target, what, source) = match (body.version, body.from_p1) {
        (Some(version), false) => match version_blocks(&app, &scene, version).await {
            Ok(blocks) => (blocks, format!("version {version}"), serde_json::json!(version)),
            Err(refused) => return refused,
        },
        (None, true) => match app.store.p1_content(&scene).await {
            Ok(Some(content)) => (
                content.blocks,
                format!("the P1 content (version {})", content.version),
                serde_json::json!("p1"),
            ),
            Ok(None) => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "no_p1_content",
                    "P1 has no content for this scene",
                )
            }
            Err(error) => return json_error(StatusCode::CONFLICT, "bad_p1_content", &error.to_string()),
        },
        _ => {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_body",
                "give either \"version\" or \"from_p1\": true",
            )
        }
    };
    let replaced = format!("before restoring {what}");
    let before = match save_now(&app, &scene, VersionKind::BeforeRestore, Some(replaced), &claims).await {
        Ok(before) => before,
        Err(refused) => return refused,
    };
    let notice = Notice::restored(&what, &who(&claims));
    let merged = ask_room(&app, &scene, Duration::from_secs(15), |reply| {
        RoomCmd::Merge(Box::new(MergeRequest {
            base: None,
            change: Change::Blocks(target),
            notice: Some(notice),
            reply,
        }))
    })
    .await;
    let restored = merged.as_ref().is_some_and(|m| m.is_ok());
    tracing::info!(%scene, restored_to = %what, by = %claims.sub, before_restore = before, restored, "restore");
    if restored {
        app.webhooks.restored(
            &scene,
            serde_json::json!({ "restored": source, "by": who(&claims), "before_restore_version": before }),
        );
    }
    merge_answer(
        &scene,
        merged,
        serde_json::json!({ "restored": source, "before_restore_version": before }),
    )
}

/// The blocks of one version of the scene's history.
async fn version_blocks(app: &App, scene: &str, version: u64) -> Result<Vec<Block>, Response> {
    let data = match app.store.version_data(scene, version).await {
        Ok(Some(data)) => data,
        Ok(None) => return Err(no_such_version(&version.to_string())),
        Err(error) => {
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &error.to_string(),
            ))
        }
    };
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<Block>, String> {
        let doc = Doc::new();
        let update = Update::decode_v1(&data).map_err(|e| e.to_string())?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| e.to_string())?;
        let blocks = blocks::read(&doc.transact()).map_err(|e| e.to_string());
        blocks
    })
    .await;
    match read {
        Ok(Ok(blocks)) => Ok(blocks),
        Ok(Err(error)) => Err(json_error(
            StatusCode::CONFLICT,
            "unreadable_version",
            &format!("version {version} cannot be read: {error}"),
        )),
        Err(_) => Err(unavailable()),
    }
}

fn no_such_version(version: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no_such_version",
        &format!("the scene has no version {version}; GET …/versions (or troupectl versions) lists them"),
    )
}

/// How a person is named in history and notices: the token's display name, else its user.
fn who(claims: &Claims) -> String {
    claims.name.clone().unwrap_or_else(|| claims.sub.clone())
}
