//! What a home owns: the topics of one partition. Sans-IO: the home task
//! ([`super::home`]) feeds it messages, broker events and `now`, and carries
//! out the [`Effect`]s it pushes into the caller's buffer.
//!
//! Per topic it keeps what this node knows: the last seq and the epoch, the
//! history ring of encoded frames, and how many subscriptions each shard has.
//! In cluster mode a topic also has a [`Link`] to its log in the broker: the
//! publications waiting to be appended (one batch in flight at a time, so a
//! feed's order is the log's order), and how far this node has followed the
//! log (`Follow`), so that a record that arrives out of order, twice, or
//! after a gap is never delivered as if nothing happened.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::ring::Ring;
use super::{BarrierToken, HubError, SessionKey, SubscribeAck};
use crate::broker::{self, Appended, BrokerError, Fetched, Record, Tail};
use crate::wire::client::publication_frame;

/// The shards a frame goes to. Inline for up to 8 shards.
pub type Targets = SmallVec<[u16; 8]>;

/// Records held back per topic while it is being opened or caught up; the
/// ones beyond are fetched from the log again.
const MAX_EARLY: usize = 4096;

/// Who waits for the outcome of a publication.
#[derive(Debug, Default)]
pub enum Origin {
    #[default]
    None,
    /// The operator API or a client PUBLISH: wants the seq.
    Waiter(oneshot::Sender<Result<u64, HubError>>),
    /// A feed connection: told only when something it sent was refused.
    Feed(Arc<FeedStatus>),
}

/// Shared between a feed's connection and the homes: set when one of its
/// publications could not be placed in the cluster.
#[derive(Debug, Default)]
pub struct FeedStatus {
    /// 0: fine; else the error, see `code`.
    error: AtomicU8,
}

impl FeedStatus {
    pub fn failed(&self) -> bool {
        self.error().is_some()
    }

    /// Why the feed's publication was refused (the first reason wins).
    pub fn error(&self) -> Option<HubError> {
        match self.error.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(HubError::Unavailable),
            2 => Some(HubError::TooLarge),
            _ => Some(HubError::Closed),
        }
    }

    pub fn fail(&self, e: HubError) {
        let code = match e {
            HubError::Unavailable => 1,
            HubError::TooLarge => 2,
            HubError::Closed => 3,
        };
        let _ = self
            .error
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A SUBSCRIBE as the home sees it.
#[derive(Debug)]
pub struct SubscribeReq {
    pub shard: usize,
    pub session: SessionKey,
    pub id: u32,
    /// `since` and `epoch` of a recovering SUBSCRIBE.
    pub recover: Option<(u64, Option<Box<str>>)>,
}

/// What the home task must do after a call.
#[derive(Debug)]
pub enum Effect {
    /// Send the frame to the delivery inbox of each shard in `to`.
    Deliver {
        topic: Arc<str>,
        frame: Bytes,
        at: Instant,
        to: Targets,
    },
    /// Send the SUBSCRIBE's answer to the shard of the subscriber, on the
    /// channel the topic's deliveries travel on.
    Ack {
        shard: usize,
        ack: Box<SubscribeAck>,
    },
    /// Tell the waiter of a publication how it went.
    Resolve {
        origin: Origin,
        result: Result<u64, HubError>,
    },
    /// Broker: append a batch ([`broker::Broker::append`]).
    Append {
        topic: Arc<str>,
        expect: Option<Tail>,
        payloads: Vec<Bytes>,
    },
    /// Broker: start following the topic (first local subscriber).
    Open(Arc<str>),
    /// Broker: stop following it (last local subscriber gone).
    Close(Arc<str>),
    /// Broker: read the log after `after`.
    Fetch { topic: Arc<str>, after: u64 },
    /// Broker: read the log back to `down_to_seq` (recovery).
    History { topic: Arc<str>, down_to_seq: u64 },
    /// This node cannot continue the topic's stream without a gap: close
    /// its subscribers on these shards with 1001, so that they subscribe
    /// again and learn `recovered: false`.
    Evict { topic: Arc<str>, to: Targets },
}

/// A publication sequenced locally ([`HomeState::publish`]).
pub struct Publication<'a> {
    pub seq: u64,
    pub frame: Bytes,
    pub topic: &'a Arc<str>,
    pub targets: &'a [u16],
}

/// How far this node follows a topic's log.
#[derive(Debug)]
enum Follow {
    /// No local subscriber: records are not followed; seq/epoch may be stale.
    Closed,
    /// Waiting for the tail ([`broker::Event::Opened`]).
    Opening { early: Vec<Record> },
    /// Every record up to `offset` applied.
    Live { offset: u64 },
    /// A gap after `offset`: fetching; later records wait in `early`.
    CatchingUp {
        offset: u64,
        early: Vec<Record>,
        fetching: bool,
    },
}

#[derive(Debug)]
enum Entry {
    Pub {
        payload: Bytes,
        origin: Origin,
    },
    /// Released once everything queued before it is resolved.
    Barrier(#[allow(dead_code)] BarrierToken),
}

/// A topic's link to its log in the broker (cluster mode).
#[derive(Debug)]
struct Link {
    follow: Follow,
    /// SUBSCRIBEs waiting for the tail or for history.
    waiting: Vec<SubscribeReq>,
    history_pending: bool,
    queue: VecDeque<Entry>,
    /// The batch being appended (empty: none).
    inflight: Vec<Entry>,
    busy: bool,
    /// Where this node last saw the log end from its own appends.
    expect: Option<Tail>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            follow: Follow::Closed,
            waiting: Vec::new(),
            history_pending: false,
            queue: VecDeque::new(),
            inflight: Vec::new(),
            busy: false,
            expect: None,
        }
    }
}

impl Link {
    fn idle(&self) -> bool {
        !self.busy && self.queue.is_empty() && self.waiting.is_empty()
    }
}

/// A topic as its home sees it.
struct Topic {
    /// The canonical name, shared with every delivery of this topic.
    name: Arc<str>,
    seq: u64,
    epoch: Arc<str>,
    ring: Ring,
    /// Subscriptions per shard.
    interest: Box<[u32]>,
    /// Shards whose count is above zero.
    targets: Targets,
    subscribers: u64,
    last_active: Instant,
    link: Option<Box<Link>>,
}

impl Topic {
    fn serve_local(&self, req: SubscribeReq) -> Effect {
        let mut recovered = false;
        let mut replay = Vec::new();
        if let Some((since, Some(epoch))) = &req.recover {
            if **epoch == *self.epoch {
                if let Some(frames) = self.ring.replay(*since, self.seq) {
                    replay.extend(frames.cloned());
                    recovered = true;
                }
            }
        }
        Effect::Ack {
            shard: req.shard,
            ack: Box::new(SubscribeAck {
                topic: self.name.clone(),
                session: req.session,
                id: req.id,
                seq: self.seq,
                epoch: self.epoch.clone(),
                recovered,
                replay,
                error: None,
            }),
        }
    }

    /// Whether serving `req` needs publications older than the ring holds
    /// (and the log may still have them).
    fn needs_history(&self, req: &SubscribeReq) -> bool {
        match &req.recover {
            Some((since, Some(epoch))) => {
                **epoch == *self.epoch
                    && *since < self.seq
                    && self.ring.replay(*since, self.seq).is_none()
            }
            _ => false,
        }
    }

    /// Answers a SUBSCRIBE of a followed topic (cluster mode), asking the
    /// broker for history first if the ring does not reach back far enough.
    fn serve_followed(&mut self, req: SubscribeReq, out: &mut Vec<Effect>) {
        if !self.needs_history(&req) {
            out.push(self.serve_local(req));
            return;
        }
        let down_to_seq = req.recover.as_ref().map_or(0, |r| r.0 + 1);
        let Some(link) = self.link.as_mut() else {
            return;
        };
        link.waiting.push(req);
        if !link.history_pending {
            link.history_pending = true;
            out.push(Effect::History {
                topic: self.name.clone(),
                down_to_seq,
            });
        }
    }

    fn best_expect(&self) -> Option<Tail> {
        let link = self.link.as_ref()?;
        let followed = match link.follow {
            Follow::Live { offset } if offset > 0 => Some(Tail {
                epoch: self.epoch.clone(),
                seq: self.seq,
                offset,
            }),
            _ => None,
        };
        match (followed, &link.expect) {
            (Some(f), Some(e)) if e.offset > f.offset => Some(e.clone()),
            (Some(f), _) => Some(f),
            (None, e) => e.clone(),
        }
    }
}

/// The topics of one home partition.
pub struct HomeState {
    shards: usize,
    history: usize,
    idle_ttl: Duration,
    cluster: Option<ClusterSettings>,
    topics: HashMap<Arc<str>, Topic>,
    /// Cluster: payload bytes queued or in flight.
    pending_bytes: usize,
    /// Cluster: the largest record body the broker takes.
    record_limit: usize,
    metrics: Option<crate::metrics::HomeMetrics>,
}

#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// Record bytes (payloads + framing) per appended batch at most.
    pub max_batch_bytes: usize,
}

impl HomeState {
    /// A home for one node on its own: it assigns seqs itself.
    pub fn new(shards: usize, history: usize, idle_ttl: Duration) -> Self {
        HomeState {
            shards,
            history,
            idle_ttl,
            cluster: None,
            topics: HashMap::new(),
            pending_bytes: 0,
            record_limit: usize::MAX,
            metrics: None,
        }
    }

    /// A home of a cluster node: seqs come from the topic logs in the
    /// broker.
    pub fn new_cluster(
        shards: usize,
        history: usize,
        idle_ttl: Duration,
        settings: ClusterSettings,
    ) -> Self {
        HomeState {
            cluster: Some(settings),
            metrics: Some(crate::metrics::HomeMetrics::new()),
            ..HomeState::new(shards, history, idle_ttl)
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Cluster: payload bytes waiting to be appended or in flight.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The last seq and epoch this node knows for `topic`.
    pub fn position(&self, topic: &str) -> Option<(u64, Arc<str>)> {
        self.topics.get(topic).map(|t| (t.seq, t.epoch.clone()))
    }

    fn topic(&mut self, name: &Arc<str>, now: Instant) -> &mut Topic {
        // Look up by `&str` first so the common case (topic exists) does not
        // touch the key's refcount.
        if !self.topics.contains_key(&**name) {
            let cluster = self.cluster.is_some();
            let t = Topic {
                name: name.clone(),
                seq: 0,
                // A cluster topic's epoch comes from its log.
                epoch: if cluster {
                    Arc::from("")
                } else {
                    broker::new_epoch()
                },
                ring: Ring::new(self.history),
                interest: vec![0; self.shards].into_boxed_slice(),
                targets: Targets::new(),
                subscribers: 0,
                last_active: now,
                link: cluster.then(Box::default),
            };
            self.topics.insert(name.clone(), t);
        }
        let t = self
            .topics
            .get_mut(&**name)
            .expect("present: inserted above when missing");
        t.last_active = now;
        t
    }

    /// Sequences and encodes one publication (one node: the home is the
    /// topic's only writer).
    pub fn publish(&mut self, topic: &Arc<str>, payload: &[u8], now: Instant) -> Publication<'_> {
        debug_assert!(self.cluster.is_none(), "cluster homes append to the log");
        let t = self.topic(topic, now);
        t.seq += 1;
        let frame = publication_frame(&t.name, t.seq, payload);
        t.ring.push(t.seq, frame.clone());
        Publication {
            seq: t.seq,
            frame,
            topic: &t.name,
            targets: &t.targets,
        }
    }

    pub fn subscribe(
        &mut self,
        topic: &Arc<str>,
        req: SubscribeReq,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let t = self.topic(topic, now);
        if let Some(n) = t.interest.get_mut(req.shard) {
            *n += 1;
            if *n == 1 {
                t.targets.push(req.shard as u16);
            }
        }
        t.subscribers += 1;
        let Some(link) = t.link.as_mut() else {
            out.push(t.serve_local(req));
            return;
        };
        match link.follow {
            Follow::Closed => {
                link.follow = Follow::Opening { early: Vec::new() };
                link.waiting.push(req);
                out.push(Effect::Open(t.name.clone()));
            }
            Follow::Opening { .. } => link.waiting.push(req),
            Follow::Live { .. } | Follow::CatchingUp { .. } => t.serve_followed(req, out),
        }
    }

    /// One subscription of `shard` ended.
    pub fn unsubscribe(&mut self, topic: &str, shard: usize, now: Instant, out: &mut Vec<Effect>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        t.last_active = now;
        if let Some(n) = t.interest.get_mut(shard) {
            if *n == 0 {
                return;
            }
            *n -= 1;
            if *n == 0 {
                t.targets.retain(|s| *s as usize != shard);
            }
        }
        t.subscribers = t.subscribers.saturating_sub(1);
        if t.subscribers == 0 {
            if let Some(link) = t.link.as_mut() {
                if !matches!(link.follow, Follow::Closed) && link.waiting.is_empty() {
                    link.follow = Follow::Closed;
                    out.push(Effect::Close(t.name.clone()));
                }
            }
        }
    }

    /// Forgets topics nobody subscribes to that have been quiet for the idle
    /// TTL. On one node, their next use starts a new epoch, which is what
    /// the contract says a lost history looks like; in a cluster the log
    /// keeps the topic, and this node re-reads its tail on next use.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.idle_ttl;
        let before = self.topics.len();
        self.topics.retain(|_, t| {
            t.subscribers > 0
                || now.duration_since(t.last_active) < ttl
                || t.link.as_ref().is_some_and(|l| !l.idle())
        });
        before - self.topics.len()
    }

    /// Cluster: a barrier passes each topic once everything queued before
    /// it has been appended (or refused). The token is released when the
    /// last clone is dropped.
    pub fn barrier(&mut self, token: BarrierToken) {
        for t in self.topics.values_mut() {
            if let Some(link) = t.link.as_mut() {
                if link.busy || !link.queue.is_empty() {
                    link.queue.push_back(Entry::Barrier(token.clone()));
                }
            }
        }
    }

    /// Cluster: queues a publication for the topic's log; refused at once
    /// while the broker is unreachable (`connected` false).
    pub fn enqueue(
        &mut self,
        topic: &Arc<str>,
        payload: Bytes,
        origin: Origin,
        connected: bool,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        if !connected {
            self.refuse(origin, HubError::Unavailable, out);
            return;
        }
        let max = self.max_batch_bytes();
        self.pending_bytes += payload.len();
        let t = self.topic(topic, now);
        let Some(link) = t.link.as_mut() else {
            return;
        };
        link.queue.push_back(Entry::Pub { payload, origin });
        Self::start_batch(t, max, out);
    }

    /// Cluster: the largest record body the broker takes (its message
    /// size limit less the headers); batches stay below it.
    pub fn set_record_limit(&mut self, bytes: usize) {
        self.record_limit = bytes;
    }

    /// Body bytes of a batch at most: framing included, so that a batch
    /// the home forms always fits the broker's message limit.
    fn max_batch_bytes(&self) -> usize {
        self.cluster
            .map_or(usize::MAX, |c| c.max_batch_bytes)
            .min(self.record_limit)
    }

    fn refuse(&self, origin: Origin, error: HubError, out: &mut Vec<Effect>) {
        if let Some(m) = &self.metrics {
            m.refused.increment(1);
        }
        out.push(Effect::Resolve {
            origin,
            result: Err(error),
        });
    }

    /// Sends the next batch of the topic if none is in flight.
    fn start_batch(t: &mut Topic, max_bytes: usize, out: &mut Vec<Effect>) {
        let expect = t.best_expect();
        let Some(link) = t.link.as_mut() else { return };
        if link.busy {
            return;
        }
        // Barriers with nothing before them pass at once.
        while matches!(link.queue.front(), Some(Entry::Barrier(_))) {
            link.queue.pop_front();
        }
        let mut bytes = 0;
        let mut payloads = Vec::new();
        while let Some(e) = link.queue.front() {
            if let Entry::Pub { payload, .. } = e {
                let len = payload.len() + broker::codec::OVERHEAD;
                if !payloads.is_empty() && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                payloads.push(payload.clone());
            }
            if let Some(e) = link.queue.pop_front() {
                link.inflight.push(e);
            }
        }
        if payloads.is_empty() {
            link.inflight.clear();
            return;
        }
        link.busy = true;
        out.push(Effect::Append {
            topic: t.name.clone(),
            expect,
            payloads,
        });
    }

    /// Applies what the broker reported.
    pub fn on_event(&mut self, event: broker::Event, now: Instant, out: &mut Vec<Effect>) {
        match event {
            broker::Event::Record { topic, record } => self.on_record(&topic, record, now, out),
            broker::Event::Appended { topic, result } => self.on_appended(&topic, result, out),
            broker::Event::Opened { topic, result } => self.on_opened(&topic, result, now, out),
            broker::Event::Fetched {
                topic,
                after,
                result,
            } => self.on_fetched(&topic, after, result, now, out),
            broker::Event::History { topic, result } => self.on_history(&topic, result, out),
            broker::Event::Reconnected => {
                for t in self.topics.values_mut() {
                    let Some(link) = t.link.as_mut() else {
                        continue;
                    };
                    link.expect = None;
                    if let Follow::Live { offset } = link.follow {
                        // Records may have been stored while we could not
                        // hear them: read the log from where we are.
                        link.follow = Follow::CatchingUp {
                            offset,
                            early: Vec::new(),
                            fetching: true,
                        };
                        out.push(Effect::Fetch {
                            topic: t.name.clone(),
                            after: offset,
                        });
                    }
                }
            }
            broker::Event::Disconnected => {
                for t in self.topics.values_mut() {
                    if let Some(link) = t.link.as_mut() {
                        // The log may restart under us (a NATS without its
                        // store): never append after a tail read before.
                        link.expect = None;
                    }
                }
            }
        }
    }

    /// Retries what an outage left undone: catch-ups whose fetch failed
    /// (only while the broker is reachable, `connected`).
    pub fn tick(&mut self, _now: Instant, connected: bool, out: &mut Vec<Effect>) {
        if !connected {
            return;
        }
        for t in self.topics.values_mut() {
            if let Some(link) = t.link.as_mut() {
                if let Follow::CatchingUp {
                    offset, fetching, ..
                } = &mut link.follow
                {
                    if !*fetching {
                        *fetching = true;
                        out.push(Effect::Fetch {
                            topic: t.name.clone(),
                            after: *offset,
                        });
                    }
                }
            }
        }
    }

    fn on_appended(
        &mut self,
        topic: &str,
        result: Result<Appended, BrokerError>,
        out: &mut Vec<Effect>,
    ) {
        let max = self.max_batch_bytes();
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(link) = t.link.as_mut() else { return };
        link.busy = false;
        let mut resolved = 0;
        let mut refused = 0;
        match result {
            Ok(a) => {
                let mut seq = a.first_seq;
                for e in link.inflight.drain(..) {
                    if let Entry::Pub { payload, origin } = e {
                        resolved += payload.len();
                        out.push(Effect::Resolve {
                            origin,
                            result: Ok(seq),
                        });
                        seq += 1;
                    }
                }
                link.expect = Some(a.tail);
            }
            Err(e) => {
                let error = match e {
                    BrokerError::TooLarge => HubError::TooLarge,
                    _ => HubError::Unavailable,
                };
                // What follows a refused publication is refused too: a
                // feed's later frames must not overtake its earlier ones.
                let rest: Vec<Entry> = if e == BrokerError::TooLarge {
                    Vec::new()
                } else {
                    link.queue.drain(..).collect()
                };
                for e in link.inflight.drain(..).chain(rest) {
                    if let Entry::Pub { payload, origin } = e {
                        resolved += payload.len();
                        refused += 1;
                        out.push(Effect::Resolve {
                            origin,
                            result: Err(error),
                        });
                    }
                }
                link.expect = None;
            }
        }
        self.pending_bytes = self.pending_bytes.saturating_sub(resolved);
        if refused > 0 {
            if let Some(m) = &self.metrics {
                m.refused.increment(refused);
            }
        }
        Self::start_batch(t, max, out);
    }

    fn on_opened(
        &mut self,
        topic: &str,
        result: Result<Tail, BrokerError>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(link) = t.link.as_mut() else { return };
        let Follow::Opening { early } = &mut link.follow else {
            // Closed meanwhile, or a second answer for a reopened topic.
            return;
        };
        let early = std::mem::take(early);
        match result {
            Ok(tail) => {
                if t.epoch != tail.epoch || t.seq != tail.seq {
                    t.ring.clear();
                }
                t.epoch = tail.epoch;
                t.seq = tail.seq;
                link.follow = Follow::Live {
                    offset: tail.offset,
                };
                let waiting = std::mem::take(&mut link.waiting);
                for req in waiting {
                    t.serve_followed(req, out);
                }
                for r in early {
                    self.on_record(topic, r, now, out);
                }
            }
            Err(e) => {
                link.follow = Follow::Closed;
                let code = if e == BrokerError::Unavailable {
                    503
                } else {
                    500
                };
                for req in std::mem::take(&mut link.waiting) {
                    out.push(Effect::Ack {
                        shard: req.shard,
                        ack: Box::new(SubscribeAck {
                            topic: t.name.clone(),
                            session: req.session,
                            id: req.id,
                            seq: 0,
                            epoch: t.epoch.clone(),
                            recovered: false,
                            replay: Vec::new(),
                            error: Some(code),
                        }),
                    });
                }
            }
        }
    }

    fn on_history(
        &mut self,
        topic: &str,
        result: Result<Vec<Record>, BrokerError>,
        out: &mut Vec<Effect>,
    ) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(link) = t.link.as_mut() else { return };
        link.history_pending = false;
        if let Ok(records) = result {
            // Frames older than the ring, of this epoch, up to what this
            // node has applied (newer ones arrive as records).
            let oldest_held = if t.ring.is_empty() {
                t.seq + 1
            } else {
                t.seq + 1 - t.ring.len() as u64
            };
            let mut older: Vec<(u64, Bytes)> = Vec::new();
            for r in records.iter().filter(|r| r.epoch == t.epoch) {
                for (i, p) in r.payloads().enumerate() {
                    let seq = r.first_seq + i as u64;
                    if seq < oldest_held {
                        older.push((seq, publication_frame(&t.name, seq, p)));
                    }
                }
            }
            t.ring.prepend(older, t.seq);
        }
        // Everyone waiting is answered now: with a replay where the ring
        // now reaches back, else `recovered: false`.
        let waiting = std::mem::take(&mut link.waiting);
        for req in waiting {
            out.push(t.serve_local(req));
        }
    }

    fn on_fetched(
        &mut self,
        topic: &str,
        after: u64,
        result: Result<Fetched, BrokerError>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(link) = t.link.as_mut() else { return };
        let Follow::CatchingUp {
            offset,
            early,
            fetching,
        } = &mut link.follow
        else {
            return;
        };
        if *offset != after {
            return;
        }
        *fetching = false;
        match result {
            Err(_) => {
                // Retried by `tick` once the broker is back.
            }
            Ok(Fetched::Records { records, more }) => {
                let early = std::mem::take(early);
                link.follow = Follow::Live { offset: after };
                for r in records {
                    self.on_record(topic, r, now, out);
                }
                let Some(link) = self.topics.get_mut(topic).and_then(|t| t.link.as_mut()) else {
                    return;
                };
                if more {
                    if let Follow::Live { offset } = link.follow {
                        link.follow = Follow::CatchingUp {
                            offset,
                            early,
                            fetching: true,
                        };
                        out.push(Effect::Fetch {
                            topic: Arc::from(topic),
                            after: offset,
                        });
                        return;
                    }
                }
                for r in early {
                    self.on_record(topic, r, now, out);
                }
            }
            Ok(Fetched::Moved(tail)) => {
                let early = std::mem::take(early);
                self.evict(topic, out);
                let Some(t) = self.topics.get_mut(topic) else {
                    return;
                };
                let Some(link) = t.link.as_mut() else { return };
                t.ring.clear();
                match tail {
                    Some(tail) => {
                        t.seq = tail.seq;
                        t.epoch = tail.epoch;
                        link.follow = Follow::Live {
                            offset: tail.offset,
                        };
                        for r in early {
                            self.on_record(topic, r, now, out);
                        }
                    }
                    None => {
                        // The topic's log is gone: start it again.
                        link.follow = Follow::Opening { early };
                        out.push(Effect::Open(t.name.clone()));
                    }
                }
            }
        }
    }

    /// Closes the topic's local subscribers (1001): they cannot be caught
    /// up without a gap.
    fn evict(&mut self, topic: &str, out: &mut Vec<Effect>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if let Some(m) = &self.metrics {
            m.resets.increment(1);
        }
        if !t.targets.is_empty() {
            out.push(Effect::Evict {
                topic: t.name.clone(),
                to: t.targets.clone(),
            });
        }
    }

    fn on_record(&mut self, topic: &str, r: Record, now: Instant, out: &mut Vec<Effect>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(link) = t.link.as_mut() else { return };
        let offset = match &mut link.follow {
            Follow::Closed => return,
            Follow::Opening { early } | Follow::CatchingUp { early, .. } => {
                if early.len() < MAX_EARLY {
                    early.push(r);
                }
                return;
            }
            Follow::Live { offset } => *offset,
        };
        if r.epoch != t.epoch {
            // The topic's log started over (history lost): a new epoch.
            self.evict(topic, out);
            let Some(t) = self.topics.get_mut(topic) else {
                return;
            };
            t.epoch = r.epoch.clone();
            t.seq = r.first_seq - 1;
            t.ring.clear();
            self.apply(topic, r, now, out);
            return;
        }
        if r.offset <= offset {
            return;
        }
        if r.prev != offset {
            if let Some(m) = &self.metrics {
                m.catchups.increment(1);
            }
            link.follow = Follow::CatchingUp {
                offset,
                early: vec![r],
                fetching: true,
            };
            out.push(Effect::Fetch {
                topic: t.name.clone(),
                after: offset,
            });
            return;
        }
        if r.first_seq != t.seq + 1 {
            // A chain that does not add up (should not happen: the log's
            // compare-and-set forbids it). Never deliver a wrong seq.
            tracing::error!(
                topic,
                first = r.first_seq,
                last = t.seq,
                "log record out of sequence; resetting the topic"
            );
            self.evict(topic, out);
            let Some(t) = self.topics.get_mut(topic) else {
                return;
            };
            t.seq = r.first_seq - 1;
            t.ring.clear();
        }
        self.apply(topic, r, now, out);
    }

    /// Delivers a record that follows what this node applied.
    fn apply(&mut self, topic: &str, r: Record, now: Instant, out: &mut Vec<Effect>) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        for p in r.payloads() {
            t.seq += 1;
            let frame = publication_frame(&t.name, t.seq, p);
            t.ring.push(t.seq, frame.clone());
            if !t.targets.is_empty() {
                out.push(Effect::Deliver {
                    topic: t.name.clone(),
                    frame,
                    at: now,
                    to: t.targets.clone(),
                });
            }
        }
        t.last_active = now;
        if let Some(link) = t.link.as_mut() {
            link.follow = Follow::Live { offset: r.offset };
        }
    }
}

#[cfg(test)]
mod tests;
