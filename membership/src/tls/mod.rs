//! Mutual TLS on the internal port. Every node, router and `troupectl` holds a certificate
//! of the cluster's own CA that names who it is ([`identity`]); both ends of every
//! connection check the other's certificate against that CA, and the internal port then
//! authorizes each request by the sender's identity (`server.rs`).
//!
//! - [`TlsArgs`]: the settings every binary shares (`TROUPE_INTERNAL_CA`, `_CERT`, `_KEY`,
//!   or `TROUPE_INTERNAL_INSECURE=1`);
//! - [`Transport`]: those settings loaded, with the rustls configurations of both sides;
//! - [`issue`]: making the CA and the certificates (`troupectl certs`, `troupe dev`, tests).
//!
//! One crypto provider (ring) is passed explicitly, so no process-wide default is needed.

pub mod identity;
pub mod issue;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use identity::{Identity, IdentityError, Peer};

/// Where a binary finds its credentials for the internal port.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM): peers must present certificates it signed.
    #[arg(
        long = "internal-ca",
        env = "TROUPE_INTERNAL_CA",
        value_name = "FILE",
        global = true
    )]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM) for the internal port, signed by the CA; a node's
    /// names its id (`troupectl certs node`).
    #[arg(
        long = "internal-cert",
        env = "TROUPE_INTERNAL_CERT",
        value_name = "FILE",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of that certificate.
    #[arg(
        long = "internal-key",
        env = "TROUPE_INTERNAL_KEY",
        value_name = "FILE",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// Plain, unauthenticated HTTP on the internal port: anyone who reaches it can change
    /// the cluster. Only for a cluster on one machine (a node refuses it on a port that is
    /// not on loopback).
    #[arg(
        long = "internal-insecure",
        env = "TROUPE_INTERNAL_INSECURE",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        global = true,
    )]
    pub insecure: bool,
}

impl TlsArgs {
    /// The three files of one identity.
    pub fn files(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsArgs {
        TlsArgs {
            ca: Some(ca.into()),
            cert: Some(cert.into()),
            key: Some(key.into()),
            insecure: false,
        }
    }

    /// No TLS (a loopback-only cluster).
    pub fn insecure() -> TlsArgs {
        TlsArgs {
            insecure: true,
            ..TlsArgs::default()
        }
    }

    /// The same settings as environment variables, for starting another process with them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if self.insecure {
            env.push(("TROUPE_INTERNAL_INSECURE", "1".to_string()));
        }
        for (name, path) in [
            ("TROUPE_INTERNAL_CA", &self.ca),
            ("TROUPE_INTERNAL_CERT", &self.cert),
            ("TROUPE_INTERNAL_KEY", &self.key),
        ] {
            if let Some(path) = path {
                env.push((name, path.display().to_string()));
            }
        }
        env
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the internal port needs certificates: set TROUPE_INTERNAL_CA, TROUPE_INTERNAL_CERT and \
         TROUPE_INTERNAL_KEY (make them with `troupectl certs`), or TROUPE_INTERNAL_INSECURE=1 \
         for a cluster on one machine"
    )]
    NotConfigured,
    #[error("{0} is missing (the internal port's CA, certificate and key go together)")]
    Incomplete(&'static str),
    #[error("TROUPE_INTERNAL_INSECURE=1 and certificates are both set; choose one")]
    Conflicting,
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Identity { path: PathBuf, source: IdentityError },
    #[error("the internal TLS settings are refused: {0}")]
    Config(String),
    #[error("cannot make certificates: {0}")]
    Issue(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// How this process talks on the internal port. Cheap to clone.
#[derive(Clone)]
pub enum Transport {
    Tls(Arc<Credentials>),
    /// Plain HTTP, nobody authenticated.
    Insecure,
}

/// A loaded certificate with the configurations that present it.
pub struct Credentials {
    identity: Identity,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl Transport {
    /// Loads the files named by `args` and checks that they go together.
    pub fn load(args: &TlsArgs) -> Result<Transport, TlsError> {
        let any_file = args.ca.is_some() || args.cert.is_some() || args.key.is_some();
        match (args.insecure, any_file) {
            (true, true) => return Err(TlsError::Conflicting),
            (true, false) => return Ok(Transport::Insecure),
            (false, false) => return Err(TlsError::NotConfigured),
            (false, true) => {}
        }
        let ca = args
            .ca
            .as_deref()
            .ok_or(TlsError::Incomplete("TROUPE_INTERNAL_CA"))?;
        let cert = args
            .cert
            .as_deref()
            .ok_or(TlsError::Incomplete("TROUPE_INTERNAL_CERT"))?;
        let key = args
            .key
            .as_deref()
            .ok_or(TlsError::Incomplete("TROUPE_INTERNAL_KEY"))?;
        let roots = certificates(ca)?;
        let chain = certificates(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            path: key.into(),
            reason: e.to_string(),
        })?;
        let identity = Identity::of_certificate(&chain[0]).map_err(|source| TlsError::Identity {
            path: cert.into(),
            source,
        })?;
        let credentials = Credentials::new(identity, roots, chain, key_der)?;
        Ok(Transport::Tls(Arc::new(credentials)))
    }

    /// Who this process is to its peers (`None` without TLS).
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Transport::Tls(credentials) => Some(&credentials.identity),
            Transport::Insecure => None,
        }
    }

    /// The rustls configuration of the internal port (`None` without TLS).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        match self {
            Transport::Tls(credentials) => Some(credentials.server.clone()),
            Transport::Insecure => None,
        }
    }

    /// The rustls configuration for calling other nodes (`None` without TLS).
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        match self {
            Transport::Tls(credentials) => Some(credentials.client.clone()),
            Transport::Insecure => None,
        }
    }
}

impl Credentials {
    fn new(
        identity: Identity,
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Credentials, TlsError> {
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(config)?;
        }
        let store = Arc::new(store);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(store)
            .with_client_auth_cert(chain, key)
            .map_err(config)?;
        Ok(Credentials {
            identity,
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The one crypto provider of the internal port.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        path: path.into(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    #[test]
    fn insecure_reads_as_a_boolean_flag() {
        assert!(Cli::parse_from(["x", "--internal-insecure"]).tls.insecure);
        assert!(Cli::parse_from(["x", "--internal-insecure=1"]).tls.insecure);
        assert!(!Cli::parse_from(["x", "--internal-insecure=0"]).tls.insecure);
        assert!(!Cli::parse_from(["x"]).tls.insecure);
    }

    #[test]
    fn settings_that_do_not_go_together_are_refused() {
        assert!(matches!(
            Transport::load(&TlsArgs::default()),
            Err(TlsError::NotConfigured)
        ));
        assert!(matches!(
            Transport::load(&TlsArgs::insecure()),
            Ok(Transport::Insecure)
        ));
        let mut both = TlsArgs::files("ca", "cert", "key");
        both.insecure = true;
        assert!(matches!(Transport::load(&both), Err(TlsError::Conflicting)));
        let mut partial = TlsArgs::files("ca", "cert", "key");
        partial.key = None;
        assert!(matches!(
            Transport::load(&partial),
            Err(TlsError::Incomplete("TROUPE_INTERNAL_KEY"))
        ));
        assert!(matches!(
            Transport::load(&TlsArgs::files("/nonexistent/ca", "c", "k")),
            Err(TlsError::File { .. })
        ));
    }
}
