//! Every metric herald exports, defined once.
//!
//! Hot paths hold cached handles (`ShardMetrics`) instead of calling the
//! macros per event, and nothing is recorded per subscriber: deliveries are
//! counted per batch, latencies per message.

use std::sync::OnceLock;
use std::time::Duration;

use crate::wire::close::Close;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder once and returns its handle.
/// Several gateways in one process (tests) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets(&latency)
                .expect("static, non-empty bucket list");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A recorder installed by an embedding application wins; ours
            // then renders nothing, which its owner chose.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("herald_connections", "Open WebSocket sessions, by shard");
    describe_gauge!("herald_subscriptions", "Active subscriptions, by shard");
    describe_gauge!("herald_topics", "Topics sequenced by each home partition");
    describe_counter!("herald_handshakes_total", "WebSocket handshakes, by result");
    describe_counter!(
        "herald_jwks_fetches_total",
        "Fetches of auth.jwks_url, by result (ok, or why they failed)"
    );
    describe_counter!(
        "herald_key_reloads_total",
        "Reloads of the auth key files (SIGHUP), by result"
    );
    describe_counter!("herald_published_total", "Messages published, by source");
    describe_counter!(
        "herald_delivered_total",
        "Publications handed to open subscriber sessions (written, or queued behind a full socket)"
    );
    describe_counter!("herald_dropped_total", "Frames not delivered, by reason");
    describe_counter!(
        "herald_bytes_out_total",
        Unit::Bytes,
        "Bytes written to client sockets"
    );
    describe_counter!(
        "herald_write_syscalls_total",
        "Vectored writes to client sockets"
    );
    describe_counter!("herald_closes_total", "Sessions closed, by close code");
    describe_counter!(
        "herald_client_errors_total",
        "ERROR replies sent to clients, by code"
    );
    describe_counter!("herald_ingest_frames_total", "Frames received from feeds");
    describe_counter!(
        "herald_ingest_errors_total",
        "Feed connections ended by an error, by code"
    );
    describe_gauge!("herald_ingest_feeds", "Connected feeds");
    describe_counter!(
        "herald_api_requests_total",
        "Operator API requests, by route and status"
    );
    describe_counter!("herald_accept_errors_total", "Accept failures, by kind");
    describe_histogram!(
        "herald_delivery_latency_seconds",
        Unit::Seconds,
        "From ingest to the socket write, per message and shard"
    );
    describe_histogram!(
        "herald_fanout_seconds",
        Unit::Seconds,
        "Per message: how long the delivery batch that carried it took on its shard, from dequeue to the last write"
    );
    describe_gauge!(
        "herald_broker_connected",
        "Cluster mode: 1 while the broker (NATS) is reachable and its stream is set up, else 0"
    );
    describe_counter!(
        "herald_broker_disconnects_total",
        "Cluster mode: times the broker became unreachable"
    );
    describe_counter!(
        "herald_broker_appends_total",
        "Cluster mode: batch appends to topic logs, by result (ok, conflict: another writer moved the log and the batch was retried, error)"
    );
    describe_counter!(
        "herald_broker_appended_total",
        "Cluster mode: publications appended to topic logs by this node"
    );
    describe_counter!(
        "herald_broker_records_total",
        "Cluster mode: log records received from the broker"
    );
    describe_counter!(
        "herald_broker_malformed_total",
        "Cluster mode: messages on herald's subjects that are not herald records (ignored)"
    );
    describe_counter!(
        "herald_broker_refused_total",
        "Cluster mode: publications refused because the broker could not take them"
    );
    describe_counter!(
        "herald_broker_catchups_total",
        "Cluster mode: topics whose records arrived with a gap (or after an outage) and were fetched from the log"
    );
    describe_counter!(
        "herald_broker_resets_total",
        "Cluster mode: topics whose log could not be followed without a gap (history cut or new epoch); their subscribers were closed with 1001"
    );
    describe_histogram!(
        "herald_broker_append_seconds",
        Unit::Seconds,
        "Cluster mode: from sending a batch to the broker to its acknowledgement"
    );
    describe_histogram!(
        "herald_handshake_seconds",
        Unit::Seconds,
        "From accept to the 101 response"
    );
}

/// Handles a shard touches on its hot path, resolved once.
#[derive(Clone)]
pub struct ShardMetrics {
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub delivered: Counter,
    pub bytes_out: Counter,
    pub write_syscalls: Counter,
    pub dropped_slow: Counter,
    pub dropped_closed: Counter,
    pub dropped_oldest: Counter,
    pub conflated: Counter,
    pub delivery_latency: Histogram,
    pub fanout: Histogram,
    pub handshake: Histogram,
    pub published_client: Counter,
    /// `herald_handshakes_total{result="ok"}`, the common case.
    pub handshakes_ok: Counter,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> Self {
        let s = shard.to_string();
        ShardMetrics {
            connections: gauge!("herald_connections", "shard" => s.clone()),
            subscriptions: gauge!("herald_subscriptions", "shard" => s.clone()),
            delivered: counter!("herald_delivered_total"),
            bytes_out: counter!("herald_bytes_out_total"),
            write_syscalls: counter!("herald_write_syscalls_total"),
            dropped_slow: counter!("herald_dropped_total", "reason" => "slow_consumer"),
            dropped_closed: counter!("herald_dropped_total", "reason" => "closed"),
            dropped_oldest: counter!("herald_dropped_total", "reason" => "drop_oldest"),
            conflated: counter!("herald_dropped_total", "reason" => "conflated"),
            delivery_latency: histogram!("herald_delivery_latency_seconds"),
            fanout: histogram!("herald_fanout_seconds"),
            handshake: histogram!("herald_handshake_seconds"),
            published_client: counter!("herald_published_total", "source" => "client"),
            handshakes_ok: counter!("herald_handshakes_total", "result" => "ok"),
        }
    }
}

/// Handles of the cluster broker's metrics.
#[derive(Clone)]
pub struct BrokerMetrics {
    pub connected: Gauge,
    pub disconnects: Counter,
    pub append_ok: Counter,
    pub append_conflict: Counter,
    pub append_error: Counter,
    pub appended: Counter,
    pub append_seconds: Histogram,
    pub records: Counter,
    pub malformed: Counter,
}

impl BrokerMetrics {
    pub fn new() -> Self {
        BrokerMetrics {
            connected: gauge!("herald_broker_connected"),
            disconnects: counter!("herald_broker_disconnects_total"),
            append_ok: counter!("herald_broker_appends_total", "result" => "ok"),
            append_conflict: counter!("herald_broker_appends_total", "result" => "conflict"),
            append_error: counter!("herald_broker_appends_total", "result" => "error"),
            appended: counter!("herald_broker_appended_total"),
            append_seconds: histogram!("herald_broker_append_seconds"),
            records: counter!("herald_broker_records_total"),
            malformed: counter!("herald_broker_malformed_total"),
        }
    }
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What a home counts in cluster mode.
#[derive(Clone)]
pub struct HomeMetrics {
    pub refused: Counter,
    pub catchups: Counter,
    pub resets: Counter,
}

impl HomeMetrics {
    pub fn new() -> Self {
        HomeMetrics {
            refused: counter!("herald_broker_refused_total"),
            catchups: counter!("herald_broker_catchups_total"),
            resets: counter!("herald_broker_resets_total"),
        }
    }
}

impl Default for HomeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The topic count of home partition `home`.
pub fn home_topics(home: usize) -> Gauge {
    gauge!("herald_topics", "home" => home.to_string())
}

pub fn handshake(result: &'static str) {
    counter!("herald_handshakes_total", "result" => result).increment(1);
}

/// `result`: `ok`, `http`, `timeout`, `too_large`, `invalid`, `connect`.
pub fn jwks_fetch(result: &'static str) {
    counter!("herald_jwks_fetches_total", "result" => result).increment(1);
}

/// `result`: `ok` or `error`.
pub fn key_reload(result: &'static str) {
    counter!("herald_key_reloads_total", "result" => result).increment(1);
}

pub fn close(code: Close) {
    counter!("herald_closes_total", "code" => code.label()).increment(1);
}

pub fn client_error(code: u16) {
    counter!("herald_client_errors_total", "code" => code_label(code)).increment(1);
}

pub fn ingest_error(code: u16) {
    counter!("herald_ingest_errors_total", "code" => code_label(code)).increment(1);
}

pub fn accept_error(kind: &'static str) {
    counter!("herald_accept_errors_total", "kind" => kind).increment(1);
}

pub fn api_request(route: &'static str, status: u16) {
    counter!("herald_api_requests_total", "route" => route, "status" => code_label(status))
        .increment(1);
}

pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Label values come from a closed set so a peer cannot grow the series.
fn code_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}
