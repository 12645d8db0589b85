//! Shared helpers for the integration tests: an in-process gateway on free
//! loopback ports, WebSocket clients (tokio-tungstenite and a raw one for
//! frames a real client library refuses to send), raw HTTP/1.1, a feed
//! client and the operator API.
//!
//! Every wait is bounded by [`T`] (or an explicit timeout).

#![allow(dead_code)]

pub mod nats;
pub mod process;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::auth::token::{mint_hs256, now_unix};
use herald::config::Config;
use herald::wire::client::{self, ServerMessage};
use herald::wire::feed::{self, GatewayFrame};
use herald::{Handler, LogHandler, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const FEED_TOKEN: &str = "feed-token";
pub const API_KEY: &str = "api-key";
/// The bound on every single wait.
pub const T: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Server

/// A running in-process gateway. Call [`TestServer::stop`] at the end of a
/// test; if the test panics first, the server is leaked (dropping a tokio
/// runtime inside the test's runtime would abort the whole test binary).
pub struct TestServer {
    inner: Option<Server>,
}

impl TestServer {
    pub async fn stop(mut self) -> bool {
        let s = self.inner.take().expect("server present");
        tokio::time::timeout(Duration::from_secs(20), s.shutdown())
            .await
            .expect("shutdown finished in time")
    }

    pub fn ws(&self) -> SocketAddr {
        self.ws_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin_addr()
    }

    pub fn ingest(&self) -> SocketAddr {
        self.ingest_addr()
    }
}

impl Deref for TestServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.inner.as_ref().expect("server present")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            std::mem::forget(s);
        }
    }
}

/// The configuration every test starts from: loopback, free ports, the test
/// secrets, two shards.
pub fn base_config() -> Config {
    let mut cfg = Config::default();
    cfg.listen.ws = "127.0.0.1:0".parse().unwrap();
    cfg.listen.ingest = "127.0.0.1:0".parse().unwrap();
    cfg.listen.admin = "127.0.0.1:0".parse().unwrap();
    cfg.auth.hs256_secret = SECRET.into();
    cfg.ingest.tokens = vec![FEED_TOKEN.into()];
    cfg.api.keys = vec![API_KEY.into()];
    cfg.shards.count = 2;
    // Test clients often stop reading once they saw what they wanted; do
    // not let every shutdown wait 2 s for their close replies.
    cfg.timeouts.close_ms = 300;
    cfg
}

pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    start_with_handler(tweak, Arc::new(LogHandler))
}

pub fn start_with_handler(
    tweak: impl FnOnce(&mut Config),
    handler: Arc<dyn Handler>,
) -> TestServer {
    start_with_options(tweak, handler, herald::StartOptions::default())
}

pub fn start_with_options(
    tweak: impl FnOnce(&mut Config),
    handler: Arc<dyn Handler>,
    options: herald::StartOptions,
) -> TestServer {
    let mut cfg = base_config();
    tweak(&mut cfg);
    let server = Server::start_with(cfg, handler, options).expect("server starts");
    TestServer {
        inner: Some(server),
    }
}

// ---------------------------------------------------------------------------
// Tokens

/// A token valid for an hour.
pub fn token(sub: &str, topics: &[&str], publish: &[&str]) -> String {
    token_exp(sub, now_unix() + 3600, topics, publish)
}

pub fn token_exp(sub: &str, exp: u64, topics: &[&str], publish: &[&str]) -> String {
    mint_hs256(SECRET, sub, exp, Some(topics), Some(publish))
}

/// A token allowed to subscribe and publish everywhere.
pub fn token_all(sub: &str) -> String {
    token(sub, &["*"], &["*"])
}

// ---------------------------------------------------------------------------
// WebSocket client (tokio-tungstenite)

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects with `Authorization: Bearer` and the herald.v1 subprotocol.
pub async fn ws_connect(addr: SocketAddr, token: &str) -> Ws {
    let auth = format!("Bearer {token}");
    ws_connect_with(
        addr,
        "/ws",
        &[
            ("Sec-WebSocket-Protocol", "herald.v1"),
            ("Authorization", &auth),
        ],
    )
    .await
    .expect("websocket handshake accepted")
    .0
}

pub async fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(http_header_name(k), v.parse().expect("valid header value"));
    }
    tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
}

fn http_header_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name")
}

pub async fn send_bin(ws: &mut Ws, body: Vec<u8>) {
    tokio::time::timeout(T, ws.send(Message::Binary(body.into())))
        .await
        .expect("send in time")
        .expect("send ok");
}

/// The next WebSocket message (WebSocket pings from the gateway's
/// keep-alive are skipped). Panics on timeout, error or end of stream.
pub async fn next_msg(ws: &mut Ws) -> Message {
    next_msg_within(ws, T)
        .await
        .unwrap_or_else(|| panic!("no message within {T:?}"))
}

/// `None` on timeout; panics on a transport error or end of stream.
pub async fn next_msg_within(ws: &mut Ws, within: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("websocket stream ended"),
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        if matches!(m, Message::Ping(_)) {
            continue;
        }
        return Some(m);
    }
}

/// The next message, which must be a binary herald message.
pub async fn next_server(ws: &mut Ws) -> ServerMessage {
    match next_msg(ws).await {
        Message::Binary(b) => client::decode_server_message(&b).expect("valid server message"),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

/// Reads until a close frame and returns its code; publications before it
/// are counted in the second value. Panics on timeout or a stream end
/// without a close frame.
pub async fn expect_close(ws: &mut Ws) -> (u16, usize) {
    let mut skipped = 0;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {T:?} ({skipped} messages before)"),
            Ok(None) => panic!("stream ended without a close frame"),
            Ok(Some(Err(e))) => panic!("websocket error before a close frame: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        match m {
            Message::Close(Some(f)) => return (u16::from(f.code), skipped),
            Message::Close(None) => panic!("close frame without a code"),
            Message::Ping(_) | Message::Pong(_) => {}
            _ => skipped += 1,
        }
    }
}

/// SUBSCRIBE and wait for its REPLY; returns `(seq, epoch)`.
pub async fn subscribe(ws: &mut Ws, id: u32, topic: &str) -> (u64, String) {
    send_bin(ws, client::encode_subscribe(id, topic, None)).await;
    match next_server(ws).await {
        ServerMessage::Reply {
            id: rid,
            seq: Some(seq),
            epoch: Some(epoch),
            recovered: Some(false),
        } if rid == id => (seq, epoch),
        other => panic!("expected the SUBSCRIBE reply for {id}, got {other:?}"),
    }
}

/// PING and expect its REPLY as the very next message.
pub async fn ping(ws: &mut Ws, id: u32) {
    send_bin(ws, client::encode_ping(id)).await;
    match next_server(ws).await {
        ServerMessage::Reply { id: rid, .. } if rid == id => {}
        other => panic!("expected the PING reply for {id}, got {other:?}"),
    }
}

/// The next message, which must be a PUBLICATION: `(topic, seq, payload)`.
pub async fn next_publication(ws: &mut Ws) -> (String, u64, Vec<u8>) {
    match next_server(ws).await {
        ServerMessage::Publication {
            topic,
            seq,
            payload,
        } => (topic, seq, payload),
        other => panic!("expected a publication, got {other:?}"),
    }
}

/// SUBSCRIBE with `since`/`epoch`; returns the reply's (seq, epoch, recovered).
pub async fn subscribe_since(
    ws: &mut Ws,
    id: u32,
    topic: &str,
    since: u64,
    epoch: &str,
) -> (u64, String, bool) {
    send_bin(
        ws,
        client::encode_subscribe(id, topic, Some((since, epoch))),
    )
    .await;
    match next_server(ws).await {
        ServerMessage::Reply {
            id: rid,
            seq: Some(seq),
            epoch: Some(e),
            recovered: Some(r),
        } if rid == id => (seq, e, r),
        other => panic!("expected the SUBSCRIBE reply, got {other:?}"),
    }
}

/// Reads `n` publications: (seq, payload).
pub async fn publications(ws: &mut Ws, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (_, seq, p) = next_publication(ws).await;
        v.push((seq, p));
    }
    v
}

pub async fn nothing_more(ws: &mut Ws) {
    if let Some(m) = next_msg_within(ws, Duration::from_millis(300)).await {
        panic!("expected nothing more, got {m:?}");
    }
}

pub async fn expect_error(ws: &mut Ws, id: u32, code: u16) {
    match next_server(ws).await {
        ServerMessage::Error {
            id: rid, code: c, ..
        } if rid == id && c == code => {}
        other => panic!("expected ERROR {code} for id {id}, got {other:?}"),
    }
}

pub async fn send_close(ws: &mut Ws, code: u16) {
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    };
    let _ = tokio::time::timeout(T, ws.send(Message::Close(Some(frame)))).await;
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_str()))
    }
}

/// The standard headers of a valid upgrade request (without a token).
pub fn upgrade_headers() -> Vec<(String, String)> {
    [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "herald.v1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Upgrade headers with an `Authorization: Bearer` token.
pub fn upgrade_headers_with_token(token: &str) -> Vec<(String, String)> {
    let mut h = upgrade_headers();
    h.push(("Authorization".into(), format!("Bearer {token}")));
    h
}

pub fn set_header(h: &mut Vec<(String, String)>, name: &str, value: &str) {
    remove_header(h, name);
    h.push((name.to_owned(), value.to_owned()));
}

pub fn remove_header(h: &mut Vec<(String, String)>, name: &str) {
    h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

pub fn render_request(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let mut v = s.into_bytes();
    v.extend_from_slice(body);
    v
}

/// Sends a request on a new connection and reads the answer. A 101 answer
/// is returned as soon as its header is complete, with the stream for what
/// follows (its `body` holds the WebSocket bytes already read, if any); any
/// other answer is read to its end.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (RawResponse, TcpStream) {
    let mut stream = tokio::time::timeout(T, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tokio::time::timeout(T, stream.write_all(request))
        .await
        .expect("write in time")
        .expect("write");
    let resp = read_response(&mut stream).await;
    (resp, stream)
}

/// Reads one HTTP/1.1 response from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(T, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a complete response header: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let resp = RawResponse {
        status,
        status_line,
        headers,
        body: Vec::new(),
    };
    if status == 101 {
        // Whatever came after the head is already WebSocket traffic.
        return RawResponse { body, ..resp };
    }
    let content_length = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(n) = content_length {
            if body.len() >= n {
                body.truncate(n);
                break;
            }
        }
        if chunked && find(&body, b"0\r\n\r\n").is_some() && body.ends_with(b"0\r\n\r\n") {
            body = dechunk(&body);
            break;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("response body in time")
            .unwrap_or(0);
        if n == 0 {
            if chunked {
                body = dechunk(&body);
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse { body, ..resp }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A WebSocket upgrade attempt with exactly these headers.
pub async fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> (RawResponse, TcpStream) {
    http_exchange(addr, &render_request("GET", path, headers, b"")).await
}

// ---------------------------------------------------------------------------
// Operator API

/// One API call on its own connection (`Connection: close`).
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> RawResponse {
    let mut h = vec![
        ("Host".to_owned(), "127.0.0.1".to_owned()),
        ("Connection".to_owned(), "close".to_owned()),
        ("Content-Length".to_owned(), body.len().to_string()),
    ];
    if let Some(k) = key {
        h.push(("Authorization".to_owned(), format!("Bearer {k}")));
    }
    http_exchange(addr, &render_request(method, path, &h, body))
        .await
        .0
}

/// `POST /api/publish/{topic}` with the test key; returns the seq.
pub async fn api_publish(addr: SocketAddr, topic: &str, payload: &[u8]) -> u64 {
    let r = api(
        addr,
        "POST",
        &format!("/api/publish/{topic}"),
        Some(API_KEY),
        payload,
    )
    .await;
    assert_eq!(
        r.status,
        202,
        "publish answer: {} {}",
        r.status_line,
        r.body_str()
    );
    r.json()["seq"].as_u64().expect("seq is a number")
}

pub async fn metrics_text(addr: SocketAddr) -> String {
    let r = api(addr, "GET", "/metrics", None, b"").await;
    assert_eq!(r.status, 200);
    r.body_str()
}

/// Sum of every sample of `name` whose label set contains all of `labels`
/// (each like `reason="slow_consumer"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if n != name || !labels.iter().all(|lb| rest.contains(lb)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Feed client

pub struct Feed {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Feed {
    pub async fn connect(addr: SocketAddr) -> Feed {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Feed {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and completes HELLO with the test token.
    pub async fn open(addr: SocketAddr, name: &str) -> Feed {
        let mut f = Feed::connect(addr).await;
        f.send(&feed::encode_hello(FEED_TOKEN, name)).await;
        assert_eq!(f.read().await, Some(GatewayFrame::HelloOk));
        f
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(T, self.stream.write_all(bytes))
            .await
            .expect("feed write in time")
            .expect("feed write");
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.send(&feed::encode_publish(topic, payload)).await;
    }

    /// The next gateway frame; `None` at end of stream (or a reset).
    pub async fn read(&mut self) -> Option<GatewayFrame> {
        self.read_body()
            .await
            .map(|b| feed::decode_gateway_frame(&b).expect("valid gateway frame"))
    }

    /// The body of the next length-prefixed frame; `None` at end of stream.
    pub async fn read_body(&mut self) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= 4 + len {
                    let body = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Some(body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no gateway frame within {T:?}"),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                assert!(self.buf.is_empty(), "stream ended inside a frame");
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// PING with `nonce`; returns once the gateway echoed it.
    pub async fn barrier(&mut self, nonce: u64) {
        self.send(&feed::encode_ping(nonce)).await;
        match self.read().await {
            Some(GatewayFrame::Pong(n)) if n == nonce => {}
            other => panic!("expected pong {nonce}, got {other:?}"),
        }
    }

    /// Reads until the gateway closes: the ERROR it sent before, if any.
    pub async fn expect_error_then_close(&mut self) -> (u16, String) {
        let frame = self.read().await;
        let err = match frame {
            Some(GatewayFrame::Error { code, message }) => (code, message),
            other => panic!("expected an ERROR frame, got {other:?}"),
        };
        assert_eq!(self.read().await, None, "the gateway closes after an ERROR");
        err
    }
}

// ---------------------------------------------------------------------------
// Raw WebSocket client: for frames a client library would not send, and for
// a client that does not read.

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, token: &str) -> RawWs {
        let (resp, stream) = raw_upgrade(addr, "/ws", &upgrade_headers_with_token(token)).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        RawWs {
            stream,
            buf: resp.body,
        }
    }

    /// Wraps a stream whose upgrade already succeeded; `already_read` is
    /// what was read past the 101 head.
    pub fn from_stream(stream: TcpStream, already_read: Vec<u8>) -> RawWs {
        RawWs {
            stream,
            buf: already_read,
        }
    }

    /// Upgrades an already connected stream.
    pub async fn upgrade(mut stream: TcpStream, token: &str) -> RawWs {
        let req = render_request("GET", "/ws", &upgrade_headers_with_token(token), b"");
        stream.write_all(&req).await.unwrap();
        let resp = read_response(&mut stream).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        RawWs {
            stream,
            buf: resp.body,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(T, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// A masked frame, as a client must send.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let f = herald::wire::ws::client_frame(opcode, true, [0x12, 0x34, 0x56, 0x78], payload);
        self.send_raw(&f).await;
    }

    /// The next frame `(opcode, payload)`; `None` at end of stream.
    pub async fn read_frame_within(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no frame within {within:?}"),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        self.read_frame_within(T).await
    }

    /// Reads until a close frame: its code, and how many data frames came
    /// before it.
    pub async fn expect_close(&mut self) -> (u16, usize) {
        let mut before = 0;
        loop {
            match self.read_frame().await {
                None => panic!("stream ended without a close frame ({before} frames before)"),
                Some((OP_CLOSE, p)) => {
                    assert!(p.len() >= 2, "close frame without a code");
                    return (u16::from_be_bytes([p[0], p[1]]), before);
                }
                Some(_) => before += 1,
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let op = buf[0] & 0x0f;
    let (len, hl) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(a) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < hl + len {
        return None;
    }
    Some((op, buf[hl..hl + len].to_vec(), hl + len))
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
