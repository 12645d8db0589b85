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
//!
//! A home drives its [`HomeState`] and carries out the effects it returns:
//! deliveries and acks to the shards, answers to publishers, and (cluster
//! mode) calls to the broker, whose answers come back on the home's event
//! channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::state::{ClusterSettings, Effect, Origin};
use super::{HomeMsg, HomeState, Hub, ShardMsg};
use crate::broker::{self, Backend, Broker};

/// Counts a home publishes for `/api/stats`.
#[derive(Debug, Default)]
pub struct HomeStats {
    /// Topics this home sequences.
    pub topics: AtomicU64,
    /// Publications sequenced since start (cluster mode: applied from the
    /// topic logs).
    pub published: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct HomeSettings {
    /// Frames kept per topic for recovery.
    pub history: usize,
    /// A topic without subscribers or publications this long is forgotten.
    pub topic_ttl: Duration,
    /// Cluster: record bytes (payloads + framing) per appended batch at most.
    pub max_batch_bytes: usize,
    /// Cluster: payload bytes a home holds for the broker before it stops
    /// taking publications from its inbox.
    pub max_pending_bytes: usize,
}

/// Sequences the topics of partition `id` and forwards each encoded frame
/// to the shards that subscribe to it. Returns when every sender is gone.
/// `events` carries the broker's answers in cluster mode.
pub async fn run(
    id: usize,
    hub: Hub,
    mut rx: mpsc::Receiver<HomeMsg>,
    mut events: Option<mpsc::Receiver<broker::Event>>,
    settings: HomeSettings,
) {
    let broker = match hub.backend() {
        Backend::Local => None,
        Backend::Cluster(b) => Some(b.clone()),
    };
    let mut home = match &broker {
        None => HomeState::new(hub.shard_count(), settings.history, settings.topic_ttl),
        Some(_) => HomeState::new_cluster(
            hub.shard_count(),
            settings.history,
            settings.topic_ttl,
            ClusterSettings {
                max_batch_bytes: settings.max_batch_bytes,
            },
        ),
    };
    let stats = &hub.home_stats()[id];
    let topics_gauge = crate::metrics::home_topics(id);
    let mut batch = Vec::with_capacity(256);
    let mut out: Vec<Effect> = Vec::with_capacity(256);
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    let mut published: u64 = 0;
    loop {
        if let Some(b) = &broker {
            home.set_record_limit(b.max_record_bytes());
        }
        let accepting = home.pending_bytes() < settings.max_pending_bytes;
        tokio::select! {
            biased;
            ev = recv_event(&mut events) => match ev {
                Some(ev) => {
                    home.on_event(ev, Instant::now(), &mut out);
                    // Take what else is waiting, so that a burst of records
                    // becomes one pass.
                    if let Some(e) = events.as_mut() {
                        while out.len() < 4096 {
                            match e.try_recv() {
                                Ok(ev) => home.on_event(ev, Instant::now(), &mut out),
                                Err(_) => break,
                            }
                        }
                    }
                }
                None => events = None,
            },
            n = rx.recv_many(&mut batch, 256), if accepting => if n == 0 { return },
            _ = expire.tick() => {
                let now = Instant::now();
                home.expire(now);
                home.tick(now, hub.backend().connected(), &mut out);
                stats.topics.store(home.topic_count() as u64, Ordering::Relaxed);
                topics_gauge.set(home.topic_count() as f64);
            }
        }
        let now = Instant::now();
        for msg in batch.drain(..) {
            match msg {
                HomeMsg::Publish {
                    topic,
                    payload,
                    at,
                    origin,
                } => {
                    if home.is_cluster() {
                        // One source of truth for reachability: the broker's
                        // own flag, not the order its events arrive in.
                        let up = hub.backend().connected();
                        home.enqueue(&topic, payload, origin, up, now, &mut out);
                    } else {
                        let p = home.publish(&topic, &payload, now);
                        published += 1;
                        if let Origin::Waiter(r) = origin {
                            let _ = r.send(Ok(p.seq));
                        }
                        for &t in p.targets {
                            let d = ShardMsg::Deliver {
                                topic: p.topic.clone(),
                                frame: p.frame.clone(),
                                at,
                            };
                            if hub.shard_sender(t as usize).send(d).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                HomeMsg::Subscribe { topic, req } => home.subscribe(&topic, req, now, &mut out),
                HomeMsg::Unsubscribe { topic, shard } => {
                    home.unsubscribe(&topic, shard, now, &mut out)
                }
                HomeMsg::Barrier(token) => {
                    if home.is_cluster() {
                        home.barrier(token);
                    } else {
                        for t in 0..hub.shard_count() {
                            let _ = hub
                                .shard_sender(t)
                                .send(ShardMsg::Barrier(token.clone()))
                                .await;
                        }
                    }
                }
            }
            // In the order the messages came: a SUBSCRIBE's ack must reach
            // its shard before the deliveries of later publications, and
            // after those of earlier ones.
            if !out.is_empty()
                && !carry_out(&hub, broker.as_deref(), id, &mut out, &mut published).await
            {
                return;
            }
        }
        if !carry_out(&hub, broker.as_deref(), id, &mut out, &mut published).await {
            return;
        }
        stats.published.store(published, Ordering::Relaxed);
        stats
            .topics
            .store(home.topic_count() as u64, Ordering::Relaxed);
    }
}

/// Carries out the effects in `out`, in order. False once the shards are
/// gone (shutdown).
async fn carry_out(
    hub: &Hub,
    broker: Option<&dyn Broker>,
    id: usize,
    out: &mut Vec<Effect>,
    published: &mut u64,
) -> bool {
    for effect in out.drain(..) {
        match effect {
            Effect::Deliver {
                topic,
                frame,
                at,
                to,
            } => {
                *published += 1;
                for t in to {
                    let d = ShardMsg::Deliver {
                        topic: topic.clone(),
                        frame: frame.clone(),
                        at,
                    };
                    if hub.shard_sender(t as usize).send(d).await.is_err() {
                        return false;
                    }
                }
            }
            Effect::Ack { shard, ack } => {
                if hub
                    .shard_sender(shard)
                    .send(ShardMsg::Subscribed(ack))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Effect::Resolve { origin, result } => match origin {
                Origin::None => {}
                Origin::Waiter(r) => {
                    let _ = r.send(result);
                }
                Origin::Feed(f) => {
                    if let Err(e) = result {
                        f.fail(e);
                    }
                }
            },
            Effect::Evict { topic, to } => {
                for t in to {
                    let m = ShardMsg::Evict {
                        topic: topic.clone(),
                    };
                    if hub.shard_sender(t as usize).send(m).await.is_err() {
                        return false;
                    }
                }
            }
            other => {
                if let Some(b) = broker {
                    to_broker(b, id, other);
                }
            }
        }
    }
    true
}

async fn recv_event(events: &mut Option<mpsc::Receiver<broker::Event>>) -> Option<broker::Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn to_broker(b: &dyn Broker, part: usize, effect: Effect) {
    match effect {
        Effect::Append {
            topic,
            expect,
            payloads,
        } => b.append(part, topic, expect, payloads),
        Effect::Open(topic) => b.open(part, topic),
        Effect::Close(topic) => b.close(part, topic),
        Effect::Fetch { topic, after } => b.fetch(part, topic, after),
        Effect::History { topic, down_to_seq } => b.history(part, topic, down_to_seq),
        Effect::Deliver { .. }
        | Effect::Ack { .. }
        | Effect::Resolve { .. }
        | Effect::Evict { .. } => {}
    }
}
