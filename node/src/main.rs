//! `troupe-node`: serves scenes over y-websocket. Configuration: flags or `TROUPE_*`
//! variables (`troupe-node --help`).

use clap::Parser;
use troupe_node::config::Config;
use troupe_node::server;
use troupe_runtime::logging::{self, Style};

/// Logs when `TROUPE_LOG` is unset.
const DEFAULT_LOG: &str = "info,sqlx=warn,openraft=error";

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(line) = logging::init(DEFAULT_LOG, Style::Service) {
        eprintln!("troupe-node: bad configuration: {line}");
        return std::process::ExitCode::from(2);
    }
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(line) => {
            eprintln!("troupe-node: bad configuration: {line}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = if settings.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("troupe-node: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("troupe-node: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: troupe_node::config::Settings) -> anyhow::Result<()> {
    let listeners = server::bind(&settings).await?;
    let addr = listeners.public.local_addr()?;
    let rpc_addr = listeners.rpc.local_addr()?;
    tracing::info!(
        node = %settings.node_id,
        %addr,
        %rpc_addr,
        store = match &settings.store {
            troupe_node::config::StoreLocation::Postgres(_) => "postgres",
            troupe_node::config::StoreLocation::Sqlite(_) => "sqlite",
        },
        "troupe-node starting"
    );
    // Scripts and tests wait for this exact line: the store is open and the address bound.
    let ready = move || println!("troupe-node listening on {addr} rpc {rpc_addr}");
    server::run(settings, listeners, ready, troupe_runtime::signal::shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}
