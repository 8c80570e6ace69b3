//! Router configuration: command-line flags, each also read from a `TROUPE_*` variable.
//!
//! Values are taken as text and checked by [`Config::validate`], so that a bad setting,
//! flag or variable alike, fails with one clear line naming it.

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use troupe_membership::tls::{TlsArgs, Transport};
use troupe_runtime::listen::{LimitArgs, Limits};

use troupe_proto::token::{parse_algorithm, KeyError, Verifier, MIN_SECRET_LEN};

use crate::assets::WebDir;
use crate::dev_token::DevTokens;
use crate::passthrough::NodeUpstream;

/// Log filter used when `TROUPE_LOG` is not set.
pub const DEFAULT_LOG: &str = "info";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "troupe-router",
    version,
    about = "Troupe router: tells clients which node serves a scene"
)]
pub struct Config {
    /// Address of the router's HTTP endpoint (port 0 picks a free port).
    #[arg(long, env = "TROUPE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Internal (RPC) addresses of one or more cluster nodes to follow, as host:port,
    /// comma-separated. Listing several keeps the router current while one is down.
    #[arg(long, env = "TROUPE_CLUSTER", default_value = "127.0.0.1:4100")]
    pub cluster: String,

    /// The public port's limits: connections, header time and size, body size.
    #[command(flatten)]
    pub port: LimitArgs,

    /// The router's certificate for the nodes' internal port (a reader's: `troupectl certs
    /// client --role reader`).
    #[command(flatten)]
    pub internal: TlsArgs,

    /// Log filter, e.g. `info` or `troupe_router=debug,warn`.
    #[arg(long, env = "TROUPE_LOG", default_value = DEFAULT_LOG)]
    pub log: String,

    /// Redis URL (redis://…) for presence answers and failover notices; unset: none.
    #[arg(long, env = "TROUPE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Serve the demo page from this folder (e.g. `web/dist`, during development) instead of
    /// the page built into this binary; empty: no page.
    #[arg(long, env = "TROUPE_WEB_DIR")]
    pub web_dir: Option<String>,

    /// Serve `GET /v1/dev/token?user=NAME`: a token that edits every scene, for anyone who
    /// asks. For demos only; needs TROUPE_JWT_SECRET.
    #[arg(
        long,
        env = "TROUPE_DEV_TOKENS",
        num_args = 0..=1,
        default_missing_value = "1",
        value_name = "1|0"
    )]
    pub dev_tokens: Option<String>,

    /// The nodes' HS256 secret: checks the tokens presented to the REST endpoints (presence),
    /// and signs dev tokens with --dev-tokens.
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// The issuer's public key (PEM), to check RS256 or EdDSA tokens instead of a secret.
    #[arg(long, env = "TROUPE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<String>,

    /// The algorithm of TROUPE_JWT_PUBLIC_KEY_FILE: RS256 or EdDSA.
    #[arg(long, env = "TROUPE_JWT_ALGORITHM", default_value = "RS256")]
    pub jwt_algorithm: String,

    /// The `aud` claim the nodes require (their TROUPE_JWT_AUDIENCE).
    #[arg(long, env = "TROUPE_JWT_AUDIENCE", default_value = "troupe")]
    pub jwt_audience: String,

    /// The `iss` claim the nodes require (their TROUPE_JWT_ISSUER); unset: any.
    #[arg(long, env = "TROUPE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The nodes' TROUPE_JWT_MAX_LIFETIME: tokens valid for longer are refused.
    #[arg(long, env = "TROUPE_JWT_MAX_LIFETIME")]
    pub jwt_max_lifetime: Option<String>,

    /// A token `/metrics` requires (`Authorization: Bearer <token>`); unset: open.
    #[arg(long, env = "TROUPE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Browser origins whose pages may call the content API (CORS), comma-separated, as the
    /// nodes' TROUPE_ALLOWED_ORIGINS; unset: no CORS headers (same-origin pages only).
    #[arg(long, env = "TROUPE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Pass `/nodes/{name}/…` through to the node named `{name}`, for nodes browsers cannot
    /// reach (Kubernetes pods): a URL template for a node's public port inside the cluster,
    /// e.g. `http://{name}.troupe-node:4000`. Such a node's TROUPE_PUBLIC_URL is
    /// `wss://<public host>/nodes/{name}` (e.g. `wss://troupe.example.com/nodes/troupe-node-2`)
    /// and the public host sends every path to the routers. Only members are reached (any
    /// other name is a 404); the content API reaches those nodes this way too. Unset: off.
    #[arg(long, env = "TROUPE_NODE_UPSTREAM", value_name = "http://{name}.HOST:PORT")]
    pub node_upstream: Option<String>,
}

/// The token that guards `/metrics`. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsToken(pub String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<hidden>)")
    }
}

/// What a token must also satisfy, as the nodes require it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRules {
    pub issuer: Option<String>,
    pub max_lifetime: Option<std::time::Duration>,
}

/// How the router checks tokens: the nodes' keys. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenKeys {
    Secret {
        secret: String,
        audience: String,
        rules: TokenRules,
    },
    PublicKey {
        path: String,
        algorithm: String,
        audience: String,
        rules: TokenRules,
    },
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKeys::Secret { audience, rules, .. } => {
                write!(f, "Secret {{ <hidden>, audience: {audience:?}, {rules:?} }}")
            }
            TokenKeys::PublicKey {
                path,
                algorithm,
                audience,
                rules,
            } => write!(
                f,
                "PublicKey {{ {path:?}, {algorithm}, audience: {audience:?}, {rules:?} }}"
            ),
        }
    }
}

impl TokenKeys {
    /// The verifier these keys make (reads the key file).
    pub fn verifier(&self) -> Result<Verifier, KeyError> {
        let (verifier, rules) = match self {
            TokenKeys::Secret {
                secret,
                audience,
                rules,
            } => (Verifier::from_secret(secret.as_bytes(), audience), rules),
            TokenKeys::PublicKey {
                path,
                algorithm,
                audience,
                rules,
            } => (
                Verifier::from_public_key_file(path, parse_algorithm(algorithm)?, audience)?,
                rules,
            ),
        };
        let verifier = match &rules.issuer {
            Some(issuer) => verifier.with_issuer(issuer),
            None => verifier,
        };
        Ok(match rules.max_lifetime {
            Some(max) => verifier.with_max_lifetime(max),
            None => verifier,
        })
    }
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Internal addresses of the nodes to follow; never empty once validated.
    pub cluster: Vec<String>,
    /// Credentials for the nodes' internal port, checked at start.
    pub internal: TlsArgs,
    /// The public port's connection, header and body limits.
    pub port: Limits,
    /// A `tracing` filter ([`troupe_runtime::logging::parse_filter`] accepts it).
    pub log: String,
    pub redis_url: Option<String>,
    /// Where the demo page's files come from; `None`: `/` says how to build them.
    pub web_dir: Option<WebDir>,
    /// Set when `/v1/dev/token` is served.
    pub dev_tokens: Option<DevTokens>,
    /// How tokens presented to the REST endpoints are checked; `None`: those endpoints
    /// answer 503, since they cannot tell who asks.
    pub token_keys: Option<TokenKeys>,
    /// What `/metrics` requires, if anything.
    pub metrics_token: Option<MetricsToken>,
    /// Pages allowed to call the content API from other origins; `None`: none.
    pub origins: Option<troupe_proto::origin::OriginPolicy>,
    /// Where `/nodes/{name}/…` goes; `None`: no pass-through.
    pub node_upstream: Option<NodeUpstream>,
}

impl Settings {
    /// Settings for following `cluster`, listening on a free local port (for tests and
    /// embedding).
    pub fn new(cluster: Vec<String>) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster,
            internal: TlsArgs::insecure(),
            port: Limits::default(),
            log: DEFAULT_LOG.into(),
            redis_url: None,
            web_dir: None,
            dev_tokens: None,
            token_keys: None,
            metrics_token: None,
            origins: None,
            node_upstream: None,
        }
    }
}

impl Config {
    /// Checks every setting; the error is one line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let listen = self.listen.trim().parse::<SocketAddr>().map_err(|_| {
            format!(
                "TROUPE_LISTEN {:?} must be an ip:port address, e.g. 127.0.0.1:8080",
                self.listen
            )
        })?;
        let cluster: Vec<String> = self
            .cluster
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if cluster.is_empty() {
            return Err(
                "TROUPE_CLUSTER must name at least one node (host:port of its internal address)".into(),
            );
        }
        for addr in &cluster {
            check_host_port(addr)?;
        }
        Transport::load(&self.internal).map_err(|e| e.to_string())?;
        troupe_runtime::logging::parse_filter(&self.log)?;
        let redis_url = self
            .redis_url
            .as_ref()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty());
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err("TROUPE_REDIS_URL must start with redis:// or rediss://".into());
            }
        }
        let web_dir = web_dir(self.web_dir.as_deref())?;
        if self.jwt_audience.trim().is_empty() {
            return Err(
                "TROUPE_JWT_AUDIENCE must not be empty (the nodes' audience, `troupe` by default)".into(),
            );
        }
        let dev_tokens = self.dev_tokens()?;
        let token_keys = self.token_keys()?;
        Ok(Settings {
            listen,
            cluster,
            internal: self.internal.clone(),
            port: self.port.limits()?,
            log: self.log.clone(),
            redis_url,
            web_dir,
            dev_tokens,
            token_keys,
            metrics_token: self
                .metrics_token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| MetricsToken(t.to_string())),
            origins: self
                .allowed_origins
                .as_deref()
                .map(troupe_proto::origin::OriginPolicy::new)
                .transpose()?,
            node_upstream: self
                .node_upstream
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(NodeUpstream::parse)
                .transpose()?,
        })
    }

    /// The signer for `/v1/dev/token`, if dev tokens are on.
    fn token_keys(&self) -> Result<Option<TokenKeys>, String> {
        let audience = self.jwt_audience.trim().to_string();
        let max_lifetime = match self.jwt_max_lifetime.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match troupe_runtime::duration::parse_duration(text) {
                Ok(max) if !max.is_zero() => Some(max),
                _ => {
                    return Err(format!(
                        "TROUPE_JWT_MAX_LIFETIME {text:?} must be a duration such as 1h or 1d"
                    ))
                }
            },
        };
        let rules = TokenRules {
            issuer: self
                .jwt_issuer
                .as_deref()
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(str::to_string),
            max_lifetime,
        };
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let key_file = self
            .jwt_public_key_file
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let keys = match (secret, key_file) {
            (Some(_), Some(_)) => {
                return Err("set TROUPE_JWT_SECRET or TROUPE_JWT_PUBLIC_KEY_FILE, not both".into())
            }
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(format!(
                        "TROUPE_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes (make one with `openssl rand -hex 32`)"
                    ));
                }
                TokenKeys::Secret {
                    secret: secret.to_string(),
                    audience,
                    rules,
                }
            }
            (None, Some(path)) => {
                parse_algorithm(self.jwt_algorithm.trim())
                    .map_err(|e| format!("TROUPE_JWT_ALGORITHM: {e}"))?;
                TokenKeys::PublicKey {
                    path: path.to_string(),
                    algorithm: self.jwt_algorithm.trim().to_string(),
                    audience,
                    rules,
                }
            }
            (None, None) => return Ok(None),
        };
        // A key file that cannot be read is a bad setting, said at start.
        keys.verifier().map_err(|e| e.to_string())?;
        Ok(Some(keys))
    }

    fn dev_tokens(&self) -> Result<Option<DevTokens>, String> {
        let on = match self.dev_tokens.as_deref().map(str::trim) {
            None => false,
            Some(value) => switch(value).ok_or_else(|| {
                format!("TROUPE_DEV_TOKENS {value:?} must be 1 or 0 (or true/false, yes/no, on/off)")
            })?,
        };
        if !on {
            return Ok(None);
        }
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty()).ok_or(
            "TROUPE_JWT_SECRET is required with TROUPE_DEV_TOKENS: the HS256 secret the nodes verify tokens with",
        )?;
        DevTokens::new(secret, troupe_proto::token::DEV_AUDIENCE)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// An on/off setting.
fn switch(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// Where the page comes from: the folder `setting` names (empty: none), else this binary.
fn web_dir(setting: Option<&str>) -> Result<Option<WebDir>, String> {
    match setting.map(str::trim) {
        None => Ok(Some(WebDir::Embedded)),
        Some("") => Ok(None),
        Some(dir) => WebDir::open(Path::new(dir))
            .map(Some)
            .map_err(|e| format!("TROUPE_WEB_DIR {dir:?} must be a readable directory: {e}")),
    }
}

/// The same rule the cluster applies to a node's internal address.
fn check_host_port(addr: &str) -> Result<(), String> {
    if troupe_membership::state::is_host_port(addr) {
        Ok(())
    } else {
        Err(format!(
            "TROUPE_CLUSTER: {addr:?} must be host:port (a node's internal address)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["troupe-router", "--internal-insecure"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_and_lists() {
        let settings = parse(&[]).validate().unwrap();
        assert_eq!(settings.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(settings.cluster, vec!["127.0.0.1:4100"]);
        let settings = parse(&["--cluster", "a:1, b:2,", "--listen", "0.0.0.0:0"])
            .validate()
            .unwrap();
        assert_eq!(settings.cluster, vec!["a:1", "b:2"]);
        assert_eq!(settings.listen.port(), 0);
    }

    #[test]
    fn bad_settings_fail_with_one_line_naming_them() {
        for (args, name) in [
            (["--cluster", ""], "TROUPE_CLUSTER"),
            (["--cluster", "nohost"], "TROUPE_CLUSTER"),
            (["--cluster", "a:0"], "TROUPE_CLUSTER"),
            (["--cluster", "http://a:1"], "TROUPE_CLUSTER"),
            (["--listen", "localhost"], "TROUPE_LISTEN"),
            (["--log", "a=b=c"], "TROUPE_LOG"),
            (["--web-dir", "/no/such/troupe/dir"], "TROUPE_WEB_DIR"),
            (["--web-dir", "Cargo.toml"], "TROUPE_WEB_DIR"),
            (["--dev-tokens", "maybe"], "TROUPE_DEV_TOKENS"),
            (
                ["--node-upstream", "http://troupe-node:4000"],
                "TROUPE_NODE_UPSTREAM",
            ),
            (["--node-upstream", "https://{name}:4000"], "TROUPE_NODE_UPSTREAM"),
        ] {
            let err = parse(&args).validate().unwrap_err();
            assert!(err.starts_with(name), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn node_upstream_is_off_unless_set() {
        assert_eq!(parse(&[]).validate().unwrap().node_upstream, None);
        assert_eq!(
            parse(&["--node-upstream", " "]).validate().unwrap().node_upstream,
            None
        );
        let upstream = parse(&["--node-upstream", "http://{name}.troupe-node:4000"])
            .validate()
            .unwrap()
            .node_upstream
            .unwrap();
        assert_eq!(
            upstream.base("troupe-node-2"),
            "http://troupe-node-2.troupe-node:4000"
        );
    }

    #[test]
    fn tokens_are_checked_with_the_nodes_keys_and_rules() {
        use troupe_proto::token::{Claims, Role, Signer};
        assert_eq!(parse(&[]).validate().unwrap().token_keys, None);
        let secret = "a-secret-of-at-least-32-characters";
        let keys = parse(&["--jwt-secret", secret, "--jwt-max-lifetime", "1h"])
            .validate()
            .unwrap()
            .token_keys
            .unwrap();
        assert!(!format!("{keys:?}").contains(secret), "the secret is hidden");
        let verifier = keys.verifier().unwrap();
        let sign = |hours: u64| {
            let claims = Claims::grant(
                "ada",
                "troupe",
                &[("s1", Role::View)],
                std::time::Duration::from_secs(hours * 3600),
            );
            Signer::from_secret(secret.as_bytes()).sign(&claims).unwrap()
        };
        assert!(verifier.verify(&sign(1)).is_ok());
        assert!(
            verifier.verify(&sign(48)).is_err(),
            "longer than TROUPE_JWT_MAX_LIFETIME"
        );
        let with_issuer = parse(&["--jwt-secret", secret, "--jwt-issuer", "https://app.example"])
            .validate()
            .unwrap()
            .token_keys
            .unwrap();
        assert!(
            with_issuer.verifier().unwrap().verify(&sign(1)).is_err(),
            "no iss"
        );
        for (args, names) in [
            (&["--jwt-secret", "short"][..], "TROUPE_JWT_SECRET"),
            (
                &["--jwt-secret", secret, "--jwt-max-lifetime", "soon"],
                "TROUPE_JWT_MAX_LIFETIME",
            ),
            (&["--jwt-public-key-file", "/nonexistent.pem"], "/nonexistent.pem"),
        ] {
            let error = parse(args).validate().unwrap_err();
            assert!(error.contains(names), "{args:?}: {error}");
        }
    }

    #[test]
    fn dev_tokens_need_the_nodes_secret() {
        assert_eq!(parse(&[]).validate().unwrap().dev_tokens, None);
        for args in [
            &["--dev-tokens", "0"][..],
            &[
                "--dev-tokens=off",
                "--jwt-secret",
                "a-secret-of-at-least-32-characters",
            ],
        ] {
            assert_eq!(parse(args).validate().unwrap().dev_tokens, None, "{args:?}");
        }
        for args in [
            &["--dev-tokens"][..],
            &["--dev-tokens", "--jwt-secret", ""],
            &["--dev-tokens", "--jwt-secret", "fifteen-chars!!"],
        ] {
            let err = parse(args).validate().unwrap_err();
            assert!(err.starts_with("TROUPE_JWT_SECRET"), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        for args in [
            &["--dev-tokens", "--jwt-secret", "thirty-two-characters-or-more!!!"][..],
            &[
                "--jwt-secret",
                "thirty-two-characters-or-more!!!",
                "--dev-tokens",
                "1",
            ],
            &[
                "--dev-tokens=true",
                "--jwt-secret",
                "thirty-two-characters-or-more!!!",
            ],
        ] {
            let settings = parse(args).validate().unwrap();
            assert!(settings.dev_tokens.is_some(), "{args:?}");
            assert!(
                !format!("{settings:?}").contains("thirty-two"),
                "the secret leaks in Debug"
            );
        }
        let err = parse(&[
            "--dev-tokens",
            "--jwt-secret",
            "thirty-two-characters-or-more!!!",
            "--jwt-audience",
            " ",
        ])
        .validate()
        .unwrap_err();
        assert!(err.starts_with("TROUPE_JWT_AUDIENCE"), "{err}");
    }

    #[test]
    fn the_page_is_built_in_unless_a_folder_is_named() {
        assert_eq!(web_dir(None), Ok(Some(WebDir::Embedded)));
        assert_eq!(web_dir(Some(" ")), Ok(None));
        let src = std::fs::canonicalize("src").unwrap();
        assert_eq!(web_dir(Some("src")), Ok(Some(WebDir::Folder(src))));
        assert!(web_dir(Some("/no/such/troupe/dist")).is_err());
    }
}
