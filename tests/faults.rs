//! Faults, each through the real interface: a drain with feeds connected
//! (mid-frame too), SIGTERM with thousands of clients, a client that never
//! answers pings, reset and half-sent frames, a feed cut mid-frame, fd
//! exhaustion, and a restart that must start a new epoch.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Ports, Proc};
use common::*;
use futures_util::future::join_all;
use herald::wire::client::{self, ServerMessage};
use herald::wire::feed::{self as feedwire, GatewayFrame};
use herald::{Handler, SessionInfo, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// A handler that records what the gateway reports.

/// `TransportError`, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    Protocol(u16),
    Io(std::io::ErrorKind),
    PingTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Transport(Cause),
    Close(u16),
}

/// The numeric close code as the handler API hands it over; the one place
/// to change if that becomes a typed value.
fn close_code(code: herald::Close) -> u16 {
    code.code()
}

fn cause(e: &TransportError) -> Cause {
    match e {
        TransportError::Protocol { code, .. } => Cause::Protocol(close_code(*code)),
        TransportError::Io(kind) => Cause::Io(*kind),
        TransportError::PingTimeout => Cause::PingTimeout,
    }
}

/// Events per user (`sub`), in the order they were reported.
#[derive(Default)]
struct Recorder {
    events: Mutex<HashMap<String, Vec<Event>>>,
}

impl Recorder {
    fn push(&self, s: &SessionInfo<'_>, e: Event) {
        self.events
            .lock()
            .unwrap()
            .entry(s.claims.sub.to_string())
            .or_default()
            .push(e);
    }

    fn of(&self, user: &str) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `user`'s session has been reported closed.
    async fn closed(self: &Arc<Self>, user: &str) -> Vec<Event> {
        let closed = wait_until(T, || {
            let me = self.clone();
            async move { me.of(user).iter().any(|e| matches!(e, Event::Close(_))) }
        })
        .await;
        assert!(
            closed,
            "{user}: no on_close within {T:?}: {:?}",
            self.of(user)
        );
        self.of(user)
    }
}

impl Handler for Recorder {
    fn on_transport_error(&self, s: &SessionInfo<'_>, error: &TransportError) {
        self.push(s, Event::Transport(cause(error)));
    }

    fn on_close(&self, s: &SessionInfo<'_>, code: herald::Close) {
        self.push(s, Event::Close(close_code(code)));
    }
}

// ---------------------------------------------------------------------------
// A lean WebSocket client: a few hundred bytes each, so thousands fit, and
// it can fail without panicking (fd exhaustion).

struct Lean {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Lean {
    async fn try_connect(addr: SocketAddr, token: &str, within: Duration) -> Result<Lean, String> {
        let attempt = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = render_request("GET", "/ws", &upgrade_headers_with_token(token), b"");
            stream
                .write_all(&req)
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    break i;
                }
                let mut chunk = [0u8; 512];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed before the response".to_owned());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(String::from_utf8_lossy(&buf[..head_end]).into_owned());
            }
            buf.drain(..head_end + 4);
            Ok(Lean { stream, buf })
        };
        tokio::time::timeout(within, attempt)
            .await
            .map_err(|_| format!("no 101 within {within:?}"))?
    }

    async fn connect(addr: SocketAddr, token: &str) -> Lean {
        Lean::try_connect(addr, token, T)
            .await
            .unwrap_or_else(|e| panic!("upgrade failed: {e}"))
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let f = herald::wire::ws::client_frame(opcode, true, [7, 7, 7, 7], payload);
        self.stream.write_all(&f).await
    }

    /// `Ok(None)` at EOF; `Err` on a reset or when nothing came in time.
    async fn frame_within(&mut self, within: Duration) -> Result<Option<(u8, Vec<u8>)>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((op, payload, used)) = server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some((op, payload)));
            }
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| format!("no frame within {within:?}"))?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                if !self.buf.is_empty() {
                    return Err("EOF inside a frame".to_owned());
                }
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next herald message, answering the gateway's pings meanwhile.
    async fn message(&mut self) -> Result<ServerMessage, String> {
        loop {
            match self.frame_within(T).await? {
                Some((OP_PING, p)) => self.send(OP_PONG, &p).await.map_err(|e| e.to_string())?,
                Some((OP_BINARY, b)) => {
                    return client::decode_server_message(&b).map_err(|e| format!("{e:?}"))
                }
                other => return Err(format!("expected a binary message, got {other:?}")),
            }
        }
    }

    async fn subscribe(&mut self, id: u32, topic: &str) -> Result<(), String> {
        self.send(OP_BINARY, &client::encode_subscribe(id, topic, None))
            .await
            .map_err(|e| e.to_string())?;
        match self.message().await? {
            ServerMessage::Reply { id: rid, .. } if rid == id => Ok(()),
            other => Err(format!("expected the SUBSCRIBE reply, got {other:?}")),
        }
    }

    /// Reads a close frame (its code, and the data frames before it),
    /// answers it as a client should, and expects EOF after.
    async fn close_handshake(&mut self, within: Duration) -> Result<(u16, usize), String> {
        let mut before = 0;
        loop {
            match self.frame_within(within).await? {
                None => return Err(format!("EOF without a close frame ({before} before)")),
                Some((OP_CLOSE, p)) => {
                    if p.len() < 2 {
                        return Err("close frame without a code".to_owned());
                    }
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    let _ = self.send(OP_CLOSE, &p[..2]).await;
                    return match self.frame_within(within).await {
                        Ok(None) => Ok((code, before)),
                        other => Err(format!("after close {code}: {other:?}")),
                    };
                }
                Some((OP_PING, p)) => {
                    let _ = self.send(OP_PONG, &p).await;
                }
                Some(_) => before += 1,
            }
        }
    }
}

/// One unmasked server frame from the front of `buf`: opcode, payload,
/// bytes used.
fn server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, hl) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(a) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= hl + len).then(|| (buf[0] & 0x0f, buf[hl..hl + len].to_vec(), hl + len))
}

// ---------------------------------------------------------------------------
// Feed side, read at the byte level.

/// Everything the gateway sends on `stream` until EOF. A reset is an
/// error: the contract is ERROR, then a clean close.
async fn read_to_eof(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(format!("no EOF within {within:?} (read {out:02x?})")),
            Ok(Err(e)) => return Err(format!("{e} after {out:02x?}")),
            Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Decodes the bytes a closed feed connection carried after its HELLO
/// answer, by hand from PROTOCOL.md §2: exactly one frame, `L` then
/// `[0, code, message]` with `code` a uint16 (`cd hi lo`) and `message` a
/// str. Returns `(code, message)`.
fn decode_error_frame(bytes: &[u8]) -> (u16, String) {
    assert!(bytes.len() >= 4, "no frame: {bytes:02x?}");
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(
        bytes.len(),
        4 + len,
        "exactly one frame, then EOF: {bytes:02x?}"
    );
    let body = &bytes[4..];
    assert_eq!(body[0], 0x93, "array of 3: {body:02x?}");
    assert_eq!(body[1], 0x00, "type 0 = ERROR: {body:02x?}");
    assert_eq!(body[2], 0xcd, "code as uint16: {body:02x?}");
    let code = u16::from_be_bytes([body[3], body[4]]);
    let (n, at) = match body[5] {
        b @ 0xa0..=0xbf => ((b & 0x1f) as usize, 6),
        0xd9 => (body[6] as usize, 7),
        other => panic!("message is not a str (marker {other:#04x})"),
    };
    assert_eq!(body.len(), at + n, "nothing after the message: {body:02x?}");
    let message = String::from_utf8(body[at..].to_vec()).expect("utf-8 message");
    // The crate's own decoder reads the same.
    assert_eq!(
        feedwire::decode_gateway_frame(body).expect("valid gateway frame"),
        GatewayFrame::Error {
            code,
            message: message.clone()
        }
    );
    (code, message)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

// ---------------------------------------------------------------------------
// 1. Drain: feeds get ERROR 503, clients 1001.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_every_feed_503_then_eof_and_never_publishes_a_half_sent_frame() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("sub")).await;
    subscribe(&mut ws, 1, "drain.t").await;

    // Published and applied before the drain.
    let mut done = Feed::open(server.ingest(), "done").await;
    done.publish("drain.t", b"before").await;
    done.barrier(1).await;
    // In the middle of a PUBLISH frame when the drain comes.
    let mut half = Feed::open(server.ingest(), "half").await;
    let frame = feedwire::encode_publish("drain.t", b"half-sent");
    half.send(&frame[..frame.len() / 2]).await;
    // Connected, no HELLO yet.
    let fresh = Feed::connect(server.ingest()).await;
    // Lets the gateway read the half frame and accept `fresh` (nothing is
    // asserted on this timing: later, both are merely less interesting).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let readers: Vec<_> = [done.stream, half.stream, fresh.stream]
        .into_iter()
        .map(|mut s| tokio::spawn(async move { read_to_eof(&mut s, T).await }))
        .collect();
    let client = tokio::spawn(async move {
        let (_, seq, payload) = next_publication(&mut ws).await;
        let close = expect_close(&mut ws).await;
        (seq, payload, close)
    });
    assert!(server.stop().await, "drained in time");

    for (name, r) in ["done", "half", "fresh"].iter().zip(readers) {
        let bytes = r
            .await
            .expect("reader")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (code, message) = decode_error_frame(&bytes);
        assert_eq!(code, 503, "{name}: {message}");
        // The bytes PROTOCOL.md §4 shows.
        let mut want = vec![0, 0, 0, 0x1b, 0x93, 0x00, 0xcd, 0x01, 0xf7, 0xb5];
        want.extend_from_slice(b"gateway shutting down");
        assert_eq!(bytes, want, "{name}");
    }
    let (seq, payload, (code, after)) = client.await.expect("client");
    assert_eq!((seq, payload.as_slice()), (1, &b"before"[..]));
    assert_eq!(
        (code, after),
        (1001, 0),
        "1001 right after the one publication: the half frame was never published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_still_streaming_when_the_drain_comes_reads_error_503_then_eof_not_a_reset() {
    let server = start(|_| {});
    let f = Feed::open(server.ingest(), "busy").await;
    let (mut rd, mut wr) = f.stream.into_split();
    let writer = tokio::spawn(async move {
        let frame = feedwire::encode_publish("busy.t", &[0x55; 200]);
        let started = Instant::now();
        // Bounded: stops at the first refused write, or after 20k frames
        // or 10 s.
        for _ in 0..20_000 {
            if wr.write_all(&frame).await.is_err() || started.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + T;
        let mut out = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                Err(_) => return Err(format!("no EOF in time ({out:02x?})")),
                Ok(Err(e)) => return Err(format!("{e} after {out:02x?}")),
                Ok(Ok(0)) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    });
    assert!(server.stop().await);
    let bytes = reader.await.expect("reader").expect("ERROR then EOF");
    assert_eq!(decode_error_frame(&bytes).0, 503);
    writer.await.expect("writer");
}

// ---------------------------------------------------------------------------
// 2. SIGTERM with many clients, against the real binary.

/// Raises this process's soft fd limit to its hard limit; returns the new
/// soft limit.
fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// SIGTERM while `n` subscribed clients and a feed are connected: every
/// client gets close 1001, the feed ERROR 503, and the process exits 0
/// within the drain time. Returns false (skipped) when the fd limit is too
/// low for `n` clients.
async fn sigterm_with_clients(n: usize) -> bool {
    let limit = raise_fd_limit();
    if limit < (n + 1000) as libc::rlim_t {
        eprintln!(
            "SKIPPED: {n} clients need ~{} open files, the hard limit (RLIMIT_NOFILE) is {limit}",
            n + 1000
        );
        return false;
    }
    let t0 = Instant::now();
    let drain = Duration::from_millis(8000);
    let ports = Ports::free();
    let mut herald = Proc::spawn(
        ports,
        &format!(
            "[shards]\ncount = 2\n\n[timeouts]\ndrain_ms = {}\n",
            drain.as_millis()
        ),
        |_| {},
    );
    herald.ready().await;

    let tok = token_all("many");
    let mut clients = Vec::with_capacity(n);
    let connecting = async {
        for batch in (0..n).collect::<Vec<_>>().chunks(500) {
            let got = join_all(batch.iter().map(|&i| {
                let tok = tok.clone();
                async move {
                    let mut c = Lean::connect(ports.ws, &tok).await;
                    c.subscribe(1, &format!("many.{}", i % 16))
                        .await
                        .unwrap_or_else(|e| panic!("client {i}: {e}"));
                    c
                }
            }))
            .await;
            clients.extend(got);
        }
    };
    tokio::time::timeout(Duration::from_secs(180), connecting)
        .await
        .expect("clients connected within 180 s");
    let connected = t0.elapsed();
    let mut feed = Feed::open(ports.ingest, "many-feed").await;
    feed.publish("many.0", b"last").await;
    feed.barrier(1).await;

    // A feed reads its ERROR and closes, as a real one would.
    let feed_task = tokio::spawn(async move { read_to_eof(&mut feed.stream, drain).await });

    herald.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let closes = tokio::time::timeout(
        drain + Duration::from_secs(10),
        join_all(
            clients
                .iter_mut()
                .map(|c| async move { c.close_handshake(drain).await }),
        ),
    )
    .await
    .expect("every client saw its close within the drain time");
    let all_closed = signalled.elapsed();
    let feed_bytes = feed_task.await.expect("feed reader");
    let exit = herald.exit_within(drain + Duration::from_secs(3)).await;
    let exited = signalled.elapsed();

    let mut bad = Vec::new();
    for (i, r) in closes.iter().enumerate() {
        let want_before = usize::from(i % 16 == 0);
        if r != &Ok((1001, want_before)) {
            bad.push((i, r.clone()));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {n} clients did not get 1001 after their queued publication: first {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let (code, message) = decode_error_frame(&feed_bytes.expect("the feed reads ERROR then EOF"));
    assert_eq!(code, 503, "{message}");
    let exit = exit.unwrap_or_else(|| panic!("herald still running {exited:?} after SIGTERM"));
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert!(
        exited <= drain + Duration::from_secs(1),
        "exited {exited:?} after SIGTERM, drain_ms = {}",
        drain.as_millis()
    );
    eprintln!(
        "{n} clients: connected in {connected:?}; after SIGTERM all closed with 1001 in {all_closed:?}, exit 0 in {exited:?}; test wall time {:?}",
        t0.elapsed()
    );
    true
}

/// Runs in every `cargo test`: ~2 s in a debug build (10k connected in
/// 1.1–1.6 s; after SIGTERM every 1001 within ~0.3 s, exit ~0.4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_10k_clients_closes_all_with_1001_and_exits_0() {
    sigterm_with_clients(10_000).await;
}

// ---------------------------------------------------------------------------
// 3. Keepalive: a client that never answers pings is cut off; one that
// answers stays.

fn keepalive(cfg: &mut herald::config::Config) {
    cfg.timeouts.tick_ms = 20;
    cfg.timeouts.ping_interval_ms = 200;
    cfg.timeouts.pong_timeout_ms = 300;
}

/// Reads `c` for `for_` answering every ping; returns how many came.
/// Anything but a ping is an error.
async fn answer_pings(c: &mut Lean, for_: Duration) -> Result<usize, String> {
    let until = tokio::time::Instant::now() + for_;
    let mut pings = 0;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(pings);
        }
        match c.frame_within(left).await {
            Err(e) if e.starts_with("no frame") => return Ok(pings),
            Err(e) => return Err(e),
            Ok(Some((OP_PING, p))) => {
                pings += 1;
                c.send(OP_PONG, &p).await.map_err(|e| e.to_string())?;
            }
            Ok(other) => return Err(format!("unexpected {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_1006_after_the_pong_timeout() {
    let rec = Arc::new(Recorder::default());
    let server = start_with_handler(keepalive, rec.clone());
    let mut good = Lean::connect(server.ws(), &token_all("good")).await;
    good.subscribe(1, "ka.t").await.expect("subscribed");
    let good_task = tokio::spawn(async move {
        let pings = answer_pings(&mut good, Duration::from_millis(1500)).await;
        (good, pings)
    });

    // Completes the handshake, then sends nothing at all.
    let connected = Instant::now();
    let mut silent = Lean::connect(server.ws(), &token_all("silent")).await;
    let first = silent.frame_within(T).await;
    let pinged = connected.elapsed();
    assert!(
        matches!(first, Ok(Some((OP_PING, _)))),
        "first frame: {first:?}"
    );
    assert!(
        pinged >= Duration::from_millis(200 - 20),
        "pinged after {pinged:?}, ping_interval_ms = 200"
    );
    // No close frame: the connection is simply dropped.
    let end = silent.frame_within(T).await;
    let dropped = connected.elapsed() - pinged;
    assert_eq!(end, Ok(None), "after the unanswered ping");
    assert!(
        dropped >= Duration::from_millis(300 - 20),
        "dropped {dropped:?} after the ping, pong_timeout_ms = 300"
    );
    assert_eq!(
        rec.closed("silent").await,
        vec![Event::Transport(Cause::PingTimeout), Event::Close(1006)]
    );

    let (mut good, pings) = good_task.await.expect("good client");
    let pings = pings.expect("the answering client saw only pings");
    assert!(pings >= 2, "{pings} pings in 1.5 s, ping_interval_ms = 200");
    assert!(rec.of("good").is_empty(), "{:?}", rec.of("good"));
    assert_eq!(server.connections(), 1);
    api_publish(server.admin(), "ka.t", b"still here").await;
    match good.message().await {
        Ok(ServerMessage::Publication {
            seq: 1, payload, ..
        }) => {
            assert_eq!(payload, b"still here")
        }
        other => panic!("expected the publication, got {other:?}"),
    }
    assert!(server.stop().await);
}

/// The same against the binary, where `/metrics` belongs to this gateway
/// alone: the timeout is counted as one 1006 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_timeout_is_counted_in_the_metrics_of_the_binary() {
    let ports = Ports::free();
    let mut herald = Proc::spawn(
        ports,
        "[timeouts]\ntick_ms = 20\nping_interval_ms = 200\npong_timeout_ms = 300\n",
        |_| {},
    );
    herald.ready().await;
    let mut good = Lean::connect(ports.ws, &token_all("good")).await;
    let good_task = tokio::spawn(async move {
        let pings = answer_pings(&mut good, Duration::from_millis(1200)).await;
        (good, pings)
    });
    let mut silent = Lean::connect(ports.ws, &token_all("silent")).await;
    assert!(matches!(
        silent.frame_within(T).await,
        Ok(Some((OP_PING, _)))
    ));
    assert_eq!(silent.frame_within(T).await, Ok(None));
    let (_good, pings) = good_task.await.expect("good");
    assert!(pings.expect("only pings") >= 2);

    let text = metrics_text(ports.admin).await;
    assert_eq!(
        metric_sum(&text, "herald_closes_total", &[r#"code="1006""#]),
        1.0,
        "{text}"
    );
    assert_eq!(metric_sum(&text, "herald_connections", &[]), 1.0, "{text}");
    herald.signal(libc::SIGTERM);
    let exit = herald.exit_within(Duration::from_secs(10)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
}

// ---------------------------------------------------------------------------
// 4. Half-open and reset clients.

async fn stats(admin: SocketAddr) -> serde_json::Value {
    let r = api(admin, "GET", "/api/stats", Some(API_KEY), b"").await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_client_and_one_gone_mid_frame_are_cleaned_up_and_others_still_receive() {
    let rec = Arc::new(Recorder::default());
    let server = start_with_handler(|_| {}, rec.clone());
    let mut reset = Lean::connect(server.ws(), &token_all("reset")).await;
    reset.subscribe(1, "rst.t").await.expect("subscribed");
    let mut half = Lean::connect(server.ws(), &token_all("half")).await;
    half.subscribe(1, "rst.t").await.expect("subscribed");
    let mut stay = ws_connect(server.ws(), &token_all("stay")).await;
    subscribe(&mut stay, 1, "rst.t").await;
    assert_eq!(stats(server.admin()).await["subscriptions"], 3);

    // SO_LINGER 0, then close: the kernel sends RST instead of FIN.
    socket2::SockRef::from(&reset.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(reset);
    assert_eq!(
        rec.closed("reset").await,
        vec![
            Event::Transport(Cause::Io(std::io::ErrorKind::ConnectionReset)),
            Event::Close(1006)
        ]
    );

    // Half of a SUBSCRIBE frame, then EOF.
    let f = herald::wire::ws::client_frame(
        OP_BINARY,
        true,
        [1, 2, 3, 4],
        &client::encode_subscribe(2, "rst.other", None),
    );
    half.stream
        .write_all(&f[..f.len() / 2])
        .await
        .expect("write");
    half.stream.shutdown().await.expect("shutdown");
    assert_eq!(
        rec.closed("half").await,
        vec![
            Event::Transport(Cause::Io(std::io::ErrorKind::UnexpectedEof)),
            Event::Close(1006)
        ]
    );

    assert_eq!(server.connections(), 1);
    let released = wait_until(T, || async {
        let s = stats(server.admin()).await;
        s["subscriptions"] == 1 && s["connections"] == 1
    })
    .await;
    assert!(released, "{}", stats(server.admin()).await);
    api_publish(server.admin(), "rst.t", b"for the one left").await;
    let (_, seq, payload) = next_publication(&mut stay).await;
    assert_eq!((seq, payload.as_slice()), (1, &b"for the one left"[..]));
    assert!(rec.of("stay").is_empty());
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// 5. A feed cut mid-frame publishes nothing; garbage gets its ERROR.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cut_mid_frame_publishes_nothing_and_the_next_feed_goes_on() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("sub")).await;
    subscribe(&mut ws, 1, "cut.t").await;

    let mut first = Feed::open(server.ingest(), "first").await;
    first.publish("cut.t", b"one").await;
    first.barrier(1).await;
    assert_eq!(next_publication(&mut ws).await.1, 1);

    let mut cut = Feed::open(server.ingest(), "cut").await;
    let frame = feedwire::encode_publish("cut.t", b"never");
    cut.send(&frame[..frame.len() - 3]).await;
    cut.stream.shutdown().await.expect("shutdown");
    // The gateway closes its side once it saw the EOF; no ERROR for a feed
    // that left on its own.
    assert_eq!(read_to_eof(&mut cut.stream, T).await, Ok(Vec::new()));

    let mut next = Feed::open(server.ingest(), "next").await;
    next.publish("cut.t", b"two").await;
    next.barrier(1).await;
    let (_, seq, payload) = next_publication(&mut ws).await;
    assert_eq!(
        (seq, payload.as_slice()),
        (2, &b"two"[..]),
        "the cut frame took no seq and reached nobody"
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_ingest_port_gets_the_error_the_protocol_names() {
    let server = start(|cfg| cfg.ingest.max_frame_bytes = 64 * 1024);
    // HTTP on the ingest port: "GET " read as a length is ~1.2 GB.
    let mut http = Feed::connect(server.ingest()).await;
    http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let bytes = read_to_eof(&mut http.stream, T).await.expect("ERROR, EOF");
    assert_eq!(decode_error_frame(&bytes).0, 413);

    // After HELLO: a frame whose body is not a MessagePack array.
    let mut junk = Feed::open(server.ingest(), "junk").await;
    junk.send(&framed(&[0xc1, 0xc1, 0xc1])).await;
    let bytes = read_to_eof(&mut junk.stream, T).await.expect("ERROR, EOF");
    assert_eq!(decode_error_frame(&bytes).0, 400);

    // A length over the configured maximum, body never sent.
    let mut big = Feed::open(server.ingest(), "big").await;
    big.send(&(64 * 1024u32 + 1).to_be_bytes()).await;
    let bytes = read_to_eof(&mut big.stream, T).await.expect("ERROR, EOF");
    assert_eq!(decode_error_frame(&bytes).0, 413);
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// 7. Protocol errors reach `on_transport_error` with their close code.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_reach_on_transport_error_with_their_close_code() {
    let rec = Arc::new(Recorder::default());
    let server = start_with_handler(|cfg| cfg.limits.max_message_bytes = 1024, rec.clone());

    let mut unmasked = Lean::connect(server.ws(), &token_all("unmasked")).await;
    // A binary frame without the mask bit, as only a server may send.
    let ping = client::encode_ping(1);
    let mut f = vec![0x82, ping.len() as u8];
    f.extend_from_slice(&ping);
    unmasked.stream.write_all(&f).await.expect("write");
    let (code, _) = unmasked
        .close_handshake(T)
        .await
        .expect("a close frame, then EOF");
    assert_eq!(code, 1002);
    assert_eq!(
        rec.closed("unmasked").await,
        vec![Event::Transport(Cause::Protocol(1002)), Event::Close(1002)]
    );

    let mut big = Lean::connect(server.ws(), &token_all("big")).await;
    big.send(OP_BINARY, &[0x90; 2000]).await.expect("write");
    let (code, _) = big.close_handshake(T).await.expect("a close frame");
    assert_eq!(code, 1009);
    assert_eq!(
        rec.closed("big").await,
        vec![Event::Transport(Cause::Protocol(1009)), Event::Close(1009)]
    );
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// 6. fd exhaustion: the gateway keeps its sessions and recovers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_gateway_keeps_serving_and_recovers() {
    use std::os::unix::process::CommandExt;
    const NOFILE: libc::rlim_t = 64;
    let ports = Ports::free();
    let mut herald = Proc::spawn(ports, "[shards]\ncount = 2\n", |cmd| {
        // SAFETY: setrlimit is async-signal-safe, and the closure touches
        // nothing but its own stack.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    herald.ready().await;
    let mut feed = Feed::open(ports.ingest, "fd-feed").await;
    let tok = token_all("fd");

    // Fill the table: connect until an upgrade gets no answer.
    let mut clients = Vec::new();
    let mut refused = None;
    for _ in 0..NOFILE {
        match Lean::try_connect(ports.ws, &tok, Duration::from_millis(1000)).await {
            Ok(mut c) => {
                c.subscribe(1, "fd.t").await.expect("subscribed");
                clients.push(c);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let full = clients.len();
    assert!(
        refused.is_some(),
        "{full} connections with {NOFILE} fds and no refusal"
    );
    assert!(full >= 10, "only {full} clients before the limit");
    eprintln!("RLIMIT_NOFILE {NOFILE}: {full} clients, then {refused:?}");

    // The sessions it has still receive.
    feed.publish("fd.t", b"while full").await;
    feed.barrier(1).await;
    for (i, c) in clients.iter_mut().enumerate() {
        match c.message().await {
            Ok(ServerMessage::Publication {
                seq: 1, payload, ..
            }) => {
                assert_eq!(payload, b"while full", "client {i}")
            }
            other => panic!("client {i}: {other:?}"),
        }
    }

    // Free some; the gateway accepts again.
    clients.truncate(full - 10);
    let deadline = Instant::now() + T;
    let mut again = loop {
        match Lean::try_connect(ports.ws, &tok, Duration::from_millis(500)).await {
            Ok(c) => break c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no new connection accepted within {T:?} after fds were freed: {e}"
            ),
        }
    };
    again.subscribe(1, "fd.t").await.expect("subscribed");
    let text = metrics_text(ports.admin).await;
    assert!(
        metric_sum(
            &text,
            "herald_accept_errors_total",
            &[r#"kind="fd_exhausted""#]
        ) >= 1.0,
        "{text}"
    );
    feed.publish("fd.t", b"after").await;
    feed.barrier(2).await;
    match again.message().await {
        Ok(ServerMessage::Publication {
            seq: 2, payload, ..
        }) => assert_eq!(payload, b"after"),
        other => panic!("the new client: {other:?}"),
    }
    assert!(herald.child.0.try_wait().expect("try_wait").is_none());
    herald.signal(libc::SIGTERM);
    let exit = herald.exit_within(Duration::from_secs(15)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
}

// ---------------------------------------------------------------------------
// 8. A restarted gateway starts every topic under a new epoch.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_recovery_says_recovered_false_with_a_new_epoch() {
    let ports = Ports::free();
    let mut first = Proc::spawn(ports, "", |_| {});
    first.ready().await;
    let mut ws = ws_connect(ports.ws, &token_all("u")).await;
    let (_, epoch) = subscribe(&mut ws, 1, "ep.t").await;
    for i in 1..=3u64 {
        assert_eq!(api_publish(ports.admin, "ep.t", b"m").await, i);
    }
    assert_eq!(publications(&mut ws, 3).await.len(), 3);
    first.signal(libc::SIGTERM);
    assert_eq!(expect_close(&mut ws).await.0, 1001);
    drop(ws);
    let exit = first.exit_within(Duration::from_secs(15)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0));

    // Same ports, same config: a new process.
    let second = Proc::spawn(ports, "", |_| {});
    second.ready().await;
    let mut ws = ws_connect(ports.ws, &token_all("u")).await;
    let (seq, epoch2, recovered) = subscribe_since(&mut ws, 1, "ep.t", 3, &epoch).await;
    assert!(!recovered);
    assert_ne!(epoch2, epoch, "a restart starts a new epoch");
    assert_eq!(seq, 0);
    assert_eq!(api_publish(ports.admin, "ep.t", b"fresh").await, 1);
    assert_eq!(publications(&mut ws, 1).await, vec![(1, b"fresh".to_vec())]);
    second.signal(libc::SIGTERM);
}
