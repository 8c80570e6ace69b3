//! The one question a node asks Kubernetes: was my StatefulSet scaled below me? When a pod
//! gets SIGTERM it cannot otherwise tell a scale-down (leave the cluster for good) from a
//! restart or a rolling update (drain, and come back). Asked with the pod's service account
//! (which may `get` StatefulSets in its namespace), over the API server's TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

/// Where Kubernetes mounts a pod's service account.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long the API server may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read (a StatefulSet is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("not in a Kubernetes pod: {0}")]
    NotInPod(String),
    #[error("host name {0:?} is not a StatefulSet pod's (name-<ordinal>)")]
    NotStatefulSetPod(String),
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the Kubernetes API: {0}")]
    Api(String),
}

/// Whether this pod's ordinal is at or past its StatefulSet's wanted replicas.
pub async fn scaled_below_this_pod() -> Result<bool, KubernetesError> {
    let host = crate::self_membership::host_name()
        .ok_or_else(|| KubernetesError::NotInPod("no host name".into()))?;
    let (set, ordinal) = crate::self_membership::ordinal(&host)
        .ok_or_else(|| KubernetesError::NotStatefulSetPod(host.clone()))?;
    let replicas = replicas(set).await?;
    tracing::info!(
        statefulset = set,
        replicas,
        ordinal,
        "asked Kubernetes whether this pod stays"
    );
    Ok(ordinal >= replicas)
}

#[derive(Deserialize)]
struct StatefulSet {
    #[serde(default)]
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    /// Kubernetes defaults it to 1 when unset.
    #[serde(default = "one")]
    replicas: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { replicas: one() }
    }
}

fn one() -> u64 {
    1
}

/// The wanted replicas of StatefulSet `name` in this pod's namespace.
async fn replicas(name: &str) -> Result<u64, KubernetesError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| KubernetesError::NotInPod("KUBERNETES_SERVICE_HOST is not set".into()))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let dir = Path::new(SERVICE_ACCOUNT);
    let token = read(&dir.join("token"))?;
    let namespace = read(&dir.join("namespace"))?;
    let roots = {
        let path = dir.join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| KubernetesError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        roots.add_parsable_certificates(certs);
        roots
    };
    let tls = rustls::ClientConfig::builder_with_provider(troupe_membership::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| KubernetesError::Api(e.to_string()))?
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    // An IPv6 service address needs brackets in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let uri = format!(
        "https://{host}:{port}/apis/apps/v1/namespaces/{}/statefulsets/{name}",
        namespace.trim()
    );
    let request = Request::get(&uri)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| KubernetesError::Api(e.to_string()))?;
    let answer = tokio::time::timeout(TIMEOUT, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| KubernetesError::Api(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| KubernetesError::Api(e.to_string()))?
            .to_bytes();
        Ok::<_, KubernetesError>((status, body))
    })
    .await
    .map_err(|_| KubernetesError::Api(format!("no answer within {TIMEOUT:?}")))??;
    let (status, body) = answer;
    if !status.is_success() {
        return Err(KubernetesError::Api(format!(
            "GET statefulset {name} answered {status} (the pod's service account needs `get` on statefulsets)"
        )));
    }
    parse_replicas(&body)
}

fn parse_replicas(body: &[u8]) -> Result<u64, KubernetesError> {
    serde_json::from_slice::<StatefulSet>(body)
        .map(|set| set.spec.replicas)
        .map_err(|e| KubernetesError::Api(format!("unexpected StatefulSet: {e}")))
}

fn read(path: &Path) -> Result<String, KubernetesError> {
    std::fs::read_to_string(path).map_err(|e| KubernetesError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_the_spec_and_default_to_one() {
        let set = br#"{"kind":"StatefulSet","spec":{"replicas":4,"serviceName":"troupe-node"},"status":{"replicas":5}}"#;
        assert_eq!(parse_replicas(set).unwrap(), 4);
        assert_eq!(parse_replicas(br#"{"spec":{}}"#).unwrap(), 1);
        assert!(parse_replicas(b"<html>").is_err());
    }
}
