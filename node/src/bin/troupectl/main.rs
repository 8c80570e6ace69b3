//! `troupectl`: operator tool. Cluster commands (`nodes`, `status`, `add`, `drain`,
//! `activate`, `remove`, `route`, `revoke`, `revoked`) talk to any node's internal address
//! over mutual TLS;
//! `troupectl versions` and `restore` read and restore a scene's history through its
//! owner's HTTP API; `troupectl token` mints an access token with the configured key, the way an app's
//! backend would; `troupectl certs` makes the cluster's certificates.

mod backfill;
mod certs;
mod cluster;
mod flags;
mod history;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use troupe_membership::tls::{TlsArgs, Transport};
use troupe_proto::token::{self as auth, Claims, Role, Signer};
use troupe_proto::NodeId;
use troupe_runtime::duration::parse_duration;

#[derive(Parser)]
#[command(name = "troupectl", version, about = "Operate a Troupe cluster")]
struct Cli {
    /// Internal (RPC) addresses of one or more cluster nodes, comma-separated.
    #[arg(
        long,
        env = "TROUPE_CLUSTER",
        default_value = "127.0.0.1:4100",
        value_delimiter = ',',
        global = true
    )]
    cluster: Vec<String>,
    /// Print JSON instead of text (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// This operator's certificate for the internal port (`troupectl certs client --role admin`).
    #[command(flatten)]
    internal: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the nodes with their states and Raft roles, and the epoch.
    Nodes,
    /// Leader, epoch, and rooms per node.
    Status,
    /// Add a started node (give its internal address): it joins as a learner, then goes active.
    Add {
        /// The new node's internal address (its TROUPE_RPC_LISTEN / TROUPE_RPC_ADVERTISE).
        addr: String,
    },
    /// Move every scene off a node; it stays up and owns nothing.
    Drain { id: NodeId },
    /// Put a drained (or down) node back on the ring.
    Activate { id: NodeId },
    /// Remove a node from the cluster (its scenes move first).
    Remove { id: NodeId },
    /// Which node serves a scene.
    Route { scene: String },
    /// Cut a user off everywhere: their open connections close (4401) and their tokens
    /// issued until now are refused (tokens issued later, with an `iat` claim, work).
    Revoke {
        /// The user id (the tokens' `sub`).
        user: String,
        /// Lift the revocation instead.
        #[arg(long)]
        lift: bool,
    },
    /// List the revoked users.
    Revoked,
    /// Feature flags: show them (the default), or `set NAME=VALUE… [--scene S]`. Every
    /// node enforces a change within a second: with enableYjs off, clients are closed with
    /// 4410 and save with autosave.
    Flags {
        #[command(subcommand)]
        command: Option<flags::FlagsCommand>,
    },
    /// Print a signed access token (JWT) for a user.
    Token(TokenArgs),
    /// Bring the P1 product's scenes into Troupe: each is opened on its owner node, seeded
    /// from `content_blocks`, stored and verified. Scenes that already have Yjs state are
    /// skipped, so a run can stop anywhere and be repeated.
    Backfill(BackfillArgs),
    /// List a scene's history: automatic versions (from compaction snapshots), named ones
    /// editors saved, and the states restores replaced.
    Versions {
        scene: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Make a live scene a version's content again, or P1's (`content_blocks`): its editors
    /// see the blocks change in place, without reloading, with a notice "Restored to … by
    /// …". What it replaced is saved first as a version, so a restore can be undone.
    Restore(RestoreArgs),
    /// Make the certificates of the internal port: `init` a CA, then one per `node` and
    /// `client` (operators and routers).
    Certs {
        /// The folder of the CA and the certificates.
        #[arg(long, env = "TROUPE_CERTS_DIR", default_value = "certs")]
        dir: std::path::PathBuf,
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
}

#[derive(clap::Args)]
struct BackfillArgs {
    /// Every scene of P1's `scenes` table.
    #[arg(long, conflicts_with = "scenes", required_unless_present = "scenes")]
    all: bool,
    /// A scene to convert; repeat for several.
    #[arg(long = "scene")]
    scenes: Vec<String>,
    /// Say what would be converted, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The store the nodes use (and P1's tables): `postgres://…`, or the embedded store's
    /// file as `sqlite:PATH`.
    #[arg(long, env = "TROUPE_DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(clap::Args)]
struct RestoreArgs {
    scene: String,
    /// The version of the scene's history to restore (`troupectl versions SCENE`).
    #[arg(long, conflicts_with = "from_p1", required_unless_present = "from_p1")]
    version: Option<u64>,
    /// Restore what the P1 product holds in `content_blocks`.
    #[arg(long)]
    from_p1: bool,
    /// Who the notice and the history name as having restored it.
    #[arg(long, default_value = "an operator")]
    by: String,
    #[command(flatten)]
    key: KeyArgs,
}

/// The key tokens are signed with (the app backend's), for tools that open scenes.
#[derive(clap::Args)]
struct KeyArgs {
    /// `aud` claim; must match the node's TROUPE_JWT_AUDIENCE.
    #[arg(long, env = "TROUPE_JWT_AUDIENCE", default_value = "troupe")]
    audience: String,
    /// HS256 secret shared with the nodes.
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PEM private key for RS256 or EdDSA (instead of a secret).
    #[arg(long, env = "TROUPE_JWT_PRIVATE_KEY_FILE")]
    private_key_file: Option<String>,
    /// Algorithm for the private key: RS256 or EdDSA.
    #[arg(long, env = "TROUPE_JWT_ALGORITHM", default_value = "RS256")]
    algorithm: String,
}

impl KeyArgs {
    fn signer(&self) -> anyhow::Result<Signer> {
        signer(&self.secret, &self.private_key_file, &self.algorithm)
    }
}

fn signer(secret: &Option<String>, key_file: &Option<String>, algorithm: &str) -> anyhow::Result<Signer> {
    Ok(match (secret, key_file) {
        (Some(secret), None) => Signer::from_secret(secret.as_bytes()),
        (None, Some(path)) => Signer::from_private_key_file(path, auth::parse_algorithm(algorithm)?)?,
        (Some(_), Some(_)) => anyhow::bail!("give either --secret or --private-key-file, not both"),
        (None, None) => anyhow::bail!("no signing key: set TROUPE_JWT_SECRET (or --private-key-file)"),
    })
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    user: String,
    /// Scene id the token grants, or `*` for every scene; repeat for several.
    #[arg(long = "scene", required = true)]
    scenes: Vec<String>,
    /// What the token allows in those scenes.
    #[arg(long, default_value = "edit")]
    role: Role,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: std::time::Duration,
    /// Display name shown to collaborators.
    #[arg(long)]
    name: Option<String>,
    /// Let a view-only token publish presence (editors always do).
    #[arg(long)]
    presence: bool,
    /// `aud` claim; must match the node's TROUPE_JWT_AUDIENCE.
    #[arg(long, env = "TROUPE_JWT_AUDIENCE", default_value = "troupe")]
    audience: String,
    /// HS256 secret shared with the nodes.
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PEM private key for RS256 or EdDSA (instead of a secret).
    #[arg(long, env = "TROUPE_JWT_PRIVATE_KEY_FILE")]
    private_key_file: Option<String>,
    /// Algorithm for the private key: RS256 or EdDSA.
    #[arg(long, env = "TROUPE_JWT_ALGORITHM", default_value = "RS256")]
    algorithm: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(line) = troupe_runtime::logging::init("warn", troupe_runtime::logging::Style::Tool) {
        eprintln!("troupectl: {line}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Token(args) => token(args),
        Command::Certs { dir, command } => certs::run(&dir, command),
        command => run_cluster_command(&cli.cluster, &cli.internal, cli.json, command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("troupectl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cluster_command(
    addrs: &[String],
    internal: &TlsArgs,
    json: bool,
    command: Command,
) -> anyhow::Result<()> {
    let addrs: Vec<String> = addrs
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("give the cluster's internal addresses with --cluster or TROUPE_CLUSTER");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let transport = Transport::load(internal)?;
    let client = troupe_membership::ClusterClient::new(addrs, &transport);
    // A bulk backfill takes as long as it takes (each scene has its own time limit).
    let limit = match command {
        Command::Backfill(_) => Duration::MAX,
        _ => cluster::COMMAND_TIMEOUT,
    };
    runtime.block_on(async {
        let work = async {
            match command {
                Command::Nodes => cluster::nodes(&client, json).await,
                Command::Status => cluster::status(&client, json).await,
                Command::Add { addr } => cluster::add(&client, &addr, json).await,
                Command::Drain { id } => cluster::drain(&client, id, json).await,
                Command::Activate { id } => cluster::activate(&client, id, json).await,
                Command::Remove { id } => cluster::remove(&client, id, json).await,
                Command::Route { scene } => cluster::route(&client, &scene, json).await,
                Command::Revoke { user, lift } => cluster::revoke(&client, &user, lift, json).await,
                Command::Revoked => cluster::revoked(&client, json).await,
                Command::Flags { command } => flags::run(&client, command, json).await,
                Command::Backfill(args) => run_backfill(&client, args, json).await,
                Command::Versions { scene, key } => {
                    scene_api(&client, &key, "an operator")?
                        .versions(&scene, json)
                        .await
                }
                Command::Restore(args) => {
                    let version = (!args.from_p1).then_some(args.version).flatten();
                    scene_api(&client, &args.key, &args.by)?
                        .restore(&args.scene, version, json)
                        .await
                }
                Command::Token(_) | Command::Certs { .. } => Ok(()),
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => Err(anyhow::anyhow!("the cluster did not answer within {limit:?}")),
        }
    })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let signer = signer(&args.secret, &args.private_key_file, &args.algorithm)?;
    let scenes: BTreeMap<String, Role> = args.scenes.iter().map(|s| (s.clone(), args.role)).collect();
    let claims = Claims {
        sub: args.user,
        exp: troupe_proto::clock::now_secs() + args.ttl.as_secs(),
        aud: args.audience,
        name: args.name,
        scenes,
        iat: Some(troupe_proto::clock::now_secs()),
        presence: args.presence,
    };
    println!("{}", signer.sign(&claims).context("signing the token")?);
    Ok(())
}

fn scene_api<'a>(
    client: &'a troupe_membership::ClusterClient,
    key: &KeyArgs,
    by: &str,
) -> anyhow::Result<history::SceneApi<'a>> {
    Ok(history::SceneApi {
        client,
        signer: key.signer()?,
        audience: key.audience.clone(),
        by: by.to_string(),
    })
}

async fn run_backfill(
    client: &troupe_membership::ClusterClient,
    args: BackfillArgs,
    json: bool,
) -> anyhow::Result<()> {
    let location = match args.database_url.strip_prefix("sqlite:") {
        Some(path) => troupe_node::config::StoreLocation::Sqlite(path.trim_start_matches("//").into()),
        None if args.database_url.starts_with("postgres") => {
            troupe_node::config::StoreLocation::Postgres(args.database_url.clone())
        }
        None => anyhow::bail!("--database-url must be postgres://… or sqlite:PATH"),
    };
    let store = troupe_node::store::Store::open(&location).await?;
    let backfill = backfill::Backfill {
        client,
        store,
        signer: args.key.signer()?,
        audience: args.key.audience.clone(),
        dry_run: args.dry_run,
        json,
    };
    backfill.run((!args.all).then_some(args.scenes)).await
}
