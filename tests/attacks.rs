//! Attacks on the data plane, through real sockets against the real server:
//! frames RFC 6455 forbids, messages and fragment runs that never end,
//! floods of pings and subscriptions, and feeds that lie about their frame
//! lengths. Each test asserts the exact close code (or ERROR) PROTOCOL.md
//! gives, that the outcome is counted where herald counts it (the admin
//! `/metrics`), and that a well-behaved client on the same gateway still
//! receives publications afterwards.
//!
//! The metrics recorder is one per process and the tests run in parallel,
//! so a counter is checked to have grown by at least the attack's share.

mod common;

use std::time::Duration;

use common::*;
use herald::wire::client::{self, ServerMessage};
use herald::wire::feed as feedwire;
use herald::wire::ws::{self, OP_CONT};
use herald::Close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const CANARY: &str = "attack.canary";

/// A well-behaved subscriber of [`CANARY`]: the attack must not touch it.
struct Bystander {
    ws: Ws,
}

impl Bystander {
    async fn join(server: &TestServer) -> Bystander {
        let mut ws = ws_connect(server.ws(), &token("bystander", &[CANARY], &[])).await;
        subscribe(&mut ws, 1, CANARY).await;
        Bystander { ws }
    }

    /// Publishes through the operator API and checks that the bystander
    /// gets exactly that publication next.
    async fn still_served(&mut self, server: &TestServer) {
        let payload = b"still here".to_vec();
        let seq = api_publish(server.admin(), CANARY, &payload).await;
        let (topic, got_seq, got) = next_publication(&mut self.ws).await;
        assert_eq!((topic.as_str(), got_seq, got), (CANARY, seq, payload));
    }
}

/// The next close frame on a raw connection: `(code, reason, data frames
/// before it)`.
async fn close_of(raw: &mut RawWs) -> (u16, String, usize) {
    let mut before = 0;
    loop {
        match raw.read_frame().await {
            None => panic!("stream ended without a close frame ({before} frames before)"),
            Some((OP_CLOSE, p)) => {
                assert!(p.len() >= 2, "close frame without a code");
                let reason = String::from_utf8(p[2..].to_vec()).expect("utf-8 reason");
                return (u16::from_be_bytes([p[0], p[1]]), reason, before);
            }
            Some(_) => before += 1,
        }
    }
}

fn closes(metrics: &str, code: Close) -> f64 {
    metric_sum(
        metrics,
        "herald_closes_total",
        &[&format!("code=\"{}\"", code.label())],
    )
}

fn client_errors(metrics: &str, code: u16) -> f64 {
    metric_sum(
        metrics,
        "herald_client_errors_total",
        &[&format!("code=\"{code}\"")],
    )
}

/// Connects a raw client, lets `attack` send its bytes, and checks the
/// close frame it gets (code and reason) and the `herald_closes_total`
/// count for that code.
async fn expect_refusal(
    server: &TestServer,
    bytes: &[u8],
    code: Close,
    reason: &str,
) -> (u16, String) {
    let before = closes(&metrics_text(server.admin()).await, code);
    let mut raw = RawWs::connect(server.ws(), &token_all("attacker")).await;
    raw.send_raw(bytes).await;
    let (got, why, _) = close_of(&mut raw).await;
    assert_eq!((got, why.as_str()), (code.code(), reason), "{bytes:02x?}");
    let after = closes(&metrics_text(server.admin()).await, code);
    assert!(
        after >= before + 1.0,
        "closes {{code={code}}}: {before} -> {after}"
    );
    (got, why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frame_is_1002() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    expect_refusal(
        &server,
        &[0x82, 0x01, b'x'],
        Close::ProtocolError,
        "unmasked client frame",
    )
    .await;
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_and_reserved_opcodes_are_1002() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = ws::client_frame(OP_BINARY, true, MASK, b"x");
        f[0] |= rsv;
        expect_refusal(&server, &f, Close::ProtocolError, "reserved bits set").await;
    }
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let f = ws::client_frame(op, true, MASK, b"x");
        expect_refusal(&server, &f, Close::ProtocolError, "unknown opcode").await;
    }
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_over_125_bytes_or_fragmented_are_1002() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    for op in [OP_PING, OP_PONG, OP_CLOSE] {
        // 126 bytes announced with the 16-bit length form.
        let f = ws::client_frame(op, true, MASK, &[0x03; 126]);
        expect_refusal(&server, &f, Close::ProtocolError, "control frame too long").await;
        let f = ws::client_frame(op, false, MASK, b"");
        expect_refusal(
            &server,
            &f,
            Close::ProtocolError,
            "fragmented control frame",
        )
        .await;
    }
    // Between the fragments of a data message too.
    let mut f = ws::client_frame(OP_BINARY, false, MASK, b"a");
    f.extend(ws::client_frame(OP_PING, false, MASK, b"p"));
    expect_refusal(
        &server,
        &f,
        Close::ProtocolError,
        "fragmented control frame",
    )
    .await;
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_1009_from_its_header() {
    let server = start(|c| c.limits.max_message_bytes = 4096);
    let mut by = Bystander::join(&server).await;
    // Only the header of a 4097-byte frame: refused before any payload.
    let mut hdr = vec![0x82, 0xfe];
    hdr.extend_from_slice(&4097u16.to_be_bytes());
    hdr.extend_from_slice(&MASK);
    expect_refusal(&server, &hdr, Close::TooBig, "message too big").await;
    // A 64-bit length of 2^62: the same, nothing is allocated for it.
    let mut hdr = vec![0x82, 0xff];
    hdr.extend_from_slice(&(1u64 << 62).to_be_bytes());
    expect_refusal(&server, &hdr, Close::TooBig, "message too big").await;
    // Exactly the limit is fine (answered: not even an array, ERROR 400).
    let mut raw = RawWs::connect(server.ws(), &token_all("fits")).await;
    raw.send(OP_BINARY, &[0xc0; 4096]).await;
    let (op, body) = raw.read_frame().await.expect("an answer");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        client::decode_server_message(&body),
        Ok(ServerMessage::Error { code: 400, .. })
    ));
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_fragments_are_bounded_by_size_and_count() {
    let max = 64 * 1024;
    let server = start(|c| c.limits.max_message_bytes = max);
    let mut by = Bystander::join(&server).await;

    // Continuations of 1 KiB that never end: closed once the message would
    // pass the limit, having buffered at most the limit.
    let before = closes(&metrics_text(server.admin()).await, Close::TooBig);
    let mut raw = RawWs::connect(server.ws(), &token_all("frag-size")).await;
    raw.send_raw(&ws::client_frame(OP_BINARY, false, MASK, &[1; 1024]))
        .await;
    let mut sent = 1024;
    let writer = async {
        // The gateway stops reading once it closed: a write may then fail.
        for _ in 0..200 {
            let f = ws::client_frame(OP_CONT, false, MASK, &[1; 1024]);
            if raw.stream.write_all(&f).await.is_err() {
                break;
            }
            sent += 1024;
        }
    };
    tokio::time::timeout(T, writer)
        .await
        .expect("writes in time");
    let (code, reason, _) = close_of(&mut raw).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    assert!(sent > max, "the client sent {sent} bytes");

    // Empty continuations cost no size; their count is bounded instead
    // (max_message / 16 = 4096 frames).
    let mut raw = RawWs::connect(server.ws(), &token_all("frag-count")).await;
    let mut run = ws::client_frame(OP_BINARY, false, MASK, b"a");
    for _ in 0..ws::max_fragments(max) + 10 {
        run.extend(ws::client_frame(OP_CONT, false, MASK, b""));
    }
    let _ = tokio::time::timeout(T, raw.stream.write_all(&run)).await;
    let (code, reason, _) = close_of(&mut raw).await;
    assert_eq!((code, reason.as_str()), (1009, "too many fragments"));

    let after = closes(&metrics_text(server.admin()).await, Close::TooBig);
    assert!(
        after >= before + 2.0,
        "closes{{code=1009}}: {before} -> {after}"
    );
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_rate_limited_then_closed_4029() {
    // Defaults: 100/s, a burst of 200, 50 strikes.
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    let before = closes(&metrics_text(server.admin()).await, Close::RateLimited);
    let mut raw = RawWs::connect(server.ws(), &token_all("pinger")).await;
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend(ws::client_frame(OP_PING, true, MASK, &i.to_be_bytes()));
    }
    let _ = tokio::time::timeout(T, raw.stream.write_all(&flood)).await;
    let (code, reason, pongs) = close_of(&mut raw).await;
    assert_eq!((code, reason.as_str()), (4029, "rate limited"));
    // The burst, plus what the bucket refilled while the flood was read;
    // over the limit a ping is ignored (no pong), never queued.
    assert!((200..=260).contains(&pongs), "{pongs} pongs for 1000 pings");
    let after = closes(&metrics_text(server.admin()).await, Close::RateLimited);
    assert!(after >= before + 1.0);
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_from_a_client_that_never_reads_is_closed_4008() {
    // Without a rate limit every ping is answered; the pongs of a client
    // that does not read wait in its outbox, which is bounded.
    let server = start(|c| {
        c.limits.client_msgs_per_s = 0;
        c.limits.client_burst = 0;
        c.limits.max_outbox_bytes = 64 * 1024;
        c.limits.send_queue_bytes = 16 * 1024;
    });
    let mut by = Bystander::join(&server).await;
    let before = closes(&metrics_text(server.admin()).await, Close::SlowConsumer);
    let mut raw = RawWs::connect(server.ws(), &token_all("deaf-pinger")).await;
    let mut flood = Vec::new();
    for _ in 0..40_000 {
        flood.extend(ws::client_frame(OP_PING, true, MASK, &[7; 125]));
    }
    // 5.3 MB of pings, 5 MB of pongs: far beyond the kernel's buffers and
    // the 64 KiB outbox. The gateway keeps reading while it cannot write.
    let writer = tokio::time::timeout(Duration::from_secs(20), raw.stream.write_all(&flood)).await;
    assert!(writer.is_ok(), "the gateway kept reading the flood");
    let closed = wait_until(T, || async {
        closes(&metrics_text(server.admin()).await, Close::SlowConsumer) >= before + 1.0
    })
    .await;
    assert!(closed, "closed 4008");
    // What the kernel held is delivered, then the close frame.
    let (code, reason, pongs) = close_of(&mut raw).await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    assert!(pongs < 40_000, "{pongs} pongs");
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_flood_meets_the_subscription_limit_then_the_rate_limit() {
    let server = start(|c| c.limits.max_subscriptions = 10);
    let mut by = Bystander::join(&server).await;
    let m0 = metrics_text(server.admin()).await;
    let mut raw = RawWs::connect(server.ws(), &token_all("subscriber")).await;
    let mut flood = Vec::new();
    for i in 1..=400u32 {
        let req = client::encode_subscribe(i, &format!("flood.t{i}"), None);
        flood.extend(ws::client_frame(OP_BINARY, true, MASK, &req));
    }
    let _ = tokio::time::timeout(T, raw.stream.write_all(&flood)).await;
    let (mut replies, mut over_limit, mut limited) = (0, 0, 0);
    let code = loop {
        match raw.read_frame().await {
            None => panic!("stream ended without a close frame"),
            Some((OP_CLOSE, p)) => break u16::from_be_bytes([p[0], p[1]]),
            Some((OP_BINARY, body)) => match client::decode_server_message(&body) {
                Ok(ServerMessage::Reply { .. }) => replies += 1,
                Ok(ServerMessage::Error { code: 413, .. }) => over_limit += 1,
                Ok(ServerMessage::Error { code: 429, .. }) => limited += 1,
                other => panic!("unexpected {other:?}"),
            },
            Some(other) => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(code, 4029);
    assert_eq!(replies, 10, "limits.max_subscriptions");
    assert!(over_limit >= 150, "{over_limit} × 413");
    // 50 strikes are answered 429; the 51st closes.
    assert_eq!(limited, 50);
    let m1 = metrics_text(server.admin()).await;
    assert!(client_errors(&m1, 413) >= client_errors(&m0, 413) + over_limit as f64);
    assert!(client_errors(&m1, 429) >= client_errors(&m0, 429) + 50.0);
    assert!(closes(&m1, Close::RateLimited) >= closes(&m0, Close::RateLimited) + 1.0);
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_that_is_not_utf8_is_1007() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[b'o', b'k', 0xc3, 0x28]);
    let f = ws::client_frame(OP_CLOSE, true, MASK, &payload);
    expect_refusal(
        &server,
        &f,
        Close::InvalidPayload,
        "close reason is not utf-8",
    )
    .await;
    // An invalid close code is a protocol error.
    let f = ws::client_frame(OP_CLOSE, true, MASK, &1005u16.to_be_bytes());
    expect_refusal(&server, &f, Close::ProtocolError, "invalid close code").await;
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_is_1003() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    let f = ws::client_frame(OP_TEXT, true, MASK, b"hello");
    expect_refusal(
        &server,
        &f,
        Close::UnsupportedData,
        "text frames are not supported",
    )
    .await;
    by.still_served(&server).await;
    server.stop().await;
}

/// HELLO accepted, then `bytes`, then the feed closes its side.
async fn lying_feed(server: &TestServer, bytes: &[u8]) -> Feed {
    let mut liar = Feed::open(server.ingest(), "liar").await;
    liar.send(bytes).await;
    liar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_that_declares_more_than_it_sends_publishes_nothing() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    let mut honest = Feed::open(server.ingest(), "honest").await;

    // A whole PUBLISH to the canary topic, but announced 100 bytes longer,
    // then the feed hangs up: the frame never completes.
    let frame = feedwire::encode_publish(CANARY, b"half");
    let mut lie = frame.clone();
    let declared = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) + 100;
    lie[..4].copy_from_slice(&declared.to_be_bytes());
    let mut liar = lying_feed(&server, &lie).await;
    liar.stream.shutdown().await.expect("half-close");
    // No ERROR: the feed is gone (PROTOCOL.md §2); the gateway closes too.
    assert_eq!(liar.read().await, None);

    // Nothing was published: the honest feed's publication is seq 1.
    honest.publish(CANARY, b"whole").await;
    honest.barrier(1).await;
    let (_, seq, payload) = next_publication(&mut by.ws).await;
    assert_eq!((seq, payload.as_slice()), (1, &b"whole"[..]));
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_that_declares_a_huge_length_gets_413_at_once() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    let mut honest = Feed::open(server.ingest(), "honest").await;
    let m0 = metrics_text(server.admin()).await;
    for declared in [u32::MAX, 1024 * 1024 + 1] {
        // Only the four length bytes: refused before any body is read or
        // buffered.
        let mut liar = lying_feed(&server, &declared.to_be_bytes()).await;
        let (code, message) = liar.expect_error_then_close().await;
        assert_eq!(
            (code, message.as_str()),
            (413, "frame over the maximum size")
        );
    }
    // L = 0 is malformed.
    let mut liar = lying_feed(&server, &0u32.to_be_bytes()).await;
    assert_eq!(liar.expect_error_then_close().await.0, 400);
    let m1 = metrics_text(server.admin()).await;
    let errs =
        |m: &str, c: &str| metric_sum(m, "herald_ingest_errors_total", &[&format!("code=\"{c}\"")]);
    assert!(errs(&m1, "413") >= errs(&m0, "413") + 2.0);
    assert!(errs(&m1, "400") >= errs(&m0, "400") + 1.0);

    // The other feed was not disturbed: its publication arrives as seq 1.
    honest.publish(CANARY, b"fine").await;
    honest.barrier(2).await;
    let (_, seq, payload) = next_publication(&mut by.ws).await;
    assert_eq!((seq, payload.as_slice()), (1, &b"fine"[..]));
    by.still_served(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_cut_mid_body_after_good_frames_keeps_the_good_ones() {
    let server = start(|_| {});
    let mut by = Bystander::join(&server).await;
    // Two whole frames, then the first half of a third, then EOF.
    let mut bytes = feedwire::encode_publish(CANARY, b"one");
    bytes.extend(feedwire::encode_publish(CANARY, b"two"));
    let third = feedwire::encode_publish(CANARY, b"three");
    bytes.extend_from_slice(&third[..third.len() / 2]);
    let mut liar = lying_feed(&server, &bytes).await;
    liar.stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, liar.stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no ERROR for a feed that hung up");
    let got = publications(&mut by.ws, 2).await;
    assert_eq!(got, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    // The half frame is not published: the next publication is seq 3.
    let seq = api_publish(server.admin(), CANARY, b"after").await;
    assert_eq!(seq, 3);
    assert_eq!(next_publication(&mut by.ws).await.1, 3);
    server.stop().await;
}

/// The Autobahn echo route takes no token, so it must not exist in a normal
/// build: `/echo` is a path like any other (404).
#[cfg(not(feature = "autobahn"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_route_without_the_autobahn_feature() {
    let server = start(|_| {});
    let (resp, _) = raw_upgrade(server.ws(), "/echo", &upgrade_headers()).await;
    assert_eq!(resp.status, 404);
    server.stop().await;
}
