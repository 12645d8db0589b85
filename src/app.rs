//! Wiring only: binds the listeners, builds the hub and the shards, starts
//! ingest and the operator API, and runs the drain sequence.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::api::{self, Api};
use crate::auth::{OriginPolicy, Verifier};
use crate::broker::nats::{Follow, NatsBroker, NatsSettings};
use crate::broker::{Backend, Broker};
use crate::config::Config;
use crate::handler::Handler;
use crate::http::limits::ConnLimits;
use crate::http::site::DemoSite;
use crate::http::Gate;
use crate::hub::home::HomeSettings;
use crate::hub::{self, Hub};
use crate::ingest::{self, IngestConfig};
use crate::shard::{self, Lifecycle, Shared};
use crate::transport::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("auth: {0}")]
    Key(#[from] crate::auth::KeyError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}; is another herald (or another program) listening there?")]
    InUse {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start threads: {0}")]
    Thread(std::io::Error),
    #[error("cluster: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("tls: {0}")]
    Tls(#[from] crate::transport::tls::TlsError),
    #[error("auth.jwks_url: {0}")]
    Jwks(#[from] crate::auth::fetch::FetchError),
}

/// Why [`Server::reload`] changed nothing. The gateway keeps running with
/// what it had.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("auth keys: {0}")]
    Auth(#[from] crate::auth::KeyError),
    #[error("tls: {0}")]
    Tls(#[from] crate::transport::tls::TlsError),
}

/// What a successful [`Server::reload`] put in place.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub auth: crate::auth::KeySummary,
    /// The TLS certificate and key were read again (`[tls]` is set).
    pub tls: bool,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "auth keys: {}", self.auth)?;
        if self.tls {
            write!(f, "; tls certificate reloaded")?;
        }
        Ok(())
    }
}

/// How a gateway starts, beyond its config.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Serve the demo page (`GET /`, `/demo.js`, `/demo/token`) on the
    /// public listener, with tokens signed by `auth.hs256_secret`
    /// (`herald --demo`).
    pub demo_site: bool,
}

/// A running gateway. Dropping it without [`Server::shutdown`] stops it
/// abruptly: shards exit without draining and the sockets are dropped.
pub struct Server {
    ws_addr: SocketAddr,
    ingest_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    hub: Hub,
    lifecycle: watch::Sender<Lifecycle>,
    stop_ingest: watch::Sender<bool>,
    /// Ends once every feed has got its ERROR 503 and been closed.
    ingest: Option<tokio::task::JoinHandle<()>>,
    /// Closes once no feed can hand the hub another frame.
    feeds_quiet: Option<tokio::sync::mpsc::Receiver<()>>,
    stop_admin: watch::Sender<bool>,
    shards: Vec<std::thread::JoinHandle<()>>,
    /// `None` once shut down; `Drop` must not drop a runtime from inside
    /// another (it panics), so it always goes through `shutdown_background`.
    control: Option<tokio::runtime::Runtime>,
    /// The home tasks (sequencing); same rule as `control`.
    home: Option<tokio::runtime::Runtime>,
    drain: Duration,
}

impl Server {
    /// Binds everything and starts serving; returns once every listener is
    /// accepting, so a test can connect right away.
    pub fn start(config: Config, handler: Arc<dyn Handler>) -> Result<Server, StartError> {
        Server::start_with(config, handler, StartOptions::default())
    }

    pub fn start_with(
        config: Config,
        handler: Arc<dyn Handler>,
        options: StartOptions,
    ) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let prometheus = crate::metrics::install();
        let n = config.shard_count().max(1);
        let l = &config.limits;
        let gate = Gate {
            verifier: Verifier::new(&config.auth)?,
            origin: OriginPolicy::new(&config.auth.allowed_origins),
            allow_query_token: config.auth.allow_query_token,
            limits: ConnLimits::new(
                l.max_connections,
                l.max_connections_per_ip,
                l.max_connections_per_user,
                l.handshakes_per_s,
            ),
            draining: AtomicBool::new(false),
            site: (options.demo_site && !config.auth.hs256_secret.is_empty())
                .then(|| DemoSite::new(config.auth.hs256_secret.clone())),
            tls: match (&config.tls.cert_file, &config.tls.key_file) {
                (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
                _ => None,
            },
        };
        // Bound before any runtime exists: a start that fails here (a port
        // in use) returns its error without dropping a runtime, which would
        // panic when `start` is called from async code.
        let backlog = config.listen.backlog as i32;
        let ws = bind_reuseport(config.listen.ws, n, backlog, config.limits.send_queue_bytes)?;
        let ws_addr = local_addr("ws", config.listen.ws, &ws[0])?;
        let ingest_l = bind("ingest", config.listen.ingest, backlog)?;
        let ingest_addr = local_addr("ingest", config.listen.ingest, &ingest_l)?;
        let admin_l = bind("admin", config.listen.admin, backlog)?;
        let admin_addr = local_addr("admin", config.listen.admin, &admin_l)?;
        warn_if_exposed(ingest_addr, admin_addr);

        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herald-control")
            .enable_all()
            .build()
            .map_err(StartError::Thread)?;
        let (backend, mut broker_events) = if config.cluster.enabled() {
            // Not `block_on`: `start` may be called from inside another
            // runtime (an embedding application, the tests).
            let (tx, rx) = std::sync::mpsc::channel();
            let settings = nats_settings(&config);
            control.spawn(async move {
                let _ = tx.send(NatsBroker::start(settings, n).await);
            });
            let (broker, events) = rx.recv().map_err(|_| {
                crate::broker::BrokerError::Other("the broker did not start".into())
            })??;
            tracing::info!(
                node_id = %broker.describe().node_id,
                nats_url = %crate::config::mask_url_passwords(&config.cluster.nats_url),
                "cluster mode"
            );
            let broker: Arc<dyn Broker> = Arc::new(broker);
            (
                Backend::Cluster(broker),
                events.into_iter().map(Some).collect(),
            )
        } else {
            (Backend::Local, (0..n).map(|_| None).collect::<Vec<_>>())
        };
        let (hub, inboxes) = Hub::new(n, config.hub.inbox_capacity, backend);
        // 0: the homes share the control thread with ingest and the API.
        let home = if config.hub.home_threads > 0 {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.hub.home_threads)
                    .thread_name("herald-home")
                    .enable_all()
                    .build()
                    .map_err(StartError::Thread)?,
            )
        } else {
            None
        };
        let home_settings = HomeSettings {
            history: config.hub.history_size,
            topic_ttl: Duration::from_secs(config.hub.topic_idle_ttl_s),
            max_batch_bytes: config.cluster.max_batch_bytes,
            max_pending_bytes: config.cluster.max_pending_bytes,
        };
        let home_inboxes = inboxes.homes;
        let shared = Arc::new(Shared::new(config.clone(), gate, hub.clone(), handler));

        let (lifecycle, lifecycle_rx) = watch::channel(Lifecycle::Running);
        let mut shards = Vec::with_capacity(n);
        for (id, (inbox, listener)) in inboxes.shards.into_iter().zip(ws).enumerate() {
            shards.push(
                shard::spawn(id, shared.clone(), inbox, listener, lifecycle_rx.clone())
                    .map_err(StartError::Thread)?,
            );
        }

        let (stop_ingest, stop_ingest_rx) = watch::channel(false);
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        let (quiet_tx, feeds_quiet) = tokio::sync::mpsc::channel(1);
        for (id, rx) in home_inboxes.into_iter().enumerate() {
            let events = broker_events.get_mut(id).and_then(Option::take);
            let task = hub::home::run(id, hub.clone(), rx, events, home_settings);
            match &home {
                Some(rt) => rt.spawn(task),
                None => control.spawn(task),
            };
        }
        let ingest = {
            let _guard = control.enter();
            let ingest_cfg = Arc::new(IngestConfig {
                tokens: config.ingest.tokens.clone(),
                max_frame: config.ingest.max_frame_bytes,
                hello_timeout: Duration::from_millis(config.ingest.hello_timeout_ms),
                max_feeds: config.ingest.max_feeds,
            });
            let ingest_l =
                tokio::net::TcpListener::from_std(ingest_l).map_err(StartError::Thread)?;
            let admin_l = tokio::net::TcpListener::from_std(admin_l).map_err(StartError::Thread)?;
            let ingest = control.spawn(ingest::serve(
                ingest_l,
                ingest_cfg,
                hub.clone(),
                stop_ingest_rx,
                quiet_tx,
            ));
            let api = Arc::new(Api::new(shared.clone(), hub.clone(), prometheus.clone()));
            control.spawn(api::announce(api.clone(), stop_admin_rx.clone()));
            control.spawn(api::serve(admin_l, api, stop_admin_rx));
            let upkeep_shared = shared.clone();
            control.spawn(async move {
                // The exporter buffers histogram samples until upkeep.
                let mut iv = tokio::time::interval(Duration::from_secs(1));
                let mut n: u64 = 0;
                let (mut last, mut trimmed) = (0, 0);
                loop {
                    iv.tick().await;
                    n += 1;
                    if n.is_multiple_of(5) {
                        prometheus.run_upkeep();
                    }
                    let open = upkeep_shared
                        .stats
                        .iter()
                        .map(|s| s.connections.load(Ordering::Relaxed))
                        .sum::<u64>();
                    if open == last && open != trimmed {
                        // A connect storm just settled: the handshakes' buffers
                        // were freed between long-lived sessions, and glibc keeps
                        // such holes unless asked (measured: ~5% of idle RSS).
                        trim_heap();
                        trimmed = open;
                    }
                    last = open;
                }
            });
            ingest
        };
        if let (Some(url), Some(remote)) = (&config.auth.jwks_url, shared.gate.verifier.remote()) {
            let source = crate::auth::fetch::JwksSource::new(
                url,
                Duration::from_secs(config.auth.jwks_refresh_s),
                Duration::from_secs(config.auth.jwks_min_refetch_s),
            )?;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            control.spawn(crate::auth::fetch::run(source, remote, Some(tx)));
            // Wait for the first fetch so that tokens work as soon as start
            // returns; a failed one is not fatal (the task retries, and
            // other key sources may be configured). Not `block_on`: `start`
            // may be called from inside another runtime.
            let first = rx.recv_timeout(crate::auth::fetch::FETCH_TIMEOUT + Duration::from_secs(1));
            if !matches!(first, Ok(Ok(_))) {
                tracing::warn!(
                    "auth.jwks_url: no key set yet; tokens with its keys are refused until a fetch succeeds"
                );
            }
        }
        tracing::info!(%ws_addr, %ingest_addr, %admin_addr, shards = n, "herald listening");
        #[cfg(feature = "autobahn")]
        tracing::warn!(
            path = crate::http::ECHO_PATH,
            "built with the `autobahn` feature: an unauthenticated echo route is open (test builds only)"
        );
        Ok(Server {
            ws_addr,
            ingest_addr,
            admin_addr,
            shared,
            hub,
            lifecycle,
            stop_ingest,
            ingest: Some(ingest),
            feeds_quiet: Some(feeds_quiet),
            stop_admin,
            shards,
            control: Some(control),
            home,
            drain: Duration::from_millis(config.timeouts.drain_ms),
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Reloads what can change without a restart (`SIGHUP` in the binary):
    /// the `[tls]` certificate and key, then the `[auth]` key files
    /// (`public_key_file`, `jwks_file`), all or nothing: if any of them
    /// fails to load, the certificate and the keys in use stay and the
    /// error says why. Open connections are never touched; the
    /// next handshake (or REFRESH) uses the new certificate and keys. The
    /// `jwks_url` set keeps its own refresh schedule.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        // All or nothing: the certificate is read and checked first but put
        // in place only once the keys have loaded too.
        let result = self
            .shared
            .gate
            .tls
            .as_ref()
            .map(|t| t.prepare().map(|next| (t, next)))
            .transpose()
            .map_err(ReloadError::from)
            .and_then(|tls| {
                let auth = self.shared.gate.verifier.reload()?;
                let reloaded = tls.is_some();
                if let Some((t, next)) = tls {
                    t.install(next);
                }
                Ok(Reloaded {
                    auth,
                    tls: reloaded,
                })
            });
        crate::metrics::key_reload(if result.is_ok() { "ok" } else { "error" });
        result
    }

    pub fn connections(&self) -> u64 {
        self.shared
            .stats
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Drains and stops: stop accepting, `/readyz` → 503, close every
    /// session with 1001 after what it has queued, wait for them up to the
    /// drain time, then stop. Returns true if every session closed in time.
    pub async fn shutdown(mut self) -> bool {
        let started = Instant::now();
        self.shared.gate.draining.store(true, Ordering::Relaxed);
        let _ = self.lifecycle.send(Lifecycle::Draining);
        let _ = self.stop_ingest.send(true);
        let open = self.connections();
        tracing::info!(open, drain_ms = self.drain.as_millis() as u64, "draining");
        let deadline = started + self.drain;
        // Feeds first: once none can hand the hub another frame, all they
        // did hand over is queued ahead of the shards' Drain.
        if let Some(mut quiet) = self.feeds_quiet.take() {
            if tokio::time::timeout_at(deadline.into(), quiet.recv())
                .await
                .is_err()
            {
                tracing::warn!("drain time over before every feed stopped");
            }
        }
        self.hub.drain().await;
        let mut clean = true;
        while self.connections() > 0 {
            if Instant::now() >= deadline {
                clean = false;
                tracing::warn!(
                    left = self.connections(),
                    "drain time over; dropping the rest"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every feed gets its ERROR 503 before the runtime goes.
        if let Some(ingest) = self.ingest.take() {
            if tokio::time::timeout_at(deadline.into(), ingest)
                .await
                .is_err()
            {
                clean = false;
                tracing::warn!("drain time over before every feed was closed");
            }
        }
        let _ = self.lifecycle.send(Lifecycle::Exit);
        let _ = self.stop_admin.send(true);
        let shards = std::mem::take(&mut self.shards);
        let _ = tokio::task::spawn_blocking(move || {
            for t in shards {
                let _ = t.join();
            }
        })
        .await;
        if let Some(rt) = self.control.take() {
            rt.shutdown_background();
        }
        if let Some(rt) = self.home.take() {
            rt.shutdown_background();
        }
        tracing::info!(
            clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stopped"
        );
        clean
    }
}

fn nats_settings(config: &Config) -> NatsSettings {
    let c = &config.cluster;
    NatsSettings {
        url: c.nats_url.clone(),
        node_id: c.node_id(),
        cluster: c.name.clone(),
        follow: match c.follow {
            crate::config::FollowMode::Interest => Follow::Interest,
            crate::config::FollowMode::Wildcard => Follow::Wildcard,
        },
        memory_storage: c.storage == crate::config::StorageMode::Memory,
        replicas: c.replicas,
        // A record holds at least one publication; the few extra cover the
        // marker that fixes a new topic's epoch.
        history_records: config.hub.history_size as i64 + 2,
        max_bytes: if c.stream_max_bytes == 0 {
            -1
        } else {
            c.stream_max_bytes as i64
        },
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        creds_file: c.creds_file.clone(),
        event_capacity: config.hub.inbox_capacity,
    }
}

/// The ingest and admin listeners trust whoever connects (a feed token and
/// an API key are their only guard; `/metrics` and `/healthz` have none),
/// so binding them beyond loopback deserves a loud line at start.
fn warn_if_exposed(ingest: SocketAddr, admin: SocketAddr) {
    if !ingest.ip().is_loopback() {
        tracing::warn!(
            addr = %ingest,
            "listen.ingest is not on loopback: any host that reaches it can try feed tokens \
             and, with one, publish to every topic; bind it to 127.0.0.1 or a private \
             interface, or firewall it to the feed hosts"
        );
    }
    if !admin.ip().is_loopback() {
        tracing::warn!(
            addr = %admin,
            "listen.admin is not on loopback: /metrics, /healthz, /readyz and the admin UI \
             answer anyone who reaches it, and /api/ (publish, disconnect) only needs an API \
             key; bind it to 127.0.0.1 or a private interface, or firewall it to operators"
        );
    }
}

/// Gives freed heap pages back to the kernel.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.lifecycle.send(Lifecycle::Exit);
        let _ = self.stop_admin.send(true);
        let _ = self.stop_ingest.send(true);
        if let Some(rt) = self.control.take() {
            rt.shutdown_background();
        }
        if let Some(rt) = self.home.take() {
            rt.shutdown_background();
        }
    }
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    l: &std::net::TcpListener,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// A listener with a real backlog: tokio's default of 1024 resets
/// connections during a connect storm.
fn bind(
    what: &'static str,
    addr: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let s = socket(addr, false).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(backlog).map_err(err)?;
    Ok(s.into())
}

/// `TCP_DEFER_ACCEPT`: a connection reaches `accept` once its first bytes
/// (the upgrade request) are there, so the handshake reads at once instead
/// of registering for readiness and waking again.
fn defer_accept(s: &Socket) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let secs: libc::c_int = 2;
        // SAFETY: a valid socket fd and a c_int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = s;
    Ok(())
}

/// One `SO_REUSEPORT` listener per shard on the same address: the kernel
/// spreads new connections over the shards with no hand-off between them.
/// With port 0 the first bind picks the port and the others reuse it.
///
/// `TCP_NODELAY` and `TCP_NOTSENT_LOWAT` (`send_queue`, 0 = unset) are set
/// here once: Linux copies both into every accepted socket, which saves two
/// setsockopt calls per handshake (measured: 3.5% of herald's CPU in a
/// connect storm).
///
/// Why the cap on unsent bytes: without it the send buffer autotunes up to
/// `tcp_wmem`'s max (4 MiB on stock Linux), so a stalled reader's backlog
/// piles up there, out of sight of `limits.max_outbox_bytes` and in front
/// of its 4008 close frame, which then cannot be written before the close
/// deadline. Capped, the backlog lands in the session's outbox, where it is
/// counted and dropped on 4008. A reader that keeps up never has unsent
/// bytes, so it is not slowed.
fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    backlog: i32,
    send_queue: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let err = |source| StartError::Bind {
        what: "ws",
        addr,
        source,
    };
    // SO_REUSEPORT lets any process of the same user join a port's group,
    // and the kernel would then split new clients between two unrelated
    // gateways. A plain bind first fails while anyone listens there.
    if addr.port() != 0 {
        let probe = socket(addr, false).map_err(err)?;
        probe.bind(&addr.into()).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                StartError::InUse {
                    what: "ws",
                    addr,
                    source,
                }
            } else {
                err(source)
            }
        })?;
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n {
        let s = socket(at, true).map_err(err)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if send_queue > 0 {
            s.set_tcp_notsent_lowat(send_queue as u32).map_err(err)?;
        }
        defer_accept(&s).map_err(err)?;
        s.bind(&at.into()).map_err(err)?;
        s.listen(backlog).map_err(err)?;
        let l: std::net::TcpListener = s.into();
        if out.is_empty() {
            at = l.local_addr().map_err(err)?;
        }
        out.push(l);
    }
    Ok(out)
}
