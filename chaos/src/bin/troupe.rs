//! `troupe`: the developer's command.
//!
//! ```text
//! troupe dev [--nodes 3] [--redis] [--database-url postgres://…]
//! ```
//!
//! `dev` builds what a checkout lacks, runs a local cluster with the demo editor in the
//! foreground, prints where it is, and stops it on Ctrl-C (see `troupe_chaos::dev`;
//! `troupe-chaos up` is the same command).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use troupe_chaos::dev::{self, DevArgs};
use troupe_runtime::logging::{self, Style};

#[derive(Parser)]
#[command(name = "troupe", version, about = "Troupe for developers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a local cluster (nodes, a router, the demo editor) in the foreground, building
    /// what is missing first; Ctrl-C stops it.
    Dev(DevArgs),
}

fn main() -> ExitCode {
    let Cmd::Dev(args) = Cli::parse().command;
    if let Err(line) = logging::init("warn,troupe_chaos=info", Style::Tool) {
        eprintln!("troupe: {line}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("troupe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dev::run(args, "troupe")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("troupe: {e}");
            ExitCode::FAILURE
        }
    }
}
