//! A session's queue of frames the socket would not take yet, and the
//! slow-consumer policies that keep it bounded (PROTOCOL.md §8).
//!
//! Frames are shared `Bytes` (a refcount, never a copy). The queue holds
//! nothing while the socket keeps up, which is the common case; it is the
//! slow path and the measure of a slow consumer. Sans-IO: the session
//! writes what [`Queue::fill`] lends it and reports back with
//! [`Outbox::advance`]; every decision here is a plain function of what is
//! queued and the bound, unit- and property-tested without sockets.

use std::collections::{HashSet, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::config::SlowPolicy as Policy;

/// What a queued frame is, for the policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A reply, an error, a recovery replay, a control frame: never
    /// dropped or conflated.
    Reply,
    /// A publication of a `disconnect` topic.
    Disconnect,
    /// A publication of a `drop_oldest` topic.
    DropOldest,
    /// A publication of this `conflate` topic.
    Conflate(Arc<str>),
}

impl Kind {
    /// The kind of a publication of `topic` under `policy`.
    pub fn publication(policy: Policy, topic: &Arc<str>) -> Kind {
        match policy {
            Policy::Disconnect => Kind::Disconnect,
            Policy::DropOldest => Kind::DropOldest,
            Policy::Conflate => Kind::Conflate(topic.clone()),
        }
    }

    fn conflates_with(&self, topic: &Arc<str>) -> bool {
        matches!(self, Kind::Conflate(t) if Arc::ptr_eq(t, topic) || **t == **topic)
    }
}

/// What became of a frame offered to a connection that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued (and everything fits).
    Queued,
    /// It replaced an older queued publication of its (conflated) topic.
    Replaced,
    /// Queued after dropping this many older `drop_oldest` publications.
    Dropped(usize),
    /// Over the bound with nothing left to drop: close with 4008.
    Overflow,
}

/// One pointer while empty: every idle session has an outbox, few use it.
#[derive(Debug, Default)]
pub struct Outbox(Option<Box<Queue>>);

#[derive(Debug, Clone)]
struct Entry {
    frame: Bytes,
    kind: Kind,
}

#[derive(Debug, Default)]
pub struct Queue {
    entries: VecDeque<Entry>,
    /// Bytes of `entries[0]` already written.
    offset: usize,
    /// Unwritten bytes queued.
    bytes: usize,
    /// Of `bytes`, those of conflated publications: these never close a
    /// connection, so the bound is enforced on the rest.
    conflated: usize,
    /// Over the bound since the queue was last empty: conflation applies.
    behind: bool,
}

static EMPTY: Queue = Queue {
    entries: VecDeque::new(),
    offset: 0,
    bytes: 0,
    conflated: 0,
    behind: false,
};

impl std::ops::Deref for Outbox {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl Outbox {
    fn queue(&mut self) -> &mut Queue {
        self.0.get_or_insert_with(Box::default)
    }

    /// Queues `frame` behind everything else, then applies the policies
    /// if the queue is over `bound`.
    pub fn push(&mut self, frame: Bytes, kind: Kind, bound: usize) -> Offer {
        self.queue().push(frame, kind, bound)
    }

    /// Puts frames in front of what is queued, keeping their order; the
    /// first of them has `offset` bytes written already. Only valid when
    /// nothing of the current front has been written. Then applies the
    /// policies if the queue is over `bound`.
    pub fn prepend(
        &mut self,
        frames: impl DoubleEndedIterator<Item = (Bytes, Kind)>,
        offset: usize,
        bound: usize,
    ) -> Offer {
        let q = self.queue();
        q.prepend(frames, offset);
        q.settle(bound)
    }

    /// Marks `n` bytes written. Returns the number of frames completed.
    pub fn advance(&mut self, n: usize) -> usize {
        let Some(q) = self.0.as_mut() else { return 0 };
        let done = q.advance(n);
        if q.entries.is_empty() {
            // The queue is the slow path; an idle connection keeps no
            // memory for it. Drained means caught up: no longer behind.
            self.0 = None;
        }
        done
    }

    /// Drops every frame not yet started (a partly written frame must be
    /// finished or the stream is corrupt). Returns how many were dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let Some(q) = self.0.as_mut() else { return 0 };
        let dropped = q.drop_unstarted();
        if q.entries.is_empty() {
            self.0 = None;
        }
        dropped
    }
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Unwritten bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames queued (the first may be partly written).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Over the bound since the queue was last empty.
    pub fn is_behind(&self) -> bool {
        self.behind
    }

    /// Index of the first entry that may still be dropped or replaced.
    fn first_unstarted(&self) -> usize {
        usize::from(self.offset > 0)
    }

    fn add(&mut self, e: &Entry, n: usize) {
        self.bytes += n;
        if matches!(e.kind, Kind::Conflate(_)) {
            self.conflated += n;
        }
    }

    fn sub(&mut self, kind: &Kind, n: usize) {
        self.bytes -= n;
        if matches!(kind, Kind::Conflate(_)) {
            self.conflated -= n;
        }
    }

    fn push(&mut self, frame: Bytes, kind: Kind, bound: usize) -> Offer {
        if self.behind {
            if let Kind::Conflate(topic) = &kind {
                let start = self.first_unstarted();
                if let Some(i) = (start..self.entries.len())
                    .rev()
                    .find(|&i| self.entries[i].kind.conflates_with(topic))
                {
                    // In place: the topic keeps its turn in the queue, and
                    // the client gets its latest value with its real seq.
                    let (old, new) = (self.entries[i].frame.len(), frame.len());
                    self.bytes = self.bytes - old + new;
                    self.conflated = self.conflated - old + new;
                    self.entries[i].frame = frame;
                    return Offer::Replaced;
                }
            }
        }
        let e = Entry { frame, kind };
        self.add(&e, e.frame.len());
        self.entries.push_back(e);
        self.settle(bound)
    }

    fn prepend(&mut self, frames: impl DoubleEndedIterator<Item = (Bytes, Kind)>, offset: usize) {
        debug_assert_eq!(self.offset, 0);
        for (frame, kind) in frames.rev() {
            let e = Entry { frame, kind };
            self.add(&e, e.frame.len());
            self.entries.push_front(e);
        }
        if let Some(front) = self.entries.front().cloned() {
            self.sub(&front.kind, offset);
        }
        self.offset = offset;
    }

    /// Applies the policies to a queue over `bound`: conflated topics keep
    /// their latest publication only, then `drop_oldest` publications go,
    /// oldest first, until the rest fits.
    fn settle(&mut self, bound: usize) -> Offer {
        if self.bytes <= bound {
            return Offer::Queued;
        }
        let mut replaced = false;
        if !self.behind {
            self.behind = true;
            replaced = self.conflate_all();
        }
        let mut dropped = 0;
        let mut i = self.first_unstarted();
        while self.bytes - self.conflated > bound && i < self.entries.len() {
            if self.entries[i].kind == Kind::DropOldest {
                if let Some(e) = self.entries.remove(i) {
                    self.sub(&e.kind, e.frame.len());
                    dropped += 1;
                }
            } else {
                i += 1;
            }
        }
        if self.bytes - self.conflated > bound {
            Offer::Overflow
        } else if dropped > 0 {
            Offer::Dropped(dropped)
        } else if replaced {
            Offer::Replaced
        } else {
            Offer::Queued
        }
    }

    /// On falling behind: of each conflated topic's unstarted publications
    /// only the latest stays. Returns whether any went.
    fn conflate_all(&mut self) -> bool {
        let start = self.first_unstarted();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        let mut any = false;
        let mut i = self.entries.len();
        while i > start {
            i -= 1;
            let Kind::Conflate(topic) = &self.entries[i].kind else {
                continue;
            };
            if seen.insert(topic.clone()) {
                continue;
            }
            if let Some(e) = self.entries.remove(i) {
                self.sub(&e.kind, e.frame.len());
                any = true;
            }
        }
        any
    }

    /// Fills `iov` with the unwritten bytes, oldest first. Returns how many
    /// slices were filled.
    pub fn fill<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let s = if i == 0 {
                &e.frame[self.offset..]
            } else {
                &e.frame[..]
            };
            iov[n] = IoSlice::new(s);
            n += 1;
        }
        n
    }

    /// Marks `n` bytes written. Returns the number of frames completed.
    fn advance(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while let Some(front) = self.entries.front() {
            let left = front.frame.len() - self.offset;
            let kind = front.kind.clone();
            if n < left {
                self.offset += n;
                self.sub(&kind, n);
                break;
            }
            n -= left;
            self.sub(&kind, left);
            self.offset = 0;
            self.entries.pop_front();
            done += 1;
        }
        if self.entries.is_empty() {
            self.behind = false;
        }
        done
    }

    /// Drops every frame not yet started (a partly written frame must be
    /// finished or the stream is corrupt). Returns how many were dropped.
    fn drop_unstarted(&mut self) -> usize {
        let keep = self.first_unstarted().min(self.entries.len());
        let dropped = self.entries.len() - keep;
        self.entries.truncate(keep);
        self.bytes = 0;
        self.conflated = 0;
        if let Some(front) = self.entries.front().cloned() {
            let n = front.frame.len() - self.offset;
            self.add(&front, n);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov_bytes(o: &Outbox) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = o.fill(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    const BIG: usize = 1 << 20;

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut o = Outbox::default();
        o.push(b(b"abc"), Kind::Reply, BIG);
        o.push(b(b"de"), Kind::Reply, BIG);
        assert_eq!(o.bytes(), 5);
        assert_eq!(o.advance(2), 0);
        assert_eq!(iov_bytes(&o), b"cde");
        assert_eq!(o.advance(2), 1);
        assert_eq!(iov_bytes(&o), b"e");
        assert_eq!(o.bytes(), 1);
        assert_eq!(o.advance(1), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn prepend_keeps_order_and_offset() {
        let mut o = Outbox::default();
        o.push(b(b"Z"), Kind::Reply, BIG);
        o.prepend(
            [(b(b"xyz"), Kind::Disconnect), (b(b"12"), Kind::Disconnect)].into_iter(),
            1,
            BIG,
        );
        assert_eq!(iov_bytes(&o), b"yz12Z");
        assert_eq!(o.bytes(), 5);
    }

    #[test]
    fn drop_unstarted_keeps_a_partly_written_frame() {
        let mut o = Outbox::default();
        for f in [&b"abcd"[..], b"ef", b"gh"] {
            o.push(Bytes::copy_from_slice(f), Kind::Disconnect, BIG);
        }
        o.advance(1);
        assert_eq!(o.drop_unstarted(), 2);
        assert_eq!(iov_bytes(&o), b"bcd");
        assert_eq!(o.bytes(), 3);
        let mut fresh = Outbox::default();
        fresh.push(b(b"q"), Kind::Reply, BIG);
        assert_eq!(fresh.drop_unstarted(), 1);
        assert!(fresh.is_empty() && fresh.bytes() == 0);
    }

    #[test]
    fn a_disconnect_topic_over_the_bound_overflows() {
        let mut o = Outbox::default();
        assert_eq!(o.push(b(b"aaaa"), Kind::Disconnect, 6), Offer::Queued);
        assert_eq!(o.push(b(b"bbbb"), Kind::Disconnect, 6), Offer::Overflow);
    }

    #[test]
    fn drop_oldest_drops_the_oldest_unstarted_until_the_new_one_fits() {
        let mut o = Outbox::default();
        for f in [&b"1111"[..], b"2222", b"3333"] {
            o.push(Bytes::copy_from_slice(f), Kind::DropOldest, 12);
        }
        o.advance(1); // "1111" is started: it must be finished
        assert_eq!(
            o.push(b(b"4444"), Kind::DropOldest, 12),
            Offer::Dropped(1),
            "2222 goes"
        );
        assert_eq!(iov_bytes(&o), b"11133334444");
        assert!(o.is_behind());
        // Replies count toward the bound but are never dropped: the
        // publications make room for one.
        assert_eq!(o.push(b(b"RR"), Kind::Reply, 12), Offer::Dropped(1));
        assert_eq!(iov_bytes(&o), b"1114444RR");
        // Nothing droppable left: over the bound is an overflow.
        assert_eq!(o.push(b(b"RRRRRR"), Kind::Reply, 12), Offer::Dropped(1));
        assert_eq!(o.push(b(b"RRRRRR"), Kind::Reply, 12), Offer::Overflow);
        o.advance(o.bytes());
        assert!(o.is_empty() && !o.is_behind(), "drained = caught up");
    }

    #[test]
    fn conflation_keeps_the_latest_per_topic_in_place_and_never_overflows() {
        let (x, y): (Arc<str>, Arc<str>) = ("x".into(), "y".into());
        let mut o = Outbox::default();
        let cx = || Kind::Conflate(Arc::from("x"));
        assert_eq!(o.push(b(b"x1"), cx(), 4), Offer::Queued);
        assert_eq!(
            o.push(b(b"y1"), Kind::Conflate(y.clone()), 4),
            Offer::Queued
        );
        // Over the bound: now behind, and x1 gives way to x2.
        assert_eq!(
            o.push(b(b"x2"), Kind::Conflate(x.clone()), 4),
            Offer::Replaced
        );
        assert_eq!(iov_bytes(&o), b"y1x2");
        assert!(o.is_behind());
        // Behind, a newer one replaces the older in place.
        assert_eq!(
            o.push(b(b"y2"), Kind::Conflate(y.clone()), 4),
            Offer::Replaced
        );
        assert_eq!(iov_bytes(&o), b"y2x2");
        // A started frame is never replaced.
        o.advance(1);
        assert_eq!(
            o.push(b(b"y3"), Kind::Conflate(y.clone()), 4),
            Offer::Queued
        );
        assert_eq!(iov_bytes(&o), b"2x2y3");
        for i in 0..100u8 {
            let f = Bytes::from(vec![b'x', i]);
            assert_ne!(o.push(f, Kind::Conflate(x.clone()), 4), Offer::Overflow);
        }
        assert_eq!(o.len(), 3, "one per topic plus the started frame");
        assert_eq!(iov_bytes(&o), [b'2', b'x', 99, b'y', b'3']);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// 0 reply, 1 disconnect, 2 drop_oldest, 3.. conflate topic k-3.
        fn kind(k: u8) -> Kind {
            match k {
                0 => Kind::Reply,
                1 => Kind::Disconnect,
                2 => Kind::DropOldest,
                k => Kind::Conflate(Arc::from(format!("t{}", k - 3))),
            }
        }

        /// A frame that says what it is: length, id, kind, then padding.
        fn frame(id: u32, k: u8, size: usize) -> Bytes {
            let mut f = Vec::with_capacity(size);
            f.extend((size as u16).to_be_bytes());
            f.extend(id.to_be_bytes());
            f.push(k);
            f.resize(size, 0xAB);
            Bytes::from(f)
        }

        fn parse(mut stream: &[u8]) -> Vec<(u32, u8)> {
            let mut out = Vec::new();
            while stream.len() >= 7 {
                let len = u16::from_be_bytes([stream[0], stream[1]]) as usize;
                let id = u32::from_be_bytes([stream[2], stream[3], stream[4], stream[5]]);
                out.push((id, stream[6]));
                stream = &stream[len..];
            }
            assert!(stream.is_empty(), "the stream ends on a frame boundary");
            out
        }

        #[derive(Debug, Clone)]
        enum Op {
            Push(u8, usize),
            Write(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..6, 7usize..300).prop_map(|(k, n)| Op::Push(k, n)),
                1 => (0usize..1500).prop_map(Op::Write),
            ]
        }

        /// Writes up to `n` bytes, as a socket would take them.
        fn write(o: &mut Outbox, n: usize, stream: &mut Vec<u8>) {
            let mut iov = vec![IoSlice::new(&[]); 4096];
            let k = o.fill(&mut iov);
            let mut left = n;
            for s in &iov[..k] {
                let take = s.len().min(left);
                stream.extend_from_slice(&s[..take]);
                left -= take;
            }
            o.advance(n - left);
        }

        fn check_accounting(o: &Outbox) {
            let mut iov = vec![IoSlice::new(&[]); 4096];
            let k = o.fill(&mut iov);
            assert_eq!(k, o.len());
            let total: usize = iov[..k].iter().map(|s| s.len()).sum();
            assert_eq!(total, o.bytes());
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn the_policies_keep_order_bound_and_every_reply(
                bound in 64usize..2000,
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let mut o = Outbox::default();
                let mut stream = Vec::new();
                let mut pushed: Vec<(u32, u8)> = Vec::new();
                let mut overflowed = false;
                for (id, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Push(k, size) => {
                            let offer = o.push(frame(id as u32, k, size), kind(k), bound);
                            pushed.push((id as u32, k));
                            if offer == Offer::Overflow {
                                overflowed = true;
                                break;
                            }
                            // Outside conflated topics, the bound holds.
                            let q: &Queue = &o;
                            prop_assert!(q.bytes - q.conflated <= bound);
                            if q.behind {
                                // At most one unstarted entry per conflated topic.
                                let start = q.first_unstarted();
                                let mut topics = HashSet::new();
                                for e in q.entries.iter().skip(start) {
                                    if let Kind::Conflate(t) = &e.kind {
                                        prop_assert!(topics.insert(t.clone()));
                                    }
                                }
                            }
                        }
                        Op::Write(n) => write(&mut o, n, &mut stream),
                    }
                    check_accounting(&o);
                }
                if overflowed {
                    // The session closes: only a started frame is finished.
                    o.drop_unstarted();
                }
                write(&mut o, usize::MAX / 2, &mut stream);
                prop_assert!(o.is_empty() && !o.is_behind());
                let got = parse(&stream);
                // Each kind's (and topic's) frames arrive in the order pushed.
                for k in 0u8..6 {
                    let ids: Vec<u32> = got.iter().filter(|g| g.1 == k).map(|g| g.0).collect();
                    prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "kind {}: {:?}", k, ids);
                }
                if !overflowed {
                    // Replies and disconnect-topic publications are never
                    // dropped, and keep their order relative to each other.
                    let strict = |v: &[(u32, u8)]| -> Vec<u32> {
                        v.iter().filter(|g| g.1 <= 1).map(|g| g.0).collect()
                    };
                    prop_assert_eq!(strict(&got), strict(&pushed));
                    // The latest value of every conflated topic arrives.
                    for k in 3u8..6 {
                        if let Some(last) = pushed.iter().rev().find(|p| p.1 == k) {
                            prop_assert!(got.contains(last), "latest of kind {} lost", k);
                        }
                    }
                    // Nothing arrives that was not pushed, nothing twice.
                    let mut ids: Vec<u32> = got.iter().map(|g| g.0).collect();
                    ids.sort_unstable();
                    let n = ids.len();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), n);
                    prop_assert!(got.iter().all(|g| pushed.contains(g)));
                }
            }
        }
    }
}
