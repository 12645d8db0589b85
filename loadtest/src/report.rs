//! Merging worker reports and formatting numbers.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::series::Series;
use crate::worker::{decode_histogram, decode_u32s, new_histogram, Ready, WorkerResult};

/// All workers' results added up.
#[derive(Debug)]
pub struct Merged {
    pub attempted: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub open_at_end: u64,
    pub expected: u64,
    pub expected_fast: u64,
    pub received: u64,
    pub unique: u64,
    pub unique_fast: u64,
    pub slow_conns: u64,
    pub closes_slow: BTreeMap<String, u64>,
    pub hist_slow: Histogram<u64>,
    pub series: Series,
    pub gaps: u64,
    pub dups: u64,
    pub unexpected: u64,
    pub closes: BTreeMap<String, u64>,
    pub first_rx_ns: u64,
    pub last_rx_ns: u64,
    pub hist: Histogram<u64>,
    pub ended_by: BTreeMap<String, u64>,
    /// Workers that exited without a result (crashed or were killed).
    pub lost_workers: u32,
    /// Per message (when tracked, else empty): the largest latency over
    /// every worker's fast connections, µs + 1 (0 = nobody received it).
    pub msg_last_us: Vec<u32>,
    /// Per message: fast connections that received it, over all workers.
    pub msg_count: Vec<u32>,
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Element-wise `f` of `encoded` into `into` (taken as is when `into` is
/// still empty; ignored, with a note, when the lengths differ).
fn fold_u32s(into: &mut Vec<u32>, encoded: &str, worker: u32, f: fn(u32, u32) -> u32) {
    if encoded.is_empty() {
        return;
    }
    match decode_u32s(encoded) {
        Ok(v) if into.is_empty() => *into = v,
        Ok(v) if v.len() == into.len() => {
            for (a, b) in into.iter_mut().zip(v) {
                *a = f(*a, b);
            }
        }
        Ok(v) => eprintln!(
            "worker {worker}: per-message array of {} entries, expected {}: not merged",
            v.len(),
            into.len()
        ),
        Err(e) => eprintln!("worker {worker}: {e}"),
    }
}

fn add_hist(into: &mut Histogram<u64>, encoded: &str, worker: u32) {
    if encoded.is_empty() {
        return;
    }
    match decode_histogram(encoded) {
        Ok(h) => {
            if let Err(e) = into.add(&h) {
                eprintln!("worker {worker}: histogram not merged: {e:?}");
            }
        }
        Err(e) => eprintln!("worker {worker}: {e}"),
    }
}

pub fn merge(results: &[Option<WorkerResult>], sample_ms: u64) -> Merged {
    let mut m = Merged {
        attempted: 0,
        connected: 0,
        failures: BTreeMap::new(),
        open_at_end: 0,
        expected: 0,
        expected_fast: 0,
        received: 0,
        unique: 0,
        unique_fast: 0,
        slow_conns: 0,
        closes_slow: BTreeMap::new(),
        hist_slow: new_histogram(),
        series: Series::new(sample_ms),
        gaps: 0,
        dups: 0,
        unexpected: 0,
        closes: BTreeMap::new(),
        first_rx_ns: 0,
        last_rx_ns: 0,
        hist: new_histogram(),
        ended_by: BTreeMap::new(),
        lost_workers: 0,
        msg_last_us: Vec::new(),
        msg_count: Vec::new(),
    };
    for r in results {
        let Some(r) = r else {
            m.lost_workers += 1;
            continue;
        };
        m.attempted += r.attempted;
        m.connected += r.connected;
        add_map(&mut m.failures, &r.failures);
        m.open_at_end += r.open_at_end;
        m.expected += r.expected;
        m.expected_fast += r.expected_fast;
        m.received += r.received;
        m.unique += r.unique;
        m.unique_fast += r.unique_fast;
        m.slow_conns += r.slow_conns;
        add_map(&mut m.closes_slow, &r.closes_slow);
        add_hist(&mut m.hist_slow, &r.hist_slow, r.worker);
        m.series.merge(&r.series);
        m.gaps += r.gaps;
        m.dups += r.dups;
        m.unexpected += r.unexpected;
        add_map(&mut m.closes, &r.closes);
        if r.first_rx_ns != 0 && (m.first_rx_ns == 0 || r.first_rx_ns < m.first_rx_ns) {
            m.first_rx_ns = r.first_rx_ns;
        }
        m.last_rx_ns = m.last_rx_ns.max(r.last_rx_ns);
        add_hist(&mut m.hist, &r.hist, r.worker);
        *m.ended_by.entry(r.ended_by.clone()).or_default() += 1;
        fold_u32s(&mut m.msg_last_us, &r.msg_last_us, r.worker, u32::max);
        fold_u32s(
            &mut m.msg_count,
            &r.msg_count,
            r.worker,
            u32::saturating_add,
        );
    }
    m
}

/// The time until the last subscriber had each message: per message, the
/// largest publish→receive latency over all (fast) subscribers, then the
/// distribution of that over the messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastReceive {
    /// Messages tracked (all of the run's).
    pub msgs: u64,
    /// Messages at least one subscriber received (the distribution is over
    /// these).
    pub received_msgs: u64,
    /// Messages every subscriber planned for their topic received (a
    /// connection that failed or was cut off counts as one that did not).
    pub complete_msgs: u64,
    /// Over `received_msgs`: p50 / p90 / p99 / max of the last receive.
    pub latency: Latency,
}

/// `last_us` and `count` per message (merged), `expected[m]` the fast
/// subscribers message m should reach.
pub fn last_receive(
    last_us: &[u32],
    count: &[u32],
    expected: impl Fn(usize) -> u64,
) -> LastReceive {
    let mut h = new_histogram();
    let mut lr = LastReceive {
        msgs: last_us.len() as u64,
        ..LastReceive::default()
    };
    for (m, &v) in last_us.iter().enumerate() {
        if v == 0 {
            continue;
        }
        lr.received_msgs += 1;
        h.saturating_record(u64::from(v - 1));
        if u64::from(count.get(m).copied().unwrap_or(0)) >= expected(m) {
            lr.complete_msgs += 1;
        }
    }
    lr.latency = latency(&h);
    lr
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectStats {
    pub attempted: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    /// From the first worker's start to the last worker's "all done".
    pub seconds: f64,
    pub per_s: f64,
    /// Time to establish one connection (TCP connect, upgrade, SUBSCRIBE
    /// acks), ms.
    pub latency: Latency,
}

pub fn connect_stats(ready: &[Option<Ready>]) -> ConnectStats {
    let mut c = ConnectStats::default();
    let (mut start, mut end) = (u64::MAX, 0u64);
    let mut h = new_histogram();
    for r in ready.iter().flatten() {
        c.attempted += r.attempted;
        c.connected += r.connected;
        add_map(&mut c.failures, &r.failures);
        start = start.min(r.connect_start_ms);
        end = end.max(r.connect_end_ms);
        add_hist(&mut h, &r.connect_hist, r.worker);
    }
    c.latency = latency(&h);
    if end >= start && start != u64::MAX {
        c.seconds = (end - start) as f64 / 1000.0;
        c.per_s = if c.seconds > 0.0 {
            c.connected as f64 / c.seconds
        } else {
            0.0
        };
    }
    c
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn causes(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::encode_histogram;

    #[test]
    fn counts_are_grouped() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn results_merge_with_histograms() {
        let mut h1 = new_histogram();
        h1.saturating_record(1000);
        let mut h2 = new_histogram();
        h2.saturating_record(3000);
        h2.saturating_record(5000);
        let r = |w: u32, h: &Histogram<u64>, first: u64, last: u64| WorkerResult {
            worker: w,
            attempted: 2,
            connected: 2,
            unique: h.len(),
            received: h.len(),
            expected: 2,
            first_rx_ns: first,
            last_rx_ns: last,
            hist: encode_histogram(h),
            ended_by: "complete".into(),
            failures: [("refused".to_string(), 1)].into(),
            ..WorkerResult::default()
        };
        let m = merge(
            &[Some(r(0, &h1, 50, 60)), Some(r(1, &h2, 40, 90)), None],
            1000,
        );
        assert_eq!(m.unique, 3);
        assert_eq!(m.hist.len(), 3);
        assert_eq!(m.hist.max(), m.hist.highest_equivalent(5000));
        assert_eq!((m.first_rx_ns, m.last_rx_ns), (40, 90));
        assert_eq!(m.failures["refused"], 2);
        assert_eq!(m.lost_workers, 1);
        let l = latency(&m.hist);
        assert!((l.p50_ms - 3.0).abs() < 0.01, "{l:?}");
    }

    #[test]
    fn last_receive_takes_the_latest_subscriber() {
        use crate::worker::encode_u32s;
        // Three messages; worker 0 and 1 each saw some of them.
        let r = |w: u32, last: &[u32], count: &[u32]| WorkerResult {
            worker: w,
            msg_last_us: encode_u32s(last),
            msg_count: encode_u32s(count),
            ..WorkerResult::default()
        };
        let m = merge(
            &[
                Some(r(0, &[1001, 0, 5001], &[2, 0, 1])),
                Some(r(1, &[3001, 0, 2001], &[1, 0, 2])),
                Some(WorkerResult::default()),
            ],
            1000,
        );
        assert_eq!(m.msg_last_us, vec![3001, 0, 5001]);
        assert_eq!(m.msg_count, vec![3, 0, 3]);
        // Message 2 should have reached 4 subscribers: not complete.
        let lr = last_receive(&m.msg_last_us, &m.msg_count, |i| [3, 3, 4][i]);
        assert_eq!((lr.msgs, lr.received_msgs, lr.complete_msgs), (3, 2, 1));
        assert!((lr.latency.max_ms - 5.0).abs() < 0.01, "{lr:?}");
        assert!((lr.latency.p50_ms - 3.0).abs() < 0.01, "{lr:?}");
    }
}
