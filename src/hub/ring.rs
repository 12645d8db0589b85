//! A topic's history: the last N pre-encoded PUBLICATION frames, by seq.
//!
//! Seqs are contiguous, so the ring stores only the frames and the seq of the
//! oldest one; a lookup is arithmetic, not a search.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug)]
pub struct Ring {
    cap: usize,
    frames: VecDeque<Bytes>,
    /// Seq of `frames[0]`; meaningless while `frames` is empty.
    first_seq: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            cap: cap.max(1),
            // Grows on demand: most topics never fill their history, and an
            // idle topic should not pin `cap` slots.
            frames: VecDeque::new(),
            first_seq: 0,
        }
    }

    /// Appends the frame of `seq`, which must follow the last one pushed.
    pub fn push(&mut self, seq: u64, frame: Bytes) {
        if self.frames.is_empty() || seq != self.first_seq + self.frames.len() as u64 {
            // A gap (should not happen: the home assigns seqs) restarts
            // the history rather than serving a wrong replay.
            self.frames.clear();
            self.first_seq = seq;
        }
        if self.frames.len() == self.cap {
            self.frames.pop_front();
            self.first_seq += 1;
        }
        self.frames.push_back(frame);
    }

    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// Puts older frames in front of the ring: the run of `older` (seq,
    /// frame) pairs that ends right before the oldest frame held (or at
    /// `last` when the ring is empty), as far as the capacity allows.
    pub fn prepend(&mut self, older: Vec<(u64, Bytes)>, last: u64) {
        let mut want = if self.frames.is_empty() {
            last
        } else {
            self.first_seq.saturating_sub(1)
        };
        for (seq, frame) in older.into_iter().rev() {
            if seq > want {
                continue;
            }
            if seq < want || want == 0 || self.frames.len() == self.cap {
                break;
            }
            self.frames.push_front(frame);
            self.first_seq = seq;
            want -= 1;
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames with seq in `after+1 ..= last`, if the ring still holds all
    /// of them. `after == last` is an empty (successful) replay.
    pub fn replay(&self, after: u64, last: u64) -> Option<impl Iterator<Item = &Bytes>> {
        if after > last {
            return None;
        }
        let count = (last - after) as usize;
        if count == 0 {
            return Some(self.frames.range(0..0));
        }
        if self.frames.is_empty() {
            return None;
        }
        let newest = self.first_seq + self.frames.len() as u64 - 1;
        if newest != last || after.saturating_add(1) < self.first_seq {
            return None;
        }
        let start = (after + 1 - self.first_seq) as usize;
        Some(self.frames.range(start..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn collect(r: &Ring, after: u64, last: u64) -> Option<Vec<String>> {
        r.replay(after, last).map(|it| {
            it.map(|b| String::from_utf8(b.to_vec()).unwrap_or_default())
                .collect()
        })
    }

    #[test]
    fn replays_the_missed_tail_in_order() {
        let mut r = Ring::new(4);
        for s in 1..=3 {
            r.push(s, f(s));
        }
        assert_eq!(collect(&r, 1, 3), Some(vec!["2".into(), "3".into()]));
        assert_eq!(
            collect(&r, 0, 3),
            Some(vec!["1".into(), "2".into(), "3".into()])
        );
        assert_eq!(collect(&r, 3, 3), Some(vec![]));
    }

    #[test]
    fn evicts_oldest_and_refuses_replay_past_history() {
        let mut r = Ring::new(3);
        for s in 1..=10 {
            r.push(s, f(s));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(
            collect(&r, 7, 10),
            Some(vec!["8".into(), "9".into(), "10".into()])
        );
        assert_eq!(collect(&r, 6, 10), None, "seq 7 was evicted");
        assert_eq!(collect(&r, 11, 10), None, "since ahead of the topic");
    }

    #[test]
    fn empty_ring_only_replays_nothing() {
        let r = Ring::new(3);
        assert_eq!(collect(&r, 0, 0), Some(vec![]));
        assert_eq!(collect(&r, 5, 5), Some(vec![]));
        assert_eq!(collect(&r, 4, 5), None);
    }

    #[test]
    fn prepend_adds_the_contiguous_older_run_within_capacity() {
        let mut r = Ring::new(5);
        for s in 8..=10 {
            r.push(s, f(s));
        }
        let older = (1..=9).map(|s| (s, f(s))).collect();
        r.prepend(older, 10);
        assert_eq!(r.len(), 5);
        assert_eq!(
            collect(&r, 5, 10),
            Some(vec![
                "6".into(),
                "7".into(),
                "8".into(),
                "9".into(),
                "10".into()
            ])
        );
        let mut empty = Ring::new(4);
        empty.prepend(vec![(2, f(2)), (3, f(3))], 3);
        assert_eq!(collect(&empty, 1, 3), Some(vec!["2".into(), "3".into()]));
        let mut gap = Ring::new(4);
        gap.prepend(vec![(1, f(1)), (3, f(3))], 3);
        assert_eq!(collect(&gap, 2, 3), Some(vec!["3".into()]));
        assert_eq!(
            collect(&gap, 0, 3),
            None,
            "seq 2 is missing: no replay across it"
        );
    }

    #[test]
    fn a_gap_restarts_history() {
        let mut r = Ring::new(8);
        r.push(1, f(1));
        r.push(5, f(5));
        assert_eq!(r.len(), 1);
        assert_eq!(collect(&r, 4, 5), Some(vec!["5".into()]));
        assert_eq!(collect(&r, 0, 5), None);
    }
}
