//! The demo page's built files, served at `/` to `GET` and `HEAD`: those built into the
//! binary from `web/dist` (rust-embed; a debug build reads that folder at run time), or,
//! during development, those of a folder named by `TROUPE_WEB_DIR`.
//!
//! A request path is decoded segment by segment and refused if a segment could leave the
//! folder (`..`, an encoded slash or backslash, a NUL) or names a hidden file. A file read
//! from a folder must still lie inside it once symlinks are resolved, and be a regular
//! file of at most [`MAX_FILE_BYTES`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use troupe_proto::scene::percent_decode;

use crate::http::Body;

/// `web/dist` as it was when this binary was built (`router/build.rs` makes sure the folder
/// exists, so that a build without the demo succeeds and embeds nothing).
#[derive(rust_embed::Embed)]
#[folder = "../web/dist"]
#[allow_missing = true]
struct Built;

/// Largest file served from a folder: a built page is far smaller.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The page a folder (and `/`) stands for.
pub const INDEX: &str = "index.html";

/// What `/` answers while there is no page to serve.
pub const NOT_BUILT: &str = "no demo page here: build it with `cd web && npm ci && npm run build`, \
     then rebuild troupe-router (or point TROUPE_WEB_DIR at web/dist)\n";

/// Why a request path names no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not absolute or not percent-encoded UTF-8")]
    Malformed,
    #[error("the path could leave the folder")]
    Traversal,
    #[error("hidden files are not served")]
    Hidden,
}

/// Where the page's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebDir {
    /// The files built into this binary.
    Embedded,
    /// A folder (canonical), read at each request.
    Folder(PathBuf),
}

impl WebDir {
    /// A folder to serve, checked to be a readable directory.
    pub fn open(dir: &Path) -> std::io::Result<WebDir> {
        let root = std::fs::canonicalize(dir)?;
        std::fs::read_dir(&root)?;
        Ok(WebDir::Folder(root))
    }

    /// Says once, at start, what `/` serves.
    pub fn announce(web_dir: Option<&WebDir>) {
        match web_dir {
            Some(WebDir::Embedded) if Built::get(INDEX).is_some() => {
                tracing::info!("serving the demo page built into this binary at /")
            }
            Some(WebDir::Embedded) => tracing::info!(
                "no demo page built into this binary (build it with `cd web && npm ci && npm run build`)"
            ),
            Some(WebDir::Folder(root)) => {
                tracing::info!(dir = %root.display(), "serving the demo page from a folder at /")
            }
            None => tracing::info!("serving no demo page (TROUPE_WEB_DIR is empty)"),
        }
    }

    /// The bytes of the file at `relative` (a path from [`relative_path`]), if there is one.
    async fn load(&self, relative: &str) -> Option<Cow<'static, [u8]>> {
        match self {
            WebDir::Embedded => Built::get(relative).map(|file| file.data),
            WebDir::Folder(root) => {
                let path = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
                let meta = tokio::fs::metadata(&path).await.ok()?;
                if !path.starts_with(root) || !meta.is_file() || meta.len() > MAX_FILE_BYTES {
                    tracing::debug!(path = %path.display(), "refused a web file");
                    return None;
                }
                tokio::fs::read(&path).await.ok().map(Cow::Owned)
            }
        }
    }
}

/// The file a request path (as sent, still percent-encoded) names, as `/`-separated
/// segments: `/` and any path ending in `/` name that folder's `index.html`.
pub fn relative_path(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::Malformed)?;
    let (rest, folder) = match rest.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (rest, rest.is_empty()),
    };
    let mut segments = Vec::new();
    for segment in rest.split('/').filter(|_| !rest.is_empty()) {
        let decoded = percent_decode(segment).ok_or(PathError::Malformed)?;
        if matches!(decoded.as_str(), "" | "." | "..") || decoded.contains(['\0', '/', '\\']) {
            return Err(PathError::Traversal);
        }
        if decoded.starts_with('.') {
            return Err(PathError::Hidden);
        }
        segments.push(decoded);
    }
    if folder {
        segments.push(INDEX.to_string());
    }
    Ok(segments.join("/"))
}

/// The `Content-Type` of a file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase());
    match ext.as_deref().unwrap_or_default() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Answers a request for a path outside the API: the file from `dir`, if any.
pub async fn answer(dir: Option<&WebDir>, method: &Method, raw_path: &str) -> Response<Body> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    };
    let relative = match relative_path(raw_path) {
        Ok(relative) => relative,
        Err(PathError::Hidden) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(error) => {
            tracing::debug!(path = %raw_path, %error, "refused an asset path");
            return plain(StatusCode::BAD_REQUEST, &format!("{error}\n"));
        }
    };
    let bytes = match dir {
        Some(dir) => dir.load(&relative).await,
        None => None,
    };
    match bytes {
        Some(bytes) => file(&relative, bytes, head),
        None if relative == INDEX => plain(StatusCode::NOT_FOUND, NOT_BUILT),
        None => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn file(relative: &str, bytes: Cow<'static, [u8]>, head: bool) -> Response<Body> {
    let len = bytes.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(bytes.into_owned())
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(relative)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page names its scripts; it must be checked on every load to pick up a rebuild.
    if relative.rsplit('/').next() == Some(INDEX) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    crate::http::no_store(crate::http::text(
        status,
        "text/plain; charset=utf-8",
        text.to_string(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn paths_stay_inside_the_folder() {
        for (raw, want) in [
            ("/", "index.html"),
            ("/index.html", "index.html"),
            ("/assets/x.js", "assets/x.js"),
            ("/assets/", "assets/index.html"),
            ("/a%20b.css", "a b.css"),
            ("/x..y.js", "x..y.js"),
        ] {
            assert_eq!(relative_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for (raw, error) in [
            ("", PathError::Malformed),
            ("index.html", PathError::Malformed),
            ("/%zz", PathError::Malformed),
            ("/%ff", PathError::Malformed),
            ("/../Cargo.toml", PathError::Traversal),
            ("/assets/../../etc/passwd", PathError::Traversal),
            ("/./index.html", PathError::Traversal),
            ("/%2E%2E/Cargo.toml", PathError::Traversal),
            ("/.%2e/Cargo.toml", PathError::Traversal),
            ("/%2e%2e%2fCargo.toml", PathError::Traversal),
            ("/..%5c..%5cwindows", PathError::Traversal),
            ("/index.html%00.js", PathError::Traversal),
            ("//etc/passwd", PathError::Traversal),
            ("/assets//", PathError::Traversal),
            ("/.env", PathError::Hidden),
            ("/%2egit/config", PathError::Hidden),
        ] {
            assert_eq!(relative_path(raw), Err(error), "{raw}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (name, want) in [
            ("index.html", "text/html; charset=utf-8"),
            ("assets/worker.mjs", "text/javascript; charset=utf-8"),
            ("APP.CSS", "text/css; charset=utf-8"),
            ("logo.svg", "image/svg+xml"),
            ("app.js.map", "application/json"),
            ("blob.bin", "application/octet-stream"),
            ("README", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), want, "{name}");
        }
    }

    async fn get(dir: Option<&WebDir>, path: &str) -> (StatusCode, String) {
        let r = answer(dir, &Method::GET, path).await;
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_a_folder_and_nothing_outside_it() {
        let tmp = std::env::temp_dir().join(format!("troupe-router-assets-{}", std::process::id()));
        let dist = tmp.join("dist");
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dist.join("assets/app.js"), "console.log(1)").unwrap();
        std::fs::write(tmp.join("outside.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(tmp.join("outside.txt"), dist.join("link.txt")).unwrap();
        std::fs::File::create(dist.join("big.bin"))
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let dir = WebDir::open(&dist).unwrap();

        let r = answer(Some(&dir), &Method::HEAD, "/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "15");
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
        let r = answer(Some(&dir), &Method::GET, "/assets/app.js").await;
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(r.headers().get(header::CACHE_CONTROL).is_none());
        assert_eq!(get(Some(&dir), "/assets/app.js").await.1, "console.log(1)");
        for path in [
            "/link.txt",
            "/big.bin",
            "/missing.js",
            "/assets/",
            "/../outside.txt",
        ] {
            let (status, body) = get(Some(&dir), path).await;
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
                "{path}"
            );
            assert!(!body.contains("secret"), "{path}");
        }
        let r = answer(Some(&dir), &Method::POST, "/").await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        assert!(WebDir::open(&dist.join("index.html")).is_err());
        assert!(WebDir::open(&tmp.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[tokio::test]
    async fn without_a_page_the_root_says_how_to_build_it() {
        assert_eq!(
            get(None, "/").await,
            (StatusCode::NOT_FOUND, NOT_BUILT.to_string())
        );
        assert_eq!(NOT_BUILT.lines().count(), 1);
        assert_eq!(get(None, "/app.js").await.0, StatusCode::NOT_FOUND);
        // Whatever this build embedded, `/` is the page or says how to build it.
        let (status, body) = get(Some(&WebDir::Embedded), "/").await;
        assert_eq!(status == StatusCode::OK, Built::get(INDEX).is_some(), "{body}");
    }
}
