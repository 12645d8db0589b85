//! `herald-load fanout`: connect and subscribe everyone, publish, wait for
//! every delivery (or the time cap), report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{parse_loopback_list, parse_url, split_list, FanoutArgs, PublishMode};
use crate::control::Workers;
use crate::html::{self, Curve, Facts, Page};
use crate::plan::{self, TopicPlan, TopicSpec};
use crate::procstat::{self, Sample};
use crate::publish::{self, Sink, Spec};
use crate::report::{self, count, ConnectStats, LastReceive, Latency};
use crate::scrape::{self, HeraldCounts};
use crate::series::Series;
use crate::worker::{now_ms, Kind, SlowSpec, WorkerPlan, LAST_RX_MAX_MSGS};

#[derive(Debug, Serialize)]
struct Summary {
    kind: &'static str,
    label: Option<String>,
    protocol: &'static str,
    target: String,
    publish: String,
    publishers: u32,
    workers: u32,
    source_ips: u32,
    conns: u64,
    topics: u32,
    dist: String,
    /// Topics per connection: `K` or `LO-HI`.
    subs_per_conn: String,
    /// Subscriptions over all connections (planned).
    subscriptions: u64,
    msgs: u64,
    rate: f64,
    payload: usize,
    connect: ConnectStats,
    published: u64,
    publish_s: f64,
    /// published / publish_s: what the publisher(s) achieved.
    publish_per_s: f64,
    publish_error: Option<String>,
    expected: u64,
    delivered: u64,
    missing: u64,
    /// Every delivery to a fast connection arrived (slow readers may miss
    /// theirs, see `slow`) and no worker was lost.
    complete: bool,
    /// deliveries / (last receive − first publish)
    delivered_per_s: f64,
    delivery_s: f64,
    /// The busiest bucket of `delivered_series`, per second.
    delivered_per_s_peak_bucket: f64,
    /// Publish → receive latency of the fast connections (all of them
    /// without --slow-fraction).
    latency: Latency,
    /// Per message, the latency of the last (fast) subscriber to receive
    /// it, over the messages: how long a broadcast takes to reach everyone.
    /// Only for runs of at most 100,000 messages whose payloads carry their
    /// per-topic index (>= 16 B, topics not shared by parallel publishers).
    last_receive: Option<LastReceive>,
    seq_gaps: u64,
    duplicates: u64,
    unexpected: u64,
    /// How fast connections ended before the run was over (server closes).
    closes: BTreeMap<String, u64>,
    slow: Option<SlowSummary>,
    ended_by: BTreeMap<String, u64>,
    lost_workers: u32,
    server: Option<Server>,
    /// --broker-pid: CPU over the same window as `server`'s.
    broker: Option<Broker>,
    /// From herald's /metrics, over the publish phase (--herald-metrics).
    herald: Option<HeraldCounts>,
    /// Deliveries and publications per bucket of wall-clock time.
    delivered_series: Series,
    published_series: Series,
    /// HDR percentile distribution of `latency`: [quantile, ms] (--report).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_distribution: Option<Vec<(f64, f64)>>,
}

#[derive(Debug, Serialize)]
struct SlowSummary {
    fraction: f64,
    read_delay_ms: u64,
    read_bytes: usize,
    rcvbuf: u32,
    conns: u64,
    expected: u64,
    delivered: u64,
    /// How the slow connections ended (`close_4008` = herald dropped them
    /// as slow consumers).
    closes: BTreeMap<String, u64>,
    latency: Latency,
    /// The fast connections' expected deliveries and how many arrived.
    fast_expected: u64,
    fast_delivered: u64,
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
    /// (rss_after_connect − rss_before_connect) / connected, summed over
    /// every pid: server memory per connection over all nodes.
    rss_per_conn: f64,
}

#[derive(Debug, Serialize)]
struct Broker {
    pids: Vec<u32>,
    cpu_s: f64,
    cpu_s_per_1m_deliveries: f64,
    /// Servers and broker together (needs --server-pid too).
    cpu_s_per_1m_deliveries_with_broker: Option<f64>,
    rss_after_publish: u64,
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
    let targets = c.targets()?;
    let target = targets[0].clone();
    let auth = c.auth(target.herald)?;
    if a.payload < 8 {
        return Err("--payload must be at least 8 bytes (it carries the send time)".into());
    }
    let (lo, hi) = a
        .subs_per_conn_range
        .unwrap_or((a.subs_per_conn, a.subs_per_conn));
    if !target.herald && hi > 1 {
        return Err(
            "more than one topic per connection needs herald (--url): a peer socket has one topic"
                .into(),
        );
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        return Err("--rate must be >= 0".into());
    }
    if !(0.0..=1.0).contains(&a.slow_fraction) {
        return Err("--slow-fraction must be within 0..=1".into());
    }
    if a.sample_ms < 10 {
        return Err("--sample-ms must be at least 10".into());
    }
    if a.publishers == 0 || a.publishers > 256 {
        return Err("--publishers must be within 1..=256".into());
    }
    let spec = TopicSpec {
        topics: a.topics,
        dist: a.dist,
        min_per_conn: lo,
        max_per_conn: hi,
        seed: a.seed,
        room_size: a
            .room_size
            .unwrap_or_else(|| c.conns.div_ceil(u64::from(a.topics.max(1))).max(1)),
    };
    let topic_plan = TopicPlan::new(&spec)?;
    let names = plan::topic_names(a.topics);
    let mode = a.publish.unwrap_or(if target.herald {
        PublishMode::Ingest
    } else {
        PublishMode::Raw
    });
    let sink = match mode {
        PublishMode::Ingest => Sink::Ingest {
            addrs: parse_loopback_list(&a.ingest, 8781)?,
            token: a
                .feed_token
                .clone()
                .ok_or("--publish ingest needs --feed-token")?,
        },
        PublishMode::Api => Sink::Api {
            targets: split_list(&a.api)?
                .into_iter()
                .map(|u| parse_url(u, "http", "").map(|(addr, host, _)| (addr, host)))
                .collect::<Result<_, _>>()?,
            key: a.api_key.clone().ok_or("--publish api needs --api-key")?,
        },
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
    let (expected_fast, expected_slow) =
        plan::expected_deliveries(&topic_plan, a.msgs, 0..c.conns, a.slow_fraction);
    let expected = expected_fast + expected_slow;
    let subs_label = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    let subscriptions: u64 = (0..c.conns)
        .map(|i| u64::from(topic_plan.count_for(i)))
        .sum();

    if !quiet {
        eprintln!(
            "herald-load fanout: {} {} | {} conns, {} workers, {} topic(s) {:?} x{}/conn | {} msgs x {} B at {} | publish {:?} x{} | expecting {} deliveries",
            if target.herald { "herald" } else { "raw" },
            c.url.as_deref().or(c.raw_url.as_deref()).unwrap_or(""),
            c.conns,
            c.workers,
            a.topics,
            a.dist,
            subs_label,
            a.msgs,
            a.payload,
            if a.rate > 0.0 { format!("{} msg/s", a.rate) } else { "max rate".into() },
            mode,
            a.publishers,
            count(expected),
        );
    }

    // Per-message "last receive" needs each payload's per-topic index: 16
    // bytes or more, and no topic shared by parallel publishers (they write
    // index 0 then).
    let track_msgs = a.msgs <= LAST_RX_MAX_MSGS
        && a.payload >= 16
        && (a.publishers == 1 || a.topics >= a.publishers);
    let before_connect = sample(&c.server_pid);
    let template = WorkerPlan {
        worker: 0,
        kind: Kind::Fanout,
        targets: targets.clone(),
        auth: auth.clone(),
        conn_start: 0,
        conn_count: 0,
        topic_names: names.clone(),
        topics: spec.clone(),
        subscribe: true,
        msgs: a.msgs,
        sample_ms: a.sample_ms,
        slow: SlowSpec {
            fraction: a.slow_fraction,
            read_delay_ms: a.slow_read_delay_ms,
            read_bytes: a.slow_read_bytes,
            rcvbuf: a.slow_rcvbuf,
        },
        source_ips: c.source_ips,
        connect_rate: 0.0,
        connect_timeout_ms: 0,
        deadline_unix_ms: deadline_ms,
        track_msgs,
    };
    let plans = c.plans(&template);
    let mut ws = Workers::spawn(&plans).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;

    // Connect phase.
    let mut interrupted = ws
        .wait_ready(c.conns, start, deadline, quiet, &mut tick, &mut ctrl_c)
        .await;
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
    let progress = Arc::new(publish::Live::new(a.sample_ms));
    let mut pub_report = publish::Report::default();
    let mut cpu_before = None;
    let mut broker_before = None;
    let mut metrics_before = None;
    if can_publish {
        tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
        if let Some(url) = &a.herald_metrics {
            match scrape::fetch(url).await {
                Ok(m) => metrics_before = Some(m),
                Err(e) => eprintln!("herald-load: --herald-metrics: {e}"),
            }
        }
        cpu_before = sample(&c.server_pid);
        broker_before = sample(&a.broker_pid);
        let spec = Spec {
            sink,
            topics: names.clone(),
            msgs: a.msgs,
            rate: a.rate,
            payload: a.payload,
            barrier_every: a.ingest_window,
            publishers: a.publishers,
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
                    } else {
                        ws.tell_all("drain").await;
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
    let broker_after = sample(&a.broker_pid);
    let herald_counts = match (&metrics_before, &a.herald_metrics) {
        (Some(b), Some(url)) => match scrape::fetch(url).await {
            Ok(after) => Some(scrape::delta(b, &after)),
            Err(e) => {
                eprintln!("herald-load: --herald-metrics: {e}");
                None
            }
        },
        _ => None,
    };
    ws.reap().await;

    let m = report::merge(&ws.results, a.sample_ms);
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
                rss_per_conn: if connect.connected > 0 {
                    (ac.rss as f64 - b.rss as f64) / connect.connected as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let last_receive = (track_msgs && !m.msg_last_us.is_empty()).then(|| {
        // Fast subscribers per topic: message m goes to topic m mod T.
        let mut subs = vec![0u64; a.topics as usize];
        let mut picked = Vec::new();
        for i in (0..c.conns).filter(|&i| !plan::is_slow(i, a.slow_fraction)) {
            topic_plan.topics_for(i, &mut picked);
            for &t in &picked {
                subs[t as usize] += 1;
            }
        }
        let t = subs.len();
        report::last_receive(&m.msg_last_us, &m.msg_count, |i| subs[i % t])
    });
    let broker = match (broker_before, broker_after) {
        (Some(b), Some(x)) => {
            let cpu = x.cpu_s - b.cpu_s;
            let per_1m = |cpu: f64| {
                if m.unique > 0 {
                    cpu / m.unique as f64 * 1e6
                } else {
                    0.0
                }
            };
            Some(Broker {
                pids: a.broker_pid.clone(),
                cpu_s: cpu,
                cpu_s_per_1m_deliveries: per_1m(cpu),
                cpu_s_per_1m_deliveries_with_broker: server.as_ref().map(|v| per_1m(v.cpu_s + cpu)),
                rss_after_publish: x.rss,
            })
        }
        _ => None,
    };
    let delivered_series = m.series.clone();
    let published_series = progress.series();
    let peak_bucket = delivered_series.per_second().fold(0.0, f64::max);
    let slow = (a.slow_fraction > 0.0).then(|| SlowSummary {
        fraction: a.slow_fraction,
        read_delay_ms: a.slow_read_delay_ms,
        read_bytes: a.slow_read_bytes,
        rcvbuf: a.slow_rcvbuf,
        conns: m.slow_conns,
        expected: expected_slow,
        delivered: m.unique - m.unique_fast,
        closes: m.closes_slow.clone(),
        latency: report::latency(&m.hist_slow),
        fast_expected: expected_fast,
        fast_delivered: m.unique_fast,
    });
    let s = Summary {
        kind: "fanout",
        label: a.label.clone(),
        protocol: if target.herald { "herald" } else { "raw" },
        target: c.url.clone().or(c.raw_url.clone()).unwrap_or_default(),
        publish: format!("{mode:?}").to_lowercase(),
        publishers: a.publishers,
        workers: c.workers,
        source_ips: c.source_ips,
        conns: c.conns,
        topics: a.topics,
        dist: format!("{:?}", a.dist).to_lowercase(),
        subs_per_conn: subs_label,
        subscriptions,
        msgs: a.msgs,
        rate: a.rate,
        payload: a.payload,
        connect,
        published: pub_report.published,
        publish_s,
        publish_per_s: if publish_s > 0.0 {
            pub_report.published as f64 / publish_s
        } else {
            0.0
        },
        publish_error: pub_report.error.clone(),
        expected,
        delivered: m.unique,
        missing: expected.saturating_sub(m.unique),
        complete: m.unique_fast >= expected_fast && m.lost_workers == 0,
        delivered_per_s: if delivery_s > 0.0 {
            m.unique as f64 / delivery_s
        } else {
            0.0
        },
        delivery_s,
        delivered_per_s_peak_bucket: peak_bucket,
        latency: lat,
        last_receive,
        seq_gaps: m.gaps,
        duplicates: m.dups,
        unexpected: m.unexpected,
        closes: m.closes.clone(),
        slow,
        ended_by: m.ended_by.clone(),
        lost_workers: m.lost_workers,
        server,
        broker,
        herald: herald_counts,
        delivered_series,
        published_series,
        latency_distribution: None,
    };
    if quiet {
        println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
    } else {
        print_text(&s);
    }
    if let Some(dir) = &a.report {
        write_report(dir, s, &m)?;
        if !quiet {
            eprintln!("report: {}", dir.join("report.html").display());
        }
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_report(dir: &std::path::Path, mut s: Summary, m: &report::Merged) -> Result<(), String> {
    let fast = html::percentile_points(&m.hist);
    let mut curves = vec![Curve {
        label: if s.slow.is_some() {
            "fast readers".into()
        } else {
            "all deliveries".into()
        },
        color: "#1f5fa8",
        points: fast.clone(),
    }];
    if s.slow.is_some() {
        curves.push(Curve {
            label: "slow readers".into(),
            color: "#c0392b",
            points: html::percentile_points(&m.hist_slow),
        });
    }
    s.latency_distribution = Some(fast);
    let l = &s.latency;
    let mut facts = vec![
        (
            "target".to_string(),
            format!("{} ({})", s.target, s.protocol),
        ),
        (
            "load".into(),
            format!(
                "{} conns ({} workers, {} source IPs), {} topics ({}, {} per conn, {} subscriptions), {} msgs x {} B at {}, publish {} x{}",
                count(s.conns),
                s.workers,
                s.source_ips,
                count(u64::from(s.topics)),
                s.dist,
                s.subs_per_conn,
                count(s.subscriptions),
                count(s.msgs),
                s.payload,
                if s.rate > 0.0 { format!("{} msg/s", s.rate) } else { "max rate".into() },
                s.publish,
                s.publishers
            ),
        ),
        (
            "connections".into(),
            format!(
                "{} / {} in {:.2} s ({:.0}/s), failures: {}; connect p50 {:.2} ms, p99 {:.2} ms",
                count(s.connect.connected),
                count(s.conns),
                s.connect.seconds,
                s.connect.per_s,
                report::causes(&s.connect.failures),
                s.connect.latency.p50_ms,
                s.connect.latency.p99_ms
            ),
        ),
        (
            "published".into(),
            format!(
                "{} in {:.2} s ({:.0} msgs/s){}",
                count(s.published),
                s.publish_s,
                s.publish_per_s,
                s.publish_error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default()
            ),
        ),
        (
            "delivered".into(),
            format!(
                "{} / {}{}; {:.0} msgs/s over {:.2} s (busiest {} ms bucket: {:.0}/s)",
                count(s.delivered),
                count(s.expected),
                if s.complete { "" } else { " INCOMPLETE" },
                s.delivered_per_s,
                s.delivery_s,
                s.delivered_series.bucket_ms,
                s.delivered_per_s_peak_bucket
            ),
        ),
        (
            "latency".into(),
            format!(
                "p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            ),
        ),
        (
            "last receive".into(),
            match &s.last_receive {
                Some(r) => last_receive_text(r),
                None => "not tracked (more than 100,000 messages, payload under 16 B or shared topics)".into(),
            },
        ),
        (
            "order".into(),
            format!(
                "seq gaps {}, duplicates {}, unexpected {}",
                s.seq_gaps, s.duplicates, s.unexpected
            ),
        ),
    ];
    if let Some(sl) = &s.slow {
        facts.push((
            "slow readers".into(),
            format!(
                "{} ({}%), {} of {} delivered, p99 {:.2} ms; ended: {}",
                sl.conns,
                sl.fraction * 100.0,
                count(sl.delivered),
                count(sl.expected),
                sl.latency.p99_ms,
                report::causes(&sl.closes)
            ),
        ));
    }
    if let Some(v) = &s.server {
        facts.push((
            "server".into(),
            format!(
                "{:.2} s CPU = {:.3} s per 1M deliveries; RSS {} connected ({:.0} B per connection), peak {}",
                v.cpu_s,
                v.cpu_s_per_1m_deliveries,
                report::mib(v.rss_after_connect),
                v.rss_per_conn,
                report::mib(v.rss_peak)
            ),
        ));
    }
    if let Some(b) = &s.broker {
        facts.push(("broker".into(), broker_text(b)));
    }
    if let Some(h) = &s.herald {
        facts.push((
            "herald /metrics".into(),
            format!(
                "{} delivered, {} write syscalls = {:.4} per delivery ({:.0} B per write); 4008 closes {}",
                count(h.delivered),
                count(h.write_syscalls),
                h.write_syscalls_per_delivery,
                h.bytes_per_write,
                h.closes_4008
            ),
        ));
    }
    if !s.closes.is_empty() {
        facts.push(("closed early".into(), report::causes(&s.closes)));
    }
    let json = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
    let title = match &s.label {
        Some(l) => format!("herald-load fanout: {l}"),
        None => format!("herald-load fanout: {}", s.target),
    };
    html::write(
        dir,
        &Page {
            title,
            facts: Facts(facts),
            curves,
            delivered: &s.delivered_series,
            published: &s.published_series,
            summary_json: json,
        },
    )
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
        "connect ms    p50 {:.2}  p99 {:.2}  max {:.2}",
        s.connect.latency.p50_ms, s.connect.latency.p99_ms, s.connect.latency.max_ms
    );
    println!(
        "published     {} / {} msgs x {} B via {} x{} in {:.2} s = {:.0} msgs/s{}",
        count(s.published),
        count(s.msgs),
        s.payload,
        s.publish,
        s.publishers,
        s.publish_s,
        s.publish_per_s,
        s.publish_error
            .as_ref()
            .map(|e| format!(" (error: {e})"))
            .unwrap_or_default()
    );
    println!(
        "delivered     {} / {} ({:.2}%){}, {:.0} msgs/s over {:.2} s (busiest bucket {:.0}/s)",
        count(s.delivered),
        count(s.expected),
        if s.expected > 0 {
            s.delivered as f64 * 100.0 / s.expected as f64
        } else {
            100.0
        },
        if s.complete { "" } else { " INCOMPLETE" },
        s.delivered_per_s,
        s.delivery_s,
        s.delivered_per_s_peak_bucket
    );
    let l = &s.latency;
    println!(
        "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    if let Some(r) = &s.last_receive {
        println!("last receive  {}", last_receive_text(r));
    }
    println!(
        "order         seq gaps {}, duplicates {}, unexpected messages {}",
        count(s.seq_gaps),
        count(s.duplicates),
        count(s.unexpected)
    );
    if !s.closes.is_empty() {
        println!("closed early  {}", report::causes(&s.closes));
    }
    if let Some(sl) = &s.slow {
        println!(
            "fast readers  {} / {} delivered; latency above",
            count(sl.fast_delivered),
            count(sl.fast_expected)
        );
        println!(
            "slow readers  {} conns ({}%, {} B reads every {} ms): {} / {} delivered, p99 {:.2} ms; ended: {}",
            count(sl.conns),
            sl.fraction * 100.0,
            sl.read_bytes,
            sl.read_delay_ms,
            count(sl.delivered),
            count(sl.expected),
            sl.latency.p99_ms,
            report::causes(&sl.closes)
        );
    }
    if s.lost_workers > 0 {
        println!("LOST WORKERS  {}", s.lost_workers);
    }
    match &s.server {
        Some(v) => println!(
            "server        cpu {:.2} s = {:.2} s per 1M deliveries ({:.2} us/delivery); rss {} before connect, {} connected ({:.0} B per connection), {} after publish (peak {})",
            v.cpu_s,
            v.cpu_s_per_1m_deliveries,
            v.cpu_s_per_1m_deliveries,
            report::mib(v.rss_before_connect),
            report::mib(v.rss_after_connect),
            v.rss_per_conn,
            report::mib(v.rss_after_publish),
            report::mib(v.rss_peak)
        ),
        None => println!("server        (no --server-pid)"),
    }
    if let Some(b) = &s.broker {
        println!("broker        {}", broker_text(b));
    }
    if let Some(h) = &s.herald {
        println!(
            "herald        delivered {}, write syscalls {} = {:.4} per delivery ({:.0} B per write), slow-consumer drops {}, 4008 closes {}",
            count(h.delivered),
            count(h.write_syscalls),
            h.write_syscalls_per_delivery,
            h.bytes_per_write,
            count(h.dropped_slow_consumer),
            h.closes_4008
        );
    }
    println!("ended by      {}", report::causes(&s.ended_by));
}

/// "p50 … ms over N msgs (M reached every subscriber)".
fn last_receive_text(r: &LastReceive) -> String {
    let l = &r.latency;
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms (per message: publish -> its last subscriber) over {} of {} msgs; {} reached every subscriber",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms,
        count(r.received_msgs),
        count(r.msgs),
        count(r.complete_msgs)
    )
}

fn broker_text(b: &Broker) -> String {
    format!(
        "pids {:?}: cpu {:.2} s = {:.2} s per 1M deliveries{}; rss {}",
        b.pids,
        b.cpu_s,
        b.cpu_s_per_1m_deliveries,
        b.cpu_s_per_1m_deliveries_with_broker
            .map(|v| format!(" ({v:.2} with the servers)"))
            .unwrap_or_default(),
        report::mib(b.rss_after_publish)
    )
}
