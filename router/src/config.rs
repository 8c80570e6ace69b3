//! Router configuration: command-line flags, each also read from a `TROUPE_*` variable.
//!
//! Values are taken as text and checked by [`Config::validate`], so that a bad setting,
//! flag or variable alike, fails with one clear line naming it.

use std::net::SocketAddr;

use clap::Parser;
use tracing_subscriber::EnvFilter;

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

    /// Log filter, e.g. `info` or `troupe_router=debug,warn`.
    #[arg(long, env = "TROUPE_LOG", default_value = DEFAULT_LOG)]
    pub log: String,

    /// Redis URL (redis://…) for presence answers and failover notices; unset: none.
    #[arg(long, env = "TROUPE_REDIS_URL")]
    pub redis_url: Option<String>,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Internal addresses of the nodes to follow; never empty once validated.
    pub cluster: Vec<String>,
    /// A filter [`EnvFilter::try_new`] accepts.
    pub log: String,
    pub redis_url: Option<String>,
}

impl Settings {
    /// Settings for following `cluster`, listening on a free local port (for tests and
    /// embedding).
    pub fn new(cluster: Vec<String>) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster,
            log: DEFAULT_LOG.into(),
            redis_url: None,
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
        EnvFilter::try_new(&self.log).map_err(|e| format!("TROUPE_LOG {:?}: {e}", self.log))?;
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
        Ok(Settings {
            listen,
            cluster,
            log: self.log.clone(),
            redis_url,
        })
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
        let mut argv = vec!["troupe-router"];
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
        ] {
            let err = parse(&args).validate().unwrap_err();
            assert!(err.starts_with(name), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
