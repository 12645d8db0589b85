//! An application `Handler` passed to `Server::start`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::SinkExt;
use herald::wire::client::{self, Request, ServerMessage};
use herald::{Handler, Reject, SessionInfo};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Counting {
    opened: AtomicUsize,
    closed: AtomicUsize,
    /// Session id → (user, close codes seen).
    closes: Mutex<HashMap<u64, (String, Vec<u16>)>>,
    opens: Mutex<Vec<u64>>,
}

impl Handler for Counting {
    fn on_open(&self, s: &SessionInfo<'_>) -> Result<(), Reject> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.opens.lock().unwrap().push(s.id);
        if &*s.claims.sub == "blocked" {
            return Err(Reject::new(1008, "blocked by the application"));
        }
        Ok(())
    }

    fn on_message(&self, _s: &SessionInfo<'_>, request: &Request<'_>) -> Result<(), Reject> {
        match request {
            Request::Subscribe { topic, .. } if topic.starts_with("forbidden.") => {
                Err(Reject::new(403, "forbidden by the application"))
            }
            _ => Ok(()),
        }
    }

    fn on_close(&self, s: &SessionInfo<'_>, code: herald::Close) {
        self.closed.fetch_add(1, Ordering::SeqCst);
        self.closes
            .lock()
            .unwrap()
            .entry(s.id)
            .or_insert_with(|| (s.claims.sub.to_string(), Vec::new()))
            .1
            .push(code.code());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_message_rejection_arrives_as_error_and_has_no_effect() {
    let h = Arc::new(Counting::default());
    let server = start_with_handler(|_| {}, h.clone());
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;

    send_bin(&mut ws, client::encode_subscribe(1, "forbidden.x", None)).await;
    match next_server(&mut ws).await {
        ServerMessage::Error {
            id: 1,
            code: 403,
            message,
        } => {
            assert_eq!(message, "forbidden by the application")
        }
        other => panic!("expected the handler's ERROR, got {other:?}"),
    }
    // Not subscribed: unsubscribing is a 409, and publications do not come.
    send_bin(&mut ws, client::encode_unsubscribe(2, "forbidden.x")).await;
    expect_error(&mut ws, 2, 409).await;
    api_publish(server.admin(), "forbidden.x", b"no").await;
    subscribe(&mut ws, 3, "allowed.x").await;
    api_publish(server.admin(), "allowed.x", b"yes").await;
    assert_eq!(next_publication(&mut ws).await.2, b"yes");

    // The gateway's own checks come first: a topic outside the claim is
    // the gateway's 403, the handler is not consulted.
    let mut narrow = ws_connect(server.ws(), &token("bob", &["allowed.*"], &[])).await;
    send_bin(
        &mut narrow,
        client::encode_subscribe(1, "forbidden.y", None),
    )
    .await;
    match next_server(&mut narrow).await {
        ServerMessage::Error {
            id: 1,
            code: 403,
            message,
        } => {
            assert_ne!(message, "forbidden by the application")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(server.stop().await);
    assert_eq!(h.opened.load(Ordering::SeqCst), 2);
    assert_eq!(h.closed.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_close_is_called_once_per_session_with_its_close_code() {
    let h = Arc::new(Counting::default());
    let server = start_with_handler(|_| {}, h.clone());
    let addr = server.ws();

    // Closed by the client with 1000.
    let mut normal = ws_connect(addr, &token_all("normal")).await;
    subscribe(&mut normal, 1, "h.t").await;
    send_close(&mut normal, 1000).await;
    assert_eq!(expect_close(&mut normal).await.0, 1000);
    drop(normal);

    // TCP connection dropped without a close frame: 1006.
    let mut gone = ws_connect(addr, &token_all("gone")).await;
    subscribe(&mut gone, 1, "h.t").await;
    drop(gone);

    // Closed by the gateway for a text frame: 1003.
    let mut text = ws_connect(addr, &token_all("text")).await;
    text.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(expect_close(&mut text).await.0, 1003);
    drop(text);

    // Disconnected by the operator: 4003.
    let mut kicked = ws_connect(addr, &token_all("kicked")).await;
    subscribe(&mut kicked, 1, "h.t").await;
    let r = api(
        server.admin(),
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        br#"{"user":"kicked"}"#,
    )
    .await;
    assert_eq!(r.json()["closed"], 1);
    assert_eq!(expect_close(&mut kicked).await.0, 4003);
    drop(kicked);

    // Still open at shutdown: 1001.
    let mut last = ws_connect(addr, &token_all("last")).await;
    subscribe(&mut last, 1, "h.t").await;

    let hc = h.clone();
    let settled = wait_until(T, || {
        let hc = hc.clone();
        async move { hc.closed.load(Ordering::SeqCst) == 4 }
    })
    .await;
    assert!(
        settled,
        "four sessions ended: {:?}",
        h.closes.lock().unwrap()
    );
    let closer = tokio::spawn(async move { expect_close(&mut last).await.0 });
    assert!(server.stop().await);
    assert_eq!(closer.await.unwrap(), 1001);

    assert_eq!(h.opened.load(Ordering::SeqCst), 5);
    assert_eq!(h.closed.load(Ordering::SeqCst), 5);
    let closes = h.closes.lock().unwrap();
    let mut opens = h.opens.lock().unwrap().clone();
    opens.sort_unstable();
    let mut closed_ids: Vec<u64> = closes.keys().copied().collect();
    closed_ids.sort_unstable();
    assert_eq!(opens, closed_ids, "every opened session closed, none twice");
    let by_user: HashMap<&str, &Vec<u16>> = closes.values().map(|(u, c)| (u.as_str(), c)).collect();
    assert_eq!(by_user["normal"], &vec![1000]);
    assert_eq!(by_user["gone"], &vec![1006]);
    assert_eq!(by_user["text"], &vec![1003]);
    assert_eq!(by_user["kicked"], &vec![4003]);
    assert_eq!(by_user["last"], &vec![1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_open_rejection_closes_with_1008() {
    let h = Arc::new(Counting::default());
    let server = start_with_handler(|_| {}, h.clone());
    let mut ws = ws_connect(server.ws(), &token_all("blocked")).await;
    assert_eq!(expect_close(&mut ws).await.0, 1008);
    // Others are not affected.
    let mut ok = ws_connect(server.ws(), &token_all("fine")).await;
    ping(&mut ok, 1).await;
    drop(ws);
    assert!(server.stop().await);
    assert_eq!(h.opened.load(Ordering::SeqCst), 2);
    assert_eq!(h.closed.load(Ordering::SeqCst), 2);
}

/// `Server`'s docs say dropping it without `shutdown` only leaves its
/// threads running; an embedding application (async, like this test) must
/// be able to do that without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_inside_async_code_does_not_panic() {
    let mut cfg = base_config();
    cfg.shards.count = 1;
    let server = herald::Server::start(cfg, Arc::new(herald::LogHandler)).expect("starts");
    let dropped = tokio::task::spawn(async move { drop(server) }).await;
    assert!(
        dropped.is_ok(),
        "dropping a Server inside a tokio runtime panicked (its control runtime is dropped in async context)"
    );
}
