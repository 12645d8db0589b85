//! TCP ingest: upstream feeds push length-prefixed MessagePack frames
//! (PROTOCOL.md §2). One task per feed; a feed's frames are handed to the
//! hub in the order they arrived, so per-topic order is the feed's order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use metrics::{counter, gauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::hub::{FeedStatus, Hub, HubError};
use crate::wire::feed::{self, FeedError, FeedFrame};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Protocol(FeedError),
    #[error("bad token")]
    Token,
    #[error("no HELLO in time")]
    HelloTimeout,
    #[error("gateway shutting down")]
    Closed,
    #[error("the cluster broker is unreachable")]
    Unavailable,
    #[error("publication too large for the cluster broker")]
    TooLarge,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl IngestError {
    fn code(&self) -> Option<u16> {
        match self {
            IngestError::Protocol(e) => Some(e.code),
            IngestError::Token => Some(401),
            IngestError::HelloTimeout => Some(408),
            // PROTOCOL.md §4: feeds get 503 before they are closed.
            IngestError::Closed => Some(503),
            IngestError::Unavailable => Some(503),
            IngestError::TooLarge => Some(413),
            IngestError::Io(_) => None,
        }
    }
}

pub struct IngestConfig {
    pub tokens: Vec<String>,
    pub max_frame: usize,
    pub hello_timeout: Duration,
    pub max_feeds: usize,
}

/// How long an ERROR may take to reach a feed's socket: a feed that does
/// not read must not hold its task (or a drain) for longer.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a closing feed connection keeps reading (and dropping) what
/// the feed still sends, waiting for its EOF.
const LINGER: Duration = Duration::from_millis(500);

/// Accepts feeds until `stop` turns true, then returns once every feed
/// task has ended (sent its ERROR 503 and closed).
///
/// `quiet` is held by this loop and by every feed while it may still hand
/// frames to the hub; its receiver sees the channel close once none can.
/// `Server::shutdown` waits for that before it drains the shards, so
/// whatever a feed handed over is queued ahead of the drain, without
/// waiting for the feeds' ERROR writes and lingering closes.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<IngestConfig>,
    hub: Hub,
    mut stop: watch::Receiver<bool>,
    quiet: mpsc::Sender<()>,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_feeds));
    let mut feeds = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "ingest accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reaps finished feeds so the set holds only live ones.
            Some(_) = feeds.join_next(), if !feeds.is_empty() => continue,
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        let hub = hub.clone();
        let permits = permits.clone();
        let stop = stop.clone();
        let quiet = quiet.clone();
        feeds.spawn(async move {
            let Ok(permit) = permits.try_acquire_owned() else {
                crate::metrics::ingest_error(429);
                tracing::warn!(%peer, "feed refused: too many feeds");
                let mut stream = stream;
                let _ = stream.write_all(&feed::error(429, "too many feeds")).await;
                return;
            };
            let mut feed = Feed {
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
                cfg,
                hub,
                name: String::new(),
                status: Arc::new(FeedStatus::default()),
            };
            let result = feed.run(stop).await;
            drop(quiet);
            drop(permit);
            match result {
                Ok(()) => tracing::info!(%peer, feed = %feed.name, "feed disconnected"),
                Err(e) => {
                    if let Some(code) = e.code() {
                        crate::metrics::ingest_error(code);
                        let _ = tokio::time::timeout(
                            ERROR_WRITE_TIMEOUT,
                            feed.stream.write_all(&feed::error(code, &e.to_string())),
                        )
                        .await;
                    }
                    tracing::warn!(%peer, feed = %feed.name, error = %e, "feed closed");
                }
            }
            let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, feed.stream.shutdown()).await;
            // A socket closed with unread input answers with a reset, and a
            // reset can reach the feed before it has read the ERROR (a feed
            // streaming PUBLISH frames when the drain comes). Reading until
            // its EOF, for a bounded time, lets the ERROR and our FIN arrive.
            let _ = tokio::time::timeout(LINGER, discard_input(&mut feed.stream)).await;
        });
    }
    drop(listener);
    drop(quiet);
    while feeds.join_next().await.is_some() {}
}

struct Feed {
    stream: TcpStream,
    buf: BytesMut,
    cfg: Arc<IngestConfig>,
    hub: Hub,
    name: String,
    /// Set by the homes when one of this feed's publications could not be
    /// placed in the cluster.
    status: Arc<FeedStatus>,
}

fn hub_error(e: HubError) -> IngestError {
    match e {
        HubError::Closed => IngestError::Closed,
        HubError::Unavailable => IngestError::Unavailable,
        HubError::TooLarge => IngestError::TooLarge,
    }
}

impl Feed {
    /// Reads one whole frame body into the front of `buf`; returns its
    /// length (the 4-byte prefix already consumed). `Ok(None)` = clean EOF.
    async fn next_frame(&mut self) -> Result<Option<usize>, IngestError> {
        loop {
            if let Some(total) =
                feed::frame_len(&self.buf, self.cfg.max_frame).map_err(IngestError::Protocol)?
            {
                self.buf.advance(4);
                return Ok(Some(total - 4));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(IngestError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), IngestError> {
        let hello = tokio::select! {
            r = tokio::time::timeout(self.cfg.hello_timeout, self.next_frame()) => {
                r.map_err(|_| IngestError::HelloTimeout)??
            }
            _ = stopped(&mut stop) => return Err(IngestError::Closed),
        };
        let Some(len) = hello else { return Ok(()) };
        let body = self.buf.split_to(len).freeze();
        match feed::decode_frame(&body).map_err(IngestError::Protocol)? {
            FeedFrame::Hello { token, name } => {
                if !self
                    .cfg
                    .tokens
                    .iter()
                    .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
                {
                    return Err(IngestError::Token);
                }
                self.name = name.chars().take(64).collect();
            }
            _ => {
                return Err(IngestError::Protocol(FeedError {
                    code: 400,
                    message: "first frame must be HELLO",
                }))
            }
        }
        self.stream.write_all(&feed::hello_ok()).await?;
        tracing::info!(feed = %self.name, "feed connected");
        let feeds = gauge!("herald_ingest_feeds");
        feeds.increment(1.0);
        let frames = counter!("herald_ingest_frames_total");
        let published = counter!("herald_published_total", "source" => "ingest");
        let result = async {
            loop {
                // A frame half read when the drain comes stays unread: it
                // is never published.
                let len = tokio::select! {
                    r = self.next_frame() => match r? {
                        Some(len) => len,
                        None => return Ok(()),
                    },
                    _ = stopped(&mut stop) => return Err(IngestError::Closed),
                };
                let at = Instant::now();
                let body = self.buf.split_to(len).freeze();
                frames.increment(1);
                match feed::decode_frame(&body).map_err(IngestError::Protocol)? {
                    FeedFrame::Publish { topic, payload } => {
                        // Zero-copy: the payload stays a slice of the read buffer.
                        let payload = body.slice_ref(payload);
                        let topic: Arc<str> = Arc::from(topic);
                        // Waiting on a full home inbox gives way to the
                        // drain; a send cancelled there has not happened.
                        tokio::select! {
                            r = self.hub.publish_nowait(topic, payload, at, &self.status) => {
                                r.map_err(hub_error)?
                            }
                            _ = stopped(&mut stop) => return Err(IngestError::Closed),
                        }
                        published.increment(1);
                    }
                    FeedFrame::Ping { nonce } => {
                        tokio::select! {
                            r = self.hub.barrier() => r.map_err(hub_error)?,
                            _ = stopped(&mut stop) => return Err(IngestError::Closed),
                        }
                        if let Some(e) = self.status.error() {
                            return Err(hub_error(e));
                        }
                        self.stream.write_all(&feed::pong(nonce)).await?;
                    }
                    FeedFrame::Hello { .. } => {
                        return Err(IngestError::Protocol(FeedError {
                            code: 400,
                            message: "duplicate HELLO",
                        }))
                    }
                }
            }
        }
        .await;
        feeds.decrement(1.0);
        result
    }
}

async fn discard_input(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    while let Ok(n) = stream.read(&mut scratch).await {
        if n == 0 {
            break;
        }
    }
}

/// Resolves once the drain began (or the server is gone); unlike
/// `changed`, also when it began before this feed started waiting.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
