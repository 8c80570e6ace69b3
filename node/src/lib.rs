//! Troupe room node: hosts scenes as live yrs documents behind the stock y-websocket
//! protocol, persists every edit to a durable store and refuses bad input with a clear
//! close code.
//!
//! The contracts it shares with routers and tools (wire format, close codes, tokens, scene
//! ids, presence keys) are in [`troupe_proto`]; which scenes it may serve comes from
//! [`troupe_membership::placement`]. The modules, from the socket inwards:
//! - [`server`]: wiring of a node: store, writer, rooms and the HTTP listener, with
//!   graceful shutdown;
//! - [`http`]: the HTTP routes: the WebSocket endpoint, `/healthz` and `/metrics`;
//! - [`api`]: the scene API (`/v1/scenes/{id}/…`): content, history and restore;
//! - [`ws`]: one client connection: authenticate, join the scene's room, shuttle frames;
//! - [`frame_reader`], [`frame_writer`]: a client's WebSocket frames, read and written with
//!   no buffer kept between messages;
//! - [`protocol`]: what a node accepts from a client: frames of the shared wire format
//!   ([`troupe_proto`]) whose payloads are valid;
//! - [`update_check`]: structural validation of untrusted Yjs v1 data before yrs decodes it;
//! - [`outbox`]: the bounded queue from a room to one connection;
//! - [`wake_gate`]: a connection's rarely ready futures, polled again only after one woke;
//! - [`rooms`]: the directory of live rooms on this node: scene id -> the room's inbox;
//! - [`room`]: one live scene, owned by a single task: document, clients, acks, presence;
//! - [`writer`]: the group committer: every room's pending batches in one transaction;
//! - [`store`]: the durable store: each scene's update log, snapshots and leases;
//! - [`presence`]: presence and failover notices on Redis (the cross-node side);
//! - [`metrics`]: Prometheus metrics, served as text at `/metrics`;
//! - [`webhooks`]: signed change notifications for the app's backend;
//! - [`triggers`]: the spec's rollback triggers over a sliding window, and the automatic
//!   rollback;
//! - [`content`]: scene content outside the editor: the blocks of the P1 product and
//!   their place in a scene's document;
//! - [`self_membership`]: this node's own place in the cluster: joining at start, draining
//!   or leaving at stop, readiness;
//! - [`epoch_floor`]: the leader keeps the placement epoch above every lease in the store
//!   (a cluster started anew on an old store);
//! - [`kubernetes`]: whether a StatefulSet pod is stopping for good (a scale-down);
//! - [`config`]: node configuration: flags, each also read from a `TROUPE_*` variable;

pub mod api;
pub mod batch;
pub mod config;
pub mod content;
pub mod epoch_floor;
pub mod frame_reader;
pub mod frame_writer;
pub mod http;
pub mod kubernetes;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod room;
pub mod rooms;
pub mod self_membership;
pub mod server;
pub mod store;
pub mod triggers;
pub mod update_check;
pub mod wake_gate;
pub mod webhooks;
pub mod writer;
pub mod ws;
