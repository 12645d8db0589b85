//! The NATS backend: one JetStream stream holds every topic's log.
//!
//! - A topic's log is the stream's messages on subject
//!   `herald.<cluster>.t.<topic>` (dots in the topic become `~`, which a
//!   topic name cannot contain, so a topic is always one subject token).
//!   A message is a record: a batch of publications (body framed by
//!   [`super::codec`]), with headers `Herald-Epoch`, `Herald-Seq` (first
//!   seq of the batch) and `Nats-Expected-Last-Subject-Sequence`, the
//!   stream sequence of the topic's previous record. JetStream stores a
//!   message only if that header still names the topic's last message, so
//!   two writers can never both append after the same record: the stored
//!   headers form a chain with no fork, and a record's seqs follow its
//!   predecessor's. That compare-and-set is the whole sequencing protocol.
//! - The stream republishes every stored message to
//!   `herald.<cluster>.d.<topic>` (JetStream RePublish), adding its stream
//!   sequence (`Nats-Sequence`). Nodes follow topics there with plain core
//!   subscriptions, one per topic with local subscribers (`interest`) or one
//!   for all topics (`wildcard`): only stored records are ever seen, in
//!   stream order. A record lost on the way (slow consumer, reconnect) shows
//!   as a broken chain and is fetched from the stream (direct get).
//! - History is the stream itself: `max_messages_per_subject` records per
//!   topic (each holds at least one publication), read back with direct
//!   gets along the chain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{codec, new_epoch, Appended, Broker, BrokerError, BrokerInfo, Event, Fetched};
use super::{Peer, Record, Tail};
use crate::wire::topic::partition;

const H_EPOCH: &str = "Herald-Epoch";
const H_SEQ: &str = "Herald-Seq";
const H_NODE: &str = "Herald-Node";
const H_PREV: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream's de-duplication key (within the stream's duplicate window).
const H_MSG_ID: &str = "Nats-Msg-Id";
/// A batch whose ack was lost waits for NATS this many request timeouts
/// before it is answered as refused.
const UNKNOWN_OUTCOME_WAIT: u32 = 30;
/// Added by the stream when it republishes a stored message.
const H_STREAM_SEQ: &str = "Nats-Sequence";
/// Room for the headers above when checking a batch against `max_payload`.
pub const HEADER_ROOM: usize = 512;
/// Appends give up after this many lost compare-and-sets in a row.
const MAX_TRIES: usize = 64;
/// Records per [`Broker::fetch`] answer.
const FETCH_RECORDS: usize = 512;

/// How a node follows topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// One core subscription per topic that has local subscribers.
    Interest,
    /// One subscription for every topic; records of topics without local
    /// subscribers are dropped on arrival.
    Wildcard,
}

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub node_id: String,
    /// Names the stream and the subjects; the same on every node of a
    /// cluster, different for two clusters sharing one NATS.
    pub cluster: String,
    pub follow: Follow,
    pub memory_storage: bool,
    pub replicas: usize,
    /// Records kept per topic (`max_messages_per_subject`).
    pub history_records: i64,
    /// The stream's byte bound (-1: none); the oldest records go first.
    pub max_bytes: i64,
    pub request_timeout: Duration,
    pub creds_file: Option<std::path::PathBuf>,
    /// Depth of each partition's event channel.
    pub event_capacity: usize,
}

pub struct NatsBroker {
    inner: Arc<Inner>,
}

/// A topic this node follows (interest mode): the generation of the
/// `open` that subscribed, and the task forwarding its records once it runs.
type Following = (u64, Option<tokio::task::AbortHandle>);

struct Inner {
    settings: NatsSettings,
    client: async_nats::Client,
    js: jetstream::Context,
    stream_name: String,
    /// A handle on the stream (no request: direct gets go by name).
    stream: jetstream::stream::Stream<()>,
    in_prefix: String,
    out_prefix: String,
    events: Vec<mpsc::Sender<Event>>,
    /// True once connected and the stream is known to exist.
    ready: AtomicBool,
    /// Topic → (generation, forwarding task) for `Follow::Interest`.
    follows: Mutex<HashMap<Arc<str>, Following>>,
    generation: AtomicU64,
    /// The server's `max_payload`, read at each connect (0: not yet).
    max_payload: std::sync::atomic::AtomicUsize,
    /// Makes this process's batch ids unique across restarts.
    boot: u64,
    batches: AtomicU64,
    rt: tokio::runtime::Handle,
    metrics: crate::metrics::BrokerMetrics,
    /// Node id → (when, stats) of the other nodes' announcements.
    peers: Mutex<HashMap<String, (std::time::Instant, Bytes)>>,
}

impl NatsBroker {
    /// Connects (in the background when NATS is not reachable yet) and
    /// returns the broker with one event receiver per home partition.
    /// Must run inside the tokio runtime that will drive the broker's I/O.
    pub async fn start(
        settings: NatsSettings,
        parts: usize,
    ) -> Result<(NatsBroker, Vec<mpsc::Receiver<Event>>), BrokerError> {
        let mut senders = Vec::with_capacity(parts);
        let mut receivers = Vec::with_capacity(parts);
        for _ in 0..parts {
            let (tx, rx) = mpsc::channel(settings.event_capacity);
            senders.push(tx);
            receivers.push(rx);
        }
        // The callback needs the broker, which needs the client: it finds
        // the broker here once it exists.
        let slot: Arc<OnceLock<std::sync::Weak<Inner>>> = Arc::new(OnceLock::new());
        let cb_slot = slot.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("herald {}", settings.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(settings.request_timeout)
            .request_timeout(Some(settings.request_timeout))
            .subscription_capacity(64 * 1024)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(5) as u32)).min(2000))
            })
            .event_callback(move |event| {
                let slot = cb_slot.clone();
                async move {
                    if let Some(inner) = slot.get().and_then(|w| w.upgrade()) {
                        inner.on_event(event).await;
                    }
                }
            });
        if let Some(path) = &settings.creds_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| BrokerError::Other(format!("cannot read creds_file: {e}")))?;
        }
        let client = opts
            .connect(settings.url.as_str())
            .await
            .map_err(|e| BrokerError::Other(format!("cannot connect to {}: {e}", settings.url)))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .ack_timeout(settings.request_timeout)
            .max_ack_inflight(1 << 16)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let stream_name = format!("HERALD_{}", settings.cluster);
        let stream = js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| BrokerError::Other(format!("stream name {stream_name}: {e}")))?;
        let inner = Arc::new(Inner {
            stream_name,
            stream,
            in_prefix: format!("herald.{}.t.", settings.cluster),
            out_prefix: format!("herald.{}.d.", settings.cluster),
            settings,
            client,
            js,
            events: senders,
            ready: AtomicBool::new(false),
            follows: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            max_payload: std::sync::atomic::AtomicUsize::new(0),
            boot: rand::random(),
            batches: AtomicU64::new(0),
            rt: tokio::runtime::Handle::current(),
            metrics: crate::metrics::BrokerMetrics::new(),
            peers: Mutex::new(HashMap::new()),
        });
        let _ = slot.set(Arc::downgrade(&inner));
        if inner.client.connection_state() == async_nats::connection::State::Connected {
            // Connected before the callback could see the broker.
            let i = inner.clone();
            inner.rt.spawn(async move { i.became_connected().await });
        }
        if inner.settings.follow == Follow::Wildcard {
            let i = inner.clone();
            inner.rt.spawn(async move { i.follow_all().await });
        }
        {
            let i = inner.clone();
            inner.rt.spawn(async move { i.track_peers().await });
        }
        Ok((NatsBroker { inner }, receivers))
    }
}

impl Inner {
    /// Where nodes announce their stats: plain NATS, no stream (a stale
    /// announcement is worth nothing).
    fn nodes_subject(&self) -> String {
        format!("herald.{}.nodes", self.settings.cluster)
    }

    /// Keeps the newest announcement of every other node. The client
    /// subscribes again by itself after a reconnect.
    async fn track_peers(self: Arc<Self>) {
        let mut sub = loop {
            match self.client.subscribe(self.nodes_subject()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe to node announcements; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(node) = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(H_NODE))
                .map(|v| v.as_str().to_owned())
            else {
                continue;
            };
            if node == self.settings.node_id || node.is_empty() || node.len() > 64 {
                continue;
            }
            let mut peers = self.peers.lock();
            // A peer id is whatever a NATS publisher sent: keep the map
            // bounded even if someone floods the subject.
            if peers.len() >= 1024 && !peers.contains_key(&node) {
                continue;
            }
            peers.insert(node, (std::time::Instant::now(), msg.payload));
        }
    }

    async fn on_event(self: &Arc<Self>, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                let i = self.clone();
                self.rt.spawn(async move { i.became_connected().await });
            }
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                if self.ready.swap(false, Ordering::SeqCst) {
                    tracing::warn!(url = %self.settings.url, "cluster broker unreachable: publications are refused until it is back");
                    self.metrics.connected.set(0.0);
                    self.metrics.disconnects.increment(1);
                    for tx in &self.events {
                        let _ = tx.send(Event::Disconnected).await;
                    }
                }
            }
            async_nats::Event::SlowConsumer(sid) => {
                // Records dropped on the way: the homes see the broken
                // chain and fetch them.
                tracing::warn!(sid, "cluster broker: slow consumer, records dropped");
            }
            other => tracing::info!(event = %other, "cluster broker event"),
        }
    }

    /// Makes sure the stream exists (a NATS restarted without its store
    /// has none), then tells the homes to catch up.
    async fn became_connected(self: &Arc<Self>) {
        let mut delay = Duration::from_millis(50);
        loop {
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return;
            }
            match self.ensure_stream().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.stream_name, "cannot set up the cluster stream; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.max_payload
            .store(self.client.server_info().max_payload, Ordering::Relaxed);
        if self.ready.load(Ordering::SeqCst) {
            return;
        }
        // The homes hear of it before anyone can see the broker as
        // reachable (`/readyz`, publishes).
        for tx in &self.events {
            let _ = tx.send(Event::Reconnected).await;
        }
        if !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!(url = %self.settings.url, stream = %self.stream_name, "cluster broker connected");
            self.metrics.connected.set(1.0);
        }
    }

    fn stream_config(&self) -> stream::Config {
        let s = &self.settings;
        stream::Config {
            name: self.stream_name.clone(),
            description: Some("herald: one log per topic".to_owned()),
            subjects: vec![format!("{}>", self.in_prefix)],
            max_messages_per_subject: s.history_records,
            max_bytes: s.max_bytes,
            discard: stream::DiscardPolicy::Old,
            storage: if s.memory_storage {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            num_replicas: s.replicas,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{}>", self.in_prefix),
                destination: format!("{}>", self.out_prefix),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    async fn ensure_stream(&self) -> Result<(), String> {
        let config = self.stream_config();
        match self.js.get_stream(&self.stream_name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| e.to_string())?;
                let c = &info.config;
                if c.max_messages_per_subject != config.max_messages_per_subject
                    || c.max_bytes != config.max_bytes
                    || c.republish != config.republish
                    || c.subjects != config.subjects
                    || !c.allow_direct
                {
                    self.js
                        .update_stream(config)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(stream = %self.stream_name, "cluster stream updated to this node's settings");
                }
                Ok(())
            }
            Err(_) => match self.js.create_stream(config).await {
                Ok(_) => {
                    tracing::info!(stream = %self.stream_name, "cluster stream created");
                    Ok(())
                }
                // Another node created it first.
                Err(e) => match self.js.get_stream(&self.stream_name).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e.to_string()),
                },
            },
        }
    }

    fn connected(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn in_subject(&self, topic: &str) -> String {
        subject(&self.in_prefix, topic)
    }

    fn out_subject(&self, topic: &str) -> String {
        subject(&self.out_prefix, topic)
    }

    fn topic_of_out(&self, subject: &str) -> Option<Arc<str>> {
        topic_of_subject(&self.out_prefix, subject)
    }

    fn stream(&self) -> &jetstream::stream::Stream<()> {
        &self.stream
    }

    async fn emit(&self, part: usize, event: Event) {
        if let Some(tx) = self.events.get(part) {
            // Closed only when the home is gone (shutdown).
            let _ = tx.send(event).await;
        }
    }

    /// The topic's last record, `None` for an empty log.
    async fn tail(&self, topic: &str) -> Result<Option<Tail>, BrokerError> {
        match self
            .stream()
            .direct_get_last_for_subject(self.in_subject(topic))
            .await
        {
            Ok(m) => {
                let r = parse(&m.headers, m.payload, m.sequence).ok_or_else(malformed)?;
                Ok(Some(Tail {
                    seq: r.last_seq(),
                    epoch: r.epoch,
                    offset: r.offset,
                }))
            }
            Err(e) => match e.kind() {
                jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
                _ => Err(self.unavailable(&e)),
            },
        }
    }

    async fn get(&self, offset: u64) -> Result<Option<Record>, BrokerError> {
        match self.stream().direct_get(offset).await {
            Ok(m) => Ok(parse(&m.headers, m.payload, m.sequence)),
            Err(e) => match e.kind() {
                jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
                _ => Err(self.unavailable(&e)),
            },
        }
    }

    fn unavailable(&self, e: &dyn std::fmt::Display) -> BrokerError {
        tracing::debug!(error = %e, "cluster broker request failed");
        BrokerError::Unavailable
    }

    /// Appends one batch. The batch keeps one `Nats-Msg-Id` through all its
    /// attempts, so that JetStream's de-duplication (checked before the
    /// compare-and-set) answers the one question a lost ack leaves open:
    /// was it stored?
    async fn append(
        &self,
        topic: &str,
        mut expect: Option<Tail>,
        payloads: Vec<Bytes>,
    ) -> Result<Appended, BrokerError> {
        let n = payloads.len() as u64;
        let body = codec::encode(&payloads);
        drop(payloads);
        if body.len() + HEADER_ROOM > self.client.server_info().max_payload {
            return Err(BrokerError::TooLarge);
        }
        let subject = self.in_subject(topic);
        let msg_id = format!(
            "{}:{}:{}",
            self.settings.node_id,
            self.boot,
            self.batches.fetch_add(1, Ordering::Relaxed)
        );
        // (prev, first seq, epoch) of the current attempt; kept across an
        // attempt whose outcome is unknown, replaced after a refusal.
        let mut attempt: Option<(u64, u64, Arc<str>)> = None;
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > MAX_TRIES {
                self.metrics.append_error.increment(1);
                return Err(BrokerError::Contended);
            }
            if !self.connected() && attempt.is_none() {
                return Err(BrokerError::Unavailable);
            }
            let (prev, first, epoch) = match attempt.clone() {
                Some(a) => a,
                None => {
                    let a = match expect.take() {
                        Some(t) => (t.offset, t.seq + 1, t.epoch),
                        None => match self.tail(topic).await? {
                            Some(t) => (t.offset, t.seq + 1, t.epoch),
                            None => (0, 1, new_epoch()),
                        },
                    };
                    attempt = Some(a.clone());
                    a
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(H_PREV, prev.to_string());
            headers.insert(H_EPOCH, &*epoch);
            headers.insert(H_SEQ, first.to_string());
            headers.insert(H_NODE, self.settings.node_id.as_str());
            headers.insert(H_MSG_ID, msg_id.as_str());
            let started = std::time::Instant::now();
            let ack = match self
                .js
                .publish_with_headers(subject.clone(), headers, body.clone())
                .await
            {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => {
                    self.metrics.append_ok.increment(1);
                    self.metrics.appended.increment(n);
                    self.metrics.append_seconds.record(started.elapsed());
                    return Ok(Appended {
                        first_seq: first,
                        tail: Tail {
                            epoch,
                            seq: first + n - 1,
                            offset: ack.sequence,
                        },
                    });
                }
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        // Definitely not stored (a stored batch would have
                        // been answered as a duplicate): read the tail again.
                        self.metrics.append_conflict.increment(1);
                        attempt = None;
                    }
                    PublishErrorKind::StreamNotFound => {
                        // A NATS that lost its store: set the stream up again.
                        self.ensure_stream()
                            .await
                            .map_err(|_| BrokerError::Unavailable)?;
                        attempt = None;
                    }
                    PublishErrorKind::MaxPayloadExceeded => return Err(BrokerError::TooLarge),
                    _ => {
                        // The ack was lost: the batch may be stored, or may
                        // still reach NATS from the client's queue once it
                        // reconnects. Answering "refused" now could be a
                        // lie, so wait for NATS and ask again with the same
                        // message id.
                        self.metrics.append_error.increment(1);
                        if !self.await_connected().await {
                            tracing::warn!(topic, "cluster broker gone too long; a publication whose outcome is unknown is answered as refused");
                            return Err(self.unavailable(&e));
                        }
                    }
                },
            }
        }
    }

    /// Waits until the broker is reachable again, at most
    /// [`UNKNOWN_OUTCOME_WAIT`] request timeouts.
    async fn await_connected(&self) -> bool {
        let deadline =
            tokio::time::Instant::now() + self.settings.request_timeout * UNKNOWN_OUTCOME_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Subscribes to the topic's republished records (interest mode), then
    /// reads the tail, creating the log with a marker if it is empty.
    async fn open(
        self: &Arc<Self>,
        part: usize,
        topic: Arc<str>,
        generation: u64,
    ) -> Result<Tail, BrokerError> {
        if !self.connected() {
            return Err(BrokerError::Unavailable);
        }
        if self.settings.follow == Follow::Interest {
            let sub = self
                .client
                .subscribe(self.out_subject(&topic))
                .await
                .map_err(|e| self.unavailable(&e))?;
            let task = {
                let i = self.clone();
                let t = topic.clone();
                self.rt
                    .spawn(async move { i.forward(sub, part, Some(t)).await })
            };
            let mut follows = self.follows.lock();
            match follows.get_mut(&topic) {
                Some((g, handle)) if *g == generation => *handle = Some(task.abort_handle()),
                // Closed (or reopened) while we subscribed.
                _ => task.abort(),
            }
        }
        // The SUB went out before this request on the same connection, so
        // every record stored after the tail we read reaches the
        // subscription.
        match self.tail(&topic).await? {
            Some(t) => Ok(t),
            None => Ok(self.append(&topic, None, Vec::new()).await?.tail),
        }
    }

    async fn follow_all(self: Arc<Self>) {
        loop {
            match self.client.subscribe(format!("{}*", self.out_prefix)).await {
                Ok(sub) => return self.forward(sub, 0, None).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to the cluster's records; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Hands the records of one subscription to the homes. `topic` is
    /// known for a per-topic subscription; a wildcard one reads it from
    /// the subject.
    async fn forward(&self, mut sub: async_nats::Subscriber, part: usize, topic: Option<Arc<str>>) {
        let parts = self.events.len();
        while let Some(msg) = sub.next().await {
            let (topic, part) = match &topic {
                Some(t) => (t.clone(), part),
                None => match self.topic_of_out(&msg.subject) {
                    Some(t) => {
                        let p = partition(&t, parts);
                        (t, p)
                    }
                    None => continue,
                },
            };
            let offset = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(H_STREAM_SEQ))
                .and_then(|v| v.as_str().parse().ok());
            let record = match (msg.headers.as_ref(), offset) {
                (Some(h), Some(offset)) => parse(h, msg.payload, offset),
                _ => None,
            };
            let Some(record) = record else {
                self.metrics.malformed.increment(1);
                tracing::warn!(subject = %msg.subject, "cluster record without herald headers; ignored");
                continue;
            };
            self.metrics.records.increment(1);
            self.emit(part, Event::Record { topic, record }).await;
        }
    }

    async fn fetch(&self, topic: &str, after: u64) -> Result<Fetched, BrokerError> {
        let subject = self.in_subject(topic);
        let stream = self.stream();
        let mut records: Vec<Record> = Vec::new();
        let mut at = after;
        while records.len() < FETCH_RECORDS {
            match stream
                .direct_get_next_for_subject(subject.clone(), Some(at + 1))
                .await
            {
                Ok(m) => {
                    let r = parse(&m.headers, m.payload, m.sequence).ok_or_else(malformed)?;
                    if records.is_empty() && r.prev != after {
                        // What followed `after` is gone.
                        return Ok(Fetched::Moved(self.tail(topic).await?));
                    }
                    at = r.offset;
                    records.push(r);
                }
                Err(e) => match e.kind() {
                    jetstream::stream::DirectGetErrorKind::NotFound => {
                        if records.is_empty() {
                            let tail = self.tail(topic).await?;
                            if tail.as_ref().map(|t| t.offset) != Some(after) {
                                return Ok(Fetched::Moved(tail));
                            }
                        }
                        return Ok(Fetched::Records {
                            records,
                            more: false,
                        });
                    }
                    _ => return Err(self.unavailable(&e)),
                },
            }
        }
        Ok(Fetched::Records {
            records,
            more: true,
        })
    }

    async fn history(&self, topic: &str, down_to_seq: u64) -> Result<Vec<Record>, BrokerError> {
        let stream = self.stream();
        let last = match stream
            .direct_get_last_for_subject(self.in_subject(topic))
            .await
        {
            Ok(m) => parse(&m.headers, m.payload, m.sequence).ok_or_else(malformed)?,
            Err(e) => {
                return match e.kind() {
                    jetstream::stream::DirectGetErrorKind::NotFound => Ok(Vec::new()),
                    _ => Err(self.unavailable(&e)),
                }
            }
        };
        let limit = self.settings.history_records.max(1) as usize;
        let mut out = vec![last];
        while out.len() < limit {
            let oldest = &out[out.len() - 1];
            if oldest.first_seq <= down_to_seq || oldest.prev == 0 {
                break;
            }
            match self.get(oldest.prev).await? {
                Some(r) if r.epoch == oldest.epoch => out.push(r),
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

/// `prefix` + the topic as one subject token (a topic has no `~`, so the
/// mapping of `.` to `~` can be undone).
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + topic.len());
    s.push_str(prefix);
    s.extend(topic.chars().map(|c| if c == '.' { '~' } else { c }));
    s
}

/// The topic of a subject [`subject`] made with `prefix`; `None` for any
/// other subject. Subjects come from NATS, so this is a decoder of bytes
/// other nodes (or anyone allowed to publish there) chose.
pub fn topic_of_subject(prefix: &str, subject: &str) -> Option<Arc<str>> {
    let token = subject.strip_prefix(prefix)?;
    // [`subject`] makes one token; the wildcard subscription also matches
    // `prefix.a.b`, which must not pass for topic `a.b` (whose subject is
    // `prefix.a~b`): one topic, one subject (found by fuzz/topic_pattern).
    if token.contains('.') {
        return None;
    }
    let topic: String = token
        .chars()
        .map(|c| if c == '~' { '.' } else { c })
        .collect();
    crate::wire::topic::is_valid_topic(&topic).then(|| Arc::from(topic))
}

fn malformed() -> BrokerError {
    BrokerError::Other("a record in the cluster stream has no valid herald headers".to_owned())
}

/// A record from its headers and body; `None` when it is not one of ours.
/// The checks are [`Record::decode`]'s (pure, so the fuzz target reaches
/// them without NATS).
fn parse(h: &HeaderMap, body: Bytes, offset: u64) -> Option<Record> {
    let text = |k: &str| h.get(k).map(|v| v.as_str());
    Record::decode(text(H_EPOCH), text(H_SEQ), text(H_PREV), body, offset)
}

impl Broker for NatsBroker {
    fn append(&self, part: usize, topic: Arc<str>, expect: Option<Tail>, payloads: Vec<Bytes>) {
        let i = self.inner.clone();
        self.inner.rt.spawn(async move {
            let result = i.append(&topic, expect, payloads).await;
            i.emit(part, Event::Appended { topic, result }).await;
        });
    }

    fn open(&self, part: usize, topic: Arc<str>) {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if self.inner.settings.follow == Follow::Interest {
            let old = self
                .inner
                .follows
                .lock()
                .insert(topic.clone(), (generation, None));
            if let Some((_, Some(task))) = old {
                task.abort();
            }
        }
        let i = self.inner.clone();
        self.inner.rt.spawn(async move {
            let result = i.open(part, topic.clone(), generation).await;
            if result.is_err() {
                i.close_follow(&topic, generation);
            }
            i.emit(part, Event::Opened { topic, result }).await;
        });
    }

    fn announce(&self, stats: Bytes) {
        if !self.inner.connected() {
            return;
        }
        let i = self.inner.clone();
        self.inner.rt.spawn(async move {
            let mut headers = HeaderMap::new();
            headers.insert(H_NODE, i.settings.node_id.as_str());
            if let Err(e) = i
                .client
                .publish_with_headers(i.nodes_subject(), headers, stats)
                .await
            {
                tracing::debug!(error = %e, "cannot announce this node's stats");
            }
        });
    }

    fn peers(&self, max_age: Duration) -> Vec<Peer> {
        let now = std::time::Instant::now();
        let mut peers = self.inner.peers.lock();
        peers.retain(|_, (at, _)| now.duration_since(*at) <= max_age);
        let mut out: Vec<Peer> = peers
            .iter()
            .map(|(node, (at, stats))| Peer {
                node_id: node.clone(),
                age: now.duration_since(*at),
                stats: stats.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    fn close(&self, _part: usize, topic: Arc<str>) {
        if let Some((_, Some(task))) = self.inner.follows.lock().remove(&topic) {
            task.abort();
        }
    }

    fn fetch(&self, part: usize, topic: Arc<str>, after: u64) {
        let i = self.inner.clone();
        self.inner.rt.spawn(async move {
            let result = if i.connected() {
                i.fetch(&topic, after).await
            } else {
                Err(BrokerError::Unavailable)
            };
            i.emit(
                part,
                Event::Fetched {
                    topic,
                    after,
                    result,
                },
            )
            .await;
        });
    }

    fn history(&self, part: usize, topic: Arc<str>, down_to_seq: u64) {
        let i = self.inner.clone();
        self.inner.rt.spawn(async move {
            let result = if i.connected() {
                i.history(&topic, down_to_seq).await
            } else {
                Err(BrokerError::Unavailable)
            };
            i.emit(part, Event::History { topic, result }).await;
        });
    }

    fn connected(&self) -> bool {
        self.inner.connected()
    }

    fn max_record_bytes(&self) -> usize {
        match self.inner.max_payload.load(Ordering::Relaxed) {
            0 => usize::MAX,
            n => n.saturating_sub(HEADER_ROOM),
        }
    }

    fn describe(&self) -> BrokerInfo {
        BrokerInfo {
            kind: "nats",
            node_id: self.inner.settings.node_id.clone(),
            connected: self.inner.connected(),
        }
    }
}

impl Inner {
    fn close_follow(&self, topic: &Arc<str>, generation: u64) {
        let mut follows = self.follows.lock();
        if follows.get(topic).is_some_and(|(g, _)| *g == generation) {
            if let Some((_, Some(task))) = follows.remove(topic) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_subjects() {
        let p = "herald.c1.d.";
        assert_eq!(subject(p, "md.BTC-USD"), "herald.c1.d.md~BTC-USD");
        for t in ["md.BTC-USD", "a", "x.y.z", "chat.room_1:a-b"] {
            assert_eq!(topic_of_subject(p, &subject(p, t)).as_deref(), Some(t));
        }
        assert_eq!(topic_of_subject(p, "herald.c2.d.a"), None);
        assert_eq!(topic_of_subject(p, "herald.c1.d."), None);
        assert_eq!(topic_of_subject(p, "herald.c1.d.a b"), None);
    }

    /// Regression (fuzz/topic_pattern): the wildcard subscription matches
    /// subjects of several tokens, and `prefix.a.b` decoded to topic `a.b`,
    /// whose subject is `prefix.a~b`: two subjects for one topic.
    #[test]
    fn only_the_canonical_subject_names_a_topic() {
        let p = "herald.c1.d.";
        assert_eq!(topic_of_subject(p, "herald.c1.d.md.BTC-USD"), None);
        assert_eq!(topic_of_subject(p, "herald.c1.d.md~BTCchat.-U"), None);
    }
}
