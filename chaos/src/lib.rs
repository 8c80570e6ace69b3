//! Simulated editors and load generation.
//!
//! - [`client`]: a y-websocket client (sync, awareness, Troupe durable acks, tokens).
//! - [`bench`]: the pieces of the `troupe-bench` load generator (markers, statistics,
//!   process sampling, reports).

pub mod bench;
pub mod client;
