//! Watches topics on a herald gateway and prints every publication.
//!
//! cargo run --example watch -- --url ws://127.0.0.1:8780/ws --token <JWT> demo.BTC-USD
//! (`--secret S` mints a token for user "watcher" instead of `--token`.)

use futures_util::{SinkExt, StreamExt};
use herald::wire::client::{decode_server_message, encode_subscribe, ServerMessage};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "ws://127.0.0.1:8780/ws".to_owned();
    let mut token = None;
    let mut secret = None;
    let mut topics = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--token" => token = Some(args.next().ok_or("--token needs a value")?),
            "--secret" => secret = Some(args.next().ok_or("--secret needs a value")?),
            t => topics.push(t.to_owned()),
        }
    }
    let token = match (token, secret) {
        (Some(t), _) => t,
        (None, Some(s)) => {
            let exp = herald::auth::token::now_unix() + 3600;
            herald::auth::token::mint_hs256(&s, "watcher", exp, Some(&["*"]), None)
        }
        (None, None) => return Err("give --token JWT or --secret HS256_SECRET".into()),
    };
    if topics.is_empty() {
        return Err("name at least one topic".into());
    }
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "herald.v1".parse()?);
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    for (i, t) in topics.iter().enumerate() {
        ws.send(Message::binary(encode_subscribe(i as u32 + 1, t, None)))
            .await?;
    }
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) => match decode_server_message(&b) {
                Ok(ServerMessage::Publication {
                    topic,
                    seq,
                    payload,
                }) => {
                    println!("{topic} #{seq} {}", String::from_utf8_lossy(&payload));
                }
                Ok(other) => println!("{other:?}"),
                Err(e) => eprintln!("undecodable frame: {e}"),
            },
            Message::Close(c) => {
                println!("closed: {c:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
