//! The publisher side: herald's TCP ingest, herald's operator HTTP API, or
//! a peer's `POST /pub/<topic>`.
//!
//! Message `m` goes to topic `m % T`. Every payload starts with the send
//! time (u64 big-endian nanoseconds since the UNIX epoch) and, when it has
//! room, the message's 1-based index within its topic (u64 big-endian), so
//! receivers can measure latency and, for peers without a seq, check order.
//!
//! Every sink can run K publishers in parallel (`--publishers`), each on
//! its own connection: an HTTP keep-alive one, or a feed on the ingest.
//! Publisher `j` talks to entry `j mod n` of the sink's address list
//! (several herald nodes). With at least K topics, publisher `j`
//! owns the topics `t` with `t % K == j`, so each topic still sees its
//! messages in order; with fewer topics than publishers they share topics
//! (message `m` goes to publisher `m % K`) and the index is written as 0,
//! which tells receivers there is no order to check.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::wire::feed::{self, GatewayFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::series::Series;
use crate::worker::now_ns;

/// Where publications go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// herald TCP ingest(s) with a feed token; feed j uses `addrs[j % n]`.
    Ingest {
        addrs: Vec<SocketAddr>,
        token: String,
    },
    /// herald `POST /api/publish/{topic}` with an API key; publisher j
    /// uses `targets[j % n]` (address, Host header).
    Api {
        targets: Vec<(SocketAddr, String)>,
        key: String,
    },
    /// A peer's `POST {prefix}/pub/{topic}`.
    Raw {
        addr: SocketAddr,
        host: String,
        prefix: String,
    },
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub sink: Sink,
    pub topics: Vec<String>,
    pub msgs: u64,
    /// Messages per second; 0 = as fast as possible.
    pub rate: f64,
    pub payload: usize,
    /// Ingest with rate 0: a PING barrier every this many messages (of
    /// each feed).
    pub barrier_every: u64,
    /// Parallel publishers (feeds or HTTP connections).
    pub publishers: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub published: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// When the gateway confirmed the last message was handed to fan-out
    /// (ingest), or answered the last request (HTTP).
    pub done_ns: u64,
    pub error: Option<String>,
}

/// Writes the send time and per-topic index into a payload buffer.
pub fn stamp(payload: &mut [u8], ts_ns: u64, index: u64) {
    if let Some(p) = payload.get_mut(..8) {
        p.copy_from_slice(&ts_ns.to_be_bytes());
    }
    if let Some(p) = payload.get_mut(8..16) {
        p.copy_from_slice(&index.to_be_bytes());
    }
}

/// What the publishers have done so far, readable while they run (and
/// after they were cut off at the time cap).
#[derive(Debug)]
pub struct Live {
    pub sent: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    /// Publications per bucket of wall-clock time.
    pub series: Mutex<Series>,
}

impl Live {
    pub fn new(sample_ms: u64) -> Live {
        Live {
            sent: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            series: Mutex::new(Series::new(sample_ms)),
        }
    }

    /// `n` more messages sent, the first at `first_ns`, the last at `last_ns`.
    fn record(&self, n: u64, first_ns: u64, last_ns: u64) {
        let _ = self
            .first_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v == 0 || first_ns < v).then_some(first_ns)
            });
        self.last_ns.fetch_max(last_ns, Ordering::Relaxed);
        self.sent.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut s) = self.series.lock() {
            s.add(last_ns, n);
        }
    }

    /// A report of the work done so far.
    pub fn snapshot(&self) -> Report {
        Report {
            published: self.sent.load(Ordering::Relaxed),
            first_ns: self.first_ns.load(Ordering::Relaxed),
            last_ns: self.last_ns.load(Ordering::Relaxed),
            ..Report::default()
        }
    }

    pub fn series(&self) -> Series {
        self.series.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Runs the whole publish phase.
pub async fn run(spec: Spec, progress: Arc<Live>) -> Report {
    let k = spec.publishers.max(1);
    let t0 = Instant::now();
    let spec = Arc::new(spec);
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..k {
        let (spec, progress) = (spec.clone(), progress.clone());
        let who = Who { j, k };
        tasks.spawn(async move {
            let mut rep = Report::default();
            let res = match &spec.sink {
                Sink::Ingest { addrs, token } => {
                    let addr = addrs[j as usize % addrs.len()];
                    ingest(&spec, who, addr, token, &progress, &mut rep).await
                }
                Sink::Api { targets, key } => {
                    let (addr, host) = &targets[j as usize % targets.len()];
                    let extra = format!("Authorization: Bearer {key}\r\n");
                    let target = HttpTarget {
                        addr: *addr,
                        host,
                        path_prefix: "/api/publish/",
                        extra_headers: &extra,
                    };
                    http(&spec, who, t0, &target, &progress, &mut rep).await
                }
                Sink::Raw { addr, host, prefix } => {
                    let path = format!("{prefix}/pub/");
                    let target = HttpTarget {
                        addr: *addr,
                        host,
                        path_prefix: &path,
                        extra_headers: "",
                    };
                    http(&spec, who, t0, &target, &progress, &mut rep).await
                }
            };
            if let Err(e) = res {
                rep.error = Some(e);
            }
            rep
        });
    }
    let mut all = Report::default();
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| Report {
            error: Some(format!("publisher task: {e}")),
            ..Report::default()
        });
        all.published += r.published;
        if r.first_ns > 0 && (all.first_ns == 0 || r.first_ns < all.first_ns) {
            all.first_ns = r.first_ns;
        }
        all.last_ns = all.last_ns.max(r.last_ns);
        all.done_ns = all.done_ns.max(r.done_ns);
        if all.error.is_none() {
            all.error = r.error;
        }
        if all.error.is_some() {
            // One publisher failed: the run is off, stop the others.
            tasks.abort_all();
        }
    }
    all
}

/// Publisher `j` of `k`.
#[derive(Debug, Clone, Copy)]
struct Who {
    j: u32,
    k: u32,
}

impl Who {
    /// Whether message `m` is ours, and its per-topic index (0 = shared
    /// topic, no order).
    fn owns(&self, m: u64, topics: u64) -> Option<u64> {
        let k = u64::from(self.k);
        let j = u64::from(self.j);
        if topics >= k {
            ((m % topics) % k == j).then_some(m / topics + 1)
        } else if m % k == j {
            Some(if k == 1 { m / topics + 1 } else { 0 })
        } else {
            None
        }
    }
}

struct HttpTarget<'a> {
    addr: SocketAddr,
    host: &'a str,
    path_prefix: &'a str,
    extra_headers: &'a str,
}

/// Paces message `m` at `t0 + m / rate`.
///
/// With a rate, a payload carries the time its message was *scheduled*,
/// not the time it left: a server that makes the publisher wait (a peer
/// fans out before it answers the POST) then shows that wait as latency
/// instead of hiding it by slowing the publisher down (coordinated
/// omission). Unpaced, the payload carries the actual send time.
#[derive(Clone, Copy)]
struct Pacer {
    t0: Instant,
    /// `t0` on the wall clock, UNIX ns.
    t0_ns: u64,
    rate: f64,
}

impl Pacer {
    fn new(t0: Instant, rate: f64) -> Pacer {
        // The wall clock of `t0`: now minus what elapsed since.
        let t0_ns = now_ns().saturating_sub(t0.elapsed().as_nanos() as u64);
        Pacer { t0, t0_ns, rate }
    }

    /// What goes into message `m`'s payload, sent at `sent_ns`.
    fn stamp_ns(&self, m: u64, sent_ns: u64) -> u64 {
        if self.rate > 0.0 {
            self.t0_ns + (m as f64 * 1e9 / self.rate) as u64
        } else {
            sent_ns
        }
    }

    /// How many messages are due by now (at least `sent + 1` when unpaced).
    fn due(&self, sent: u64, total: u64, unpaced_batch: u64) -> u64 {
        if self.rate <= 0.0 {
            return (sent + unpaced_batch).min(total);
        }
        let n = (self.t0.elapsed().as_secs_f64() * self.rate) as u64 + 1;
        n.min(total)
    }

    async fn wait_for(&self, m: u64) {
        if self.rate > 0.0 {
            let at = self.t0 + Duration::from_secs_f64(m as f64 / self.rate);
            tokio::time::sleep_until(at).await;
        }
    }
}

async fn read_feed_frame(rd: &mut OwnedReadHalf) -> Result<GatewayFrame, String> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len)
        .await
        .map_err(|e| format!("ingest closed: {e}"))?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > feed::DEFAULT_MAX_FRAME {
        return Err(format!("ingest sent a bad frame length {n}"));
    }
    let mut body = vec![0u8; n];
    rd.read_exact(&mut body)
        .await
        .map_err(|e| format!("ingest closed: {e}"))?;
    feed::decode_gateway_frame(&body).map_err(|e| format!("ingest sent an undecodable frame: {e}"))
}

async fn wait_pong(
    want: u64,
    pongs: &mut mpsc::Receiver<Result<u64, String>>,
) -> Result<(), String> {
    loop {
        match pongs.recv().await {
            Some(Ok(n)) if n >= want => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("ingest reader ended".to_string()),
        }
    }
}

/// Feed `who` on the ingest at `addr`: the messages it owns, in order.
async fn ingest(
    spec: &Spec,
    who: Who,
    addr: SocketAddr,
    token: &str,
    progress: &Live,
    rep: &mut Report,
) -> Result<(), String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("ingest {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(&feed::encode_hello(token, "herald-load"))
        .await
        .map_err(|e| format!("ingest HELLO: {e}"))?;
    match read_feed_frame(&mut rd).await? {
        GatewayFrame::HelloOk => {}
        GatewayFrame::Error { code, message } => {
            return Err(format!("ingest refused HELLO: {code} {message}"))
        }
        other => return Err(format!("ingest answered HELLO with {other:?}")),
    }
    // Pongs (and a gateway ERROR) come back on their own task.
    let (tx, mut pongs) = mpsc::channel::<Result<u64, String>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let r = match read_feed_frame(&mut rd).await {
                Ok(GatewayFrame::Pong(n)) => Ok(n),
                Ok(GatewayFrame::Error { code, message }) => {
                    Err(format!("ingest ERROR {code}: {message}"))
                }
                Ok(GatewayFrame::HelloOk) => continue,
                Err(e) => Err(e),
            };
            let fatal = r.is_err();
            if tx.send(r).await.is_err() || fatal {
                break;
            }
        }
    });
    let topics = spec.topics.len() as u64;
    let mut payload = vec![0u8; spec.payload];
    let mut batch = Vec::new();
    let pacer = Pacer::new(Instant::now(), spec.rate);
    // Unpaced: a window of this feed's own messages per barrier, i.e. K
    // windows of the global sequence it picks its share from.
    let window = spec
        .barrier_every
        .max(1)
        .saturating_mul(u64::from(who.k.max(1)));
    let mut sent = 0u64;
    let mut nonce = 0u64;
    let mut outstanding: Option<u64> = None;
    let res = async {
        while sent < spec.msgs {
            let upto = pacer.due(sent, spec.msgs, window);
            if upto <= sent {
                pacer.wait_for(sent).await;
                continue;
            }
            batch.clear();
            let mut n = 0u64;
            for m in sent..upto {
                let Some(index) = who.owns(m, topics) else {
                    continue;
                };
                let t = (m % topics) as usize;
                let ts = now_ns();
                if rep.first_ns == 0 {
                    rep.first_ns = ts;
                }
                stamp(&mut payload, pacer.stamp_ns(m, ts), index);
                batch.extend_from_slice(&feed::encode_publish(&spec.topics[t], &payload));
                n += 1;
            }
            sent = upto;
            if n == 0 {
                continue;
            }
            wr.write_all(&batch)
                .await
                .map_err(|e| format!("ingest write: {e}"))?;
            let batch_first = rep.last_ns.max(rep.first_ns);
            rep.last_ns = now_ns();
            progress.record(n, batch_first, rep.last_ns);
            rep.published += n;
            if spec.rate <= 0.0 {
                // Barrier: at most two windows between us and the sockets.
                nonce += 1;
                wr.write_all(&feed::encode_ping(nonce))
                    .await
                    .map_err(|e| format!("ingest write: {e}"))?;
                if let Some(prev) = outstanding {
                    wait_pong(prev, &mut pongs).await?;
                }
                outstanding = Some(nonce);
            } else if let Ok(Err(e)) = pongs.try_recv() {
                return Err(e);
            }
        }
        nonce += 1;
        wr.write_all(&feed::encode_ping(nonce))
            .await
            .map_err(|e| format!("ingest write: {e}"))?;
        wait_pong(nonce, &mut pongs).await?;
        rep.done_ns = now_ns();
        Ok(())
    }
    .await;
    reader.abort();
    res
}

/// A tiny HTTP/1.1 keep-alive client: one request at a time.
struct HttpConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// A parsed response head.
struct Head {
    status: u16,
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = crate::ws::head_end(buf) else {
        if buf.len() > crate::ws::MAX_HEAD {
            return Err("response head too large".into());
        }
        return Ok(None);
    };
    let status = crate::ws::status_code(&buf[..end]).ok_or("not an HTTP response")?;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut head = Head {
        status,
        len: end,
        content_length: None,
        chunked: false,
        close: text.starts_with("HTTP/1.0"),
    };
    for line in text.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(v.parse().map_err(|_| "bad Content-Length")?)
            }
            "transfer-encoding" => head.chunked = v.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    head.close = true;
                } else if v.contains("keep-alive") {
                    head.close = false;
                }
            }
            _ => {}
        }
    }
    Ok(Some(head))
}

/// Length of a complete chunked body at the front of `buf`, if complete.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        pos += eol + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return Ok(crate::ws::head_end(&buf[pos - 2..]).map(|e| pos - 2 + e));
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        pos += size + 2;
    }
}

impl HttpConn {
    async fn read_more(&mut self) -> Result<(), String> {
        let s = self.stream.as_mut().ok_or("not connected")?;
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// One request/response; reconnects once if a kept-alive connection
    /// turns out to be closed.
    async fn request(&mut self, req: &[u8]) -> Result<u16, String> {
        let reused = self.stream.is_some();
        match self.request_once(req).await {
            Ok(s) => Ok(s),
            Err(_) if reused => {
                self.stream = None;
                self.request_once(req).await
            }
            Err(e) => Err(e),
        }
    }

    async fn request_once(&mut self, req: &[u8]) -> Result<u16, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
            self.buf.clear();
        }
        let s = self.stream.as_mut().ok_or("not connected")?;
        s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            self.read_more().await?;
        };
        let body_len = if head.status == 204 || head.status == 304 {
            0
        } else if head.chunked {
            loop {
                if let Some(n) = chunked_len(&self.buf[head.len..])? {
                    break n;
                }
                self.read_more().await?;
            }
        } else if let Some(n) = head.content_length {
            n
        } else {
            // Body until close: read it all, then drop the connection.
            while self.read_more().await.is_ok() {}
            self.stream = None;
            self.buf.clear();
            return Ok(head.status);
        };
        while self.buf.len() < head.len + body_len {
            self.read_more().await?;
        }
        self.buf.drain(..head.len + body_len);
        if head.close {
            self.stream = None;
        }
        Ok(head.status)
    }
}

async fn http(
    spec: &Spec,
    who: Who,
    t0: Instant,
    target: &HttpTarget<'_>,
    progress: &Live,
    rep: &mut Report,
) -> Result<(), String> {
    let mut conn = HttpConn {
        addr: target.addr,
        stream: None,
        buf: Vec::with_capacity(4096),
    };
    let topics = spec.topics.len() as u64;
    let mut req = Vec::with_capacity(256 + spec.payload);
    let pacer = Pacer::new(t0, spec.rate);
    for m in 0..spec.msgs {
        let Some(index) = who.owns(m, topics) else {
            continue;
        };
        if pacer.due(m, spec.msgs, 1) <= m {
            pacer.wait_for(m).await;
        }
        let t = (m % topics) as usize;
        req.clear();
        req.extend_from_slice(
            format!(
                "POST {}{} HTTP/1.1\r\nHost: {}\r\n{}\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                target.path_prefix, spec.topics[t], target.host, target.extra_headers, spec.payload
            )
            .as_bytes(),
        );
        let body_at = req.len();
        req.resize(body_at + spec.payload, 0);
        let ts = now_ns();
        if rep.first_ns == 0 {
            rep.first_ns = ts;
        }
        stamp(&mut req[body_at..], pacer.stamp_ns(m, ts), index);
        let status = conn.request(&req).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "POST {}{}: HTTP {status}",
                target.path_prefix, spec.topics[t]
            ));
        }
        rep.last_ns = now_ns();
        rep.published += 1;
        progress.record(1, ts, ts);
    }
    rep.done_ns = now_ns();
    Ok(())
}

/// `GET path` with HTTP/1.0 on a fresh connection, body read to the end.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let head = parse_head(&buf)?.ok_or("truncated HTTP response")?;
    let mut body = buf.split_off(head.len);
    if head.chunked {
        body = dechunk(&body)?;
    } else if let Some(n) = head.content_length {
        body.truncate(n);
    }
    Ok((head.status, body))
}

/// The data of a complete chunked body.
fn dechunk(buf: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(buf.len());
    let mut pos = 0;
    loop {
        let eol = buf[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        pos += eol + 2;
        if size == 0 {
            return Ok(out);
        }
        let data = buf.get(pos..pos + size).ok_or("truncated chunk")?;
        out.extend_from_slice(data);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_fit_the_payload() {
        let mut p = vec![0u8; 20];
        stamp(&mut p, 0x0102_0304_0506_0708, 9);
        assert_eq!(&p[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&p[8..16], &9u64.to_be_bytes());
        let mut short = vec![0u8; 8];
        stamp(&mut short, 1, 2);
        assert_eq!(short, 1u64.to_be_bytes());
    }

    #[test]
    fn response_heads() {
        let h = parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 9\r\n\r\n{\"seq\":1}")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (h.status, h.content_length, h.chunked, h.close),
            (202, Some(9), false, false)
        );
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert!(h.chunked && h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").expect("valid").is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn paced_stamps_are_the_schedule() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, 100.0);
        let base = p.stamp_ns(0, 0);
        assert!(base.abs_diff(now_ns()) < 1_000_000_000);
        assert_eq!(p.stamp_ns(50, 1), base + 500_000_000);
        let unpaced = Pacer::new(t0, 0.0);
        assert_eq!(unpaced.stamp_ns(50, 1234), 1234);
    }

    #[test]
    fn publishers_split_messages() {
        // 4 topics, 2 publishers: each owns two topics, in order.
        let a = Who { j: 0, k: 2 };
        let b = Who { j: 1, k: 2 };
        let mine: Vec<_> = (0..8)
            .filter_map(|m| a.owns(m, 4).map(|i| (m, i)))
            .collect();
        assert_eq!(mine, vec![(0, 1), (2, 1), (4, 2), (6, 2)]);
        assert_eq!(b.owns(5, 4), Some(2));
        // 1 topic, 3 publishers: shared topic, index 0.
        let c = Who { j: 2, k: 3 };
        assert_eq!(c.owns(5, 1), Some(0));
        assert_eq!(c.owns(4, 1), None);
        // One publisher: every message, indices from 1.
        let one = Who { j: 0, k: 1 };
        assert_eq!(
            (0..5).filter_map(|m| one.owns(m, 1)).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            Ok(b"abcde".to_vec())
        );
        assert!(dechunk(b"3\r\nab").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(chunked_len(b"3\r\nabc\r\n0\r\n\r\n"), Ok(Some(13)));
        assert_eq!(chunked_len(b"3\r\nabc\r\n0\r\n"), Ok(None));
        assert_eq!(chunked_len(b"3\r\nab"), Ok(None));
        assert!(chunked_len(b"zz\r\n").is_err());
    }
}
