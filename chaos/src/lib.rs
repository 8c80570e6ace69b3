//! Simulated editors and load generation.
//!
//! - [`client`]: a y-websocket client (sync, awareness, Troupe durable acks, tokens).
//! - [`bench`]: the pieces of the `troupe-bench` load generator (markers, statistics,
//!   process sampling, reports).
//! - [`editor`]: an editor that follows its scene across moves and node loss.
//! - [`scenario`], [`run`], [`check`]: chaos runs — faults on a schedule, and the proof
//!   that nothing was lost.
//! - [`launcher`]: a local cluster of real processes (`troupe-chaos up`).
//! - [`chart`]: an SVG picture of edit latency over time, with faults and recovery times.

pub mod bench;
pub mod chart;
pub mod check;
pub mod client;
pub mod duration_de;
pub mod editor;
pub mod launcher;
pub mod run;
pub mod scenario;
