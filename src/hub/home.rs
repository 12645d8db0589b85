//! The home tasks: one per topic partition, apart from the shards: on the
//! control runtime beside ingest and the operator API (default), or on a
//! `herald-home` runtime of their own (`hub.home_threads`).
//!
//! Sequencing is cheap (a counter, one frame encode, a ring push) but sits
//! on every publisher's path: the operator API and client PUBLISH wait for
//! the seq, the feed waits while the home inbox is full. On a shard it
//! would wait behind that shard's delivery writes, so publishers would run
//! in lockstep with the fan-out and the delivery inboxes would never hold
//! more than a handful of messages. Here it answers at once, publications
//! pile up in the delivery inboxes while the shards write, and each shard
//! takes them as one deep batch: a socket gets all of its frames of the
//! batch in one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{HomeMsg, HomeState, Hub, ShardMsg};

/// Counts a home publishes for `/api/stats`.
#[derive(Debug, Default)]
pub struct HomeStats {
    /// Topics this home sequences.
    pub topics: AtomicU64,
    /// Publications sequenced since start.
    pub published: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct HomeSettings {
    /// Frames kept per topic for recovery.
    pub history: usize,
    /// A topic without subscribers or publications this long is forgotten.
    pub topic_ttl: Duration,
}

/// Sequences the topics of partition `id` and forwards each encoded frame
/// to the shards that subscribe to it. Returns when every sender is gone.
pub async fn run(id: usize, hub: Hub, mut rx: mpsc::Receiver<HomeMsg>, settings: HomeSettings) {
    let mut home = HomeState::new(hub.shard_count(), settings.history, settings.topic_ttl);
    let stats = &hub.home_stats()[id];
    let topics_gauge = crate::metrics::home_topics(id);
    let mut batch = Vec::with_capacity(256);
    let mut targets: Vec<usize> = Vec::with_capacity(hub.shard_count());
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    let mut published: u64 = 0;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            _ = expire.tick() => {
                home.expire(Instant::now());
                stats.topics.store(home.topic_count() as u64, Ordering::Relaxed);
                topics_gauge.set(home.topic_count() as f64);
                continue;
            }
        }
        let now = Instant::now();
        for msg in batch.drain(..) {
            match msg {
                HomeMsg::Publish {
                    topic,
                    payload,
                    at,
                    reply,
                } => {
                    let (seq, frame, name) = home.publish(&topic, &payload, now);
                    published += 1;
                    if let Some(r) = reply {
                        let _ = r.send(seq);
                    }
                    targets.clear();
                    targets.extend(home.interested(&name));
                    for &t in &targets {
                        let d = ShardMsg::Deliver {
                            topic: name.clone(),
                            seq,
                            frame: frame.clone(),
                            at,
                        };
                        if hub.shard_sender(t).send(d).await.is_err() {
                            return;
                        }
                    }
                }
                HomeMsg::Subscribe {
                    topic,
                    shard: from,
                    session,
                    id,
                    recover,
                } => {
                    let ack = home.subscribe(&topic, from, session, id, recover, now);
                    if hub
                        .shard_sender(from)
                        .send(ShardMsg::Subscribed(ack))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                HomeMsg::Unsubscribe { topic, shard: from } => home.unsubscribe(&topic, from, now),
                HomeMsg::Barrier(token) => {
                    for t in 0..hub.shard_count() {
                        let _ = hub
                            .shard_sender(t)
                            .send(ShardMsg::Barrier(token.clone()))
                            .await;
                    }
                }
            }
        }
        stats.published.store(published, Ordering::Relaxed);
        stats
            .topics
            .store(home.topic_count() as u64, Ordering::Relaxed);
    }
}
