//! The subscriber side: one worker process holding its share of the
//! connections.
//!
//! A worker runs on one thread (a current-thread runtime and a `LocalSet`),
//! so its connection tasks share counters, the latency histogram and one
//! read buffer through `Cell`/`RefCell` without locks or atomics. Each
//! connection owns only its socket, its subscriptions and the bytes of a
//! frame that straddles two reads (usually none): reads go into the
//! worker's shared scratch buffer and are parsed there at once.
//!
//! Talk with the parent is line-based: the plan arrives as one JSON line on
//! stdin, `drain` (the publisher is done: slow readers stop being slow)
//! and `stop` (or EOF) follow on stdin; JSON events go to stdout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use herald::wire::client::{decode_server_message, encode_subscribe, ServerMessage, PUBLICATION};
use herald::wire::msgpack::Reader;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::plan::{self, TopicPlan, TopicSpec};
use crate::series::Series;
use crate::ws::{self, FailCause, Header};

/// Bytes taken from a socket per read. Shared by all connections of a
/// worker, so it can be generous: fewer syscalls under fan-out bursts.
const READ_CHUNK: usize = 64 << 10;

/// The most messages whose "last receive" (the latest subscriber's
/// publish→receive latency) is tracked one by one: two `u32` per message
/// per worker (800 KB at this cap) and about 1 MB of base64 in each
/// worker's result line. Longer runs report no `last_receive`.
pub const LAST_RX_MAX_MSGS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Receive until every expected publication arrived.
    Fanout,
    /// Only hold the connections until told to stop.
    Idle,
}

/// Where and how connections go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// herald protocol (subprotocol, JWT, SUBSCRIBE frames) or a raw peer
    /// (`GET {path}/sub/<topic>`, the whole message is the payload).
    pub herald: bool,
    /// herald: the WebSocket path (`/ws`); raw: a prefix before `/sub/`.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    None,
    /// Mint an HS256 token per connection: `sub` = `load-<i>`, topics `*`.
    Secret(String),
    /// One token per line, used round-robin.
    TokenFile(PathBuf),
}

/// Everything one worker needs, computed by the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: u32,
    pub kind: Kind,
    /// Connection i goes to `targets[i mod n]` (all herald or one peer).
    pub targets: Vec<Target>,
    pub auth: Auth,
    pub conn_start: u64,
    pub conn_count: u64,
    pub topic_names: Vec<String>,
    pub topics: TopicSpec,
    /// herald: send the SUBSCRIBEs (idle --no-subscribe: upgrade only).
    pub subscribe: bool,
    /// Messages the parent will publish (round-robin over the topics).
    pub msgs: u64,
    /// Width of the delivery time series' buckets, ms.
    pub sample_ms: u64,
    pub slow: SlowSpec,
    pub source_ips: u32,
    /// Connection attempts per second for this worker; 0 = all at once.
    pub connect_rate: f64,
    pub connect_timeout_ms: u64,
    /// Hard stop, wall clock.
    pub deadline_unix_ms: u64,
    /// Track each message's largest latency and receiver count (fanout,
    /// at most [`LAST_RX_MAX_MSGS`] messages, payloads carrying their
    /// per-topic index).
    #[serde(default)]
    pub track_msgs: bool,
}

impl WorkerPlan {
    /// herald's protocol (every target is herald, or the one is a peer).
    pub fn herald(&self) -> bool {
        self.targets.first().is_some_and(|t| t.herald)
    }
}

/// Slow readers: a share of the connections that sleep between reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlowSpec {
    /// Share of the connections that read slowly (0 = none).
    pub fraction: f64,
    /// Sleep after each read, ms.
    pub read_delay_ms: u64,
    /// Largest read, bytes.
    pub read_bytes: usize,
    /// SO_RCVBUF of their sockets, bytes (0 = the system's default).
    pub rcvbuf: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub worker: u32,
    pub attempted: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub connect_start_ms: u64,
    pub connect_end_ms: u64,
    pub expected: u64,
    /// Time to establish each connection (TCP + upgrade + SUBSCRIBE acks),
    /// µs, hdrhistogram V2, base64.
    #[serde(default)]
    pub connect_hist: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub worker: u32,
    pub open: u64,
    pub connected: u64,
    pub received: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub worker: u32,
    pub attempted: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub open_at_end: u64,
    pub expected: u64,
    /// Of `expected`: what the fast (not slow) connections must see.
    pub expected_fast: u64,
    /// Publications on subscribed topics, duplicates included.
    pub received: u64,
    /// `received` less duplicates: what counts as delivered.
    pub unique: u64,
    /// Of `unique`: to fast connections.
    pub unique_fast: u64,
    /// Slow readers in this worker's share, and how their connections ended.
    pub slow_conns: u64,
    pub closes_slow: BTreeMap<String, u64>,
    /// Latency of the slow readers' deliveries (µs, V2, base64).
    pub hist_slow: String,
    /// Deliveries per bucket of wall-clock time.
    pub series: Series,
    pub gaps: u64,
    pub dups: u64,
    /// Messages that were not a publication of a subscribed topic.
    pub unexpected: u64,
    /// How connections ended before the worker stopped, by cause.
    pub closes: BTreeMap<String, u64>,
    pub first_rx_ns: u64,
    pub last_rx_ns: u64,
    /// Latency histogram of the fast connections (µs), hdrhistogram V2,
    /// base64.
    pub hist: String,
    /// `complete`, `stop` or `deadline`.
    pub ended_by: String,
    /// With `track_msgs`: per message index (`(index − 1) × T + topic`,
    /// the publisher's order), the largest publish→receive latency over
    /// this worker's fast connections in µs + 1 (0: none received it),
    /// little-endian `u32`s, base64.
    #[serde(default)]
    pub msg_last_us: String,
    /// With `track_msgs`: per message index, how many of this worker's
    /// fast connections received it (same encoding).
    #[serde(default)]
    pub msg_count: String,
}

/// One stdout line of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Ready(Ready),
    Progress(Progress),
    Result(Box<WorkerResult>),
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// A fresh latency histogram: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant valid bounds")
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut v = Vec::new();
    // Writing into a Vec cannot fail for a well-formed histogram.
    let _ = V2Serializer::new().serialize(h, &mut v);
    base64::engine::general_purpose::STANDARD.encode(v)
}

pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram base64: {e}"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram: {e:?}"))
}

/// `u32`s as little-endian bytes, base64 (per-message arrays of results).
pub fn encode_u32s(v: &[u32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_u32s(s: &str) -> Result<Vec<u32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("per-message array base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err("per-message array: length not a multiple of 4".into());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn emit(ev: &Event) {
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// State shared by the connection tasks of this worker (one thread).
struct Shared {
    plan: WorkerPlan,
    topic_plan: TopicPlan,
    names: Vec<Box<[u8]>>,
    tokens: Vec<String>,
    expected: u64,
    expected_fast: u64,
    slow_conns: u64,

    open: Cell<u64>,
    connected: Cell<u64>,
    finished: Cell<u64>,
    failures: RefCell<BTreeMap<String, u64>>,
    closes: RefCell<BTreeMap<String, u64>>,
    closes_slow: RefCell<BTreeMap<String, u64>>,
    connect_hist: RefCell<Histogram<u64>>,

    received: Cell<u64>,
    unique: Cell<u64>,
    unique_fast: Cell<u64>,
    /// Slow connections that are done: all received, closed, or failed.
    slow_settled: Cell<u64>,
    /// Set by `drain` from the parent (the publisher is done): slow
    /// readers read at full speed from now on, so they reach their end.
    drain: Cell<bool>,
    gaps: Cell<u64>,
    dups: Cell<u64>,
    unexpected: Cell<u64>,
    first_rx: Cell<u64>,
    last_rx: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    hist_slow: RefCell<Histogram<u64>>,
    series: RefCell<Series>,
    /// Per message (with `track_msgs`, else empty): the largest latency
    /// of a fast connection, µs + 1 (0 = none yet), and the number of fast
    /// connections that received it.
    msg_last_us: RefCell<Vec<u32>>,
    msg_count: RefCell<Vec<u32>>,

    scratch: RefCell<Vec<u8>>,
    connect_done: Notify,
    all_received: Notify,
}

impl Shared {
    fn fail(&self, cause: FailCause) {
        *self.failures.borrow_mut().entry(cause.label()).or_default() += 1;
        self.finish_one();
    }

    fn finish_one(&self) {
        self.finished.set(self.finished.get() + 1);
        if self.finished.get() == self.plan.conn_count {
            self.connect_done.notify_one();
        }
    }

    fn bump(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }

    /// Every fast delivery is in and every slow reader is settled.
    fn complete(&self) -> bool {
        self.unique_fast.get() >= self.expected_fast && self.slow_settled.get() >= self.slow_conns
    }

    fn check_complete(&self) {
        if self.plan.kind == Kind::Fanout && self.complete() {
            self.all_received.notify_one();
        }
    }

    fn settle_slow(&self) {
        Shared::bump(&self.slow_settled, 1);
        self.check_complete();
    }

    fn token(&self, idx: u64) -> Option<String> {
        match &self.plan.auth {
            Auth::None => None,
            Auth::Secret(s) => Some(herald::auth::token::mint_hs256(
                s,
                &format!("load-{idx}"),
                herald::auth::token::now_unix() + 24 * 3600,
                Some(&["*"]),
                None,
            )),
            Auth::TokenFile(_) => {
                let n = self.tokens.len() as u64;
                (n > 0).then(|| self.tokens[(idx % n) as usize].clone())
            }
        }
    }

    /// A fast connection received message `index` (1-based, per topic; 0
    /// = no index) of `topic` after `lat_us`.
    fn note_msg(&self, topic: u32, index: u64, lat_us: u64) {
        let mut last = self.msg_last_us.borrow_mut();
        if last.is_empty() || index == 0 {
            return;
        }
        let m = (index - 1)
            .saturating_mul(self.names.len() as u64)
            .saturating_add(u64::from(topic));
        let Some(slot) = last.get_mut(m as usize) else {
            return;
        };
        let v = lat_us.min(u64::from(u32::MAX - 1)) as u32 + 1;
        *slot = (*slot).max(v);
        if let Some(c) = self.msg_count.borrow_mut().get_mut(m as usize) {
            *c += 1;
        }
    }

    fn p99_us(&self) -> u64 {
        let h = self.hist.borrow();
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(0.99)
        }
    }

    fn result(&self, ended_by: &str) -> WorkerResult {
        WorkerResult {
            worker: self.plan.worker,
            attempted: self.plan.conn_count,
            connected: self.connected.get(),
            failures: self.failures.borrow().clone(),
            open_at_end: self.open.get(),
            expected: self.expected,
            expected_fast: self.expected_fast,
            received: self.received.get(),
            unique: self.unique.get(),
            unique_fast: self.unique_fast.get(),
            slow_conns: self.slow_conns,
            closes_slow: self.closes_slow.borrow().clone(),
            hist_slow: encode_histogram(&self.hist_slow.borrow()),
            series: self.series.borrow().clone(),
            gaps: self.gaps.get(),
            dups: self.dups.get(),
            unexpected: self.unexpected.get(),
            closes: self.closes.borrow().clone(),
            first_rx_ns: self.first_rx.get(),
            last_rx_ns: self.last_rx.get(),
            hist: encode_histogram(&self.hist.borrow()),
            ended_by: ended_by.into(),
            msg_last_us: encode_u32s(&self.msg_last_us.borrow()),
            msg_count: encode_u32s(&self.msg_count.borrow()),
        }
    }
}

struct Sub {
    topic: u32,
    last_seq: u64,
    acked: bool,
}

/// Why a connection's read loop ended.
#[derive(Debug)]
enum End {
    Eof,
    Io(std::io::ErrorKind),
    CloseFrame(u16),
    Protocol(&'static str),
}

impl End {
    fn label(&self) -> String {
        match self {
            End::Eof => "eof".into(),
            End::Io(k) => format!("io_{k:?}").to_lowercase(),
            End::CloseFrame(c) => format!("close_{c}"),
            End::Protocol(why) => format!("protocol ({why})"),
        }
    }

    fn as_fail(&self) -> FailCause {
        match self {
            End::Eof | End::Io(_) => FailCause::Reset,
            End::CloseFrame(_) => FailCause::Closed,
            End::Protocol(_) => FailCause::Protocol,
        }
    }
}

/// A control frame to answer after the read buffer is released.
enum Ctrl {
    Pong([u8; 125], usize),
}

struct Conn {
    stream: TcpStream,
    /// The start of a frame that did not fit in the last read.
    leftover: Vec<u8>,
    /// Total bytes that frame needs (0 = unknown/none).
    need: usize,
    /// A fragmented message being reassembled (rare; peers may do it).
    frag: Option<Vec<u8>>,
    subs: Vec<Sub>,
    /// SUBSCRIBE replies still awaited.
    pending: u32,
    sub_error: Option<u16>,
    mask: [u8; 4],
    /// A slow reader: small reads, a sleep after each.
    slow: bool,
    /// Deliveries this connection must see, and has seen (unique).
    expected: u64,
    got: u64,
}

impl Conn {
    /// Waits for the socket, reads once into the shared scratch buffer and
    /// handles every complete frame in it.
    async fn read_once(&mut self, w: &Shared) -> Result<(), End> {
        let ctrl = std::future::poll_fn(|cx| self.poll_read_frames(cx, w)).await?;
        if let Some(Ctrl::Pong(p, n)) = ctrl {
            let mut f = Vec::with_capacity(n + 6);
            ws::push_masked_frame(&mut f, ws::OP_PONG, &p[..n], self.mask);
            self.stream
                .write_all(&f)
                .await
                .map_err(|e| End::Io(e.kind()))?;
        }
        Ok(())
    }

    /// One read into the scratch buffer, then the frames in it. The buffer
    /// is borrowed only inside this poll, never across an await.
    ///
    /// `poll_read` (rather than `readable()` + `try_read`) matters: on a
    /// short read tokio clears the readiness itself, which saves a second,
    /// empty read syscall per wake-up — one per delivery at low rates.
    fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        w: &Shared,
    ) -> Poll<Result<Option<Ctrl>, End>> {
        let mut scratch = w.scratch.borrow_mut();
        let l = self.leftover.len();
        let chunk = if self.slow && !w.drain.get() {
            w.plan.slow.read_bytes.clamp(1, READ_CHUNK)
        } else {
            READ_CHUNK
        };
        let want = (l + READ_CHUNK).max(self.need);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut scratch[l..l + chunk]);
        match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Io(e.kind()))),
            Poll::Ready(Ok(())) => {}
        }
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Err(End::Eof));
        }
        scratch[..l].copy_from_slice(&self.leftover);
        let filled = l + n;
        let now = now_ns();
        let before = w.unique.get();
        let res = self.process(w, &scratch[..filled], now);
        w.series.borrow_mut().add(now, w.unique.get() - before);
        let (used, ctrl) = match res {
            Ok(x) => x,
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.leftover.clear();
        if used < filled {
            self.leftover.extend_from_slice(&scratch[used..filled]);
        } else if self.leftover.capacity() > 4096 {
            self.leftover = Vec::new();
        }
        Poll::Ready(Ok(ctrl))
    }

    /// Handles the complete frames at the front of `buf`; returns how many
    /// bytes they took and a control frame to answer, if any.
    fn process(&mut self, w: &Shared, buf: &[u8], now: u64) -> Result<(usize, Option<Ctrl>), End> {
        let mut pos = 0;
        let mut ctrl = None;
        self.need = 0;
        loop {
            let (fin, opcode, hdr, len) = match ws::parse_header(&buf[pos..]) {
                Header::Incomplete { need } => {
                    self.need = need;
                    return Ok((pos, ctrl));
                }
                Header::Bad(why) => return Err(End::Protocol(why)),
                Header::Frame {
                    fin,
                    opcode,
                    hdr,
                    len,
                } => (fin, opcode, hdr, len),
            };
            let payload = &buf[pos + hdr..pos + hdr + len];
            pos += hdr + len;
            match opcode {
                ws::OP_BINARY | ws::OP_TEXT => {
                    if self.frag.is_some() {
                        return Err(End::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        self.on_message(w, payload, now);
                    } else {
                        self.frag = Some(payload.to_vec());
                    }
                }
                ws::OP_CONT => {
                    let Some(f) = self.frag.as_mut() else {
                        return Err(End::Protocol("continuation without a message"));
                    };
                    f.extend_from_slice(payload);
                    if f.len() > ws::MAX_FRAME {
                        return Err(End::Protocol("message too large"));
                    }
                    if fin {
                        if let Some(m) = self.frag.take() {
                            self.on_message(w, &m, now);
                        }
                    }
                }
                ws::OP_PING => {
                    let mut p = [0u8; 125];
                    p[..len].copy_from_slice(payload);
                    ctrl = Some(Ctrl::Pong(p, len));
                }
                ws::OP_CLOSE => {
                    let code = match payload {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    return Err(End::CloseFrame(code));
                }
                _ => {} // pong
            }
        }
    }

    fn on_message(&mut self, w: &Shared, msg: &[u8], now: u64) {
        if !w.plan.herald() {
            // A peer sends the published body as is.
            self.on_publication(w, None, None, msg, now);
            return;
        }
        // Hot path: [16, topic, seq, payload] read in place.
        let mut r = Reader::new(msg);
        if let (Ok(n), Ok(kind)) = (r.read_array_len(), r.read_u64()) {
            if kind == u64::from(PUBLICATION) {
                match (n >= 4, r.read_str(), r.read_u64(), r.read_bin()) {
                    (true, Ok(topic), Ok(seq), Ok(payload)) => {
                        self.on_publication(w, Some(topic.as_bytes()), Some(seq), payload, now);
                    }
                    _ => Shared::bump(&w.unexpected, 1),
                }
                return;
            }
        }
        match decode_server_message(msg) {
            Ok(ServerMessage::Reply { id, seq, .. }) => {
                let idx = (id as usize).wrapping_sub(1);
                match self.subs.get_mut(idx) {
                    Some(s) if !s.acked => {
                        s.acked = true;
                        s.last_seq = seq.unwrap_or(0);
                        self.pending = self.pending.saturating_sub(1);
                    }
                    _ => Shared::bump(&w.unexpected, 1),
                }
            }
            Ok(ServerMessage::Error { id, code, .. }) => {
                if id > 0 && self.pending > 0 {
                    self.sub_error = Some(code);
                }
                Shared::bump(&w.unexpected, 1);
            }
            _ => Shared::bump(&w.unexpected, 1),
        }
    }

    fn on_publication(
        &mut self,
        w: &Shared,
        topic: Option<&[u8]>,
        seq: Option<u64>,
        payload: &[u8],
        now: u64,
    ) {
        let sub = match topic {
            None => self.subs.first_mut(),
            Some(t) => self
                .subs
                .iter_mut()
                .find(|s| &*w.names[s.topic as usize] == t),
        };
        let Some(sub) = sub else {
            Shared::bump(&w.unexpected, 1);
            return;
        };
        let topic_idx = sub.topic;
        Shared::bump(&w.received, 1);
        // The publisher writes a per-topic index (from 1) after the
        // timestamp when the payload has room; 0 when parallel publishers
        // share a topic (no order to check). Raw peers have no seq: the
        // index stands in for it.
        let index = payload
            .get(8..16)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let seq = seq.or((index > 0).then_some(index));
        if let Some(s) = seq {
            if s <= sub.last_seq {
                Shared::bump(&w.dups, 1);
                return;
            }
            if s > sub.last_seq + 1 {
                Shared::bump(&w.gaps, s - sub.last_seq - 1);
            }
            sub.last_seq = s;
        }
        Shared::bump(&w.unique, 1);
        self.got += 1;
        let hist = if self.slow {
            if self.got == self.expected {
                w.settle_slow();
            }
            &w.hist_slow
        } else {
            Shared::bump(&w.unique_fast, 1);
            &w.hist
        };
        if let Some(ts) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            let lat_us = now.saturating_sub(u64::from_be_bytes(ts)) / 1000;
            hist.borrow_mut().saturating_record(lat_us);
            if !self.slow {
                w.note_msg(topic_idx, index, lat_us);
            }
        }
        if w.first_rx.get() == 0 {
            w.first_rx.set(now);
        }
        w.last_rx.set(now);
    }
}

async fn establish(w: &Shared, idx: u64, slow: bool) -> Result<Conn, FailCause> {
    let (ti, src) = plan::route(idx, w.plan.targets.len(), w.plan.source_ips);
    let t = &w.plan.targets[ti];
    let mut topics = Vec::with_capacity(w.topic_plan.max_per_conn() as usize);
    let expected = match w.plan.kind {
        Kind::Fanout => plan::conn_expected(&w.topic_plan, w.plan.msgs, idx, &mut topics),
        Kind::Idle => {
            w.topic_plan.topics_for(idx, &mut topics);
            0
        }
    };
    if t.herald && !w.plan.subscribe {
        topics.clear();
    }
    let req = if t.herald {
        let token = w.token(idx);
        ws::upgrade_request(&t.host, &t.path, idx, Some("herald.v1"), token.as_deref())
    } else {
        let topic = String::from_utf8_lossy(&w.names[topics[0] as usize]).into_owned();
        let path = format!("{}/sub/{topic}", t.path);
        ws::upgrade_request(&t.host, &path, idx, None, None)
    };
    let rcvbuf = if slow { w.plan.slow.rcvbuf } else { 0 };
    let mut stream = ws::connect(src, t.addr, rcvbuf)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    stream
        .write_all(&req)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    drop(req);
    let mut head = Vec::new();
    let h = ws::read_upgrade_answer(&mut stream, &mut head).await?;
    let m = (idx as u32).wrapping_mul(0x9E37_79B9) | 1;
    let mut conn = Conn {
        stream,
        leftover: head[h..].to_vec(),
        need: 0,
        frag: None,
        subs: topics
            .iter()
            .map(|&topic| Sub {
                topic,
                last_seq: 0,
                acked: !t.herald,
            })
            .collect(),
        pending: if t.herald { topics.len() as u32 } else { 0 },
        sub_error: None,
        mask: m.to_be_bytes(),
        slow,
        expected,
        got: 0,
    };
    drop(head);
    if t.herald && !topics.is_empty() {
        let mut out = Vec::with_capacity(32 * topics.len());
        for (i, &topic) in topics.iter().enumerate() {
            let name = String::from_utf8_lossy(&w.names[topic as usize]).into_owned();
            let body = encode_subscribe(i as u32 + 1, &name, None);
            ws::push_masked_frame(&mut out, ws::OP_BINARY, &body, conn.mask);
        }
        conn.stream
            .write_all(&out)
            .await
            .map_err(|e| FailCause::from_io(&e))?;
        loop {
            if let Some(code) = conn.sub_error {
                return Err(FailCause::Subscribe(code));
            }
            if conn.pending == 0 {
                break;
            }
            conn.read_once(w).await.map_err(|e| e.as_fail())?;
        }
    }
    Ok(conn)
}

async fn conn_task(w: Rc<Shared>, idx: u64) {
    let limit = Duration::from_millis(w.plan.connect_timeout_ms);
    let slow = plan::is_slow(idx, w.plan.slow.fraction);
    let t0 = Instant::now();
    // Boxed so that its (large) state is freed once the connection is up
    // instead of sizing every connection's task for it.
    let res = match Box::pin(tokio::time::timeout(limit, establish(&w, idx, slow))).await {
        Ok(r) => r,
        Err(_) => Err(FailCause::Timeout),
    };
    let mut conn = match res {
        Ok(c) => c,
        Err(cause) => {
            w.fail(cause);
            if slow {
                w.settle_slow();
            }
            return;
        }
    };
    w.connect_hist
        .borrow_mut()
        .saturating_record(t0.elapsed().as_micros() as u64);
    Shared::bump(&w.connected, 1);
    Shared::bump(&w.open, 1);
    w.finish_one();
    if slow && conn.got >= conn.expected {
        w.settle_slow();
    }
    let delay = Duration::from_millis(w.plan.slow.read_delay_ms);
    let end = loop {
        if let Err(e) = conn.read_once(&w).await {
            break e;
        }
        if !slow {
            w.check_complete();
        } else if !delay.is_zero() && !w.drain.get() {
            tokio::time::sleep(delay).await;
        }
    };
    w.open.set(w.open.get() - 1);
    if let End::CloseFrame(code) = end {
        let echo = if code == 1005 { 1000 } else { code };
        ws::send_close(&mut conn.stream, echo, conn.mask).await;
    }
    let closes = if slow { &w.closes_slow } else { &w.closes };
    *closes.borrow_mut().entry(end.label()).or_default() += 1;
    if slow && conn.got < conn.expected {
        w.settle_slow();
    }
}

async fn launch(w: Rc<Shared>) {
    let start = Instant::now();
    let rate = w.plan.connect_rate;
    for i in 0..w.plan.conn_count {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        tokio::task::spawn_local(conn_task(w.clone(), w.plan.conn_start + i));
    }
}

fn load_tokens(auth: &Auth) -> Result<Vec<String>, String> {
    match auth {
        Auth::TokenFile(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("--token-file {}: {e}", p.display()))?;
            let v: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if v.is_empty() {
                return Err(format!("--token-file {}: no token in it", p.display()));
            }
            Ok(v)
        }
        _ => Ok(Vec::new()),
    }
}

/// The `worker` subcommand: reads its plan from stdin, runs, reports on
/// stdout, and exits.
pub fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load worker: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let res = local.block_on(&rt, run());
    if let Err(e) = res {
        eprintln!("herald-load worker: {e}");
        let _ = std::io::stdout().flush();
        // Don't wait for the blocking stdin reader.
        std::process::exit(1);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

async fn run() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading the plan: {e}"))?;
    let plan: WorkerPlan =
        serde_json::from_str(&line).map_err(|e| format!("bad plan on stdin: {e}"))?;
    if plan.targets.is_empty() {
        return Err("plan: no target".into());
    }
    if plan.topic_names.len() != plan.topics.topics as usize {
        return Err("plan: topic names and count differ".into());
    }
    let topic_plan = TopicPlan::new(&plan.topics)?;
    let range = plan.conn_start..plan.conn_start + plan.conn_count;
    let (expected_fast, expected_slow) = match plan.kind {
        Kind::Fanout => {
            plan::expected_deliveries(&topic_plan, plan.msgs, range.clone(), plan.slow.fraction)
        }
        Kind::Idle => (0, 0),
    };
    let slow_conns = match plan.kind {
        Kind::Fanout => range
            .filter(|&c| plan::is_slow(c, plan.slow.fraction))
            .count() as u64,
        Kind::Idle => 0,
    };
    let tracked = if plan.kind == Kind::Fanout && plan.track_msgs && plan.msgs <= LAST_RX_MAX_MSGS {
        vec![0u32; plan.msgs as usize]
    } else {
        Vec::new()
    };
    let w = Rc::new(Shared {
        tokens: load_tokens(&plan.auth)?,
        names: plan
            .topic_names
            .iter()
            .map(|n| n.as_bytes().into())
            .collect(),
        topic_plan,
        expected: expected_fast + expected_slow,
        expected_fast,
        slow_conns,
        open: Cell::new(0),
        connected: Cell::new(0),
        finished: Cell::new(0),
        failures: RefCell::default(),
        closes: RefCell::default(),
        closes_slow: RefCell::default(),
        connect_hist: RefCell::new(new_histogram()),
        received: Cell::new(0),
        unique: Cell::new(0),
        unique_fast: Cell::new(0),
        slow_settled: Cell::new(0),
        drain: Cell::new(false),
        gaps: Cell::new(0),
        dups: Cell::new(0),
        unexpected: Cell::new(0),
        first_rx: Cell::new(0),
        last_rx: Cell::new(0),
        hist: RefCell::new(new_histogram()),
        hist_slow: RefCell::new(new_histogram()),
        series: RefCell::new(Series::new(plan.sample_ms)),
        msg_last_us: RefCell::new(tracked.clone()),
        msg_count: RefCell::new(tracked),
        scratch: RefCell::new(Vec::new()),
        connect_done: Notify::new(),
        all_received: Notify::new(),
        plan,
    });

    let stop = Rc::new(Notify::new());
    {
        let stop = stop.clone();
        let w = w.clone();
        tokio::task::spawn_local(async move {
            let mut l = String::new();
            loop {
                l.clear();
                match stdin.read_line(&mut l).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if l.trim() == "stop" => break,
                    Ok(_) if l.trim() == "drain" => w.drain.set(true),
                    Ok(_) => {}
                }
            }
            stop.notify_one();
        });
    }
    let left_ms = w.plan.deadline_unix_ms.saturating_sub(now_ms());
    let deadline = Instant::now() + Duration::from_millis(left_ms);

    {
        let w = w.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                emit(&Event::Progress(Progress {
                    worker: w.plan.worker,
                    open: w.open.get(),
                    connected: w.connected.get(),
                    received: w.unique.get(),
                    p99_us: w.p99_us(),
                }));
            }
        });
    }

    let connect_start_ms = now_ms();
    if w.plan.conn_count == 0 {
        w.connect_done.notify_one();
    }
    tokio::task::spawn_local(launch(w.clone()));
    let early = tokio::select! {
        _ = w.connect_done.notified() => None,
        _ = stop.notified() => Some("stop"),
        _ = tokio::time::sleep_until(deadline) => Some("deadline"),
    };
    let progress = || {
        Event::Progress(Progress {
            worker: w.plan.worker,
            open: w.open.get(),
            connected: w.connected.get(),
            received: w.unique.get(),
            p99_us: w.p99_us(),
        })
    };
    emit(&progress());
    emit(&Event::Ready(Ready {
        worker: w.plan.worker,
        attempted: w.plan.conn_count,
        connected: w.connected.get(),
        failures: w.failures.borrow().clone(),
        connect_start_ms,
        connect_end_ms: now_ms(),
        expected: w.expected,
        connect_hist: encode_histogram(&w.connect_hist.borrow()),
    }));
    let ended_by = match early {
        Some(e) => e,
        None if w.plan.kind == Kind::Fanout && w.complete() => "complete",
        None if w.plan.kind == Kind::Fanout => tokio::select! {
            _ = w.all_received.notified() => "complete",
            _ = stop.notified() => "stop",
            _ = tokio::time::sleep_until(deadline) => "deadline",
        },
        None => tokio::select! {
            _ = stop.notified() => "stop",
            _ = tokio::time::sleep_until(deadline) => "deadline",
        },
    };
    emit(&Event::Result(Box::new(w.result(ended_by))));
    Ok(())
}
