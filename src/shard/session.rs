//! One WebSocket connection after the 101: its state, its writes, and the
//! state machine that reads its frames and answers its requests.
//!
//! A session has no task of its own. Its socket's readiness wakes a
//! [`SlotWaker`] that queues the session's key for the shard's reactor,
//! which then calls [`drive`]. The rare requests that must wait for another
//! shard (SUBSCRIBE, PUBLISH) park the session (`pending`) and hand the wait
//! to a short-lived task. So an idle session is its struct, its socket and
//! one small waker: no task, no read buffer, no outbox, no timer.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::spawn_local;

use super::outbox::Outbox;
use super::{Shard, WriteAcc, IOV_MAX, NONE};
use crate::auth::Claims;
use crate::handler::{SessionInfo, TransportError};
use crate::http::limits::ConnPermit;
use crate::http::Accepted;
use crate::hub::{HomeMsg, HubError, SessionKey, SubscribeReq};
use crate::metrics as m;
use crate::wire::client::{self, Request};
use crate::wire::ws::{self, Decoder, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Our close frame is queued; waiting for it to drain and for the peer.
    Closing,
    /// Gone: the reactor cleans up and drops the socket.
    Closed,
}

/// What reading needs between two reads of an incomplete frame.
struct Input {
    decoder: Decoder,
    buf: Vec<u8>,
}

pub(crate) struct SubSlot {
    pub topic: Arc<str>,
    /// Index of this session in the shard's list for `topic`.
    pub pos: u32,
}

pub(crate) struct Session {
    pub key: SessionKey,
    pub id: u64,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    pub claims: RefCell<Claims>,
    pub out: RefCell<Outbox>,
    /// Inline for the common single subscription: one allocation fewer.
    pub subs: RefCell<SmallVec<[SubSlot; 1]>>,
    pub phase: Cell<Phase>,
    pub close_code: Cell<u16>,
    /// The socket refused bytes; the reactor waits for writability.
    pub want_write: Cell<bool>,
    /// In the shard's dirty list for the current batch.
    pub dirty: Cell<bool>,
    /// This batch's frames for this session, as a list in the shard arena.
    pub head: Cell<u32>,
    pub tail: Cell<u32>,
    waker: Arc<SlotWaker>,
    // Times are the shard clock's milliseconds (`Shard::now_ms`), 0 = none:
    // a fifth of the size of `Option<Instant>`, on every idle session.
    pub last_seen: Cell<u64>,
    pub ping_sent: Cell<u64>,
    /// A request is waiting for another shard; input stays unread.
    pending: Cell<bool>,
    /// Why the transport broke, for `Handler::on_transport_error`.
    /// Boxed: rare, and a pointer is a third of the enum.
    transport_error: Cell<Option<Box<TransportError>>>,
    /// Unparsed input and the frame decoder's state; only while a read
    /// leaves an incomplete frame (or fragment) behind.
    input: RefCell<Option<Box<Input>>>,
    /// Rate-limit tokens left and when they were counted (shard ms, low
    /// 32 bits; differences wrap correctly).
    bucket: Cell<(f32, u32)>,
    strikes: Cell<u32>,
    peer_closed: Cell<bool>,
    half_closed: Cell<bool>,
    pub close_deadline: Cell<u64>,
    _permit: ConnPermit,
}

/// The shard's queue of sessions to drive. Wakers are `Send + Sync` by
/// contract, hence the mutex; it is only ever taken on the shard's thread.
#[derive(Default)]
pub(crate) struct ReadyQueue {
    keys: Mutex<Vec<SessionKey>>,
    pub notify: Notify,
}

impl ReadyQueue {
    /// Swaps the queued keys into `into` (which must be empty).
    pub fn take(&self, into: &mut Vec<SessionKey>) {
        std::mem::swap(&mut *self.keys.lock(), into);
    }
}

/// A session's waker: registered with its socket's readiness, it queues the
/// session for the reactor (once, until driven).
pub(crate) struct SlotWaker {
    key: SessionKey,
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.keys.lock().push(self.key);
            self.queue.notify.notify_one();
        }
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: SessionKey,
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        acc: Accepted,
        queue: Arc<ReadyQueue>,
        set: &super::Settings,
        leftover: Vec<u8>,
        now_ms: u64,
    ) -> Self {
        Session {
            key,
            id,
            peer,
            stream,
            claims: RefCell::new(acc.claims),
            out: RefCell::new(Outbox::default()),
            subs: RefCell::new(SmallVec::new()),
            phase: Cell::new(Phase::Open),
            close_code: Cell::new(1006),
            want_write: Cell::new(false),
            dirty: Cell::new(false),
            head: Cell::new(NONE),
            tail: Cell::new(NONE),
            waker: Arc::new(SlotWaker {
                key,
                queued: AtomicBool::new(false),
                queue,
            }),
            last_seen: Cell::new(now_ms),
            ping_sent: Cell::new(0),
            pending: Cell::new(false),
            transport_error: Cell::new(None),
            input: RefCell::new((!leftover.is_empty()).then(|| {
                Box::new(Input {
                    decoder: Decoder::new(set.max_message),
                    buf: leftover,
                })
            })),
            bucket: Cell::new((set.burst as f32, now_ms as u32)),
            strikes: Cell::new(0),
            peer_closed: Cell::new(false),
            half_closed: Cell::new(false),
            close_deadline: Cell::new(0),
            _permit: acc.permit,
        }
    }

    /// Queues this session for the reactor.
    pub fn schedule(&self) {
        self.waker.wake_by_ref();
    }

    /// The awaited answer came: resume reading.
    pub fn resume(&self) {
        if self.pending.replace(false) {
            self.schedule();
        }
    }

    /// The socket is full: let the reactor wait for it.
    pub fn block(&self) {
        if !self.want_write.replace(true) {
            self.schedule();
        }
    }

    /// Writes the outbox until it is empty or the socket is full.
    pub fn write_outbox(&self, acc: &mut WriteAcc) {
        loop {
            if self.phase.get() == Phase::Closed {
                return;
            }
            let result = {
                let out = self.out.borrow();
                if out.is_empty() {
                    break;
                }
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.fill(&mut iov);
                let total: usize = iov[..n].iter().map(|s| s.len()).sum();
                self.stream
                    .try_write_vectored(&iov[..n])
                    .map(|w| (w, w < total))
            };
            match result {
                Ok((w, partial)) => {
                    acc.syscalls += 1;
                    acc.bytes += w as u64;
                    self.out.borrow_mut().advance(w);
                    if partial {
                        self.block();
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.block();
                    return;
                }
                Err(e) => {
                    self.fail(e.kind());
                    return;
                }
            }
        }
        if self.phase.get() == Phase::Closing {
            // Our close frame is out: the reactor can half-close.
            self.schedule();
        }
    }

    /// Sends one frame outside a delivery batch (replies, pings): straight
    /// to the socket when nothing is queued, so an idle session never needs
    /// an outbox; behind the queue otherwise.
    pub fn send(&self, frame: Bytes, max_outbox: usize) -> WriteAcc {
        let mut acc = WriteAcc::default();
        if self.phase.get() == Phase::Closed {
            return acc;
        }
        if self.out.borrow().is_empty() && !self.want_write.get() {
            match self.stream.try_write(&frame) {
                Ok(w) => {
                    acc.syscalls += 1;
                    acc.bytes += w as u64;
                    if w == frame.len() {
                        return acc;
                    }
                    self.out.borrow_mut().push(frame.slice(w..));
                    self.block();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.out.borrow_mut().push(frame);
                    self.block();
                }
                Err(e) => self.fail(e.kind()),
            }
        } else {
            self.out.borrow_mut().push(frame);
            if !self.want_write.get() {
                self.write_outbox(&mut acc);
            }
        }
        if self.out.borrow().bytes() > max_outbox && self.phase.get() == Phase::Open {
            acc.dropped_slow += self.close_slow() as u64;
        }
        acc
    }

    /// Starts the closing handshake with `code`; what is already queued is
    /// still delivered first.
    pub fn close(&self, code: u16, reason: &str) {
        if self.phase.get() != Phase::Open {
            return;
        }
        self.phase.set(Phase::Closing);
        self.close_code.set(code);
        m::close(code);
        self.out.borrow_mut().push(ws::close_frame(code, reason));
        // The reactor writes it: closes come from contexts (the delivery
        // batch, the ticker) that must not write out of order with a batch.
        self.schedule();
    }

    /// Closes a subscriber that cannot keep up (4008), dropping what it has
    /// not started to receive. Returns the number of frames dropped.
    pub fn close_slow(&self) -> usize {
        if self.phase.get() != Phase::Open {
            return 0;
        }
        let dropped = self.out.borrow_mut().drop_unstarted();
        tracing::debug!(session = self.id, peer = %self.peer, dropped, "slow consumer closed");
        self.close(4008, "slow consumer");
        dropped
    }

    /// The transport broke: no close handshake is possible.
    pub fn fail(&self, kind: io::ErrorKind) {
        self.kill_with(TransportError::Io(kind));
    }

    pub fn kill(&self, why: TransportError) {
        self.kill_with(why);
    }

    fn kill_with(&self, why: TransportError) {
        if self.phase.get() == Phase::Closed {
            return;
        }
        if self.phase.get() == Phase::Open {
            self.close_code.set(1006);
            m::close(1006);
        }
        self.phase.set(Phase::Closed);
        self.transport_error.set(Some(Box::new(why)));
        self.schedule();
    }
}

/// What a decoded frame asks of the session, owned: acting on it never
/// holds the input buffer or the decoder.
enum Action {
    None,
    Send(Bytes),
    Close(u16, &'static str),
    PeerClose(Option<u16>),
    Subscribe {
        id: u32,
        topic: Arc<str>,
        recover: Option<(u64, Option<Box<str>>)>,
    },
    Unsubscribe {
        id: u32,
        topic: Arc<str>,
    },
    Publish {
        id: u32,
        topic: Arc<str>,
        payload: Bytes,
    },
}

/// Reads at most this many times per drive, so one busy client cannot
/// starve the others on its shard.
const READ_BUDGET: usize = 4;
const READ_CHUNK: usize = 4096;

/// Advances a session as far as it can go without waiting: writes what is
/// queued, reads and answers what arrived, closes or cleans up; then leaves
/// its waker registered for whatever it waits for next.
pub(crate) fn drive(shard: &Rc<Shard>, s: &Rc<Session>) {
    s.waker.queued.store(false, Ordering::Release);
    let waker = Waker::from(s.waker.clone());
    let mut cx = Context::from_waker(&waker);
    let mut reads = 0;
    // Input parked while a request waited is parsed before reading more.
    let mut parse_first = s.input.borrow().as_ref().is_some_and(|i| !i.buf.is_empty());
    loop {
        match s.phase.get() {
            Phase::Closed => return finish(shard, s),
            Phase::Closing => {
                if s.close_deadline.get() == 0 {
                    let close = shard.settings.close.as_millis() as u64;
                    s.close_deadline.set(shard.now_ms() + close);
                }
                if s.out.borrow().is_empty() && !s.want_write.get() {
                    if !s.half_closed.replace(true) {
                        let _ =
                            socket2::SockRef::from(&s.stream).shutdown(std::net::Shutdown::Write);
                    }
                    if s.peer_closed.get() {
                        return finish(shard, s);
                    }
                }
            }
            Phase::Open => {}
        }
        if s.want_write.get() {
            match s.stream.poll_write_ready(&mut cx) {
                Poll::Ready(Ok(())) => s.want_write.set(false),
                Poll::Ready(Err(e)) => {
                    s.fail(e.kind());
                    continue;
                }
                Poll::Pending => {}
            }
        }
        if !s.want_write.get() && !s.out.borrow().is_empty() {
            let mut acc = WriteAcc::default();
            s.write_outbox(&mut acc);
            shard.m.bytes_out.increment(acc.bytes);
            shard.m.write_syscalls.increment(acc.syscalls);
            if s.phase.get() != Phase::Open && s.out.borrow().is_empty() {
                // Closed, or the close frame just went out: re-evaluate.
                continue;
            }
        }
        if s.pending.get() || s.peer_closed.get() {
            return;
        }
        if parse_first {
            parse_first = false;
            process(shard, s);
            continue;
        }
        if reads == READ_BUDGET {
            // Still readable, but let the others have a turn.
            s.schedule();
            return;
        }
        match s.stream.poll_read_ready(&mut cx) {
            Poll::Ready(Ok(())) => {
                reads += 1;
                read(shard, s);
            }
            Poll::Ready(Err(e)) => s.fail(e.kind()),
            Poll::Pending => return,
        }
    }
}

fn read(shard: &Rc<Shard>, s: &Rc<Session>) {
    let result = {
        let mut input = s.input.borrow_mut();
        let input = input.get_or_insert_with(|| {
            Box::new(Input {
                decoder: Decoder::new(shard.settings.max_message),
                buf: Vec::new(),
            })
        });
        input.buf.reserve(READ_CHUNK);
        s.stream.try_read_buf(&mut input.buf)
    };
    match result {
        Ok(0) => {
            s.peer_closed.set(true);
            if s.phase.get() == Phase::Open {
                // Gone without a close frame.
                s.kill(TransportError::Io(io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(_) => {
            s.last_seen.set(shard.now_ms());
            s.ping_sent.set(0);
            process(shard, s);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => s.fail(e.kind()),
    }
    let mut input = s.input.borrow_mut();
    if input
        .as_ref()
        .is_some_and(|i| i.buf.is_empty() && i.decoder.is_idle())
    {
        // An idle connection holds no read buffer.
        *input = None;
    }
}

/// Decodes and handles complete frames until the input runs out or a
/// request must wait; what is left stays in `rbuf`.
fn process(shard: &Rc<Shard>, s: &Rc<Session>) {
    // Taken out so handling a frame can never meet a borrowed buffer.
    let Some(mut input) = s.input.borrow_mut().take() else {
        return;
    };
    let Input { decoder, buf: rbuf } = &mut *input;
    let mut pos = 0;
    while pos < rbuf.len() && s.phase.get() != Phase::Closed && !s.pending.get() {
        let (action, used) = {
            match decoder.decode(&mut rbuf[pos..]) {
                Ok(None) => break,
                Ok(Some((None, used))) => (Action::None, used),
                Ok(Some((Some(ev), used))) => (classify(shard, s, ev), used),
                Err(e) => {
                    report(
                        shard,
                        s,
                        TransportError::Protocol {
                            code: e.code,
                            reason: e.reason,
                        },
                    );
                    (Action::Close(e.code, e.reason), rbuf.len() - pos)
                }
            }
        };
        pos += used;
        act(shard, s, action);
    }
    rbuf.drain(..pos);
    if !rbuf.is_empty() || !decoder.is_idle() {
        *s.input.borrow_mut() = Some(input);
    }
}

fn report(shard: &Shard, s: &Session, err: TransportError) {
    let claims = s.claims.borrow();
    shard
        .shared
        .handler
        .on_transport_error(&info(shard, s, &claims), &err);
}

fn info<'a>(shard: &Shard, s: &Session, claims: &'a Claims) -> SessionInfo<'a> {
    SessionInfo {
        id: s.id,
        shard: shard.id,
        peer: s.peer,
        claims,
    }
}

fn error(id: u32, code: u16, message: &str) -> Action {
    m::client_error(code);
    Action::Send(client::error_frame(id, code, message))
}

/// The synchronous part of handling a frame: every check that needs no
/// other task. Returns what is left to do.
fn classify(shard: &Shard, s: &Session, ev: Event<'_>) -> Action {
    if s.phase.get() != Phase::Open {
        // Closing: only the peer's close frame still matters.
        return match ev {
            Event::Close(code, _) => Action::PeerClose(code),
            _ => Action::None,
        };
    }
    let limited = matches!(ev, Event::Binary(_) | Event::Ping(_)) && {
        let set = &shard.settings;
        set.msgs_per_s > 0 && {
            // A token bucket: `msgs_per_s` tokens a second, `burst` at most.
            let (tokens, at) = s.bucket.get();
            let now = shard.now_ms() as u32;
            let dt = now.wrapping_sub(at) as f32 / 1000.0;
            let tokens = (tokens + dt * set.msgs_per_s as f32).min(set.burst.max(1) as f32);
            let empty = tokens < 1.0;
            s.bucket
                .set((if empty { tokens } else { tokens - 1.0 }, now));
            empty
        }
    };
    if limited {
        let strikes = s.strikes.get() + 1;
        s.strikes.set(strikes);
        if strikes > shard.settings.strikes {
            return Action::Close(4029, "rate limited");
        }
    }
    let msg = match ev {
        Event::Text => return Action::Close(1003, "text frames are not supported"),
        Event::Ping(p) if limited => {
            let _ = p;
            return Action::None;
        }
        Event::Ping(p) => return Action::Send(ws::pong_frame(p)),
        Event::Pong(_) => return Action::None,
        Event::Close(code, _) => return Action::PeerClose(code),
        Event::Binary(msg) => msg,
    };
    let req = match client::decode_request(msg) {
        Ok(req) => req,
        Err(e) => return error(e.id, 400, e.message),
    };
    if limited {
        return error(req.id(), 429, "rate limited");
    }
    let claims = s.claims.borrow();
    match &req {
        Request::Subscribe { id, topic, .. } => {
            if !claims.topics.allows(topic) {
                return error(*id, 403, "topic not allowed");
            }
            let subs = s.subs.borrow();
            if subs.iter().any(|x| &*x.topic == *topic) {
                return error(*id, 409, "already subscribed");
            }
            if subs.len() >= shard.settings.max_subscriptions {
                return error(*id, 413, "too many subscriptions");
            }
        }
        Request::Unsubscribe { id, topic } => {
            if !s.subs.borrow().iter().any(|x| &*x.topic == *topic) {
                return error(*id, 409, "not subscribed");
            }
        }
        Request::Publish { id, topic, .. } => {
            if !claims.publish.allows(topic) {
                return error(*id, 403, "publishing to this topic is not allowed");
            }
        }
        Request::Ping { .. } | Request::Refresh { .. } => {}
    }
    if let Err(rej) = shard
        .shared
        .handler
        .on_message(&info(shard, s, &claims), &req)
    {
        return error(req.id(), rej.code, &rej.message);
    }
    drop(claims);
    match req {
        Request::Subscribe { id, topic, recover } => Action::Subscribe {
            id,
            topic: Arc::from(topic),
            recover: recover.map(|r| (r.since, r.epoch.map(Box::from))),
        },
        Request::Unsubscribe { id, topic } => Action::Unsubscribe {
            id,
            topic: Arc::from(topic),
        },
        Request::Ping { id } => Action::Send(client::reply_frame(id)),
        Request::Refresh { id, token } => refresh(shard, s, id, token),
        Request::Publish { id, topic, payload } => Action::Publish {
            id,
            topic: Arc::from(topic),
            payload: Bytes::copy_from_slice(payload),
        },
    }
}

fn refresh(shard: &Shard, s: &Session, id: u32, token: &str) -> Action {
    match shard.shared.gate.verifier.verify(token) {
        Err(e) => error(id, 401, e.reason()),
        Ok(new) => {
            let mut claims = s.claims.borrow_mut();
            if new.sub != claims.sub {
                drop(claims);
                return error(id, 403, "token is for another user");
            }
            *claims = new;
            Action::Send(client::reply_frame(id))
        }
    }
}

fn act(shard: &Rc<Shard>, s: &Rc<Session>, action: Action) {
    match action {
        Action::None => {}
        Action::Send(frame) => shard.send(s, frame),
        Action::Close(code, reason) => s.close(code, reason),
        Action::PeerClose(code) => {
            s.peer_closed.set(true);
            if s.phase.get() == Phase::Open {
                // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                s.close(code.unwrap_or(1000), "");
            }
        }
        Action::Subscribe { id, topic, recover } => {
            // The delivery task sends the REPLY (in order with the topic's
            // deliveries) and then resumes us: requests stay in order.
            s.pending.set(true);
            let msg = HomeMsg::Subscribe {
                topic: topic.clone(),
                req: SubscribeReq {
                    shard: shard.id,
                    session: s.key,
                    id,
                    recover,
                },
            };
            let tx = shard.shared.hub.home_sender(&topic).clone();
            spawn_local(async move {
                let _ = tx.send(msg).await;
            });
        }
        Action::Unsubscribe { id, topic } => {
            let removed = {
                let mut st = shard.st.borrow_mut();
                shard.remove_sub(&mut st, s, &topic)
            };
            if removed {
                shard.send(s, client::reply_frame(id));
                shard.release_interest(topic);
            } else {
                m::client_error(409);
                shard.send(s, client::error_frame(id, 409, "not subscribed"));
            }
        }
        Action::Publish { id, topic, payload } => {
            shard.m.published_client.increment(1);
            s.pending.set(true);
            let (shard, s) = (shard.clone(), s.clone());
            spawn_local(async move {
                let frame = match shard.shared.hub.publish(topic, payload).await {
                    Ok(seq) => client::publish_reply_frame(id, seq),
                    Err(HubError::Unavailable) => {
                        m::client_error(503);
                        client::error_frame(id, 503, "the cluster broker is unreachable")
                    }
                    Err(HubError::TooLarge) => {
                        m::client_error(413);
                        client::error_frame(id, 413, "too large for the cluster broker")
                    }
                    Err(HubError::Closed) => {
                        m::client_error(500);
                        client::error_frame(id, 500, "shutting down")
                    }
                };
                shard.send(&s, frame);
                s.resume();
            });
        }
    }
}

/// Leaves the shard's tables and tells the homes; runs once per session.
fn finish(shard: &Rc<Shard>, s: &Rc<Session>) {
    s.phase.set(Phase::Closed);
    let topics: Vec<Arc<str>> = s.subs.borrow().iter().map(|x| x.topic.clone()).collect();
    let remaining = {
        let mut st = shard.st.borrow_mut();
        if Shard::session(&st, s.key).is_none() {
            // Finished already: a wake-up can follow the last one.
            return;
        }
        for t in &topics {
            shard.remove_sub(&mut st, s, t);
        }
        st.sessions.remove(s.key.slot as usize);
        st.sessions.len()
    };
    shard
        .stats()
        .connections
        .store(remaining as u64, std::sync::atomic::Ordering::Relaxed);
    shard.m.connections.set(remaining as f64);
    if let Some(err) = s.transport_error.take() {
        report(shard, s, *err);
    }
    {
        let claims = s.claims.borrow();
        shard
            .shared
            .handler
            .on_close(&info(shard, s, &claims), s.close_code.get());
    }
    for t in topics {
        shard.release_interest(t);
    }
}

/// Reports a session the shard drops unfinished (the drain deadline
/// passed), so `Handler::on_close` still runs once for it.
pub(crate) fn abandon(shard: &Shard, s: &Session) {
    if s.phase.get() == Phase::Open {
        s.close_code.set(1006);
        m::close(1006);
    }
    s.phase.set(Phase::Closed);
    let claims = s.claims.borrow();
    shard
        .shared
        .handler
        .on_close(&info(shard, s, &claims), s.close_code.get());
}
