//! The deployment files speak the binaries' language: every `TROUPE_*` variable the Compose
//! stack and the image set is one a Troupe binary reads (a typo would be ignored silently by
//! the process and found only in production), and each node of the stack has what a node
//! that is not on loopback needs.

use std::collections::BTreeSet;
use std::process::Command;

use troupe_tests::bin_dir;

/// The `TROUPE_*` names in a text.
fn troupe_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("TROUPE_") {
        let start = i + at;
        let mut end = start + "TROUPE_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_uppercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        // `TROUPE_*` in prose names no variable.
        if end > start + "TROUPE_".len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The variables a binary documents in its `--help` (`[env: TROUPE_…]`).
fn documented(binary: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin_dir().join(binary))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    troupe_vars(&String::from_utf8_lossy(&out.stdout))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_variable_the_stack_sets_is_one_a_binary_reads() {
    let mut known = documented("troupe-node", &[]);
    known.extend(documented("troupe-router", &[]));
    known.extend(documented("troupectl", &[]));
    known.extend(documented("troupectl", &["backfill"]));
    known.extend(documented("troupectl", &["certs"]));
    // Read by the logging set-up every binary shares, not a flag.
    known.insert("TROUPE_LOG".into());
    assert!(known.len() > 60, "{known:?}");
    for file in ["deploy/compose/compose.yml", "deploy/Dockerfile"] {
        let used = troupe_vars(&read(file));
        let unknown: Vec<&String> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} sets variables no binary reads: {unknown:?}"
        );
    }
}

#[test]
fn each_node_of_the_stack_has_what_a_node_off_loopback_needs() {
    let compose = read("deploy/compose/compose.yml");
    // The anchor shared by the nodes, and each node's own block.
    let shared = &compose[compose.find("x-node-env:").unwrap()..compose.find("services:").unwrap()];
    for needed in [
        "TROUPE_PEERS",
        "TROUPE_ALLOWED_ORIGINS",
        "TROUPE_INTERNAL_CA",
        "TROUPE_JWT_SECRET",
        "TROUPE_DATABASE_URL",
    ] {
        assert!(
            shared.contains(needed),
            "the nodes' shared settings lack {needed}"
        );
    }
    for id in 1..=3 {
        let start = compose.find(&format!("  node{id}:\n")).unwrap();
        let block = &compose[start..];
        let block = &block[..block[1..]
            .find("\n  node")
            .or_else(|| block[1..].find("\n  router"))
            .unwrap_or(block.len() - 1)];
        for needed in [
            format!("TROUPE_NODE_ID: \"{id}\""),
            format!("TROUPE_RPC_ADVERTISE: node{id}:4100"),
            format!("TROUPE_INTERNAL_CERT: /certs/node-{id}.crt"),
            format!("TROUPE_INTERNAL_KEY: /certs/node-{id}.key"),
            "TROUPE_PUBLIC_URL".to_string(),
        ] {
            assert!(block.contains(&needed), "node{id} lacks {needed}:\n{block}");
        }
    }
    assert!(troupe_vars("a TROUPE_X_Y=1 and ${TROUPE_Z:?}").len() == 2);
}
