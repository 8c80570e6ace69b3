//! `troupe-router`: tells clients which node serves a scene. Configuration: flags or
//! `TROUPE_*` variables (`troupe-router --help`).

use clap::Parser;
use tracing_subscriber::EnvFilter;
use troupe_router::config::Config;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TROUPE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = match Config::parse().validate() {
        Ok(settings) => settings,
        Err(line) => {
            eprintln!("troupe-router: bad configuration: {line}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("troupe-router: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("troupe-router: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: troupe_router::config::Settings) -> anyhow::Result<()> {
    let listener = troupe_router::bind(&settings).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, cluster = ?settings.cluster, "troupe-router starting");
    // Scripts and tests wait for this exact line.
    let ready = move || println!("troupe-router listening on {addr}");
    troupe_router::run(settings, listener, ready, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
