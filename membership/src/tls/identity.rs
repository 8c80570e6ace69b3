//! Who holds a certificate of the cluster's CA: a node (by id), an operator with admin
//! rights, or a reader (a router). The identity is written into the certificate as one
//! URI subject alternative name, `urn:troupe:node:3`, `urn:troupe:admin:alice` or
//! `urn:troupe:reader:router-1`, so that host names stay free for the usual TLS checks.

use std::fmt;

use crate::state::NodeId;

const PREFIX: &str = "urn:troupe:";

/// Longest name of an admin or reader.
const MAX_NAME: usize = 64;

/// The identity a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A node of the cluster: it may send Raft messages as itself and change its own entry.
    Node(NodeId),
    /// An operator (`troupectl`): may admit, drain, activate and remove nodes.
    Admin(String),
    /// Reads the membership only (routers).
    Reader(String),
}

/// The sender of a request on the internal port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Authenticated by a certificate of the cluster's CA.
    Verified(Identity),
    /// A cluster run without TLS (`TROUPE_INTERNAL_INSECURE=1`, loopback only): whoever
    /// can reach the port is trusted with everything.
    Insecure,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate names no Troupe identity (a URI like urn:troupe:node:3)")]
    Missing,
    #[error("the certificate names more than one Troupe identity")]
    Ambiguous,
    #[error("{0:?} is not a Troupe identity (urn:troupe:node:ID, urn:troupe:admin:NAME or urn:troupe:reader:NAME)")]
    Bad(String),
}

impl Identity {
    /// The URI written into the certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{PREFIX}node:{id}"),
            Identity::Admin(name) => format!("{PREFIX}admin:{name}"),
            Identity::Reader(name) => format!("{PREFIX}reader:{name}"),
        }
    }

    /// Reads a URI written by [`Identity::uri`]; `None` for URIs of other schemes.
    pub fn parse(uri: &str) -> Option<Result<Identity, IdentityError>> {
        let rest = uri.strip_prefix(PREFIX)?;
        let bad = || IdentityError::Bad(uri.into());
        let parsed = match rest.split_once(':') {
            Some(("node", id)) if id.bytes().all(|b| b.is_ascii_digit()) => {
                id.parse().map(Identity::Node).map_err(|_| bad())
            }
            Some(("admin", name)) if is_name(name) => Ok(Identity::Admin(name.into())),
            Some(("reader", name)) if is_name(name) => Ok(Identity::Reader(name.into())),
            _ => Err(bad()),
        };
        Some(parsed)
    }

    /// The identity named by a DER certificate: exactly one `urn:troupe:` URI.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unreadable(e.to_string()))?
            .ok_or(IdentityError::Missing)?;
        let mut found = None;
        for name in &names.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(identity) = Identity::parse(uri) {
                    if found.is_some() {
                        return Err(IdentityError::Ambiguous);
                    }
                    found = Some(identity?);
                }
            }
        }
        found.ok_or(IdentityError::Missing)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Admin(name) => write!(f, "admin {name}"),
            Identity::Reader(name) => write!(f, "reader {name}"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Verified(identity) => identity.fmt(f),
            Peer::Insecure => f.write_str("an unauthenticated peer (insecure cluster)"),
        }
    }
}

/// Names of admins and readers: letters, digits, `.`, `_`, `-`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for identity in [
            Identity::Node(NodeId(3)),
            Identity::Node(NodeId(u64::MAX)),
            Identity::Admin("alice".into()),
            Identity::Reader("router-1.eu".into()),
        ] {
            assert_eq!(Identity::parse(&identity.uri()), Some(Ok(identity)));
        }
    }

    #[test]
    fn other_uris_are_not_identities_and_bad_ones_are_refused() {
        assert_eq!(Identity::parse("https://example.com"), None);
        for bad in [
            "urn:troupe:node:",
            "urn:troupe:node:-1",
            "urn:troupe:node:+1",
            "urn:troupe:node:99999999999999999999999",
            "urn:troupe:admin:",
            "urn:troupe:admin:a b",
            "urn:troupe:root:x",
            "urn:troupe:reader",
        ] {
            assert!(
                matches!(Identity::parse(bad), Some(Err(IdentityError::Bad(_)))),
                "{bad}"
            );
        }
        let long = format!("urn:troupe:admin:{}", "a".repeat(MAX_NAME + 1));
        assert!(matches!(Identity::parse(&long), Some(Err(_))));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            Identity::of_certificate(b"\x30\x82\xff\xff"),
            Err(IdentityError::Unreadable(_))
        ));
        assert!(matches!(
            Identity::of_certificate(&[]),
            Err(IdentityError::Unreadable(_))
        ));
    }
}
