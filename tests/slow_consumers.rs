//! Slow consumers (PROTOCOL.md §8): `disconnect`, `drop_oldest` and
//! `conflate` per topic pattern, through real sockets whose readers stop
//! reading, and the memory a crowd of them costs the real binary.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::process::Gateway;
use common::*;
use futures_util::future::join_all;
use herald::wire::client::{self, ServerMessage};
use herald::wire::feed;

/// A socket with a small receive buffer, so the kernel soaks up little of
/// what the gateway sends to a client that does not read.
async fn small_buffer_stream(addr: SocketAddr) -> tokio::net::TcpStream {
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

/// A client that subscribes to `topics`, sees its replies, then does not
/// read until told to.
async fn stalled_subscriber(addr: SocketAddr, topics: &[String]) -> RawWs {
    let stream = small_buffer_stream(addr).await;
    let mut ws = RawWs::upgrade(stream, &token_all("slow")).await;
    for (i, t) in topics.iter().enumerate() {
        ws.send(OP_BINARY, &client::encode_subscribe(i as u32 + 1, t, None))
            .await;
    }
    for _ in topics {
        let (op, body) = ws.read_frame().await.expect("subscribe reply");
        assert_eq!(op, OP_BINARY);
        assert!(
            matches!(
                client::decode_server_message(&body).unwrap(),
                ServerMessage::Reply { seq: Some(0), .. }
            ),
            "a fresh topic's reply"
        );
    }
    ws
}

/// Payload of publication `n` of a topic: its number first, so the test can
/// tell a real seq from a made-up one.
fn payload(n: u64, size: usize) -> Vec<u8> {
    let mut p = n.to_be_bytes().to_vec();
    p.resize(size, n as u8);
    p
}

async fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    metric_sum(&metrics_text(admin).await, name, labels)
}

/// Waits until a counter reaches `at_least` (the gateway works through its
/// inbox asynchronously).
async fn wait_metric(admin: SocketAddr, name: &str, labels: &[&str], at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(admin, name, labels).await;
        if v >= at_least || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads publications until every topic in `last` has shown its last seq;
/// returns each topic's seqs in arrival order, and the replies' ids seen.
async fn read_until_latest(
    ws: &mut RawWs,
    last: &BTreeMap<String, u64>,
    size: usize,
) -> (BTreeMap<String, Vec<u64>>, Vec<u32>) {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut replies = Vec::new();
    let done = |seen: &BTreeMap<String, Vec<u64>>| {
        last.iter()
            .all(|(t, &n)| seen.get(t).and_then(|v| v.last()) == Some(&n))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&seen) {
        assert!(tokio::time::Instant::now() < deadline, "read in time");
        let (op, body) = ws
            .read_frame_within(Duration::from_secs(10))
            .await
            .expect("the connection stays open");
        assert_ne!(op, OP_CLOSE, "closed with {:?}", &body[..2.min(body.len())]);
        if op != OP_BINARY {
            continue;
        }
        match client::decode_server_message(&body).unwrap() {
            ServerMessage::Publication {
                topic,
                seq,
                payload: p,
            } => {
                assert_eq!(
                    p,
                    payload(seq, size),
                    "{topic}#{seq} carries its own payload"
                );
                seen.entry(topic).or_default().push(seq);
            }
            ServerMessage::Reply { id, .. } => replies.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    (seen, replies)
}

fn strictly_increasing(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflating_reader_that_resumes_gets_the_latest_of_every_topic_with_real_seqs() {
    const TOPICS: u64 = 10;
    const ROUNDS: u64 = 200;
    const SIZE: usize = 1024;
    let server = start(|c| {
        c.limits.max_outbox_bytes = 16 * 1024;
        c.limits.send_queue_bytes = 4096;
        c.timeouts.close_ms = 30_000;
        c.slow_consumer = vec![herald::config::SlowConsumer {
            topics: vec!["md.*".into()],
            policy: herald::config::SlowPolicy::Conflate,
        }];
    });
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("md.{t}")).collect();
    let mut slow = stalled_subscriber(server.ws(), &topics).await;

    let mut f = Feed::open(server.ingest(), "md").await;
    let mut frames = Vec::new();
    for r in 1..=ROUNDS {
        for t in &topics {
            frames.extend(feed::encode_publish(t, &payload(r, SIZE)));
        }
    }
    f.send(&frames).await;
    f.barrier(1).await;
    let conflated = wait_metric(
        server.admin(),
        "herald_dropped_total",
        &[r#"reason="conflated""#],
        1.0,
    )
    .await;
    assert!(conflated >= 1.0, "the behind reader's queue conflated");

    // Resumes: the latest value of every topic, each with its real seq.
    let last: BTreeMap<String, u64> = topics.iter().map(|t| (t.clone(), ROUNDS)).collect();
    let (seen, _) = read_until_latest(&mut slow, &last, SIZE).await;
    let total: usize = seen.values().map(Vec::len).sum();
    for (t, seqs) in &seen {
        assert!(strictly_increasing(seqs), "{t}: {seqs:?}");
    }
    assert!(
        total < (TOPICS * ROUNDS) as usize / 2,
        "conflation skipped most intermediate values ({total} of {} delivered)",
        TOPICS * ROUNDS
    );
    // Still open, never 4008: a request is answered.
    slow.send(OP_BINARY, &client::encode_ping(99)).await;
    let (op, body) = slow.read_frame().await.expect("reply");
    assert_eq!(op, OP_BINARY);
    assert!(matches!(
        client::decode_server_message(&body).unwrap(),
        ServerMessage::Reply { id: 99, .. }
    ));
    let closes = metric(server.admin(), "herald_closes_total", &[r#"code="4008""#]).await;
    assert_eq!(closes, 0.0);
    drop(slow);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_oldest_reader_sees_the_jumps_keeps_its_replies_and_stays() {
    const N: u64 = 400;
    const SIZE: usize = 1024;
    let server = start(|c| {
        c.limits.max_outbox_bytes = 16 * 1024;
        c.limits.send_queue_bytes = 4096;
        c.timeouts.close_ms = 30_000;
        c.slow_consumer = vec![
            herald::config::SlowConsumer {
                topics: vec!["game.*".into()],
                policy: herald::config::SlowPolicy::DropOldest,
            },
            herald::config::SlowConsumer {
                topics: vec!["*".into()],
                policy: herald::config::SlowPolicy::Conflate,
            },
        ];
    });
    let topic = "game.room1".to_string();
    let mut slow = stalled_subscriber(server.ws(), std::slice::from_ref(&topic)).await;

    let mut f = Feed::open(server.ingest(), "game").await;
    let mut frames = Vec::new();
    for n in 1..=N {
        frames.extend(feed::encode_publish(&topic, &payload(n, SIZE)));
    }
    f.send(&frames).await;
    f.barrier(1).await;
    let dropped = wait_metric(
        server.admin(),
        "herald_dropped_total",
        &[r#"reason="drop_oldest""#],
        1.0,
    )
    .await;
    assert!(dropped >= 1.0);
    // Requests while behind: replies count toward the bound but are never
    // dropped.
    for id in 100..105 {
        slow.send(OP_BINARY, &client::encode_ping(id)).await;
    }
    let last = BTreeMap::from([(topic.clone(), N)]);
    let (seen, mut replies) = read_until_latest(&mut slow, &last, SIZE).await;
    let seqs = &seen[&topic];
    assert!(strictly_increasing(seqs), "{seqs:?}");
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "the reader sees the seq jump where publications were dropped"
    );
    // The replies may trail the last publication: read them all.
    while replies.len() < 5 {
        let (op, body) = slow.read_frame().await.expect("reply");
        if op == OP_BINARY {
            if let ServerMessage::Reply { id, .. } = client::decode_server_message(&body).unwrap() {
                replies.push(id);
            }
        }
    }
    assert_eq!(replies, [100, 101, 102, 103, 104], "every reply, in order");
    let closes = metric(server.admin(), "herald_closes_total", &[r#"code="4008""#]).await;
    assert_eq!(closes, 0.0, "drop_oldest never disconnects");
    drop(slow);
    assert!(server.stop().await);
}

/// 1000 connections that never read, under each policy, against the real
/// binary: what they cost it stays bounded by the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_readers_that_never_read_hold_bounded_gateway_memory() {
    const BOUND: usize = 16 * 1024;
    const SIZE: usize = 1024;
    const ROUNDS: u64 = 100;
    const MD_TOPICS: usize = 5;
    let g = Gateway::start(&format!(
        r#"
[shards]
count = 2

[limits]
max_outbox_bytes = {BOUND}
send_queue_bytes = 4096

[timeouts]
# The 4008'd readers never read their close frame: let them go soon.
close_ms = 1000

[log]
level = "warn"

[[slow_consumer]]
topics = ["md.*"]
policy = "conflate"

[[slow_consumer]]
topics = ["game.*"]
policy = "drop_oldest"
"#
    ))
    .await;
    let md: Vec<String> = (0..MD_TOPICS).map(|t| format!("md.{t}")).collect();
    let game = vec!["game.1".to_string()];
    let news = vec!["news.1".to_string()];
    let groups: [(&Vec<String>, usize); 3] = [(&md, 400), (&game, 300), (&news, 300)];
    let mut clients = Vec::new();
    for (topics, n) in groups {
        for chunk in 0..n / 100 {
            let _ = chunk;
            clients.extend(join_all((0..100).map(|_| stalled_subscriber(g.ws, topics))).await);
        }
    }
    let before = g.rss();

    let mut f = Feed::open(g.ingest, "flood").await;
    for r in 1..=ROUNDS {
        let mut frames = Vec::new();
        for t in md.iter().chain(&game).chain(&news) {
            frames.extend(feed::encode_publish(t, &payload(r, SIZE)));
        }
        f.send(&frames).await;
    }
    f.barrier(1).await;
    // Every `disconnect` reader is closed; the others are behind and stay.
    let closed = wait_metric(g.admin, "herald_closes_total", &[r#"code="4008""#], 300.0).await;
    assert_eq!(closed, 300.0, "exactly the news.* readers get 4008");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = api(g.admin, "GET", "/api/stats", Some(API_KEY), b"")
            .await
            .json();
        if stats["connections"] == 700 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["connections"], 700, "{stats}");
    for reason in ["drop_oldest", "conflated"] {
        let label = format!(r#"reason="{reason}""#);
        let n = metric(g.admin, "herald_dropped_total", &[&label]).await;
        assert!(n > 0.0, "the {reason} readers were behind");
    }
    let after = g.rss();
    let grew = after.saturating_sub(before);
    // What the policies allow: the bound per drop_oldest reader, the bound
    // plus one message per topic per conflating reader (plus a partly
    // written frame each). Unbounded queues would hold
    // 400 × 500 KiB + 300 × 100 KiB ≈ 225 MiB.
    let allowed = 300 * (BOUND + SIZE) + 400 * (BOUND + (MD_TOPICS + 1) * SIZE);
    eprintln!(
        "gateway RSS {} MiB before the flood, {} MiB after: +{} KiB for 700 readers behind \
         ({} B each; the policies allow {} KiB in queues)",
        before >> 20,
        after >> 20,
        grew >> 10,
        grew / 700,
        allowed >> 10
    );
    assert!(
        grew < (allowed as u64) * 3 / 2 + (8 << 20),
        "RSS grew by {grew} B, policies allow {allowed} B of queues"
    );
    drop(clients);
}
