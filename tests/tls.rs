//! TLS on the public listener (`[tls]`): `wss://` through a real rustls
//! client, refusal of plain HTTP, and certificate reload without dropping
//! what is connected.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald::wire::client::{self, ServerMessage};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/tls")
}

fn connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(keys().join("ca.pem")).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the gateway, checked against the test CA.
async fn tls_connect(addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(T, connector().connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// The certificate the gateway presented.
fn presented(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn cert_der(name: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(keys().join(name))
        .unwrap()
        .to_vec()
}

async fn wss_connect(addr: SocketAddr, token: &str) -> (Wss, Vec<u8>) {
    let tls = tls_connect(addr).await;
    let cert = presented(&tls);
    let mut req = format!("wss://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "herald.v1".parse().unwrap());
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("upgrade in time")
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    (ws, cert)
}

async fn next_server_wss(ws: &mut Wss) -> ServerMessage {
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Message::Binary(b) = m {
            return client::decode_server_message(&b).unwrap();
        }
    }
}

/// Files the test may overwrite: a copy of `server-<n>` in a temp dir.
struct CertFiles {
    dir: PathBuf,
}

impl CertFiles {
    fn new(n: &str) -> CertFiles {
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-{}-{n}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = CertFiles { dir };
        c.install(n);
        c
    }
    fn install(&self, n: &str) {
        for ext in ["pem", "key"] {
            std::fs::copy(
                keys().join(format!("server-{n}.{ext}")),
                self.dir.join(format!("server.{ext}")),
            )
            .unwrap();
        }
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_subscribes_publishes_and_receives_a_burst_in_order() {
    let certs = CertFiles::new("a");
    let server = start(|c| {
        // The burst is read only after it was sent: room for all of it.
        c.limits.max_outbox_bytes = 8 << 20;
        c.tls.cert_file = Some(certs.cert());
        c.tls.key_file = Some(certs.key());
    });
    let (mut ws, cert) = wss_connect(server.ws(), &token_all("alice")).await;
    assert_eq!(cert, cert_der("server-a.pem"));
    ws.send(Message::Binary(
        client::encode_subscribe(1, "tls.t", None).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_server_wss(&mut ws).await,
        ServerMessage::Reply {
            id: 1,
            seq: Some(0),
            ..
        }
    ));
    // A client PUBLISH: the read path through rustls.
    ws.send(Message::Binary(
        client::encode_publish(2, "tls.t", b"hello").into(),
    ))
    .await
    .unwrap();
    let mut got_reply = false;
    let mut got_pub = false;
    while !(got_reply && got_pub) {
        match next_server_wss(&mut ws).await {
            ServerMessage::Reply {
                id: 2,
                seq: Some(1),
                ..
            } => got_reply = true,
            ServerMessage::Publication {
                seq: 1, payload, ..
            } => {
                assert_eq!(payload, b"hello");
                got_pub = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A burst larger than rustls's buffer and the socket's: partial writes
    // and sealed bytes waiting for writability, all in order.
    const N: u64 = 300;
    let mut feed = Feed::open(server.ingest(), "tls-feed").await;
    let mut frames = Vec::new();
    for i in 2..=N + 1 {
        let mut p = i.to_be_bytes().to_vec();
        p.resize(8 * 1024, i as u8);
        frames.extend(herald::wire::feed::encode_publish("tls.t", &p));
    }
    feed.send(&frames).await;
    for want in 2..=N + 1 {
        match next_server_wss(&mut ws).await {
            ServerMessage::Publication { seq, payload, .. } => {
                assert_eq!(seq, want);
                assert_eq!(&payload[..8], &want.to_be_bytes());
                assert_eq!(payload.len(), 8 * 1024);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A clean close through TLS.
    ws.close(None).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("close: {e}"),
        }
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_tls_listener_gets_no_upgrade() {
    let certs = CertFiles::new("a");
    let server = start(|c| {
        c.tls.cert_file = Some(certs.cert());
        c.tls.key_file = Some(certs.key());
    });
    let before = metric_sum(
        &metrics_text(server.admin()).await,
        "herald_handshakes_total",
        &[r#"result="tls""#],
    );
    let mut tcp = TcpStream::connect(server.ws()).await.unwrap();
    let req = render_request(
        "GET",
        "/ws",
        &upgrade_headers_with_token(&token_all("p")),
        b"",
    );
    tcp.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut buf))
        .await
        .expect("the gateway ends the connection");
    assert!(
        find(&buf, b"101").is_none() && find(&buf, b"HTTP/1.1").is_none(),
        "no HTTP answer on a TLS port: {buf:?}"
    );
    // The gateway counts the failure after it has dropped the socket: the
    // client can see the end first.
    let admin = server.admin();
    let counted = wait_until(T, || async move {
        metric_sum(
            &metrics_text(admin).await,
            "herald_handshakes_total",
            &[r#"result="tls""#],
        ) >= before + 1.0
    })
    .await;
    assert!(counted, "the failed TLS handshake is counted");
    assert!(server.stop().await);
}

#[test]
fn a_missing_or_mismatched_certificate_fails_the_start() {
    let mut cfg = base_config();
    cfg.tls.cert_file = Some(keys().join("server-a.pem"));
    cfg.tls.key_file = Some(keys().join("server-b.key"));
    match herald::Server::start(cfg, Arc::new(herald::LogHandler)) {
        Err(herald::StartError::Tls(e)) => assert!(e.to_string().contains("key"), "{e}"),
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("a key that does not match the certificate must not start"),
    }
    let mut cfg = base_config();
    cfg.tls.cert_file = Some(keys().join("ca.pem"));
    cfg.tls.key_file = Some(keys().join("README.md"));
    assert!(matches!(
        herald::Server::start(cfg, Arc::new(herald::LogHandler)),
        Err(herald::StartError::Tls(_))
    ));
}

/// SIGHUP's work (`Server::reload`): new connections get the new
/// certificate, the connection made before the swap keeps receiving, and a
/// broken file fails the reload and keeps the last good certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_without_dropping_connections() {
    let certs = CertFiles::new("a");
    let public_key = certs.dir.join("rsa_public.pem");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa_public.pem"),
        &public_key,
    )
    .unwrap();
    let server = start(|c| {
        c.tls.cert_file = Some(certs.cert());
        c.tls.key_file = Some(certs.key());
        c.auth.public_key_file = Some(public_key.clone());
    });
    let (mut before, cert) = wss_connect(server.ws(), &token_all("old")).await;
    assert_eq!(cert, cert_der("server-a.pem"));
    before
        .send(Message::Binary(
            client::encode_subscribe(1, "tls.r", None).into(),
        ))
        .await
        .unwrap();
    assert!(matches!(
        next_server_wss(&mut before).await,
        ServerMessage::Reply { id: 1, .. }
    ));

    certs.install("b");
    let done = server.reload().expect("reload succeeds");
    assert!(done.tls, "the reload covered TLS: {done}");

    let (mut after, cert) = wss_connect(server.ws(), &token_all("new")).await;
    assert_eq!(cert, cert_der("server-b.pem"), "new connections get b");
    after
        .send(Message::Binary(
            client::encode_subscribe(1, "tls.r", None).into(),
        ))
        .await
        .unwrap();
    assert!(matches!(
        next_server_wss(&mut after).await,
        ServerMessage::Reply { id: 1, .. }
    ));

    // Both, the one from before the swap included, get the same publication.
    let mut feed = Feed::open(server.ingest(), "tls-feed").await;
    feed.send(&herald::wire::feed::encode_publish(
        "tls.r",
        b"after-reload",
    ))
    .await;
    for ws in [&mut before, &mut after] {
        match next_server_wss(ws).await {
            ServerMessage::Publication { seq, payload, .. } => {
                assert_eq!(seq, 1);
                assert_eq!(payload, b"after-reload");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // A half-written certificate (the operator's copy not finished): the
    // reload fails, and the gateway keeps presenting b.
    std::fs::write(certs.cert(), b"-----BEGIN CERTIFICATE-----\nnot base64").unwrap();
    assert!(
        matches!(server.reload(), Err(herald::ReloadError::Tls(_))),
        "a broken certificate fails the reload"
    );
    let (_third, cert) = wss_connect(server.ws(), &token_all("third")).await;
    assert_eq!(
        cert,
        cert_der("server-b.pem"),
        "the last good certificate stays"
    );

    // All or nothing: a good certificate with a broken key file is not put
    // in place either.
    certs.install("a");
    std::fs::write(&public_key, b"not a key").unwrap();
    assert!(
        matches!(server.reload(), Err(herald::ReloadError::Auth(_))),
        "a broken key file fails the reload"
    );
    let (_fourth, cert) = wss_connect(server.ws(), &token_all("fourth")).await;
    assert_eq!(
        cert,
        cert_der("server-b.pem"),
        "nothing of a failed reload is used"
    );
    assert!(server.stop().await);
}
