//! `troupe-router`: tells clients which node serves a scene. Configuration: flags or
//! `TROUPE_*` variables (`troupe-router --help`).

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use troupe_router::{Config, Settings};
use troupe_runtime::logging::{self, Style};

fn main() -> ExitCode {
    let settings = match Config::try_parse() {
        Ok(config) => config.validate(),
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            error.exit()
        }
        // clap explains on several lines; the first one names the problem.
        Err(error) => Err(error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string()),
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(line) => {
            eprintln!("troupe-router: bad configuration: {line}");
            return ExitCode::from(2);
        }
    };
    if settings.dev_tokens.is_some() {
        // On stderr whatever the log filter, so that nobody misses it.
        eprintln!("troupe-router: WARNING: {}", troupe_router::dev_token::WARNING);
    }
    if let Err(line) = logging::init_with(&settings.log, Style::Service) {
        eprintln!("troupe-router: bad configuration: {line}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("troupe-router: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("troupe-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = troupe_router::bind(&settings).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, cluster = ?settings.cluster, "troupe-router starting");
    // Scripts and tests wait for this exact line, then read the address from it.
    let ready = move || println!("troupe-router listening on {addr}");
    troupe_router::run(settings, listener, ready, troupe_runtime::signal::shutdown()).await?;
    Ok(())
}
