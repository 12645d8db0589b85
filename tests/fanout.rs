//! Fan-out at a realistic scale, and what happens to a consumer that cannot
//! keep up.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use herald::wire::client;
use tokio::sync::watch;

fn payload(topic: &str, i: u64) -> Vec<u8> {
    let mut p = format!("{topic}|{i:06}|").into_bytes();
    p.extend((0..64u64).map(|k| (i.wrapping_mul(31).wrapping_add(k)) as u8));
    p
}

async fn connect_and_subscribe(
    addr: std::net::SocketAddr,
    n: usize,
    topic: &'static str,
) -> Vec<Ws> {
    let tok = token("fan", &["fan.*"], &[]);
    join_all((0..n).map(|_| {
        let tok = tok.clone();
        async move {
            let mut ws = ws_connect(addr, &tok).await;
            let (seq, _) = subscribe(&mut ws, 1, topic).await;
            assert_eq!(seq, 0, "fresh topic");
            ws
        }
    }))
    .await
}

/// Reads `count` publications of `topic` with seqs 1..=count and the exact
/// payloads, then checks nothing else is queued.
async fn read_all(mut ws: Ws, topic: &'static str, count: u64) -> Result<(), String> {
    for want in 1..=count {
        let (t, seq, p) = next_publication(&mut ws).await;
        if t != topic || seq != want {
            return Err(format!("expected {topic}#{want}, got {t}#{seq}"));
        }
        if p != payload(topic, want) {
            return Err(format!("{topic}#{want}: payload differs"));
        }
    }
    ping(&mut ws, 2).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_in_order() {
    const A: &str = "fan.a";
    const B: &str = "fan.b";
    const N: u64 = 500;
    let server = start(|_| {});
    let addr = server.ws();

    let a = connect_and_subscribe(addr, 300, A).await;
    let b = connect_and_subscribe(addr, 50, B).await;

    let stats = api(server.admin(), "GET", "/api/stats", Some(API_KEY), b"")
        .await
        .json();
    assert_eq!(stats["connections"], 350, "{stats}");
    let shards = stats["shards"].as_array().expect("per-shard stats");
    assert_eq!(shards.len(), 2, "{stats}");
    for s in shards {
        assert!(
            s["connections"].as_u64().unwrap() > 0,
            "both shards take connections: {stats}"
        );
    }

    let readers: Vec<_> = a
        .into_iter()
        .map(|ws| tokio::spawn(read_all(ws, A, N)))
        .chain(b.into_iter().map(|ws| tokio::spawn(read_all(ws, B, N))))
        .collect();

    let mut feed = Feed::open(server.ingest(), "fanout-test").await;
    let mut frames = Vec::new();
    for i in 1..=N {
        frames.extend(herald::wire::feed::encode_publish(A, &payload(A, i)));
        frames.extend(herald::wire::feed::encode_publish(B, &payload(B, i)));
    }
    feed.send(&frames).await;
    feed.barrier(1).await;

    let results = tokio::time::timeout(Duration::from_secs(60), join_all(readers))
        .await
        .expect("every subscriber finished in time");
    let failures: Vec<String> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("subscriber {i}: {e}")),
            Err(e) => Some(format!("subscriber {i} panicked: {e}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The next API publication continues both sequences.
    assert_eq!(api_publish(server.admin(), A, b"x").await, N + 1);
    assert_eq!(api_publish(server.admin(), B, b"x").await, N + 1);
    assert!(server.stop().await);
}

/// A socket with a small receive buffer, so the kernel soaks up little of
/// what the gateway sends to a client that does not read.
async fn small_buffer_stream(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let sa: socket2::SockAddr = addr.into();
    tokio::task::spawn_blocking(move || {
        s.connect(&sa).unwrap();
        s.set_nonblocking(true).unwrap();
        let std: std::net::TcpStream = s.into();
        std
    })
    .await
    .map(|std| tokio::net::TcpStream::from_std(std).unwrap())
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4008_and_the_fast_one_gets_everything() {
    const TOPIC: &str = "big";
    const N: u64 = 500;
    const SIZE: usize = 16 * 1024;
    let server = start(|c| {
        c.limits.max_outbox_bytes = 64 * 1024;
        // Long enough that the close frame is still there when the slow
        // client finally reads.
        c.timeouts.close_ms = 30_000;
        c.timeouts.drain_ms = 5_000;
    });
    let dropped_before = metric_sum(
        &metrics_text(server.admin()).await,
        "herald_dropped_total",
        &[r#"reason="slow_consumer""#],
    );

    // The slow client: subscribes, sees its REPLY, then stops reading.
    let stream = small_buffer_stream(server.ws()).await;
    let mut slow = RawWs::upgrade(stream, &token_all("slow")).await;
    slow.send(OP_BINARY, &client::encode_subscribe(1, TOPIC, None))
        .await;
    let (op, reply) = slow.read_frame().await.expect("subscribe reply");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        client::decode_server_message(&reply).unwrap(),
        client::ServerMessage::Reply { id: 1, .. }
    ));

    // The fast client reads in its own task and reports its progress.
    let mut fast = ws_connect(server.ws(), &token_all("fast")).await;
    subscribe(&mut fast, 1, TOPIC).await;
    let (progress_tx, mut progress) = watch::channel(0u64);
    let reader = tokio::spawn(async move {
        for want in 1..=N {
            let (t, seq, p) = next_publication(&mut fast).await;
            assert_eq!((t.as_str(), seq), (TOPIC, want));
            assert_eq!(p.len(), SIZE);
            assert_eq!(p[0], want as u8);
            progress_tx.send_replace(want);
        }
        // `fast` is dropped here: its TCP connection ends.
    });

    // Publish, keeping at most 3 messages in flight for the fast client, so
    // only the client that does not read falls behind.
    let mut feed = Feed::open(server.ingest(), "big-feed").await;
    for i in 1..=N {
        feed.publish(TOPIC, &vec![i as u8; SIZE]).await;
        let need = i.saturating_sub(3);
        let waited = tokio::time::timeout(T, progress.wait_for(|&got| got >= need))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("fast reader ended early"),
            Err(_) => panic!("fast client stalled at {} of {i}", *progress.borrow()),
        }
    }
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("fast client got everything in time")
        .expect("fast client saw every message in order");

    let text = metrics_text(server.admin()).await;
    let dropped = metric_sum(
        &text,
        "herald_dropped_total",
        &[r#"reason="slow_consumer""#],
    );
    assert!(
        dropped > dropped_before,
        "herald_dropped_total{{reason=\"slow_consumer\"}} did not grow ({dropped_before} -> {dropped})"
    );

    // Now the slow client reads: some publications, in order, then 4008.
    let (code, last_seq) = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert_eq!(code, 4008, "after {last_seq} publications");
    assert!(
        last_seq < N,
        "the slow client cannot have received everything"
    );
    drop(slow);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_is_cut_off_early_and_reads_its_4008_before_the_deadline() {
    const TOPIC: &str = "stall";
    const N: u64 = 400;
    const SIZE: usize = 16 * 1024;
    // Default buffers and the default close deadline: what the kernel may
    // hold unsent is capped (limits.send_queue_bytes), so the backlog lands
    // in the outbox, where 4008 drops it, not in front of the close frame.
    let server = start(|c| c.limits.max_outbox_bytes = 256 * 1024);
    let dropped_before = metric_sum(
        &metrics_text(server.admin()).await,
        "herald_dropped_total",
        &[r#"reason="slow_consumer""#],
    );
    let stream = tokio::net::TcpStream::connect(server.ws()).await.unwrap();
    let mut slow = RawWs::upgrade(stream, &token_all("stalled")).await;
    slow.send(OP_BINARY, &client::encode_subscribe(1, TOPIC, None))
        .await;
    let (_, reply) = slow.read_frame().await.expect("subscribe reply");
    assert!(matches!(
        client::decode_server_message(&reply).unwrap(),
        client::ServerMessage::Reply { id: 1, .. }
    ));

    let mut feed = Feed::open(server.ingest(), "stall-feed").await;
    for i in 1..=N {
        feed.publish(TOPIC, &vec![i as u8; SIZE]).await;
    }
    feed.barrier(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dropped = metric_sum(
            &metrics_text(server.admin()).await,
            "herald_dropped_total",
            &[r#"reason="slow_consumer""#],
        );
        if dropped > dropped_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (code, last_seq) = read_to_close(&mut slow, Duration::from_secs(5)).await;
    assert_eq!(code, 4008, "after {last_seq} publications");
    // Kernel buffers (a receive buffer that never grew, ≤ 128 KiB unsent)
    // plus the outbox: far less than the 4 MiB an autotuned send buffer
    // would have soaked up (measured without the cap: 240 publications,
    // 3,840 KiB).
    assert!(
        (last_seq as usize) * SIZE < 1536 * 1024,
        "{last_seq} publications ({} KiB) were in flight to a reader that never read",
        last_seq as usize * SIZE / 1024
    );
    drop(slow);
    assert!(server.stop().await);
}

/// Reads publications (each the previous seq + 1) up to a close frame,
/// waiting at most `wait` for each frame; returns the close code and the
/// last seq read.
async fn read_to_close(ws: &mut RawWs, wait: Duration) -> (u16, u64) {
    let mut last_seq = 0;
    loop {
        match ws.read_frame_within(wait).await {
            None => panic!("connection ended without a close frame after seq {last_seq}"),
            Some((OP_CLOSE, p)) => return (u16::from_be_bytes([p[0], p[1]]), last_seq),
            Some((OP_BINARY, p)) => match client::decode_server_message(&p).unwrap() {
                client::ServerMessage::Publication { seq, .. } => {
                    assert_eq!(seq, last_seq + 1, "no gap before the close");
                    last_seq = seq;
                }
                other => panic!("unexpected {other:?}"),
            },
            Some((op, _)) => panic!("unexpected opcode {op}"),
        }
    }
}

/// Reads publications of `topic` until seq `last`, checking each is the
/// previous one + 1, starting after `after`.
async fn follow(ws: &mut Ws, topic: &str, after: u64, last: u64) -> Result<(), String> {
    let mut prev = after;
    while prev < last {
        let (t, seq, p) = next_publication(ws).await;
        if t != topic || seq != prev + 1 {
            return Err(format!("after {topic}#{prev} got {t}#{seq}"));
        }
        if p != seq.to_be_bytes() {
            return Err(format!("{topic}#{seq}: wrong payload"));
        }
        prev = seq;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_and_recovering_while_a_feed_streams_has_no_gap_and_no_duplicate() {
    subscribe_while_streaming(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_homes_on_their_own_runtime() {
    subscribe_while_streaming(1).await;
}

/// `home_threads`: 0 = homes on the control thread, else on `herald-home`.
async fn subscribe_while_streaming(home_threads: usize) {
    const TOPIC: &str = "live";
    const N: u64 = 3000;
    let server = start(|c| {
        c.hub.history_size = 4096;
        c.hub.home_threads = home_threads;
    });
    let addr = server.ws();
    let tok = token_all("live");

    // A first subscriber before anything is published learns the epoch.
    let mut first = ws_connect(addr, &tok).await;
    let (_, epoch) = subscribe(&mut first, 1, TOPIC).await;

    let mut tasks = Vec::new();
    // Plain subscribers arriving at staggered times during the stream.
    for i in 0..16u64 {
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            let mut ws = ws_connect(addr, &tok).await;
            let (seq, _) = subscribe(&mut ws, 1, TOPIC).await;
            follow(&mut ws, TOPIC, seq, N).await
        }));
    }
    // Subscribers that drop out mid-stream and recover with `since`.
    for i in 0..8u64 {
        let tok = tok.clone();
        let epoch = epoch.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 9)).await;
            let mut ws = ws_connect(addr, &tok).await;
            let (seq, _) = subscribe(&mut ws, 1, TOPIC).await;
            // Read a few (or none if the stream is already over).
            let upto = (seq + 5).min(N);
            follow(&mut ws, TOPIC, seq, upto).await?;
            drop(ws);
            let mut ws = ws_connect(addr, &tok).await;
            send_bin(
                &mut ws,
                client::encode_subscribe(2, TOPIC, Some((upto, &epoch))),
            )
            .await;
            match next_server(&mut ws).await {
                client::ServerMessage::Reply {
                    id: 2,
                    recovered: Some(true),
                    ..
                } => {}
                other => return Err(format!("expected a recovered reply, got {other:?}")),
            }
            follow(&mut ws, TOPIC, upto, N).await
        }));
    }

    let mut feed = Feed::open(server.ingest(), "streamer").await;
    for chunk in 0..(N / 50) {
        let mut frames = Vec::new();
        for i in 1..=50 {
            let seq = chunk * 50 + i;
            frames.extend(herald::wire::feed::encode_publish(
                TOPIC,
                &seq.to_be_bytes(),
            ));
        }
        feed.send(&frames).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    feed.barrier(9).await;
    follow(&mut first, TOPIC, 0, N)
        .await
        .expect("first subscriber");

    let results = tokio::time::timeout(Duration::from_secs(30), join_all(tasks))
        .await
        .expect("subscribers finished in time");
    for (i, r) in results.into_iter().enumerate() {
        r.expect("task")
            .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
    }
    assert!(server.stop().await);
}
