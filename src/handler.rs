//! Lifecycle hooks for applications embedding herald.
//!
//! Methods run on the session's shard thread, inline with its I/O: keep
//! them short and never block. The default methods accept everything.

use std::net::SocketAddr;

use crate::auth::Claims;
use crate::wire::client::Request;
use crate::wire::close::Close;

/// What a session looks like to a [`Handler`].
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo<'a> {
    /// Unique for the lifetime of the process.
    pub id: u64,
    pub shard: usize,
    pub peer: SocketAddr,
    pub claims: &'a Claims,
}

/// A handler's refusal: sent to the client as `[18, id, code, message]`
/// (`on_message`) or as close code 1008 with `message` (`on_open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: u16,
    pub message: String,
}

impl Reject {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
        }
    }
}

/// Why a transport failed, as far as the gateway could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The peer broke the WebSocket protocol; the session closes with `code`.
    Protocol { code: Close, reason: &'static str },
    /// A read or write on the socket failed.
    Io(std::io::ErrorKind),
    /// No pong within the configured timeout.
    PingTimeout,
}

pub trait Handler: Send + Sync + 'static {
    /// After the 101, before the first frame is read. An `Err` closes the
    /// session with 1008.
    fn on_open(&self, _session: &SessionInfo<'_>) -> Result<(), Reject> {
        Ok(())
    }

    /// For each well-formed request, after the gateway's own checks passed
    /// (token claims, limits). An `Err` answers the request with an ERROR
    /// and the request has no effect.
    fn on_message(&self, _session: &SessionInfo<'_>, _request: &Request<'_>) -> Result<(), Reject> {
        Ok(())
    }

    fn on_transport_error(&self, _session: &SessionInfo<'_>, _error: &TransportError) {}

    /// Once per opened session, with the close code it ended with
    /// (`Close::Abnormal`, 1006, when the transport broke without one).
    fn on_close(&self, _session: &SessionInfo<'_>, _code: Close) {}
}

/// The default binary's handler: logs the lifecycle at debug level.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogHandler;

impl Handler for LogHandler {
    fn on_open(&self, s: &SessionInfo<'_>) -> Result<(), Reject> {
        tracing::debug!(session = s.id, shard = s.shard, user = %s.claims.sub, peer = %s.peer, "session open");
        Ok(())
    }

    fn on_transport_error(&self, s: &SessionInfo<'_>, error: &TransportError) {
        tracing::debug!(session = s.id, user = %s.claims.sub, ?error, "transport error");
    }

    fn on_close(&self, s: &SessionInfo<'_>, code: Close) {
        tracing::debug!(session = s.id, user = %s.claims.sub, code = code.code(), "session closed");
    }
}
