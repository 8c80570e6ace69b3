//! The certificates of test clusters: one CA per test process, in a temporary folder, and
//! one certificate per identity, made on first use. Every test node, router and troupectl
//! run presents one, so the tests exercise the secure internal port.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::anyhow;
use troupe_membership::tls::issue::CertDir;
use troupe_membership::tls::{Identity, TlsArgs, Transport};
use troupe_membership::NodeId;

struct TestCa {
    dir: CertDir,
    issued: Mutex<HashMap<String, TlsArgs>>,
}

fn ca() -> anyhow::Result<&'static TestCa> {
    static CA: OnceLock<Result<TestCa, String>> = OnceLock::new();
    CA.get_or_init(|| {
        let dir: PathBuf = std::env::temp_dir().join(crate::unique("troupe-test-certs"));
        CertDir::init(dir, "troupe-tests")
            .map(|dir| TestCa {
                dir,
                issued: Mutex::new(HashMap::new()),
            })
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow!("making the test CA: {e}"))
}

/// The files of `identity`'s certificate, signed by the test CA.
pub fn files(identity: &Identity) -> anyhow::Result<TlsArgs> {
    let ca = ca()?;
    let mut issued = ca.issued.lock().map_err(|_| anyhow!("test CA lock poisoned"))?;
    if let Some(files) = issued.get(&identity.uri()) {
        return Ok(files.clone());
    }
    let files = ca.dir.issue(identity, &[], 1)?;
    issued.insert(identity.uri(), files.clone());
    Ok(files)
}

/// The settings (`TROUPE_INTERNAL_*`) that present `identity`'s certificate.
pub fn env(identity: &Identity) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(files(identity)?.env())
}

/// A node's certificate settings.
pub fn node_env(id: u64) -> anyhow::Result<Vec<(&'static str, String)>> {
    env(&Identity::Node(NodeId(id)))
}

/// The operator of test clusters (may admit, drain and remove).
pub fn admin() -> anyhow::Result<Transport> {
    Ok(Transport::load(&files(&Identity::Admin("tests".into()))?)?)
}

/// The folder of the test CA (to make certificates of another identity by hand).
pub fn dir() -> anyhow::Result<&'static CertDir> {
    Ok(&ca()?.dir)
}
