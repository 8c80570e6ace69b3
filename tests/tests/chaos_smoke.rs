//! The `smoke` chaos scenario, run by the test command: a real cluster, editors with
//! durable acks, four faults (kill the owner of a busy scene, add a node, drain one, kill
//! the leader) and the checker — no edit lost, replicas identical, no fenced write, every
//! fault recovered.

use std::process::Command;

use troupe_tests::cluster::free_addr;
use troupe_tests::{bin_dir, unique};

#[test]
fn the_smoke_scenario_passes() {
    let out = std::env::temp_dir().join(unique("troupe-chaos-smoke"));
    let base = free_addr().port().min(30_000);
    let router = free_addr().port();
    let status = Command::new(bin_dir().join("troupe-chaos"))
        .args([
            "run",
            "smoke",
            "--base-port",
            &base.to_string(),
            "--router-port",
            &router.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .env_remove("TROUPE_DATABASE_URL")
        .env("TROUPE_LOG", "warn,openraft=error")
        .status()
        .expect("running troupe-chaos");
    let report = std::fs::read_to_string(out.join("report.json")).unwrap_or_default();
    assert!(status.success(), "troupe-chaos run smoke failed: {report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["edits_lost"], 0);
    assert!(report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["fired"] == true));
    assert!(std::fs::read_to_string(out.join("latency.svg"))
        .unwrap()
        .starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}
