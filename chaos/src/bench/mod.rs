//! `troupe-chaos load`: simulated editors drive a y-websocket server (a Troupe node, a
//! cluster through its router, or the reference server) and measure fan-out latency,
//! throughput, and the server's CPU per delivered update and memory per room.
//!
//! - [`load`]: the options and one measured run; [`ramp`]: rising rates up to a p99 limit.
//! - [`target`]: where editors connect (a WebSocket base, or a router's route per scene).
//! - [`typist`]: one simulated editor (types markers, records deliveries, follows 4301).
//! - [`marker`]: the tag each simulated edit carries (sender, sequence, send time).
//! - [`tally`]: from what editors saw to counts, percentiles and a timeline.
//! - [`stats`]: latency percentiles and medians.
//! - [`procfs`]: CPU time and resident memory of server processes, from `/proc`.
//! - [`report`]: results, printed for people or as JSON, and the side-by-side table.
//! - [`svg`]: the latency picture.

pub mod load;
pub mod marker;
pub mod procfs;
pub mod ramp;
pub mod report;
pub mod stats;
pub mod svg;
pub mod tally;
pub mod target;
pub mod typist;
