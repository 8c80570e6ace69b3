//! `troupe-chaos load` against real processes: a node on the embedded store, a cluster
//! through its router (and straight at one node, where editors must follow 4301 to the
//! owners), a ramp, and the memory measurement of loaded rooms.

use std::path::{Path, PathBuf};

use serde_json::Value;
use troupe_membership::Placement;
use troupe_tests::cluster::{RouterProcess, TestCluster};
use troupe_tests::{bin_dir, unique, Backend, NodeProcess, SECRET};

/// Short windows: the whole file stays well under half a minute.
const QUICK: [&str; 6] = ["--duration", "1.5", "--warmup", "0.3", "--drain", "0.5"];

/// Runs `troupe-chaos load ARGS` and returns its stdout; fails the test if it fails.
async fn load(args: &[&str]) -> String {
    let output = tokio::process::Command::new(bin_dir().join("troupe-chaos"))
        .arg("load")
        .args(args)
        .args(["--jwt-secret", SECRET])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("troupe-chaos runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "troupe-chaos load {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(name))
}

fn read_report(dir: &Path) -> Value {
    json(&std::fs::read_to_string(dir.join("report.json")).expect("report.json written"))
}

/// A measured window with traffic: everything delivered, no errors, a finite p99.
fn assert_clean_traffic(report: &Value) {
    assert!(report["deliveries"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["missing"], 0, "{report:#}");
    assert_eq!(report["deliveries"], report["deliveries_expected"], "{report:#}");
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99.is_finite() && p99 > 0.0, "{report:#}");
    assert!(report["deliveries_per_s"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_short_run_against_one_node_reports_and_draws() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let dir = out_dir("load-run");
    let pid = node.pid().to_string();
    let stdout = load(
        &[
            &[
                "--url",
                &node.ws_base(),
                "--scenes",
                "2",
                "--editors",
                "3",
                "--rate",
                "5",
            ],
            &QUICK[..],
            &["--pid", &pid, "--json", "--out", dir.to_str().unwrap()],
        ]
        .concat(),
    )
    .await;
    let printed = json(&stdout);
    let report = read_report(&dir);
    assert_eq!(printed, report, "--json prints what report.json holds");
    assert_clean_traffic(&report);
    assert_eq!(report["load"]["scenes"], 2);
    assert_eq!(report["load"]["editors_per_scene"], 3);
    // Each edit reaches the two other editors of its scene.
    assert_eq!(
        report["deliveries_expected"].as_u64().unwrap(),
        2 * report["edits_sent"].as_u64().unwrap()
    );
    assert!(!report["timeline"].as_array().unwrap().is_empty());
    let server = &report["server"];
    assert_eq!(server["pids"][0].as_u64().unwrap(), u64::from(node.pid()));
    assert!(
        server["cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{server:#}"
    );
    assert!(server["rss_loaded_bytes"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(dir.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("<circle") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn through_a_router_and_after_4301_to_the_owners() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let router_url = format!("http://{}", router.addr);
    let common = ["--scenes", "6", "--editors", "2", "--rate", "5", "--json"];

    // The router names each scene's owner: nobody is sent elsewhere.
    let report = json(&load(&[&["--url", &router_url], &common[..], &QUICK[..]].concat()).await);
    assert_clean_traffic(&report);
    assert_eq!(report["moved"], 0, "{report:#}");

    // Straight at node 1: the editors of every scene it does not own are closed with 4301
    // and follow the close reason to the owner.
    let placement = Placement::new(&cluster.view().await.unwrap().state).unwrap();
    let elsewhere = |prefix: &str| {
        (0..6)
            .filter(|n| {
                placement.route(&format!("{prefix}-{n}")).unwrap().node != troupe_membership::NodeId(1)
            })
            .count() as u64
    };
    let base = unique("moved");
    let (prefix, elsewhere) = (0..)
        .map(|i| format!("{base}-{i}"))
        .map(|prefix| {
            let n = elsewhere(&prefix);
            (prefix, n)
        })
        .find(|(_, n)| *n > 0)
        .unwrap();
    let node1 = cluster.node(1).unwrap().ws_base();
    let args = [
        &["--url", &node1, "--scene-prefix", &prefix],
        &common[..],
        &QUICK[..],
    ]
    .concat();
    let report = json(&load(&args).await);
    assert_clean_traffic(&report);
    assert_eq!(report["moved"].as_u64().unwrap(), 2 * elsewhere, "{report:#}");
}

#[tokio::test]
async fn a_ramp_reports_every_step() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let url = node.ws_base();
    let args: Vec<&str> = [
        &["--url", &url, "--scenes", "2", "--editors", "3", "--rate", "4"][..],
        &[
            "--ramp",
            "--ramp-factor",
            "2",
            "--ramp-max",
            "8",
            "--ramp-p99-ms",
            "1000",
        ],
        &["--duration", "1", "--warmup", "0.3", "--drain", "0.3", "--json"],
    ]
    .concat();
    let ramp = json(&load(&args).await);
    let steps = ramp["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{ramp:#}");
    assert_eq!(steps[0]["load"]["rate"], 4.0);
    assert_eq!(steps[1]["load"]["rate"], 8.0);
    for step in steps {
        assert_clean_traffic(step);
    }
    // The second step types twice as fast.
    let sent = |i: usize| steps[i]["edits_sent"].as_f64().unwrap();
    assert!(sent(1) > 1.5 * sent(0), "{ramp:#}");
    assert_eq!(ramp["best_rate"], 8.0);
    assert!(ramp["stopped"].as_str().unwrap().contains("--ramp-max"));
}

#[tokio::test]
async fn memory_per_loaded_room_with_one_editor() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let dir = out_dir("load-memory");
    let pid = node.pid().to_string();
    let stdout = load(&[
        "--url",
        &node.ws_base(),
        "--scenes",
        "10",
        "--editors",
        "1",
        "--initial-text",
        "2048",
        "--rate",
        "0",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--drain",
        "0",
        "--pid",
        &pid,
        "--out",
        dir.to_str().unwrap(),
    ])
    .await;
    // People read "none", not NaN or zeros, when nothing was delivered.
    assert!(stdout.contains("latency     none"), "{stdout}");
    assert!(stdout.contains("KiB per room"), "{stdout}");
    assert!(!stdout.contains("NaN"), "{stdout}");
    let report = read_report(&dir);
    assert_eq!(report["load"]["initial_text_bytes"], 2048);
    assert_eq!(report["deliveries"], 0);
    assert_eq!(report["errors"], 0);
    assert!(report["latency_ms"].is_null(), "{report:#}");
    let server = &report["server"];
    assert!(server["cpu_us_per_delivery"].is_null(), "{server:#}");
    let (before, loaded) = (
        server["rss_before_bytes"].as_i64().unwrap(),
        server["rss_loaded_bytes"].as_i64().unwrap(),
    );
    assert!(before > 0 && loaded > 0, "{server:#}");
    // The high-water mark is at least what the process holds now.
    assert!(server["rss_peak_bytes"].as_i64().unwrap() >= server["rss_after_bytes"].as_i64().unwrap());
    assert_eq!(
        server["rss_per_room_bytes"].as_i64().unwrap(),
        (loaded - before) / 10
    );
    let svg = std::fs::read_to_string(dir.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("no deliveries"));
    let _ = std::fs::remove_dir_all(&dir);
}
