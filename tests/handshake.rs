//! The WebSocket upgrade (PROTOCOL.md §1): every rejection is a plain HTTP
//! answer before any upgrade, with the documented status.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use herald::auth::token::now_unix;

async fn status_of(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> RawResponse {
    raw_upgrade(addr, path, headers).await.0
}

fn assert_rejected(r: &RawResponse, status: u16) {
    assert_eq!(
        r.status,
        status,
        "{} {:?} {}",
        r.status_line,
        r.headers,
        r.body_str()
    );
    assert!(
        r.header("sec-websocket-accept").is_none(),
        "a rejection must not carry an upgrade answer: {:?}",
        r.headers
    );
}

fn assert_bearer_challenge(r: &RawResponse) {
    let v = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {:?}", r.headers));
    assert!(v.starts_with("Bearer"), "WWW-Authenticate: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_upgrade_gets_101_with_herald_v1() {
    let server = start(|_| {});
    let h = upgrade_headers_with_token(&token_all("alice"));
    let r = status_of(server.ws(), "/ws", &h).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-protocol"), Some("herald.v1"));
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455 sample key"
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_upgrade_header_is_400() {
    let server = start(|_| {});
    let mut h = upgrade_headers_with_token(&token_all("alice"));
    remove_header(&mut h, "Upgrade");
    set_header(&mut h, "Connection", "keep-alive");
    assert_rejected(&status_of(server.ws(), "/ws", &h).await, 400);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_version_is_400() {
    let server = start(|_| {});
    let mut h = upgrade_headers_with_token(&token_all("alice"));
    set_header(&mut h, "Sec-WebSocket-Version", "8");
    let r = status_of(server.ws(), "/ws", &h).await;
    assert_rejected(&r, 400);
    // RFC 6455 §4.4: tell the client which version we speak.
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_websocket_key_is_400() {
    let server = start(|_| {});
    let mut h = upgrade_headers_with_token(&token_all("alice"));
    remove_header(&mut h, "Sec-WebSocket-Key");
    assert_rejected(&status_of(server.ws(), "/ws", &h).await, 400);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_without_herald_v1_are_400() {
    let server = start(|_| {});
    let mut h = upgrade_headers_with_token(&token_all("alice"));
    set_header(&mut h, "Sec-WebSocket-Protocol", "chat, superchat");
    assert_rejected(&status_of(server.ws(), "/ws", &h).await, 400);

    // No subprotocol offered at all is fine (and nothing is echoed).
    let mut h = upgrade_headers_with_token(&token_all("alice"));
    remove_header(&mut h, "Sec-WebSocket-Protocol");
    let r = status_of(server.ws(), "/ws", &h).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-protocol"), None);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_401_with_bearer_challenge() {
    let server = start(|_| {});
    let r = status_of(server.ws(), "/ws", &upgrade_headers()).await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_is_401() {
    let server = start(|_| {});
    let forged = herald::auth::token::mint_hs256(
        "another-secret",
        "alice",
        now_unix() + 600,
        Some(&["*"]),
        None,
    );
    let r = status_of(server.ws(), "/ws", &upgrade_headers_with_token(&forged)).await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);

    // A tampered payload with the original signature.
    let good = token_all("alice");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(br#"{"sub":"admin","exp":99999999999,"topics":["*"]}"#);
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&parts.join(".")),
    )
    .await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);

    let r = status_of(server.ws(), "/ws", &upgrade_headers_with_token("not-a-jwt")).await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_401() {
    let server = start(|_| {});
    let expired = token_exp("alice", now_unix() - 600, &["*"], &[]);
    let r = status_of(server.ws(), "/ws", &upgrade_headers_with_token(&expired)).await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);
    assert!(server.stop().await);
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_token_is_401() {
    let server = start(|_| {});
    let claims = format!(
        r#"{{"sub":"alice","exp":{},"topics":["*"]}}"#,
        now_unix() + 600
    );
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
    ] {
        for sig in ["", "AAAA"] {
            let t = format!(
                "{}.{}.{sig}",
                b64(header.as_bytes()),
                b64(claims.as_bytes())
            );
            let r = status_of(server.ws(), "/ws", &upgrade_headers_with_token(&t)).await;
            assert_rejected(&r, 401);
            assert_bearer_challenge(&r);
        }
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_not_in_allow_list_is_403() {
    let server = start(|c| c.auth.allowed_origins = vec!["https://app.example".into()]);
    let tok = token_all("alice");

    let mut h = upgrade_headers_with_token(&tok);
    set_header(&mut h, "Origin", "https://evil.example");
    assert_rejected(&status_of(server.ws(), "/ws", &h).await, 403);

    let mut h = upgrade_headers_with_token(&tok);
    set_header(&mut h, "Origin", "null");
    assert_rejected(&status_of(server.ws(), "/ws", &h).await, 403);

    // Listed origin: accepted.
    let mut h = upgrade_headers_with_token(&tok);
    set_header(&mut h, "Origin", "https://app.example");
    assert_eq!(status_of(server.ws(), "/ws", &h).await.status, 101);

    // No Origin: a non-browser client, not refused for that.
    let h = upgrade_headers_with_token(&tok);
    assert_eq!(status_of(server.ws(), "/ws", &h).await.status, 101);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_is_429_and_the_slot_comes_back() {
    let server = start(|c| c.limits.max_connections_per_ip = 1);
    let first = ws_connect(server.ws(), &token_all("alice")).await;
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&token_all("bob")),
    )
    .await;
    assert_rejected(&r, 429);

    drop(first);
    let ws = server.ws();
    let back = wait_until(T, || async move {
        status_of(ws, "/ws", &upgrade_headers_with_token(&token_all("bob")))
            .await
            .status
            == 101
    })
    .await;
    assert!(back, "the per-IP slot is released when the connection ends");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_is_429() {
    let server = start(|c| c.limits.max_connections_per_user = 1);
    let _alice = ws_connect(server.ws(), &token_all("alice")).await;
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&token_all("alice")),
    )
    .await;
    assert_rejected(&r, 429);
    // Another user is not affected.
    let _bob = ws_connect(server.ws(), &token_all("bob")).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_503() {
    let server = start(|c| c.limits.max_connections = 1);
    let _first = ws_connect(server.ws(), &token_all("alice")).await;
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&token_all("bob")),
    )
    .await;
    assert_rejected(&r, 503);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_path_is_404() {
    let server = start(|_| {});
    let h = upgrade_headers_with_token(&token_all("alice"));
    assert_rejected(&status_of(server.ws(), "/", &h).await, 404);
    assert_rejected(&status_of(server.ws(), "/websocket", &h).await, 404);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_subprotocol_is_accepted_and_never_echoed() {
    let server = start(|_| {});
    let tok = token_all("alice");
    let mut h = upgrade_headers();
    set_header(
        &mut h,
        "Sec-WebSocket-Protocol",
        &format!("herald.v1, bearer.{tok}"),
    );
    let (r, _stream) = raw_upgrade(server.ws(), "/ws", &h).await;
    assert_eq!(r.status, 101, "{r:?}");
    let echoed: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(echoed, ["herald.v1"], "only herald.v1 is echoed");

    // The same through a real client library, and the session works.
    let proto = format!("herald.v1, bearer.{tok}");
    let (mut ws, resp) = ws_connect_with(server.ws(), "/ws", &[("Sec-WebSocket-Protocol", &proto)])
        .await
        .expect("accepted");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("herald.v1")
    );
    ping(&mut ws, 1).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_token_is_refused_unless_enabled() {
    let tok = token_all("alice");
    let server = start(|_| {});
    let r = status_of(server.ws(), &format!("/ws?token={tok}"), &upgrade_headers()).await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);
    assert!(server.stop().await);

    let server = start(|c| c.auth.allow_query_token = true);
    let r = status_of(server.ws(), &format!("/ws?token={tok}"), &upgrade_headers()).await;
    assert_eq!(r.status, 101, "{r:?}");
    let r = status_of(
        server.ws(),
        &format!("/ws?x=1&token={tok}"),
        &upgrade_headers(),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_counted_in_metrics() {
    let server = start(|_| {});
    let _ok = ws_connect(server.ws(), &token_all("alice")).await;
    let r = status_of(server.ws(), "/ws", &upgrade_headers()).await;
    assert_eq!(r.status, 401);
    let text = metrics_text(server.admin()).await;
    assert!(text.contains("herald_handshakes_total"), "{text}");
    assert!(
        metric_sum(&text, "herald_handshakes_total", &[r#"result="ok""#]) >= 1.0,
        "{text}"
    );
    let rejected: f64 = metric_sum(&text, "herald_handshakes_total", &[])
        - metric_sum(&text, "herald_handshakes_total", &[r#"result="ok""#]);
    assert!(rejected >= 1.0, "{text}");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_arrives_even_when_the_client_waits_for_it() {
    // A client that sends the request and only reads: the answer must come
    // without the client closing its side first.
    let server = start(|_| {});
    let (r, _stream) = tokio::time::timeout(
        Duration::from_secs(3),
        raw_upgrade(server.ws(), "/ws", &upgrade_headers()),
    )
    .await
    .expect("answer in time");
    assert_eq!(r.status, 401);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rate_limit_is_429() {
    let server = start(|c| c.limits.handshakes_per_s = 2);
    let mut statuses = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..4 {
        let (r, s) = raw_upgrade(
            server.ws(),
            "/ws",
            &upgrade_headers_with_token(&token_all("a")),
        )
        .await;
        statuses.push(r.status);
        keep.push(s);
    }
    // A burst of 2 is admitted; the rest of the same instant is refused.
    assert_eq!(&statuses[..2], &[101, 101], "{statuses:?}");
    assert_eq!(&statuses[2..], &[429, 429], "{statuses:?}");
    drop(keep);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_audience_is_checked() {
    let server = start(|c| c.auth.audience = Some("herald".into()));
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&token_all("a")),
    )
    .await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);

    let claims = format!(r#"{{"sub":"a","exp":{},"aud":"herald"}}"#, now_unix() + 600);
    let signed = sign_hs256(&claims);
    let r = status_of(server.ws(), "/ws", &upgrade_headers_with_token(&signed)).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_yet_valid_is_401() {
    let server = start(|_| {});
    let claims = format!(
        r#"{{"sub":"a","exp":{},"nbf":{}}}"#,
        now_unix() + 600,
        now_unix() + 300
    );
    let r = status_of(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&sign_hs256(&claims)),
    )
    .await;
    assert_rejected(&r, 401);
    assert_bearer_challenge(&r);
    assert!(server.stop().await);
}

/// An HS256 JWT over arbitrary JSON claims with the test secret.
fn sign_hs256(claims: &str) -> String {
    let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_style_headers_are_accepted() {
    // Firefox sends `Connection: keep-alive, Upgrade`; header values are
    // case-insensitive; origins compare in canonical form.
    let server = start(|c| c.auth.allowed_origins = vec!["https://app.example".into()]);
    let mut h = upgrade_headers_with_token(&token_all("a"));
    set_header(&mut h, "Connection", "keep-alive, Upgrade");
    set_header(&mut h, "Upgrade", "WebSocket");
    set_header(&mut h, "Origin", "HTTPS://APP.example:443");
    set_header(&mut h, "Sec-WebSocket-Protocol", "chat, herald.v1");
    let r = status_of(server.ws(), "/ws", &h).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-protocol"), Some("herald.v1"));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_sent_with_the_upgrade_request_is_processed() {
    let server = start(|_| {});
    let mut req = render_request(
        "GET",
        "/ws",
        &upgrade_headers_with_token(&token_all("a")),
        b"",
    );
    let sub = herald::wire::client::encode_subscribe(1, "early", None);
    req.extend(herald::wire::ws::client_frame(
        OP_BINARY,
        true,
        [1, 2, 3, 4],
        &sub,
    ));
    let (r, stream) = http_exchange(server.ws(), &req).await;
    assert_eq!(r.status, 101, "{r:?}");
    let mut ws = RawWs::from_stream(stream, r.body.clone());
    let (op, body) = ws.read_frame().await.expect("reply");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        herald::wire::client::decode_server_message(&body).unwrap(),
        herald::wire::client::ServerMessage::Reply {
            id: 1,
            recovered: Some(false),
            ..
        }
    ));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_its_request_is_dropped() {
    // TCP_DEFER_ACCEPT keeps it in the kernel for a couple of seconds; then
    // the handshake timeout ends it. Either way it never gets a session.
    use tokio::io::AsyncReadExt;
    let server = start(|c| c.timeouts.handshake_ms = 300);
    let mut silent = tokio::net::TcpStream::connect(server.ws()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("the gateway ended the silent connection in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "got bytes: {:?}", &buf[..n]);
    // The gateway still serves everyone else.
    let (r, _s) = raw_upgrade(
        server.ws(),
        "/ws",
        &upgrade_headers_with_token(&token_all("a")),
    )
    .await;
    assert_eq!(r.status, 101);
    assert!(server.stop().await);
}

/// A second gateway on a WebSocket port that one already holds refuses to
/// start: with SO_REUSEPORT alone it would join the port's group, and the
/// kernel would split new clients between two unrelated gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_a_held_port_refuses_to_start() {
    let first = start(|_| {});
    let mut cfg = base_config();
    cfg.listen.ws = first.ws();
    let second = herald::Server::start(cfg, std::sync::Arc::new(herald::LogHandler));
    match second {
        Err(herald::StartError::InUse { addr, .. }) => assert_eq!(addr, first.ws()),
        Err(e) => panic!("refused, but not as a port in use: {e}"),
        Ok(_) => panic!("a second gateway joined a port another one holds"),
    }
    // The first one still serves.
    let mut ws = ws_connect(first.ws(), &token_all("u")).await;
    subscribe(&mut ws, 1, "t").await;
    first.stop().await;
}
