//! Configuration: one struct tree read from an optional TOML file, then
//! overridden by `HERALD_<SECTION>__<KEY>` environment variables, then
//! validated.
//!
//! Every key has a default, so an empty file (or no file) is a valid
//! configuration; unknown keys are errors so that a typo never silently falls
//! back to a default. Keys carry their unit in the name (`_ms`, `_s`,
//! `_bytes`, `_per_s`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::topic::Patterns;

/// Prefix of environment overrides; the rest is `<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "HERALD_";
const ENV_SEPARATOR: &str = "__";
const MASK: &str = "***";
const MIB: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub tls: Tls,
    pub auth: Auth,
    pub ingest: Ingest,
    pub api: Api,
    pub shards: Shards,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub hub: Hub,
    pub cluster: Cluster,
    pub log: Log,
    /// What happens to a connection that falls behind, per topic pattern;
    /// first match wins, no match is `disconnect` (PROTOCOL.md §8).
    pub slow_consumer: Vec<SlowConsumer>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Public WebSocket port.
    pub ws: SocketAddr,
    /// Upstream feed ingest (TCP); loopback by default because feeds are trusted.
    pub ingest: SocketAddr,
    /// Operator HTTP API and metrics; never exposed by default.
    pub admin: SocketAddr,
    /// `listen(2)` backlog; tokio's 1024 drops connect storms.
    pub backlog: u32,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            ws: SocketAddr::from(([0, 0, 0, 0], 8780)),
            ingest: SocketAddr::from(([127, 0, 0, 1], 8781)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8782)),
            backlog: 4096,
        }
    }
}

/// TLS on the public WebSocket listener: with both files set it speaks
/// `wss://` only. `SIGHUP` reloads them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM: the server certificate first, then its chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// HMAC secret for HS256 tokens; empty means HS256 is not accepted.
    pub hs256_secret: String,
    /// PEM public key; its type pins the algorithm (RSA→RS256, EC P-256→ES256,
    /// Ed25519→EdDSA). A relative path is taken from the working directory.
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_s: u64,
    /// Accept `?token=` on the upgrade URL (tokens in URLs end up in logs).
    pub allow_query_token: bool,
    /// `scheme://host[:port]` entries; empty allows every origin.
    pub allowed_origins: Vec<String>,
    /// Subscribe patterns for a token without a `topics` claim; empty denies.
    pub default_topics: Vec<String>,
    /// Publish patterns for a token without a `pub` claim; empty denies.
    pub default_publish: Vec<String>,
    /// JSON Web Key Set file (RFC 7517); re-read on `SIGHUP`.
    pub jwks_file: Option<PathBuf>,
    /// JSON Web Key Set URL (`http://` or `https://`), fetched at start and
    /// every `jwks_refresh_s`.
    pub jwks_url: Option<String>,
    pub jwks_refresh_s: u64,
    /// At most one early fetch (for a token naming an unknown `kid`) per
    /// this many seconds.
    pub jwks_min_refetch_s: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            hs256_secret: String::new(),
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_s: 5,
            allow_query_token: false,
            allowed_origins: Vec::new(),
            default_topics: Vec::new(),
            default_publish: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            jwks_min_refetch_s: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingest {
    /// Shared secrets a feed presents in its hello; empty accepts none.
    pub tokens: Vec<String>,
    pub max_frame_bytes: usize,
    pub hello_timeout_ms: u64,
    pub max_feeds: usize,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            tokens: Vec::new(),
            max_frame_bytes: MIB,
            hello_timeout_ms: 5000,
            max_feeds: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Bearer keys for the operator HTTP API; empty accepts none.
    pub keys: Vec<String>,
    pub max_body_bytes: usize,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            keys: Vec::new(),
            max_body_bytes: MIB,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shards {
    /// 0 = one shard per available core.
    pub count: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Per node.
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// 0 = unlimited.
    pub max_connections_per_user: usize,
    /// Accepted upgrades per second, node-wide; 0 = unlimited.
    pub handshakes_per_s: u32,
    /// Handshakes in progress per shard; further connections wait in the
    /// listen backlog. Bounds the handshake buffers a connect storm holds.
    pub max_pending_handshakes: usize,
    pub max_header_bytes: usize,
    /// Largest client→gateway WebSocket message.
    pub max_message_bytes: usize,
    /// Per connection.
    pub max_subscriptions: usize,
    /// Bytes queued for one connection before it is closed with 4008.
    pub max_outbox_bytes: usize,
    /// Unsent bytes the kernel may hold for one connection
    /// (`TCP_NOTSENT_LOWAT`); the rest waits in herald's outbox. 0 = the
    /// kernel's default (no cap beyond the autotuned send buffer).
    pub send_queue_bytes: usize,
    /// Token bucket refill rate for client requests; 0 = unlimited.
    pub client_msgs_per_s: u32,
    /// Token bucket size.
    pub client_burst: u32,
    /// Requests answered 429 before the connection is closed with 4029.
    pub rate_limit_strikes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 200_000,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            handshakes_per_s: 0,
            max_pending_handshakes: 64,
            max_header_bytes: 8192,
            max_message_bytes: 65536,
            max_subscriptions: 1024,
            max_outbox_bytes: MIB,
            send_queue_bytes: 128 * 1024,
            client_msgs_per_s: 100,
            client_burst: 200,
            rate_limit_strikes: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub handshake_ms: u64,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub close_ms: u64,
    pub drain_ms: u64,
    /// Resolution of each shard's session timer (pings, pong timeout,
    /// token expiry are checked once per tick).
    pub tick_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake_ms: 5000,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            close_ms: 2000,
            drain_ms: 10_000,
            tick_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hub {
    /// Messages kept per topic for recovery (`since`).
    pub history_size: usize,
    pub inbox_capacity: usize,
    /// Threads of a separate `herald-home` runtime for the home tasks
    /// (sequencing; one per topic partition); 0 = they run on the control
    /// thread beside ingest and the operator API.
    pub home_threads: usize,
    /// A topic with no subscriber and no publication for this long is dropped.
    pub topic_idle_ttl_s: u64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            history_size: 128,
            inbox_capacity: 8192,
            home_threads: 0,
            topic_idle_ttl_s: 300,
        }
    }
}

/// Cluster mode (PROTOCOL.md §5): on when `nats_url` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// NATS server(s), comma-separated (`nats://host:4222`); empty = one
    /// node on its own. The server must run JetStream (`-js`).
    pub nats_url: String,
    /// This node's name in logs, `/api/stats` and the records it writes;
    /// empty = the host name.
    pub node_id: String,
    /// Names the JetStream stream (`HERALD_<name>`) and the subjects; the
    /// same on every node of one cluster.
    pub name: String,
    /// How a node hears the records of its topics: `interest` (one NATS
    /// subscription per topic with local subscribers) or `wildcard` (one
    /// for all topics).
    pub follow: FollowMode,
    /// Where NATS keeps the topic logs: `file` (they survive a NATS
    /// restart) or `memory` (faster; a NATS restart starts every topic
    /// over under a new epoch).
    pub storage: StorageMode,
    /// JetStream replicas of the stream (a NATS cluster of that many).
    pub replicas: usize,
    /// The stream's size bound; the oldest records go first. 0 = none.
    pub stream_max_bytes: u64,
    /// How long a node waits for NATS (ack, direct get) before it counts
    /// the broker as unreachable for that call.
    pub request_timeout_ms: u64,
    /// Bytes of one record a home appends to a topic's log: payloads plus
    /// 4 bytes of framing each (and never above the NATS `max_payload`).
    pub max_batch_bytes: usize,
    /// Payload bytes a home holds for the broker (queued or in flight)
    /// before publishers wait.
    pub max_pending_bytes: usize,
    /// A NATS credentials file (JWT + nkey), if the server wants one.
    pub creds_file: Option<PathBuf>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            nats_url: String::new(),
            node_id: String::new(),
            name: "herald".to_owned(),
            follow: FollowMode::Interest,
            storage: StorageMode::File,
            replicas: 1,
            stream_max_bytes: 1 << 30,
            request_timeout_ms: 2000,
            max_batch_bytes: 256 * 1024,
            max_pending_bytes: 64 * MIB,
            creds_file: None,
        }
    }
}

impl Cluster {
    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }

    /// `node_id`, or the host name when it is empty.
    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "herald".to_owned())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowMode {
    #[default]
    Interest,
    Wildcard,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `tracing_subscriber::EnvFilter` syntax.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// One `[[slow_consumer]]` rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumer {
    /// Patterns as in the `topics` claim: `md.*`, `*`, or an exact topic.
    pub topics: Vec<String>,
    #[serde(default)]
    pub policy: SlowPolicy,
}

/// What a connection that falls behind does with a topic's publications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowPolicy {
    /// Over `limits.max_outbox_bytes`: close 4008.
    #[default]
    Disconnect,
    /// Over the bound: drop this policy's oldest queued publications.
    DropOldest,
    /// Behind: only the latest queued publication per topic stays.
    Conflate,
}

impl SlowPolicy {
    pub fn name(self) -> &'static str {
        match self {
            SlowPolicy::Disconnect => "disconnect",
            SlowPolicy::DropOldest => "drop_oldest",
            SlowPolicy::Conflate => "conflate",
        }
    }
}

impl Config {
    /// The slow-consumer rules, compiled: `validate` has checked them.
    pub fn slow_consumer_rules(&self) -> Vec<(Patterns, SlowPolicy)> {
        self.slow_consumer
            .iter()
            .filter_map(|r| Patterns::parse(&r.topics).ok().map(|p| (p, r.policy)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML at all; `message` carries line and column.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{}", describe_unknown(key))]
    UnknownKey { key: String },
    #[error("{var}: names no configuration key (expected HERALD_<SECTION>__<KEY>)")]
    UnknownEnv { var: String },
    /// A value of the wrong type or syntax; `key` is the dotted key path, or
    /// the environment variable when the value came from one.
    #[error("{key}: {message}")]
    Parse { key: String, message: String },
    /// Well-typed but outside what the gateway can run with.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn describe_unknown(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, name)) => format!("unknown key `{name}` in [{section}]"),
        None => format!("unknown section [{key}]"),
    }
}

/// One `HERALD_<SECTION>__<KEY>` override.
struct EnvOverride {
    var: String,
    /// Dotted key path, `section.key`.
    path: String,
    section: String,
    key: String,
    raw: String,
    /// Set after the TOML reading of `raw` failed to deserialize, so that e.g.
    /// a numeric secret is still taken as the string it is.
    as_string: bool,
}

impl EnvOverride {
    fn value(&self) -> toml::Value {
        if !self.as_string {
            if let Ok(v) = self.raw.parse::<toml::Value>() {
                return v;
            }
        }
        toml::Value::String(self.raw.clone())
    }

    fn covers(&self, error_path: &str) -> bool {
        error_path == self.path
            || error_path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    }
}

impl Config {
    /// Reads `path` (if any), applies the process environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            // Non-UTF-8 variables are someone else's business unless they are ours.
            let Ok(k) = k.into_string() else { continue };
            if !k.starts_with(ENV_PREFIX) {
                continue;
            }
            match v.into_string() {
                Ok(v) => env.push((k, v)),
                Err(_) => {
                    return Err(ConfigError::Parse {
                        key: k,
                        message: "value is not valid UTF-8".to_owned(),
                    })
                }
            }
        }
        Config::load_from(path, env)
    }

    /// [`Config::load`] with the environment passed in, for tests.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                parse_table(&text, &p.display().to_string())?
            }
            None => toml::Table::new(),
        };
        let overrides = env_overrides(env)?;
        let cfg = deserialize_with_overrides(table, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document (no environment) and validates it.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let table = parse_table(s, "config")?;
        let cfg = deserialize_with_overrides(table, Vec::new())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and cross-key constraints. Whether any auth key is
    /// configured is left to the caller: a gateway without keys is a valid
    /// configuration for tests.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.into(),
            })
        }

        let l = &self.listen;
        if l.backlog == 0 {
            return invalid("listen.backlog", "must be at least 1");
        }

        match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                for (key, p) in [("tls.cert_file", c), ("tls.key_file", k)] {
                    if !p.is_file() {
                        return invalid(key, format!("{} is not a readable file", p.display()));
                    }
                }
            }
            (Some(_), None) => return invalid("tls.key_file", "must be set with tls.cert_file"),
            (None, Some(_)) => return invalid("tls.cert_file", "must be set with tls.key_file"),
        }

        let a = &self.auth;
        if let Some(p) = &a.public_key_file {
            if !p.is_file() {
                return invalid(
                    "auth.public_key_file",
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
        if let Some(p) = &a.jwks_file {
            if !p.is_file() {
                return invalid(
                    "auth.jwks_file",
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
        if let Some(url) = &a.jwks_url {
            if let Err(e) = crate::auth::fetch::parse_url(url) {
                return invalid("auth.jwks_url", e);
            }
        }
        if a.jwks_refresh_s == 0 {
            return invalid("auth.jwks_refresh_s", "must be at least 1");
        }
        if a.jwks_min_refetch_s == 0 {
            return invalid("auth.jwks_min_refetch_s", "must be at least 1");
        }
        if a.issuer.as_deref() == Some("") {
            return invalid(
                "auth.issuer",
                "must not be empty (omit it to skip the check)",
            );
        }
        if a.audience.as_deref() == Some("") {
            return invalid(
                "auth.audience",
                "must not be empty (omit it to skip the check)",
            );
        }
        if a.leeway_s > 3600 {
            return invalid("auth.leeway_s", "must be at most 3600");
        }
        for origin in &a.allowed_origins {
            if crate::auth::origin::normalize(origin).is_none() {
                return invalid(
                    "auth.allowed_origins",
                    format!("{origin:?} is not of the form scheme://host[:port]"),
                );
            }
        }
        if let Err(e) = Patterns::parse(&a.default_topics) {
            return invalid("auth.default_topics", e.to_string());
        }
        if let Err(e) = Patterns::parse(&a.default_publish) {
            return invalid("auth.default_publish", e.to_string());
        }

        let i = &self.ingest;
        if !(16..=256 * MIB).contains(&i.max_frame_bytes) {
            return invalid("ingest.max_frame_bytes", "must be in 16..=268435456");
        }
        if i.hello_timeout_ms == 0 {
            return invalid("ingest.hello_timeout_ms", "must be at least 1");
        }
        if i.max_feeds == 0 {
            return invalid("ingest.max_feeds", "must be at least 1");
        }
        if i.tokens.iter().any(String::is_empty) {
            return invalid("ingest.tokens", "entries must not be empty");
        }

        if self.api.max_body_bytes == 0 {
            return invalid("api.max_body_bytes", "must be at least 1");
        }
        if self.api.keys.iter().any(String::is_empty) {
            return invalid("api.keys", "entries must not be empty");
        }

        let lim = &self.limits;
        if lim.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        // The upgrade request carries the JWT, which alone is often 1 KiB.
        // hyper's read buffer cannot be smaller than 8 KiB.
        if lim.max_pending_handshakes == 0 {
            return invalid("limits.max_pending_handshakes", "must be at least 1");
        }
        if !(8192..=MIB).contains(&lim.max_header_bytes) {
            return invalid("limits.max_header_bytes", "must be in 8192..=1048576");
        }
        // 125 is the largest payload that still fits a control frame, and
        // below it a REFRESH carrying a JWT could never be accepted.
        if !(125..=64 * MIB).contains(&lim.max_message_bytes) {
            return invalid("limits.max_message_bytes", "must be in 125..=67108864");
        }
        if lim.max_subscriptions == 0 {
            return invalid("limits.max_subscriptions", "must be at least 1");
        }
        if lim.max_outbox_bytes < 1024 {
            return invalid("limits.max_outbox_bytes", "must be at least 1024");
        }
        if lim.send_queue_bytes > i32::MAX as usize {
            return invalid("limits.send_queue_bytes", "must be below 2^31");
        }
        if lim.client_msgs_per_s > 0 && lim.client_burst == 0 {
            return invalid(
                "limits.client_burst",
                "must be at least 1 when limits.client_msgs_per_s is set",
            );
        }

        let t = &self.timeouts;
        if !(10..=1000).contains(&t.tick_ms) {
            return invalid("timeouts.tick_ms", "must be in 10..=1000");
        }
        if t.handshake_ms == 0 {
            return invalid("timeouts.handshake_ms", "must be at least 1");
        }
        if t.ping_interval_ms < t.tick_ms {
            return invalid(
                "timeouts.ping_interval_ms",
                "must be at least timeouts.tick_ms",
            );
        }
        if t.pong_timeout_ms < t.tick_ms {
            return invalid(
                "timeouts.pong_timeout_ms",
                "must be at least timeouts.tick_ms",
            );
        }
        if t.close_ms == 0 {
            return invalid("timeouts.close_ms", "must be at least 1");
        }

        let h = &self.hub;
        if h.history_size == 0 {
            return invalid("hub.history_size", "must be at least 1");
        }
        if h.inbox_capacity < 16 {
            return invalid("hub.inbox_capacity", "must be at least 16");
        }
        if h.home_threads > 256 {
            return invalid("hub.home_threads", "must be 0 to 256");
        }

        let c = &self.cluster;
        for url in c.nats_url.split(',').filter(|u| !u.trim().is_empty()) {
            let url = url.trim();
            let rest = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .find_map(|p| url.strip_prefix(p))
                .unwrap_or(url);
            let host = rest.rsplit('@').next().unwrap_or(rest);
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return invalid(
                    "cluster.nats_url",
                    format!("{url:?} is not of the form nats://host:port"),
                );
            }
        }
        if c.node_id.len() > 64 || c.node_id.chars().any(|ch| ch.is_control() || ch == ' ') {
            return invalid(
                "cluster.node_id",
                "must be at most 64 characters, without spaces",
            );
        }
        if c.name.is_empty()
            || c.name.len() > 32
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return invalid("cluster.name", "must be 1-32 characters of [A-Za-z0-9_-]");
        }
        if !(1..=5).contains(&c.replicas) {
            return invalid("cluster.replicas", "must be in 1..=5");
        }
        if c.stream_max_bytes > i64::MAX as u64 {
            return invalid("cluster.stream_max_bytes", "must be below 2^63");
        }
        if !(100..=60_000).contains(&c.request_timeout_ms) {
            return invalid("cluster.request_timeout_ms", "must be in 100..=60000");
        }
        if !(1024..=8 * MIB).contains(&c.max_batch_bytes) {
            return invalid("cluster.max_batch_bytes", "must be in 1024..=8388608");
        }
        if c.max_pending_bytes < c.max_batch_bytes {
            return invalid(
                "cluster.max_pending_bytes",
                "must be at least cluster.max_batch_bytes",
            );
        }
        if let Some(p) = &c.creds_file {
            if !p.is_file() {
                return invalid(
                    "cluster.creds_file",
                    format!("{} is not a readable file", p.display()),
                );
            }
        }

        for (i, r) in self.slow_consumer.iter().enumerate() {
            if r.topics.is_empty() {
                return invalid(&format!("slow_consumer[{i}].topics"), "must not be empty");
            }
            if let Err(e) = Patterns::parse(&r.topics) {
                return invalid(&format!("slow_consumer[{i}].topics"), e.to_string());
            }
        }

        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return invalid("log.level", e.to_string());
        }
        Ok(())
    }

    /// The effective configuration as TOML, safe to log: secrets become
    /// `"***"` (an empty secret stays empty, so "not configured" stays visible).
    pub fn to_toml_masked(&self) -> String {
        let mut c = self.clone();
        if !c.auth.hs256_secret.is_empty() {
            c.auth.hs256_secret = MASK.to_owned();
        }
        c.cluster.nats_url = mask_url_passwords(&c.cluster.nats_url);
        if let Some(url) = &mut c.auth.jwks_url {
            *url = mask_url_secrets(url);
        }
        for list in [&mut c.ingest.tokens, &mut c.api.keys] {
            for s in list.iter_mut().filter(|s| !s.is_empty()) {
                *s = MASK.to_owned();
            }
        }
        // Only a non-UTF-8 public_key_file can fail to serialize.
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    pub fn shard_count(&self) -> usize {
        match self.shards.count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// One URL with its password and query masked (`https://u:***@host/p?***`):
/// a JWKS URL may carry an access key in either. For logs and
/// `--print-config`.
pub fn mask_url_secrets(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = mask_url_passwords(authority);
    let sep = if scheme.is_empty() { "" } else { "://" };
    format!("{scheme}{sep}{authority}{path}{query}")
}

/// `nats://user:secret@host` → `nats://user:***@host`, for each URL.
pub fn mask_url_passwords(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
            match rest.rsplit_once('@') {
                Some((cred, host)) => {
                    let user = cred.split_once(':').map_or("", |(user, _)| user);
                    let cred = if cred.contains(':') {
                        format!("{user}:{MASK}")
                    } else {
                        MASK.to_owned()
                    };
                    let sep = if scheme.is_empty() { "" } else { "://" };
                    format!("{scheme}{sep}{cred}@{host}")
                }
                None => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // HERALD_CONFIG and friends belong to the command line, not to us.
        if !rest.contains(ENV_SEPARATOR) {
            continue;
        }
        let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
        let [section, key] = parts.as_slice() else {
            return Err(ConfigError::UnknownEnv { var });
        };
        if section.is_empty() || key.is_empty() {
            return Err(ConfigError::UnknownEnv { var });
        }
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        out.push(EnvOverride {
            path: format!("{section}.{key}"),
            var,
            section,
            key,
            raw,
            as_string: false,
        });
    }
    Ok(out)
}

/// Applies the overrides to the file's table and deserializes. An override
/// whose TOML reading has the wrong type is retried as a plain string, at
/// most once per override.
fn deserialize_with_overrides(
    file: toml::Table,
    mut overrides: Vec<EnvOverride>,
) -> Result<Config, ConfigError> {
    loop {
        let mut table = file.clone();
        for o in &overrides {
            let section = table
                .entry(o.section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section) = section.as_table_mut() else {
                return Err(ConfigError::Parse {
                    key: o.section.clone(),
                    message: format!("is not a table, so {} cannot override it", o.var),
                });
            };
            section.insert(o.key.clone(), o.value());
        }

        let err = match serde_path_to_error::deserialize::<_, Config>(table) {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e,
        };
        let path = err.path().to_string();
        let message = err.inner().message().to_owned();
        let unknown = message.starts_with("unknown field `");

        // An unknown section is reported at the section itself.
        let owner = overrides
            .iter_mut()
            .find(|o| o.covers(&path) || (unknown && o.section == path));
        let Some(o) = owner else {
            return Err(if unknown {
                ConfigError::UnknownKey { key: path }
            } else {
                ConfigError::Parse { key: path, message }
            });
        };
        if unknown {
            return Err(ConfigError::UnknownEnv { var: o.var.clone() });
        }
        let parsed_as_non_string = !matches!(o.value(), toml::Value::String(_));
        if parsed_as_non_string {
            o.as_string = true;
            continue;
        }
        return Err(ConfigError::Parse {
            key: o.var.clone(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(None, env(pairs))
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = from_env(&[]).expect("defaults validate");
        assert_eq!(c.listen.ws, "0.0.0.0:8780".parse().unwrap());
        assert_eq!(c.listen.ingest, "127.0.0.1:8781".parse().unwrap());
        assert_eq!(c.listen.admin, "127.0.0.1:8782".parse().unwrap());
        assert_eq!(c.listen.backlog, 4096);
        assert_eq!(c.auth.leeway_s, 5);
        assert!(!c.auth.allow_query_token);
        assert!(c.auth.hs256_secret.is_empty());
        assert_eq!(c.ingest.max_frame_bytes, 1 << 20);
        assert_eq!(c.limits.max_connections, 200_000);
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert_eq!(c.limits.rate_limit_strikes, 50);
        assert_eq!(c.timeouts.tick_ms, 250);
        assert_eq!(c.hub.history_size, 128);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.shard_count() >= 1);
        assert_eq!(Config::ms(1500), Duration::from_millis(1500));
        assert!(Config::from_toml_str("").is_ok());
    }

    #[test]
    fn file_values_override_defaults_and_keep_the_rest() {
        let c = Config::from_toml_str(
            "[listen]\nws = \"127.0.0.1:9000\"\n[log]\nformat = \"json\"\n[shards]\ncount = 3\n",
        )
        .expect("valid");
        assert_eq!(c.listen.ws, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.listen.backlog, 4096);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.shard_count(), 3);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let e = Config::from_toml_str("[listen]\nwss = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownKey { key } if key == "listen.wss"));
        assert_eq!(e.to_string(), "unknown key `wss` in [listen]");

        let e = Config::from_toml_str("[lsten]\nws = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.to_string(), "unknown section [lsten]");
    }

    #[test]
    fn syntax_error_is_reported_with_its_origin() {
        let e = Config::from_toml_str("[listen\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }

    #[test]
    fn invalid_value_in_file_names_the_key() {
        let e = Config::from_toml_str("[listen]\nws = \"nope\"\n").unwrap_err();
        assert_eq!(e.to_string(), "listen.ws: invalid socket address syntax");

        let e = Config::from_toml_str("[limits]\nmax_connections = -1\n").unwrap_err();
        assert!(e.to_string().starts_with("limits.max_connections: "), "{e}");

        let e = Config::from_toml_str("[auth]\nallowed_origins = [1]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("auth.allowed_origins[0]: "),
            "{e}"
        );
    }

    #[test]
    fn env_overrides_scalars_and_lists() {
        let c = from_env(&[
            ("HERALD_LISTEN__WS", "127.0.0.1:9000"),
            ("HERALD_LIMITS__MAX_CONNECTIONS", "10"),
            (
                "HERALD_AUTH__ALLOWED_ORIGINS",
                r#"["https://a.example", "http://b:8080"]"#,
            ),
            ("HERALD_AUTH__ALLOW_QUERY_TOKEN", "true"),
            ("HERALD_LOG__LEVEL", "debug,herald=trace"),
            ("HERALD_AUTH__ISSUER", "'quoted'"),
            ("HERALD_CONFIG", "/etc/herald.toml"),
            ("PATH", "/bin"),
        ])
        .expect("valid");
        assert_eq!(c.listen.ws, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(
            c.auth.allowed_origins,
            ["https://a.example", "http://b:8080"]
        );
        assert!(c.auth.allow_query_token);
        assert_eq!(c.log.level, "debug,herald=trace");
        assert_eq!(c.auth.issuer.as_deref(), Some("quoted"));
    }

    #[test]
    fn env_value_that_reads_as_a_number_still_fills_a_string_key() {
        let c = from_env(&[
            ("HERALD_AUTH__HS256_SECRET", "123456"),
            ("HERALD_AUTH__AUDIENCE", "true"),
        ])
        .expect("valid");
        assert_eq!(c.auth.hs256_secret, "123456");
        assert_eq!(c.auth.audience.as_deref(), Some("true"));
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(&path, "[listen]\nbacklog = 10\n[hub]\nhistory_size = 7\n").unwrap();
        let c = Config::load_from(Some(&path), env(&[("HERALD_LISTEN__BACKLOG", "20")])).unwrap();
        assert_eq!(c.listen.backlog, 20);
        assert_eq!(c.hub.history_size, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let e =
            Config::load_from(Some(Path::new("/nonexistent/herald.toml")), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/herald.toml"), "{e}");
    }

    #[test]
    fn unknown_env_override_is_named() {
        for var in [
            "HERALD_LISTEN__WSS",
            "HERALD_NOPE__WS",
            "HERALD_LISTEN__WS__X",
            "HERALD_LISTEN__",
            "HERALD___WS",
        ] {
            let e = from_env(&[(var, "1")]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::UnknownEnv { var: v } if v == var),
                "{var}: {e}"
            );
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn invalid_env_value_names_the_variable() {
        let e = from_env(&[("HERALD_LIMITS__MAX_CONNECTIONS", "lots")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("HERALD_LIMITS__MAX_CONNECTIONS: "),
            "{e}"
        );
        let e = from_env(&[("HERALD_LISTEN__WS", "nope")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HERALD_LISTEN__WS: invalid socket address syntax"
        );
        let e = from_env(&[("HERALD_LOG__FORMAT", "xml")]).unwrap_err();
        assert!(e.to_string().starts_with("HERALD_LOG__FORMAT: "), "{e}");
    }

    #[test]
    fn cluster_mode_is_off_by_default_and_its_keys_parse() {
        let c = Config::from_toml_str("").expect("valid");
        assert!(!c.cluster.enabled());
        assert_eq!(c.cluster.name, "herald");
        assert_eq!(c.cluster.follow, FollowMode::Interest);
        assert_eq!(c.cluster.storage, StorageMode::File);
        assert!(
            !c.cluster.node_id().is_empty(),
            "falls back to the host name"
        );
        let c = Config::from_toml_str(
            "[cluster]\nnats_url = \"nats://a:4222,nats://b:4222\"\nnode_id = \"n1\"\nfollow = \"wildcard\"\nstorage = \"memory\"\n",
        )
        .expect("valid");
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.node_id(), "n1");
        assert_eq!(c.cluster.follow, FollowMode::Wildcard);
        assert_eq!(c.cluster.storage, StorageMode::Memory);
        let e = Config::from_toml_str("[cluster]\nfollow = \"all\"\n").unwrap_err();
        assert!(e.to_string().contains("cluster.follow"), "{e}");
    }

    #[test]
    fn jwks_url_keys_parse_validate_and_mask() {
        let c = Config::from_toml_str(
            "[auth]\njwks_url = \"https://idp.example/keys\"\njwks_refresh_s = 60\njwks_min_refetch_s = 5\n",
        )
        .unwrap();
        assert_eq!(c.auth.jwks_url.as_deref(), Some("https://idp.example/keys"));
        assert_eq!((c.auth.jwks_refresh_s, c.auth.jwks_min_refetch_s), (60, 5));
        let d = Config::default();
        assert_eq!(
            (d.auth.jwks_refresh_s, d.auth.jwks_min_refetch_s),
            (300, 30)
        );
        assert_eq!(
            mask_url_secrets("https://u:pw@idp.example:8443/a/b?key=s3cret"),
            "https://u:***@idp.example:8443/a/b?***"
        );
        assert_eq!(
            mask_url_secrets("http://idp/certs"),
            "http://idp/certs",
            "nothing secret, nothing masked"
        );
        let mut c = Config::default();
        c.auth.jwks_url = Some("https://u:pw@idp/keys?token=s3cret".into());
        c.auth.jwks_file = Some("/etc/herald/jwks.json".into());
        let out = c.to_toml_masked();
        assert!(!out.contains("s3cret") && !out.contains(":pw@"), "{out}");
        assert!(out.contains("/etc/herald/jwks.json"), "{out}");
    }

    #[test]
    fn nats_passwords_are_masked() {
        assert_eq!(
            mask_url_passwords("nats://u:secret@h:4222,tls://tok@h2:4222,nats://h3:4222"),
            "nats://u:***@h:4222,tls://***@h2:4222,nats://h3:4222"
        );
        let mut c = Config::default();
        c.cluster.nats_url = "nats://u:secret@h:4222".into();
        assert!(c.to_toml_masked().contains("nats://u:***@h:4222"));
    }

    #[test]
    fn masked_output_hides_secrets_and_round_trips() {
        let c = Config::from_toml_str(
            "[auth]\nhs256_secret = \"s3cret\"\n[ingest]\ntokens = [\"feed-token\", \"\"]\n\
             [api]\nkeys = [\"api-key\"]\n",
        );
        // An empty feed token is rejected by validate(), so mask a built config.
        assert!(c.is_err());
        let mut c = Config::default();
        c.auth.hs256_secret = "s3cret".into();
        c.ingest.tokens = vec!["feed-token".into()];
        c.api.keys = vec!["api-key".into(), String::new()];
        let out = c.to_toml_masked();
        for secret in ["s3cret", "feed-token", "api-key"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        let back: Config = toml::from_str(&out).expect("masked output is valid TOML");
        assert_eq!(back.auth.hs256_secret, MASK);
        assert_eq!(back.ingest.tokens, [MASK]);
        assert_eq!(back.api.keys, [MASK, ""]);
        assert_eq!(back.listen.ws, c.listen.ws);

        let empty = Config::default().to_toml_masked();
        assert!(!empty.contains(MASK), "{empty}");
        assert!(Config::from_toml_str(&empty).is_ok(), "{empty}");
    }

    fn invalid_key(toml: &str) -> String {
        match Config::from_toml_str(toml) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid for {toml:?}, got {other:?}"),
        }
    }

    #[test]
    fn validate_rejects_out_of_range_values_naming_the_key() {
        let cases = [
            ("[listen]\nbacklog = 0", "listen.backlog"),
            (
                "[limits]\nmax_message_bytes = 124",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_message_bytes = 67108865",
                "limits.max_message_bytes",
            ),
            ("[limits]\nclient_burst = 0", "limits.client_burst"),
            ("[hub]\nhistory_size = 0", "hub.history_size"),
            ("[hub]\ninbox_capacity = 15", "hub.inbox_capacity"),
            ("[hub]\nhome_threads = 257", "hub.home_threads"),
            ("[timeouts]\ntick_ms = 5", "timeouts.tick_ms"),
            ("[timeouts]\ntick_ms = 2000", "timeouts.tick_ms"),
            (
                "[timeouts]\nping_interval_ms = 100",
                "timeouts.ping_interval_ms",
            ),
            (
                "[auth]\ndefault_topics = [\"bad topic\"]",
                "auth.default_topics",
            ),
            ("[auth]\ndefault_publish = [\"\"]", "auth.default_publish"),
            (
                "[auth]\nallowed_origins = [\"example.com\"]",
                "auth.allowed_origins",
            ),
            (
                "[auth]\nallowed_origins = [\"https://a/path\"]",
                "auth.allowed_origins",
            ),
            (
                "[auth]\npublic_key_file = \"/nonexistent.pem\"",
                "auth.public_key_file",
            ),
            (
                "[auth]\njwks_file = \"/nonexistent.json\"",
                "auth.jwks_file",
            ),
            ("[auth]\njwks_url = \"ftp://idp/keys\"", "auth.jwks_url"),
            ("[auth]\njwks_url = \"https://\"", "auth.jwks_url"),
            ("[auth]\njwks_refresh_s = 0", "auth.jwks_refresh_s"),
            ("[auth]\njwks_min_refetch_s = 0", "auth.jwks_min_refetch_s"),
            ("[auth]\nissuer = \"\"", "auth.issuer"),
            ("[log]\nlevel = \"herald=loud\"", "log.level"),
            (
                "[cluster]\nnats_url = \"nats://host:4222/path\"",
                "cluster.nats_url",
            ),
            ("[cluster]\nname = \"a.b\"", "cluster.name"),
            ("[cluster]\nname = \"\"", "cluster.name"),
            ("[cluster]\nnode_id = \"a b\"", "cluster.node_id"),
            ("[cluster]\nreplicas = 0", "cluster.replicas"),
            (
                "[cluster]\nrequest_timeout_ms = 99",
                "cluster.request_timeout_ms",
            ),
            (
                "[cluster]\nmax_batch_bytes = 100",
                "cluster.max_batch_bytes",
            ),
            (
                "[cluster]\nmax_batch_bytes = 65536\nmax_pending_bytes = 65535",
                "cluster.max_pending_bytes",
            ),
            (
                "[cluster]\ncreds_file = \"/nonexistent.creds\"",
                "cluster.creds_file",
            ),
        ];
        for (toml, key) in cases {
            assert_eq!(invalid_key(toml), key, "{toml}");
        }
        // Burst only matters when rate limiting is on.
        assert!(Config::from_toml_str("[limits]\nclient_msgs_per_s = 0\nclient_burst = 0").is_ok());
    }

    #[test]
    fn invalid_error_display_names_the_key() {
        let e = Config::from_toml_str("[hub]\nhistory_size = 0").unwrap_err();
        assert_eq!(e.to_string(), "hub.history_size: must be at least 1");
    }
}
