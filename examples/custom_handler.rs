//! Embeds herald as a library with a custom `Handler`:
//! - SUBSCRIBE to a topic starting with `admin.` is refused (ERROR 403)
//!   unless the token's `sub` is `root`;
//! - session opens and closes are logged with `tracing`;
//! - open sessions are counted.
//!
//! cargo run --example custom_handler
//!
//! Listens on 127.0.0.1: WebSocket `HERALD_EXAMPLE_WS_PORT` (default 8780),
//! ingest `HERALD_EXAMPLE_INGEST_PORT` (8781), operator API
//! `HERALD_EXAMPLE_ADMIN_PORT` (8782). The HS256 secret comes from
//! `HERALD_EXAMPLE_SECRET` (a development default otherwise). It prints a
//! token for `root` and one for `alice` to try with the `watch` example:
//!
//! cargo run --example watch -- --token <alice's token> admin.audit   # ERROR 403
//! cargo run --example watch -- --token <root's token> admin.audit    # subscribed
//!
//! Ctrl-C drains and stops the gateway.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald::auth::token::{mint_hs256, now_unix};
use herald::config::Config;
use herald::wire::client::Request;
use herald::{Handler, Reject, Server, SessionInfo, TransportError};

/// Refuses `admin.*` to everyone but `root`, and counts sessions.
#[derive(Default)]
struct AdminGuard {
    open: AtomicU64,
    total: AtomicU64,
}

impl Handler for AdminGuard {
    fn on_open(&self, s: &SessionInfo<'_>) -> Result<(), Reject> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(session = s.id, shard = s.shard, user = %s.claims.sub, peer = %s.peer, open, total, "session open");
        Ok(())
    }

    fn on_message(&self, s: &SessionInfo<'_>, request: &Request<'_>) -> Result<(), Reject> {
        if let Request::Subscribe { topic, .. } = request {
            if topic.starts_with("admin.") && &*s.claims.sub != "root" {
                tracing::warn!(session = s.id, user = %s.claims.sub, topic, "admin topic refused");
                return Err(Reject::new(403, "admin topics are for root only"));
            }
        }
        Ok(())
    }

    fn on_transport_error(&self, s: &SessionInfo<'_>, error: &TransportError) {
        tracing::info!(session = s.id, user = %s.claims.sub, ?error, "transport error");
    }

    // Called once for every session `on_open` saw, so the count balances.
    fn on_close(&self, s: &SessionInfo<'_>, code: herald::Close) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        tracing::info!(session = s.id, user = %s.claims.sub, code = code.code(), open, "session closed");
    }
}

fn port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{var}={v:?} is not a port number")),
        Err(_) => Ok(default),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let secret = std::env::var("HERALD_EXAMPLE_SECRET")
        .unwrap_or_else(|_| "custom-handler-example-secret-change-me".to_owned());

    let mut cfg = Config::default();
    cfg.listen.ws = local(port("HERALD_EXAMPLE_WS_PORT", 8780)?);
    cfg.listen.ingest = local(port("HERALD_EXAMPLE_INGEST_PORT", 8781)?);
    cfg.listen.admin = local(port("HERALD_EXAMPLE_ADMIN_PORT", 8782)?);
    cfg.auth.hs256_secret = secret.clone();
    cfg.ingest.tokens = vec!["example-feed-token".to_owned()];
    cfg.api.keys = vec!["example-api-key".to_owned()];
    cfg.validate()?;

    let guard = Arc::new(AdminGuard::default());
    let server = Server::start(cfg, guard.clone())?;

    let exp = now_unix() + 3600;
    let root = mint_hs256(&secret, "root", exp, Some(&["*"]), None);
    let alice = mint_hs256(&secret, "alice", exp, Some(&["*"]), None);
    println!("herald (custom handler) on ws://{}/ws", server.ws_addr());
    println!("root's token:  {root}");
    println!("alice's token: {alice}");
    println!(
        "publish:       curl -X POST -H 'Authorization: Bearer example-api-key' --data-binary hi http://{}/api/publish/admin.audit",
        server.admin_addr()
    );

    tokio::signal::ctrl_c().await?;
    let open = guard.open.load(Ordering::Relaxed);
    tracing::info!(open, "Ctrl-C: draining");
    let clean = server.shutdown().await;
    tracing::info!(
        clean,
        total = guard.total.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}
