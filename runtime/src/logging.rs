//! Logs: `tracing` events to stderr (coloured on a terminal), filtered by `TROUPE_LOG`
//! (an `EnvFilter` directive such as `info` or `warn,troupe_node=debug`), or by the
//! binary's own default when it is unset.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable every binary reads its log filter from.
pub const LOG_VAR: &str = "TROUPE_LOG";

/// Checks a filter, with an error that names the setting.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directives).map_err(|e| format!("{LOG_VAR} {directives:?}: {e}"))
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Servers: time, level, target, message.
    Service,
    /// Command-line tools: level and message, beside the tool's own output.
    Tool,
}

/// Logs with the filter in `TROUPE_LOG`, or `default` when it is unset or empty.
pub fn init(default: &str, style: Style) -> Result<(), String> {
    match std::env::var(LOG_VAR) {
        Ok(directives) if !directives.trim().is_empty() => init_with(&directives, style),
        _ => init_with(default, style),
    }
}

/// Logs with `directives` (for a binary whose `--log` flag already read `TROUPE_LOG`).
/// A second call in one process keeps the first subscriber.
pub fn init_with(directives: &str, style: Style) -> Result<(), String> {
    let filter = parse_filter(directives)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match style {
        Style::Service => builder.try_init(),
        Style::Tool => builder.with_target(false).without_time().try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_names_the_setting() {
        assert!(parse_filter("info,troupe_node=debug").is_ok());
        let error = parse_filter("a=b=c").err().unwrap_or_default();
        assert!(error.starts_with("TROUPE_LOG \"a=b=c\""), "{error}");
    }
}
