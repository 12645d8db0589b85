//! `soak`: a long run at a steady load with churn, slow readers of every
//! slow-consumer policy and feed restarts, sampled every `--sample-s`:
//! herald's RSS, open descriptors and CPU, the steady subscribers' p50/p99
//! of the interval, deliveries, errors and herald's own counters. At the
//! end a verdict (RSS flat, descriptors flat and back to the baseline, no
//! unexpected error, p99 steady, every fault exercised), `samples.csv`,
//! `summary.json` and a self-contained `report.html` in `--out`.
//!
//! The parent publishes through the TCP ingest (one feed, paced; dropped
//! and reconnected at each `--feed-restart-at`), samples, and merges the
//! workers' ticks; the connections live in `soak-worker` children (see
//! `soak_worker`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use herald::wire::feed::{self, GatewayFrame};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cli::{self, MAX_CONNS_PER_WORKER};
use crate::procstat;
use crate::scrape::{self, Scrape};
use crate::soak_html;
use crate::soak_worker::{Counts, SlowGroup, SoakPlan, Tick};
use crate::worker::{decode_histogram, new_histogram, now_ms, now_ns};

/// The slow-consumer policies and the topic prefix each one's readers use.
/// The herald config of the run must map `soak.disconnect.*`,
/// `soak.drop.*` and `soak.conflate.*` to these policies (soak.sh does).
pub const POLICIES: [(&str, &str); 3] = [
    ("disconnect", "soak.disconnect"),
    ("drop_oldest", "soak.drop"),
    ("conflate", "soak.conflate"),
];

/// How a disconnect-policy reader may see herald's 4008: the close frame,
/// or (its close deadline passed while the reader did not read) EOF or a
/// reset.
const DISCONNECT_ENDS: [&str; 3] = ["close_4008", "eof", "io_connectionreset"];

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// herald WebSocket URL, e.g. ws://127.0.0.1:8780/ws.
    #[arg(long)]
    pub url: String,
    /// HS256 secret (tokens: sub "soak-<i>", topics ["*"]).
    #[arg(long)]
    pub secret: String,
    /// herald TCP ingest.
    #[arg(long, default_value = "127.0.0.1:8781")]
    pub ingest: String,
    #[arg(long)]
    pub feed_token: String,
    /// herald's Prometheus endpoint, e.g. http://127.0.0.1:8782/metrics.
    #[arg(long)]
    pub herald_metrics: String,
    /// herald's PID: RSS, descriptors, CPU from /proc.
    #[arg(long)]
    pub server_pid: u32,
    /// Length of the run (connect, load, faults), seconds.
    #[arg(long, default_value_t = 1800)]
    pub duration_s: u64,
    /// One sample every this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub sample_s: f64,
    /// Worker processes holding the connections.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    #[arg(long, default_value_t = 4)]
    pub source_ips: u32,
    /// Steady subscribers (one topic each, round-robin over the topics).
    #[arg(long, default_value_t = 4000)]
    pub steady_conns: u64,
    /// Steady topics `soak.steady.0 .. N-1`.
    #[arg(long, default_value_t = 40)]
    pub steady_topics: u32,
    /// Publications per second over all steady topics (round-robin).
    #[arg(long, default_value_t = 600.0)]
    pub rate: f64,
    /// Steady payload bytes (>= 8: the send time).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Steady connects per second at the start.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Churn: connects per second, over all workers.
    #[arg(long, default_value_t = 20.0)]
    pub churn_rate: f64,
    /// Churn: how long each churning connection reads before it closes.
    #[arg(long, default_value_t = 2000)]
    pub churn_hold_ms: u64,
    /// Slow readers per policy that pause and resume (over all workers).
    #[arg(long, default_value_t = 8)]
    pub slow_pausers: u64,
    /// Readers per policy that never read (drop_oldest and conflate only:
    /// under disconnect they would just be closed once).
    #[arg(long, default_value_t = 2)]
    pub slow_stalled: u64,
    /// Topics per policy; each slow reader subscribes to all of its policy's.
    #[arg(long, default_value_t = 4)]
    pub slow_topics: u32,
    /// Publications per second on each slow topic.
    #[arg(long, default_value_t = 25.0)]
    pub slow_rate: f64,
    #[arg(long, default_value_t = 2000)]
    pub slow_payload: usize,
    /// A pauser reads this long, then ...
    #[arg(long, default_value_t = 10_000)]
    pub slow_read_ms: u64,
    /// ... does not read at all for this long.
    #[arg(long, default_value_t = 20_000)]
    pub slow_pause_ms: u64,
    /// SO_RCVBUF of the slow readers' sockets, bytes.
    #[arg(long, default_value_t = 16_384)]
    pub slow_rcvbuf: u32,
    /// Feed restarts, as fractions of the run (comma-separated): the feed
    /// disconnects and reconnects after `--feed-gap-ms`.
    #[arg(long, value_delimiter = ',', default_value = "0.5")]
    pub feed_restart_at: Vec<f64>,
    #[arg(long, default_value_t = 2000)]
    pub feed_gap_ms: u64,
    /// RSS flat: the last quarter's median may exceed the second quarter's
    /// by at most this many percent ...
    #[arg(long, default_value_t = 10.0)]
    pub rss_pct: f64,
    /// ... or by this many MiB, whichever is larger.
    #[arg(long, default_value_t = 16.0)]
    pub rss_mib: f64,
    /// p99 steady: the last quarter's median p99 at most this times the
    /// second quarter's ...
    #[arg(long, default_value_t = 1.5)]
    pub p99_ratio: f64,
    /// ... or the second quarter's plus this many ms, whichever is larger.
    #[arg(long, default_value_t = 10.0)]
    pub p99_floor_ms: f64,
    /// Descriptors flat: quarter medians this far apart at most (default:
    /// churn in flight × 2 + slow readers + 32).
    #[arg(long)]
    pub fd_slack: Option<u64>,
    /// Descriptors back: after every client left, at most this many above
    /// the count before the run.
    #[arg(long, default_value_t = 8)]
    pub fd_end_slack: u64,
    /// Per connection: TCP connect + upgrade + subscribe acks.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_s: u64,
    /// Where samples.csv, summary.json and report.html go.
    #[arg(long)]
    pub out: PathBuf,
    /// A free-form note shown in the report (the box, what ran beside).
    #[arg(long, default_value = "")]
    pub notes: String,
    /// Extra facts for the report, `name=value` (repeatable).
    #[arg(long)]
    pub param: Vec<String>,
    /// Print only the JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One sample of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    /// herald's CPU over the interval, % of one core.
    pub herald_cpu_pct: f64,
    /// The whole box's busy share over the interval, % of all cores.
    pub box_cpu_pct: f64,
    /// herald-load (this process and its workers), % of one core.
    pub client_cpu_pct: f64,
    /// Steady publish → receive latency in the interval.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub lat_count: u64,
    pub steady_open: u64,
    pub deliveries_per_s: f64,
    pub published_per_s: f64,
    pub churn_connects_per_s: f64,
    pub churn_open: u64,
    pub slow_open: u64,
    /// Unexpected errors so far (cumulative).
    pub errors: u64,
    /// The unexpected errors so far, by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Disconnect-policy readers closed so far (cumulative, expected).
    pub expected_closes: u64,
    /// `herald_connections`, summed over shards.
    pub herald_connections: f64,
    /// Since the run started, by reason / code.
    pub dropped: BTreeMap<String, f64>,
    pub closes: BTreeMap<String, f64>,
}

#[derive(Debug, Default)]
struct PubStats {
    steady: AtomicU64,
    slow: AtomicU64,
    connects: AtomicU64,
    /// Feed connections lost or refused, restarts not counted.
    errors: AtomicU64,
    restarts: AtomicU64,
    /// Messages not sent because the publisher fell more than 1 s behind.
    skipped: AtomicU64,
    restart_times_s: Mutex<Vec<f64>>,
    last_error: Mutex<Option<String>>,
}

struct PubSpec {
    addr: SocketAddr,
    token: String,
    steady_topics: Vec<String>,
    rate: f64,
    payload: usize,
    slow_topics: Vec<String>,
    slow_rate: f64,
    slow_payload: usize,
    restarts_s: Vec<f64>,
    gap: Duration,
    t0: Instant,
}

async fn read_frame(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Result<GatewayFrame, String> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len)
        .await
        .map_err(|e| format!("ingest closed: {e}"))?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > feed::DEFAULT_MAX_FRAME {
        return Err(format!("ingest sent a bad frame length {n}"));
    }
    let mut body = vec![0u8; n];
    rd.read_exact(&mut body)
        .await
        .map_err(|e| format!("ingest closed: {e}"))?;
    feed::decode_gateway_frame(&body).map_err(|e| format!("undecodable ingest frame: {e}"))
}

/// The feed: paced publications to the steady and slow topics, dropped
/// and reconnected at the planned restarts, reconnected after an error.
async fn publisher(spec: PubSpec, st: Arc<PubStats>, mut stop: watch::Receiver<bool>) {
    let mut restarts = spec.restarts_s.clone();
    restarts.sort_by(f64::total_cmp);
    let mut restarts = restarts.into_iter().peekable();
    let mut steady_buf = vec![0u8; spec.payload.max(8)];
    let mut slow_buf = vec![0u8; spec.slow_payload.max(8)];
    let slow_total = spec.slow_rate * spec.slow_topics.len() as f64;
    let (mut m_steady, mut m_slow) = (0u64, 0u64);
    'outer: while !*stop.borrow() {
        let fail = |st: &PubStats, e: String| {
            st.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = st.last_error.lock() {
                *l = Some(e);
            }
        };
        let s = match TcpStream::connect(spec.addr).await {
            Ok(s) => s,
            Err(e) => {
                fail(&st, format!("ingest connect: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let (mut rd, mut wr) = s.into_split();
        let hello = async {
            wr.write_all(&feed::encode_hello(&spec.token, "herald-load soak"))
                .await
                .map_err(|e| format!("HELLO: {e}"))?;
            match read_frame(&mut rd).await? {
                GatewayFrame::HelloOk => Ok(()),
                other => Err(format!("HELLO answered with {other:?}")),
            }
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), hello)
            .await
            .unwrap_or_else(|_| Err("HELLO timed out".into()))
        {
            fail(&st, e);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        st.connects.fetch_add(1, Ordering::Relaxed);
        let (etx, mut erx) = mpsc::channel::<String>(1);
        let reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(GatewayFrame::Error { code, message }) => {
                        let _ = etx.send(format!("ingest ERROR {code}: {message}")).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = etx.send(e).await;
                        return;
                    }
                }
            }
        });
        let seg = Instant::now();
        let (mut sent_steady, mut sent_slow) = (0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut ping = 0u64;
        let mut last_ping = Instant::now();
        let ended: Option<String> = loop {
            tokio::select! {
                _ = tick.tick() => {}
                e = erx.recv() => break Some(e.unwrap_or_else(|| "ingest reader ended".into())),
                _ = stop.changed() => break None,
            }
            if *stop.borrow() {
                break None;
            }
            if let Some(&at) = restarts.peek() {
                if spec.t0.elapsed().as_secs_f64() >= at {
                    restarts.next();
                    reader.abort();
                    drop(wr);
                    st.restarts.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut v) = st.restart_times_s.lock() {
                        v.push(spec.t0.elapsed().as_secs_f64());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(spec.gap) => {}
                        _ = stop.changed() => {}
                    }
                    continue 'outer;
                }
            }
            let el = seg.elapsed().as_secs_f64();
            let mut due_steady = (spec.rate * el) as u64;
            let mut due_slow = (slow_total * el) as u64;
            // More than a second behind: skip, don't burst.
            let lag =
                |due: u64, sent: u64, rate: f64| due.saturating_sub(sent) as f64 > rate.max(1.0);
            if lag(due_steady, sent_steady, spec.rate) {
                st.skipped
                    .fetch_add(due_steady - sent_steady, Ordering::Relaxed);
                sent_steady = due_steady;
            }
            if lag(due_slow, sent_slow, slow_total) {
                st.skipped
                    .fetch_add(due_slow - sent_slow, Ordering::Relaxed);
                sent_slow = due_slow;
            }
            if spec.steady_topics.is_empty() {
                due_steady = sent_steady;
            }
            if spec.slow_topics.is_empty() {
                due_slow = sent_slow;
            }
            if due_steady == sent_steady && due_slow == sent_slow {
                continue;
            }
            batch.clear();
            let ts = now_ns();
            steady_buf[..8].copy_from_slice(&ts.to_be_bytes());
            slow_buf[..8].copy_from_slice(&ts.to_be_bytes());
            for _ in sent_steady..due_steady {
                let t = &spec.steady_topics[(m_steady % spec.steady_topics.len() as u64) as usize];
                batch.extend_from_slice(&feed::encode_publish(t, &steady_buf));
                m_steady += 1;
            }
            for _ in sent_slow..due_slow {
                let t = &spec.slow_topics[(m_slow % spec.slow_topics.len() as u64) as usize];
                batch.extend_from_slice(&feed::encode_publish(t, &slow_buf));
                m_slow += 1;
            }
            if last_ping.elapsed() >= Duration::from_secs(1) {
                ping += 1;
                batch.extend_from_slice(&feed::encode_ping(ping));
                last_ping = Instant::now();
            }
            if let Err(e) = wr.write_all(&batch).await {
                break Some(format!("ingest write: {e}"));
            }
            st.steady
                .fetch_add(due_steady - sent_steady, Ordering::Relaxed);
            st.slow.fetch_add(due_slow - sent_slow, Ordering::Relaxed);
            sent_steady = due_steady;
            sent_slow = due_slow;
        };
        reader.abort();
        match ended {
            None => return,
            Some(e) => {
                fail(&st, e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

async fn spawn_workers(
    plans: &[SoakPlan],
    tx: mpsc::Sender<(usize, Option<Tick>)>,
) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut out = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut child = Command::new(&exe)
            .arg("soak-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawning worker {i}: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let mut line = serde_json::to_string(plan).map_err(|e| format!("plan: {e}"))?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("worker {i} stdin: {e}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Tick>(&l) {
                    Ok(t) => {
                        if tx.send((i, Some(t))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("soak worker {i}: unreadable line ({e})"),
                }
            }
            let _ = tx.send((i, None)).await;
        });
        out.push(Worker {
            child,
            stdin: Some(stdin),
        });
    }
    Ok(out)
}

/// `pid` still runs.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Open descriptors of `pid`.
fn fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// (busy, total) jiffies of the whole box.
fn box_cpu() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let l = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = l
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Every label value of `name{label="..."}` in a scrape → value.
fn by_label(s: &Scrape, name: &str, label: &str) -> BTreeMap<String, f64> {
    let pre = format!("{name}{{");
    let pat = format!("{label}=\"");
    s.entries()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&pre)?;
            let i = rest.find(&pat)? + pat.len();
            let val = &rest[i..];
            Some((val[..val.find('"')?].to_string(), v))
        })
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k).or_default() += v;
            m
        })
}

fn minus(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    a.iter()
        .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// The workers' counters added up.
fn add_counts(all: &[Counts]) -> Counts {
    let mut t = Counts::default();
    let add = |a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
        for (k, v) in b {
            *a.entry(k.clone()).or_default() += v;
        }
    };
    for c in all {
        t.steady_open += c.steady_open;
        t.steady_connects += c.steady_connects;
        t.steady_deliveries += c.steady_deliveries;
        t.steady_gaps += c.steady_gaps;
        t.steady_dups += c.steady_dups;
        add(&mut t.steady_ends, &c.steady_ends);
        add(&mut t.steady_connect_failures, &c.steady_connect_failures);
        add(&mut t.steady_end_last_pong, &c.steady_end_last_pong);
        t.pongs += c.pongs;
        t.churn_open += c.churn_open;
        t.churn_started += c.churn_started;
        t.churn_clean += c.churn_clean;
        t.churn_deliveries += c.churn_deliveries;
        t.churn_gaps += c.churn_gaps;
        add(&mut t.churn_connect_failures, &c.churn_connect_failures);
        add(&mut t.churn_ends, &c.churn_ends);
        t.unexpected += c.unexpected;
        for (p, s) in &c.slow {
            let g = t.slow.entry(p.clone()).or_default();
            g.open += s.open;
            g.connects += s.connects;
            g.deliveries += s.deliveries;
            g.skipped += s.skipped;
            add(&mut g.ends, &s.ends);
            add(&mut g.connect_failures, &s.connect_failures);
        }
    }
    t
}

/// Unexpected errors by kind (`what.cause`), and the expected
/// disconnect-policy ends.
fn errors(c: &Counts, p: &PubStats) -> (BTreeMap<String, u64>, u64) {
    let mut e = BTreeMap::new();
    let mut put = |k: String, v: u64| {
        if v > 0 {
            e.insert(k, v);
        }
    };
    let causes = [
        ("steady_connect_failures", &c.steady_connect_failures),
        ("steady_ends", &c.steady_ends),
        ("churn_connect_failures", &c.churn_connect_failures),
        ("churn_ends", &c.churn_ends),
    ];
    for (what, m) in causes {
        for (k, v) in m {
            put(format!("{what}.{k}"), *v);
        }
    }
    put("steady_gaps".into(), c.steady_gaps);
    put("steady_dups".into(), c.steady_dups);
    put("churn_gaps".into(), c.churn_gaps);
    put("unexpected_frames".into(), c.unexpected);
    put("feed_errors".into(), p.errors.load(Ordering::Relaxed));
    let mut expected = 0;
    for (policy, g) in &c.slow {
        for (k, v) in &g.connect_failures {
            put(format!("slow_{policy}_connect_failures.{k}"), *v);
        }
        for (end, n) in &g.ends {
            if policy == "disconnect" && DISCONNECT_ENDS.contains(&end.as_str()) {
                expected += n;
            } else {
                put(format!("slow_{policy}_ends.{end}"), *n);
            }
        }
    }
    (e, expected)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The samples of quarter `q` (0-based) of a run of `dur` seconds.
fn quarter(samples: &[Sample], dur: f64, q: u32) -> Vec<&Sample> {
    let (lo, hi) = (dur * f64::from(q) / 4.0, dur * f64::from(q + 1) / 4.0);
    samples
        .iter()
        .filter(|s| s.t_s > lo && s.t_s <= hi + 0.5)
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub pass: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub rss: Check,
    pub fds: Check,
    pub errors: Check,
    pub p99: Check,
    pub coverage: Check,
    pub server: Check,
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

pub async fn run(a: SoakArgs) -> Result<ExitCode, String> {
    if a.workers == 0 || a.steady_topics == 0 || a.slow_topics == 0 {
        return Err("--workers, --steady-topics and --slow-topics must be at least 1".into());
    }
    if a.sample_s < 0.5 || a.duration_s < 8 {
        return Err("--sample-s must be >= 0.5 and --duration-s >= 8".into());
    }
    if a.payload < 8 || a.slow_payload < 8 {
        return Err("payloads carry the send time: at least 8 bytes".into());
    }
    let slow_per_worker = (3 * a.slow_pausers + 2 * a.slow_stalled).div_ceil(u64::from(a.workers));
    let churn_per_worker = (a.churn_rate * (a.churn_hold_ms as f64 / 1000.0 + 6.0)
        / f64::from(a.workers))
    .ceil() as u64;
    let per_worker =
        a.steady_conns.div_ceil(u64::from(a.workers)) + slow_per_worker + churn_per_worker;
    if per_worker > MAX_CONNS_PER_WORKER {
        return Err(format!(
            "{per_worker} connections per worker is over {MAX_CONNS_PER_WORKER}: raise --workers"
        ));
    }
    let (addr, host, path) = cli::parse_url(&a.url, "ws", "/ws")?;
    let ingest = cli::parse_loopback(&a.ingest, 8781)?;
    cli::parse_url(&a.herald_metrics, "http", "/metrics")?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    let pid = a.server_pid;
    let quiet = a.json;
    let say = |m: String| {
        if !quiet {
            eprintln!("{m}");
        }
    };

    // Before: the baseline the run must come back to.
    let base_scrape = scrape::fetch(&a.herald_metrics).await?;
    let base_proc = procstat::sample(&[pid])?;
    let base_fds = fds(pid).ok_or_else(|| format!("/proc/{pid}/fd: not readable"))?;
    let base_dropped = by_label(&base_scrape, "herald_dropped_total", "reason");
    let base_closes = by_label(&base_scrape, "herald_closes_total", "code");

    let steady_topics: Vec<String> = (0..a.steady_topics)
        .map(|i| format!("soak.steady.{i}"))
        .collect();
    let groups: Vec<(String, Vec<String>)> = POLICIES
        .iter()
        .map(|(p, pre)| {
            (
                p.to_string(),
                (0..a.slow_topics).map(|i| format!("{pre}.{i}")).collect(),
            )
        })
        .collect();
    let slow_topics: Vec<String> = groups.iter().flat_map(|(_, t)| t.clone()).collect();
    let t0_unix = now_ms();
    let deadline = t0_unix + (a.duration_s + 60) * 1000;
    let share = |total: u64, w: u32| -> u64 {
        let n = u64::from(a.workers);
        total / n + u64::from(u64::from(w) < total % n)
    };
    let plans: Vec<SoakPlan> = (0..a.workers)
        .map(|w| SoakPlan {
            worker: w,
            workers: a.workers,
            target: crate::worker::Target {
                addr,
                host: host.clone(),
                herald: true,
                path: path.clone(),
            },
            secret: a.secret.clone(),
            source_ips: a.source_ips,
            steady_conns: share(a.steady_conns, w),
            steady_topics: steady_topics.clone(),
            connect_rate: a.connect_rate / f64::from(a.workers),
            churn_rate: a.churn_rate / f64::from(a.workers),
            churn_hold_ms: a.churn_hold_ms,
            slow: groups
                .iter()
                .map(|(p, t)| SlowGroup {
                    policy: p.clone(),
                    topics: t.clone(),
                    pausers: share(a.slow_pausers, w),
                    stalled: if p == "disconnect" {
                        0
                    } else {
                        share(a.slow_stalled, w)
                    },
                })
                .collect(),
            slow_read_ms: a.slow_read_ms,
            slow_pause_ms: a.slow_pause_ms,
            slow_rcvbuf: a.slow_rcvbuf,
            tick_ms: 1000,
            connect_timeout_ms: a.connect_timeout_s * 1000,
            deadline_unix_ms: deadline,
        })
        .collect();
    let (tx, mut rx) = mpsc::channel::<(usize, Option<Tick>)>(256);
    let mut workers = spawn_workers(&plans, tx).await?;
    let nw = workers.len();
    let mut client_pids = vec![std::process::id()];
    client_pids.extend(workers.iter().filter_map(|w| w.child.id()));
    let mut prev_client = procstat::sample(&client_pids).map_or(0.0, |p| p.cpu_s);
    let t0 = Instant::now();
    let st = Arc::new(PubStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let pub_task = tokio::spawn(publisher(
        PubSpec {
            addr: ingest,
            token: a.feed_token.clone(),
            steady_topics: steady_topics.clone(),
            rate: a.rate,
            payload: a.payload,
            slow_topics,
            slow_rate: a.slow_rate,
            slow_payload: a.slow_payload,
            restarts_s: a
                .feed_restart_at
                .iter()
                .filter(|f| **f > 0.0 && **f < 1.0)
                .map(|f| f * a.duration_s as f64)
                .collect(),
            gap: Duration::from_millis(a.feed_gap_ms),
            t0,
        },
        st.clone(),
        stop_rx,
    ));

    let mut latest: Vec<Counts> = vec![Counts::default(); nw];
    let mut exited = vec![false; nw];
    let mut interval_hist: Histogram<u64> = new_histogram();
    let mut samples: Vec<Sample> = Vec::new();
    let csv_path = a.out.join("samples.csv");
    let mut csv = String::from(CSV_HEAD);
    let _ = std::fs::write(&csv_path, &csv);
    let mut prev_proc = base_proc;
    let mut prev_box = box_cpu();
    let mut prev_t = 0.0f64;
    let mut prev_total = Counts::default();
    let mut prev_pub = 0u64;
    let mut server_gone = false;
    let mut interrupted = false;
    let mut hdr_errors = 0u64;
    let period = Duration::from_secs_f64(a.sample_s);
    let mut next = t0 + period;
    let end = t0 + Duration::from_secs(a.duration_s);
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    say(format!(
        "soak: {} s, {} steady subscribers on {} topics at {} msg/s, churn {}/s, {} slow readers per policy, feed restarts at {:?}",
        a.duration_s, a.steady_conns, a.steady_topics, a.rate, a.churn_rate, a.slow_pausers, a.feed_restart_at
    ));
    loop {
        let wake = next.min(end);
        tokio::select! {
            m = rx.recv() => match m {
                Some((i, Some(t))) => {
                    match decode_histogram(&t.hist) {
                        Ok(h) => { let _ = interval_hist.add(&h); }
                        Err(_) => hdr_errors += 1,
                    }
                    latest[i] = t.counts;
                    continue;
                }
                Some((i, None)) => { exited[i] = true; continue; }
                None => {}
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = &mut ctrl_c => { interrupted = true; }
        }
        if interrupted {
            break;
        }
        if Instant::now() < wake && !exited.iter().all(|x| *x) {
            continue;
        }
        // A sample.
        let t = t0.elapsed().as_secs_f64();
        let dt = (t - prev_t).max(1e-3);
        let pr = procstat::sample(&[pid]);
        let pr = match pr {
            Ok(p) => p,
            Err(_) => {
                server_gone = true;
                break;
            }
        };
        let nfds = fds(pid).unwrap_or(0);
        let bx = box_cpu();
        let box_pct = match (prev_box, bx) {
            (Some((b0, t0_)), Some((b1, t1))) if t1 > t0_ => {
                (b1 - b0) as f64 / (t1 - t0_) as f64 * 100.0
            }
            _ => 0.0,
        };
        prev_box = bx;
        let client_cpu = procstat::sample(&client_pids).map_or(prev_client, |p| p.cpu_s);
        let client_pct = (client_cpu - prev_client) / dt * 100.0;
        prev_client = client_cpu;
        let sc = scrape::fetch(&a.herald_metrics).await.unwrap_or_default();
        let total = add_counts(&latest);
        let (errs, expected) = errors(&total, &st);
        let pub_now = st.steady.load(Ordering::Relaxed) + st.slow.load(Ordering::Relaxed);
        let h = std::mem::replace(&mut interval_hist, new_histogram());
        let q = |p: f64| {
            if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let s = Sample {
            t_s: t,
            rss_bytes: pr.rss,
            fds: nfds,
            herald_cpu_pct: (pr.cpu_s - prev_proc.cpu_s) / dt * 100.0,
            box_cpu_pct: box_pct,
            client_cpu_pct: client_pct,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: if h.is_empty() {
                f64::NAN
            } else {
                h.max() as f64 / 1000.0
            },
            lat_count: h.len(),
            steady_open: total.steady_open,
            deliveries_per_s: (total.steady_deliveries - prev_total.steady_deliveries) as f64 / dt,
            published_per_s: (pub_now - prev_pub) as f64 / dt,
            churn_connects_per_s: (total.churn_started - prev_total.churn_started) as f64 / dt,
            churn_open: total.churn_open,
            slow_open: total.slow.values().map(|g| g.open).sum(),
            errors: errs.values().sum(),
            error_kinds: errs.clone(),
            expected_closes: expected,
            herald_connections: sc.sum("herald_connections"),
            dropped: minus(
                &by_label(&sc, "herald_dropped_total", "reason"),
                &base_dropped,
            ),
            closes: minus(&by_label(&sc, "herald_closes_total", "code"), &base_closes),
        };
        csv.push_str(&csv_row(&s));
        let _ = std::fs::write(&csv_path, &csv);
        say(format!(
            "[{:>6.0}s] rss {:.1} MiB, fds {}, p50 {:.1} / p99 {:.1} ms, {:.0} deliveries/s, herald {:.0}% / load {:.0}% of a core, box {:.0}%, open {} steady / {} churn / {} slow, errors {}, 4008 {}",
            t, mib(s.rss_bytes as f64), s.fds, s.p50_ms, s.p99_ms, s.deliveries_per_s, s.herald_cpu_pct, s.client_cpu_pct, s.box_cpu_pct,
            s.steady_open, s.churn_open, s.slow_open, s.errors, s.expected_closes
        ));
        if samples
            .last()
            .map_or(s.errors > 0, |l| l.errors != s.errors)
        {
            say(format!("         errors: {:?}", s.error_kinds));
        }
        samples.push(s);
        prev_proc = pr;
        prev_t = t;
        prev_total = total;
        prev_pub = pub_now;
        next += period;
        while next <= Instant::now() {
            next += period;
        }
        if Instant::now() >= end || exited.iter().all(|x| *x) {
            break;
        }
    }
    // Stop: the feed, then the workers (their last tick), then wait for
    // herald to let go of everything.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), pub_task).await;
    for w in workers.iter_mut() {
        if let Some(mut s) = w.stdin.take() {
            let _ = s.write_all(b"stop\n").await;
        }
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !exited.iter().all(|x| *x) {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some((i, Some(t)))) => latest[i] = t.counts,
            Ok(Some((i, None))) => exited[i] = true,
            Ok(None) | Err(_) => break,
        }
    }
    for w in workers.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.start_kill();
            let _ = w.child.wait().await;
        }
    }
    let run_s = t0.elapsed().as_secs_f64();
    // After: every client is gone; herald's descriptors come back.
    let mut end_fds = fds(pid);
    let mut end_conns = f64::NAN;
    let settle = Instant::now() + Duration::from_secs(15);
    while !server_gone && alive(pid) {
        end_fds = fds(pid);
        end_conns = scrape::fetch(&a.herald_metrics)
            .await
            .map(|s| s.sum("herald_connections"))
            .unwrap_or(f64::NAN);
        let back = end_fds.is_some_and(|f| f <= base_fds + a.fd_end_slack) && end_conns == 0.0;
        if back || Instant::now() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let end_proc = procstat::sample(&[pid]).ok();
    if end_proc.is_none() {
        server_gone = true;
    }
    let end_scrape = scrape::fetch(&a.herald_metrics).await.unwrap_or_default();
    let total = add_counts(&latest);
    let (errs, expected) = errors(&total, &st);

    // Verdict.
    let dur = a.duration_s as f64;
    let med = |q: u32, f: &dyn Fn(&Sample) -> f64| {
        median(quarter(&samples, dur, q).iter().map(|s| f(s)).collect())
    };
    let rss2 = med(1, &|s| s.rss_bytes as f64);
    let rss4 = med(3, &|s| s.rss_bytes as f64);
    let rss = match (rss2, rss4) {
        (Some(r2), Some(r4)) => {
            let allow = (r2 * a.rss_pct / 100.0).max(a.rss_mib * 1024.0 * 1024.0);
            Check {
                pass: r4 - r2 <= allow,
                detail: format!(
                    "last-quarter median {:.1} MiB vs second-quarter {:.1} MiB ({:+.1} MiB, {:+.1}%; allowed +{:.1} MiB = max({}%, {} MiB)); start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
                    mib(r4), mib(r2), mib(r4 - r2), (r4 / r2 - 1.0) * 100.0, mib(allow), a.rss_pct, a.rss_mib,
                    mib(base_proc.rss as f64),
                    mib(samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0) as f64),
                    mib(end_proc.map_or(0, |p| p.rss) as f64)
                ),
            }
        }
        _ => Check {
            pass: false,
            detail: "too few samples".into(),
        },
    };
    let churn_in_flight = (a.churn_rate * (a.churn_hold_ms as f64 / 1000.0 + 1.0)).ceil() as u64;
    let fd_slack = a
        .fd_slack
        .unwrap_or(2 * churn_in_flight + 3 * a.slow_pausers + 2 * a.slow_stalled + 32);
    let fd2 = med(1, &|s| s.fds as f64);
    let fd4 = med(3, &|s| s.fds as f64);
    let fds_check = match (fd2, fd4, end_fds) {
        (Some(f2), Some(f4), Some(fe)) => Check {
            pass: (f4 - f2).abs() <= fd_slack as f64 && fe <= base_fds + a.fd_end_slack,
            detail: format!(
                "quarter medians {f2:.0} → {f4:.0} (allowed ± {fd_slack}); before the run {base_fds}, after every client left {fe} (allowed + {}), herald_connections after {end_conns}",
                a.fd_end_slack
            ),
        },
        _ => Check { pass: false, detail: "too few samples or herald gone".into() },
    };
    let nerr: u64 = errs.values().sum();
    let errors_check = Check {
        pass: nerr == 0 && hdr_errors == 0,
        detail: if nerr == 0 {
            format!("none ({expected} disconnect-policy closes, expected, counted apart)")
        } else {
            format!("{nerr}: {errs:?}")
        },
    };
    let p2 = med(1, &|s| s.p99_ms);
    let p4 = med(3, &|s| s.p99_ms);
    let p99 = match (p2, p4) {
        (Some(p2), Some(p4)) => {
            let allow = (p2 * a.p99_ratio).max(p2 + a.p99_floor_ms);
            Check {
                pass: p4 <= allow,
                detail: format!(
                    "last-quarter median p99 {p4:.2} ms vs second-quarter {p2:.2} ms (allowed {allow:.2} = max({}×, + {} ms)); per quarter {}",
                    a.p99_ratio, a.p99_floor_ms,
                    (0..4).map(|q| med(q, &|s| s.p99_ms).map_or("-".into(), |v| format!("{v:.2}"))).collect::<Vec<_>>().join(" / ")
                ),
            }
        }
        _ => Check {
            pass: false,
            detail: "no latency samples".into(),
        },
    };
    let dropped = minus(
        &by_label(&end_scrape, "herald_dropped_total", "reason"),
        &base_dropped,
    );
    let closes = minus(
        &by_label(&end_scrape, "herald_closes_total", "code"),
        &base_closes,
    );
    let planned_restarts = a
        .feed_restart_at
        .iter()
        .filter(|f| **f > 0.0 && **f < 1.0)
        .count() as u64;
    let restarts = st.restarts.load(Ordering::Relaxed);
    let mut missing = Vec::new();
    let d = |k: &str| dropped.get(k).copied().unwrap_or(0.0);
    if a.slow_pausers > 0 && (expected == 0 || closes.get("4008").copied().unwrap_or(0.0) == 0.0) {
        missing.push("no 4008 for the disconnect-policy readers".to_string());
    }
    if a.slow_pausers + a.slow_stalled > 0 && d("drop_oldest") == 0.0 {
        missing.push("nothing dropped under drop_oldest".into());
    }
    if a.slow_pausers + a.slow_stalled > 0 && d("conflated") == 0.0 {
        missing.push("nothing conflated".into());
    }
    if a.churn_rate > 0.0 && total.churn_clean == 0 {
        missing.push("no churn connection completed".into());
    }
    if restarts < planned_restarts || st.connects.load(Ordering::Relaxed) < planned_restarts + 1 {
        missing.push(format!("feed restarts {restarts} of {planned_restarts}"));
    }
    let coverage = Check {
        pass: missing.is_empty(),
        detail: if missing.is_empty() {
            format!(
                "4008 ×{} (herald) / {expected} (readers), drop_oldest {} dropped, {} conflated, {} churn connections, {restarts} feed restart(s)",
                closes.get("4008").copied().unwrap_or(0.0), d("drop_oldest"), d("conflated"), total.churn_clean
            )
        } else {
            missing.join("; ")
        },
    };
    let server = Check {
        pass: !server_gone && !interrupted,
        detail: if server_gone {
            "herald exited during the run".into()
        } else if interrupted {
            "interrupted".into()
        } else {
            format!("alive; the run took {run_s:.0} s")
        },
    };
    let verdict = Verdict {
        pass: rss.pass
            && fds_check.pass
            && errors_check.pass
            && p99.pass
            && coverage.pass
            && server.pass,
        rss,
        fds: fds_check,
        errors: errors_check,
        p99,
        coverage,
        server,
    };
    let quarters: Vec<serde_json::Value> = (0..4)
        .map(|q| {
            serde_json::json!({
                "quarter": q + 1,
                "samples": quarter(&samples, dur, q).len(),
                "rss_mib": med(q, &|s| mib(s.rss_bytes as f64)),
                "fds": med(q, &|s| s.fds as f64),
                "p50_ms": med(q, &|s| s.p50_ms),
                "p99_ms": med(q, &|s| s.p99_ms),
                "deliveries_per_s": med(q, &|s| s.deliveries_per_s),
                "herald_cpu_pct": med(q, &|s| s.herald_cpu_pct),
                "box_cpu_pct": med(q, &|s| s.box_cpu_pct),
                "client_cpu_pct": med(q, &|s| s.client_cpu_pct),
            })
        })
        .collect();
    let params: BTreeMap<String, String> = [
        ("duration_s", a.duration_s.to_string()),
        ("sample_s", a.sample_s.to_string()),
        ("workers", a.workers.to_string()),
        ("steady_conns", a.steady_conns.to_string()),
        ("steady_topics", a.steady_topics.to_string()),
        ("rate", a.rate.to_string()),
        ("payload", a.payload.to_string()),
        ("churn_rate", a.churn_rate.to_string()),
        ("churn_hold_ms", a.churn_hold_ms.to_string()),
        ("slow_pausers_per_policy", a.slow_pausers.to_string()),
        ("slow_stalled_per_policy", a.slow_stalled.to_string()),
        ("slow_topics_per_policy", a.slow_topics.to_string()),
        ("slow_rate_per_topic", a.slow_rate.to_string()),
        ("slow_payload", a.slow_payload.to_string()),
        ("slow_read_ms", a.slow_read_ms.to_string()),
        ("slow_pause_ms", a.slow_pause_ms.to_string()),
        ("feed_restart_at", format!("{:?}", a.feed_restart_at)),
        ("feed_gap_ms", a.feed_gap_ms.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(a.param.iter().filter_map(|p| {
        p.split_once('=')
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    }))
    .collect();
    let pub_json = serde_json::json!({
        "steady": st.steady.load(Ordering::Relaxed),
        "slow": st.slow.load(Ordering::Relaxed),
        "feed_connects": st.connects.load(Ordering::Relaxed),
        "feed_restarts": restarts,
        "feed_restart_times_s": st.restart_times_s.lock().map(|v| v.clone()).unwrap_or_default(),
        "feed_errors": st.errors.load(Ordering::Relaxed),
        "feed_last_error": st.last_error.lock().ok().and_then(|e| e.clone()),
        "skipped": st.skipped.load(Ordering::Relaxed),
    });
    let summary = serde_json::json!({
        "pass": verdict.pass,
        "verdict": verdict,
        "params": params,
        "notes": a.notes,
        "started_unix_ms": t0_unix,
        "run_s": run_s,
        "baseline": {
            "rss_bytes": base_proc.rss,
            "fds": base_fds,
        },
        "end": {
            "rss_bytes": end_proc.map(|p| p.rss),
            "fds": end_fds,
            "herald_connections": end_conns,
        },
        "quarters": quarters,
        "publisher": pub_json,
        "clients": total,
        "errors": errs,
        "expected_disconnect_closes": expected,
        "herald": {
            "dropped": dropped,
            "closes": closes,
            "delivered": end_scrape.sum("herald_delivered_total") - base_scrape.sum("herald_delivered_total"),
            "published": end_scrape.sum("herald_published_total") - base_scrape.sum("herald_published_total"),
            "handshakes": minus(&by_label(&end_scrape, "herald_handshakes_total", "result"), &by_label(&base_scrape, "herald_handshakes_total", "result")),
            "accept_errors": end_scrape.sum("herald_accept_errors_total") - base_scrape.sum("herald_accept_errors_total"),
        },
    });
    // The page shows the summary without the samples (they are drawn, and
    // in samples.csv); summary.json has them.
    let json = serde_json::to_string_pretty(&summary).map_err(|e| format!("summary: {e}"))?;
    let mut summary = summary;
    summary["samples"] = serde_json::to_value(&samples).unwrap_or_default();
    let full = serde_json::to_string_pretty(&summary).map_err(|e| format!("summary: {e}"))?;
    let sj = a.out.join("summary.json");
    std::fs::write(&sj, format!("{full}\n")).map_err(|e| format!("{}: {e}", sj.display()))?;
    let html = soak_html::render(&soak_html::Report {
        title: "herald soak".into(),
        params: &params,
        notes: &a.notes,
        verdict: &verdict,
        samples: &samples,
        duration_s: dur,
        restarts_s: &st
            .restart_times_s
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
        summary_json: &json,
    });
    let hp = a.out.join("report.html");
    std::fs::write(&hp, html).map_err(|e| format!("{}: {e}", hp.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        for (name, c) in [
            ("rss", &verdict.rss),
            ("fds", &verdict.fds),
            ("errors", &verdict.errors),
            ("p99", &verdict.p99),
            ("coverage", &verdict.coverage),
            ("server", &verdict.server),
        ] {
            eprintln!(
                "{name:>8}: {} — {}",
                if c.pass { "ok" } else { "FAIL" },
                c.detail
            );
        }
        eprintln!("report: {}", hp.display());
    }
    Ok(if verdict.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

const CSV_HEAD: &str = "t_s,rss_mib,fds,herald_cpu_pct,client_cpu_pct,box_cpu_pct,p50_ms,p99_ms,max_ms,lat_count,steady_open,deliveries_per_s,published_per_s,churn_connects_per_s,churn_open,slow_open,errors,expected_closes,herald_connections,dropped_slow_consumer,dropped_drop_oldest,dropped_conflated,dropped_closed,closes_1000,closes_4008,closes_other\n";

fn csv_row(s: &Sample) -> String {
    let d = |k: &str| s.dropped.get(k).copied().unwrap_or(0.0);
    let c = |k: &str| s.closes.get(k).copied().unwrap_or(0.0);
    let other: f64 = s
        .closes
        .iter()
        .filter(|(k, _)| k.as_str() != "1000" && k.as_str() != "4008")
        .map(|(_, v)| v)
        .sum();
    format!(
        "{:.1},{:.2},{},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{},{},{:.0},{:.0},{:.1},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        s.t_s, mib(s.rss_bytes as f64), s.fds, s.herald_cpu_pct, s.client_cpu_pct, s.box_cpu_pct, s.p50_ms, s.p99_ms,
        s.max_ms, s.lat_count, s.steady_open, s.deliveries_per_s, s.published_per_s,
        s.churn_connects_per_s, s.churn_open, s.slow_open, s.errors, s.expected_closes,
        s.herald_connections, d("slow_consumer"), d("drop_oldest"), d("conflated"), d("closed"),
        c("1000"), c("4008"), other
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quarters() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let s: Vec<Sample> = (1..=20)
            .map(|i| Sample {
                t_s: f64::from(i) * 5.0,
                ..Sample::default()
            })
            .collect();
        let q: Vec<usize> = (0..4).map(|q| quarter(&s, 100.0, q).len()).collect();
        assert_eq!(q, vec![5, 5, 5, 5]);
    }

    #[test]
    fn labels() {
        let s = Scrape::parse(
            "herald_dropped_total{reason=\"conflated\"} 5\nherald_dropped_total{reason=\"drop_oldest\"} 2\n\
             herald_closes_total{code=\"4008\"} 3\nherald_closes_total{code=\"1000\",shard=\"1\"} 1\n\
             herald_closes_total{shard=\"0\",code=\"1000\"} 2\n",
        );
        let d = by_label(&s, "herald_dropped_total", "reason");
        assert_eq!(d.get("conflated"), Some(&5.0));
        let c = by_label(&s, "herald_closes_total", "code");
        assert_eq!((c.get("4008"), c.get("1000")), (Some(&3.0), Some(&3.0)));
    }

    #[test]
    fn disconnect_ends_are_expected() {
        let mut c = Counts::default();
        let g = c.slow.entry("disconnect".into()).or_default();
        g.ends.insert("close_4008".into(), 3);
        g.ends.insert("eof".into(), 1);
        let g = c.slow.entry("conflate".into()).or_default();
        g.ends.insert("close_4008".into(), 1);
        let (e, expected) = errors(&c, &PubStats::default());
        assert_eq!(expected, 4);
        assert_eq!(e.get("slow_conflate_ends.close_4008"), Some(&1));
        assert_eq!(e.len(), 1);
    }
}
