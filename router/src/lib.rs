//! `troupe-router`: a stateless resolver from scene to owner node.
//!
//! It follows the cluster's membership (long-poll watches on the configured nodes, see
//! [`follow`]) and answers from the newest placement it has: `GET /v1/route/{scene}` with
//! the owner, `GET /ws/scenes/{scene}` with a 307 to it (see [`http`]). It keeps nothing
//! else, so any number of routers can run side by side and restart at will; a router that
//! falls behind only costs clients one extra hop, since nodes send them on (close 4301).
//!
//! For demos it also serves the demo page's files at `/` (see [`assets`]) and, only when
//! asked to, tokens for anyone (see [`dev_token`]). Presence answers and failover notices
//! come from Redis ([`presence`]); a scene's content is answered by its owner, the router
//! checking the token and forwarding ([`content`]); [`server`] runs it all, [`config`] and [`metrics`] are
//! what they say. Behind a single public host (Kubernetes), `/nodes/{name}/…` is passed
//! through to that node ([`passthrough`]).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod access;
pub mod assets;
pub mod config;
pub mod content;
pub mod dev_token;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod passthrough;
pub mod presence;
pub mod server;

pub use crate::config::{Config, Settings};
pub use crate::follow::RouterState;
pub use crate::server::{bind, run, RouterError};
