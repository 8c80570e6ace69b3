//! The router as a demo's one address: the page's built files at `/` (and nothing outside
//! their folder), and, only when switched on, dev tokens that real nodes accept.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use troupe_tests::cluster::{http_request, resolve, RouterProcess, TestCluster};
use troupe_tests::{bin_dir, ready_line, unique, NodeProcess, TestClient, SECRET};

/// A folder under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("troupe-web"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const PAGE: &str = "<!doctype html><title>Troupe</title><script src=\"/app.js\"></script>";
const KEPT_OUT: &str = "kept-out-of-the-page";

#[tokio::test]
async fn serves_the_page_and_nothing_outside_it() {
    let cluster = TestCluster::start(1, &[]).await.unwrap();
    let tmp = TempDir::new();
    tmp.write("dist/index.html", PAGE);
    tmp.write("dist/app.js", "import './assets/editor.mjs';");
    tmp.write("dist/assets/editor.mjs", "export const x = 1;");
    tmp.write("dist/assets/app.css", "body { margin: 0 }");
    tmp.write("dist/assets/icons/logo.svg", "<svg/>");
    tmp.write("dist/.env", KEPT_OUT);
    tmp.write("secret.txt", KEPT_OUT);
    // Files named like API routes never shadow them.
    tmp.write("dist/healthz", KEPT_OUT);
    tmp.write("dist/v1/dev/token", KEPT_OUT);
    #[cfg(unix)]
    std::os::unix::fs::symlink(tmp.0.join("secret.txt"), tmp.0.join("dist/leak.txt")).unwrap();
    let dist = tmp.0.join("dist");
    let router = RouterProcess::start_with(
        &cluster.rpc_addrs(),
        &[("TROUPE_WEB_DIR", dist.to_str().unwrap())],
    )
    .await
    .unwrap();

    for (path, content_type, body) in [
        ("/", "text/html; charset=utf-8", PAGE),
        ("/index.html", "text/html; charset=utf-8", PAGE),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "import './assets/editor.mjs';",
        ),
        (
            "/assets/editor.mjs",
            "text/javascript; charset=utf-8",
            "export const x = 1;",
        ),
        ("/assets/app.css", "text/css; charset=utf-8", "body { margin: 0 }"),
        ("/assets/icons/logo.svg?v=2", "image/svg+xml", "<svg/>"),
    ] {
        let (status, headers, got) = http_request(router.addr, path).await.unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), Some(content_type), "{path}");
        assert_eq!(got, body, "{path}");
        let cache = header(&headers, "cache-control");
        if content_type.starts_with("text/html") {
            assert_eq!(cache, Some("no-cache"), "{path}");
        } else {
            assert_eq!(cache, None, "{path}");
        }
    }

    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/secret.txt",
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/index.html%00.js",
        "//etc/passwd",
        "/.env",
        "/leak.txt",
        "/missing.js",
    ] {
        let (status, _, body) = http_request(router.addr, path).await.unwrap();
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(!body.contains(KEPT_OUT), "{path}: {body}");
        assert!(!body.contains("[package]"), "{path}: {body}");
    }

    // The API keeps its routes.
    let (status, headers, _) = http_request(router.addr, "/healthz").await.unwrap();
    assert_eq!(
        (status, header(&headers, "content-type")),
        (200, Some("application/json"))
    );
    let (node, _, _) = resolve(router.addr, &unique("scene")).await.unwrap();
    assert_eq!(node, 1);
    // Dev tokens are off unless asked for.
    let (status, _, body) = http_request(router.addr, "/v1/dev/token?user=ada").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains(KEPT_OUT) && !body.contains("token\":"), "{body}");
}

#[tokio::test]
async fn without_a_page_the_root_says_how_to_build_it() {
    let cluster = TestCluster::start(1, &[]).await.unwrap();
    let empty = TempDir::new();
    let router = RouterProcess::start_with(
        &cluster.rpc_addrs(),
        &[("TROUPE_WEB_DIR", empty.0.to_str().unwrap())],
    )
    .await
    .unwrap();
    let (status, headers, body) = http_request(router.addr, "/").await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(body.contains("cd web && npm ci && npm run build"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
}

async fn dev_token(router: &RouterProcess, user: &str) -> (u16, serde_json::Value) {
    let (status, headers, body) = http_request(router.addr, &format!("/v1/dev/token?user={user}"))
        .await
        .unwrap();
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn dev_tokens_open_every_scene_on_real_nodes() {
    let cluster = TestCluster::start(3, &[("TROUPE_ACCEPT_DEV_TOKENS", "1")])
        .await
        .unwrap();
    let router = RouterProcess::start_with(
        &cluster.rpc_addrs(),
        &[("TROUPE_DEV_TOKENS", "1"), ("TROUPE_JWT_SECRET", SECRET)],
    )
    .await
    .unwrap();

    let (status, json) = dev_token(&router, "Ada%20Lovelace").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["user"], "Ada Lovelace");
    assert_eq!(json["expires_in"], 3600);
    let ada = json["token"].as_str().unwrap().to_string();
    let (_, json) = dev_token(&router, "grace").await;
    let grace = json["token"].as_str().unwrap().to_string();

    // Two scenes, whichever nodes own them: the owner, found through the router, lets
    // the token edit, and another user's token sees the edit.
    for scene in [unique("dev-a"), unique("dev-b")] {
        let (_, url, _) = resolve(router.addr, &scene).await.unwrap();
        let base = format!("{url}/ws/scenes");
        let mut writer = TestClient::connect(&base, &scene, &ada).await.unwrap();
        writer.type_text("INT. WRITERS' ROOM - NIGHT").await.unwrap();
        writer.wait_acked().await.unwrap();
        let reader = TestClient::connect(&base, &scene, &grace).await.unwrap();
        assert_eq!(reader.text(), "INT. WRITERS' ROOM - NIGHT", "{scene}");
    }

    for user in ["", "%3Cscript%3E", "a%2Fb", "%20ada", &"x".repeat(33)] {
        let (status, json) = dev_token(&router, user).await;
        assert_eq!(status, 400, "{user:?}: {json}");
        assert_eq!(json["error"], "bad_user", "{user:?}");
        assert!(json.get("token").is_none());
    }
    let (status, _, _) = http_request(router.addr, "/v1/dev/token").await.unwrap();
    assert_eq!(status, 400);

    // A router holding another secret mints tokens the nodes refuse.
    let other = RouterProcess::start_with(
        &cluster.rpc_addrs(),
        &[
            ("TROUPE_DEV_TOKENS", "1"),
            ("TROUPE_JWT_SECRET", "not-the-cluster-secret-0123456789abcdef"),
        ],
    )
    .await
    .unwrap();
    let (_, json) = dev_token(&other, "mallory").await;
    let scene = unique("dev-c");
    let (_, url, _) = resolve(router.addr, &scene).await.unwrap();
    let token = json["token"].as_str().unwrap();
    let mut refused = TestClient::open(&format!("{url}/ws/scenes"), &scene, &format!("token={token}"))
        .await
        .unwrap();
    assert_eq!(refused.expect_close().await.unwrap().code, 4401);

    // Dev tokens have their own audience: a node not told to accept them refuses them,
    // though they are signed with its secret.
    let strict = NodeProcess::start(&troupe_tests::Backend::Sqlite, &[]).unwrap();
    let scene = unique("dev-d");
    let mut refused = TestClient::open(&strict.ws_base(), &scene, &format!("token={ada}"))
        .await
        .unwrap();
    let closed = refused.expect_close().await.unwrap();
    assert_eq!(closed.code, 4401, "{closed}");
    assert!(
        closed.reason.contains("audience") || closed.reason.contains("Aud"),
        "{closed}"
    );
}

/// A router started by hand, to see its exit status and stderr; killed when dropped.
struct Router {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Router {
    fn command(env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(bin_dir().join("troupe-router"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TROUPE_LISTEN", "127.0.0.1:0")
            // Nobody there: the router starts all the same.
            .env("TROUPE_CLUSTER", "127.0.0.1:9")
            .envs(
                troupe_tests::certs::env(&troupe_membership::tls::Identity::Reader("router".into())).unwrap(),
            )
            .env("TROUPE_WEB_DIR", "")
            .envs(env.iter().copied());
        command
    }

    fn spawn(env: &[(&str, &str)]) -> (Router, String) {
        let mut child = Self::command(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        let mut router = Router {
            child,
            stderr: Some(stderr),
        };
        let line = ready_line(&mut router.child, Duration::from_secs(20)).unwrap();
        (router, line)
    }

    /// Stops the router and returns what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().unwrap().join().unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refused_at_start(env: &[(&str, &str)]) -> String {
    let output = Router::command(env).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{env:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test]
async fn dev_tokens_need_the_secret_warn_loudly_and_are_never_logged() {
    let missing = refused_at_start(&[("TROUPE_DEV_TOKENS", "1")]);
    assert!(missing.contains("TROUPE_JWT_SECRET is required"), "{missing}");
    let short = refused_at_start(&[("TROUPE_DEV_TOKENS", "1"), ("TROUPE_JWT_SECRET", &"x".repeat(31))]);
    assert!(short.contains("TROUPE_JWT_SECRET must be at least 32"), "{short}");
    let bad_dir = refused_at_start(&[("TROUPE_WEB_DIR", "/no/such/troupe/dist")]);
    assert!(bad_dir.contains("TROUPE_WEB_DIR"), "{bad_dir}");

    let (router, line) = Router::spawn(&[
        ("TROUPE_DEV_TOKENS", "1"),
        ("TROUPE_JWT_SECRET", SECRET),
        ("TROUPE_LOG", "trace"),
    ]);
    let addr = line
        .strip_prefix("troupe-router listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let (status, _, body) = http_request(addr, "/v1/dev/token?user=ada").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = json["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stderr = router.stop();
    let warning = "dev tokens are ON: anyone who can reach this router can edit every scene; \
                   never enable in production";
    assert!(
        stderr.contains(&format!("troupe-router: WARNING: {warning}")),
        "{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.contains("WARN") && l.contains(warning)),
        "{stderr}"
    );
    assert!(stderr.contains("dev token issued"), "{stderr}");
    assert!(!stderr.contains(&token), "the token was logged");
    assert!(!stderr.contains(SECRET), "the secret was logged");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!stderr.contains(signature), "part of the token was logged");
}

/// Without `TROUPE_WEB_DIR` the router serves the page built into it, never a `web/dist`
/// of the folder it was started in.
#[tokio::test]
async fn the_default_page_is_the_one_built_in() {
    let tmp = TempDir::new();
    tmp.write("web/dist/index.html", PAGE);
    let mut command = Router::command(&[]);
    command.env_remove("TROUPE_WEB_DIR").current_dir(&tmp.0);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = ready_line(&mut child, Duration::from_secs(20)).unwrap();
    let _router = Router { child, stderr: None };
    let addr = line
        .strip_prefix("troupe-router listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let (status, _, body) = http_request(addr, "/").await.unwrap();
    assert_ne!(body, PAGE);
    // What the build embedded: the demo if it was built then, else how to build it.
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist/index.html");
    match std::fs::read_to_string(built) {
        Ok(page) => assert_eq!((status, body), (200, page)),
        Err(_) => assert!(status == 404 && body.contains("npm run build"), "{body}"),
    }
}
