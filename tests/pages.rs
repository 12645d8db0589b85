//! The pages herald serves besides its protocols: the demo page and its
//! token endpoint on the public listener (`--demo` only), the admin UI and
//! `/api/nodes` on the admin listener. What the pages do in a browser is
//! tested under `web/test/`; here, what the gateway promises about them.

mod common;

use std::sync::Arc;

use common::*;
use herald::wire::client::{self, ServerMessage};
use herald::{LogHandler, StartOptions};

fn demo() -> TestServer {
    start_with_options(
        |_| {},
        Arc::new(LogHandler),
        StartOptions { demo_site: true },
    )
}

#[tokio::test]
async fn the_demo_page_and_its_tokens_are_served_beside_the_websocket() {
    let s = demo();
    let page = api(s.ws(), "GET", "/", None, b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("connect-src 'self'")));
    assert_eq!(page.body, herald::http::site::DEMO_HTML);
    let js = api(s.ws(), "GET", "/demo.js", None, b"").await;
    assert_eq!(js.status, 200);
    assert_eq!(js.body, herald::http::site::DEMO_JS);
    assert_eq!(api(s.ws(), "GET", "/nope", None, b"").await.status, 404);
    assert_eq!(
        api(s.ws(), "POST", "/demo/token", None, b"").await.status,
        405
    );

    // A page's token works on the WebSocket, for the demo topics only, and
    // may publish to the chat only.
    let t = api(s.ws(), "GET", "/demo/token", None, b"").await;
    assert_eq!(t.status, 200);
    assert_eq!(t.header("cache-control"), Some("no-store"));
    let v = t.json();
    let token = v["token"].as_str().expect("token");
    assert!(v["sub"].as_str().is_some_and(|u| u.starts_with("guest-")));
    let mut ws = ws_connect(s.ws(), token).await;
    subscribe(&mut ws, 1, "demo.chat").await;
    send_bin(&mut ws, client::encode_subscribe(2, "md.BTC", None)).await;
    expect_error(&mut ws, 2, 403).await;
    send_bin(&mut ws, client::encode_publish(3, "demo.chat", b"hi")).await;
    match next_server(&mut ws).await {
        ServerMessage::Reply { id: 3, seq, .. } => assert_eq!(seq, Some(1)),
        other => panic!("expected the PUBLISH reply, got {other:?}"),
    }
    assert_eq!(next_publication(&mut ws).await.2, b"hi");
    send_bin(
        &mut ws,
        client::encode_publish(4, "demo.BTC-USD", b"fake tick"),
    )
    .await;
    expect_error(&mut ws, 4, 403).await;
    s.stop().await;
}

#[tokio::test]
async fn without_demo_the_public_port_serves_only_the_websocket() {
    let s = start(|_| {});
    for path in ["/", "/demo.js", "/demo/token"] {
        assert_eq!(
            api(s.ws(), "GET", path, None, b"").await.status,
            404,
            "{path}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn the_admin_ui_loads_without_a_key_and_its_data_needs_one() {
    let s = start(|_| {});
    let ui = api(s.admin(), "GET", "/ui", None, b"").await;
    assert_eq!(ui.status, 200);
    assert_eq!(ui.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(!ui.body.is_empty());
    let js = api(s.admin(), "GET", "/ui/admin.js", None, b"").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    // The UI's pages are on the admin listener only.
    assert_eq!(api(s.ws(), "GET", "/ui", None, b"").await.status, 404);

    assert_eq!(
        api(s.admin(), "GET", "/api/nodes", None, b"").await.status,
        401
    );
    let _ws = ws_connect(s.ws(), &token_all("u")).await;
    let nodes = api(s.admin(), "GET", "/api/nodes", Some(API_KEY), b"")
        .await
        .json();
    let list = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(list.len(), 1, "one node on its own");
    assert_eq!(list[0]["self"], true);
    assert!(list[0]["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(list[0]["stats"]["connections"], 1);
    assert_eq!(list[0]["stats"]["broker"]["kind"], "local");
    s.stop().await;
}
