//! Troupe room node: hosts scenes as live yrs documents behind the stock y-websocket
//! protocol, persists every edit to a durable store and refuses bad input with a clear
//! close code.

pub mod auth;
pub mod config;
pub mod duration;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod placement;
pub mod presence;
pub mod protocol;
pub mod room;
pub mod rooms;
pub mod server;
pub mod store;
pub mod update_check;
pub mod writer;
pub mod ws;
