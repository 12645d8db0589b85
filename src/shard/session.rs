//! One WebSocket connection after the 101: its state, its writes, and the
//! state machine that reads its frames and answers its requests.
//!
//! A session has no task of its own. Its socket's readiness wakes a
//! [`SlotWaker`] that queues the session's key for the shard's reactor,
//! which then calls [`drive`]. The rare requests that must wait for another
//! shard (SUBSCRIBE, PUBLISH) park the session (`pending`) and hand the wait
//! to a short-lived task. So an idle session is its struct, its socket and
//! one small waker: no task, no read buffer, no outbox, no timer.
//!
//! The session owns its state: the shard reaches it only through the
//! methods below. Decisions that depend on time ([`due`], [`take_token`])
//! are plain functions of the state and `now`, tested without sockets.
//! Every byte written to the client goes through [`Session::write_iov`].

use std::cell::{Cell, Ref, RefCell};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::task::spawn_local;

use super::outbox::{Kind, Offer, Outbox};
use super::{Link, Shard, WriteAcc, IOV_MAX, NONE};
use crate::auth::Claims;
use crate::handler::{SessionInfo, TransportError};
use crate::http::limits::ConnPermit;
use crate::http::Accepted;
use crate::hub::{HomeMsg, HubError, SessionKey, SubscribeReq};
use crate::metrics as m;
use crate::transport::Stream;
use crate::wire::client::{self, Request};
use crate::wire::close::Close;
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

struct SubSlot {
    topic: Arc<str>,
    /// Index of this session in the shard's list for `topic`.
    pos: u32,
}

/// The session's clocks, in the shard clock's milliseconds
/// (`Shard::now_ms`), 0 = none: a fifth of the size of `Option<Instant>`,
/// on every idle session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Clocks {
    /// Last time the peer sent anything.
    pub last_seen: u64,
    /// When our unanswered ping went out.
    pub ping_sent: u64,
    /// When a closing session is dropped whatever the peer does.
    pub close_deadline: u64,
}

/// The keepalive and expiry settings [`due`] decides with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub leeway_s: u64,
}

/// What a tick owes a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// Quiet for a ping interval: ping it.
    Ping,
    /// No pong within the timeout: the transport is gone.
    PingTimeout,
    /// Its token expired (4001).
    Expired,
    /// It never answered our close: drop it.
    CloseTimedOut,
}

/// The keepalive and expiry decision: a function of the session's phase,
/// clocks and token expiry, `now` (shard ms) and `unix` (seconds).
pub(crate) fn due(phase: Phase, c: Clocks, exp: u64, now: u64, unix: u64, t: Timing) -> Due {
    match phase {
        Phase::Closed => Due::Nothing,
        Phase::Closing => {
            if c.close_deadline != 0 && now >= c.close_deadline {
                Due::CloseTimedOut
            } else {
                Due::Nothing
            }
        }
        // The same leeway the handshake granted, or a token accepted within
        // it would be closed on the next tick.
        Phase::Open if exp.saturating_add(t.leeway_s) < unix => Due::Expired,
        Phase::Open if c.ping_sent != 0 => {
            if now.saturating_sub(c.ping_sent) >= t.pong_timeout_ms {
                Due::PingTimeout
            } else {
                Due::Nothing
            }
        }
        Phase::Open if now.saturating_sub(c.last_seen) >= t.ping_interval_ms => Due::Ping,
        Phase::Open => Due::Nothing,
    }
}

/// A token bucket: `per_s` tokens a second, `burst` at most. The state is
/// (tokens left, when counted: shard ms, low 32 bits; differences wrap
/// correctly). Returns the new state and whether the request is over the
/// limit.
pub(crate) fn take_token(
    state: (f32, u32),
    now: u32,
    per_s: u32,
    burst: u32,
) -> ((f32, u32), bool) {
    let (tokens, at) = state;
    let dt = now.wrapping_sub(at) as f32 / 1000.0;
    let tokens = (tokens + dt * per_s as f32).min(burst.max(1) as f32);
    if tokens < 1.0 {
        ((tokens, now), true)
    } else {
        ((tokens - 1.0, now), false)
    }
}

/// What became of a publication offered to a session in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Linked into the batch: written with the session's other frames.
    Linked,
    /// The session is behind: the outbox took it (or a policy acted).
    Queued(Offer),
    /// Not open: dropped.
    Closed,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Everything offered.
    All,
    /// This many bytes; the socket is full and the reactor will wait for it.
    Part(usize),
    /// The transport broke; the session is closed.
    Failed,
}

pub(crate) struct Session {
    pub key: SessionKey,
    pub id: u64,
    pub peer: SocketAddr,
    stream: Stream,
    claims: RefCell<Claims>,
    out: RefCell<Outbox>,
    /// Inline for the common single subscription: one allocation fewer.
    subs: RefCell<SmallVec<[SubSlot; 1]>>,
    phase: Cell<Phase>,
    close_code: Cell<Close>,
    /// The socket refused bytes; the reactor waits for writability.
    want_write: Cell<bool>,
    /// In the shard's dirty list for the current batch.
    dirty: Cell<bool>,
    /// This batch's frames for this session, as a list in the shard arena.
    head: Cell<u32>,
    tail: Cell<u32>,
    waker: Arc<SlotWaker>,
    clocks: Cell<Clocks>,
    /// A request is waiting for another shard; input stays unread.
    pending: Cell<bool>,
    /// Why the transport broke, for `Handler::on_transport_error`.
    /// Boxed: rare, and a pointer is a third of the enum.
    transport_error: Cell<Option<Box<TransportError>>>,
    /// Unparsed input and the frame decoder's state; only while a read
    /// leaves an incomplete frame (or fragment) behind.
    input: RefCell<Option<Box<Input>>>,
    /// Rate-limit state for [`take_token`].
    bucket: Cell<(f32, u32)>,
    strikes: Cell<u32>,
    peer_closed: Cell<bool>,
    half_closed: Cell<bool>,
    /// Came in on the `autobahn` echo route: messages are echoed, not
    /// requests. Read only where a frame is received.
    #[cfg(feature = "autobahn")]
    echo: bool,
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
        stream: Stream,
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
            close_code: Cell::new(Close::Abnormal),
            want_write: Cell::new(false),
            dirty: Cell::new(false),
            head: Cell::new(NONE),
            tail: Cell::new(NONE),
            waker: Arc::new(SlotWaker {
                key,
                queued: AtomicBool::new(false),
                queue,
            }),
            clocks: Cell::new(Clocks {
                last_seen: now_ms,
                ..Clocks::default()
            }),
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
            #[cfg(feature = "autobahn")]
            echo: acc.echo,
            _permit: acc.permit,
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase.get() == Phase::Open
    }

    pub fn claims(&self) -> Ref<'_, Claims> {
        self.claims.borrow()
    }

    // --- subscriptions (the shard's index keeps the other half) ---

    pub fn subscription_count(&self) -> usize {
        self.subs.borrow().len()
    }

    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.subs.borrow().iter().any(|x| &*x.topic == topic)
    }

    pub fn topics(&self) -> Vec<Arc<str>> {
        self.subs.borrow().iter().map(|x| x.topic.clone()).collect()
    }

    /// Records that this session is at `pos` in the shard's list of `topic`.
    pub fn add_subscription(&self, topic: Arc<str>, pos: u32) {
        self.subs.borrow_mut().push(SubSlot { topic, pos });
    }

    /// Forgets `topic`; returns where the session was in its list.
    pub fn remove_subscription(&self, topic: &str) -> Option<u32> {
        let mut subs = self.subs.borrow_mut();
        let i = subs.iter().position(|x| &*x.topic == topic)?;
        Some(subs.swap_remove(i).pos)
    }

    /// The shard moved this session to `pos` in the list of `topic`.
    pub fn move_subscription(&self, topic: &str, pos: u32) {
        if let Some(e) = self
            .subs
            .borrow_mut()
            .iter_mut()
            .find(|x| &*x.topic == topic)
        {
            e.pos = pos;
        }
    }

    // --- scheduling ---

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
    fn block(&self) {
        if !self.want_write.replace(true) {
            self.schedule();
        }
    }

    // --- the write path ---

    /// The only place a session's socket is written: one vectored write of
    /// `total` bytes, with its partial writes, errors and counts.
    fn write_iov(&self, iov: &[IoSlice<'_>], total: usize, acc: &mut WriteAcc) -> Wrote {
        match self.stream.try_write_vectored(iov) {
            Ok(w) => {
                acc.syscalls += 1;
                acc.bytes += w as u64;
                if w < total {
                    self.block();
                    Wrote::Part(w)
                } else {
                    if self.stream.has_pending() {
                        // TLS: sealed, not yet on the socket.
                        self.block();
                    }
                    Wrote::All
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.block();
                Wrote::Part(0)
            }
            Err(e) => {
                self.fail(e.kind());
                Wrote::Failed
            }
        }
    }

    /// Applies what a policy decided about a queued frame.
    fn settled(&self, offer: Offer, acc: &mut WriteAcc) {
        match offer {
            Offer::Queued => {}
            Offer::Replaced => acc.conflated += 1,
            Offer::Dropped(n) => acc.dropped_oldest += n as u64,
            Offer::Overflow => acc.dropped_slow += self.close_slow() as u64,
        }
    }

    /// Offers frame `fi` of the current batch (`frame`, of kind `kind`):
    /// linked into the batch arena while the socket keeps up, else behind
    /// the outbox (and its policies) so order holds. `kind` is only built
    /// on that slow path.
    pub fn enqueue(
        &self,
        arena: &mut Vec<Link>,
        fi: u32,
        frame: &Bytes,
        kind: impl FnOnce() -> Kind,
        bound: usize,
        acc: &mut WriteAcc,
    ) -> Enqueued {
        if self.phase.get() != Phase::Open {
            return Enqueued::Closed;
        }
        if !self.out.borrow().is_empty() {
            let offer = self.out.borrow_mut().push(frame.clone(), kind(), bound);
            self.settled(offer, acc);
            return Enqueued::Queued(offer);
        }
        let idx = arena.len() as u32;
        arena.push(Link {
            frame: fi,
            next: NONE,
        });
        let tail = self.tail.replace(idx);
        if tail == NONE {
            self.head.set(idx);
        } else {
            arena[tail as usize].next = idx;
        }
        Enqueued::Linked
    }

    /// Puts the session on the batch's dirty list once.
    pub fn mark_dirty(&self) -> bool {
        !self.dirty.replace(true)
    }

    /// Writes what the batch queued for this session (one vectored write
    /// per `IOV_MAX` frames while the socket takes them), then its outbox.
    /// What the socket refuses goes to the front of the outbox, under the
    /// slow-consumer policies.
    pub fn flush(
        &self,
        arena: &[Link],
        frames: &[Bytes],
        kinds: &[Kind],
        bound: usize,
        acc: &mut WriteAcc,
    ) {
        self.dirty.set(false);
        self.write_chain(arena, frames, kinds, bound, acc);
        if !self.want_write.get() {
            self.write_outbox(acc);
        }
    }

    fn write_chain(
        &self,
        arena: &[Link],
        frames: &[Bytes],
        kinds: &[Kind],
        bound: usize,
        acc: &mut WriteAcc,
    ) {
        let mut cur = self.head.replace(NONE);
        self.tail.set(NONE);
        if cur == NONE || self.phase.get() == Phase::Closed {
            return;
        }
        let frame = |i: u32| &frames[arena[i as usize].frame as usize];
        loop {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            let mut total = 0;
            let mut c = cur;
            while c != NONE && n < IOV_MAX {
                iov[n] = IoSlice::new(frame(c));
                total += frame(c).len();
                n += 1;
                c = arena[c as usize].next;
            }
            let (mut left, blocked) = match self.write_iov(&iov[..n], total, acc) {
                Wrote::All => (total, false),
                Wrote::Part(w) => (w, true),
                Wrote::Failed => return,
            };
            while cur != NONE && left >= frame(cur).len() {
                left -= frame(cur).len();
                cur = arena[cur as usize].next;
            }
            if cur == NONE {
                return;
            }
            if blocked {
                // The rest waits in the outbox, in front of anything queued
                // after the chain.
                let mut rest = Vec::new();
                let mut c = cur;
                while c != NONE {
                    let fi = arena[c as usize].frame as usize;
                    rest.push((frames[fi].clone(), kinds[fi].clone()));
                    c = arena[c as usize].next;
                }
                let offer = self.out.borrow_mut().prepend(rest.into_iter(), left, bound);
                self.settled(offer, acc);
                return;
            }
        }
    }

    /// Writes the outbox until it is empty or the socket is full.
    fn write_outbox(&self, acc: &mut WriteAcc) {
        if self.stream.has_pending() {
            if let Err(e) = self.stream.flush_pending() {
                self.fail(e.kind());
                return;
            }
            if self.stream.has_pending() {
                self.block();
                return;
            }
        }
        loop {
            if self.phase.get() == Phase::Closed {
                return;
            }
            let wrote = {
                let out = self.out.borrow();
                if out.is_empty() {
                    break;
                }
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.fill(&mut iov);
                let total: usize = iov[..n].iter().map(|s| s.len()).sum();
                (self.write_iov(&iov[..n], total, acc), total)
            };
            match wrote {
                (Wrote::All, total) => {
                    self.out.borrow_mut().advance(total);
                }
                (Wrote::Part(w), _) => {
                    self.out.borrow_mut().advance(w);
                    return;
                }
                (Wrote::Failed, _) => return,
            }
        }
        if self.phase.get() == Phase::Closing {
            // Our close frame is out: the reactor can half-close.
            self.schedule();
        }
    }

    /// Sends one frame outside a delivery batch (replies, pings): straight
    /// to the socket when nothing is queued, so an idle session never needs
    /// an outbox; behind the queue otherwise. Such frames count toward the
    /// bound but are never dropped by a policy.
    pub fn send(&self, frame: Bytes, bound: usize) -> WriteAcc {
        let mut acc = WriteAcc::default();
        if self.phase.get() == Phase::Closed {
            return acc;
        }
        let offer = if self.out.borrow().is_empty() && !self.want_write.get() {
            match self.write_iov(&[IoSlice::new(&frame)], frame.len(), &mut acc) {
                Wrote::All | Wrote::Failed => return acc,
                Wrote::Part(w) => {
                    // Queued whole and marked partly written, so nothing
                    // (a 4008 included) can cut it off mid-frame.
                    let mut out = self.out.borrow_mut();
                    let offer = out.push(frame, Kind::Reply, bound);
                    out.advance(w);
                    offer
                }
            }
        } else {
            let offer = self.out.borrow_mut().push(frame, Kind::Reply, bound);
            if !self.want_write.get() {
                self.write_outbox(&mut acc);
            }
            offer
        };
        if self.phase.get() == Phase::Open {
            self.settled(offer, &mut acc);
        }
        acc
    }

    // --- closing ---

    /// Starts the closing handshake with `code`; what is already queued is
    /// still delivered first.
    pub fn close(&self, code: Close, reason: &str) {
        if self.phase.get() != Phase::Open {
            return;
        }
        self.phase.set(Phase::Closing);
        self.close_code.set(code);
        m::close(code);
        // Never refused: the close frame must follow what is queued.
        self.out
            .borrow_mut()
            .push(ws::close_frame(code, reason), Kind::Reply, usize::MAX);
        // The reactor writes it: closes come from contexts (the delivery
        // batch, the ticker) that must not write out of order with a batch.
        self.schedule();
    }

    /// Closes a subscriber that cannot keep up (4008), dropping what it has
    /// not started to receive. Returns the number of frames dropped.
    fn close_slow(&self) -> usize {
        if self.phase.get() != Phase::Open {
            return 0;
        }
        let dropped = self.out.borrow_mut().drop_unstarted();
        tracing::debug!(session = self.id, peer = %self.peer, dropped, "slow consumer closed");
        self.close(Close::SlowConsumer, Close::SlowConsumer.reason());
        dropped
    }

    /// The transport broke: no close handshake is possible.
    pub fn fail(&self, kind: io::ErrorKind) {
        self.kill(TransportError::Io(kind));
    }

    pub fn kill(&self, why: TransportError) {
        if self.phase.get() == Phase::Closed {
            return;
        }
        if self.phase.get() == Phase::Open {
            self.close_code.set(Close::Abnormal);
            m::close(Close::Abnormal);
        }
        self.phase.set(Phase::Closed);
        self.transport_error.set(Some(Box::new(why)));
        self.schedule();
    }

    // --- timers ---

    /// What the tick owes this session (see [`due`]).
    pub fn due(&self, now: u64, unix: u64, t: Timing) -> Due {
        due(
            self.phase.get(),
            self.clocks.get(),
            self.claims.borrow().exp,
            now,
            unix,
            t,
        )
    }

    /// A keepalive ping goes out now.
    pub fn pinged(&self, now: u64) {
        let mut c = self.clocks.get();
        c.ping_sent = now;
        self.clocks.set(c);
    }

    /// Gives up on a peer that never answered our close.
    pub fn abort_close(&self) {
        self.phase.set(Phase::Closed);
        self.schedule();
    }

    fn heard(&self, now: u64) {
        let mut c = self.clocks.get();
        c.last_seen = now;
        c.ping_sent = 0;
        self.clocks.set(c);
    }
}

/// What a decoded frame asks of the session, owned: acting on it never
/// holds the input buffer or the decoder.
enum Action {
    None,
    Send(Bytes),
    Close(Close, &'static str),
    PeerClose(Option<Close>),
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
                let mut c = s.clocks.get();
                if c.close_deadline == 0 {
                    c.close_deadline = shard.now_ms() + shard.settings.close.as_millis() as u64;
                    s.clocks.set(c);
                }
                if s.out.borrow().is_empty() && !s.want_write.get() && !s.stream.has_pending() {
                    if !s.half_closed.replace(true) {
                        s.stream.shutdown_write();
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
        if !s.want_write.get() && (!s.out.borrow().is_empty() || s.stream.has_pending()) {
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
            s.heard(shard.now_ms());
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
            match decode(s, decoder, &mut rbuf[pos..]) {
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

/// The session's frame decoder call: text messages exist only on the
/// `autobahn` echo route.
#[cfg(feature = "autobahn")]
fn decode<'a>(s: &Session, d: &'a mut Decoder, buf: &'a mut [u8]) -> DecodeResult<'a> {
    if s.echo {
        d.decode_text(buf)
    } else {
        d.decode(buf)
    }
}

#[cfg(not(feature = "autobahn"))]
#[inline(always)]
fn decode<'a>(_: &Session, d: &'a mut Decoder, buf: &'a mut [u8]) -> DecodeResult<'a> {
    d.decode(buf)
}

type DecodeResult<'a> = Result<Option<(Option<Event<'a>>, usize)>, ws::WsError>;

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
    let limited = matches!(
        ev,
        Event::Binary(_) | Event::TextMessage(_) | Event::Ping(_)
    ) && {
        let set = &shard.settings;
        set.msgs_per_s > 0 && {
            let now = shard.now_ms() as u32;
            let (bucket, limited) = take_token(s.bucket.get(), now, set.msgs_per_s, set.burst);
            s.bucket.set(bucket);
            limited
        }
    };
    if limited {
        let strikes = s.strikes.get() + 1;
        s.strikes.set(strikes);
        if strikes > shard.settings.strikes {
            return Action::Close(Close::RateLimited, Close::RateLimited.reason());
        }
    }
    let msg = match ev {
        // `TextMessage` only comes from the echo route's decoder.
        Event::Text | Event::TextMessage(_) => {
            #[cfg(feature = "autobahn")]
            if let (true, Event::TextMessage(t)) = (s.echo, ev) {
                return if limited {
                    Action::None
                } else {
                    Action::Send(ws::text_frame(t))
                };
            }
            return Action::Close(Close::UnsupportedData, Close::UnsupportedData.reason());
        }
        Event::Ping(p) if limited => {
            let _ = p;
            return Action::None;
        }
        Event::Ping(p) => return Action::Send(ws::pong_frame(p)),
        Event::Pong(_) => return Action::None,
        Event::Close(code, _) => return Action::PeerClose(code),
        Event::Binary(msg) => msg,
    };
    #[cfg(feature = "autobahn")]
    if s.echo {
        // Over the rate limit, an echo is dropped (the strike counts).
        return if limited {
            Action::None
        } else {
            Action::Send(ws::binary_frame(msg))
        };
    }
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
            if s.is_subscribed(topic) {
                return error(*id, 409, "already subscribed");
            }
            if s.subscription_count() >= shard.settings.max_subscriptions {
                return error(*id, 413, "too many subscriptions");
            }
        }
        Request::Unsubscribe { id, topic } => {
            if !s.is_subscribed(topic) {
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
                s.close(code.unwrap_or(Close::Normal), "");
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
    let topics = s.topics();
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
        s.close_code.set(Close::Abnormal);
        m::close(Close::Abnormal);
    }
    s.phase.set(Phase::Closed);
    let claims = s.claims.borrow();
    shard
        .shared
        .handler
        .on_close(&info(shard, s, &claims), s.close_code.get());
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ping_interval_ms: 1000,
        pong_timeout_ms: 500,
        leeway_s: 5,
    };

    fn clocks(last_seen: u64, ping_sent: u64, close_deadline: u64) -> Clocks {
        Clocks {
            last_seen,
            ping_sent,
            close_deadline,
        }
    }

    #[test]
    fn keepalive_pings_a_quiet_session_then_times_it_out() {
        let exp = 1_000;
        let unix = 900;
        assert_eq!(
            due(Phase::Open, clocks(10, 0, 0), exp, 1009, unix, T),
            Due::Nothing
        );
        assert_eq!(
            due(Phase::Open, clocks(10, 0, 0), exp, 1010, unix, T),
            Due::Ping
        );
        // Pinged at 1010: waiting for the pong, no second ping.
        assert_eq!(
            due(Phase::Open, clocks(10, 1010, 0), exp, 1509, unix, T),
            Due::Nothing
        );
        assert_eq!(
            due(Phase::Open, clocks(10, 1010, 0), exp, 1510, unix, T),
            Due::PingTimeout
        );
    }

    #[test]
    fn expiry_honours_the_leeway_and_beats_keepalive() {
        let c = clocks(10, 0, 0);
        assert_eq!(due(Phase::Open, c, 100, 20, 105, T), Due::Nothing);
        assert_eq!(due(Phase::Open, c, 100, 20, 106, T), Due::Expired);
        assert_eq!(
            due(Phase::Open, clocks(10, 5, 0), 100, 5000, 106, T),
            Due::Expired
        );
    }

    #[test]
    fn a_closing_session_waits_for_its_deadline_only() {
        assert_eq!(
            due(Phase::Closing, clocks(0, 0, 0), 0, 99_999, 999, T),
            Due::Nothing
        );
        assert_eq!(
            due(Phase::Closing, clocks(0, 0, 50), 0, 49, 999, T),
            Due::Nothing
        );
        assert_eq!(
            due(Phase::Closing, clocks(0, 0, 50), 0, 50, 999, T),
            Due::CloseTimedOut
        );
        assert_eq!(
            due(Phase::Closed, clocks(0, 1, 1), 0, 50, 999, T),
            Due::Nothing
        );
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let mut b = (3.0, 0);
        let mut limited = 0;
        for _ in 0..5 {
            let (nb, l) = take_token(b, 0, 10, 3);
            b = nb;
            limited += usize::from(l);
        }
        assert_eq!(limited, 2, "a burst of 3, then refused");
        // 100 ms at 10/s is one token.
        let (b2, l) = take_token(b, 100, 10, 3);
        assert!(!l);
        let (_, l) = take_token(b2, 100, 10, 3);
        assert!(l);
        // The shard clock's low 32 bits wrap; the difference still counts.
        let (_, l) = take_token((0.0, u32::MAX - 50), 50, 10, 3);
        assert!(!l, "101 ms across the wrap refill a token");
    }
}
