//! `troupectl token` mints tokens the node accepts, scoped as asked.

use std::process::Command;

use troupe_tests::{bin_dir, unique, Backend, NodeProcess, TestClient, SECRET};

fn troupectl_token(args: &[&str]) -> String {
    let output = Command::new(bin_dir().join("troupectl"))
        .arg("token")
        .args(args)
        .env_clear()
        .env("TROUPE_JWT_SECRET", SECRET)
        .output()
        .expect("run troupectl");
    assert!(
        output.status.success(),
        "troupectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[tokio::test]
async fn minted_tokens_open_their_scene_and_only_their_scene() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let scene = unique("s");
    let edit = troupectl_token(&[
        "--user", "alice", "--scene", &scene, "--role", "edit", "--name", "Alice",
    ]);
    let mut alice = TestClient::connect(&node.ws_base(), &scene, &edit).await.unwrap();
    alice.type_text("FADE IN:").await.unwrap();
    alice.wait_acked().await.unwrap();

    let view = troupectl_token(&[
        "--user", "bob", "--scene", &scene, "--role", "view", "--ttl", "5m",
    ]);
    let bob = TestClient::connect(&node.ws_base(), &scene, &view).await.unwrap();
    assert_eq!(bob.text(), "FADE IN:");

    let other = unique("s");
    let mut refused = TestClient::open(&node.ws_base(), &other, &format!("token={edit}"))
        .await
        .unwrap();
    assert_eq!(refused.expect_close().await.unwrap().code, 4403);

    let all = troupectl_token(&["--user", "carol", "--scene", "*"]);
    TestClient::connect(&node.ws_base(), &other, &all).await.unwrap();
}

#[test]
fn bad_arguments_fail_clearly() {
    let output = Command::new(bin_dir().join("troupectl"))
        .args(["token", "--user", "a", "--scene", "s", "--role", "owner"])
        .env("TROUPE_JWT_SECRET", SECRET)
        .output()
        .expect("run troupectl");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("edit or view"));
    let output = Command::new(bin_dir().join("troupectl"))
        .args(["token", "--user", "a", "--scene", "s"])
        .env_clear()
        .output()
        .expect("run troupectl");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TROUPE_JWT_SECRET"));
}
