//! The client side of `soak`: one worker process holding its share of the
//! steady subscribers, the churning connections and the slow readers, for
//! as long as the parent runs (until `stop` on stdin, EOF or the plan's
//! deadline).
//!
//! Like the fan-out worker it is one thread (a current-thread runtime and a
//! `LocalSet`): counters are `Cell`s, the latency histogram a `RefCell`, and
//! every connection reads into the worker's one scratch buffer. Every
//! `tick_ms` it prints a `tick` line: the steady subscribers' latency
//! histogram of that interval (then reset) and its cumulative counters; the
//! parent merges the ticks into its samples. The last line is a `tick` with
//! `last: true`.
//!
//! Roles, by connection:
//!
//! - **steady**: connects once (paced), subscribes to one steady topic and
//!   reads everything; publish→receive latency goes into the histogram.
//!   Any end of its connection, a seq gap or a duplicate is an error; it
//!   reconnects a second later so the load stays.
//! - **churn**: `churn_rate` connects/s, each subscribes to a steady topic,
//!   reads for `churn_hold_ms`, sends close 1000 and waits for the echo.
//!   A failed connect or an end before the hold is over is an error.
//! - **slow** (per policy): subscribes to the policy's topics with a small
//!   `SO_RCVBUF`, then alternates `slow_read_ms` of reading and
//!   `slow_pause_ms` of not reading at all ("pausers", phases staggered),
//!   or never reads ("stalled", `drop_oldest` and `conflate` only). Either
//!   sends an unsolicited pong every few seconds while it does not read, so
//!   herald's keep-alive does not take them for dead. Under `disconnect`
//!   the end of a connection (4008, or EOF/reset after it) is expected and
//!   counted apart; the reader reconnects two seconds later. Under
//!   `drop_oldest` and `conflate` any end is an error; the `seq` jumps they
//!   see are counted (herald dropped or conflated those publications).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hdrhistogram::Histogram;
use herald::wire::client::{decode_server_message, encode_subscribe, ServerMessage, PUBLICATION};
use herald::wire::msgpack::Reader;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::plan;
use crate::worker::{encode_histogram, new_histogram, now_ms, now_ns, Target};
use crate::ws::{self, FailCause, Header};

const READ_CHUNK: usize = 64 << 10;
/// Unsolicited pongs of a reader that does not read, so herald (ping after
/// `timeouts.ping_interval_ms` of silence) sees it alive.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// One slow-consumer policy's share of slow readers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowGroup {
    /// `disconnect`, `drop_oldest` or `conflate` (a label only: herald's
    /// config maps the topics to the policy).
    pub policy: String,
    /// Every reader of the group subscribes to all of them.
    pub topics: Vec<String>,
    /// Readers that pause and resume.
    pub pausers: u64,
    /// Readers that never read.
    pub stalled: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakPlan {
    pub worker: u32,
    pub workers: u32,
    pub target: Target,
    pub secret: String,
    pub source_ips: u32,
    /// This worker's steady subscribers; connection `i` of the worker has
    /// global index `worker + i × workers` and takes steady topic
    /// `global mod topics`.
    pub steady_conns: u64,
    pub steady_topics: Vec<String>,
    /// Steady connects per second of this worker.
    pub connect_rate: f64,
    /// Churn connects per second of this worker (0 = none).
    pub churn_rate: f64,
    pub churn_hold_ms: u64,
    pub slow: Vec<SlowGroup>,
    pub slow_read_ms: u64,
    pub slow_pause_ms: u64,
    pub slow_rcvbuf: u32,
    pub tick_ms: u64,
    pub connect_timeout_ms: u64,
    pub deadline_unix_ms: u64,
}

/// What one slow-reader group saw (cumulative).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlowCounts {
    pub open: u64,
    pub connects: u64,
    pub deliveries: u64,
    /// Publications skipped by a `seq` jump (dropped or conflated).
    pub skipped: u64,
    /// How connections ended, by label (`close_4008`, `eof`, ...).
    pub ends: BTreeMap<String, u64>,
    pub connect_failures: BTreeMap<String, u64>,
}

/// A worker's counters, cumulative since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub steady_open: u64,
    pub steady_connects: u64,
    pub steady_deliveries: u64,
    pub steady_gaps: u64,
    pub steady_dups: u64,
    pub steady_ends: BTreeMap<String, u64>,
    pub steady_connect_failures: BTreeMap<String, u64>,
    /// Of `steady_ends`: how long before the end the connection had last
    /// answered a ping of herald's (`pong_<10s`, `pong_>=10s`, `no_ping`):
    /// tells a pong herald did not read from a ping that never came.
    #[serde(default)]
    pub steady_end_last_pong: BTreeMap<String, u64>,
    /// herald's pings answered, every role.
    #[serde(default)]
    pub pongs: u64,
    pub churn_open: u64,
    pub churn_started: u64,
    /// Closed by us after the hold, close echoed (or EOF after it).
    pub churn_clean: u64,
    pub churn_deliveries: u64,
    pub churn_connect_failures: BTreeMap<String, u64>,
    /// Ended before the hold was over, by label.
    pub churn_ends: BTreeMap<String, u64>,
    pub churn_gaps: u64,
    pub slow: BTreeMap<String, SlowCounts>,
    /// Frames that were none of the above (errors, odd replies).
    pub unexpected: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    pub worker: u32,
    pub at_ms: u64,
    /// Steady latency of this interval, µs, hdrhistogram V2, base64.
    pub hist: String,
    pub counts: Counts,
    #[serde(default)]
    pub last: bool,
}

fn emit(t: &Tick) {
    if let Ok(line) = serde_json::to_string(t) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Steady,
    Churn,
    Slow { group: usize, stalled: bool },
}

struct Shared {
    plan: SoakPlan,
    counts: RefCell<Counts>,
    hist: RefCell<Histogram<u64>>,
    scratch: RefCell<Vec<u8>>,
    stopping: Cell<bool>,
    stop: Notify,
}

impl Shared {
    fn token(&self, idx: u64) -> String {
        herald::auth::token::mint_hs256(
            &self.plan.secret,
            &format!("soak-{idx}"),
            herald::auth::token::now_unix() + 24 * 3600,
            Some(&["*"]),
            None,
        )
    }

    fn c(&self) -> std::cell::RefMut<'_, Counts> {
        self.counts.borrow_mut()
    }

    fn group(&self, g: usize) -> String {
        self.plan.slow[g].policy.clone()
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: String) {
    *m.entry(k).or_default() += 1;
}

/// Why a connection's reading ended.
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
}

struct Sub {
    topic: Box<[u8]>,
    last_seq: u64,
    acked: bool,
}

struct Conn {
    stream: TcpStream,
    leftover: Vec<u8>,
    need: usize,
    subs: Vec<Sub>,
    pending: u32,
    sub_error: Option<u16>,
    mask: [u8; 4],
    role: Role,
    /// A ping to answer once the read buffer is released.
    pong: Option<([u8; 125], usize)>,
    /// When the last ping was answered (0 = never).
    last_pong: Option<Instant>,
}

impl Conn {
    /// One read into the shared scratch buffer and the frames in it. Safe
    /// to cancel: nothing is consumed unless it returns `Ready`.
    fn poll_read(&mut self, cx: &mut Context<'_>, w: &Shared) -> Poll<Result<(), End>> {
        let mut scratch = w.scratch.borrow_mut();
        let l = self.leftover.len();
        let want = (l + READ_CHUNK).max(self.need);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut scratch[l..l + READ_CHUNK]);
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
        let used = match self.process(w, &scratch[..filled], now_ns()) {
            Ok(u) => u,
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.leftover.clear();
        if used < filled {
            self.leftover.extend_from_slice(&scratch[used..filled]);
        } else if self.leftover.capacity() > 4096 {
            self.leftover = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads once (waiting for data), then answers a ping if one came.
    async fn read_once(&mut self, w: &Shared) -> Result<(), End> {
        std::future::poll_fn(|cx| self.poll_read(cx, w)).await?;
        self.answer_ping(w).await
    }

    async fn answer_ping(&mut self, w: &Shared) -> Result<(), End> {
        if let Some((p, n)) = self.pong.take() {
            let mut f = Vec::with_capacity(n + 6);
            ws::push_masked_frame(&mut f, ws::OP_PONG, &p[..n], self.mask);
            self.stream
                .write_all(&f)
                .await
                .map_err(|e| End::Io(e.kind()))?;
            self.last_pong = Some(Instant::now());
            w.c().pongs += 1;
        }
        Ok(())
    }

    /// Reads until `until` (Ok), the connection's end (Err) or a stop.
    async fn read_until(&mut self, w: &Shared, until: Instant) -> Result<(), End> {
        loop {
            if w.stopping.get() {
                return Ok(());
            }
            // Biased: data that is there wins over a timer that fired
            // late (a starved worker must not drop what already arrived).
            tokio::select! {
                biased;
                r = std::future::poll_fn(|cx| self.poll_read(cx, w)) => r?,
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = w.stop.notified() => return Ok(()),
            }
            self.answer_ping(w).await?;
        }
    }

    /// Does not read until `until`; an unsolicited pong every
    /// [`KEEPALIVE`]. A failed write is the connection's end.
    async fn pause_until(&mut self, w: &Shared, until: Instant) -> Result<(), End> {
        loop {
            if w.stopping.get() {
                return Ok(());
            }
            let next = (Instant::now() + KEEPALIVE).min(until);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = w.stop.notified() => return Ok(()),
            }
            if Instant::now() >= until {
                return Ok(());
            }
            let mut f = Vec::with_capacity(8);
            ws::push_masked_frame(&mut f, ws::OP_PONG, b"", self.mask);
            self.stream
                .write_all(&f)
                .await
                .map_err(|e| End::Io(e.kind()))?;
        }
    }

    fn process(&mut self, w: &Shared, buf: &[u8], now: u64) -> Result<usize, End> {
        let mut pos = 0;
        self.need = 0;
        loop {
            let (opcode, hdr, len) = match ws::parse_header(&buf[pos..]) {
                Header::Incomplete { need } => {
                    self.need = need;
                    return Ok(pos);
                }
                Header::Bad(why) => return Err(End::Protocol(why)),
                Header::Frame {
                    fin: false,
                    opcode: ws::OP_BINARY | ws::OP_TEXT,
                    ..
                } => return Err(End::Protocol("fragmented message")),
                Header::Frame {
                    opcode, hdr, len, ..
                } => (opcode, hdr, len),
            };
            let payload = &buf[pos + hdr..pos + hdr + len];
            pos += hdr + len;
            match opcode {
                ws::OP_BINARY | ws::OP_TEXT => self.on_message(w, payload, now),
                ws::OP_PING => {
                    let mut p = [0u8; 125];
                    p[..len].copy_from_slice(payload);
                    self.pong = Some((p, len));
                }
                ws::OP_CLOSE => {
                    let code = match payload {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    return Err(End::CloseFrame(code));
                }
                ws::OP_CONT => return Err(End::Protocol("continuation frame")),
                _ => {} // pong
            }
        }
    }

    fn on_message(&mut self, w: &Shared, msg: &[u8], now: u64) {
        let mut r = Reader::new(msg);
        if let (Ok(n), Ok(kind)) = (r.read_array_len(), r.read_u64()) {
            if kind == u64::from(PUBLICATION) {
                match (n >= 4, r.read_str(), r.read_u64(), r.read_bin()) {
                    (true, Ok(topic), Ok(seq), Ok(payload)) => {
                        self.on_publication(w, topic.as_bytes(), seq, payload, now)
                    }
                    _ => w.c().unexpected += 1,
                }
                return;
            }
        }
        match decode_server_message(msg) {
            Ok(ServerMessage::Reply { id, seq, .. }) => {
                match self.subs.get_mut((id as usize).wrapping_sub(1)) {
                    Some(s) if !s.acked => {
                        s.acked = true;
                        s.last_seq = seq.unwrap_or(0);
                        self.pending = self.pending.saturating_sub(1);
                    }
                    _ => w.c().unexpected += 1,
                }
            }
            Ok(ServerMessage::Error { id, code, .. }) if id > 0 && self.pending > 0 => {
                self.sub_error = Some(code);
            }
            _ => w.c().unexpected += 1,
        }
    }

    fn on_publication(&mut self, w: &Shared, topic: &[u8], seq: u64, payload: &[u8], now: u64) {
        let Some(sub) = self.subs.iter_mut().find(|s| &*s.topic == topic) else {
            w.c().unexpected += 1;
            return;
        };
        let (dup, missing) = if seq <= sub.last_seq {
            (true, 0)
        } else {
            (false, seq - sub.last_seq - 1)
        };
        if !dup {
            sub.last_seq = seq;
        }
        let mut c = w.c();
        match self.role {
            Role::Steady => {
                if dup {
                    c.steady_dups += 1;
                    return;
                }
                c.steady_gaps += missing;
                c.steady_deliveries += 1;
                drop(c);
                if let Some(ts) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    let lat_us = now.saturating_sub(u64::from_be_bytes(ts)) / 1000;
                    w.hist.borrow_mut().saturating_record(lat_us);
                }
            }
            Role::Churn => {
                if !dup {
                    c.churn_deliveries += 1;
                    c.churn_gaps += missing;
                }
            }
            Role::Slow { group, .. } => {
                if let Some(g) = c.slow.get_mut(&w.plan.slow[group].policy) {
                    if !dup {
                        g.deliveries += 1;
                        g.skipped += missing;
                    }
                }
            }
        }
    }
}

/// Connects, upgrades and subscribes to `topics` (every SUBSCRIBE acked).
async fn establish(w: &Shared, idx: u64, role: Role, topics: &[String]) -> Result<Conn, FailCause> {
    let (_, src) = plan::route(idx, 1, w.plan.source_ips);
    let t = &w.plan.target;
    let token = w.token(idx);
    let req = ws::upgrade_request(&t.host, &t.path, idx, Some("herald.v1"), Some(&token));
    let rcvbuf = match role {
        Role::Slow { .. } => w.plan.slow_rcvbuf,
        _ => 0,
    };
    let mut stream = ws::connect(src, t.addr, rcvbuf)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    stream
        .write_all(&req)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    let mut head = Vec::new();
    let h = ws::read_upgrade_answer(&mut stream, &mut head).await?;
    let m = (idx as u32).wrapping_mul(0x9E37_79B9) | 1;
    let mut conn = Conn {
        stream,
        leftover: head[h..].to_vec(),
        need: 0,
        subs: topics
            .iter()
            .map(|n| Sub {
                topic: n.as_bytes().into(),
                last_seq: 0,
                acked: false,
            })
            .collect(),
        pending: topics.len() as u32,
        sub_error: None,
        mask: m.to_be_bytes(),
        role,
        pong: None,
        last_pong: None,
    };
    let mut out = Vec::new();
    for (i, name) in topics.iter().enumerate() {
        let body = encode_subscribe(i as u32 + 1, name, None);
        ws::push_masked_frame(&mut out, ws::OP_BINARY, &body, conn.mask);
    }
    conn.stream
        .write_all(&out)
        .await
        .map_err(|e| FailCause::from_io(&e))?;
    // Bytes that came with the 101 are parsed with the next read's.
    while conn.pending > 0 {
        if let Some(code) = conn.sub_error {
            return Err(FailCause::Subscribe(code));
        }
        conn.read_once(w).await.map_err(|e| match e {
            End::CloseFrame(_) => FailCause::Closed,
            End::Protocol(_) => FailCause::Protocol,
            _ => FailCause::Reset,
        })?;
    }
    Ok(conn)
}

async fn connect_timed(
    w: &Shared,
    idx: u64,
    role: Role,
    topics: &[String],
) -> Result<Conn, FailCause> {
    let limit = Duration::from_millis(w.plan.connect_timeout_ms);
    match tokio::time::timeout(limit, establish(w, idx, role, topics)).await {
        Ok(r) => r,
        Err(_) => Err(FailCause::Timeout),
    }
}

/// Sleeps `d` unless the worker is stopping; false if it is.
async fn nap(w: &Shared, d: Duration) -> bool {
    if w.stopping.get() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !w.stopping.get(),
        _ = w.stop.notified() => false,
    }
}

async fn steady_task(w: Rc<Shared>, idx: u64) {
    let topics = [w.plan.steady_topics[(idx % w.plan.steady_topics.len() as u64) as usize].clone()];
    while !w.stopping.get() {
        let mut conn = match connect_timed(&w, idx, Role::Steady, &topics).await {
            Ok(c) => c,
            Err(cause) => {
                bump(&mut w.c().steady_connect_failures, cause.label());
                if !nap(&w, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        {
            let mut c = w.c();
            c.steady_open += 1;
            c.steady_connects += 1;
        }
        let far = Instant::now() + Duration::from_secs(100 * 24 * 3600);
        let res = conn.read_until(&w, far).await;
        w.c().steady_open -= 1;
        match res {
            Ok(()) => return, // stopping
            Err(end) => {
                let pong = match conn.last_pong.map(|t| t.elapsed()) {
                    None => "no_ping",
                    Some(d) if d < Duration::from_secs(10) => "pong_<10s",
                    Some(_) => "pong_>=10s",
                };
                bump(&mut w.c().steady_end_last_pong, pong.into());
                bump(&mut w.c().steady_ends, end.label());
                if !nap(&w, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }
}

async fn churn_one(w: Rc<Shared>, idx: u64) {
    let topics = [w.plan.steady_topics[(idx % w.plan.steady_topics.len() as u64) as usize].clone()];
    w.c().churn_started += 1;
    let mut conn = match connect_timed(&w, idx, Role::Churn, &topics).await {
        Ok(c) => c,
        Err(cause) => {
            if !w.stopping.get() {
                bump(&mut w.c().churn_connect_failures, cause.label());
            }
            return;
        }
    };
    w.c().churn_open += 1;
    let hold = Instant::now() + Duration::from_millis(w.plan.churn_hold_ms);
    let res = conn.read_until(&w, hold).await;
    if let Err(end) = res {
        w.c().churn_open -= 1;
        if !w.stopping.get() {
            bump(&mut w.c().churn_ends, end.label());
        }
        return;
    }
    if w.stopping.get() {
        w.c().churn_open -= 1;
        return;
    }
    // Our close, then herald's echo (publications may come first).
    ws::send_close(&mut conn.stream, 1000, conn.mask).await;
    let until = Instant::now() + Duration::from_secs(5);
    let end = loop {
        let r = tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| conn.poll_read(cx, &w)) => r,
            _ = tokio::time::sleep_until(until) => break None,
        };
        if let Err(e) = r {
            break Some(e);
        }
    };
    w.c().churn_open -= 1;
    match end {
        Some(End::CloseFrame(_)) | Some(End::Eof) => w.c().churn_clean += 1,
        Some(e) => bump(&mut w.c().churn_ends, format!("after_close_{}", e.label())),
        None => bump(&mut w.c().churn_ends, "no_close_echo".into()),
    }
}

async fn churn_loop(w: Rc<Shared>, first_idx: u64) {
    let rate = w.plan.churn_rate;
    if rate <= 0.0 {
        return;
    }
    let start = Instant::now();
    let mut i = 0u64;
    while !w.stopping.get() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = w.stop.notified() => return,
        }
        if w.stopping.get() {
            return;
        }
        let idx = first_idx + i * u64::from(w.plan.workers);
        tokio::task::spawn_local(churn_one(w.clone(), idx));
        i += 1;
    }
}

async fn slow_task(w: Rc<Shared>, idx: u64, group: usize, stalled: bool, phase: f64) {
    let topics = w.plan.slow[group].topics.clone();
    let policy = w.group(group);
    let role = Role::Slow { group, stalled };
    let read = Duration::from_millis(w.plan.slow_read_ms);
    let pause = Duration::from_millis(w.plan.slow_pause_ms);
    // Staggered: reader k starts `phase` of a cycle in.
    if !nap(&w, (read + pause).mul_f64(phase)).await {
        return;
    }
    while !w.stopping.get() {
        let mut conn = match connect_timed(&w, idx, role, &topics).await {
            Ok(c) => c,
            Err(cause) => {
                bump(
                    &mut w
                        .c()
                        .slow
                        .entry(policy.clone())
                        .or_default()
                        .connect_failures,
                    cause.label(),
                );
                if !nap(&w, Duration::from_secs(2)).await {
                    return;
                }
                continue;
            }
        };
        {
            let mut c = w.c();
            let g = c.slow.entry(policy.clone()).or_default();
            g.open += 1;
            g.connects += 1;
        }
        let res = async {
            if stalled {
                let far = Instant::now() + Duration::from_secs(100 * 24 * 3600);
                return conn.pause_until(&w, far).await;
            }
            while !w.stopping.get() {
                conn.read_until(&w, Instant::now() + read).await?;
                conn.pause_until(&w, Instant::now() + pause).await?;
            }
            Ok(())
        }
        .await;
        w.c().slow.entry(policy.clone()).or_default().open -= 1;
        match res {
            Ok(()) => return,
            Err(end) => {
                bump(
                    &mut w.c().slow.entry(policy.clone()).or_default().ends,
                    end.label(),
                );
                if !nap(&w, Duration::from_secs(2)).await {
                    return;
                }
            }
        }
    }
}

async fn launch_steady(w: Rc<Shared>) {
    let start = Instant::now();
    let rate = w.plan.connect_rate;
    for i in 0..w.plan.steady_conns {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = w.stop.notified() => return,
            }
        }
        if w.stopping.get() {
            return;
        }
        let idx = u64::from(w.plan.worker) + i * u64::from(w.plan.workers);
        tokio::task::spawn_local(steady_task(w.clone(), idx));
    }
}

/// The `soak-worker` subcommand.
pub fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-load soak-worker: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&rt, run()) {
        eprintln!("herald-load soak-worker: {e}");
        std::process::exit(1);
    }
    let _ = std::io::stdout().flush();
    // Don't wait for the blocking stdin reader; the sockets close with us.
    std::process::exit(0);
}

fn tick(w: &Shared, last: bool) -> Tick {
    let hist = {
        let mut h = w.hist.borrow_mut();
        let s = encode_histogram(&h);
        h.reset();
        s
    };
    Tick {
        worker: w.plan.worker,
        at_ms: now_ms(),
        hist,
        counts: w.counts.borrow().clone(),
        last,
    }
}

async fn run() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading the plan: {e}"))?;
    let plan: SoakPlan =
        serde_json::from_str(&line).map_err(|e| format!("bad plan on stdin: {e}"))?;
    if plan.steady_topics.is_empty() {
        return Err("plan: no steady topic".into());
    }
    let mut counts = Counts::default();
    for g in &plan.slow {
        counts.slow.insert(g.policy.clone(), SlowCounts::default());
    }
    let w = Rc::new(Shared {
        counts: RefCell::new(counts),
        hist: RefCell::new(new_histogram()),
        scratch: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        stop: Notify::new(),
        plan,
    });
    let stopped = Rc::new(Notify::new());
    {
        let stopped = stopped.clone();
        tokio::task::spawn_local(async move {
            let mut l = String::new();
            loop {
                l.clear();
                match stdin.read_line(&mut l).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if l.trim() == "stop" => break,
                    Ok(_) => {}
                }
            }
            stopped.notify_one();
        });
    }
    tokio::task::spawn_local(launch_steady(w.clone()));
    // Churn and slow readers get indices above every steady one.
    let workers = u64::from(w.plan.workers);
    let base = (w.plan.steady_conns + 1) * workers + u64::from(w.plan.worker);
    let mut k = 0u64;
    for (g, grp) in w.plan.slow.iter().enumerate() {
        let n = grp.pausers + grp.stalled;
        for j in 0..n {
            let stalled = j >= grp.pausers;
            let phase = if n > 0 { j as f64 / n as f64 } else { 0.0 };
            tokio::task::spawn_local(slow_task(w.clone(), base + k * workers, g, stalled, phase));
            k += 1;
        }
    }
    tokio::task::spawn_local(churn_loop(w.clone(), base + (k + 1) * workers));

    let left = w.plan.deadline_unix_ms.saturating_sub(now_ms());
    let deadline = Instant::now() + Duration::from_millis(left);
    let mut every = tokio::time::interval(Duration::from_millis(w.plan.tick_ms.max(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => emit(&tick(&w, false)),
            _ = stopped.notified() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    w.stopping.set(true);
    w.stop.notify_waiters();
    emit(&tick(&w, true));
    Ok(())
}
