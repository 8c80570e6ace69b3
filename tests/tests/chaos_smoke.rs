//! Chaos scenarios run by the test command: a real cluster, editors with durable acks,
//! faults, and the checker — no edit lost, replicas identical, no fenced write, every fault
//! recovered.
//! - `smoke`: kill the owner of a busy scene, add a node, drain one, kill the leader.
//! - `partition` (shortened): the owner of a busy scene is cut off the network (network
//!   namespaces; the test command runs as root) while it can still reach the store.

use std::process::Command;

use troupe_tests::cluster::free_addr;
use troupe_tests::{bin_dir, unique};

/// Runs `troupe-chaos run <scenario> <extra…>` and checks its report.
fn run_scenario(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let out = std::env::temp_dir().join(unique(&format!("troupe-chaos-{scenario}")));
    let base = free_addr().port().min(30_000);
    let router = free_addr().port();
    let status = Command::new(bin_dir().join("troupe-chaos"))
        .args([
            "run",
            scenario,
            "--base-port",
            &base.to_string(),
            "--router-port",
            &router.to_string(),
        ])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .env_remove("TROUPE_DATABASE_URL")
        .env("TROUPE_LOG", "warn,openraft=error")
        .status()
        .expect("running troupe-chaos");
    let report = std::fs::read_to_string(out.join("report.json")).unwrap_or_default();
    assert!(status.success(), "troupe-chaos run {scenario} failed: {report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["edits_lost"], 0);
    assert_eq!(report["fenced_writes_accepted"], 0);
    let faults = report["faults"].as_array().unwrap();
    assert!(!faults.is_empty());
    assert!(faults.iter().all(|f| f["fired"] == true), "{faults:?}");
    assert!(std::fs::read_to_string(out.join("latency.svg"))
        .unwrap()
        .starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&out);
    report
}

#[test]
fn the_smoke_scenario_passes() {
    run_scenario("smoke", &[]);
}

#[test]
fn a_node_cut_off_the_network_is_fenced_and_its_editors_move_on() {
    let report = run_scenario("partition", &["--duration", "14s"]);
    let fault = &report["faults"][0];
    assert_eq!(fault["kind"], "partition_node");
    // The cut-off node owned the first scene: its editors lost it and came back.
    assert!(fault["affected_editors"].as_u64().unwrap() >= 2, "{fault}");
    let recovered = fault["recovered_ms"].as_u64().unwrap();
    println!("editors of the cut-off node back after {recovered} ms");
    assert!(recovered < 5_000, "{fault}");
}
