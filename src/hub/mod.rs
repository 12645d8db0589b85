//! The home side of fan-out: per-topic sequencing, history rings and the
//! cross-shard messages.
//!
//! Every topic has one *home*: the home task of partition
//! `hash(name) % shards` ([`home::run`], off the shards). The home assigns
//! the topic's seqs, encodes each PUBLICATION frame once, keeps it in the
//! topic's [`ring::Ring`] and forwards the same `Bytes` to every shard that
//! has subscribers for the topic. A subscription is registered through the
//! home too, and the home answers on the same channel its deliveries travel
//! on: the answer carries the last seq, so a shard knows exactly where live
//! delivery starts — no gap, no duplicate, no lock.
//!
//! This module never touches a socket and never awaits anything but its own
//! bounded channels.

pub mod home;
pub mod ring;

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::wire::client::publication_frame;
use ring::Ring;

/// Identifies a session within its shard: slab slot and generation, so a
/// late answer for a closed session never reaches its slot's next tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub slot: u32,
    pub generation: u32,
}

/// Every shard that must pass a barrier holds a clone; the waiter wakes when
/// the last clone is dropped, i.e. when every shard has processed everything
/// queued before the barrier.
#[derive(Debug, Clone)]
pub struct BarrierToken(#[allow(dead_code)] mpsc::Sender<()>);

/// Messages to a home task.
#[derive(Debug)]
pub enum HomeMsg {
    Publish {
        topic: Arc<str>,
        payload: Bytes,
        at: Instant,
        reply: Option<oneshot::Sender<u64>>,
    },
    Subscribe {
        topic: Arc<str>,
        shard: usize,
        session: SessionKey,
        id: u32,
        recover: Option<(u64, Option<Box<str>>)>,
    },
    /// One subscription of `shard` ended.
    Unsubscribe {
        topic: Arc<str>,
        shard: usize,
    },
    Barrier(BarrierToken),
}

/// Messages to a shard's delivery task.
#[derive(Debug)]
pub enum ShardMsg {
    Deliver {
        topic: Arc<str>,
        seq: u64,
        frame: Bytes,
        at: Instant,
    },
    Subscribed(Box<SubscribeAck>),
    Barrier(BarrierToken),
    Disconnect {
        user: Arc<str>,
        reply: oneshot::Sender<usize>,
    },
    Drain,
}

#[derive(Debug)]
pub struct SubscribeAck {
    pub topic: Arc<str>,
    pub session: SessionKey,
    /// The SUBSCRIBE request's id, echoed in the REPLY.
    pub id: u32,
    pub seq: u64,
    pub epoch: Arc<str>,
    pub recovered: bool,
    /// PUBLICATION frames `since+1 ..= seq`, shared with the ring.
    pub replay: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("the gateway is shutting down")]
    Closed,
}

/// The cheap, cloneable, thread-safe handle everyone publishes through.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    home: Vec<mpsc::Sender<HomeMsg>>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    home_stats: Box<[home::HomeStats]>,
}

/// The receiving ends: one home inbox per topic partition (for
/// [`home::run`]), one delivery inbox per shard.
pub struct Inboxes {
    pub homes: Vec<mpsc::Receiver<HomeMsg>>,
    pub shards: Vec<mpsc::Receiver<ShardMsg>>,
}

impl Hub {
    /// A hub for `shards` delivery shards and as many topic partitions
    /// (homes), every inbox `capacity` messages deep.
    pub fn new(shards: usize, capacity: usize) -> (Hub, Inboxes) {
        let mut home = Vec::with_capacity(shards);
        let mut deliver = Vec::with_capacity(shards);
        let mut inboxes = Inboxes {
            homes: Vec::with_capacity(shards),
            shards: Vec::with_capacity(shards),
        };
        for _ in 0..shards {
            let (htx, hrx) = mpsc::channel(capacity);
            let (dtx, drx) = mpsc::channel(capacity);
            home.push(htx);
            deliver.push(dtx);
            inboxes.homes.push(hrx);
            inboxes.shards.push(drx);
        }
        let hub = Hub {
            inner: Arc::new(HubInner {
                home_stats: (0..shards).map(|_| home::HomeStats::default()).collect(),
                home,
                shards: deliver,
            }),
        };
        (hub, inboxes)
    }

    /// Per-partition counts, indexed like the home inboxes.
    pub fn home_stats(&self) -> &[home::HomeStats] {
        &self.inner.home_stats
    }

    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The shard that sequences `topic`. Fixed hasher keys: every thread
    /// must agree.
    pub fn home_of(&self, topic: &str) -> usize {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(topic);
        (h % self.inner.home.len() as u64) as usize
    }

    pub(crate) fn home_sender(&self, topic: &str) -> &mpsc::Sender<HomeMsg> {
        &self.inner.home[self.home_of(topic)]
    }

    pub(crate) fn shard_sender(&self, shard: usize) -> &mpsc::Sender<ShardMsg> {
        &self.inner.shards[shard]
    }

    /// Publishes and waits for the seq the topic's home gave the message.
    pub async fn publish(&self, topic: Arc<str>, payload: Bytes) -> Result<u64, HubError> {
        let (tx, rx) = oneshot::channel();
        self.home_sender(&topic)
            .send(HomeMsg::Publish {
                topic,
                payload,
                at: Instant::now(),
                reply: Some(tx),
            })
            .await
            .map_err(|_| HubError::Closed)?;
        rx.await.map_err(|_| HubError::Closed)
    }

    /// Publishes without waiting for the seq (the feed path: throughput
    /// first). Waits only while the home's inbox is full.
    pub async fn publish_nowait(
        &self,
        topic: Arc<str>,
        payload: Bytes,
        at: Instant,
    ) -> Result<(), HubError> {
        self.home_sender(&topic)
            .send(HomeMsg::Publish {
                topic,
                payload,
                at,
                reply: None,
            })
            .await
            .map_err(|_| HubError::Closed)
    }

    /// Resolves once every publication enqueued before it (by this caller)
    /// has been sequenced and handed to every shard's delivery task.
    pub async fn barrier(&self) -> Result<(), HubError> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        for home in &self.inner.home {
            home.send(HomeMsg::Barrier(BarrierToken(tx.clone())))
                .await
                .map_err(|_| HubError::Closed)?;
        }
        drop(tx);
        // Never receives a value: `None` means every token was dropped.
        let _ = rx.recv().await;
        Ok(())
    }

    /// Closes every session of `user` with 4003; returns how many.
    pub async fn disconnect_user(&self, user: &str) -> Result<usize, HubError> {
        let user: Arc<str> = Arc::from(user);
        let mut waits = Vec::with_capacity(self.inner.shards.len());
        for shard in &self.inner.shards {
            let (tx, rx) = oneshot::channel();
            shard
                .send(ShardMsg::Disconnect {
                    user: user.clone(),
                    reply: tx,
                })
                .await
                .map_err(|_| HubError::Closed)?;
            waits.push(rx);
        }
        let mut total = 0;
        for rx in waits {
            total += rx.await.map_err(|_| HubError::Closed)?;
        }
        Ok(total)
    }

    /// Asks every shard to close its sessions with 1001 after what is queued.
    pub async fn drain(&self) {
        for shard in &self.inner.shards {
            let _ = shard.send(ShardMsg::Drain).await;
        }
    }
}

/// A topic as its home sees it.
struct HomeTopic {
    /// The canonical name, shared with every delivery of this topic.
    name: Arc<str>,
    seq: u64,
    epoch: Arc<str>,
    ring: Ring,
    /// Subscriptions per shard; a shard gets deliveries while its count > 0.
    interest: Box<[u32]>,
    last_active: Instant,
}

/// What a home task owns: the topics it sequences. Sans-IO: the task feeds
/// it messages and sends what it returns.
pub struct HomeState {
    shards: usize,
    history: usize,
    idle_ttl: Duration,
    topics: HashMap<Arc<str>, HomeTopic>,
}

/// Where a home task must send things after handling one message.
pub enum HomeOutput {
    None,
    /// Send `ShardMsg::Deliver` with these fields to each shard in `targets`.
    Deliver {
        topic: Arc<str>,
        seq: u64,
        frame: Bytes,
        at: Instant,
    },
    Ack {
        shard: usize,
        ack: Box<SubscribeAck>,
    },
}

impl HomeState {
    pub fn new(shards: usize, history: usize, idle_ttl: Duration) -> Self {
        HomeState {
            shards,
            history,
            idle_ttl,
            topics: HashMap::new(),
        }
    }

    fn topic(&mut self, name: &Arc<str>, now: Instant) -> &mut HomeTopic {
        // Look up by `&str` first so the common case (topic exists) does not
        // touch the key's refcount.
        if !self.topics.contains_key(&**name) {
            let t = HomeTopic {
                name: name.clone(),
                seq: 0,
                epoch: new_epoch(),
                ring: Ring::new(self.history),
                interest: vec![0; self.shards].into_boxed_slice(),
                last_active: now,
            };
            self.topics.insert(name.clone(), t);
        }
        let t = self
            .topics
            .get_mut(&**name)
            .expect("present: inserted above when missing");
        t.last_active = now;
        t
    }

    /// Sequences and encodes one publication. Returns the seq.
    pub fn publish(
        &mut self,
        topic: &Arc<str>,
        payload: &[u8],
        now: Instant,
    ) -> (u64, Bytes, Arc<str>) {
        let t = self.topic(topic, now);
        t.seq += 1;
        let frame = publication_frame(&t.name, t.seq, payload);
        t.ring.push(t.seq, frame.clone());
        (t.seq, frame, t.name.clone())
    }

    /// Which shards want deliveries of `topic` (call right after `publish`).
    pub fn interested<'a>(&'a self, topic: &str) -> impl Iterator<Item = usize> + 'a {
        self.topics
            .get(topic)
            .into_iter()
            .flat_map(|t| t.interest.iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| i)
    }

    pub fn subscribe(
        &mut self,
        topic: &Arc<str>,
        shard: usize,
        session: SessionKey,
        id: u32,
        recover: Option<(u64, Option<Box<str>>)>,
        now: Instant,
    ) -> Box<SubscribeAck> {
        let t = self.topic(topic, now);
        if let Some(n) = t.interest.get_mut(shard) {
            *n += 1;
        }
        let mut recovered = false;
        let mut replay = Vec::new();
        if let Some((since, Some(epoch))) = &recover {
            if **epoch == *t.epoch {
                if let Some(frames) = t.ring.replay(*since, t.seq) {
                    replay.extend(frames.cloned());
                    recovered = true;
                }
            }
        }
        Box::new(SubscribeAck {
            topic: t.name.clone(),
            session,
            id,
            seq: t.seq,
            epoch: t.epoch.clone(),
            recovered,
            replay,
        })
    }

    pub fn unsubscribe(&mut self, topic: &str, shard: usize, now: Instant) {
        if let Some(t) = self.topics.get_mut(topic) {
            if let Some(n) = t.interest.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            t.last_active = now;
        }
    }

    /// Forgets topics nobody subscribes to that have been quiet for the idle
    /// TTL. Their next use starts a new epoch, which is what the contract
    /// says a lost history looks like.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.idle_ttl;
        let before = self.topics.len();
        self.topics.retain(|_, t| {
            t.interest.iter().any(|n| *n > 0) || now.duration_since(t.last_active) < ttl
        });
        before - self.topics.len()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn last_seq(&self, topic: &str) -> Option<(u64, Arc<str>)> {
        self.topics.get(topic).map(|t| (t.seq, t.epoch.clone()))
    }
}

/// A short random string; a new one for every (re)created topic.
fn new_epoch() -> Arc<str> {
    let n: u64 = rand::random();
    Arc::from(format!("{n:016x}"))
}
