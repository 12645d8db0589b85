//! One shard per core: a thread with its own single-threaded tokio runtime
//! that owns its sessions, its local topic→subscribers index and its timers.
//!
//! A shard runs four kinds of tasks on one thread, sharing state through a
//! `RefCell` that is never held across an `.await`:
//! - the accept loop (its own `SO_REUSEPORT` listener) and the handshakes;
//! - one task per session (reads, requests, waiting for a full socket);
//! - the home task: sequences the topics this shard is home for (`hub`);
//! - the delivery task: takes batches of publications from the shard's
//!   inbox, links each frame to every local subscriber in a reusable arena,
//!   then writes each subscriber's frames with one vectored write.
//!
//! The delivery task never awaits a socket and never awaits another shard,
//! so shards cannot deadlock on each other: home tasks wait on delivery
//! inboxes, delivery tasks wait on nothing but their own inbox.

pub mod outbox;
mod session;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{spawn_local, LocalSet};

use crate::config::Config;
use crate::handler::Handler;
use crate::http::{accept, Accepted, Gate};
use crate::hub::{BarrierToken, HomeMsg, Hub, SessionKey, ShardMsg, SubscribeAck};
use crate::metrics::{self as m, ShardMetrics};
use crate::transport::Stream;
use crate::wire::client::{error_frame, subscribe_reply_frame};
use crate::wire::close::Close;
use crate::wire::topic::Patterns;
use outbox::{Kind, Policy};
use session::{Due, ReadyQueue, Session, Timing};

/// Process-wide state every shard reads.
pub struct Shared {
    pub config: Arc<Config>,
    pub gate: Gate,
    pub hub: Hub,
    pub handler: Arc<dyn Handler>,
    pub stats: Box<[ShardStats]>,
    next_session: AtomicU64,
}

impl AsRef<Gate> for Shared {
    fn as_ref(&self) -> &Gate {
        &self.gate
    }
}

impl Shared {
    pub fn new(config: Arc<Config>, gate: Gate, hub: Hub, handler: Arc<dyn Handler>) -> Self {
        let stats = (0..hub.shard_count())
            .map(|_| ShardStats::default())
            .collect();
        Shared {
            config,
            gate,
            hub,
            handler,
            stats,
            next_session: AtomicU64::new(1),
        }
    }
}

/// Counters a shard publishes for `/api/stats` (plain atomics; written by
/// the owning shard only).
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub subscriptions: AtomicU64,
    pub local_topics: AtomicU64,
    pub delivered: AtomicU64,
}

/// What the process tells its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Running,
    /// Stop accepting; sessions are being drained.
    Draining,
    /// Leave now: whatever is still open is dropped.
    Exit,
}

/// Settings copied out of the config once, for the hot path.
#[derive(Debug, Clone)]
struct Settings {
    max_message: usize,
    max_subscriptions: usize,
    max_outbox: usize,
    msgs_per_s: u32,
    burst: u32,
    strikes: u32,
    handshake: Duration,
    max_header: usize,
    ping_interval: Duration,
    pong_timeout: Duration,
    close: Duration,
    tick: Duration,
    leeway_s: u64,
    /// `[[slow_consumer]]`, compiled; first match wins.
    policies: Vec<(Patterns, Policy)>,
}

impl Settings {
    fn from(c: &Config) -> Self {
        Settings {
            max_message: c.limits.max_message_bytes,
            max_subscriptions: c.limits.max_subscriptions,
            max_outbox: c.limits.max_outbox_bytes,
            msgs_per_s: c.limits.client_msgs_per_s,
            burst: c.limits.client_burst,
            strikes: c.limits.rate_limit_strikes,
            handshake: Duration::from_millis(c.timeouts.handshake_ms),
            max_header: c.limits.max_header_bytes,
            ping_interval: Duration::from_millis(c.timeouts.ping_interval_ms),
            pong_timeout: Duration::from_millis(c.timeouts.pong_timeout_ms),
            close: Duration::from_millis(c.timeouts.close_ms),
            tick: Duration::from_millis(c.timeouts.tick_ms),
            leeway_s: c.auth.leeway_s,
            policies: c.slow_consumer_rules(),
        }
    }

    fn policy(&self, topic: &str) -> Policy {
        self.policies
            .iter()
            .find(|(p, _)| p.allows(topic))
            .map_or(Policy::Disconnect, |(_, policy)| *policy)
    }

    fn timing(&self) -> Timing {
        Timing {
            ping_interval_ms: self.ping_interval.as_millis() as u64,
            pong_timeout_ms: self.pong_timeout.as_millis() as u64,
            leeway_s: self.leeway_s,
        }
    }
}

/// Starts shard `id` on its own thread.
pub fn spawn(
    id: usize,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<ShardMsg>,
    listener: std::net::TcpListener,
    lifecycle: watch::Receiver<Lifecycle>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("herald-shard-{id}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "cannot build shard runtime");
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, run(id, shared, inbox, listener, lifecycle));
        })
}

async fn run(
    id: usize,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<ShardMsg>,
    listener: std::net::TcpListener,
    mut lifecycle: watch::Receiver<Lifecycle>,
) {
    let settings = Settings::from(&shared.config);
    let shard = Rc::new(Shard {
        id,
        shared,
        settings,
        st: RefCell::new(State::default()),
        m: ShardMetrics::new(id),
        ready: Arc::new(ReadyQueue::default()),
        epoch: Instant::now(),
    });
    match TcpListener::from_std(listener) {
        Ok(l) => {
            spawn_local(accept::serve(
                l,
                listener_for(&shard),
                running(lifecycle.clone()),
            ));
        }
        Err(e) => tracing::error!(shard = id, error = %e, "cannot register listener"),
    }
    spawn_local(delivery_task(shard.clone(), inbox));
    spawn_local(ticker(shard.clone()));
    spawn_local(reactor(shard.clone()));
    while *lifecycle.borrow_and_update() != Lifecycle::Exit {
        if lifecycle.changed().await.is_err() {
            break;
        }
    }
    // What is still open missed the drain deadline: dropping the LocalSet
    // (on return) drops its task and socket, so its close is reported here.
    let left: Vec<Rc<Session>> = shard
        .st
        .borrow()
        .sessions
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    for s in left {
        session::abandon(&shard, &s);
    }
}

/// Completes when the shard must stop accepting.
async fn running(mut lifecycle: watch::Receiver<Lifecycle>) {
    while *lifecycle.borrow_and_update() == Lifecycle::Running {
        if lifecycle.changed().await.is_err() {
            return;
        }
    }
}

/// What the accept loop (`http::accept`) needs from this shard.
fn listener_for(shard: &Rc<Shard>) -> accept::Listener {
    let c = &shard.shared.config;
    let (s1, s2) = (shard.clone(), shard.clone());
    accept::Listener {
        shard: shard.id,
        gate: shard.shared.clone(),
        tls: shard.shared.gate.tls.clone(),
        handshake_timeout: shard.settings.handshake,
        max_header: shard.settings.max_header,
        max_pending: c.limits.max_pending_handshakes,
        on_handshake: Box::new(move |took| {
            s1.m.handshakes_ok.increment(1);
            s1.m.handshake.record(m::seconds(took));
        }),
        on_upgrade: Box::new(move |up| {
            s2.start_session(up.stream, up.leftover, up.accepted, up.peer);
        }),
    }
}

pub(crate) struct Shard {
    id: usize,
    shared: Arc<Shared>,
    settings: Settings,
    st: RefCell<State>,
    m: ShardMetrics,
    /// Sessions whose socket (or someone) asked for attention.
    ready: Arc<ReadyQueue>,
    epoch: Instant,
}

const NONE: u32 = u32::MAX;

/// One frame queued for one session in the current batch.
#[derive(Clone, Copy)]
pub(crate) struct Link {
    frame: u32,
    next: u32,
}

#[derive(Default)]
struct State {
    sessions: Slab<Rc<Session>>,
    generation: u32,
    /// Local subscribers per topic, with the topic's slow-consumer policy
    /// (looked up once, when the topic gets its first local subscriber).
    /// Each session knows its index in each list, so removal is O(1).
    topics: HashMap<Arc<str>, Local>,
    subscriptions: usize,
    draining: bool,
    batch: Batch,
}

struct Local {
    subs: Vec<Rc<Session>>,
    policy: Policy,
}

/// The current delivery batch. Reused by every batch, so delivery
/// allocates nothing once warm.
#[derive(Default)]
struct Batch {
    /// Per-session lists of frames, threaded through `Session::head/tail`.
    arena: Vec<Link>,
    frames: Vec<Bytes>,
    /// What each frame is, for a session that is behind; parallel to
    /// `frames` (one entry per publication, not per subscriber).
    kinds: Vec<Kind>,
    dirty: Vec<Rc<Session>>,
    /// Ingest time of each publication in the batch, for the latency
    /// histogram.
    at: Vec<Instant>,
}

impl Batch {
    /// Queues frame `fi` for `s` and counts the outcome in `acc`.
    fn enqueue(&mut self, s: &Rc<Session>, fi: u32, max_outbox: usize, acc: &mut WriteAcc) {
        let frame = &self.frames[fi as usize];
        let kind = &self.kinds[fi as usize];
        match s.enqueue(&mut self.arena, fi, frame, || kind.clone(), max_outbox, acc) {
            session::Enqueued::Closed => {
                acc.dropped_closed += 1;
                return;
            }
            session::Enqueued::Queued(outbox::Offer::Overflow) => return,
            session::Enqueued::Linked | session::Enqueued::Queued(_) => {}
        }
        if s.mark_dirty() {
            self.dirty.push(s.clone());
        }
        acc.delivered += 1;
    }

    fn push_frame(&mut self, frame: Bytes, kind: Kind) -> u32 {
        self.frames.push(frame);
        self.kinds.push(kind);
        (self.frames.len() - 1) as u32
    }
}

/// Per-batch write totals, added to the metrics once per batch.
#[derive(Default)]
pub(crate) struct WriteAcc {
    bytes: u64,
    syscalls: u64,
    delivered: u64,
    dropped_slow: u64,
    dropped_closed: u64,
    /// Queued publications dropped by `drop_oldest`.
    dropped_oldest: u64,
    /// Queued publications replaced by a newer one (`conflate`).
    conflated: u64,
}

const IOV_MAX: usize = 128;

/// Budget of one delivery batch: inbox messages, and frames queued to
/// sessions (8 bytes of arena each, so the arena stays under 4 MiB).
const MAX_BATCH_MSGS: usize = 8192;
const MAX_BATCH_LINKS: usize = 512 * 1024;

impl Shard {
    fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    fn start_session(
        self: &Rc<Self>,
        stream: Stream,
        leftover: Vec<u8>,
        acc: Accepted,
        peer: SocketAddr,
    ) {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let mut st = self.st.borrow_mut();
        st.generation = st.generation.wrapping_add(1);
        let generation = st.generation;
        let entry = st.sessions.vacant_entry();
        let key = SessionKey {
            slot: entry.key() as u32,
            generation,
        };
        let s = Rc::new(Session::new(
            key,
            id,
            peer,
            stream,
            acc,
            self.ready.clone(),
            &self.settings,
            leftover,
            self.now_ms(),
        ));
        entry.insert(s.clone());
        let n = st.sessions.len();
        let draining = st.draining;
        drop(st);
        self.stats().connections.store(n as u64, Ordering::Relaxed);
        self.m.connections.set(n as f64);
        let opened = {
            let claims = s.claims();
            self.shared.handler.on_open(&crate::handler::SessionInfo {
                id,
                shard: self.id,
                peer,
                claims: &claims,
            })
        };
        if let Err(rej) = opened {
            s.close(Close::PolicyViolation, &rej.message);
        } else if draining {
            // Upgraded while the drain order went out: same fate as the rest.
            s.close(Close::GoingAway, Close::GoingAway.reason());
        }
        // First drive: registers the socket's readiness, parses leftovers.
        s.schedule();
    }

    fn session(st: &State, key: SessionKey) -> Option<&Rc<Session>> {
        st.sessions.get(key.slot as usize).filter(|s| s.key == key)
    }

    /// Adds a subscription the topic's home acknowledged: index it, queue the
    /// REPLY and any replay, and wake the session's pending request.
    fn activate(&self, st: &mut State, ack: SubscribeAck) {
        let Some(s) = Self::session(st, ack.session).cloned() else {
            self.release_interest(ack.topic);
            return;
        };
        if !s.is_open() {
            self.release_interest(ack.topic);
            s.resume();
            return;
        }
        if let Some(code) = ack.error {
            self.release_interest(ack.topic);
            m::client_error(code);
            let msg = if code == 503 {
                "the cluster broker is unreachable"
            } else {
                "cannot subscribe"
            };
            self.send(&s, error_frame(ack.id, code, msg));
            s.resume();
            return;
        }
        let local = st.topics.entry(ack.topic.clone()).or_insert_with(|| Local {
            subs: Vec::new(),
            policy: self.settings.policy(&ack.topic),
        });
        s.add_subscription(ack.topic.clone(), local.subs.len() as u32);
        local.subs.push(s.clone());
        st.subscriptions += 1;
        self.publish_sub_counts(st);
        // The REPLY and the replay travel like deliveries, so they precede
        // any live publication queued after them in this batch.
        let max = self.settings.max_outbox;
        let b = &mut st.batch;
        let reply = subscribe_reply_frame(ack.id, ack.seq, &ack.epoch, ack.recovered);
        // A reply and a replay are not live deliveries: not counted as such.
        let mut acc = WriteAcc::default();
        // Neither is ever dropped or conflated (PROTOCOL.md §8).
        let fi = b.push_frame(reply, Kind::Reply);
        b.enqueue(&s, fi, max, &mut acc);
        for f in ack.replay {
            let fi = b.push_frame(f, Kind::Reply);
            b.enqueue(&s, fi, max, &mut acc);
        }
        self.count_policies(&acc);
        s.resume();
    }

    fn publish_sub_counts(&self, st: &State) {
        self.stats()
            .subscriptions
            .store(st.subscriptions as u64, Ordering::Relaxed);
        self.stats()
            .local_topics
            .store(st.topics.len() as u64, Ordering::Relaxed);
        self.m.subscriptions.set(st.subscriptions as f64);
    }

    /// Removes `s` from the local index of `topic`. Returns false if it was
    /// not subscribed.
    fn remove_sub(&self, st: &mut State, s: &Session, topic: &str) -> bool {
        let Some(pos) = s.remove_subscription(topic) else {
            return false;
        };
        let pos = pos as usize;
        if let Some(local) = st.topics.get_mut(topic) {
            let list = &mut local.subs;
            if pos < list.len() {
                list.swap_remove(pos);
                if let Some(moved) = list.get(pos) {
                    moved.move_subscription(topic, pos as u32);
                }
            }
            if list.is_empty() {
                st.topics.remove(topic);
            }
        }
        st.subscriptions -= 1;
        self.publish_sub_counts(st);
        true
    }

    /// Tells a topic's home that one subscription of this shard ended, from
    /// a context that must not await.
    fn release_interest(&self, topic: Arc<str>) {
        let tx = self.shared.hub.home_sender(&topic);
        let msg = HomeMsg::Unsubscribe {
            topic: topic.clone(),
            shard: self.id,
        };
        if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
            let tx = tx.clone();
            // Interest counts commute, so arriving late is harmless.
            spawn_local(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Adds one inbox message to the current batch (or acts on it).
    fn take(
        &self,
        st: &mut State,
        msg: ShardMsg,
        max_outbox: usize,
        acc: &mut WriteAcc,
        barriers: &mut Vec<BarrierToken>,
    ) {
        match msg {
            ShardMsg::Deliver { topic, frame, at } => {
                let State { topics, batch, .. } = st;
                let Some(local) = topics.get(&topic) else {
                    return;
                };
                let fi = batch.push_frame(frame, Kind::publication(local.policy, &topic));
                batch.at.push(at);
                for s in &local.subs {
                    batch.enqueue(s, fi, max_outbox, acc);
                }
            }
            ShardMsg::Subscribed(ack) => self.activate(st, *ack),
            ShardMsg::Evict { topic } => {
                if let Some(local) = st.topics.get(&topic) {
                    for s in &local.subs {
                        if s.is_open() {
                            s.close(
                                Close::GoingAway,
                                "topic stream interrupted; subscribe again",
                            );
                        }
                    }
                }
            }
            ShardMsg::Barrier(token) => barriers.push(token),
            ShardMsg::Disconnect { user, reply } => {
                let mut n = 0;
                for (_, s) in st.sessions.iter() {
                    if s.is_open() && s.claims().sub == user {
                        s.close(Close::Disconnected, Close::Disconnected.reason());
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            ShardMsg::Drain => {
                st.draining = true;
                for (_, s) in st.sessions.iter() {
                    s.close(Close::GoingAway, Close::GoingAway.reason());
                }
            }
        }
    }

    /// Writes everything the batch queued, one vectored write per session
    /// as long as the socket takes it.
    fn flush_batch(&self, b: &mut Batch, acc: &mut WriteAcc) {
        for s in &b.dirty {
            s.flush(&b.arena, &b.frames, &b.kinds, self.settings.max_outbox, acc);
        }
        b.dirty.clear();
        b.arena.clear();
        b.frames.clear();
        b.kinds.clear();
    }

    fn count_policies(&self, acc: &WriteAcc) {
        if acc.dropped_slow > 0 {
            self.m.dropped_slow.increment(acc.dropped_slow);
        }
        if acc.dropped_oldest > 0 {
            self.m.dropped_oldest.increment(acc.dropped_oldest);
        }
        if acc.conflated > 0 {
            self.m.conflated.increment(acc.conflated);
        }
    }

    /// Sends one frame outside a batch (replies, pings): straight to the
    /// socket when nothing is queued, else behind the queue.
    fn send(&self, s: &Session, frame: Bytes) {
        let acc = s.send(frame, self.settings.max_outbox);
        self.m.bytes_out.increment(acc.bytes);
        self.m.write_syscalls.increment(acc.syscalls);
        self.count_policies(&acc);
    }

    /// The shard's clock in milliseconds, starting at 1 (0 means "none").
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn tick(&self) {
        let now = self.now_ms();
        let unix = crate::auth::token::now_unix();
        let timing = self.settings.timing();
        let st = self.st.borrow();
        for (_, s) in st.sessions.iter() {
            match s.due(now, unix, timing) {
                Due::Nothing => {}
                Due::CloseTimedOut => s.abort_close(),
                Due::Expired => s.close(Close::TokenExpired, Close::TokenExpired.reason()),
                Due::PingTimeout => s.kill(crate::handler::TransportError::PingTimeout),
                Due::Ping => {
                    s.pinged(now);
                    self.send(s, crate::wire::ws::ping_frame());
                }
            }
        }
    }
}

/// Drives the sessions that are ready, in the order they became ready.
async fn reactor(shard: Rc<Shard>) {
    let mut keys = Vec::new();
    loop {
        shard.ready.notify.notified().await;
        shard.ready.take(&mut keys);
        for key in keys.drain(..) {
            let s = Shard::session(&shard.st.borrow(), key).cloned();
            if let Some(s) = s {
                session::drive(&shard, &s);
            }
        }
    }
}

async fn ticker(shard: Rc<Shard>) {
    let mut iv = tokio::time::interval(shard.settings.tick);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        iv.tick().await;
        shard.tick();
    }
}

/// Takes publications in batches and writes them to local subscribers.
async fn delivery_task(shard: Rc<Shard>, mut rx: mpsc::Receiver<ShardMsg>) {
    let mut inbox = Vec::with_capacity(256);
    let max_outbox = shard.settings.max_outbox;
    let mut barriers = Vec::new();
    let mut delivered_total: u64 = 0;
    while rx.recv_many(&mut inbox, 256).await > 0 {
        let start = Instant::now();
        let mut acc = WriteAcc::default();
        {
            let mut st = shard.st.borrow_mut();
            let st = &mut *st;
            // Take everything already waiting, within the batch budget: a
            // socket gets all of its frames of the batch in one write, so
            // when publications outrun the writes (many topics, few
            // subscribers each) a deeper batch means fewer syscalls per
            // delivery instead of a longer queue.
            let mut taken = 0;
            loop {
                taken += inbox.len();
                for msg in inbox.drain(..) {
                    shard.take(st, msg, max_outbox, &mut acc, &mut barriers);
                }
                // Messages that queue nothing (acks, barriers, a topic
                // nobody here wants any more) count too, so a producer as
                // fast as this loop cannot keep the batch open forever.
                if taken >= MAX_BATCH_MSGS || st.batch.arena.len() >= MAX_BATCH_LINKS {
                    break;
                }
                while inbox.len() < 256 {
                    match rx.try_recv() {
                        Ok(msg) => inbox.push(msg),
                        Err(_) => break,
                    }
                }
                if inbox.is_empty() {
                    break;
                }
            }
            shard.flush_batch(&mut st.batch, &mut acc);
        }
        // Barriers pass only after what came before them was written or
        // queued.
        barriers.clear();
        let end = Instant::now();
        {
            let mut st = shard.st.borrow_mut();
            let fan = m::seconds(end - start);
            for at in st.batch.at.drain(..) {
                shard
                    .m
                    .delivery_latency
                    .record(m::seconds(end.saturating_duration_since(at)));
                shard.m.fanout.record(fan);
            }
        }
        if acc.dropped_closed > 0 {
            shard.m.dropped_closed.increment(acc.dropped_closed);
        }
        if acc.delivered > 0 {
            delivered_total += acc.delivered;
            shard.m.delivered.increment(acc.delivered);
            shard
                .stats()
                .delivered
                .store(delivered_total, Ordering::Relaxed);
        }
        if acc.bytes > 0 {
            shard.m.bytes_out.increment(acc.bytes);
        }
        if acc.syscalls > 0 {
            shard.m.write_syscalls.increment(acc.syscalls);
        }
        shard.count_policies(&acc);
    }
}
