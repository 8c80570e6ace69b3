//! `/v1/scenes/{scene}/content`: the scene as it is now (`GET`), an autosave made against
//! a P1 version (`PUT`), and a backend's block edits (`PATCH`), merged into the live
//! document by its room and answered once durable.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use troupe_proto::token::Role;

use super::{access, ask_room, json_answer, json_body, json_error, scene_of, unavailable, Format};
use crate::content::blocks::Block;
use crate::room::{BlockEdit, Change, MergeRefused, MergeRequest, Merged, RoomCmd};
use crate::server::App;

/// Longest a room may take to merge a change and commit it.
const MERGE_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize)]
pub struct ContentQuery {
    pub format: Option<String>,
}

/// `GET /v1/scenes/{scene}/content`: the scene as it is now. The owner reads it from the
/// live room, loading the scene if it is not (as a viewer's connection would, so it is never
/// a stale copy and a scene nobody has is not brought into being).
pub async fn get(
    State(app): State<Arc<App>>,
    scene: Result<Path<String>, PathRejection>,
    query: Result<Query<ContentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let scene = match scene_of(scene) {
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
    if format == Format::Json {
        // The version must name exactly these blocks, since a PUT made against it merges
        // what the caller changed since: changes not written back to P1 yet are written
        // first, and the answer is the scene as that version holds it.
        let settled = ask_room(&app, &scene, MERGE_WAIT, |reply| {
            RoomCmd::Merge(Box::new(MergeRequest {
                base: None,
                change: Change::Edits(Vec::new()),
                notice: None,
                reply,
            }))
        })
        .await;
        match settled {
            Some(Ok(Merged {
                version: Some(version),
                ..
            })) => {
                if let Ok(Some(blocks)) = app.store.p1_projection(&scene, version).await {
                    return format.render(&blocks, serde_json::json!({ "scene": scene, "version": version }));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(MergeRefused::BadEdit(error))) => {
                return json_error(StatusCode::CONFLICT, "not_blocks", &error)
            }
            Some(Err(_)) | None => return unavailable(),
        }
    }
    // Not a P1 scene (or its version not recorded yet): the live blocks, with no version.
    let blocks = match ask_room(&app, &scene, Duration::from_secs(10), |reply| RoomCmd::Read {
        reply,
    })
    .await
    {
        Some(Ok(blocks)) => blocks,
        Some(Err(error)) => return json_error(StatusCode::CONFLICT, "not_blocks", &error),
        None => return unavailable(),
    };
    format.render(&blocks, serde_json::json!({ "scene": scene, "version": null }))
}

/// A `PUT` body: the whole scene, as saved against a P1 version (`base_version`) or against
/// blocks the caller had (`base_blocks`: a client saving with autosave while it cannot
/// collaborate, whose scene may not be in P1 at all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    base_version: Option<u64>,
    base_blocks: Option<Vec<Block>>,
    blocks: Vec<Block>,
}

/// What a change was made against.
enum Base {
    /// The scene as it is now.
    Now,
    /// A P1 content version.
    Version(u64),
    /// Blocks the caller had.
    Blocks(Vec<Block>),
}

/// A `PATCH` body: block edits against a P1 version, or against the scene as it is now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    base_version: Option<u64>,
    edits: Vec<BlockEdit>,
}

/// `PUT` and `PATCH /v1/scenes/{scene}/content`: a change merged into the live scene by its
/// owner (loaded if needed), answered once durable with the P1 version that holds it.
pub async fn change(
    State(app): State<Arc<App>>,
    method: Method,
    scene: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let scene = match scene_of(scene) {
        Ok(scene) => scene,
        Err(refused) => return refused,
    };
    if let Err(refused) = access(&app, &headers, &scene, Role::Edit).await {
        return refused;
    }
    let (base, change) = if method == Method::PUT {
        match json_body::<PutBody>(body) {
            Ok(PutBody {
                base_version: Some(version),
                base_blocks: None,
                blocks,
            }) => (Base::Version(version), Change::Blocks(blocks)),
            Ok(PutBody {
                base_version: None,
                base_blocks: Some(base),
                blocks,
            }) => (Base::Blocks(base), Change::Blocks(blocks)),
            Ok(_) => {
                return json_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_body",
                    "give either base_version or base_blocks",
                )
            }
            Err(refused) => return refused,
        }
    } else {
        match json_body::<PatchBody>(body) {
            Ok(b) => (
                b.base_version.map_or(Base::Now, Base::Version),
                Change::Edits(b.edits),
            ),
            Err(refused) => return refused,
        }
    };
    let base = match base {
        Base::Now => None,
        Base::Blocks(blocks) => Some(blocks),
        Base::Version(version) => match app.store.p1_projection(&scene, version).await {
            Ok(Some(blocks)) => Some(blocks),
            Ok(None) => {
                let current = app.store.p1_version(&scene).await.ok().flatten();
                return json_answer(
                    StatusCode::CONFLICT,
                    serde_json::json!({
                        "error": "unknown_version",
                        "message": format!("version {version} of this scene is not known; read the scene again and redo the change"),
                        "version": current,
                    }),
                );
            }
            Err(error) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &error.to_string())
            }
        },
    };
    let merged = ask_room(&app, &scene, MERGE_WAIT, |reply| {
        RoomCmd::Merge(Box::new(MergeRequest {
            base,
            change,
            notice: None,
            reply,
        }))
    })
    .await;
    merge_answer(&scene, merged, serde_json::json!({}))
}

/// The answer to a merge: the P1 version holding it and what changed (with `fields`), or
/// why it was refused.
pub(super) fn merge_answer(
    scene: &str,
    merged: Option<Result<Merged, MergeRefused>>,
    mut fields: serde_json::Value,
) -> Response {
    match merged {
        Some(Ok(merged)) => {
            fields["scene"] = scene.into();
            fields["version"] = serde_json::json!(merged.version);
            fields["inserted"] = merged.outcome.inserted.into();
            fields["changed"] = merged.outcome.changed.into();
            fields["deleted"] = merged.outcome.deleted.into();
            json_answer(StatusCode::OK, fields)
        }
        Some(Err(MergeRefused::Conflict { message, version })) => json_answer(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": "conflict", "message": message, "version": version }),
        ),
        Some(Err(refused @ MergeRefused::BadEdit(_))) => {
            json_error(StatusCode::UNPROCESSABLE_ENTITY, "bad_edit", &refused.to_string())
        }
        Some(Err(MergeRefused::TooLarge)) => too_large(),
        Some(Err(MergeRefused::Moving)) | None => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the scene is loading or moving; try again (a change already merged is not merged twice)",
        ),
    }
}

fn too_large() -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the change would make the scene larger than its limit",
    )
}
