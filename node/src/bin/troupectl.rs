//! `troupectl`: operator tool. `troupectl token` mints an access token with the
//! configured key, the way an app's backend would.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Parser, Subcommand};
use troupe_node::auth::{self, Claims, Role, Signer};
use troupe_node::duration::parse_duration;

#[derive(Parser)]
#[command(name = "troupectl", version, about = "Operate a Troupe cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed access token (JWT) for a user.
    Token(TokenArgs),
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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let signer = match (&args.secret, &args.private_key_file) {
        (Some(secret), None) => Signer::from_secret(secret.as_bytes()),
        (None, Some(path)) => Signer::from_private_key_file(path, auth::parse_algorithm(&args.algorithm)?)?,
        (Some(_), Some(_)) => anyhow::bail!("give either --secret or --private-key-file, not both"),
        (None, None) => anyhow::bail!("no signing key: set TROUPE_JWT_SECRET (or --private-key-file)"),
    };
    let scenes: BTreeMap<String, Role> = args.scenes.iter().map(|s| (s.clone(), args.role)).collect();
    let claims = Claims {
        sub: args.user,
        exp: auth::now_secs() + args.ttl.as_secs(),
        aud: args.audience,
        name: args.name,
        scenes,
    };
    println!("{}", signer.sign(&claims).context("signing the token")?);
    Ok(())
}
