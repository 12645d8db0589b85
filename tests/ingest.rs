//! The feed protocol (PROTOCOL.md §2): length-prefixed MessagePack over TCP.

mod common;

use std::time::Duration;

use common::*;
use herald::wire::feed::{self, GatewayFrame};

/// A length-prefixed frame around an arbitrary body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_is_accepted_and_publications_reach_subscribers_in_order() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "feed.t").await;

    let mut f = Feed::connect(server.ingest()).await;
    f.send(&feed::encode_hello(FEED_TOKEN, "test-feed")).await;
    assert_eq!(f.read().await, Some(GatewayFrame::HelloOk));
    for i in 1..=20u64 {
        f.publish("feed.t", &i.to_be_bytes()).await;
    }
    for i in 1..=20u64 {
        let (topic, seq, payload) = next_publication(&mut ws).await;
        assert_eq!((topic.as_str(), seq), ("feed.t", i));
        assert_eq!(payload, i.to_be_bytes());
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_401_then_closed() {
    let server = start(|_| {});
    let mut f = Feed::connect(server.ingest()).await;
    f.send(&feed::encode_hello("wrong-token", "intruder")).await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 401);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hello_in_time_is_408() {
    let server = start(|c| c.ingest.hello_timeout_ms = 300);
    let mut f = Feed::connect(server.ingest()).await;
    let started = std::time::Instant::now();
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 408);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_other_than_hello_is_400() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "pre").await;
    let mut f = Feed::connect(server.ingest()).await;
    f.publish("pre", b"sneaky").await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 400);
    assert_eq!(
        api_publish(server.admin(), "pre", b"api").await,
        1,
        "nothing was published"
    );
    assert_eq!(next_publication(&mut ws).await.2, b"api");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_frame_is_400() {
    let server = start(|_| {});
    let mut f = Feed::open(server.ingest(), "zero").await;
    f.send(&[0, 0, 0, 0]).await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 400);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_maximum_is_413() {
    let server = start(|c| c.ingest.max_frame_bytes = 1024);
    let mut f = Feed::open(server.ingest(), "big").await;
    // Only the length prefix: the gateway must refuse from it alone.
    f.send(&2000u32.to_be_bytes()).await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 413);

    // Right at the maximum is fine.
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "max").await;
    let mut f = Feed::open(server.ingest(), "max").await;
    let overhead = feed::encode_publish("max", &[]).len() - 4;
    let payload = vec![7u8; 1024 - overhead - 2]; // bin16 header is 2 bytes longer than bin8 of 0
    let frame = feed::encode_publish("max", &payload);
    assert!(frame.len() - 4 <= 1024, "{}", frame.len());
    f.send(&frame).await;
    f.barrier(1).await;
    assert_eq!(next_publication(&mut ws).await.2, payload);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_is_400_and_publishes_nothing() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "unk").await;

    let mut f = Feed::open(server.ingest(), "unknown").await;
    f.publish("unk", b"before").await;
    // [9, "unk", bin "x"], then a PUBLISH after the bad frame that must not
    // be published either (one write, so the gateway reads both).
    let mut bytes = framed(&[0x93, 0x09, 0xa3, b'u', b'n', b'k', 0xc4, 0x01, b'x']);
    bytes.extend(feed::encode_publish("unk", b"after"));
    f.send(&bytes).await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 400);

    assert_eq!(
        next_publication(&mut ws).await,
        ("unk".into(), 1, b"before".to_vec())
    );
    assert_eq!(
        api_publish(server.admin(), "unk", b"api").await,
        2,
        "only `before` was sequenced"
    );
    assert_eq!(
        next_publication(&mut ws).await,
        ("unk".into(), 2, b"api".to_vec())
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_publish_is_400_and_publishes_nothing() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "mal").await;
    let cases: Vec<Vec<u8>> = vec![
        // payload as str instead of bin
        vec![0x93, 0x02, 0xa3, b'm', b'a', b'l', 0xa1, b'x'],
        // invalid topic
        vec![0x93, 0x02, 0xa3, b'm', b' ', b'l', 0xc4, 0x01, b'x'],
        // not an array
        vec![0x02],
        // truncated array
        vec![0x93, 0x02, 0xa3, b'm', b'a', b'l'],
        // trailing bytes after the array
        vec![0x93, 0x02, 0xa3, b'm', b'a', b'l', 0xc4, 0x01, b'x', 0x00],
    ];
    for body in cases {
        let mut f = Feed::open(server.ingest(), "mal").await;
        f.send(&framed(&body)).await;
        let (code, _) = f.expect_error_then_close().await;
        assert_eq!(code, 400, "{body:x?}");
    }
    assert_eq!(api_publish(server.admin(), "mal", b"api").await, 1);
    assert_eq!(next_publication(&mut ws).await.1, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_hello_is_400() {
    let server = start(|_| {});
    let mut f = Feed::open(server.ingest(), "dup").await;
    f.send(&feed::encode_hello(FEED_TOKEN, "dup")).await;
    let (code, _) = f.expect_error_then_close().await;
    assert_eq!(code, 400);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_trailing_elements_are_ignored() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "fwd").await;
    let mut f = Feed::connect(server.ingest()).await;
    // [1, token, name, {"v": 2}]
    let mut hello = vec![0x94, 0x01, 0xaa];
    hello.extend_from_slice(FEED_TOKEN.as_bytes());
    hello.extend_from_slice(&[0xa1, b'n', 0x81, 0xa1, b'v', 0x02]);
    f.send(&framed(&hello)).await;
    assert_eq!(f.read().await, Some(GatewayFrame::HelloOk));
    // [2, "fwd", bin "p", "extra"]
    f.send(&framed(&[
        0x94, 0x02, 0xa3, b'f', b'w', b'd', 0xc4, 0x01, b'p', 0xa1, b'e',
    ]))
    .await;
    f.barrier(5).await;
    assert_eq!(
        next_publication(&mut ws).await,
        ("fwd".into(), 1, b"p".to_vec())
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_echoed_after_the_preceding_publications_are_delivered() {
    let server = start(|_| {});
    // Subscribers on both shards (connections are spread by the kernel;
    // several make it near certain both shards have some).
    let mut subs = Vec::new();
    for i in 0..6 {
        let mut ws = ws_connect(server.ws(), &token_all(&format!("u{i}"))).await;
        subscribe(&mut ws, 1, "bar.a").await;
        subscribe(&mut ws, 2, "bar.b").await;
        subs.push(ws);
    }
    let mut f = Feed::open(server.ingest(), "barrier").await;
    let mut frames = Vec::new();
    for i in 1..=200u64 {
        frames.extend(feed::encode_publish(
            if i % 2 == 0 { "bar.a" } else { "bar.b" },
            &i.to_be_bytes(),
        ));
    }
    frames.extend(feed::encode_ping(0xdead_beef));
    f.send(&frames).await;
    assert_eq!(f.read().await, Some(GatewayFrame::Pong(0xdead_beef)));

    // Everything before the PING was handed to the sockets: it is all there
    // to read right away.
    for ws in &mut subs {
        let mut a = 0;
        let mut b = 0;
        for _ in 0..200 {
            let (topic, seq, _) = next_publication(ws).await;
            match topic.as_str() {
                "bar.a" => {
                    a += 1;
                    assert_eq!(seq, a);
                }
                "bar.b" => {
                    b += 1;
                    assert_eq!(seq, b);
                }
                t => panic!("unexpected topic {t}"),
            }
        }
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_nonce_of_any_type_is_echoed_byte_for_byte() {
    let server = start(|_| {});
    let mut f = Feed::open(server.ingest(), "nonce").await;
    // [3, "abc"]
    f.send(&framed(&[0x92, 0x03, 0xa3, b'a', b'b', b'c'])).await;
    assert_eq!(
        f.read_body().await.unwrap(),
        vec![0x92, 0x03, 0xa3, b'a', b'b', b'c']
    );
    // [3, [1, {"k": nil}]]
    let body = vec![0x92, 0x03, 0x92, 0x01, 0x81, 0xa1, b'k', 0xc0];
    f.send(&framed(&body)).await;
    assert_eq!(f.read_body().await.unwrap(), body);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_feeds_is_429_and_the_slot_comes_back() {
    let server = start(|c| c.ingest.max_feeds = 1);
    let first = Feed::open(server.ingest(), "first").await;
    let mut second = Feed::connect(server.ingest()).await;
    let (code, _) = second.expect_error_then_close().await;
    assert_eq!(code, 429);

    drop(first);
    let addr = server.ingest();
    let ok = wait_until(T, || async move {
        let mut f = Feed::connect(addr).await;
        f.send(&feed::encode_hello(FEED_TOKEN, "again")).await;
        matches!(f.read().await, Some(GatewayFrame::HelloOk))
    })
    .await;
    assert!(ok, "a feed slot is free again once the first feed left");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_publish_and_ping_in_one_write() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "onewrite").await;
    let mut f = Feed::connect(server.ingest()).await;
    let mut bytes = feed::encode_hello(FEED_TOKEN, "eager");
    bytes.extend(feed::encode_publish("onewrite", b"1"));
    bytes.extend(feed::encode_ping(3));
    f.send(&bytes).await;
    assert_eq!(f.read().await, Some(GatewayFrame::HelloOk));
    assert_eq!(f.read().await, Some(GatewayFrame::Pong(3)));
    assert_eq!(
        next_publication(&mut ws).await,
        ("onewrite".into(), 1, b"1".to_vec())
    );
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_feeds_on_one_topic_share_one_sequence_and_keep_their_order() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "shared").await;
    let mut a = Feed::open(server.ingest(), "a").await;
    let mut b = Feed::open(server.ingest(), "b").await;
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    for i in 0..300u32 {
        fa.extend(feed::encode_publish(
            "shared",
            &[b'a', (i >> 8) as u8, i as u8],
        ));
        fb.extend(feed::encode_publish(
            "shared",
            &[b'b', (i >> 8) as u8, i as u8],
        ));
    }
    let (ra, rb) = tokio::join!(
        async {
            a.send(&fa).await;
            a.barrier(1).await;
        },
        async {
            b.send(&fb).await;
            b.barrier(2).await;
        }
    );
    let _ = (ra, rb);
    let mut next = [0u32; 2];
    for want in 1..=600u64 {
        let (_, seq, p) = next_publication(&mut ws).await;
        assert_eq!(seq, want);
        let k = usize::from(p[0] == b'b');
        let i = u32::from(p[1]) << 8 | u32::from(p[2]);
        assert_eq!(i, next[k], "feed {} out of order", p[0] as char);
        next[k] += 1;
    }
    assert_eq!(next, [300, 300]);
    assert!(server.stop().await);
}
