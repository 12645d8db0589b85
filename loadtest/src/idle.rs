//! `herald-load idle`: open C subscribed connections, let the server
//! settle, and read how much its RSS grew per connection.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::IdleArgs;
use crate::control::Workers;
use crate::plan::{Dist, TopicSpec};
use crate::procstat;
use crate::report::{self, count, ConnectStats};
use crate::worker::{now_ms, Kind, SlowSpec, WorkerPlan};

#[derive(Debug, Serialize)]
struct Summary {
    kind: &'static str,
    protocol: &'static str,
    target: String,
    workers: u32,
    source_ips: u32,
    conns: u64,
    /// None with --no-subscribe (upgrade only).
    topic: Option<String>,
    connect: ConnectStats,
    /// Connections still open when the RSS was read (from worker
    /// progress, at most a second old).
    open_at_measure: u64,
    closes: BTreeMap<String, u64>,
    server_pids: Vec<u32>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    /// (rss_after − rss_before) / connected.
    bytes_per_conn: Option<f64>,
}

pub async fn run(a: IdleArgs) -> Result<ExitCode, String> {
    let c = &a.conn;
    c.check()?;
    let targets = c.targets()?;
    let target = targets[0].clone();
    let auth = c.auth(target.herald)?;
    if !herald::wire::topic::is_valid_topic(&a.topic) {
        return Err(format!("--topic {:?} is not a valid topic name", a.topic));
    }
    let quiet = c.json;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.duration_s);
    let before = if c.server_pid.is_empty() {
        None
    } else {
        Some(procstat::sample(&c.server_pid)?)
    };
    let template = WorkerPlan {
        worker: 0,
        kind: Kind::Idle,
        targets,
        auth,
        conn_start: 0,
        conn_count: 0,
        topic_names: vec![a.topic.clone()],
        topics: TopicSpec {
            topics: 1,
            dist: Dist::One,
            min_per_conn: 1,
            max_per_conn: 1,
            seed: 0,
            room_size: 1,
        },
        subscribe: !a.no_subscribe,
        msgs: 0,
        sample_ms: 1000,
        slow: SlowSpec::default(),
        source_ips: c.source_ips,
        connect_rate: 0.0,
        connect_timeout_ms: 0,
        deadline_unix_ms: now_ms() + a.duration_s * 1000,
        track_msgs: false,
    };
    let plans = c.plans(&template);
    let mut ws = Workers::spawn(&plans).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut interrupted = ws
        .wait_ready(c.conns, start, deadline, quiet, &mut tick, &mut ctrl_c)
        .await;
    let connect = report::connect_stats(&ws.ready);
    if !quiet {
        eprintln!(
            "connected {} / {} in {:.2} s ({:.0} conn/s); failures: {}; settling {} s",
            count(connect.connected),
            count(connect.attempted),
            connect.seconds,
            connect.per_s,
            report::causes(&connect.failures),
            a.settle_s
        );
    }
    // Settle, then hold, still following progress (and Ctrl-C).
    let measure_at = Instant::now() + Duration::from_secs(a.settle_s);
    let mut after = None;
    let mut open_at_measure = 0;
    let mut phase_end = measure_at.min(deadline);
    let mut measured = false;
    while !interrupted && !ws.all_done() {
        tokio::select! {
            r = ws.next() => if r.is_none() { break },
            _ = tokio::time::sleep_until(phase_end) => {
                if measured || Instant::now() >= deadline {
                    break;
                }
                measured = true;
                open_at_measure = ws.open();
                if !c.server_pid.is_empty() {
                    after = Some(procstat::sample(&c.server_pid)?);
                }
                if !quiet && a.hold_s > 0 {
                    eprintln!("measured; holding {} s", a.hold_s);
                }
                phase_end = (Instant::now() + Duration::from_secs(a.hold_s)).min(deadline);
            },
            _ = &mut ctrl_c => interrupted = true,
        }
    }
    ws.stop_all().await;
    ws.collect(Duration::from_secs(5)).await;
    ws.reap().await;
    let m = report::merge(&ws.results, 1000);
    let bytes_per_conn = match (before, after) {
        (Some(b), Some(a)) if connect.connected > 0 => {
            Some((a.rss as f64 - b.rss as f64) / connect.connected as f64)
        }
        _ => None,
    };
    let s = Summary {
        kind: "idle",
        protocol: if target.herald { "herald" } else { "raw" },
        target: c.url.clone().or(c.raw_url.clone()).unwrap_or_default(),
        workers: c.workers,
        source_ips: c.source_ips,
        conns: c.conns,
        topic: (!a.no_subscribe || !target.herald).then(|| a.topic.clone()),
        connect,
        open_at_measure,
        closes: m.closes,
        server_pids: c.server_pid.clone(),
        rss_before: before.map(|s| s.rss),
        rss_after: after.map(|s| s.rss),
        bytes_per_conn,
    };
    if quiet {
        println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
    } else {
        println!("== herald-load idle ({}, {}) ==", s.protocol, s.target);
        println!(
            "connections   {} / {} in {:.2} s = {:.0} conn/s; failures: {}; open at measure {}",
            count(s.connect.connected),
            count(s.conns),
            s.connect.seconds,
            s.connect.per_s,
            report::causes(&s.connect.failures),
            count(s.open_at_measure)
        );
        let l = &s.connect.latency;
        println!(
            "connect ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({})",
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            if s.topic.is_some() {
                "TCP + upgrade + SUBSCRIBE ack"
            } else {
                "TCP + upgrade"
            }
        );
        if !s.closes.is_empty() {
            println!("closed early  {}", report::causes(&s.closes));
        }
        match (s.rss_before, s.rss_after, s.bytes_per_conn) {
            (Some(b), Some(a), Some(per)) => println!(
                "server rss    {} before, {} after ({} bytes) = {:.0} bytes per connection",
                report::mib(b),
                report::mib(a),
                a as i64 - b as i64,
                per
            ),
            _ => println!("server rss    (needs --server-pid and at least one connection)"),
        }
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
