//! The contract every broker backend keeps (PROTOCOL.md §1 and §5), run
//! against both: one node on its own (the in-process default: its homes
//! sequence), and three nodes on a real `nats-server`. A test gets three
//! entry points; with one node they are the same gateway, so "another
//! node" reads "the same node" and every promise must still hold.

mod common;

use std::collections::HashMap;

use common::nats::{cluster, NatsServer};
use common::*;
use herald::config::Config;
use herald::wire::client::{self, ServerMessage};

#[derive(Clone, Copy)]
enum Backend {
    Local,
    Nats,
}

struct Nodes {
    servers: Vec<TestServer>,
    _nats: Option<NatsServer>,
}

impl Nodes {
    async fn start(backend: Backend, tweak: impl Fn(&mut Config)) -> Nodes {
        match backend {
            Backend::Local => Nodes {
                servers: vec![start(&tweak)],
                _nats: None,
            },
            Backend::Nats => {
                let nats = NatsServer::start();
                Nodes {
                    servers: cluster(&nats.url(), tweak).await,
                    _nats: Some(nats),
                }
            }
        }
    }

    /// Entry point `i` (the same gateway for every `i` with one node).
    fn at(&self, i: usize) -> &TestServer {
        &self.servers[i % self.servers.len()]
    }

    async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
    }
}

/// Runs each listed contract test against both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Local).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Nats).await
                }
            )*
        }
    };
}

contract!(
    every_entry_reaches_every_subscriber_once_with_one_seq_and_epoch,
    two_feeds_into_one_topic_are_sequenced_into_one_order,
    recovery_anywhere_replays_the_missed_publications_then_live,
    recovery_beyond_the_history_says_recovered_false,
    the_entry_node_delivers_its_own_publications_exactly_once,
    unsubscribe_stops_deliveries_and_a_new_subscription_starts_after_the_last_seq,
);

async fn every_entry_reaches_every_subscriber_once_with_one_seq_and_epoch(b: Backend) {
    let nodes = Nodes::start(b, |_| {}).await;
    let mut subs = Vec::new();
    let mut epochs = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(nodes.at(i).ws(), &token_all("u")).await;
        let (seq, epoch) = subscribe(&mut ws, 1, "md.BTC-USD").await;
        assert_eq!(seq, 0);
        epochs.push(epoch);
        subs.push(ws);
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );

    // The API on entry 0, a feed on entry 1, a client PUBLISH on entry 2.
    assert_eq!(
        api_publish(nodes.at(0).admin(), "md.BTC-USD", b"api").await,
        1
    );
    let mut feed = Feed::open(nodes.at(1).ingest(), "f").await;
    feed.publish("md.BTC-USD", b"feed").await;
    feed.barrier(1).await;
    let mut publisher = ws_connect(nodes.at(2).ws(), &token_all("p")).await;
    send_bin(
        &mut publisher,
        client::encode_publish(9, "md.BTC-USD", b"client"),
    )
    .await;
    match next_server(&mut publisher).await {
        ServerMessage::Reply { id: 9, seq, .. } => assert_eq!(seq, Some(3)),
        other => panic!("expected the PUBLISH reply, got {other:?}"),
    }
    for ws in &mut subs {
        let got = publications(ws, 3).await;
        assert_eq!(
            got,
            vec![
                (1, b"api".to_vec()),
                (2, b"feed".to_vec()),
                (3, b"client".to_vec())
            ]
        );
        nothing_more(ws).await;
    }
    // A late subscriber anywhere starts after the last seq, same epoch.
    let mut late = ws_connect(nodes.at(1).ws(), &token_all("l")).await;
    assert_eq!(
        subscribe(&mut late, 1, "md.BTC-USD").await,
        (3, epochs[0].clone())
    );
    nodes.stop().await;
}

async fn two_feeds_into_one_topic_are_sequenced_into_one_order(b: Backend) {
    let nodes = Nodes::start(b, |_| {}).await;
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(nodes.at(i).ws(), &token_all("u")).await;
        subscribe(&mut ws, 1, "room.1").await;
        subs.push(ws);
    }
    const N: usize = 300;
    let mut tasks = Vec::new();
    for i in 0..2 {
        let addr = nodes.at(i).ingest();
        tasks.push(tokio::spawn(async move {
            let mut f = Feed::open(addr, &format!("feed-{i}")).await;
            for k in 0..N {
                f.publish("room.1", format!("{i}:{k}").as_bytes()).await;
            }
            f.barrier(7).await;
        }));
    }
    for t in tasks {
        t.await.expect("feed task");
    }
    let mut orders = Vec::new();
    for ws in &mut subs {
        let got = publications(ws, 2 * N).await;
        let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(seqs, (1..=2 * N as u64).collect::<Vec<_>>());
        // Each feed's publications keep their order.
        let mut next = [0usize; 2];
        for (_, p) in &got {
            let s = String::from_utf8(p.clone()).expect("utf8");
            let (f, k) = s.split_once(':').expect("f:k");
            let (f, k): (usize, usize) = (f.parse().expect("f"), k.parse().expect("k"));
            assert_eq!(k, next[f], "feed {f} out of order");
            next[f] += 1;
        }
        orders.push(got);
        nothing_more(ws).await;
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "every subscriber sees one order"
    );
    nodes.stop().await;
}

async fn recovery_anywhere_replays_the_missed_publications_then_live(b: Backend) {
    let nodes = Nodes::start(b, |_| {}).await;
    let mut a = ws_connect(nodes.at(0).ws(), &token_all("u")).await;
    let (_, epoch) = subscribe(&mut a, 1, "game.7").await;
    for i in 1..=5u8 {
        api_publish(nodes.at(1).admin(), "game.7", &[i]).await;
    }
    assert_eq!(publications(&mut a, 5).await.last().map(|g| g.0), Some(5));
    drop(a);
    for i in 6..=9u8 {
        api_publish(nodes.at(1).admin(), "game.7", &[i]).await;
    }
    // With NATS, entry 2 never had a subscriber for the topic: the replay
    // comes from the cluster's history.
    let mut c = ws_connect(nodes.at(2).ws(), &token_all("u")).await;
    assert_eq!(
        subscribe_since(&mut c, 2, "game.7", 5, &epoch).await,
        (9, epoch.clone(), true)
    );
    assert_eq!(
        publications(&mut c, 4).await,
        (6..=9u8).map(|i| (i as u64, vec![i])).collect::<Vec<_>>()
    );
    api_publish(nodes.at(0).admin(), "game.7", &[10]).await;
    assert_eq!(publications(&mut c, 1).await, vec![(10, vec![10])]);
    nothing_more(&mut c).await;
    // Another epoch: no replay, live from the last seq.
    let mut d = ws_connect(nodes.at(1).ws(), &token_all("u")).await;
    assert_eq!(
        subscribe_since(&mut d, 3, "game.7", 2, "nope").await,
        (10, epoch.clone(), false)
    );
    nodes.stop().await;
}

async fn recovery_beyond_the_history_says_recovered_false(b: Backend) {
    let nodes = Nodes::start(b, |c| c.hub.history_size = 4).await;
    let mut a = ws_connect(nodes.at(0).ws(), &token_all("u")).await;
    let (_, epoch) = subscribe(&mut a, 1, "t").await;
    for i in 1..=12u8 {
        api_publish(nodes.at(0).admin(), "t", &[i]).await;
    }
    let mut c = ws_connect(nodes.at(2).ws(), &token_all("u")).await;
    assert_eq!(
        subscribe_since(&mut c, 1, "t", 1, &epoch).await,
        (12, epoch.clone(), false)
    );
    // Within the history it still works.
    let mut d = ws_connect(nodes.at(1).ws(), &token_all("u")).await;
    assert_eq!(
        subscribe_since(&mut d, 1, "t", 9, &epoch).await,
        (12, epoch, true)
    );
    assert_eq!(publications(&mut d, 3).await.first().map(|p| p.0), Some(10));
    api_publish(nodes.at(0).admin(), "t", &[13]).await;
    assert_eq!(publications(&mut c, 1).await, vec![(13, vec![13])]);
    nodes.stop().await;
}

async fn the_entry_node_delivers_its_own_publications_exactly_once(b: Backend) {
    let nodes = Nodes::start(b, |_| {}).await;
    // Subscribers on both shards of entry 0, publications through it.
    let mut local = Vec::new();
    for _ in 0..6 {
        let mut ws = ws_connect(nodes.at(0).ws(), &token_all("u")).await;
        subscribe(&mut ws, 1, "x").await;
        local.push(ws);
    }
    let mut feed = Feed::open(nodes.at(0).ingest(), "f").await;
    for i in 0..50u32 {
        feed.publish("x", &i.to_be_bytes()).await;
    }
    feed.barrier(1).await;
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for ws in &mut local {
        for (seq, p) in publications(ws, 50).await {
            assert_eq!(p, ((seq - 1) as u32).to_be_bytes());
            *counts.entry(seq).or_default() += 1;
        }
        nothing_more(ws).await;
    }
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|c| *c == 6));
    nodes.stop().await;
}

async fn unsubscribe_stops_deliveries_and_a_new_subscription_starts_after_the_last_seq(b: Backend) {
    let nodes = Nodes::start(b, |_| {}).await;
    let mut ws = ws_connect(nodes.at(1).ws(), &token_all("u")).await;
    let (_, epoch) = subscribe(&mut ws, 1, "q").await;
    api_publish(nodes.at(0).admin(), "q", b"1").await;
    assert_eq!(publications(&mut ws, 1).await[0].0, 1);
    send_bin(&mut ws, client::encode_unsubscribe(2, "q")).await;
    match next_server(&mut ws).await {
        ServerMessage::Reply { id: 2, .. } => {}
        other => panic!("expected the UNSUBSCRIBE reply, got {other:?}"),
    }
    api_publish(nodes.at(0).admin(), "q", b"2").await;
    api_publish(nodes.at(2).admin(), "q", b"3").await;
    nothing_more(&mut ws).await;
    assert_eq!(subscribe(&mut ws, 3, "q").await, (3, epoch));
    api_publish(nodes.at(0).admin(), "q", b"4").await;
    assert_eq!(publications(&mut ws, 1).await, vec![(4, b"4".to_vec())]);
    nodes.stop().await;
}
