//! Every metric the alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboards
//! (deploy/grafana/dashboards/*.json) use exists in a live scrape of a real node or router (after an editor has joined and typed, so histograms have buckets, and a
//! client was refused, so the error family has a series): a renamed metric fails here
//! rather than leaving an alert that can never fire.

use std::collections::BTreeSet;

use troupe_proto::token::Role;
use troupe_tests::cluster::RouterProcess;
use troupe_tests::{http_get, token, unique, Backend, NodeProcess, TestClient};

/// The PromQL expressions of the Grafana dashboards (every panel target's `expr`), with
/// where they are.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let title = format!(
                    "{} / {}",
                    board["title"].as_str().unwrap(),
                    panel["title"].as_str().unwrap()
                );
                out.push((title, target["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

/// The PromQL expressions of a rules file (`expr:` values, block scalars included).
fn expressions(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let rest = rest.trim();
        if rest == "|" || rest == ">" {
            let mut expr = String::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                expr.push_str(next.trim());
                expr.push(' ');
                lines.next();
            }
            out.push(expr);
        } else {
            out.push(rest.to_string());
        }
    }
    out
}

/// The metric names in a PromQL expression: identifiers outside label matchers that are
/// not functions, keywords or grouping labels.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: [&str; 15] = [
        "by", "without", "and", "or", "unless", "on", "ignoring", "le", "instance", "job", "sum", "max",
        "min", "avg", "count",
    ];
    // Label matchers and range selectors hold no metric names.
    let mut plain = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            // A number, exponent included (1e-9).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '-')
            {
                i += 1;
            }
        } else if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "by" || word == "without" {
                // A grouping list names labels, not metrics: skip it.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                continue;
            }
            let called = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            if !called && !WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Whether the scrape has the metric: a sample of that name, or the family it belongs to
/// (a counter's `_total`, a histogram's `_bucket`).
fn scraped(scrape: &str, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    scrape.lines().any(|l| {
        l.starts_with(&format!("{name} "))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("# TYPE {family} "))
            || l.starts_with(&format!("# TYPE {name} "))
    })
}

#[test]
fn expressions_and_names_are_read_as_promql() {
    let rules = "- alert: A\n  expr: |\n    sum(rate(a_total{reason!~\"x|y\"}[5m]))\n      / clamp_min(b_total, 1e-9) > 0.01\n  for: 5m\n- alert: B\n  expr: max by (instance, kind) (c{trigger=\"d\"}) > 0\n";
    let exprs = expressions(rules);
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert_eq!(
        names,
        ["a_total", "b_total", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(scraped("# TYPE a counter\na_total 3\n", "a_total"));
    assert!(!scraped("# TYPE ab counter\n", "a_total"));
}

#[tokio::test]
async fn every_metric_an_alert_or_a_dashboard_uses_exists_in_a_live_scrape() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let scene = unique("obs");
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    editor.type_text("hello").await.unwrap();
    editor.wait_acked().await.unwrap();
    let refused = TestClient::connect(&node.ws_base(), &scene, "not-a-token").await;
    assert!(refused.is_err(), "a bad token was accepted");
    let router = RouterProcess::start(&[node.rpc_addr.to_string()]).await.unwrap();
    let routed = http_get(router.addr, &format!("/v1/route/{scene}"))
        .await
        .unwrap();
    assert!(routed.contains("200 OK"), "{routed}");
    let scrape =
        http_get(node.addr, "/metrics").await.unwrap() + &http_get(router.addr, "/metrics").await.unwrap();
    // A healthy cluster has a leader its nodes know of (`TroupeNoRaftLeader` fires on 0).
    assert!(
        scrape.lines().any(|l| l == "troupe_raft_leader_known 1"),
        "a healthy node says it knows no leader: {:?}",
        scrape.lines().find(|l| l.starts_with("troupe_raft_leader_known"))
    );

    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let exprs = expressions(&rules);
    assert!(
        exprs.len() >= 10,
        "the rules file has {} expressions",
        exprs.len()
    );
    let mut used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // `up` is Prometheus' own (one per scrape target).
    used.remove("up");
    let missing: Vec<&String> = used.iter().filter(|name| !scraped(&scrape, name)).collect();
    assert!(
        missing.is_empty(),
        "alerts use metrics no node exports: {missing:?}"
    );
    println!(
        "{} metrics used by the alerts, all in a node's scrape: {used:?}",
        used.len()
    );

    let panels = dashboard_expressions();
    assert!(panels.len() >= 30, "the dashboards have {} queries", panels.len());
    let mut missing = Vec::new();
    for (panel, expr) in &panels {
        for name in metric_names(expr) {
            if name != "up" && !scraped(&scrape, &name) {
                missing.push(format!("{panel}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards use metrics nobody exports: {missing:#?}"
    );
    println!(
        "{} dashboard queries, every metric in a node's or the router's scrape",
        panels.len()
    );
}
