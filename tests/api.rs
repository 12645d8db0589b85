//! The operator HTTP API (PROTOCOL.md §3).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_need_the_key() {
    let server = start(|_| {});
    let admin = server.admin();
    for (method, path) in [
        ("POST", "/api/publish/t"),
        ("GET", "/api/stats"),
        ("POST", "/api/disconnect"),
    ] {
        let r = api(admin, method, path, None, br#"{"user":"x"}"#).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} without key: {}",
            r.status_line
        );
        let r = api(admin, method, path, Some("wrong-key"), br#"{"user":"x"}"#).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with a wrong key: {}",
            r.status_line
        );
        let r = api(admin, method, path, Some("api-ke"), br#"{"user":"x"}"#).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with a key prefix: {}",
            r.status_line
        );
    }
    // The right key under another scheme is still refused.
    let mut h = vec![
        ("Connection".to_owned(), "close".to_owned()),
        ("Authorization".to_owned(), format!("Basic {API_KEY}")),
    ];
    let (r, _) = http_exchange(admin, &render_request("GET", "/api/stats", &h, b"")).await;
    assert_eq!(r.status, 401);
    h[1].1 = format!("bearer {API_KEY}");
    let (r, _) = http_exchange(admin, &render_request("GET", "/api/stats", &h, b"")).await;
    assert_eq!(r.status, 200, "the auth scheme is case-insensitive");
    // Nothing was published by the refused calls.
    assert_eq!(api_publish(admin, "t", b"x").await, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_202_with_the_seq_and_subscribers_get_the_raw_body() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "md.BTC-USD").await;
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"px\": 1}".to_vec(),
        (0..=255u8).collect(),
        Vec::new(),
        vec![0u8; 100_000],
    ];
    for (i, body) in bodies.iter().enumerate() {
        let r = api(
            server.admin(),
            "POST",
            "/api/publish/md.BTC-USD",
            Some(API_KEY),
            body,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body_str());
        assert_eq!(r.json()["seq"], i as u64 + 1);
    }
    for (i, body) in bodies.iter().enumerate() {
        let (topic, seq, payload) = next_publication(&mut ws).await;
        assert_eq!((topic.as_str(), seq), ("md.BTC-USD", i as u64 + 1));
        assert_eq!(&payload, body, "payload {i} is delivered byte for byte");
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_invalid_topic_is_400() {
    let server = start(|_| {});
    let long = "a".repeat(129);
    for topic in ["bad%20topic", "", "a/b", "%C3%A9t%C3%A9", long.as_str()] {
        let r = api(
            server.admin(),
            "POST",
            &format!("/api/publish/{topic}"),
            Some(API_KEY),
            b"x",
        )
        .await;
        assert_eq!(r.status, 400, "topic {topic:?}: {}", r.status_line);
    }
    let max = "a".repeat(128);
    assert_eq!(api_publish(server.admin(), &max, b"x").await, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_body_over_the_limit_is_413() {
    let server = start(|c| c.api.max_body_bytes = 1000);
    let r = api(
        server.admin(),
        "POST",
        "/api/publish/t",
        Some(API_KEY),
        &[1u8; 1001],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.status_line);
    assert_eq!(api_publish(server.admin(), "t", &[1u8; 1000]).await, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_connections_topics_and_shards() {
    let server = start(|_| {});
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut ws = ws_connect(server.ws(), &token_all(&format!("u{i}"))).await;
        subscribe(&mut ws, 1, "s.one").await;
        subscribe(&mut ws, 2, &format!("s.own{i}")).await;
        clients.push(ws);
    }
    let admin = server.admin();
    let r = api(admin, "GET", "/api/stats", Some(API_KEY), b"").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let s = r.json();
    assert_eq!(s["connections"], 4, "{s}");
    assert_eq!(s["subscriptions"], 8, "{s}");
    let shards = s["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{s}");
    let per_shard: u64 = shards
        .iter()
        .map(|x| x["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 4, "{s}");
    assert!(s.get("rates").is_some(), "{s}");
    // Topic counts are refreshed periodically: wait for them.
    let topics_seen = wait_until(T, || async move {
        let s = api(admin, "GET", "/api/stats", Some(API_KEY), b"")
            .await
            .json();
        s["topics"].as_u64() == Some(5)
    })
    .await;
    assert!(topics_seen, "stats never showed the 5 topics");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_that_users_sockets_with_4003_only() {
    let server = start(|_| {});
    let mut alice1 = ws_connect(server.ws(), &token_all("alice")).await;
    let mut alice2 = ws_connect(server.ws(), &token_all("alice")).await;
    let mut bob = ws_connect(server.ws(), &token_all("bob")).await;
    subscribe(&mut alice1, 1, "d").await;
    subscribe(&mut bob, 1, "d").await;

    let r = api(
        server.admin(),
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        br#"{"user": "alice"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["closed"], 2);
    assert_eq!(expect_close(&mut alice1).await.0, 4003);
    assert_eq!(expect_close(&mut alice2).await.0, 4003);

    ping(&mut bob, 2).await;
    api_publish(server.admin(), "d", b"still here").await;
    assert_eq!(next_publication(&mut bob).await.2, b"still here");

    let r = api(
        server.admin(),
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        br#"{"user": "nobody"}"#,
    )
    .await;
    assert_eq!((r.status, r.json()["closed"].as_u64()), (200, Some(0)));
    let r = api(
        server.admin(),
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        b"alice",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_need_no_key() {
    let server = start(|_| {});
    let _ws = ws_connect(server.ws(), &token_all("alice")).await;
    let r = api(server.admin(), "GET", "/metrics", None, b"").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let text = r.body_str();
    assert!(text.contains("herald_connections"), "{text}");

    let r = api(server.admin(), "GET", "/healthz", None, b"").await;
    assert_eq!(r.status, 200);
    let r = api(server.admin(), "GET", "/readyz", None, b"").await;
    assert_eq!(r.status, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_is_not_served_on_the_public_port() {
    let server = start(|_| {});
    for path in ["/api/stats", "/metrics", "/healthz"] {
        let h = vec![
            ("Connection".to_owned(), "close".to_owned()),
            ("Authorization".to_owned(), format!("Bearer {API_KEY}")),
        ];
        let (r, _) = http_exchange(server.ws(), &render_request("GET", path, &h, b"")).await;
        assert_eq!(
            r.status, 404,
            "{path} on the WebSocket port: {}",
            r.status_line
        );
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_draining() {
    let server = start(|c| {
        // The client below does not answer the close: the drain lasts
        // close_ms, long enough to watch /readyz.
        c.timeouts.close_ms = 3000;
        c.timeouts.drain_ms = 8000;
    });
    let admin = server.admin();
    let ws_addr = server.ws();
    let mut ws = ws_connect(ws_addr, &token_all("alice")).await;
    subscribe(&mut ws, 1, "r").await;
    assert_eq!(api(admin, "GET", "/readyz", None, b"").await.status, 200);

    let shutdown = tokio::spawn(server.stop());
    let draining = wait_until(T, || async move {
        api(admin, "GET", "/readyz", None, b"").await.status == 503
    })
    .await;
    assert!(draining, "/readyz never answered 503 during the drain");
    // Still alive while draining.
    assert_eq!(api(admin, "GET", "/healthz", None, b"").await.status, 200);

    // New connections are not taken: refused, or answered 503.
    if let Ok(Ok(s)) = tokio::time::timeout(T, tokio::net::TcpStream::connect(ws_addr)).await {
        drop(s);
        if let Ok(Ok((r, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn(async move {
                raw_upgrade(
                    ws_addr,
                    "/ws",
                    &upgrade_headers_with_token(&token_all("bob")),
                )
                .await
            }),
        )
        .await
        {
            assert_eq!(r.status, 503, "{r:?}");
        }
    }

    assert_eq!(expect_close(&mut ws).await.0, 1001);
    drop(ws);
    let clean = tokio::time::timeout(Duration::from_secs(15), shutdown)
        .await
        .expect("shutdown finished")
        .expect("shutdown task");
    assert!(clean);
}
