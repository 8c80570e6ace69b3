//! `troupectl certs`: the cluster's CA and the certificates of its nodes, routers and
//! operators, as files in one folder.

use std::path::Path;

use troupe_membership::tls::identity::{is_name, Identity};
use troupe_membership::tls::issue::{file_stem, CertDir, DEFAULT_DAYS, LOCAL_HOSTS};
use troupe_membership::tls::TlsArgs;
use troupe_proto::NodeId;

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make the cluster's CA (`ca.crt`, `ca.key`). Keep `ca.key` off the nodes.
    Init {
        /// A name for the cluster, written into the CA.
        #[arg(long, default_value = "troupe")]
        name: String,
    },
    /// A node's certificate, naming its id and the hosts peers dial it at.
    Node {
        #[arg(long)]
        id: NodeId,
        /// A host name or IP address in the node's internal address (TROUPE_RPC_ADVERTISE);
        /// repeat for several. localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: i64,
    },
    /// A certificate for an operator (`admin`: may change the cluster) or a router
    /// (`reader`: may only read the membership).
    Client {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["admin", "reader"])]
        role: String,
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: i64,
    },
}

pub fn run(dir: &Path, command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { name } => {
            CertDir::init(dir, &name)?;
            println!(
                "made the cluster CA: {0}/ca.crt (share it) and {0}/ca.key (keep it secret)",
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Node { id, hosts, days } => {
            if id.0 == 0 {
                anyhow::bail!("--id must be a positive node id");
            }
            let files = CertDir::open(dir)?.issue(&Identity::Node(id), &hosts, days)?;
            let mut names: Vec<String> = LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
            names.extend(hosts);
            print_made(&Identity::Node(id), &files, days, Some(&names));
            Ok(())
        }
        CertsCommand::Client { name, role, days } => {
            if !is_name(&name) {
                anyhow::bail!("--name {name:?}: use letters, digits, '.', '_' and '-' (at most 64)");
            }
            let identity = match role.as_str() {
                "admin" => Identity::Admin(name),
                _ => Identity::Reader(name),
            };
            let files = CertDir::open(dir)?.issue(&identity, &[], days)?;
            print_made(&identity, &files, days, None);
            Ok(())
        }
    }
}

fn print_made(identity: &Identity, files: &TlsArgs, days: i64, hosts: Option<&[String]>) {
    let stem = file_stem(identity);
    match hosts {
        Some(hosts) => println!(
            "made {stem}.crt and {stem}.key for {identity}, valid {days} days, for the hosts {}",
            hosts.join(", ")
        ),
        None => println!("made {stem}.crt and {stem}.key for {identity}, valid {days} days"),
    }
    println!("use it with:");
    for (name, value) in files.env() {
        println!("  {name}={value}");
    }
}
