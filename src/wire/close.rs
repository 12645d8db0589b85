//! Every WebSocket close code herald sends, reads or reports, as one table.
//!
//! The sessions close with a [`Close`], the metrics label it, and
//! `Handler::on_close` receives it; nothing else names a bare number. Each
//! entry says who is at fault and what a client should do next, which is
//! exactly what PROTOCOL.md §1.8 and the client libraries' reconnect table
//! say; a test below keeps the two in step.

use std::fmt;

/// A close code, with what herald knows about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// 1000: the peer asked to close, or answered ours.
    Normal,
    /// 1001: the gateway is draining, or a cluster topic's stream broke and
    /// the client must subscribe again.
    GoingAway,
    /// 1002: the peer broke RFC 6455.
    ProtocolError,
    /// 1003: a text frame (herald speaks binary only).
    UnsupportedData,
    /// 1006: never on the wire; the transport broke without a close
    /// handshake (EOF, reset, no pong).
    Abnormal,
    /// 1007: a close reason (or, on the echo route, a text message) that is
    /// not UTF-8.
    InvalidPayload,
    /// 1008: the application's `Handler::on_open` refused the session.
    PolicyViolation,
    /// 1009: a message over `limits.max_message_bytes`.
    TooBig,
    /// 4001: the token expired while connected.
    TokenExpired,
    /// 4003: the operator disconnected the user.
    Disconnected,
    /// 4008: the client read too slowly (PROTOCOL.md §8).
    SlowConsumer,
    /// 4029: the client kept sending over its rate limit.
    RateLimited,
    /// Any other code a peer sent (herald echoes it back).
    Other(u16),
}

/// Whose doing a close was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nobody's: an orderly end.
    None,
    /// The client broke a rule.
    Client,
    /// The gateway is going away or lost a stream.
    Gateway,
    /// The operator or the embedding application decided.
    Operator,
    /// The network or the peer's process vanished.
    Network,
}

/// What a client should do after the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// After the usual backoff.
    Backoff,
    /// Only after a long pause (15–30 s): reconnecting at once would repeat
    /// the offence.
    Later,
    /// At once, with a fresh token.
    NewToken,
    /// Not without a change on its side: the same client would be refused
    /// again.
    Never,
}

impl Close {
    /// The code on the wire (1006 is never sent, only reported).
    pub const fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::GoingAway => 1001,
            Close::ProtocolError => 1002,
            Close::UnsupportedData => 1003,
            Close::Abnormal => 1006,
            Close::InvalidPayload => 1007,
            Close::PolicyViolation => 1008,
            Close::TooBig => 1009,
            Close::TokenExpired => 4001,
            Close::Disconnected => 4003,
            Close::SlowConsumer => 4008,
            Close::RateLimited => 4029,
            Close::Other(c) => c,
        }
    }

    /// The entry for a code read off the wire.
    pub const fn from_code(code: u16) -> Close {
        match code {
            1000 => Close::Normal,
            1001 => Close::GoingAway,
            1002 => Close::ProtocolError,
            1003 => Close::UnsupportedData,
            1006 => Close::Abnormal,
            1007 => Close::InvalidPayload,
            1008 => Close::PolicyViolation,
            1009 => Close::TooBig,
            4001 => Close::TokenExpired,
            4003 => Close::Disconnected,
            4008 => Close::SlowConsumer,
            4029 => Close::RateLimited,
            c => Close::Other(c),
        }
    }

    /// The reason herald puts in its close frame when it has no better one.
    pub const fn reason(self) -> &'static str {
        match self {
            Close::Normal | Close::Other(_) => "",
            Close::GoingAway => "going away",
            Close::ProtocolError => "protocol error",
            Close::UnsupportedData => "text frames are not supported",
            Close::Abnormal => "connection lost",
            Close::InvalidPayload => "invalid utf-8",
            Close::PolicyViolation => "refused",
            Close::TooBig => "message too big",
            Close::TokenExpired => "token expired",
            Close::Disconnected => "disconnected by the operator",
            Close::SlowConsumer => "slow consumer",
            Close::RateLimited => "rate limited",
        }
    }

    pub const fn fault(self) -> Fault {
        match self {
            Close::Normal | Close::Other(_) => Fault::None,
            Close::GoingAway => Fault::Gateway,
            Close::ProtocolError
            | Close::UnsupportedData
            | Close::InvalidPayload
            | Close::TooBig
            | Close::TokenExpired
            | Close::SlowConsumer
            | Close::RateLimited => Fault::Client,
            Close::PolicyViolation | Close::Disconnected => Fault::Operator,
            Close::Abnormal => Fault::Network,
        }
    }

    /// PROTOCOL.md §1.8 and `clients/README.md` (the reconnect table).
    pub const fn reconnect(self) -> Reconnect {
        match self {
            Close::Normal
            | Close::GoingAway
            | Close::Abnormal
            | Close::SlowConsumer
            | Close::Other(_) => Reconnect::Backoff,
            Close::RateLimited | Close::Disconnected => Reconnect::Later,
            Close::TokenExpired => Reconnect::NewToken,
            Close::ProtocolError
            | Close::UnsupportedData
            | Close::InvalidPayload
            | Close::PolicyViolation
            | Close::TooBig => Reconnect::Never,
        }
    }

    /// Metric label: a closed set, so a peer's codes cannot grow the series.
    pub const fn label(self) -> &'static str {
        match self {
            Close::Normal => "1000",
            Close::GoingAway => "1001",
            Close::ProtocolError => "1002",
            Close::UnsupportedData => "1003",
            Close::Abnormal => "1006",
            Close::InvalidPayload => "1007",
            Close::PolicyViolation => "1008",
            Close::TooBig => "1009",
            Close::TokenExpired => "4001",
            Close::Disconnected => "4003",
            Close::SlowConsumer => "4008",
            Close::RateLimited => "4029",
            Close::Other(_) => "other",
        }
    }

    /// Every named entry, for documentation and tests.
    pub const ALL: [Close; 12] = [
        Close::Normal,
        Close::GoingAway,
        Close::ProtocolError,
        Close::UnsupportedData,
        Close::Abnormal,
        Close::InvalidPayload,
        Close::PolicyViolation,
        Close::TooBig,
        Close::TokenExpired,
        Close::Disconnected,
        Close::SlowConsumer,
        Close::RateLimited,
    ];
}

impl From<Close> for u16 {
    fn from(c: Close) -> u16 {
        c.code()
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_labels_are_the_codes() {
        for c in Close::ALL {
            assert_eq!(Close::from_code(c.code()), c);
            assert_eq!(c.label(), c.code().to_string());
        }
        assert_eq!(Close::from_code(3000), Close::Other(3000));
        assert_eq!(Close::Other(4999).label(), "other");
    }

    /// The project's PROTOCOL.md §1.8 is this table in prose; a client
    /// author reads the document, so the two must not drift apart.
    #[test]
    fn protocol_md_table_matches() {
        let doc = include_str!("../../PROTOCOL.md");
        let section = doc
            .split("### 1.8")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .expect("PROTOCOL.md has §1.8");
        for c in Close::ALL {
            let rows: Vec<Vec<&str>> = section
                .lines()
                .filter(|l| l.starts_with(&format!("| {} |", c.code())))
                .map(|l| l.split('|').map(str::trim).collect())
                .collect();
            assert!(!rows.is_empty(), "PROTOCOL.md §1.8 has no row for {c}");
            for cols in rows {
                let fault = match c.fault() {
                    Fault::None => "none",
                    Fault::Client => "client",
                    Fault::Gateway => "gateway",
                    Fault::Operator => "operator",
                    Fault::Network => "network",
                };
                let advice = match c.reconnect() {
                    Reconnect::Backoff => "reconnect with backoff",
                    Reconnect::Later => "reconnect after 15–30 s",
                    Reconnect::NewToken => "reconnect at once with a new token",
                    Reconnect::Never => "not reconnect unchanged",
                };
                assert_eq!(cols[4], fault, "fault of {c}");
                assert_eq!(cols[5], advice, "advice for {c}");
            }
        }
    }
}
