//! `herald-load fanout`: connect and subscribe everyone, publish, wait for
//! every delivery (or the time cap), report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{parse_loopback, parse_url, FanoutArgs, PublishMode};
use crate::control::Workers;
use crate::plan::{self, TopicPlan};
use crate::procstat::{self, Sample};
use crate::publish::{self, Sink, Spec};
use crate::report::{self, count, ConnectStats, Latency};
use crate::worker::{now_ms, Kind};

#[derive(Debug, Serialize)]
struct Summary {
    kind: &'static str,
    protocol: &'static str,
    target: String,
    publish: String,
    workers: u32,
    conns: u64,
    topics: u32,
    dist: String,
    subs_per_conn: u32,
    msgs: u64,
    rate: f64,
    payload: usize,
    connect: ConnectStats,
    published: u64,
    publish_s: f64,
    publish_error: Option<String>,
    expected: u64,
    delivered: u64,
    missing: u64,
    complete: bool,
    /// deliveries / (last receive − first publish)
    delivered_per_s: f64,
    delivery_s: f64,
    latency: Latency,
    seq_gaps: u64,
    duplicates: u64,
    unexpected: u64,
    /// How connections ended before the run was over (server closes).
    closes: BTreeMap<String, u64>,
    ended_by: BTreeMap<String, u64>,
    lost_workers: u32,
    server: Option<Server>,
}

#[derive(Debug, Serialize)]
struct Server {
    pids: Vec<u32>,
    /// CPU used from just before the first publish to the last result.
    cpu_s: f64,
    /// Numerically the same as µs per delivery.
    cpu_s_per_1m_deliveries: f64,
    rss_before_connect: u64,
    rss_after_connect: u64,
    rss_after_publish: u64,
    rss_peak: u64,
}

fn sample(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    match procstat::sample(pids) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("herald-load: --server-pid: {e}");
            None
        }
    }
}

pub async fn run(a: FanoutArgs) -> Result<ExitCode, String> {
    let c = &a.conn;
    c.check()?;
    let target = c.target()?;
    let auth = c.auth(target.herald)?;
    if a.payload < 8 {
        return Err("--payload must be at least 8 bytes (it carries the send time)".into());
    }
    if !target.herald && a.subs_per_conn > 1 {
        return Err("--subs-per-conn > 1 needs herald (--url): a peer socket has one topic".into());
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        return Err("--rate must be >= 0".into());
    }
    let topic_plan = TopicPlan::new(a.topics, a.subs_per_conn, a.dist, a.seed)?;
    let names = plan::topic_names(a.topics);
    let mode = a.publish.unwrap_or(if target.herald {
        PublishMode::Ingest
    } else {
        PublishMode::Raw
    });
    let sink = match mode {
        PublishMode::Ingest => Sink::Ingest {
            addr: parse_loopback(&a.ingest, 8781)?,
            token: a
                .feed_token
                .clone()
                .ok_or("--publish ingest needs --feed-token")?,
        },
        PublishMode::Api => {
            let (addr, host, _) = parse_url(&a.api, "http", "")?;
            Sink::Api {
                addr,
                host,
                key: a.api_key.clone().ok_or("--publish api needs --api-key")?,
            }
        }
        PublishMode::Raw if target.herald => {
            return Err("--publish raw is for peers (--raw-url); herald takes ingest or api".into())
        }
        PublishMode::Raw => Sink::Raw {
            addr: target.addr,
            host: target.host.clone(),
            prefix: target.path.clone(),
        },
    };
    let quiet = c.json;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.duration_s);
    let deadline_ms = now_ms() + a.duration_s * 1000;
    let expected = plan::expected_deliveries(&topic_plan, a.msgs, a.topics, 0..c.conns);

    if !quiet {
        eprintln!(
            "herald-load fanout: {} {} | {} conns, {} workers, {} topic(s) {:?} x{}/conn | {} msgs x {} B at {} | publish {:?} | expecting {} deliveries",
            if target.herald { "herald" } else { "raw" },
            c.url.as_deref().or(c.raw_url.as_deref()).unwrap_or(""),
            c.conns,
            c.workers,
            a.topics,
            a.dist,
            a.subs_per_conn,
            a.msgs,
            a.payload,
            if a.rate > 0.0 { format!("{} msg/s", a.rate) } else { "max rate".into() },
            mode,
            count(expected),
        );
    }

    let before_connect = sample(&c.server_pid);
    let plans = c.plans(
        Kind::Fanout,
        &target,
        &auth,
        &names,
        a.dist,
        a.subs_per_conn,
        a.seed,
        a.msgs,
        deadline_ms,
    );
    let mut ws = Workers::spawn(&plans).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;

    // Connect phase.
    while !ws.all_ready() {
        tokio::select! {
            r = ws.next() => if r.is_none() { break },
            _ = tick.tick() => if !quiet {
                eprintln!("[{:>4.0}s] connecting: {} / {} open", start.elapsed().as_secs_f64(), count(ws.open()), count(c.conns));
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = &mut ctrl_c, if !interrupted => { interrupted = true; break }
        }
    }
    let connect = report::connect_stats(&ws.ready);
    if !quiet {
        eprintln!(
            "connected {} / {} in {:.2} s ({:.0} conn/s); failures: {}",
            count(connect.connected),
            count(connect.attempted),
            connect.seconds,
            connect.per_s,
            report::causes(&connect.failures)
        );
    }
    let after_connect = sample(&c.server_pid);

    // Publish phase.
    let can_publish =
        !interrupted && ws.all_ready() && Instant::now() < deadline && connect.connected > 0;
    let progress = Arc::new(publish::Live::default());
    let mut pub_report = publish::Report::default();
    let mut cpu_before = None;
    if can_publish {
        tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
        cpu_before = sample(&c.server_pid);
        let spec = Spec {
            sink,
            topics: names.clone(),
            msgs: a.msgs,
            rate: a.rate,
            payload: a.payload,
            barrier_every: 1000,
        };
        let mut publisher = tokio::spawn(publish::run(spec, progress.clone()));
        let mut pub_done = false;
        let mut drain_at: Option<Instant> = None;
        let mut last_rx = (Instant::now(), ws.received());
        while !ws.all_done() {
            tokio::select! {
                r = ws.next() => if r.is_none() { break },
                rep = &mut publisher, if !pub_done => {
                    pub_done = true;
                    pub_report = rep.unwrap_or_else(|e| publish::Report { error: Some(format!("publisher task: {e}")), ..Default::default() });
                    if let Some(e) = &pub_report.error {
                        eprintln!("herald-load: publish failed: {e}");
                        ws.stop_all().await;
                    }
                    drain_at = a.drain_s.map(|s| Instant::now() + Duration::from_secs(s));
                },
                _ = tick.tick() => if !quiet {
                    let now = (Instant::now(), ws.received());
                    let rate = (now.1.saturating_sub(last_rx.1)) as f64 / now.0.duration_since(last_rx.0).as_secs_f64().max(1e-3);
                    last_rx = now;
                    eprintln!(
                        "[{:>4.0}s] open {}  published {} / {}  delivered {} / {} ({:.0}/s)  p99 {:.1} ms",
                        start.elapsed().as_secs_f64(),
                        count(ws.open()),
                        count(progress.sent.load(Ordering::Relaxed)),
                        count(a.msgs),
                        count(now.1),
                        count(expected),
                        rate,
                        ws.p99_us() as f64 / 1000.0,
                    );
                },
                _ = tokio::time::sleep_until(drain_at.unwrap_or(deadline)), if drain_at.is_some() => {
                    drain_at = None;
                    ws.stop_all().await;
                },
                // Workers stop by themselves at the deadline; this is a backstop.
                _ = tokio::time::sleep_until(deadline + Duration::from_secs(3)) => { ws.stop_all().await; break },
                _ = &mut ctrl_c, if !interrupted => { interrupted = true; ws.stop_all().await; },
            }
        }
        if !pub_done {
            // Deliveries can all be in before the last HTTP answer or PONG.
            match tokio::time::timeout(Duration::from_secs(2), &mut publisher).await {
                Ok(Ok(rep)) => pub_report = rep,
                _ => {
                    publisher.abort();
                    pub_report = progress.snapshot();
                    pub_report.error = Some("cut off before it finished".into());
                }
            }
        }
    } else {
        ws.stop_all().await;
    }
    ws.collect(Duration::from_secs(5)).await;
    let cpu_after = sample(&c.server_pid);
    ws.reap().await;

    let m = report::merge(&ws.results);
    let lat = report::latency(&m.hist);
    let delivery_s = if m.last_rx_ns > pub_report.first_ns && pub_report.first_ns > 0 {
        (m.last_rx_ns - pub_report.first_ns) as f64 / 1e9
    } else {
        0.0
    };
    let publish_s = if pub_report.last_ns > pub_report.first_ns {
        (pub_report.last_ns - pub_report.first_ns) as f64 / 1e9
    } else {
        0.0
    };
    let server = match (before_connect, after_connect, cpu_before, cpu_after) {
        (Some(b), Some(ac), Some(cb), Some(ca)) => {
            let cpu = ca.cpu_s - cb.cpu_s;
            let per_1m = if m.unique > 0 {
                cpu / m.unique as f64 * 1e6
            } else {
                0.0
            };
            Some(Server {
                pids: c.server_pid.clone(),
                cpu_s: cpu,
                cpu_s_per_1m_deliveries: per_1m,
                rss_before_connect: b.rss,
                rss_after_connect: ac.rss,
                rss_after_publish: ca.rss,
                rss_peak: ca.hwm,
            })
        }
        _ => None,
    };
    let s = Summary {
        kind: "fanout",
        protocol: if target.herald { "herald" } else { "raw" },
        target: c.url.clone().or(c.raw_url.clone()).unwrap_or_default(),
        publish: format!("{mode:?}").to_lowercase(),
        workers: c.workers,
        conns: c.conns,
        topics: a.topics,
        dist: format!("{:?}", a.dist).to_lowercase(),
        subs_per_conn: a.subs_per_conn,
        msgs: a.msgs,
        rate: a.rate,
        payload: a.payload,
        connect,
        published: pub_report.published,
        publish_s,
        publish_error: pub_report.error.clone(),
        expected,
        delivered: m.unique,
        missing: expected.saturating_sub(m.unique),
        complete: m.unique >= expected && m.lost_workers == 0,
        delivered_per_s: if delivery_s > 0.0 {
            m.unique as f64 / delivery_s
        } else {
            0.0
        },
        delivery_s,
        latency: lat,
        seq_gaps: m.gaps,
        duplicates: m.dups,
        unexpected: m.unexpected,
        closes: m.closes.clone(),
        ended_by: m.ended_by.clone(),
        lost_workers: m.lost_workers,
        server,
    };
    if quiet {
        println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
    } else {
        print_text(&s);
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(s: &Summary) {
    println!("== herald-load fanout ({}, {}) ==", s.protocol, s.target);
    println!(
        "connections   {} / {} in {:.2} s = {:.0} conn/s; failures: {}",
        count(s.connect.connected),
        count(s.conns),
        s.connect.seconds,
        s.connect.per_s,
        report::causes(&s.connect.failures)
    );
    println!(
        "published     {} / {} msgs x {} B via {} in {:.2} s{}",
        count(s.published),
        count(s.msgs),
        s.payload,
        s.publish,
        s.publish_s,
        s.publish_error
            .as_ref()
            .map(|e| format!(" (error: {e})"))
            .unwrap_or_default()
    );
    println!(
        "delivered     {} / {} ({:.2}%){}, {:.0} msgs/s over {:.2} s",
        count(s.delivered),
        count(s.expected),
        if s.expected > 0 {
            s.delivered as f64 * 100.0 / s.expected as f64
        } else {
            100.0
        },
        if s.complete { "" } else { " INCOMPLETE" },
        s.delivered_per_s,
        s.delivery_s
    );
    let l = &s.latency;
    println!(
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    println!(
        "order         seq gaps {}, duplicates {}, unexpected messages {}",
        count(s.seq_gaps),
        count(s.duplicates),
        count(s.unexpected)
    );
    if !s.closes.is_empty() {
        println!("closed early  {}", report::causes(&s.closes));
    }
    if s.lost_workers > 0 {
        println!("LOST WORKERS  {}", s.lost_workers);
    }
    match &s.server {
        Some(v) => println!(
            "server        cpu {:.2} s = {:.2} s per 1M deliveries ({:.2} us/delivery); rss {} before connect, {} connected, {} after publish (peak {})",
            v.cpu_s,
            v.cpu_s_per_1m_deliveries,
            v.cpu_s_per_1m_deliveries,
            report::mib(v.rss_before_connect),
            report::mib(v.rss_after_connect),
            report::mib(v.rss_after_publish),
            report::mib(v.rss_peak)
        ),
        None => println!("server        (no --server-pid)"),
    }
    println!("ended by      {}", report::causes(&s.ended_by));
}
