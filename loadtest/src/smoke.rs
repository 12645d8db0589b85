//! `herald-load smoke`: the end-to-end check CI runs against a real herald
//! binary. One client subscribes to `smoke.topic`; a feed publishes ten
//! messages through the TCP ingest; all ten must arrive, in order, with
//! consecutive seqs and their exact payloads. Exit code 0 or 1.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use herald::auth::token::{mint_hs256, now_unix};
use herald::wire::client::{decode_server_message, encode_subscribe, ServerMessage};
use herald::wire::feed::{self, GatewayFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{parse_loopback, parse_url, SmokeArgs};
use crate::ws::{self, Header};

const TOPIC: &str = "smoke.topic";
const COUNT: u64 = 10;
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x2e];

pub async fn run(a: SmokeArgs) -> Result<ExitCode, String> {
    match tokio::time::timeout(Duration::from_secs(a.timeout_s), smoke(&a)).await {
        Ok(Ok(())) => {
            println!("smoke: ok: {COUNT}/{COUNT} publications on {TOPIC}, in order");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            println!("smoke: FAIL: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("smoke: FAIL: no result within {} s", a.timeout_s);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Reads whole server messages off one WebSocket, answering pings.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, msg: &[u8]) -> Result<(), String> {
        let mut f = Vec::new();
        ws::push_masked_frame(&mut f, ws::OP_BINARY, msg, MASK);
        self.s
            .write_all(&f)
            .await
            .map_err(|e| format!("websocket write: {e}"))
    }

    async fn next(&mut self) -> Result<ServerMessage, String> {
        loop {
            match ws::parse_header(&self.buf) {
                Header::Frame {
                    fin,
                    opcode,
                    hdr,
                    len,
                } => {
                    let payload: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    match opcode {
                        ws::OP_BINARY if fin => {
                            return decode_server_message(&payload)
                                .map_err(|e| format!("undecodable server message: {e}"))
                        }
                        ws::OP_PING => {
                            let mut f = Vec::new();
                            ws::push_masked_frame(&mut f, ws::OP_PONG, &payload, MASK);
                            self.s
                                .write_all(&f)
                                .await
                                .map_err(|e| format!("websocket write: {e}"))?;
                        }
                        ws::OP_PONG => {}
                        ws::OP_CLOSE => {
                            let code = payload
                                .get(..2)
                                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                                .unwrap_or(1005);
                            return Err(format!("server closed the WebSocket with {code}"));
                        }
                        op => return Err(format!("unexpected frame: opcode {op}, fin {fin}")),
                    }
                }
                Header::Bad(why) => return Err(format!("bad server frame: {why}")),
                Header::Incomplete { .. } => {
                    let mut chunk = [0u8; 4096];
                    let n = self
                        .s
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("websocket read: {e}"))?;
                    if n == 0 {
                        return Err("server closed the connection".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

async fn read_feed_frame(s: &mut TcpStream) -> Result<GatewayFrame, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .await
        .map_err(|e| format!("ingest read: {e}"))?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > feed::DEFAULT_MAX_FRAME {
        return Err(format!("ingest frame length {n}"));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("ingest read: {e}"))?;
    feed::decode_gateway_frame(&body).map_err(|e| format!("ingest frame: {e}"))
}

async fn smoke(a: &SmokeArgs) -> Result<(), String> {
    let (addr, host, path) = parse_url(&a.url, "ws", "/ws")?;
    let ingest = parse_loopback(&a.ingest, 8781)?;
    let token = mint_hs256(
        &a.secret,
        "herald-load-smoke",
        now_unix() + 600,
        Some(&["smoke.*"]),
        None,
    );

    // Subscriber.
    let mut s = ws::connect(Ipv4Addr::LOCALHOST, addr, 0)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(&ws::upgrade_request(
        &host,
        &path,
        now_unix(),
        Some("herald.v1"),
        Some(&token),
    ))
    .await
    .map_err(|e| format!("upgrade write: {e}"))?;
    let mut head = Vec::new();
    let h = ws::read_upgrade_answer(&mut s, &mut head)
        .await
        .map_err(|e| format!("upgrade refused: {}", e.label()))?;
    let mut c = Client {
        s,
        buf: head[h..].to_vec(),
    };
    c.send(&encode_subscribe(1, TOPIC, None)).await?;
    let base = match c.next().await? {
        ServerMessage::Reply { id: 1, seq, .. } => seq.unwrap_or(0),
        ServerMessage::Error { code, message, .. } => {
            return Err(format!("SUBSCRIBE refused: {code} {message}"))
        }
        other => return Err(format!("expected the SUBSCRIBE reply, got {other:?}")),
    };

    // Feed.
    let mut f = TcpStream::connect(ingest)
        .await
        .map_err(|e| format!("connect ingest {ingest}: {e}"))?;
    f.write_all(&feed::encode_hello(&a.feed_token, "herald-load-smoke"))
        .await
        .map_err(|e| format!("ingest write: {e}"))?;
    match read_feed_frame(&mut f).await? {
        GatewayFrame::HelloOk => {}
        other => return Err(format!("ingest HELLO answered with {other:?}")),
    }
    let mut frames = Vec::new();
    for i in 0..COUNT {
        frames.extend_from_slice(&feed::encode_publish(
            TOPIC,
            format!("smoke-{i}").as_bytes(),
        ));
    }
    frames.extend_from_slice(&feed::encode_ping(1));
    f.write_all(&frames)
        .await
        .map_err(|e| format!("ingest write: {e}"))?;
    match read_feed_frame(&mut f).await? {
        GatewayFrame::Pong(1) => {}
        other => return Err(format!("ingest PING answered with {other:?}")),
    }

    for i in 0..COUNT {
        match c.next().await? {
            ServerMessage::Publication {
                topic,
                seq,
                payload,
            } => {
                let want = format!("smoke-{i}");
                if topic != TOPIC {
                    return Err(format!("publication {i}: topic {topic:?}"));
                }
                if seq != base + 1 + i {
                    return Err(format!(
                        "publication {i}: seq {seq}, expected {}",
                        base + 1 + i
                    ));
                }
                if payload != want.as_bytes() {
                    return Err(format!(
                        "publication {i}: payload {:?}, expected {want:?}",
                        String::from_utf8_lossy(&payload)
                    ));
                }
            }
            other => return Err(format!("publication {i}: got {other:?}")),
        }
    }
    ws::send_close(&mut c.s, 1000, MASK).await;
    Ok(())
}
