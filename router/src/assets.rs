//! The demo page's built files (`TROUPE_WEB_DIR`, default `web/dist`), served at `/`.
//!
//! The router is the one address a demo needs, so it hands out the page too. Only regular
//! files inside the directory are served, to `GET` and `HEAD`: a request path is decoded
//! segment by segment and refused if any segment could leave the directory (`..`, an
//! encoded slash, a NUL), and the file found is canonicalized and must still lie under the
//! canonical directory, so a symlink pointing out of it is not followed. Hidden files and
//! files over [`MAX_FILE_BYTES`] are not served either.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncReadExt;
use troupe_proto::scene::percent_decode;

use crate::http::Body;

/// Largest file served: a built page is far smaller, so anything bigger is a mistake.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The page a directory (and `/`) stands for.
pub const INDEX: &str = "index.html";

/// What `/` answers while there is no page to serve.
pub const NOT_BUILT: &str = "the demo page is not built: run `cd web && npm ci && npm run build`, \
     then restart troupe-router (or point TROUPE_WEB_DIR at the built files)\n";

/// Why a request path names no file under the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path has a broken percent escape or is not UTF-8")]
    BadEncoding,
    #[error("the path has an empty segment")]
    EmptySegment,
    #[error("the path has a NUL, a backslash or an encoded slash")]
    BadCharacter,
    #[error("the path leaves the directory")]
    Traversal,
    #[error("hidden files are not served")]
    Hidden,
}

impl PathError {
    /// Hidden files are just not there; everything else is a malformed request.
    fn status(self) -> StatusCode {
        match self {
            PathError::Hidden => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The file a request path (as sent, still percent-encoded) names, relative to the
/// directory: `/` and any path ending in `/` name that folder's `index.html`.
pub fn relative_path(raw: &str) -> Result<PathBuf, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let (rest, folder) = match rest.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (rest, rest.is_empty()),
    };
    let mut path = PathBuf::new();
    if !rest.is_empty() {
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err(PathError::EmptySegment);
            }
            let decoded = percent_decode(segment).ok_or(PathError::BadEncoding)?;
            if decoded.contains(['\0', '/', '\\']) {
                return Err(PathError::BadCharacter);
            }
            if decoded == "." || decoded == ".." {
                return Err(PathError::Traversal);
            }
            if decoded.starts_with('.') {
                return Err(PathError::Hidden);
            }
            path.push(decoded);
        }
    }
    if folder {
        path.push(INDEX);
    }
    // Each segment was one plain name; this also refuses what another platform would
    // read as a root or a drive.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(PathError::Traversal);
    }
    Ok(path)
}

/// The `Content-Type` of a file, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
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

/// Why a file is not served.
#[derive(Debug)]
enum Refusal {
    Missing,
    Outside,
    TooLarge(u64),
    Io(std::io::Error),
}

/// A directory whose files are served, canonical so that found files can be checked
/// against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebDir {
    root: PathBuf,
}

impl WebDir {
    /// Checks that `dir` is a readable directory.
    pub fn open(dir: &Path) -> std::io::Result<WebDir> {
        let root = std::fs::canonicalize(dir)?;
        if !std::fs::metadata(&root)?.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(WebDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical path and size of the file `relative` names, if it is a regular file
    /// inside the directory (a folder stands for its `index.html`).
    async fn find(&self, relative: &Path) -> Result<(PathBuf, u64), Refusal> {
        let mut path = self.inside(&self.root.join(relative)).await?;
        let mut meta = tokio::fs::metadata(&path).await.map_err(|_| Refusal::Missing)?;
        if meta.is_dir() {
            path = self.inside(&path.join(INDEX)).await?;
            meta = tokio::fs::metadata(&path).await.map_err(|_| Refusal::Missing)?;
        }
        if !meta.is_file() {
            return Err(Refusal::Missing);
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(Refusal::TooLarge(meta.len()));
        }
        Ok((path, meta.len()))
    }

    /// `path` with every symlink resolved, if that is still inside the directory.
    async fn inside(&self, path: &Path) -> Result<PathBuf, Refusal> {
        let real = tokio::fs::canonicalize(path)
            .await
            .map_err(|_| Refusal::Missing)?;
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(Refusal::Outside)
        }
    }

    /// The file's bytes, at most [`MAX_FILE_BYTES`] even if it grew since it was checked.
    async fn read(path: &Path) -> Result<Vec<u8>, Refusal> {
        let file = tokio::fs::File::open(path).await.map_err(Refusal::Io)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(Refusal::Io)?;
        match u64::try_from(bytes.len()) {
            Ok(len) if len <= MAX_FILE_BYTES => Ok(bytes),
            _ => Err(Refusal::TooLarge(MAX_FILE_BYTES + 1)),
        }
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
        Err(error) => {
            tracing::debug!(path = %raw_path, %error, "refused an asset path");
            return plain(error.status(), &format!("{error}\n"));
        }
    };
    let is_index = relative == Path::new(INDEX);
    let Some(dir) = dir else {
        return not_found(is_index);
    };
    let found = match dir.find(&relative).await {
        Ok((path, _)) => WebDir::read(&path).await.map(|bytes| (path, bytes)),
        Err(refusal) => Err(refusal),
    };
    match found {
        Ok((path, bytes)) => file(&path, bytes, head),
        Err(Refusal::Missing) => not_found(is_index),
        Err(Refusal::Outside) => {
            tracing::warn!(path = %raw_path, "refused a file that links out of the web directory");
            not_found(false)
        }
        Err(Refusal::TooLarge(len)) => {
            tracing::warn!(path = %raw_path, len, "refused a file over the size limit");
            plain(
                StatusCode::FORBIDDEN,
                &format!("file over the {} MiB limit\n", MAX_FILE_BYTES >> 20),
            )
        }
        Err(Refusal::Io(error)) => {
            tracing::warn!(path = %raw_path, %error, "cannot read a web file");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n")
        }
    }
}

fn file(path: &Path, bytes: Vec<u8>, head: bool) -> Response<Body> {
    let len = bytes.len();
    let body = if head { Bytes::new() } else { Bytes::from(bytes) };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page names its scripts; it must be checked on every load to pick up a rebuild.
    if path.file_name().is_some_and(|n| n == INDEX) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

fn not_found(is_index: bool) -> Response<Body> {
    plain(
        StatusCode::NOT_FOUND,
        if is_index { NOT_BUILT } else { "not found\n" },
    )
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
    fn paths_stay_inside_the_directory() {
        for (raw, want) in [
            ("/", "index.html"),
            ("/index.html", "index.html"),
            ("/app.js", "app.js"),
            ("/assets/x.js", "assets/x.js"),
            ("/assets/", "assets/index.html"),
            ("/a%20b.css", "a b.css"),
            ("/assets/app.min.js", "assets/app.min.js"),
            ("/x..y.js", "x..y.js"),
        ] {
            assert_eq!(relative_path(raw), Ok(PathBuf::from(want)), "{raw}");
        }
        for (raw, error) in [
            ("", PathError::NotAbsolute),
            ("index.html", PathError::NotAbsolute),
            ("/../Cargo.toml", PathError::Traversal),
            ("/assets/../../etc/passwd", PathError::Traversal),
            ("/..", PathError::Traversal),
            ("/./index.html", PathError::Traversal),
            ("/%2e%2e/Cargo.toml", PathError::Traversal),
            ("/%2E%2E/Cargo.toml", PathError::Traversal),
            ("/.%2e/Cargo.toml", PathError::Traversal),
            ("/%2e%2e%2fCargo.toml", PathError::BadCharacter),
            ("/a%2f..%2f..%2fetc", PathError::BadCharacter),
            ("/..%5c..%5cwindows", PathError::BadCharacter),
            ("/index.html%00.js", PathError::BadCharacter),
            ("//etc/passwd", PathError::EmptySegment),
            ("/assets//x.js", PathError::EmptySegment),
            ("/%zz", PathError::BadEncoding),
            ("/%", PathError::BadEncoding),
            ("/%ff", PathError::BadEncoding),
            ("/.env", PathError::Hidden),
            ("/.git/config", PathError::Hidden),
            ("/%2egit/config", PathError::Hidden),
        ] {
            assert_eq!(relative_path(raw), Err(error), "{raw}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (name, want) in [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("worker.mjs", "text/javascript; charset=utf-8"),
            ("APP.CSS", "text/css; charset=utf-8"),
            ("logo.svg", "image/svg+xml"),
            ("logo.png", "image/png"),
            ("manifest.json", "application/json"),
            ("app.js.map", "application/json"),
            ("font.woff2", "font/woff2"),
            ("favicon.ico", "image/x-icon"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("blob.bin", "application/octet-stream"),
            ("README", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), want, "{name}");
        }
    }

    /// A fresh directory under the system's temporary folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("troupe-router-assets-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn get(dir: Option<&WebDir>, path: &str) -> (StatusCode, String, String) {
        let r = answer(dir, &Method::GET, path).await;
        let status = r.status();
        let ty = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, ty, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_files_and_refuses_the_rest() {
        let tmp = TempDir::new();
        let dist = tmp.0.join("dist");
        std::fs::create_dir_all(dist.join("assets")).unwrap();
        std::fs::write(dist.join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dist.join("assets/app.js"), "console.log(1)").unwrap();
        std::fs::write(dist.join(".secret"), "no").unwrap();
        std::fs::write(tmp.0.join("outside.txt"), "secret").unwrap();
        let dir = WebDir::open(&dist).unwrap();

        let r = answer(Some(&dir), &Method::GET, "/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "15");
        assert_eq!(get(Some(&dir), "/").await.2, "<!doctype html>");
        let (status, ty, body) = get(Some(&dir), "/assets/app.js").await;
        assert_eq!(
            (status, ty.as_str(), body.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8", "console.log(1)")
        );
        let r = answer(Some(&dir), &Method::GET, "/assets/app.js").await;
        assert!(r.headers().get(header::CACHE_CONTROL).is_none());

        // HEAD: the headers of GET, no body.
        let r = answer(Some(&dir), &Method::HEAD, "/assets/app.js").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "14");
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());

        for (path, status) in [
            ("/../outside.txt", StatusCode::BAD_REQUEST),
            ("/%2e%2e/outside.txt", StatusCode::BAD_REQUEST),
            ("/.secret", StatusCode::NOT_FOUND),
            ("/missing.js", StatusCode::NOT_FOUND),
            ("/assets/", StatusCode::NOT_FOUND),
        ] {
            let (got, _, body) = get(Some(&dir), path).await;
            assert_eq!(got, status, "{path}");
            assert!(!body.contains("secret"), "{path}: {body}");
        }
        let r = answer(Some(&dir), &Method::POST, "/").await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");

        // Over the limit: refused without being read.
        let big = std::fs::File::create(dist.join("big.bin")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert_eq!(get(Some(&dir), "/big.bin").await.0, StatusCode::FORBIDDEN);

        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(tmp.0.join("outside.txt"), dist.join("link.txt")).unwrap();
            std::os::unix::fs::symlink(&tmp.0, dist.join("up")).unwrap();
            std::os::unix::fs::symlink(dist.join("assets/app.js"), dist.join("inner.js")).unwrap();
            for path in ["/link.txt", "/up/outside.txt", "/up/"] {
                let (status, _, body) = get(Some(&dir), path).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
                assert!(!body.contains("secret"), "{path}");
            }
            assert_eq!(get(Some(&dir), "/inner.js").await.2, "console.log(1)");
        }
    }

    #[tokio::test]
    async fn without_a_page_the_root_says_how_to_build_it() {
        let (status, ty, body) = get(None, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(ty, "text/plain; charset=utf-8");
        assert_eq!(body, NOT_BUILT);
        assert!(body.contains("cd web && npm ci && npm run build"));
        assert_eq!(body.lines().count(), 1);
        assert_eq!(get(None, "/app.js").await.0, StatusCode::NOT_FOUND);

        // A directory without a build in it says the same.
        let tmp = TempDir::new();
        let dir = WebDir::open(&tmp.0).unwrap();
        assert_eq!(get(Some(&dir), "/").await.2, NOT_BUILT);
        assert!(WebDir::open(&tmp.0.join("missing")).is_err());
        std::fs::write(tmp.0.join("file"), "").unwrap();
        assert!(WebDir::open(&tmp.0.join("file")).is_err());
    }
}
