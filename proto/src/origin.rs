//! Which browser pages may use Troupe: the `Origin` allowlist shared by nodes (WebSocket
//! connections) and routers (CORS on the REST endpoints).

/// Browser origins allowed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    patterns: Vec<String>,
}

impl OriginPolicy {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let patterns: Vec<String> = patterns
            .iter()
            .map(|p| p.trim().trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .collect();
        for p in &patterns {
            if p != "*" && !(p.starts_with("http://") || p.starts_with("https://")) {
                return Err(format!(
                    "TROUPE_ALLOWED_ORIGINS: {p:?} must be *, or start with http:// or https://"
                ));
            }
        }
        Ok(Self { patterns })
    }

    /// Whether a browser page from `origin` may connect.
    pub fn allows(&self, origin: &str) -> bool {
        self.patterns.iter().any(|p| {
            p == "*"
                || p == origin
                || p.strip_suffix(":*").is_some_and(|host| {
                    origin
                        .strip_prefix(host)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let policy = OriginPolicy::new(&["http://localhost:*".into(), "https://app.example".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.allows("http://localhost:5173"));
        assert!(policy.allows("https://app.example"));
        assert!(!policy.allows("http://localhost.evil:80"));
        assert!(!policy.allows("http://localhost:"));
        assert!(!policy.allows("https://evil.example"));
        assert!(OriginPolicy::new(&["example.com".into()]).is_err());
    }
}
