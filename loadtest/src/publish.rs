//! The publisher side: herald's TCP ingest, herald's operator HTTP API, or
//! a peer's `POST /pub/<topic>`.
//!
//! Message `m` goes to topic `m % T`. Every payload starts with the send
//! time (u64 big-endian nanoseconds since the UNIX epoch) and, when it has
//! room, the message's 1-based index within its topic (u64 big-endian), so
//! receivers can measure latency and, for peers without a seq, check order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::wire::feed::{self, GatewayFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::worker::now_ns;

/// Where publications go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// herald TCP ingest with a feed token.
    Ingest { addr: SocketAddr, token: String },
    /// herald `POST /api/publish/{topic}` with an API key.
    Api {
        addr: SocketAddr,
        host: String,
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
    /// Ingest with rate 0: a PING barrier every this many messages.
    pub barrier_every: u64,
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

/// What the publisher has done so far, readable while it runs (and after
/// it was cut off at the time cap).
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
}

impl Live {
    fn update(&self, rep: &Report) {
        self.first_ns.store(rep.first_ns, Ordering::Relaxed);
        self.last_ns.store(rep.last_ns, Ordering::Relaxed);
        self.sent.store(rep.published, Ordering::Relaxed);
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
}

/// Runs the whole publish phase.
pub async fn run(spec: Spec, progress: Arc<Live>) -> Report {
    let mut rep = Report::default();
    let res = match &spec.sink {
        Sink::Ingest { addr, token } => ingest(&spec, *addr, token, &progress, &mut rep).await,
        Sink::Api { addr, host, key } => {
            let auth = format!("Authorization: Bearer {key}\r\n");
            http(
                &spec,
                *addr,
                host,
                "/api/publish/",
                &auth,
                &progress,
                &mut rep,
            )
            .await
        }
        Sink::Raw { addr, host, prefix } => {
            let path = format!("{prefix}/pub/");
            http(&spec, *addr, host, &path, "", &progress, &mut rep).await
        }
    };
    if let Err(e) = res {
        rep.error = Some(e);
    }
    rep
}

/// Paces message `m` at `t0 + m / rate`.
struct Pacer {
    t0: Instant,
    rate: f64,
}

impl Pacer {
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

async fn ingest(
    spec: &Spec,
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
    let mut index = vec![0u64; spec.topics.len()];
    let mut payload = vec![0u8; spec.payload];
    let mut batch = Vec::new();
    let pacer = Pacer {
        t0: Instant::now(),
        rate: spec.rate,
    };
    let mut sent = 0u64;
    let mut nonce = 0u64;
    let mut outstanding: Option<u64> = None;
    let res = async {
        while sent < spec.msgs {
            let upto = pacer.due(sent, spec.msgs, spec.barrier_every.max(1));
            if upto <= sent {
                pacer.wait_for(sent).await;
                continue;
            }
            batch.clear();
            for m in sent..upto {
                let t = (m % topics) as usize;
                index[t] += 1;
                let ts = now_ns();
                if rep.first_ns == 0 {
                    rep.first_ns = ts;
                }
                stamp(&mut payload, ts, index[t]);
                batch.extend_from_slice(&feed::encode_publish(&spec.topics[t], &payload));
            }
            wr.write_all(&batch)
                .await
                .map_err(|e| format!("ingest write: {e}"))?;
            rep.last_ns = now_ns();
            sent = upto;
            rep.published = sent;
            progress.update(rep);
            if spec.rate <= 0.0 {
                // Barrier: at most two batches between us and fan-out.
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
    addr: SocketAddr,
    host: &str,
    path_prefix: &str,
    extra_headers: &str,
    progress: &Live,
    rep: &mut Report,
) -> Result<(), String> {
    let mut conn = HttpConn {
        addr,
        stream: None,
        buf: Vec::with_capacity(4096),
    };
    let topics = spec.topics.len() as u64;
    let mut index = vec![0u64; spec.topics.len()];
    let mut req = Vec::with_capacity(256 + spec.payload);
    let pacer = Pacer {
        t0: Instant::now(),
        rate: spec.rate,
    };
    for m in 0..spec.msgs {
        if pacer.due(m, spec.msgs, 1) <= m {
            pacer.wait_for(m).await;
        }
        let t = (m % topics) as usize;
        index[t] += 1;
        req.clear();
        req.extend_from_slice(
            format!(
                "POST {path_prefix}{} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                spec.topics[t], spec.payload
            )
            .as_bytes(),
        );
        let body_at = req.len();
        req.resize(body_at + spec.payload, 0);
        let ts = now_ns();
        if rep.first_ns == 0 {
            rep.first_ns = ts;
        }
        stamp(&mut req[body_at..], ts, index[t]);
        let status = conn.request(&req).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "POST {path_prefix}{}: HTTP {status}",
                spec.topics[t]
            ));
        }
        rep.last_ns = now_ns();
        rep.published = m + 1;
        progress.update(rep);
    }
    rep.done_ns = now_ns();
    Ok(())
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
    fn chunked_bodies() {
        assert_eq!(chunked_len(b"3\r\nabc\r\n0\r\n\r\n"), Ok(Some(13)));
        assert_eq!(chunked_len(b"3\r\nabc\r\n0\r\n"), Ok(None));
        assert_eq!(chunked_len(b"3\r\nab"), Ok(None));
        assert!(chunked_len(b"zz\r\n").is_err());
    }
}
