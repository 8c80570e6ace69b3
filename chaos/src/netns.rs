//! A private network for a local cluster: each node in a network namespace of its own,
//! joined to the host by a veth pair on one bridge, so that one node can be cut off from
//! everything that crosses the network — its peers, the router, its editors — and joined
//! again. Files and Unix sockets are not in a network namespace, so a cut-off node keeps
//! its store: the harder case, a deposed owner that can still reach the database.
//!
//! Needs root and iproute2 (`ip netns`); [`Network::create`] says so when it cannot.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Names start with this; leftovers of a launcher that died are recognised by it.
const PREFIX: &str = "trp";

/// The bridge, its subnet, and the namespaces made so far.
#[derive(Debug)]
pub struct Network {
    tag: u32,
    subnet: [u8; 3],
    nodes: Vec<u64>,
}

impl Network {
    /// Makes the bridge (named after this process) on a free `10.213.x.0/24`.
    pub fn create() -> anyhow::Result<Network> {
        remove_leftovers();
        let tag = std::process::id() % 100_000;
        let routes = output(&["route", "show"]).unwrap_or_default();
        let Some(x) = (0..=255u32)
            .map(|i| ((tag + i) % 256) as u8)
            .find(|x| !routes.contains(&format!("10.213.{x}.")))
        else {
            bail!("no free 10.213.x.0/24 subnet for the cluster's network");
        };
        let net = Network {
            tag,
            subnet: [10, 213, x],
            nodes: Vec::new(),
        };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])
            .context("network namespaces are not available here (they need root and iproute2's `ip`)")?;
        ip(&["addr", "add", &format!("{}/24", net.addr(0)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(net)
    }

    /// The address of node `id` (`0`: the host's end of the bridge).
    pub fn addr(&self, id: u64) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10u8.saturating_add(id.min(240) as u8))
    }

    /// Makes node `id`'s namespace and link, unless it exists already (a restart).
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        if self.nodes.contains(&id) {
            return Ok(());
        }
        if id > 240 {
            bail!("node id {id} is too large for the cluster's network");
        }
        let (ns, host_end, node_end) = (self.namespace(id), self.host_end(id), self.node_end(id));
        ip(&["netns", "add", &ns])?;
        self.nodes.push(id);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
        ])?;
        ip(&["link", "set", &node_end, "netns", &ns])?;
        ip(&["link", "set", &host_end, "master", &self.bridge(), "up"])?;
        let cidr = format!("{}/24", self.addr(id));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", &node_end])?;
        ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A command that runs `program` inside node `id`'s namespace.
    pub fn command(&self, id: u64, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(id)]).arg(program);
        cmd
    }

    /// Cuts node `id` off the network (both directions; its connections stall, as on a
    /// real partition, rather than being reset).
    pub fn cut(&self, id: u64) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_end(id), "down"])
    }

    /// Joins node `id` to the network again.
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_end(id), "up"])
    }

    fn bridge(&self) -> String {
        format!("{PREFIX}{}b", self.tag)
    }
    fn namespace(&self, id: u64) -> String {
        format!("{PREFIX}{}n{id}", self.tag)
    }
    fn host_end(&self, id: u64) -> String {
        format!("{PREFIX}{}v{id}", self.tag)
    }
    fn node_end(&self, id: u64) -> String {
        format!("{PREFIX}{}p{id}", self.tag)
    }
}

impl Drop for Network {
    /// Deleting a namespace deletes its veth pair; the bridge goes last.
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.nodes) {
            let _ = ip(&["netns", "del", &self.namespace(id)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Deletes namespaces and bridges left by launchers that are no longer running.
fn remove_leftovers() {
    let alive = |tag: &str| {
        tag.parse::<u32>().is_ok_and(|t| {
            t == std::process::id() % 100_000 || std::path::Path::new(&format!("/proc/{t}")).exists()
        })
    };
    // Both listings start each line with the name.
    let names = |args: &[&str]| -> Vec<String> {
        output(args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(PREFIX))
            .map(str::to_string)
            .collect()
    };
    for ns in names(&["netns", "list"]) {
        if !alive(ns[PREFIX.len()..].split('n').next().unwrap_or("")) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    for bridge in names(&["-br", "link", "show", "type", "bridge"]) {
        if !alive(bridge[PREFIX.len()..].trim_end_matches('b')) {
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
