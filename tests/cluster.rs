//! What only cluster mode has (PROTOCOL.md §5): a broker that goes away
//! and comes back, with or without its store, and a node cut off from it
//! while the others go on. Gateways on a real `nats-server` of the test's
//! own. The behaviour every backend shares is in `broker_contract.rs`.

mod common;

use std::time::Duration;

use common::nats::{cluster, node, ready, stop_all, NatsServer, Proxy};
use common::*;
use herald::config::StorageMode;
use herald::wire::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_down_publications_are_refused_and_the_sequence_goes_on_after() {
    let mut nats = NatsServer::start();
    let nodes = cluster(&nats.url(), |_| {}).await;
    let mut subs = Vec::new();
    let mut epoch = String::new();
    for n in &nodes {
        let mut ws = ws_connect(n.ws(), &token_all("u")).await;
        epoch = subscribe(&mut ws, 1, "md.ETH").await.1;
        subs.push(ws);
    }
    for i in 1..=3u8 {
        api_publish(nodes[i as usize % 3].admin(), "md.ETH", &[i]).await;
    }
    for ws in &mut subs {
        assert_eq!(publications(ws, 3).await.last().map(|p| p.0), Some(3));
    }

    nats.kill();
    // Once a node sees NATS gone (`/readyz` 503), what it cannot publish
    // is refused at once.
    for n in &nodes {
        let down = wait_until(Duration::from_secs(10), || async {
            api(n.admin(), "GET", "/readyz", None, b"").await.status == 503
        })
        .await;
        assert!(down, "every node sees the broker gone");
    }
    let r = api(
        nodes[0].admin(),
        "POST",
        "/api/publish/md.ETH",
        Some(API_KEY),
        b"x",
    )
    .await;
    assert_eq!(r.status, 503, "the API refuses while NATS is down");
    assert_eq!(
        api(nodes[0].admin(), "GET", "/healthz", None, b"")
            .await
            .status,
        200
    );
    let stats = api(nodes[0].admin(), "GET", "/api/stats", Some(API_KEY), b"")
        .await
        .json();
    assert_eq!(stats["broker"]["connected"], false);
    assert_eq!(stats["broker"]["kind"], "nats");
    let m = metrics_text(nodes[0].admin()).await;
    assert_eq!(metric_sum(&m, "herald_broker_connected", &[]), 0.0);
    // A client PUBLISH gets ERROR 503; the connection stays open.
    send_bin(&mut subs[1], client::encode_publish(5, "md.ETH", b"y")).await;
    expect_error(&mut subs[1], 5, 503).await;
    // A SUBSCRIBE to a topic this node does not follow needs the log: 503.
    send_bin(&mut subs[1], client::encode_subscribe(6, "md.new", None)).await;
    expect_error(&mut subs[1], 6, 503).await;
    // A feed is told 503 and closed.
    let mut feed = Feed::open(nodes[2].ingest(), "f").await;
    feed.publish("md.ETH", b"z").await;
    assert_eq!(feed.expect_error_then_close().await.0, 503);

    nats.restart();
    for n in &nodes {
        ready(n).await;
    }
    // Nothing was lost: the sequence goes on under the same epoch.
    assert_eq!(api_publish(nodes[1].admin(), "md.ETH", &[4]).await, 4);
    for ws in &mut subs {
        assert_eq!(publications(ws, 1).await, vec![(4, vec![4])]);
        nothing_more(ws).await;
    }
    let mut late = ws_connect(nodes[2].ws(), &token_all("u")).await;
    assert_eq!(subscribe(&mut late, 1, "md.ETH").await, (4, epoch));
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_lost_its_store_starts_topics_over_under_a_new_epoch() {
    let mut nats = NatsServer::start();
    let nodes = cluster(&nats.url(), |c| c.cluster.storage = StorageMode::Memory).await;
    let mut a = ws_connect(nodes[0].ws(), &token_all("u")).await;
    let (_, e1) = subscribe(&mut a, 1, "t").await;
    api_publish(nodes[1].admin(), "t", b"1").await;
    assert_eq!(publications(&mut a, 1).await[0].0, 1);

    nats.restart_empty();
    for n in &nodes {
        ready(n).await;
    }
    // The subscriber cannot be continued without a gap: 1001, and on
    // re-subscribing it learns the new epoch and `recovered: false`.
    assert_eq!(expect_close(&mut a).await.0, 1001);
    let mut b = ws_connect(nodes[0].ws(), &token_all("u")).await;
    let (seq, e2, recovered) = subscribe_since(&mut b, 1, "t", 1, &e1).await;
    assert!(!recovered);
    assert_ne!(e1, e2);
    assert_eq!(seq, 0);
    assert_eq!(api_publish(nodes[2].admin(), "t", b"x").await, 1);
    assert_eq!(publications(&mut b, 1).await, vec![(1, b"x".to_vec())]);
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_catches_its_subscribers_up_from_history() {
    let nats = NatsServer::start();
    let proxy = Proxy::start(nats.addr()).await;
    let a = node(&nats.url(), 0, |_| {});
    let b = node(&proxy.url(), 1, |_| {});
    ready(&a).await;
    ready(&b).await;
    let mut sb = ws_connect(b.ws(), &token_all("u")).await;
    subscribe(&mut sb, 1, "t").await;
    let mut sb2 = ws_connect(b.ws(), &token_all("u")).await;
    subscribe(&mut sb2, 1, "u").await;
    api_publish(a.admin(), "t", b"1").await;
    assert_eq!(publications(&mut sb, 1).await[0].0, 1);

    proxy.cut();
    let down = wait_until(Duration::from_secs(10), || async {
        api(b.admin(), "GET", "/readyz", None, b"").await.status == 503
    })
    .await;
    assert!(down, "node b sees the broker gone");
    // The others go on: 2..=5 on `t` (within history), 20 on `u` with a
    // history of 128 is also within; the subscribers of b must get all.
    for i in 2..=5u8 {
        api_publish(a.admin(), "t", &[i]).await;
    }
    proxy.restore();
    ready(&b).await;
    let got = publications(&mut sb, 4).await;
    assert_eq!(
        got,
        (2..=5u8).map(|i| (i as u64, vec![i])).collect::<Vec<_>>()
    );
    api_publish(a.admin(), "t", &[6]).await;
    assert_eq!(publications(&mut sb, 1).await, vec![(6, vec![6])]);
    nothing_more(&mut sb2).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_longer_than_the_history_closes_its_subscribers_with_1001() {
    let nats = NatsServer::start();
    let proxy = Proxy::start(nats.addr()).await;
    let a = node(&nats.url(), 0, |c| c.hub.history_size = 3);
    let b = node(&proxy.url(), 1, |c| c.hub.history_size = 3);
    ready(&a).await;
    ready(&b).await;
    let mut sb = ws_connect(b.ws(), &token_all("u")).await;
    let (_, epoch) = subscribe(&mut sb, 1, "t").await;
    proxy.cut();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            api(b.admin(), "GET", "/readyz", None, b"").await.status == 503
        })
        .await
    );
    for i in 1..=10u8 {
        api_publish(a.admin(), "t", &[i]).await;
    }
    proxy.restore();
    ready(&b).await;
    assert_eq!(expect_close(&mut sb).await.0, 1001);
    let mut again = ws_connect(b.ws(), &token_all("u")).await;
    let (seq, e, recovered) = subscribe_since(&mut again, 1, "t", 0, &epoch).await;
    assert_eq!((seq, e, recovered), (10, epoch, false));
    let m = metrics_text(b.admin()).await;
    assert!(metric_sum(&m, "herald_broker_resets_total", &[]) >= 1.0);
    a.stop().await;
    b.stop().await;
}

/// Publications racing a NATS crash: every one is answered with its true
/// outcome. A 202 is in the log at the seq it named, a 503 is in no one's
/// stream, and the subscribers on every node see the same gap-free
/// sequence once NATS is back (same store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_in_flight_when_nats_dies_are_answered_with_their_true_outcome() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut nats = NatsServer::start();
    let nodes = cluster(&nats.url(), |_| {}).await;
    let mut subs = Vec::new();
    for n in &nodes {
        let mut ws = ws_connect(n.ws(), &token_all("u")).await;
        subscribe(&mut ws, 1, "md.BTC").await;
        subs.push(ws);
    }

    // 202 → (seq, payload); 503 → payload. Anything else fails the test.
    let stored = Arc::new(Mutex::new(BTreeMap::<u64, Vec<u8>>::new()));
    let refused = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4usize {
        let admin = nodes[p % 3].admin();
        let (stored, refused, stop) = (stored.clone(), refused.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let payload = format!("p{p}-{i}").into_bytes();
                i += 1;
                let r = api(
                    admin,
                    "POST",
                    "/api/publish/md.BTC",
                    Some(API_KEY),
                    &payload,
                )
                .await;
                match r.status {
                    202 => {
                        let seq = r.json()["seq"].as_u64().expect("seq");
                        let prev = stored.lock().unwrap().insert(seq, payload);
                        assert!(prev.is_none(), "seq {seq} answered twice");
                    }
                    503 => {
                        refused.lock().unwrap().push(payload);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    s => panic!("publish answered {s}: {}", r.body_str()),
                }
            }
        }));
    }
    let count = |m: &Arc<Mutex<BTreeMap<u64, Vec<u8>>>>| m.lock().unwrap().len();
    assert!(
        wait_until(Duration::from_secs(10), || async { count(&stored) >= 50 }).await,
        "publications flow before the crash"
    );
    // The race this test is about needs an append in flight at the kill.
    // With four publishers one nearly always is, but a loaded box can
    // leave all of them between requests: crash again (at most 5 times)
    // until some node has lost an append's answer.
    let mut unknown = 0.0;
    for _ in 0..5 {
        nats.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.restart();
        for n in &nodes {
            ready(n).await;
        }
        let before = count(&stored);
        assert!(
            wait_until(Duration::from_secs(10), || async {
                count(&stored) >= before + 50
            })
            .await,
            "publications flow again after the restart"
        );
        unknown = 0.0;
        for n in &nodes {
            let m = metrics_text(n.admin()).await;
            unknown += metric_sum(&m, "herald_broker_appends_total", &["result=\"error\""]);
        }
        if unknown >= 1.0 {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.expect("publisher task");
    }

    let stored = stored.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    let n = stored.len() as u64;
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "the 202s name every seq from 1 once: a 503 took no seq"
    );
    let expected: Vec<(u64, Vec<u8>)> = stored.into_iter().collect();
    for ws in &mut subs {
        let got = publications(ws, n as usize).await;
        assert_eq!(got, expected, "every node delivers the stored sequence");
        nothing_more(ws).await;
    }
    for r in &refused {
        assert!(expected.iter().all(|(_, p)| p != r), "a 503 was delivered");
    }
    // The race was run: some append lost its answer with NATS and was
    // settled by asking again.
    assert!(unknown >= 1.0, "no publication was in flight at the crash");
    stop_all(nodes).await;
}

/// `/api/nodes` on any node lists every node of the cluster with its own
/// stats (announced over NATS), and forgets a node that stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_whole_cluster_in_api_nodes() {
    let nats = NatsServer::start();
    let mut nodes = cluster(&nats.url(), |_| {}).await;
    let _a = ws_connect(nodes[1].ws(), &token_all("u")).await;
    let _b = ws_connect(nodes[1].ws(), &token_all("v")).await;
    let listed = |addr| async move {
        let v = api(addr, "GET", "/api/nodes", Some(API_KEY), b"")
            .await
            .json();
        let mut out: Vec<(String, bool, u64)> = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap_or_default().to_owned(),
                    n["self"].as_bool().unwrap_or_default(),
                    n["stats"]["connections"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        out.sort();
        out
    };
    let want = vec![
        ("node-0".to_owned(), true, 0),
        ("node-1".to_owned(), false, 2),
        ("node-2".to_owned(), false, 0),
    ];
    let admin0 = nodes[0].admin();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            listed(admin0).await == want
        })
        .await,
        "node-0 sees all three: {:?}",
        listed(admin0).await
    );
    let admin1 = nodes[1].admin();
    let seen_by_1 = listed(admin1).await;
    assert!(
        seen_by_1.contains(&("node-1".to_owned(), true, 2)),
        "{seen_by_1:?}"
    );
    assert_eq!(seen_by_1.len(), 3);

    // A node that stops is gone from the list once its last announcement
    // is older than the peer age limit.
    let gone = nodes.pop().expect("node-2");
    gone.stop().await;
    assert!(
        wait_until(Duration::from_secs(15), || async {
            listed(admin0).await.iter().all(|n| n.0 != "node-2")
        })
        .await,
        "a stopped node leaves the list"
    );
    stop_all(nodes).await;
}
