//! The box's own fan-out ceiling: a bare write loop behind the peers'
//! contract, for `herald-load fanout --raw-url` (and `compare.sh`'s
//! "limit" row).
//!
//! - `GET /sub/<topic>` with an upgrade: a minimal `101` (only the
//!   `Sec-WebSocket-Accept` computed), then the socket joins `<topic>`;
//!   whatever the client sends is read and dropped.
//! - `POST /pub/<topic>` (Content-Length body): the frame header is built
//!   once, the frame is queued and `204` answers at once; a broadcast task
//!   takes every frame queued since its last round and writes them to
//!   each subscriber of their topic with one vectored write (headers and
//!   bodies as they are, no copy), yielding every 128 sockets so POSTs keep
//!   coming in meanwhile. Frames that arrive during a round go out
//!   together in the next one: the same batching a gateway gets from
//!   decoupling intake and fan-out. `--no-batch` writes each frame on its
//!   own (one write per message per subscriber: the naive loop).
//!
//! Nothing else: no protocol, no per-subscriber queue unless a socket is
//! full (then its frames wait, in order, and are flushed with vectored
//! writes when it drains), no timers, no metrics. Whatever a real server
//! spends beyond this is its own overhead.
//!
//! ```sh
//! cargo run --release --example write_loop -- --listen 127.0.0.1:7105 --threads 2
//! ```
//!
//! `--threads N`: N event-loop threads, each with its own `SO_REUSEPORT`
//! listener and its own subscribers; a POST reaches the other threads
//! through a channel (the frame is shared, not copied).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// One publication: the topic, the frame header and the body.
#[derive(Clone)]
struct Frame {
    topic: Arc<str>,
    head: Arc<[u8]>,
    body: Arc<[u8]>,
}

/// A subscriber socket.
struct Sub {
    stream: TcpStream,
    /// Frames (and the offset already written of the first) that did not
    /// fit in the socket yet.
    pending: RefCell<VecDeque<(Frame, usize)>>,
    wake: Notify,
    closed: Cell<bool>,
    /// Its index in its topic's list (for an O(1) removal).
    slot: Cell<usize>,
}

/// Frames a subscriber may have queued before it is dropped.
const MAX_PENDING: usize = 65_536;

/// Most frames put in one vectored write (two slices each).
const MAX_BATCH: usize = 32;

impl Sub {
    /// Writes `frames` now as far as the socket takes them (one vectored
    /// write), queues the rest.
    fn send(&self, frames: &[Frame]) {
        let mut q = self.pending.borrow_mut();
        if !q.is_empty() {
            if q.len() >= MAX_PENDING {
                self.closed.set(true);
                self.wake.notify_one();
                return;
            }
            q.extend(frames.iter().map(|f| (f.clone(), 0)));
            return;
        }
        let now = &frames[..frames.len().min(MAX_BATCH)];
        let mut bufs: Vec<IoSlice<'_>> = Vec::with_capacity(2 * now.len());
        for f in now {
            bufs.push(IoSlice::new(&f.head));
            bufs.push(IoSlice::new(&f.body));
        }
        let mut written = match self.stream.try_write_vectored(&bufs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.closed.set(true);
                self.wake.notify_one();
                return;
            }
        };
        let mut rest = frames.iter();
        for f in rest.by_ref() {
            let len = f.head.len() + f.body.len();
            if written >= len {
                written -= len;
            } else {
                q.push_back((f.clone(), written));
                break;
            }
        }
        q.extend(rest.map(|f| (f.clone(), 0)));
        if !q.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Writes queued frames with vectored writes until the queue is empty.
    async fn flush(&self) -> io::Result<()> {
        loop {
            let done = {
                let q = self.pending.borrow();
                if q.is_empty() {
                    return Ok(());
                }
                let mut bufs: Vec<IoSlice<'_>> = Vec::with_capacity(64);
                for (f, off) in q.iter().take(32) {
                    let hl = f.head.len();
                    if *off < hl {
                        bufs.push(IoSlice::new(&f.head[*off..]));
                        bufs.push(IoSlice::new(&f.body));
                    } else {
                        bufs.push(IoSlice::new(&f.body[*off - hl..]));
                    }
                }
                match self.stream.try_write_vectored(&bufs) {
                    Ok(n) => Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => return Err(e),
                }
            };
            match done {
                Some(mut n) => {
                    let mut q = self.pending.borrow_mut();
                    while n > 0 {
                        let Some((f, off)) = q.front_mut() else { break };
                        let left = f.head.len() + f.body.len() - *off;
                        if n >= left {
                            n -= left;
                            q.pop_front();
                        } else {
                            *off += n;
                            n = 0;
                        }
                    }
                }
                None => self.stream.writable().await?,
            }
        }
    }
}

/// One event-loop thread's subscribers, by topic, and the frames
/// waiting for the next broadcast round.
#[derive(Default)]
struct Shard {
    topics: RefCell<HashMap<Arc<str>, Vec<Rc<Sub>>>>,
    queue: RefCell<Vec<Frame>>,
    wake: Notify,
}

impl Shard {
    fn enqueue(&self, f: Frame) {
        self.queue.borrow_mut().push(f);
        self.wake.notify_one();
    }

    /// Takes the queued frames, grouped by topic (order kept within one).
    fn take(&self, batch: bool) -> Vec<(Arc<str>, Vec<Frame>)> {
        let mut q = self.queue.borrow_mut();
        let n = if batch { q.len() } else { q.len().min(1) };
        let mut groups: Vec<(Arc<str>, Vec<Frame>)> = Vec::new();
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        for f in q.drain(..n) {
            let i = *index.entry(f.topic.clone()).or_insert_with(|| {
                groups.push((f.topic.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(f);
        }
        groups
    }

    fn join(&self, topic: &str, sub: &Rc<Sub>) {
        let mut topics = self.topics.borrow_mut();
        let subs = topics.entry(Arc::from(topic)).or_default();
        sub.slot.set(subs.len());
        subs.push(sub.clone());
    }

    fn leave(&self, topic: &str, sub: &Sub) {
        let mut topics = self.topics.borrow_mut();
        let Some(subs) = topics.get_mut(topic) else {
            return;
        };
        let i = sub.slot.get();
        if i < subs.len() && std::ptr::eq(&*subs[i], sub) {
            subs.swap_remove(i);
            if let Some(moved) = subs.get(i) {
                moved.slot.set(i);
            }
        }
        if subs.is_empty() {
            topics.remove(topic);
        }
    }

    /// Broadcast rounds, forever.
    async fn broadcaster(&self, batch: bool) {
        loop {
            if self.queue.borrow().is_empty() {
                self.wake.notified().await;
            }
            for (topic, frames) in self.take(batch) {
                // A snapshot: subscribers may leave during the round.
                let subs = match self.topics.borrow().get(&topic) {
                    Some(subs) => subs.clone(),
                    None => continue,
                };
                for (i, s) in subs.iter().enumerate() {
                    if !s.closed.get() {
                        s.send(&frames);
                    }
                    if i % 128 == 127 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }
}

fn ws_head(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        h.push(126);
        h.extend_from_slice(&l.to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Serves one connection: requests until it is upgraded or closed. An
/// upgraded socket goes on in a task of its own, so the request buffers
/// of this one are freed.
async fn serve(
    mut s: TcpStream,
    shard: Rc<Shard>,
    others: Arc<Vec<mpsc::UnboundedSender<Frame>>>,
    me: usize,
) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 << 10 {
                return Ok(());
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut line = head.split(' ');
        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
        if method == "GET" {
            let (Some(topic), Some(key)) = (
                path.strip_prefix("/sub/"),
                header(&head, "sec-websocket-key"),
            ) else {
                s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                return Ok(());
            };
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            s.write_all(resp.as_bytes()).await?;
            let sub = Rc::new(Sub {
                stream: s,
                pending: RefCell::new(VecDeque::new()),
                wake: Notify::new(),
                closed: Cell::new(false),
                slot: Cell::new(0),
            });
            shard.join(topic, &sub);
            let topic: Box<str> = topic.into();
            tokio::task::spawn_local(async move {
                let _ = subscriber(&sub).await;
                shard.leave(&topic, &sub);
            });
            return Ok(());
        }
        if method != "POST" {
            return Ok(());
        }
        let Some(topic) = path.strip_prefix("/pub/") else {
            s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        };
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let f = Frame {
            topic: Arc::from(topic),
            head: Arc::from(ws_head(len)),
            body: Arc::from(&buf[end..end + len]),
        };
        for (i, tx) in others.iter().enumerate() {
            if i != me {
                let _ = tx.send(f.clone());
            }
        }
        shard.enqueue(f);
        buf.drain(..end + len);
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
    }
}

/// A subscribed socket: drop what it sends, flush its queue when asked.
async fn subscriber(sub: &Sub) -> io::Result<()> {
    let mut scratch = [0u8; 64];
    let res = loop {
        if sub.closed.get() {
            break Ok(());
        }
        tokio::select! {
            r = sub.stream.readable() => {
                if let Err(e) = r {
                    break Err(e);
                }
                match sub.stream.try_read(&mut scratch) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break Err(e),
                }
            }
            _ = sub.wake.notified() => {
                if let Err(e) = sub.flush().await {
                    break Err(e);
                }
            }
        }
    };
    sub.closed.set(true);
    sub.pending.borrow_mut().clear();
    res
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn thread_main(
    me: usize,
    l: std::net::TcpListener,
    rx: mpsc::UnboundedReceiver<Frame>,
    all: Arc<Vec<mpsc::UnboundedSender<Frame>>>,
    batch: bool,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = TcpListener::from_std(l)?;
        let shard = Rc::new(Shard::default());
        {
            let shard = shard.clone();
            let mut rx = rx;
            tokio::task::spawn_local(async move {
                while let Some(f) = rx.recv().await {
                    shard.enqueue(f);
                }
            });
        }
        {
            let shard = shard.clone();
            tokio::task::spawn_local(async move { shard.broadcaster(batch).await });
        }
        let mut accept_errors = 0u64;
        loop {
            let (s, _) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        eprintln!("write_loop: accept: {e} ({accept_errors} so far)");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (shard, all) = (shard.clone(), all.clone());
            tokio::task::spawn_local(async move {
                let _ = serve(s, shard, all, me).await;
            });
        }
    })
}

fn main() {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 7105).into();
    let mut threads = 1usize;
    let mut batch = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--no-batch" {
            batch = false;
            continue;
        }
        let v = args.next();
        match (a.as_str(), v) {
            ("--listen", Some(v)) => addr = v.parse().expect("--listen ADDR:PORT"),
            ("--threads", Some(v)) => threads = v.parse().expect("--threads N"),
            _ => {
                eprintln!("usage: write_loop [--listen 127.0.0.1:7105] [--threads 1] [--no-batch]");
                std::process::exit(2);
            }
        }
    }
    let threads = threads.max(1);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let all = Arc::new(txs);
    let mut handles = Vec::new();
    for (me, rx) in rxs.into_iter().enumerate() {
        let l = match listener(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("write_loop: listen {addr}: {e}");
                std::process::exit(1);
            }
        };
        let all = all.clone();
        handles.push(std::thread::spawn(move || {
            thread_main(me, l, rx, all, batch)
        }));
    }
    eprintln!(
        "write_loop listening on {addr}, {threads} thread(s), {}, pid {}",
        if batch {
            "batched rounds"
        } else {
            "one frame at a time"
        },
        std::process::id()
    );
    for h in handles {
        if let Ok(Err(e)) = h.join() {
            eprintln!("write_loop: {e}");
        }
    }
}
