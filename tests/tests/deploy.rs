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

/// Every variable a Troupe binary reads.
fn known_variables() -> BTreeSet<String> {
    let mut known = documented("troupe-node", &[]);
    known.extend(documented("troupe-router", &[]));
    known.extend(documented("troupectl", &[]));
    known.extend(documented("troupectl", &["backfill"]));
    known.extend(documented("troupectl", &["certs"]));
    // Read by the logging set-up every binary shares, not a flag.
    known.insert("TROUPE_LOG".into());
    assert!(known.len() > 60, "{known:?}");
    known
}

#[test]
fn every_variable_the_stack_sets_is_one_a_binary_reads() {
    let known = known_variables();
    let kubernetes = kubernetes_files();
    assert!(kubernetes.len() >= 10, "{kubernetes:?}");
    let files = [
        "deploy/compose/compose.yml".to_string(),
        "deploy/Dockerfile".to_string(),
    ];
    for file in files.iter().chain(&kubernetes) {
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

/// The YAML files under `deploy/kubernetes`, by path from the repository's root.
fn kubernetes_files() -> Vec<String> {
    fn walk(dir: &std::path::Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = format!("{rel}/{name}");
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &rel, out);
            } else if name.ends_with(".yaml") {
                out.push(rel);
            }
        }
    }
    let root = format!("{}/../deploy/kubernetes", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(std::path::Path::new(&root), "deploy/kubernetes", &mut out);
    out.sort();
    out
}

/// The value of a container's `- name: NAME` / `value: …` entry in a manifest.
fn env_value(manifest: &str, name: &str) -> Option<String> {
    let mut lines = manifest.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("- name: {name}") {
            let next = lines.next()?.trim();
            return Some(next.strip_prefix("value: ")?.trim_matches('"').to_string());
        }
    }
    None
}

/// The StatefulSet's pods find each other the way their certificates (make-secrets.sh) and the
/// node (`TROUPE_NODE_ID=from-hostname`: ordinal + 1) expect, and the routers follow them.
#[test]
fn the_kubernetes_nodes_and_routers_agree_on_names_and_ids() {
    let set = read("deploy/kubernetes/base/node-statefulset.yaml");
    let get = |name: &str| env_value(&set, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(get("TROUPE_NODE_ID"), "from-hostname");
    assert_eq!(get("TROUPE_JOIN"), "true");
    assert_eq!(get("TROUPE_ON_STOP"), "kubernetes");
    assert_eq!(get("TROUPE_RPC_ADVERTISE"), "$(POD_NAME).troupe-node:4100");
    assert_eq!(get("TROUPE_INTERNAL_CERT"), "/certs/node-{id}.crt");
    assert_eq!(get("TROUPE_INTERNAL_KEY"), "/certs/node-{id}.key");
    assert!(get("TROUPE_PUBLIC_URL").ends_with("/nodes/$(POD_NAME)"));
    for needed in [
        "TROUPE_ALLOWED_ORIGINS",
        "TROUPE_INTERNAL_CA",
        "TROUPE_JWT_SECRET",
        "TROUPE_DATABASE_URL",
        "TROUPE_DATA_DIR",
    ] {
        assert!(
            set.contains(&format!("- name: {needed}\n")),
            "the nodes lack {needed}"
        );
    }
    // Voter id N is pod N-1, at the address that pod advertises.
    let peers = get("TROUPE_PEERS");
    let mut addrs = Vec::new();
    for (i, entry) in peers.split(',').enumerate() {
        let addr = format!("troupe-node-{i}.troupe-node:4100");
        assert_eq!(entry, format!("{}={addr}", i + 1), "{peers}");
        addrs.push(addr);
    }
    assert_eq!(addrs.len(), 3, "{peers}");
    assert!(set.contains("serviceName: troupe-node\n"));
    assert!(set.contains("podManagementPolicy: Parallel\n"));

    let router = read("deploy/kubernetes/base/router-deployment.yaml");
    let get = |name: &str| env_value(&router, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(get("TROUPE_CLUSTER"), addrs.join(","));
    assert_eq!(get("TROUPE_NODE_UPSTREAM"), "http://{name}.troupe-node:4000");
    assert_eq!(get("TROUPE_DEV_TOKENS"), "false");
    assert_eq!(get("TROUPE_INTERNAL_CERT"), "/certs/reader-router.crt");

    // make-secrets.sh names each node's certificate after the pod its id runs in.
    let script = read("deploy/kubernetes/make-secrets.sh");
    assert!(script.contains(r#"pod="troupe-node-$((id - 1))""#));
    assert!(script.contains(r#"--host "$pod.troupe-node""#));
}
