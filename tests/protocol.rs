//! The client protocol after the upgrade (PROTOCOL.md §1): requests,
//! replies, errors, close codes, recovery, REFRESH, expiry, rate limiting.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald::auth::token::now_unix;
use herald::wire::client::{self, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_replies_then_publications_follow_in_order() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token("alice", &["md.*"], &[])).await;
    send_bin(&mut ws, client::encode_subscribe(7, "md.BTC-USD", None)).await;
    let epoch = match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 7,
            seq: Some(0),
            epoch: Some(e),
            recovered: Some(false),
        } => e,
        other => panic!("unexpected {other:?}"),
    };
    assert!(!epoch.is_empty());

    for i in 1..=5u64 {
        assert_eq!(
            api_publish(server.admin(), "md.BTC-USD", format!("p{i}").as_bytes()).await,
            i
        );
    }
    for i in 1..=5u64 {
        let (topic, seq, payload) = next_publication(&mut ws).await;
        assert_eq!((topic.as_str(), seq), ("md.BTC-USD", i));
        assert_eq!(payload, format!("p{i}").as_bytes());
    }

    // A second subscriber arriving later starts at the current seq.
    let mut late = ws_connect(server.ws(), &token("bob", &["md.*"], &[])).await;
    let (seq, epoch2) = subscribe(&mut late, 1, "md.BTC-USD").await;
    assert_eq!((seq, epoch2.as_str()), (5, epoch.as_str()));
    api_publish(server.admin(), "md.BTC-USD", b"p6").await;
    assert_eq!(next_publication(&mut late).await.1, 6);
    assert_eq!(next_publication(&mut ws).await.1, 6);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_replies_and_stops_publications() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    let mut witness = ws_connect(server.ws(), &token_all("bob")).await;
    subscribe(&mut ws, 1, "news").await;
    subscribe(&mut witness, 1, "news").await;
    api_publish(server.admin(), "news", b"a").await;
    assert_eq!(next_publication(&mut ws).await.1, 1);
    assert_eq!(next_publication(&mut witness).await.1, 1);

    send_bin(&mut ws, client::encode_unsubscribe(2, "news")).await;
    match next_server(&mut ws).await {
        ServerMessage::Reply { id: 2, .. } => {}
        other => panic!("expected the UNSUBSCRIBE reply, got {other:?}"),
    }
    api_publish(server.admin(), "news", b"b").await;
    // The witness got it, so it was fanned out; the unsubscribed one must
    // not get it: its next message is the reply to this PING.
    assert_eq!(next_publication(&mut witness).await.1, 2);
    ping(&mut ws, 3).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_subscribe_and_unsubscribe_when_not_subscribed_are_409() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "t1").await;
    send_bin(&mut ws, client::encode_subscribe(2, "t1", None)).await;
    expect_error(&mut ws, 2, 409).await;
    send_bin(&mut ws, client::encode_unsubscribe(3, "t2")).await;
    expect_error(&mut ws, 3, 409).await;
    // Still subscribed once: a publication arrives once.
    api_publish(server.admin(), "t1", b"x").await;
    assert_eq!(next_publication(&mut ws).await.1, 1);
    ping(&mut ws, 4).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_outside_topics_claim_is_403() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token("alice", &["md.*", "news"], &[])).await;
    for (id, topic) in [(1, "secret"), (2, "md"), (3, "newsroom"), (4, "mdx.a")] {
        send_bin(&mut ws, client::encode_subscribe(id, topic, None)).await;
        expect_error(&mut ws, id, 403).await;
    }
    subscribe(&mut ws, 5, "md.eu.SAP").await;
    subscribe(&mut ws, 6, "news").await;

    // No topics claim and no configured default: deny.
    let mut none = ws_connect(
        server.ws(),
        &herald::auth::token::mint_hs256(SECRET, "bob", now_unix() + 600, None, None),
    )
    .await;
    send_bin(&mut none, client::encode_subscribe(1, "news", None)).await;
    expect_error(&mut none, 1, 403).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_is_413() {
    let server = start(|c| c.limits.max_subscriptions = 2);
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "a").await;
    subscribe(&mut ws, 2, "b").await;
    send_bin(&mut ws, client::encode_subscribe(3, "c", None)).await;
    expect_error(&mut ws, 3, 413).await;
    // Unsubscribing frees a slot.
    send_bin(&mut ws, client::encode_unsubscribe(4, "a")).await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply { id: 4, .. }
    ));
    subscribe(&mut ws, 5, "c").await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_a_reply_with_its_id() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    send_bin(&mut ws, client::encode_ping(42)).await;
    match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 42,
            seq: None,
            epoch: None,
            recovered: None,
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    // The largest uint32 id is echoed too.
    ping(&mut ws, u32::MAX).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_allowed_by_pub_claim_is_sequenced_and_delivered() {
    let server = start(|_| {});
    let mut publisher = ws_connect(server.ws(), &token("pubr", &[], &["chat.*"])).await;
    let mut sub = ws_connect(server.ws(), &token("subr", &["chat.*"], &[])).await;
    subscribe(&mut sub, 1, "chat.room1").await;

    for i in 1..=3u64 {
        send_bin(
            &mut publisher,
            client::encode_publish(10 + i as u32, "chat.room1", &[i as u8; 3]),
        )
        .await;
        match next_server(&mut publisher).await {
            ServerMessage::Reply {
                id, seq: Some(seq), ..
            } if id == 10 + i as u32 => assert_eq!(seq, i),
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 1..=3u64 {
        let (topic, seq, payload) = next_publication(&mut sub).await;
        assert_eq!(
            (topic.as_str(), seq, payload),
            ("chat.room1", i, vec![i as u8; 3])
        );
    }
    // Publishing does not subscribe the publisher.
    ping(&mut publisher, 99).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_not_allowed_is_403_and_publishes_nothing() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token("alice", &["*"], &["chat.*"])).await;
    subscribe(&mut ws, 1, "news").await;
    send_bin(&mut ws, client::encode_publish(2, "news", b"nope")).await;
    expect_error(&mut ws, 2, 403).await;
    // Nothing was sequenced: the next publication is seq 1.
    assert_eq!(api_publish(server.admin(), "news", b"yes").await, 1);
    assert_eq!(next_publication(&mut ws).await.1, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_gets_error_400_and_the_connection_stays_usable() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;

    // Not an array: id 0.
    send_bin(&mut ws, vec![0x05]).await;
    expect_error(&mut ws, 0, 400).await;
    // Not MessagePack at all.
    send_bin(&mut ws, vec![0xc1, 0xff, 0x00]).await;
    expect_error(&mut ws, 0, 400).await;
    // Empty message.
    send_bin(&mut ws, vec![]).await;
    expect_error(&mut ws, 0, 400).await;
    // A SUBSCRIBE whose topic is not a string: the id could be read.
    send_bin(&mut ws, vec![0x93, 0x01, 0x07, 0x2a]).await;
    expect_error(&mut ws, 7, 400).await;
    // An invalid topic name.
    send_bin(&mut ws, client::encode_subscribe(8, "bad topic", None)).await;
    expect_error(&mut ws, 8, 400).await;
    // Unknown request type.
    send_bin(&mut ws, vec![0x92, 0x63, 0x09]).await;
    expect_error(&mut ws, 9, 400).await;

    ping(&mut ws, 10).await;
    subscribe(&mut ws, 11, "ok").await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_trailing_elements_and_option_keys_are_ignored() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    // [3, 5, "extra", {}]
    send_bin(
        &mut ws,
        vec![0x94, 0x03, 0x05, 0xa5, b'e', b'x', b't', b'r', b'a', 0x80],
    )
    .await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply { id: 5, .. }
    ));
    // [1, 6, "t", {"future": true}]
    let mut m = vec![0x94, 0x01, 0x06, 0xa1, b't', 0x81, 0xa6];
    m.extend_from_slice(b"future");
    m.push(0xc3);
    send_bin(&mut ws, m).await;
    match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 6,
            recovered: Some(false),
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_closes_with_1003() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    ws.send(Message::Text("[3, 1]".into())).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, (1003, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_frame_closes_with_1002() {
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    // A valid PING request, but in an unmasked frame.
    let body = client::encode_ping(1);
    let mut frame = vec![0x82, body.len() as u8];
    frame.extend_from_slice(&body);
    ws.send_raw(&frame).await;
    assert_eq!(ws.expect_close().await, (1002, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_with_1009() {
    let server = start(|c| c.limits.max_message_bytes = 1024);
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    // Just under the limit is fine (an ERROR, not a close).
    send_bin(&mut ws, vec![0xc1; 1000]).await;
    expect_error(&mut ws, 0, 400).await;
    send_bin(&mut ws, vec![0u8; 2000]).await;
    assert_eq!(expect_close(&mut ws).await, (1009, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fragmented_message_closes_with_1009() {
    let server = start(|c| c.limits.max_message_bytes = 1024);
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    let part = vec![0u8; 600];
    let first = herald::wire::ws::client_frame(OP_BINARY, false, [1, 2, 3, 4], &part);
    let cont = herald::wire::ws::client_frame(0x0, true, [1, 2, 3, 4], &part);
    ws.send_raw(&first).await;
    ws.send_raw(&cont).await;
    assert_eq!(ws.expect_close().await, (1009, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_request_is_reassembled() {
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    let body = client::encode_ping(77);
    let (a, b) = body.split_at(2);
    ws.send_raw(&herald::wire::ws::client_frame(
        OP_BINARY,
        false,
        [9, 9, 9, 9],
        a,
    ))
    .await;
    // A control frame may come between fragments.
    ws.send(OP_PING, b"hi").await;
    ws.send_raw(&herald::wire::ws::client_frame(0x0, true, [7, 7, 7, 7], b))
        .await;
    assert_eq!(ws.read_frame().await, Some((OP_PONG, b"hi".to_vec())));
    let (op, payload) = ws.read_frame().await.expect("reply");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        client::decode_server_message(&payload).unwrap(),
        ServerMessage::Reply { id: 77, .. }
    ));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ping_gets_pong_with_same_payload() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_echoed() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    subscribe(&mut ws, 1, "t").await;
    send_close(&mut ws, 1000).await;
    assert_eq!(expect_close(&mut ws).await, (1000, 0));
    // Then the server ends the TCP connection.
    let end = tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws))
        .await
        .expect("end in time");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    let s = &server;
    assert!(wait_until(T, || async move { s.connections() == 0 }).await);
    assert!(server.stop().await);
}

/// Reads `count` publications of `topic` and checks their seqs.
async fn expect_seqs(ws: &mut Ws, topic: &str, seqs: std::ops::RangeInclusive<u64>) {
    for want in seqs {
        let (t, seq, payload) = next_publication(ws).await;
        assert_eq!((t.as_str(), seq), (topic, want));
        assert_eq!(payload, format!("m{want}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_replays_exactly_the_missed_publications_then_live() {
    let server = start(|_| {});
    let tok = token_all("alice");
    let mut ws = ws_connect(server.ws(), &tok).await;
    let (seq0, epoch) = subscribe(&mut ws, 1, "rec").await;
    assert_eq!(seq0, 0);
    for i in 1..=3 {
        api_publish(server.admin(), "rec", format!("m{i}").as_bytes()).await;
    }
    expect_seqs(&mut ws, "rec", 1..=3).await;
    drop(ws);

    for i in 4..=8 {
        api_publish(server.admin(), "rec", format!("m{i}").as_bytes()).await;
    }
    let mut ws = ws_connect(server.ws(), &tok).await;
    send_bin(
        &mut ws,
        client::encode_subscribe(2, "rec", Some((3, &epoch))),
    )
    .await;
    match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 2,
            seq: Some(8),
            epoch: Some(e),
            recovered: Some(true),
        } => assert_eq!(e, epoch),
        other => panic!("expected a recovered reply at seq 8, got {other:?}"),
    }
    expect_seqs(&mut ws, "rec", 4..=8).await;
    for i in 9..=10 {
        api_publish(server.admin(), "rec", format!("m{i}").as_bytes()).await;
    }
    expect_seqs(&mut ws, "rec", 9..=10).await;
    // No duplicate afterwards.
    ping(&mut ws, 3).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_nothing_missed_replays_nothing() {
    let server = start(|_| {});
    let tok = token_all("alice");
    let mut ws = ws_connect(server.ws(), &tok).await;
    let (_, epoch) = subscribe(&mut ws, 1, "rec0").await;
    api_publish(server.admin(), "rec0", b"m1").await;
    expect_seqs(&mut ws, "rec0", 1..=1).await;
    drop(ws);
    let mut ws = ws_connect(server.ws(), &tok).await;
    send_bin(
        &mut ws,
        client::encode_subscribe(2, "rec0", Some((1, &epoch))),
    )
    .await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply {
            id: 2,
            seq: Some(1),
            recovered: Some(true),
            ..
        }
    ));
    api_publish(server.admin(), "rec0", b"m2").await;
    expect_seqs(&mut ws, "rec0", 2..=2).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_from_too_old_seq_is_not_recovered_and_goes_live() {
    let server = start(|c| c.hub.history_size = 4);
    let tok = token_all("alice");
    let mut ws = ws_connect(server.ws(), &tok).await;
    let (_, epoch) = subscribe(&mut ws, 1, "old").await;
    api_publish(server.admin(), "old", b"m1").await;
    expect_seqs(&mut ws, "old", 1..=1).await;
    drop(ws);
    for i in 2..=11 {
        api_publish(server.admin(), "old", format!("m{i}").as_bytes()).await;
    }
    let mut ws = ws_connect(server.ws(), &tok).await;
    send_bin(
        &mut ws,
        client::encode_subscribe(2, "old", Some((1, &epoch))),
    )
    .await;
    match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 2,
            seq: Some(11),
            epoch: Some(e),
            recovered: Some(false),
        } => assert_eq!(e, epoch),
        other => panic!("expected a non-recovered reply at seq 11, got {other:?}"),
    }
    api_publish(server.admin(), "old", b"m12").await;
    expect_seqs(&mut ws, "old", 12..=12).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_another_epoch_is_not_recovered() {
    let server = start(|_| {});
    let tok = token_all("alice");
    let mut ws = ws_connect(server.ws(), &tok).await;
    let (_, epoch) = subscribe(&mut ws, 1, "ep").await;
    for i in 1..=2 {
        api_publish(server.admin(), "ep", format!("m{i}").as_bytes()).await;
    }
    expect_seqs(&mut ws, "ep", 1..=2).await;
    drop(ws);
    api_publish(server.admin(), "ep", b"m3").await;
    let mut ws = ws_connect(server.ws(), &tok).await;
    let wrong = format!("{epoch}-other");
    send_bin(
        &mut ws,
        client::encode_subscribe(2, "ep", Some((1, &wrong))),
    )
    .await;
    match next_server(&mut ws).await {
        ServerMessage::Reply {
            id: 2,
            seq: Some(3),
            epoch: Some(e),
            recovered: Some(false),
        } => assert_eq!(e, epoch, "the reply carries the topic's current epoch"),
        other => panic!("expected a non-recovered reply, got {other:?}"),
    }
    api_publish(server.admin(), "ep", b"m4").await;
    expect_seqs(&mut ws, "ep", 4..=4).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_since_ahead_of_the_topic_is_not_recovered() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    let (_, epoch) = subscribe(&mut ws, 1, "ahead").await;
    api_publish(server.admin(), "ahead", b"m1").await;
    expect_seqs(&mut ws, "ahead", 1..=1).await;
    let mut ws2 = ws_connect(server.ws(), &token_all("alice")).await;
    send_bin(
        &mut ws2,
        client::encode_subscribe(2, "ahead", Some((50, &epoch))),
    )
    .await;
    assert!(matches!(
        next_server(&mut ws2).await,
        ServerMessage::Reply {
            id: 2,
            seq: Some(1),
            recovered: Some(false),
            ..
        }
    ));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_same_sub_ok_other_sub_403_invalid_401() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token("alice", &["a.*"], &[])).await;

    send_bin(
        &mut ws,
        client::encode_refresh(1, &token("bob", &["*"], &[])),
    )
    .await;
    expect_error(&mut ws, 1, 403).await;
    send_bin(&mut ws, client::encode_refresh(2, "garbage")).await;
    expect_error(&mut ws, 2, 401).await;
    let expired = token_exp("alice", now_unix() - 600, &["*"], &[]);
    send_bin(&mut ws, client::encode_refresh(3, &expired)).await;
    expect_error(&mut ws, 3, 401).await;
    let forged =
        herald::auth::token::mint_hs256("wrong", "alice", now_unix() + 600, Some(&["*"]), None);
    send_bin(&mut ws, client::encode_refresh(4, &forged)).await;
    expect_error(&mut ws, 4, 401).await;
    // None of those changed the claims.
    send_bin(&mut ws, client::encode_subscribe(5, "b.x", None)).await;
    expect_error(&mut ws, 5, 403).await;

    // A valid token for the same sub: REPLY, and its claims apply next.
    send_bin(
        &mut ws,
        client::encode_refresh(6, &token("alice", &["a.*", "b.*"], &[])),
    )
    .await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply { id: 6, .. }
    ));
    subscribe(&mut ws, 7, "b.x").await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_with_4001() {
    let server = start(|c| c.timeouts.tick_ms = 50);
    let mut ws = ws_connect(
        server.ws(),
        &token_exp("alice", now_unix() + 2, &["*"], &[]),
    )
    .await;
    subscribe(&mut ws, 1, "t").await;
    let (code, _) = tokio::time::timeout(Duration::from_secs(8), expect_close_patiently(&mut ws))
        .await
        .expect("closed within the token's lifetime plus slack");
    assert_eq!(code, 4001);
    assert!(server.stop().await);
}

/// Like `expect_close`, but waits as long as the caller's timeout allows.
async fn expect_close_patiently(ws: &mut Ws) -> (u16, usize) {
    let mut skipped = 0;
    loop {
        match next_msg_within(ws, Duration::from_secs(3600)).await {
            Some(Message::Close(Some(f))) => return (u16::from(f.code), skipped),
            Some(Message::Close(None)) => panic!("close without a code"),
            Some(_) => skipped += 1,
            None => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_before_expiry_keeps_the_connection_open() {
    let server = start(|c| c.timeouts.tick_ms = 50);
    let old_exp = now_unix() + 2;
    let mut ws = ws_connect(server.ws(), &token_exp("alice", old_exp, &["*"], &[])).await;
    send_bin(
        &mut ws,
        client::encode_refresh(1, &token("alice", &["*"], &[])),
    )
    .await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply { id: 1, .. }
    ));

    // A failed REFRESH afterwards keeps the new expiry.
    send_bin(
        &mut ws,
        client::encode_refresh(4, &token("mallory", &["*"], &[])),
    )
    .await;
    expect_error(&mut ws, 4, 403).await;

    // Wait until the original token is well past its expiry.
    while now_unix() < old_exp + 2 {
        if let Some(m) = next_msg_within(&mut ws, Duration::from_millis(200)).await {
            panic!("unexpected message while waiting: {m:?}");
        }
    }
    ping(&mut ws, 5).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refresh_keeps_the_old_expiry() {
    let server = start(|c| c.timeouts.tick_ms = 50);
    let mut ws = ws_connect(
        server.ws(),
        &token_exp("alice", now_unix() + 2, &["*"], &[]),
    )
    .await;
    send_bin(
        &mut ws,
        client::encode_refresh(1, &token("bob", &["*"], &[])),
    )
    .await;
    expect_error(&mut ws, 1, 403).await;
    send_bin(&mut ws, client::encode_refresh(2, "x.y.z")).await;
    expect_error(&mut ws, 2, 401).await;
    let (code, _) = tokio::time::timeout(Duration::from_secs(8), expect_close_patiently(&mut ws))
        .await
        .expect("closed at the old expiry");
    assert_eq!(code, 4001);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_then_closes_with_4029() {
    let server = start(|c| {
        c.limits.client_msgs_per_s = 5;
        c.limits.client_burst = 5;
        c.limits.rate_limit_strikes = 3;
    });
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    for id in 1..=30 {
        // The server may close before we are done sending.
        if ws
            .send(Message::Binary(client::encode_ping(id).into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut replies = 0;
    let mut limited = 0;
    let code = loop {
        match next_msg(&mut ws).await {
            Message::Binary(b) => match client::decode_server_message(&b).unwrap() {
                ServerMessage::Reply { .. } => {
                    assert_eq!(limited, 0, "no REPLY after the first 429 in a burst");
                    replies += 1;
                }
                ServerMessage::Error { code: 429, .. } => limited += 1,
                other => panic!("unexpected {other:?}"),
            },
            Message::Close(Some(f)) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4029);
    assert!(
        (5..=6).contains(&replies),
        "burst of 5 answered, got {replies}"
    );
    assert_eq!(limited, 3, "one 429 per strike before the close");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refills_over_time() {
    let server = start(|c| {
        c.limits.client_msgs_per_s = 20;
        c.limits.client_burst = 2;
        c.limits.rate_limit_strikes = 100;
    });
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    // Paced under the rate: never limited.
    for id in 1..=10 {
        ping(&mut ws, id).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_over_125_bytes_closes_with_1002() {
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    ws.send(OP_PING, &[0u8; 126]).await;
    assert_eq!(ws.expect_close().await, (1002, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_a_reserved_code_closes_with_1002() {
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    // 1005 must never be sent on the wire (RFC 6455 §7.4.1).
    ws.send(OP_CLOSE, &1005u16.to_be_bytes()).await;
    assert_eq!(ws.expect_close().await, (1002, 0));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_split_into_single_bytes_is_decoded() {
    use tokio::io::AsyncWriteExt;
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    let frame = herald::wire::ws::client_frame(
        OP_BINARY,
        true,
        [1, 2, 3, 4],
        &client::encode_subscribe(1, "bytes", None),
    );
    for b in frame {
        ws.stream.write_all(&[b]).await.unwrap();
        ws.stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (op, body) = ws.read_frame().await.expect("reply");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        client::decode_server_message(&body).unwrap(),
        ServerMessage::Reply {
            id: 1,
            seq: Some(0),
            ..
        }
    ));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let server = start(|_| {});
    let mut ws = RawWs::connect(server.ws(), &token_all("alice")).await;
    let mut bytes = Vec::new();
    for req in [
        client::encode_subscribe(1, "pipe", None),
        client::encode_subscribe(2, "pipe", None),
        client::encode_ping(3),
        client::encode_unsubscribe(4, "pipe"),
        client::encode_unsubscribe(5, "pipe"),
        client::encode_subscribe(6, "pipe", None),
    ] {
        bytes.extend(herald::wire::ws::client_frame(
            OP_BINARY,
            true,
            [5, 6, 7, 8],
            &req,
        ));
    }
    ws.send_raw(&bytes).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let (op, body) = ws.read_frame().await.expect("answer");
        assert_eq!(op, OP_BINARY);
        got.push(match client::decode_server_message(&body).unwrap() {
            ServerMessage::Reply { id, .. } => (id, 0),
            ServerMessage::Error { id, code, .. } => (id, code),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(got, [(1, 0), (2, 409), (3, 0), (4, 0), (5, 409), (6, 0)]);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_defaults_apply_to_tokens_without_topics_or_pub_claims() {
    let server = start(|c| {
        c.auth.default_topics = vec!["public.*".into()];
        c.auth.default_publish = vec!["echo".into()];
    });
    let bare = herald::auth::token::mint_hs256(SECRET, "anon", now_unix() + 600, None, None);
    let mut ws = ws_connect(server.ws(), &bare).await;
    subscribe(&mut ws, 1, "public.news").await;
    send_bin(&mut ws, client::encode_subscribe(2, "private.x", None)).await;
    expect_error(&mut ws, 2, 403).await;
    send_bin(&mut ws, client::encode_publish(3, "echo", b"hi")).await;
    assert!(matches!(
        next_server(&mut ws).await,
        ServerMessage::Reply {
            id: 3,
            seq: Some(1),
            ..
        }
    ));
    send_bin(&mut ws, client::encode_publish(4, "public.news", b"hi")).await;
    expect_error(&mut ws, 4, 403).await;

    // A present (even empty) claim replaces the default.
    let mut narrow = ws_connect(server.ws(), &token("narrow", &[], &[])).await;
    send_bin(
        &mut narrow,
        client::encode_subscribe(1, "public.news", None),
    )
    .await;
    expect_error(&mut narrow, 1, 403).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_names_up_to_128_bytes_are_valid() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.ws(), &token_all("alice")).await;
    let longest = format!("a.B-c_d:{}", "9".repeat(120));
    assert_eq!(longest.len(), 128);
    subscribe(&mut ws, 1, &longest).await;
    let too_long = "x".repeat(129);
    send_bin(&mut ws, client::encode_subscribe(2, &too_long, None)).await;
    expect_error(&mut ws, 2, 400).await;
    for (id, bad) in [(3, "a/b"), (4, "é"), (5, "a b"), (6, "a*")] {
        send_bin(&mut ws, client::encode_subscribe(id, bad, None)).await;
        expect_error(&mut ws, id, 400).await;
    }
    assert!(server.stop().await);
}
