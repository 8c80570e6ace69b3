//! Making the cluster's certificates: a CA, then one certificate per node, router and
//! operator, each naming its [`Identity`]. Files live in one folder, `ca.crt`/`ca.key` and
//! `<who>.crt`/`<who>.key` (`node-3`, `admin-alice`, `reader-router`); keys are written
//! readable by their owner only.
//!
//! Node certificates serve and call (server and client authentication) and name the host
//! names and addresses peers dial; routers' and operators' only call.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{Identity, TlsArgs, TlsError};

/// How long a CA is valid.
const CA_DAYS: i64 = 3650;

/// How long the certificate of a node, router or operator is valid by default.
pub const DEFAULT_DAYS: i64 = 365;

/// Host names every node certificate names, so that a cluster on one machine needs none.
pub const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A folder of certificates signed by one CA.
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// A folder that already holds a CA (`ca.crt`, `ca.key`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<CertDir, TlsError> {
        let dir = dir.into();
        for file in ["ca.crt", "ca.key"] {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(TlsError::File {
                    path,
                    reason: "no such file (make the CA first: `troupectl certs init`)".into(),
                });
            }
        }
        Ok(CertDir { dir })
    }

    /// Makes a new CA in `dir` (created if missing). An existing CA is never overwritten:
    /// every certificate signed by it would stop working.
    pub fn init(dir: impl Into<PathBuf>, name: &str) -> Result<CertDir, TlsError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
            path: dir.clone(),
            source,
        })?;
        let cert_path = dir.join("ca.crt");
        if cert_path.exists() {
            return Err(TlsError::Issue(format!(
                "{} already exists; remove it to start a new CA (every certificate it signed stops working)",
                cert_path.display()
            )));
        }
        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("{name} (Troupe cluster CA)"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(issue_error)?;
        write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        Ok(CertDir { dir })
    }

    /// The CA in `dir`, made first if there is none (local clusters and tests).
    pub fn open_or_init(dir: impl Into<PathBuf>, name: &str) -> Result<CertDir, TlsError> {
        let dir = dir.into();
        if dir.join("ca.crt").is_file() {
            CertDir::open(dir)
        } else {
            CertDir::init(dir, name)
        }
    }

    /// Issues a certificate for `identity`, valid for `days`; a node's also names `hosts`
    /// besides [`LOCAL_HOSTS`]. Overwrites an earlier one of the same identity (renewal).
    /// Returns the settings that present it.
    pub fn issue(&self, identity: &Identity, hosts: &[String], days: i64) -> Result<TlsArgs, TlsError> {
        let ca_cert = read(&self.dir.join("ca.crt"))?;
        let ca_key = KeyPair::from_pem(&read(&self.dir.join("ca.key"))?).map_err(issue_error)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(issue_error)?;

        let key = KeyPair::generate().map_err(issue_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&identity.to_string());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into().map_err(issue_error)?)];
        match identity {
            Identity::Node(_) => {
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let mut names: Vec<String> = LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
                names.extend(hosts.iter().cloned());
                names.dedup();
                for host in names {
                    params.subject_alt_names.push(host_name(&host)?);
                }
            }
            Identity::Admin(_) | Identity::Reader(_) => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        validity(&mut params, days);
        let cert = params.signed_by(&key, &issuer).map_err(issue_error)?;
        let stem = file_stem(identity);
        let (cert_path, key_path) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        Ok(TlsArgs::files(self.dir.join("ca.crt"), cert_path, key_path))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// `node-3`, `admin-alice`, `reader-router`.
pub fn file_stem(identity: &Identity) -> String {
    match identity {
        Identity::Node(id) => format!("node-{id}"),
        Identity::Admin(name) => format!("admin-{name}"),
        Identity::Reader(name) => format!("reader-{name}"),
    }
}

fn host_name(host: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err(TlsError::Issue(format!(
            "{host:?} is not a host name or an IP address"
        )));
    }
    Ok(SanType::DnsName(host.try_into().map_err(issue_error)?))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Troupe");
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from an hour ago (clocks of a cluster differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn issue_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let wrote = (|| {
        // Written aside then renamed, so that a reader never sees half a file.
        let partial = path.with_extension("partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&partial)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    wrote.map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Transport;

    #[test]
    fn issued_certificates_load_and_name_their_identity() {
        let dir = std::env::temp_dir().join(format!("troupe-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertDir::init(&dir, "test").expect("init");
        assert!(CertDir::init(&dir, "again").is_err(), "a CA is never overwritten");
        for identity in [
            Identity::Node(crate::state::NodeId(7)),
            Identity::Admin("ops".into()),
            Identity::Reader("router".into()),
        ] {
            let args = ca
                .issue(&identity, &["node7.internal".into()], 30)
                .expect("issue");
            let transport = Transport::load(&args).expect("load");
            assert_eq!(transport.identity(), Some(&identity));
        }
        let key = std::fs::metadata(dir.join("node-7.key")).expect("key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert!(ca
            .issue(&Identity::Node(crate::state::NodeId(1)), &["bad host".into()], 30)
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
