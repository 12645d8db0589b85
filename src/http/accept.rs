//! A shard's public listener: accept, TLS when configured, the HTTP/1.1
//! upgrade (hyper) with the [`Gate`] checks, and the hand-over of the raw
//! stream to whoever runs sessions. Everything here runs on the shard's
//! thread, inside its `LocalSet`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::spawn_local;

use super::{Accepted, Gate};
use crate::metrics as m;
use crate::transport::tls::Tls;
use crate::transport::Stream;

/// A connection that completed its upgrade.
pub struct Upgraded {
    pub stream: Stream,
    /// What the client sent after its request (its first frames).
    pub leftover: Vec<u8>,
    pub accepted: Accepted,
    pub peer: SocketAddr,
}

/// What the accept loop needs from its shard.
pub struct Listener {
    pub shard: usize,
    pub gate: Arc<dyn AsRef<Gate> + Send + Sync>,
    pub tls: Option<Arc<Tls>>,
    pub handshake_timeout: Duration,
    pub max_header: usize,
    pub max_pending: usize,
    /// Counts a completed upgrade and its duration.
    pub on_handshake: Box<dyn Fn(Duration)>,
    /// Takes over an upgraded connection.
    pub on_upgrade: Box<dyn Fn(Upgraded)>,
}

/// Accepts until `stop` completes.
pub async fn serve(listener: TcpListener, l: Listener, stop: impl Future<Output = ()>) {
    let l = Rc::new(l);
    let mut warned_fds = None::<Instant>;
    let pending = Arc::new(tokio::sync::Semaphore::new(l.max_pending));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut stop => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Linux copies TCP_NODELAY and TCP_NOTSENT_LOWAT from the
                // listener (`app::bind_reuseport`); the cap is Linux-only.
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                let _ = stream.set_nodelay(true);
                let l = l.clone();
                let pending = pending.clone();
                // Accepted at once (a full backlog drops SYNs, and clients
                // retry a second later), but the handshake waits for a slot:
                // in a connect storm the waiting ones cost a small future
                // each instead of hyper's buffers, which otherwise fragment
                // the heap around the sessions that stay (measured: idle RSS
                // per connection doubled after an unpaced 10k storm).
                spawn_local(async move {
                    let Ok(_permit) = pending.acquire_owned().await else {
                        return;
                    };
                    let started = Instant::now();
                    let timeout = l.handshake_timeout;
                    let done = tokio::time::timeout(timeout, handshake(l, stream, peer, started));
                    if done.await.is_err() {
                        m::handshake("timeout");
                        tracing::debug!(%peer, "handshake timed out");
                    }
                });
            }
            Err(e) if is_fd_exhaustion(&e) => {
                m::accept_error("fd_exhausted");
                if warned_fds.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(shard = l.shard, error = %e, "out of file descriptors; accept backs off (raise `ulimit -n`)");
                    warned_fds = Some(Instant::now());
                }
                // The pending connections stay in the backlog; spinning on
                // accept would only burn the core that could free fds.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                m::accept_error("other");
                tracing::debug!(shard = l.shard, error = %e, "accept failed");
            }
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == 24 /* EMFILE */ || code == 23 /* ENFILE */)
        || e.kind() == io::ErrorKind::OutOfMemory
}

async fn handshake(l: Rc<Listener>, tcp: TcpStream, peer: SocketAddr, started: Instant) {
    match l.tls.as_ref().map(|t| t.acceptor()) {
        None => upgrade(l, tcp, peer, started).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(tls) => upgrade(l, tls, peer, started).await,
            Err(e) => {
                m::handshake("tls");
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
            }
        },
    }
}

/// The streams an upgrade can run on; each knows how to become a session's
/// [`Stream`] once hyper lets go of it.
trait IntoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_stream(self) -> Stream;
}

impl IntoStream for TcpStream {
    fn into_stream(self) -> Stream {
        Stream::Plain(self)
    }
}

impl IntoStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_stream(self) -> Stream {
        let (tcp, conn) = self.into_inner();
        Stream::tls(tcp, conn)
    }
}

async fn upgrade<S: IntoStream>(l: Rc<Listener>, io: S, peer: SocketAddr, started: Instant) {
    let io = TokioIo::new(io);
    let svc_l = l.clone();
    let svc = service_fn(move |req| {
        let l = svc_l.clone();
        async move { Ok::<_, std::convert::Infallible>(on_request::<S>(&l, req, peer, started).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(l.handshake_timeout)
        .max_buf_size(l.max_header.max(8192))
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "handshake connection error");
    }
}

async fn on_request<S: IntoStream>(
    l: &Rc<Listener>,
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    started: Instant,
) -> hyper::Response<Full<Bytes>> {
    let gate = (*l.gate).as_ref();
    if req.uri().path() != "/ws" {
        if let Some(page) = gate.site.as_ref().and_then(|s| s.serve(&req)) {
            return page;
        }
    }
    // Waits (boundedly) only for a token whose unknown `kid` triggered a
    // key-set fetch.
    let accepted = match gate.check_waiting(&req, peer).await {
        Ok(a) => a,
        Err(rej) => {
            m::handshake(rej.label());
            tracing::debug!(%peer, reason = %rej, status = rej.status().as_u16(), "handshake rejected");
            return rej.response();
        }
    };
    let response = accepted.response();
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The request (headers, extensions) would otherwise live as long as the
    // upgrade future: kilobytes per connection for nothing.
    drop(req);
    let l2 = l.clone();
    spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<S>>() {
            Ok(parts) => {
                // Copy what the client sent after its request, so hyper's
                // read buffer is freed now rather than pinned by the session.
                let mut leftover = parts.read_buf.to_vec();
                drop(parts.read_buf);
                let stream = parts.io.into_inner().into_stream();
                stream.take_buffered(&mut leftover);
                (l2.on_upgrade)(Upgraded {
                    stream,
                    leftover,
                    accepted,
                    peer,
                });
            }
            Err(_) => tracing::error!(%peer, "upgraded connection is not the accepted stream"),
        }
    });
    (l.on_handshake)(started.elapsed());
    response
}
