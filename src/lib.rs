//! herald: a raw-WebSocket, high fan-out push gateway.
//!
//! See `ARCHITECTURE.md` for the module map and the hot-path invariants.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod handler;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod shard;
pub mod transport;
pub mod wire;

pub use app::{ReloadError, Reloaded, Server, StartError, StartOptions};
pub use handler::{Handler, LogHandler, Reject, SessionInfo, TransportError};
pub use wire::close::{Close, Fault, Reconnect};
