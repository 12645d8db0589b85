//! The demo feed behind `herald --demo`: a real TCP ingest client that
//! publishes a random-walk price for a few symbols, so a newcomer sees ticks
//! arrive without writing a feed first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::wire::feed;

pub const SECRET: &str = "herald-demo-secret-not-for-production";
pub const FEED_TOKEN: &str = "demo-feed-token";
pub const API_KEY: &str = "demo-api-key";
pub const SYMBOLS: [&str; 4] = ["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD"];

/// Fills in whatever the demo needs that the config left empty.
pub fn apply_defaults(cfg: &mut Config) {
    if cfg.listen.ws == Config::default().listen.ws {
        // The demo secret is public: anyone who can reach the port could
        // mint a token, so the demo keeps to loopback unless told otherwise.
        cfg.listen.ws.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if cfg.auth.hs256_secret.is_empty() && cfg.auth.public_key_file.is_none() {
        cfg.auth.hs256_secret = SECRET.to_owned();
    }
    if cfg.ingest.tokens.is_empty() {
        cfg.ingest.tokens.push(FEED_TOKEN.to_owned());
    }
    if cfg.api.keys.is_empty() {
        cfg.api.keys.push(API_KEY.to_owned());
    }
}

/// Publishes ticks to `demo.<SYMBOL>` every `period` until the task is
/// dropped; reconnects with back-off if the gateway goes away.
pub async fn run_feed(ingest: SocketAddr, token: String, period: Duration) {
    let mut prices = [64_000.0_f64, 3_100.0, 145.0, 1.08];
    let mut backoff = Duration::from_millis(100);
    loop {
        match feed_once(ingest, &token, period, &mut prices).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "demo feed disconnected; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn feed_once(
    ingest: SocketAddr,
    token: &str,
    period: Duration,
    prices: &mut [f64; 4],
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(ingest).await?;
    s.set_nodelay(true)?;
    s.write_all(&feed::encode_hello(token, "demo")).await?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await?;
    if !matches!(
        feed::decode_gateway_frame(&body),
        Ok(feed::GatewayFrame::HelloOk)
    ) {
        return Err(std::io::Error::other("HELLO refused (check ingest.tokens)"));
    }
    let mut iv = tokio::time::interval(period);
    let mut n: u64 = 0;
    loop {
        iv.tick().await;
        n += 1;
        let ts = crate::auth::token::now_unix();
        for (i, sym) in SYMBOLS.iter().enumerate() {
            let step: f64 = rand::random::<f64>() - 0.5;
            prices[i] *= 1.0 + step * 0.001;
            let payload = format!(
                r#"{{"symbol":"{sym}","price":{:.4},"tick":{n},"ts":{ts}}}"#,
                prices[i]
            );
            s.write_all(&feed::encode_publish(
                &format!("demo.{sym}"),
                payload.as_bytes(),
            ))
            .await?;
        }
    }
}
