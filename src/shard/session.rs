//! One WebSocket connection after the 101: its state, its writes, and the
//! task that reads its frames and answers its requests.
//!
//! Idle costs little: no read buffer is kept between messages, the outbox
//! is empty, and timers are the shard's, not the session's.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Sleep;

use super::outbox::Outbox;
use super::{Shard, WriteAcc, IOV_MAX, NONE};
use crate::auth::Claims;
use crate::handler::{SessionInfo, TransportError};
use crate::http::limits::{ConnPermit, TokenBucket};
use crate::http::Accepted;
use crate::hub::{HomeMsg, SessionKey};
use crate::metrics as m;
use crate::wire::client::{self, Request};
use crate::wire::ws::{self, Decoder, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Our close frame is queued; waiting for it to drain and for the peer.
    Closing,
    /// Gone: the task cleans up and drops the socket.
    Closed,
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
    pub subs: RefCell<Vec<SubSlot>>,
    pub phase: Cell<Phase>,
    pub close_code: Cell<u16>,
    /// The socket refused bytes; the session task waits for writability.
    pub want_write: Cell<bool>,
    /// In the shard's dirty list for the current batch.
    pub dirty: Cell<bool>,
    /// This batch's frames for this session, as a list in the shard arena.
    pub head: Cell<u32>,
    pub tail: Cell<u32>,
    pub wake: Notify,
    pub last_seen: Cell<Instant>,
    pub ping_sent: Cell<Option<Instant>>,
    pending_ack: RefCell<Option<oneshot::Sender<()>>>,
    /// Why the transport broke, for `Handler::on_transport_error`.
    transport_error: Cell<Option<TransportError>>,
    _permit: ConnPermit,
}

impl Session {
    pub fn new(
        key: SessionKey,
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        acc: Accepted,
    ) -> Self {
        Session {
            key,
            id,
            peer,
            stream,
            claims: RefCell::new(acc.claims),
            out: RefCell::new(Outbox::default()),
            subs: RefCell::new(Vec::new()),
            phase: Cell::new(Phase::Open),
            close_code: Cell::new(1006),
            want_write: Cell::new(false),
            dirty: Cell::new(false),
            head: Cell::new(NONE),
            tail: Cell::new(NONE),
            wake: Notify::new(),
            last_seen: Cell::new(Instant::now()),
            ping_sent: Cell::new(None),
            pending_ack: RefCell::new(None),
            transport_error: Cell::new(None),
            _permit: acc.permit,
        }
    }

    pub fn resolve_ack(&self) {
        if let Some(tx) = self.pending_ack.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// The socket is full: let the session task wait for it.
    pub fn block(&self) {
        if !self.want_write.replace(true) {
            self.wake.notify_one();
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
            // Our close frame is out: the task can half-close.
            self.wake.notify_one();
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
        // The task writes it: closes come from contexts (the delivery batch,
        // the ticker) that must not write out of order with the batch.
        self.wake.notify_one();
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
        self.transport_error.set(Some(why));
        self.wake.notify_one();
    }
}

/// What a decoded frame asks of the session, owned so the task can await.
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

/// Per-session state only the session task touches; lives in the task's
/// future, not in the shared `Session`.
struct Reader {
    decoder: Decoder,
    rbuf: Vec<u8>,
    bucket: Option<TokenBucket>,
    strikes: u32,
    peer_closed: bool,
}

const READ_CHUNK: usize = 4096;

pub(crate) async fn run(shard: Rc<Shard>, s: Rc<Session>, leftover: Bytes) {
    let set = &shard.settings;
    let mut r = Reader {
        decoder: Decoder::new(set.max_message),
        rbuf: leftover.to_vec(),
        bucket: (set.msgs_per_s > 0)
            .then(|| TokenBucket::new(set.msgs_per_s, set.burst, Instant::now())),
        strikes: 0,
        peer_closed: false,
    };
    let handler = shard.shared.handler.clone();
    let opened = {
        let claims = s.claims.borrow();
        handler.on_open(&info(&shard, &s, &claims))
    };
    if let Err(rej) = opened {
        s.close(1008, &rej.message);
    } else if !r.rbuf.is_empty() {
        process(&shard, &s, &mut r).await;
    }
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    let mut half_closed = false;
    loop {
        match s.phase.get() {
            Phase::Closed => break,
            Phase::Closing => {
                if deadline.is_none() {
                    deadline = Some(Box::pin(tokio::time::sleep(set.close)));
                }
                if s.out.borrow().is_empty() && !s.want_write.get() {
                    if !half_closed {
                        half_closed = true;
                        let _ =
                            socket2::SockRef::from(&s.stream).shutdown(std::net::Shutdown::Write);
                    }
                    if r.peer_closed {
                        break;
                    }
                }
            }
            Phase::Open => {}
        }
        if !s.want_write.get() && !s.out.borrow().is_empty() {
            let mut acc = WriteAcc::default();
            s.write_outbox(&mut acc);
            shard.m.bytes_out.increment(acc.bytes);
            shard.m.write_syscalls.increment(acc.syscalls);
            if s.out.borrow().is_empty() || s.want_write.get() || s.phase.get() == Phase::Closed {
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = s.wake.notified() => {}
            w = s.stream.writable(), if s.want_write.get() => {
                s.want_write.set(false);
                if let Err(e) = w {
                    s.fail(e.kind());
                }
            }
            rd = s.stream.readable(), if !r.peer_closed => {
                match rd {
                    Ok(()) => read(&shard, &s, &mut r).await,
                    Err(e) => s.fail(e.kind()),
                }
            }
            _ = expire(&mut deadline), if deadline.is_some() => break,
        }
    }
    Box::pin(finish(&shard, &s)).await;
}

/// Reports a session the shard drops without its task finishing (the drain
/// deadline passed), so `Handler::on_close` still runs once for it.
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

/// Resolves when the closing deadline passes; never without one.
async fn expire(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

async fn read(shard: &Rc<Shard>, s: &Rc<Session>, r: &mut Reader) {
    r.rbuf.reserve(READ_CHUNK);
    match s.stream.try_read_buf(&mut r.rbuf) {
        Ok(0) => {
            r.peer_closed = true;
            if s.phase.get() == Phase::Open {
                // Gone without a close frame.
                s.kill(TransportError::Io(io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(_) => {
            s.last_seen.set(Instant::now());
            s.ping_sent.set(None);
            process(shard, s, r).await;
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => s.fail(e.kind()),
    }
    if r.rbuf.is_empty() {
        // An idle connection holds no read buffer.
        r.rbuf = Vec::new();
    }
}

/// Decodes and handles every complete frame in the read buffer.
async fn process(shard: &Rc<Shard>, s: &Rc<Session>, r: &mut Reader) {
    let mut pos = 0;
    while pos < r.rbuf.len() && s.phase.get() != Phase::Closed {
        let (action, used) = match r.decoder.decode(&mut r.rbuf[pos..]) {
            Ok(None) => break,
            Ok(Some((None, used))) => (Action::None, used),
            Ok(Some((Some(ev), used))) => {
                let a = classify(shard, s, ev, &mut r.bucket, &mut r.strikes);
                (a, used)
            }
            Err(e) => {
                report(
                    shard,
                    s,
                    TransportError::Protocol {
                        code: e.code,
                        reason: e.reason,
                    },
                );
                (Action::Close(e.code, e.reason), r.rbuf.len() - pos)
            }
        };
        pos += used;
        if let Some(pending) = act_now(shard, s, r, action) {
            // Boxed: the rare awaiting requests must not size every idle
            // session's task.
            Box::pin(act_async(shard, s, pending)).await;
        }
    }
    r.rbuf.drain(..pos);
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
fn classify(
    shard: &Shard,
    s: &Session,
    ev: Event<'_>,
    bucket: &mut Option<TokenBucket>,
    strikes: &mut u32,
) -> Action {
    if s.phase.get() != Phase::Open {
        // Closing: only the peer's close frame still matters.
        return match ev {
            Event::Close(code, _) => Action::PeerClose(code),
            _ => Action::None,
        };
    }
    let limited = matches!(ev, Event::Binary(_) | Event::Ping(_))
        && bucket.as_mut().is_some_and(|b| !b.take(Instant::now()));
    if limited {
        *strikes += 1;
        if *strikes > shard.settings.strikes {
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

/// Does what needs no waiting; returns the action if it must await.
fn act_now(shard: &Rc<Shard>, s: &Rc<Session>, r: &mut Reader, action: Action) -> Option<Action> {
    match action {
        Action::None => {}
        Action::Send(frame) => shard.send(s, frame),
        Action::Close(code, reason) => s.close(code, reason),
        Action::PeerClose(code) => {
            r.peer_closed = true;
            if s.phase.get() == Phase::Open {
                // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                s.close(code.unwrap_or(1000), "");
            }
        }
        a => return Some(a),
    }
    None
}

async fn act_async(shard: &Rc<Shard>, s: &Rc<Session>, action: Action) {
    match action {
        Action::Subscribe { id, topic, recover } => {
            let (tx, rx) = oneshot::channel();
            *s.pending_ack.borrow_mut() = Some(tx);
            let msg = HomeMsg::Subscribe {
                topic: topic.clone(),
                shard: shard.id,
                session: s.key,
                id,
                recover,
            };
            if shard
                .shared
                .hub
                .home_sender(&topic)
                .send(msg)
                .await
                .is_err()
            {
                return;
            }
            // The delivery task sends the REPLY (in order with the topic's
            // deliveries) and then wakes us; requests stay in order.
            let _ = rx.await;
        }
        Action::Unsubscribe { id, topic } => {
            let removed = {
                let mut st = shard.st.borrow_mut();
                shard.remove_sub(&mut st, s, &topic)
            };
            if removed {
                shard.send(s, client::reply_frame(id));
                let msg = HomeMsg::Unsubscribe {
                    topic: topic.clone(),
                    shard: shard.id,
                };
                let _ = shard.shared.hub.home_sender(&topic).send(msg).await;
            } else {
                m::client_error(409);
                shard.send(s, client::error_frame(id, 409, "not subscribed"));
            }
        }
        Action::Publish { id, topic, payload } => {
            shard.m.published_client.increment(1);
            match shard.shared.hub.publish(topic, payload).await {
                Ok(seq) => shard.send(s, client::publish_reply_frame(id, seq)),
                Err(_) => {
                    m::client_error(500);
                    shard.send(s, client::error_frame(id, 500, "shutting down"));
                }
            }
        }
        Action::None | Action::Send(_) | Action::Close(..) | Action::PeerClose(_) => {}
    }
}

/// Leaves the shard's tables and tells the homes; runs once per session.
async fn finish(shard: &Rc<Shard>, s: &Rc<Session>) {
    s.phase.set(Phase::Closed);
    let topics: Vec<Arc<str>> = s.subs.borrow().iter().map(|x| x.topic.clone()).collect();
    let remaining = {
        let mut st = shard.st.borrow_mut();
        for t in &topics {
            shard.remove_sub(&mut st, s, t);
        }
        if Shard::session(&st, s.key).is_some() {
            st.sessions.remove(s.key.slot as usize);
        }
        st.sessions.len()
    };
    shard
        .stats()
        .connections
        .store(remaining as u64, std::sync::atomic::Ordering::Relaxed);
    shard.m.connections.set(remaining as f64);
    if let Some(err) = s.transport_error.get() {
        report(shard, s, err);
    }
    {
        let claims = s.claims.borrow();
        shard
            .shared
            .handler
            .on_close(&info(shard, s, &claims), s.close_code.get());
    }
    for t in topics {
        let msg = HomeMsg::Unsubscribe {
            topic: t.clone(),
            shard: shard.id,
        };
        let _ = shard.shared.hub.home_sender(&t).send(msg).await;
    }
}
