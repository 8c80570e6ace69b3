//! Troupe room node: hosts scenes as live yrs documents behind the stock y-websocket
//! protocol, persists every edit to a durable store and refuses bad input with a clear
//! close code.
//!
//! A table of contents, one line a module (the way in is [`server`]).

/// Access tokens: JWTs minted by the app's backend that scope a user to scenes.
pub mod auth;
/// Node configuration: command-line flags, each also read from a `TROUPE_*` variable.
pub mod config;
/// Human-friendly durations for configuration: `250ms`, `30s`, `10m`, `1h`, `2d`.
pub mod duration;
/// HTTP routes: the WebSocket endpoint, `/healthz` and `/metrics`.
pub mod http;
/// Prometheus metrics, served as text at `/metrics`.
pub mod metrics;
/// The bounded queue from a room to one connection (frames out, one close at most).
pub mod outbox;
/// Which scenes this node may serve: the cluster's placement at its current epoch.
pub mod placement;
/// Presence and failover notices on Redis (the cross-node side of presence).
pub mod presence;
/// The y-websocket wire protocol (y-protocols, v1 encoding): parsing and encoding frames.
pub mod protocol;
/// A room: one live scene, owned by a single task (document, clients, acks, presence).
pub mod room;
/// The directory of live rooms on this node: scene id -> the room task's inbox.
pub mod rooms;
/// Wiring of a node: store, writer, rooms and the HTTP listener, with graceful shutdown.
pub mod server;
/// The durable store: each scene's update log, snapshots and leases (Postgres or SQLite).
pub mod store;
/// Structural validation of untrusted Yjs v1 data before yrs decodes it.
pub mod update_check;
/// The group committer: writes every room's pending batches in one transaction.
pub mod writer;
/// One client connection: authenticate, join the scene's room, then shuttle frames.
pub mod ws;
