//! Proves the hot-path rule: delivering a published message to N
//! subscribers allocates nothing per subscriber once warm.
//!
//! A counting global allocator measures the whole process while M messages
//! go out to N and then to 2N subscribers. Per-message allocations (the one
//! encoded frame, channel blocks, metric samples) are the same in both runs;
//! anything allocated per subscriber shows up in the difference. The
//! clients are raw sockets read into a stack buffer, so they allocate
//! nothing while measuring.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::config::Config;
use herald::wire::client::{encode_subscribe, publication_frame};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Bytes currently allocated, process-wide (requested sizes).
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        LIVE.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SECRET: &str = "alloc-test-secret";

/// A subscribed client: handshake and SUBSCRIBE done, REPLY consumed.
fn subscriber(ws: SocketAddr, topic: &str) -> TcpStream {
    let exp = herald::auth::token::now_unix() + 600;
    let token = herald::auth::token::mint_hs256(SECRET, "u", exp, Some(&["*"]), None);
    let mut s = TcpStream::connect(ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: herald.v1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("response head");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let body = encode_subscribe(1, topic, None);
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x82, 0x80 | body.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(body.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).expect("reply header");
    assert_eq!(hdr[0], 0x82);
    let mut reply = vec![0u8; (hdr[1] & 0x7f) as usize];
    s.read_exact(&mut reply).expect("reply body");
    assert_eq!(reply[1], 17, "REPLY");
    s.set_nonblocking(true).unwrap();
    s
}

/// Reads every socket until each got `expect` bytes; allocation-free.
fn drain(socks: &mut [TcpStream], expect: usize) {
    let mut got = vec![0usize; socks.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut done = true;
        for (s, g) in socks.iter_mut().zip(got.iter_mut()) {
            while *g < expect {
                match s.read(&mut buf) {
                    Ok(0) => panic!("subscriber closed"),
                    Ok(n) => *g += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            done &= *g >= expect;
        }
        if done {
            assert!(got.iter().all(|g| *g == expect), "exact bytes");
            return;
        }
        assert!(Instant::now() < deadline, "deliveries did not arrive");
        std::thread::yield_now();
    }
}

/// Allocations while `msgs` messages reach every socket in `socks`.
fn measure(
    server: &herald::Server,
    rt: &tokio::runtime::Runtime,
    socks: &mut [TcpStream],
    name: &str,
    first_seq: u64,
    msgs: u64,
) -> u64 {
    let payload = Bytes::from_static(&[0x5a; 100]);
    let topic: Arc<str> = Arc::from(name);
    let expect: usize = (first_seq..first_seq + msgs)
        .map(|seq| publication_frame(name, seq, &payload).len())
        .sum();
    let hub = server.hub().clone();
    let feed = Arc::new(herald::hub::FeedStatus::default());
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for _ in 0..msgs {
            hub.publish_nowait(topic.clone(), payload.clone(), Instant::now(), &feed)
                .await
                .unwrap();
        }
    });
    drain(socks, expect);
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCS.load(Ordering::Relaxed)
}

/// The counters are process-wide: the two tests must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A gateway on free loopback ports with two shards.
fn start(tweak: impl FnOnce(&mut Config)) -> herald::Server {
    let mut cfg = Config::default();
    cfg.listen.ws = "127.0.0.1:0".parse().unwrap();
    cfg.listen.ingest = "127.0.0.1:0".parse().unwrap();
    cfg.listen.admin = "127.0.0.1:0".parse().unwrap();
    cfg.auth.hs256_secret = SECRET.into();
    cfg.shards.count = 2;
    tweak(&mut cfg);
    herald::Server::start(cfg, Arc::new(herald::LogHandler)).unwrap()
}

#[test]
fn delivery_allocates_nothing_per_subscriber() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start(|cfg| cfg.hub.history_size = 16);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const N: usize = 100;
    const MSGS: u64 = 300;
    // Two topics with the same per-message work, one with twice the
    // subscribers: the difference is what subscribers cost.
    let mut one: Vec<TcpStream> = (0..N)
        .map(|_| subscriber(server.ws_addr(), "alloc.one"))
        .collect();
    let mut two: Vec<TcpStream> = (0..2 * N)
        .map(|_| subscriber(server.ws_addr(), "alloc.two"))
        .collect();

    // Warm-up grows the arena, frame and dirty lists, rings and channels.
    measure(&server, &rt, &mut one, "alloc.one", 1, MSGS);
    measure(&server, &rt, &mut two, "alloc.two", 1, MSGS);

    let mut per_sub = Vec::new();
    for round in 1..=3u64 {
        let first = 1 + round * MSGS;
        let a = measure(&server, &rt, &mut one, "alloc.one", first, MSGS);
        let b = measure(&server, &rt, &mut two, "alloc.two", first, MSGS);
        // A single allocation per subscriber per message would make this
        // at least 1.0.
        let p = (b as f64 - a as f64) / (MSGS as f64 * N as f64);
        eprintln!(
            "round {round}: {a} allocations for {MSGS} msgs x {N} subs, {b} for {MSGS} x {}; {p:.4} per extra delivery",
            2 * N
        );
        per_sub.push(p);
    }
    per_sub.sort_by(f64::total_cmp);
    let median = per_sub[1];
    assert!(
        median < 0.01,
        "{median} allocations per delivery per subscriber (median of 3 rounds)"
    );
    rt.block_on(server.shutdown());
}

/// The heap an idle subscribed session keeps, measured exactly (requested
/// bytes, so without the allocator's own rounding and headers): what the
/// gateway's per-connection memory is made of, minus the kernel's socket.
#[test]
fn an_idle_subscribed_session_keeps_little_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start(|_| {});
    // Warm-up: the topic, the shard tables and the runtimes' first growth.
    let warm: Vec<TcpStream> = (0..64)
        .map(|_| subscriber(server.ws_addr(), "idle.t"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    const N: usize = 1000;
    let before = LIVE.load(Ordering::Relaxed);
    let socks: Vec<TcpStream> = (0..N)
        .map(|_| subscriber(server.ws_addr(), "idle.t"))
        .collect();
    // Handshake leftovers (hyper's connection, the upgrade) are freed once
    // each connection's short-lived tasks end.
    std::thread::sleep(Duration::from_millis(500));
    let after = LIVE.load(Ordering::Relaxed);
    // The client side keeps `socks` (a Vec of fds) and nothing per socket.
    let client = (N * std::mem::size_of::<TcpStream>()) as i64;
    let per_conn = (after - before - client) as f64 / N as f64;
    eprintln!("heap per idle subscribed session: {per_conn:.0} bytes");
    assert!(per_conn < 1024.0, "{per_conn} heap bytes per idle session");
    drop(socks);
    drop(warm);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server.shutdown());
}
