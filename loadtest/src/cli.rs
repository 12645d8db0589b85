//! Command-line arguments and their checks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::plan::{self, Dist};
use crate::worker::{Auth, Target, WorkerPlan};

/// A process may hold at most this many open files here; leave room for
/// the runtime, pipes and the publisher.
pub const MAX_CONNS_PER_WORKER: u64 = 19_000;

#[derive(Parser, Debug)]
#[command(
    name = "herald-load",
    version,
    about = "Load generator for herald and its peer servers (loopback only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Many subscribers, one publisher: delivered msgs/s, latency, order.
    Fanout(Box<FanoutArgs>),
    /// Server RSS per idle subscribed connection.
    Idle(IdleArgs),
    /// One subscriber, ten messages through the ingest, all in order.
    Smoke(SmokeArgs),
    /// Upgrades/s and server CPU per upgrade, plain or TLS.
    Handshakes(HandshakesArgs),
    /// A long run at a steady load with churn, slow readers of every
    /// slow-consumer policy and feed restarts: RSS, descriptors and p99 over
    /// time, a verdict and an HTML report.
    Soak(Box<crate::soak::SoakArgs>),
    /// Internal: a child process holding a share of the connections.
    #[command(hide = true)]
    Worker,
    /// Internal: a soak child process.
    #[command(hide = true)]
    SoakWorker,
}

/// Where the subscribers connect and how they authenticate.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("target").required(true).args(["url", "raw_url"])))]
pub struct ConnArgs {
    /// herald WebSocket URL (herald protocol: subprotocol herald.v1, JWT,
    /// SUBSCRIBE frames), e.g. ws://127.0.0.1:8780/ws. A comma-separated
    /// list spreads the connections over several nodes: connection i goes
    /// to URL i mod n.
    #[arg(long)]
    pub url: Option<String>,
    /// Peer server base URL (subscribe: GET <raw-url>/sub/<topic>, no
    /// subprotocol, no auth), e.g. ws://127.0.0.1:7102.
    #[arg(long)]
    pub raw_url: Option<String>,
    /// HS256 secret: mint one JWT per connection (sub "load-<i>", topics ["*"]).
    #[arg(long, conflicts_with = "token_file")]
    pub secret: Option<String>,
    /// File with JWTs, one per line, used round-robin.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// Bind connections to 127.0.0.1 .. 127.0.0.N round-robin (with n
    /// URLs: connection i binds address ⌊i / n⌋ mod N, so every target
    /// sees every source address).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u32,
    /// Connection attempts per second over all workers; 0 = unpaced.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Per connection: TCP connect + upgrade + subscribe acks.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_s: u64,
    /// Worker processes holding the connections.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Server process(es) to measure (CPU, RSS), comma-separated; summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Print only the JSON summary on stdout (no progress).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishMode {
    /// herald TCP ingest (--ingest, --feed-token).
    Ingest,
    /// herald operator API POST /api/publish/{topic} (--api, --api-key).
    Api,
    /// Peer POST <raw-url host>/pub/<topic>.
    Raw,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topics load.0 .. load.{T-1}; message m goes to load.{m % T}.
    #[arg(long, default_value_t = 1)]
    pub topics: u32,
    /// How connections pick their topics.
    #[arg(long, value_enum, default_value_t = Dist::One)]
    pub dist: Dist,
    /// Distinct topics per connection (herald only; a peer socket has one).
    #[arg(long, default_value_t = 1)]
    pub subs_per_conn: u32,
    /// Distinct topics per connection drawn uniformly in LO-HI, per
    /// connection (herald only), e.g. 1-50. Overrides --subs-per-conn.
    #[arg(long, value_parser = parse_range)]
    pub subs_per_conn_range: Option<(u32, u32)>,
    /// --dist rooms: connections per room (default ⌈conns / topics⌉).
    #[arg(long)]
    pub room_size: Option<u64>,
    /// Seed of the topic choice (uniform, zipf).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Messages to publish in total.
    #[arg(long, default_value_t = 1000)]
    pub msgs: u64,
    /// Messages per second; 0 = as fast as the publisher can (ingest: with
    /// a PING barrier every 1000 messages).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Payload bytes (>= 8: send timestamp; >= 16: also a per-topic index).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Default: ingest with --url, raw with --raw-url.
    #[arg(long, value_enum)]
    pub publish: Option<PublishMode>,
    /// Parallel publishers, one connection each: HTTP keep-alive (api,
    /// raw) or feeds (ingest). Publisher k uses entry k mod n of --ingest
    /// / --api.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// herald TCP ingest address(es), comma-separated.
    #[arg(long, default_value = "127.0.0.1:8781")]
    pub ingest: String,
    /// Ingest at rate 0: messages between PING barriers; the feed waits for
    /// the previous barrier's PONG, so at most twice this many are between
    /// it and the sockets. Small windows make the feed wait for each
    /// flush: with many topics a batch then holds too few messages to give
    /// a socket more than one frame per write.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub ingest_window: u64,
    #[arg(long)]
    pub feed_token: Option<String>,
    /// herald operator API base URL(s), comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:8782")]
    pub api: String,
    #[arg(long)]
    pub api_key: Option<String>,
    /// Hard cap on the whole run (connect, publish, receive), seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Stop waiting this long after the last publish even if deliveries
    /// are missing (default: wait up to --duration-s).
    #[arg(long)]
    pub drain_s: Option<u64>,
    /// Pause between "all subscribed" and the first publish, ms.
    #[arg(long, default_value_t = 200)]
    pub settle_ms: u64,
    /// Share of the connections that read slowly (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// Slow readers sleep this long after each read, ms.
    #[arg(long, default_value_t = 100)]
    pub slow_read_delay_ms: u64,
    /// Slow readers read at most this many bytes at a time.
    #[arg(long, default_value_t = 4096)]
    pub slow_read_bytes: usize,
    /// SO_RCVBUF of the slow readers' sockets, bytes (0 = system default).
    #[arg(long, default_value_t = 16384)]
    pub slow_rcvbuf: u32,
    /// Width of the throughput time series' buckets, ms.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
    /// Write DIR/report.html (latency percentiles, throughput over time)
    /// and DIR/summary.json.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// A name for this run in the report and the JSON summary.
    #[arg(long)]
    pub label: Option<String>,
    /// Other processes the run depends on (e.g. nats-server behind a
    /// herald cluster), comma-separated: their CPU over the same window as
    /// --server-pid's, reported apart (`broker`) and added up with the
    /// servers' in `cpu_s_per_1m_deliveries_with_broker`.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    /// herald's Prometheus endpoint (e.g. http://127.0.0.1:8782/metrics):
    /// read before and after the publish phase for write syscalls per
    /// delivery and slow-consumer closes.
    #[arg(long)]
    pub herald_metrics: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The one topic every connection subscribes to.
    #[arg(long, default_value = "load.idle")]
    pub topic: String,
    /// Wait after all are subscribed before measuring RSS, seconds.
    #[arg(long, default_value_t = 2)]
    pub settle_s: u64,
    /// Keep the connections open this long after measuring, seconds.
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// Hard cap on the whole run, seconds.
    #[arg(long, default_value_t = 120)]
    pub duration_s: u64,
    /// herald: only the upgrade, no SUBSCRIBE (handshake rate tests).
    #[arg(long)]
    pub no_subscribe: bool,
}

#[derive(Args, Debug, Clone)]
pub struct HandshakesArgs {
    /// herald WebSocket URL: ws://… or wss://… (then --tls-ca).
    #[arg(long)]
    pub url: String,
    /// HS256 secret: one JWT per connection, minted before the clock starts.
    #[arg(long)]
    pub secret: String,
    /// PEM certificate(s) that the server's chain ends in.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Connections to open (and hold until all are done).
    #[arg(long, default_value_t = 5000)]
    pub conns: u64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Client threads (TLS clients spend CPU too).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Bind connections to 127.0.0.1 .. 127.0.0.N round-robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=250))]
    pub source_ips: u32,
    /// Server process to measure CPU and RSS of.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Per connection, seconds.
    #[arg(long, default_value_t = 15)]
    pub timeout_s: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SmokeArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8780/ws")]
    pub url: String,
    #[arg(long)]
    pub secret: String,
    #[arg(long, default_value = "127.0.0.1:8781")]
    pub ingest: String,
    /// Ingest at rate 0: messages between PING barriers; the feed waits for
    /// the previous barrier's PONG, so at most twice this many are between
    /// it and the sockets. Small windows make the feed wait for each
    /// flush: with many topics a batch then holds too few messages to give
    /// a socket more than one frame per write.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub ingest_window: u64,
    #[arg(long)]
    pub feed_token: String,
    /// Whole test, seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_s: u64,
}

/// `LO-HI` (or a single `N`) → (LO, HI).
fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u32 = lo
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected LO-HI"))?;
    let hi: u32 = hi
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected LO-HI"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

/// `host:port` on loopback; `localhost` means 127.0.0.1.
pub fn parse_loopback(hostport: &str, default_port: u16) -> Result<SocketAddr, String> {
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {hostport:?}"))?,
        ),
        None => (hostport, default_port),
    };
    let ip: Ipv4Addr = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .map_err(|_| format!("{host:?}: give an IPv4 loopback address (127.x.y.z)"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{ip}: only loopback targets (127.0.0.0/8) are allowed"
        ));
    }
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

/// `scheme://host:port/path` → (address, Host header, path).
pub fn parse_url(
    url: &str,
    scheme: &str,
    default_path: &str,
) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url:?}: expected a {scheme}:// URL"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let addr = parse_loopback(hostport, 80)?;
    let path = if path.is_empty() || path == "/" {
        default_path.to_string()
    } else {
        path.to_string()
    };
    Ok((addr, hostport.to_string(), path))
}

/// The comma-separated entries of a list flag, trimmed, none empty.
pub fn split_list(s: &str) -> Result<Vec<&str>, String> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    if v.iter().any(|e| e.is_empty()) {
        return Err(format!("{s:?}: an empty entry in the list"));
    }
    Ok(v)
}

/// Every entry of a comma-separated list of loopback `host:port`s.
pub fn parse_loopback_list(s: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    split_list(s)?
        .into_iter()
        .map(|e| parse_loopback(e, default_port))
        .collect()
}

impl ConnArgs {
    /// The WebSocket targets: one per `--url` entry (herald), or the one
    /// `--raw-url` (a peer). Connection i goes to target i mod n.
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        match (&self.url, &self.raw_url) {
            (Some(u), _) => split_list(u)?
                .into_iter()
                .map(|u| {
                    let (addr, host, path) = parse_url(u, "ws", "/ws")?;
                    Ok(Target {
                        addr,
                        host,
                        herald: true,
                        path,
                    })
                })
                .collect(),
            (None, Some(u)) => {
                if u.contains(',') {
                    return Err(
                        "--raw-url takes one peer (peers share no publications between them)"
                            .into(),
                    );
                }
                let (addr, host, path) = parse_url(u, "ws", "")?;
                Ok(vec![Target {
                    addr,
                    host,
                    herald: false,
                    path: path.trim_end_matches('/').to_string(),
                }])
            }
            (None, None) => Err("give --url (herald) or --raw-url (peer)".into()),
        }
    }

    pub fn auth(&self, herald: bool) -> Result<Auth, String> {
        match (&self.secret, &self.token_file) {
            _ if !herald => Ok(Auth::None),
            (Some(s), _) => Ok(Auth::Secret(s.clone())),
            (None, Some(f)) => Ok(Auth::TokenFile(f.clone())),
            (None, None) => Err("herald needs --secret or --token-file".into()),
        }
    }

    /// Checks shared by fanout and idle.
    pub fn check(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.source_ips == 0 || self.source_ips > 65_000 {
            return Err("--source-ips must be in 1..=65000".into());
        }
        if self.connect_rate < 0.0 || !self.connect_rate.is_finite() {
            return Err("--connect-rate must be >= 0".into());
        }
        let per_worker = self.conns.div_ceil(u64::from(self.workers));
        if per_worker > MAX_CONNS_PER_WORKER {
            return Err(format!(
                "{per_worker} connections per worker is over the {MAX_CONNS_PER_WORKER} a process \
                 can hold here (20k open files): raise --workers"
            ));
        }
        Ok(())
    }

    /// One plan per worker from `template`: its share of the connections
    /// and of the connect rate.
    pub fn plans(&self, template: &WorkerPlan) -> Vec<WorkerPlan> {
        plan::shares(self.conns, self.workers)
            .into_iter()
            .enumerate()
            .map(|(i, (start, count))| WorkerPlan {
                worker: i as u32,
                conn_start: start,
                conn_count: count,
                source_ips: self.source_ips,
                connect_rate: self.connect_rate / f64::from(self.workers),
                connect_timeout_ms: self.connect_timeout_s * 1000,
                ..template.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, h, p) = parse_url("ws://127.0.0.1:8780/ws", "ws", "/x").expect("valid");
        assert_eq!(
            (a.port(), h.as_str(), p.as_str()),
            (8780, "127.0.0.1:8780", "/ws")
        );
        let (_, _, p) = parse_url("ws://localhost:1", "ws", "/ws").expect("valid");
        assert_eq!(p, "/ws");
        let (a, _, p) = parse_url("http://127.0.0.2:8782", "http", "").expect("valid");
        assert_eq!(
            (a.ip(), p.as_str()),
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), "")
        );
        assert!(parse_url("ws://10.0.0.1:80/ws", "ws", "").is_err());
        assert!(parse_url("wss://127.0.0.1/ws", "ws", "").is_err());
        assert!(parse_url("ws://example.com/ws", "ws", "").is_err());
        assert!(parse_loopback("127.0.0.1:x", 1).is_err());
    }

    #[test]
    fn url_lists() {
        let c = Cli::try_parse_from([
            "herald-load",
            "fanout",
            "--url",
            "ws://127.0.0.1:1/ws, ws://127.0.0.1:2/ws,ws://127.0.0.1:3",
            "--secret",
            "s",
        ])
        .expect("valid command line");
        let Cmd::Fanout(f) = c.cmd else {
            panic!("fanout");
        };
        let t = f.conn.targets().expect("three targets");
        assert_eq!(
            t.iter().map(|t| t.addr.port()).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(t.iter().all(|t| t.herald && t.path == "/ws"));
        let one = ConnArgs {
            url: Some("ws://127.0.0.1:8780/ws".into()),
            ..f.conn.clone()
        };
        assert_eq!(one.targets().expect("one target").len(), 1);
        let bad = ConnArgs {
            url: Some("ws://127.0.0.1:1/ws,".into()),
            ..f.conn.clone()
        };
        assert!(bad.targets().is_err());
        let raw = ConnArgs {
            url: None,
            raw_url: Some("ws://127.0.0.1:1,ws://127.0.0.1:2".into()),
            ..f.conn.clone()
        };
        assert!(raw.targets().is_err());
        let addrs = parse_loopback_list("127.0.0.1:9781,localhost:10781", 1).expect("two");
        assert_eq!(addrs[1].port(), 10781);
        assert!(parse_loopback_list("127.0.0.1:1,10.0.0.1:2", 1).is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "herald-load",
            "fanout",
            "--url",
            "ws://127.0.0.1:8780/ws",
            "--secret",
            "s",
            "--conns",
            "10",
            "--dist",
            "zipf",
            "--server-pid",
            "1,2",
        ])
        .expect("valid command line");
        let Cmd::Fanout(f) = c.cmd else {
            panic!("fanout");
        };
        assert_eq!(f.conn.server_pid, vec![1, 2]);
        assert_eq!(f.dist, Dist::Zipf);
        assert_eq!(f.subs_per_conn_range, None);
        let c = Cli::try_parse_from([
            "herald-load",
            "fanout",
            "--raw-url",
            "ws://127.0.0.1:7102",
            "--subs-per-conn-range",
            "1-50",
            "--dist",
            "rooms",
        ])
        .expect("valid command line");
        let Cmd::Fanout(f) = c.cmd else {
            panic!("fanout");
        };
        assert_eq!(f.subs_per_conn_range, Some((1, 50)));
        assert_eq!(f.dist, Dist::Rooms);
        assert!(parse_range("0-3").is_err() && parse_range("5-2").is_err());
        assert_eq!(parse_range("7"), Ok((7, 7)));
        assert!(Cli::try_parse_from(["herald-load", "idle", "--conns", "1"]).is_err());
        assert!(Cli::try_parse_from([
            "herald-load",
            "idle",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--raw-url",
            "ws://127.0.0.1:2"
        ])
        .is_err());
    }
}
