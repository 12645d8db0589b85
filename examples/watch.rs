//! Watches topics on a herald gateway and prints every publication.
//!
//! cargo run --example watch -- --url ws://127.0.0.1:8780/ws --token <JWT> demo.BTC-USD
//! (`--secret S` mints a token for user "watcher" instead of `--token`.)

use std::io::Write;
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use herald::wire::client::{decode_server_message, encode_subscribe, ServerMessage};
use herald::wire::topic::is_valid_topic;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const USAGE: &str = "\
usage: watch [--url ws://HOST:PORT/ws] (--token JWT | --secret HS256_SECRET) TOPIC...

Subscribes to every TOPIC and prints each publication as
`TOPIC #SEQ PAYLOAD` (the payload as UTF-8, lossily).

  --url URL        the gateway's WebSocket endpoint (default ws://127.0.0.1:8780/ws)
  --token JWT      the token to connect with (sent as Authorization: Bearer)
  --secret S       mint a one-hour token for user \"watcher\" with the HS256 secret S
  -h, --help       this text";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        // `watch ... | head`: the reader left, which is not an error.
        Err(Failure::Pipe) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("watch: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Other(m)) => {
            eprintln!("watch: {m}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Pipe,
    Other(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::Pipe
        } else {
            Failure::Other(e.to_string())
        }
    }
}

async fn run() -> Result<(), Failure> {
    let usage = |m: &str| Failure::Usage(m.to_owned());
    let mut url = "ws://127.0.0.1:8780/ws".to_owned();
    let mut token = None;
    let mut secret = None;
    let mut topics = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--url" => url = args.next().ok_or_else(|| usage("--url needs a value"))?,
            "--token" => token = Some(args.next().ok_or_else(|| usage("--token needs a value"))?),
            "--secret" => {
                secret = Some(args.next().ok_or_else(|| usage("--secret needs a value"))?)
            }
            o if o.starts_with('-') => return Err(usage(&format!("unknown option {o}"))),
            t if is_valid_topic(t) => topics.push(t.to_owned()),
            t => {
                return Err(usage(&format!(
                    "{t:?} is not a topic (1-128 bytes of A-Z a-z 0-9 . _ : -)"
                )))
            }
        }
    }
    let token = match (token, secret) {
        (Some(t), _) => t,
        (None, Some(s)) => {
            let exp = herald::auth::token::now_unix() + 3600;
            herald::auth::token::mint_hs256(&s, "watcher", exp, Some(&["*"]), None)
        }
        (None, None) => return Err(usage("give --token JWT or --secret HS256_SECRET")),
    };
    if topics.is_empty() {
        return Err(usage("name at least one topic"));
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| usage(&format!("bad --url {url}: {e}")))?;
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        "herald.v1".parse().expect("static"),
    );
    h.insert(
        "Authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| usage("the token has characters a header cannot carry"))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| match e {
            // The gateway answered the upgrade with an HTTP error: show
            // its status and its text, not the bytes.
            WsError::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Failure::Other(format!(
                    "{url} refused the connection: {} {}",
                    resp.status(),
                    body.trim()
                ))
            }
            e => Failure::Other(format!("cannot connect to {url}: {e}")),
        })?;
    for (i, t) in topics.iter().enumerate() {
        ws.send(Message::binary(encode_subscribe(i as u32 + 1, t, None)))
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
    }
    let mut out = std::io::stdout().lock();
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| Failure::Other(format!("connection lost: {e}")))? {
            Message::Binary(b) => match decode_server_message(&b) {
                Ok(ServerMessage::Publication {
                    topic,
                    seq,
                    payload,
                }) => writeln!(out, "{topic} #{seq} {}", String::from_utf8_lossy(&payload))?,
                Ok(ServerMessage::Reply { id, seq, epoch, .. }) => {
                    let topic = &topics[(id as usize).saturating_sub(1).min(topics.len() - 1)];
                    writeln!(
                        out,
                        "subscribed to {topic} at seq {} (epoch {})",
                        seq.unwrap_or(0),
                        epoch.unwrap_or_default()
                    )?
                }
                Ok(ServerMessage::Error { id, code, message }) => {
                    let what = topics
                        .get((id as usize).wrapping_sub(1))
                        .map_or("request", String::as_str);
                    writeln!(out, "error {code} for {what}: {message}")?
                }
                Err(e) => eprintln!("watch: undecodable frame: {e}"),
            },
            Message::Close(c) => {
                match c {
                    Some(f) => writeln!(
                        out,
                        "closed by the gateway: {} {}",
                        u16::from(f.code),
                        f.reason
                    )?,
                    None => writeln!(out, "closed by the gateway")?,
                }
                break;
            }
            _ => {}
        }
        out.flush()?;
    }
    Ok(())
}
