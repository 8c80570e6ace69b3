//! The contracts Troupe's processes share, defined once: nodes, routers, `troupectl`, the
//! chaos and load tools and the tests all speak through these types, so a change to the
//! wire or to Redis is a change in one place. No runtime, no I/O.
//!
//! - [`lib0`]: the variable-length integers and byte strings of Yjs' encoding, read without
//!   trusting any length the bytes claim.
//! - [`message`]: the y-websocket messages (sync, awareness, auth, query) and Troupe's
//!   durable ack, both directions.
//! - [`close`]: WebSocket close codes, what each means and its metric label.
//! - [`flags`]: feature flags (collaboration on or off, rollout) and the rule that decides.
//! - [`token`]: access token claims, signing and verification.
//! - [`scene`]: which strings are scene ids.
//! - [`node`]: node ids.
//! - [`origin`]: which browser pages may connect (the `Origin` allowlist).
//! - [`presence`]: presence records and failover notices, and their Redis keys.
//! - [`clock`]: wall-clock time as the records above carry it.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod clock;
pub mod close;
pub mod flags;
pub mod lib0;
pub mod message;
pub mod node;
pub mod origin;
pub mod presence;
pub mod scene;
pub mod token;

pub use close::CloseCode;
pub use message::{AwarenessEntry, Message, WireError};
pub use node::NodeId;
