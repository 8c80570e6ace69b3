//! Building blocks of the `troupe-bench` load generator.
//!
//! - [`marker`]: the tag each simulated edit carries (sender, sequence, send time).
//! - [`stats`]: latency percentiles and medians.
//! - [`procfs`]: CPU time and resident memory of server processes, from `/proc`.
//! - [`report`]: a run's results, printed for people or as JSON, and the side-by-side table.

pub mod marker;
pub mod procfs;
pub mod report;
pub mod stats;
