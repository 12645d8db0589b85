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
//! In cluster mode the seq comes from the topic's log in the broker
//! ([`crate::broker`]): the home appends, and applies what the log delivers
//! back to every node, its own included.
//!
//! This module never touches a socket and never awaits anything but its own
//! bounded channels.

pub mod home;
pub mod ring;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::broker::Backend;
pub use state::{FeedStatus, HomeState, Origin, SubscribeReq};

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
        origin: Origin,
    },
    Subscribe {
        topic: Arc<str>,
        req: SubscribeReq,
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
        frame: Bytes,
        at: Instant,
    },
    Subscribed(Box<SubscribeAck>),
    /// Close every local subscriber of the topic with 1001: this node
    /// cannot continue its stream without a gap (cluster mode).
    Evict {
        topic: Arc<str>,
    },
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
    /// The subscription could not be made: the ERROR code for the client
    /// (503 while the cluster broker is unreachable).
    pub error: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("the gateway is shutting down")]
    Closed,
    #[error("the cluster broker is unreachable")]
    Unavailable,
    #[error("publication too large for the cluster broker")]
    TooLarge,
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
    backend: Backend,
}

/// The receiving ends: one home inbox per topic partition (for
/// [`home::run`]), one delivery inbox per shard.
pub struct Inboxes {
    pub homes: Vec<mpsc::Receiver<HomeMsg>>,
    pub shards: Vec<mpsc::Receiver<ShardMsg>>,
}

impl Hub {
    /// A hub for `shards` delivery shards and as many topic partitions
    /// (homes), every inbox `capacity` messages deep, sequencing through
    /// `backend`.
    pub fn new(shards: usize, capacity: usize, backend: Backend) -> (Hub, Inboxes) {
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
                backend,
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

    /// The home partition of `topic`.
    pub fn home_of(&self, topic: &str) -> usize {
        crate::wire::topic::partition(topic, self.inner.home.len())
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// A publication would be refused at once: cluster mode with the
    /// broker unreachable.
    fn refusing(&self) -> bool {
        !self.inner.backend.connected()
    }

    pub(crate) fn home_sender(&self, topic: &str) -> &mpsc::Sender<HomeMsg> {
        &self.inner.home[self.home_of(topic)]
    }

    pub(crate) fn shard_sender(&self, shard: usize) -> &mpsc::Sender<ShardMsg> {
        &self.inner.shards[shard]
    }

    /// Publishes and waits for the seq the topic got (in cluster mode: its
    /// seq in the topic's log, once the broker has stored it).
    pub async fn publish(&self, topic: Arc<str>, payload: Bytes) -> Result<u64, HubError> {
        if self.refusing() {
            return Err(HubError::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        self.home_sender(&topic)
            .send(HomeMsg::Publish {
                topic,
                payload,
                at: Instant::now(),
                origin: Origin::Waiter(tx),
            })
            .await
            .map_err(|_| HubError::Closed)?;
        rx.await.map_err(|_| HubError::Closed)?
    }

    /// Publishes without waiting for the seq (the feed path: throughput
    /// first). Waits only while the home's inbox is full. In cluster mode a
    /// publication the broker refuses later marks `feed` as failed; one
    /// refused at once is an error here.
    pub async fn publish_nowait(
        &self,
        topic: Arc<str>,
        payload: Bytes,
        at: Instant,
        feed: &Arc<FeedStatus>,
    ) -> Result<(), HubError> {
        let origin = if self.inner.backend.is_cluster() {
            if let Some(e) = feed.error() {
                return Err(e);
            }
            if self.refusing() {
                return Err(HubError::Unavailable);
            }
            Origin::Feed(feed.clone())
        } else {
            Origin::None
        };
        self.home_sender(&topic)
            .send(HomeMsg::Publish {
                topic,
                payload,
                at,
                origin,
            })
            .await
            .map_err(|_| HubError::Closed)
    }

    /// Resolves once every publication enqueued before it (by this caller)
    /// has been sequenced and handed to every shard's delivery task (one
    /// node), or stored in its topic's log or refused (cluster mode: check
    /// the feed's [`FeedStatus`] afterwards).
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
