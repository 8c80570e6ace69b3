//! Troupe cluster membership.
//!
//! For now this crate holds placement only: [`ring`] decides which active node owns a
//! scene. The replicated membership state (openraft) that feeds it comes separately; the
//! ring is kept independent of it so that placement can be pinned and tested on its own.

#![deny(clippy::unwrap_used)]

pub mod ring;

pub use ring::{NodeId, Ring, RingError, DEFAULT_VNODES, MAX_VNODES};
