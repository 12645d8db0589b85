//! What `herald --demo` adds: credentials, and a demo feed, a real TCP
//! ingest client that publishes a random-walk price for a few symbols and a
//! game room at 20 Hz, so a newcomer sees ticks arrive without writing a
//! feed first. The page that shows them is `http::site`.

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
/// The game room's topic; its bots move every [`ROOM_PERIOD`].
pub const ROOM: &str = "demo.room.1";
pub const ROOM_PERIOD: Duration = Duration::from_millis(50);
/// Quotes go out every this many room frames (200 ms).
const QUOTE_EVERY: u64 = 4;
/// What a demo token may publish to: the page's chat.
pub const CHAT: &str = "demo.chat";

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

/// Publishes ticks to `demo.<SYMBOL>` every 200 ms and the room to
/// [`ROOM`] every 50 ms until the task is dropped; reconnects with back-off
/// if the gateway goes away.
pub async fn run_feed(ingest: SocketAddr, token: String) {
    let mut world = World::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        match feed_once(ingest, &token, &mut world).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "demo feed disconnected; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The demo's state: prices, and four bots wandering a unit square.
struct World {
    prices: [f64; 4],
    bots: [Bot; 4],
}

struct Bot {
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    score: u32,
}

impl World {
    fn new() -> World {
        let bot = |x: f64, y: f64, vx: f64, vy: f64| Bot {
            x,
            y,
            vx,
            vy,
            score: 0,
        };
        World {
            prices: [64_000.0, 3_100.0, 145.0, 1.08],
            bots: [
                bot(0.2, 0.3, 0.011, 0.007),
                bot(0.7, 0.2, -0.008, 0.010),
                bot(0.5, 0.8, 0.009, -0.012),
                bot(0.1, 0.6, 0.013, 0.004),
            ],
        }
    }

    /// One room frame: each bot turns a little and bounces off the walls
    /// (a point for every bounce, so the scores move too).
    fn step_room(&mut self) {
        for b in &mut self.bots {
            let turn = (rand::random::<f64>() - 0.5) * 0.3;
            let (s, c) = turn.sin_cos();
            (b.vx, b.vy) = (b.vx * c - b.vy * s, b.vx * s + b.vy * c);
            b.x += b.vx;
            b.y += b.vy;
            for (p, v) in [(&mut b.x, &mut b.vx), (&mut b.y, &mut b.vy)] {
                if !(0.0..=1.0).contains(p) {
                    *p = p.clamp(0.0, 1.0);
                    *v = -*v;
                    b.score += 1;
                }
            }
        }
    }

    fn room_payload(&self, tick: u64, ts_ms: u128) -> String {
        let players: Vec<String> = self
            .bots
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    r#"{{"id":"bot-{}","x":{:.4},"y":{:.4},"score":{}}}"#,
                    i + 1,
                    b.x,
                    b.y,
                    b.score
                )
            })
            .collect();
        format!(
            r#"{{"tick":{tick},"ts_ms":{ts_ms},"players":[{}]}}"#,
            players.join(",")
        )
    }
}

async fn feed_once(ingest: SocketAddr, token: &str, world: &mut World) -> std::io::Result<()> {
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
    let mut iv = tokio::time::interval(ROOM_PERIOD);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame: u64 = 0;
    loop {
        iv.tick().await;
        frame += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        world.step_room();
        let room = world.room_payload(frame, now.as_millis());
        s.write_all(&feed::encode_publish(ROOM, room.as_bytes()))
            .await?;
        if frame % QUOTE_EVERY != 1 {
            continue;
        }
        let n = frame / QUOTE_EVERY + 1;
        let ts = now.as_secs();
        for (i, sym) in SYMBOLS.iter().enumerate() {
            let step: f64 = rand::random::<f64>() - 0.5;
            world.prices[i] *= 1.0 + step * 0.001;
            let payload = format!(
                r#"{{"symbol":"{sym}","price":{:.4},"tick":{n},"ts":{ts}}}"#,
                world.prices[i]
            );
            s.write_all(&feed::encode_publish(
                &format!("demo.{sym}"),
                payload.as_bytes(),
            ))
            .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_stay_in_the_room_and_score_on_bounces() {
        let mut w = World::new();
        for _ in 0..10_000 {
            w.step_room();
        }
        for b in &w.bots {
            assert!((0.0..=1.0).contains(&b.x) && (0.0..=1.0).contains(&b.y));
            assert!(b.score > 0, "in 10k frames every bot hits a wall");
        }
        let v: serde_json::Value = serde_json::from_str(&w.room_payload(7, 1_700_000_000_000))
            .expect("room payload is JSON");
        assert_eq!(v["tick"], 7);
        assert_eq!(v["players"].as_array().map(Vec::len), Some(4));
        assert_eq!(v["players"][0]["id"], "bot-1");
    }
}
