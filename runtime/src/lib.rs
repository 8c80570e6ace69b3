//! How every Troupe binary starts and stops, the same way everywhere:
//!
//! - [`logging`]: `tracing` to stderr, filtered by `TROUPE_LOG`;
//! - [`signal`]: the shutdown signal (Ctrl-C or SIGTERM);
//! - [`tasks`]: background tasks that stop together: cancel, then wait with a deadline;
//! - [`backoff`]: the delay between retries of anything that failed;
//! - [`duration`]: durations in settings (`250ms`, `30s`, `2d`);
//! - [`listen`]: serving a public HTTP port within limits (connections, header time and
//!   size, body size).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod backoff;
pub mod duration;
pub mod listen;
pub mod logging;
pub mod signal;
pub mod tasks;

pub use backoff::Backoff;
pub use tasks::Tasks;
