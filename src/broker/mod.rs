//! The broker seam: how the homes of several nodes agree on one sequence
//! per topic.
//!
//! A node's homes ([`crate::hub`]) own what a node knows of a topic (its
//! seq, epoch, history ring, which shards subscribe). Where the seq comes
//! from is the backend's business:
//!
//! - [`Backend::Local`], the default: one node, so the home is the topic's
//!   only writer and assigns `seq + 1` in memory, in line, with no hop.
//! - [`Backend::Cluster`]: a shared, ordered **log per topic** outside the
//!   node ([`nats::NatsBroker`], JetStream). A home appends batches of
//!   publications to the topic's log on condition that the log still ends
//!   where the home believes it does ([`Broker::append`], compare-and-set),
//!   and every node that follows the topic receives every appended
//!   [`Record`] in log order. The seq of a publication is its position in
//!   the topic's log, so every node sees the same seq and epoch.
//!
//! Everything a backend reports comes back to the home of the topic as an
//! [`Event`] on that home's bounded event channel; a backend never touches
//! hub state. Interest is an event the backend sees: [`Broker::open`] when
//! a node's first subscriber to a topic arrives, [`Broker::close`] when the
//! last one leaves (or the topic expires on the node).
//!
//! Only this module names NATS.

pub mod codec;
pub mod nats;

use std::sync::Arc;

use bytes::Bytes;

/// Where a topic's log ends: the seq of its last publication, the epoch
/// of its sequence, and the backend's position (`offset`) of the record
/// that holds it. `offset` 0 is an empty log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub offset: u64,
}

/// One entry of a topic's log: `count` publications with seqs
/// `first_seq ..`, or none (a marker that fixes the epoch of a topic that
/// has subscribers but no publication yet).
#[derive(Debug, Clone)]
pub struct Record {
    /// The backend's position of this record (increasing along the log).
    pub offset: u64,
    /// The offset of the record before it in the same topic (0: first).
    pub prev: u64,
    pub epoch: Arc<str>,
    pub first_seq: u64,
    /// The payloads, framed by [`codec`].
    pub body: Bytes,
}

impl Record {
    /// A record from the text of its three headers (`Herald-Epoch`,
    /// `Herald-Seq`, `Nats-Expected-Last-Subject-Sequence`), its body and
    /// its offset; `None` when it is not one of ours. Records come from
    /// other nodes through the broker, so everything is checked here before
    /// the hub does arithmetic on it.
    pub fn decode(
        epoch: Option<&str>,
        first_seq: Option<&str>,
        prev: Option<&str>,
        body: Bytes,
        offset: u64,
    ) -> Option<Record> {
        let num = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
        let epoch = epoch?;
        if epoch.is_empty() || epoch.len() > 64 {
            return None;
        }
        let first_seq = num(first_seq).filter(|s| *s >= 1)?;
        let count = codec::validate(&body)?;
        // The hub computes `first_seq + i`, `last_seq()` and the next
        // record's `last_seq() + 1`: refuse a record whose seqs would run
        // past u64::MAX (found by fuzz/broker_record).
        first_seq.checked_add(u64::try_from(count).ok()?)?;
        Some(Record {
            offset,
            prev: num(prev)?,
            epoch: Arc::from(epoch),
            first_seq,
            body,
        })
    }

    /// The payloads in seq order, as slices of the body (no copy).
    pub fn payloads(&self) -> codec::Payloads<'_> {
        codec::Payloads::new(&self.body)
    }

    /// The seq of the last publication in this record (`first_seq - 1` for
    /// a marker).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.payloads().count() as u64 - 1
    }
}

/// A successful append: the batch got seqs `first_seq ..= tail.seq`.
#[derive(Debug, Clone)]
pub struct Appended {
    pub first_seq: u64,
    pub tail: Tail,
}

/// The answer to [`Broker::fetch`].
#[derive(Debug)]
pub enum Fetched {
    /// The records after the requested offset, in log order. `more`: there
    /// are others after these; fetch again from the last one.
    Records { records: Vec<Record>, more: bool },
    /// The log no longer continues from the requested offset (its history
    /// was cut or the topic started over); it now ends at this tail, or is
    /// empty (`None`).
    Moved(Option<Tail>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached (or did not answer in time).
    #[error("the cluster broker is unreachable")]
    Unavailable,
    /// A publication larger than the broker takes in one message.
    #[error("publication too large for the cluster broker")]
    TooLarge,
    /// Other writers kept moving the log; gave up after several tries.
    #[error("the topic's log kept moving; gave up")]
    Contended,
    #[error("broker: {0}")]
    Other(String),
}

/// What a backend reports to the home of a topic.
#[derive(Debug)]
pub enum Event {
    /// A record of a topic this node follows, as the log delivered it.
    Record { topic: Arc<str>, record: Record },
    Appended {
        topic: Arc<str>,
        result: Result<Appended, BrokerError>,
    },
    /// The answer to [`Broker::open`]: the log's tail once this node
    /// follows the topic (a new topic's log gets its epoch here).
    Opened {
        topic: Arc<str>,
        result: Result<Tail, BrokerError>,
    },
    Fetched {
        topic: Arc<str>,
        after: u64,
        result: Result<Fetched, BrokerError>,
    },
    /// The answer to [`Broker::history`]: records in log order, ending
    /// with the tail's.
    History {
        topic: Arc<str>,
        result: Result<Vec<Record>, BrokerError>,
    },
    /// The broker is reachable again after an outage: what was missed
    /// must be fetched.
    Reconnected,
    /// The broker became unreachable.
    Disconnected,
}

/// A shared, ordered log per topic. Every call returns at once; its outcome
/// comes later as an [`Event`] on the event channel of partition `part`.
pub trait Broker: Send + Sync + 'static {
    /// Appends `payloads` (none: a marker) to the topic's log if it still
    /// ends at `expect` (or, without `expect`, wherever it ends: the backend
    /// reads the tail first). When the log moved, the backend re-reads the
    /// tail and tries again; a log that does not exist yet is started with
    /// a new epoch. → [`Event::Appended`].
    fn append(&self, part: usize, topic: Arc<str>, expect: Option<Tail>, payloads: Vec<Bytes>);
    /// This node starts following the topic: from now on every record
    /// appended is reported as [`Event::Record`] (possibly some from
    /// before the tail as well), then → [`Event::Opened`].
    fn open(&self, part: usize, topic: Arc<str>);
    /// This node stops following the topic.
    fn close(&self, part: usize, topic: Arc<str>);
    /// The records after offset `after`. → [`Event::Fetched`].
    fn fetch(&self, part: usize, topic: Arc<str>, after: u64);
    /// The newest records of the topic back to the one holding
    /// `down_to_seq` (or as far as the log reaches). → [`Event::History`].
    fn history(&self, part: usize, topic: Arc<str>, down_to_seq: u64);
    /// Whether the broker is reachable right now.
    fn connected(&self) -> bool;
    /// The largest record body the broker takes in one message
    /// (`usize::MAX` while unknown).
    fn max_record_bytes(&self) -> usize;
    /// A short name for logs and `/api/stats`.
    fn describe(&self) -> BrokerInfo;
    /// Shares this node's stats (the `/api/stats` document) with the other
    /// nodes; best effort, nothing waits for it.
    fn announce(&self, stats: Bytes);
    /// The newest stats every other node announced within `max_age`
    /// (a node that stopped announcing has left), by node id.
    fn peers(&self, max_age: std::time::Duration) -> Vec<Peer>;
}

/// Another node, as it last described itself.
#[derive(Debug, Clone)]
pub struct Peer {
    pub node_id: String,
    pub age: std::time::Duration,
    pub stats: Bytes,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerInfo {
    pub kind: &'static str,
    pub node_id: String,
    pub connected: bool,
}

/// Which backend the homes use.
#[derive(Clone, Default)]
pub enum Backend {
    /// One node: the homes sequence their topics themselves.
    #[default]
    Local,
    /// Several nodes on a shared broker.
    Cluster(Arc<dyn Broker>),
}

impl Backend {
    pub fn info(&self) -> BrokerInfo {
        match self {
            Backend::Local => BrokerInfo {
                kind: "local",
                node_id: String::new(),
                connected: true,
            },
            Backend::Cluster(b) => b.describe(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// False only while a cluster broker is unreachable.
    pub fn connected(&self) -> bool {
        match self {
            Backend::Local => true,
            Backend::Cluster(b) => b.connected(),
        }
    }
}

/// A fresh epoch: a short random string.
pub fn new_epoch() -> Arc<str> {
    let n: u64 = rand::random();
    Arc::from(format!("{n:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Bytes {
        codec::encode(&vec![Bytes::from_static(b"p"); n])
    }

    #[test]
    fn records_decode_from_their_headers() {
        let r = Record::decode(Some("ep"), Some("41"), Some("17"), body(3), 9).unwrap();
        assert_eq!(
            (r.first_seq, r.prev, r.offset, r.last_seq()),
            (41, 17, 9, 43)
        );
        assert_eq!(&*r.epoch, "ep");
        let marker = Record::decode(Some("ep"), Some("1"), Some("0"), body(0), 1).unwrap();
        assert_eq!(marker.last_seq(), 0);
        for (epoch, seq, prev) in [
            (None, Some("1"), Some("0")),
            (Some(""), Some("1"), Some("0")),
            (Some(&*"e".repeat(65)), Some("1"), Some("0")),
            (Some("ep"), Some("0"), Some("0")),
            (Some("ep"), Some("-1"), Some("0")),
            (Some("ep"), None, Some("0")),
            (Some("ep"), Some("1"), None),
        ] {
            assert!(Record::decode(epoch, seq, prev, body(1), 1).is_none());
        }
        assert!(Record::decode(
            Some("ep"),
            Some("1"),
            Some("0"),
            Bytes::from_static(&[0, 0]),
            1
        )
        .is_none());
    }

    /// Regression (fuzz/broker_record): a record whose seqs run past
    /// u64::MAX made `last_seq` overflow (a panic in debug builds, a wrapped
    /// seq in release ones). It is refused; the last seq a record may reach
    /// leaves room for the next record's `+ 1`.
    #[test]
    fn records_whose_seqs_would_overflow_are_refused() {
        let max = u64::MAX.to_string();
        assert!(Record::decode(Some("ep"), Some(&max), Some("0"), body(1), 1).is_none());
        let near = (u64::MAX - 1).to_string();
        assert!(Record::decode(Some("ep"), Some(&near), Some("0"), body(2), 1).is_none());
        let r = Record::decode(Some("ep"), Some(&near), Some("0"), body(1), 1).unwrap();
        assert_eq!(r.last_seq(), u64::MAX - 1);
        let m = Record::decode(Some("ep"), Some(&max), Some("0"), body(0), 1).unwrap();
        assert_eq!(m.last_seq(), u64::MAX - 1);
    }
}
