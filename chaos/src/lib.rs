//! Simulated editors and load generation.
//!
//! - [`client`]: a y-websocket client (sync, awareness, Troupe durable acks, tokens).
//! - [`bench`]: the pieces of the `troupe-bench` load generator (markers, statistics,
//!   process sampling, reports).
//! - [`launcher`]: a local cluster of real processes (`troupe-chaos up`).

pub mod bench;
pub mod client;
pub mod launcher;
