//! Simulated editors and load generation.
//!
//! - [`client`]: a y-websocket client (sync, awareness, Troupe durable acks, tokens).
//! - [`bench`](mod@bench): the load generator of `troupe-chaos load` (fan-out latency, throughput,
//!   server CPU and memory; a ramp to the highest rate under a p99 limit).
//! - [`editor`]: an editor that follows its scene across moves and node loss; [`typing`],
//!   where it types (`Y.Text` "text", or a screenplay block of its own).
//! - [`scenario`], [`run`], [`check`]: chaos runs — faults on a schedule, and the proof
//!   that nothing was lost; [`p1`], P1 writers (the content API's autosave) beside the
//!   editors, and the marker counts in the document, `content_blocks` and the API.
//! - [`launcher`]: a local cluster of real processes, and [`logs`], their logs.
//! - [`dev`]: `troupe dev` (alias `troupe-chaos up`), a local cluster for development.
//! - [`chart`]: an SVG picture of edit latency over time, with faults and recovery times.
//! - [`relay`]: `troupe-chaos relay`, a bare y-websocket relay, the bench's floor.

pub mod bench;
pub mod chart;
pub mod check;
pub mod client;
pub mod dev;
pub mod duration_de;
pub mod editor;
pub mod launcher;
pub mod logs;
pub mod netns;
pub mod p1;
pub mod relay;
pub mod run;
pub mod scenario;
pub mod typing;
pub mod usage;
