//! Counts over time: deliveries (workers) and publications (publishers)
//! bucketed on the wall clock, so buckets of different processes line up
//! and add up.

use serde::{Deserialize, Serialize};

/// Longest series kept (buckets); later events are counted in the last.
const MAX_BUCKETS: usize = 100_000;

/// Event counts per `bucket_ms` of wall-clock time. Bucket `i` covers
/// `[(start + i) × bucket_ms, (start + i + 1) × bucket_ms)` ms since the
/// UNIX epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    pub bucket_ms: u64,
    /// Index of the first bucket (UNIX ms / `bucket_ms`).
    pub start: u64,
    pub counts: Vec<u64>,
}

impl Series {
    pub fn new(bucket_ms: u64) -> Series {
        Series {
            bucket_ms: bucket_ms.max(1),
            start: 0,
            counts: Vec::new(),
        }
    }

    /// Adds `n` events at `now_ns` (UNIX nanoseconds).
    pub fn add(&mut self, now_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        let b = now_ns / 1_000_000 / self.bucket_ms;
        self.add_bucket(b, n);
    }

    fn add_bucket(&mut self, b: u64, n: u64) {
        if self.counts.is_empty() {
            self.start = b;
            self.counts.push(n);
            return;
        }
        if b < self.start {
            // An earlier bucket (another process's clock read): prepend.
            let pre = (self.start - b) as usize;
            if pre + self.counts.len() > MAX_BUCKETS {
                self.counts[0] += n;
                return;
            }
            let mut v = vec![0; pre];
            v.append(&mut self.counts);
            self.counts = v;
            self.start = b;
        }
        let i = ((b - self.start) as usize).min(MAX_BUCKETS - 1);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
    }

    /// Adds another series of the same bucket width.
    pub fn merge(&mut self, other: &Series) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        if other.bucket_ms != self.bucket_ms {
            // Not expected (one run, one width): fold into our buckets.
            for (i, &n) in other.counts.iter().enumerate() {
                let ms = (other.start + i as u64) * other.bucket_ms;
                self.add_bucket(ms / self.bucket_ms, n);
            }
            return;
        }
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add_bucket(other.start + i as u64, n);
            }
        }
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Start of bucket `i`, UNIX ms.
    pub fn bucket_start_ms(&self, i: usize) -> u64 {
        (self.start + i as u64) * self.bucket_ms
    }

    /// Events per second in each bucket.
    pub fn per_second(&self) -> impl Iterator<Item = f64> + '_ {
        let scale = 1000.0 / self.bucket_ms as f64;
        self.counts.iter().map(move |&n| n as f64 * scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_on_the_wall_clock() {
        let mut s = Series::new(100);
        s.add(1_000_050_000_000, 2); // 1_000_050 ms -> bucket 10_000
        s.add(1_000_299_000_000, 3); // bucket 10_002
        assert_eq!((s.start, s.counts.clone()), (10_000, vec![2, 0, 3]));
        s.add(999_900_000_000, 1); // bucket 9_999: prepended
        assert_eq!((s.start, s.counts.clone()), (9_999, vec![1, 2, 0, 3]));
        assert_eq!(s.total(), 6);
        assert_eq!(s.bucket_start_ms(1), 1_000_000);
        let per_s: Vec<f64> = s.per_second().collect();
        assert_eq!(per_s, vec![10.0, 20.0, 0.0, 30.0]);
    }

    #[test]
    fn merges_add_up() {
        let mut a = Series::new(1000);
        a.add(5_000_000_000, 1);
        let mut b = Series::new(1000);
        b.add(3_000_000_000, 4);
        b.add(5_500_000_000, 2);
        a.merge(&b);
        assert_eq!((a.start, a.counts.clone()), (3, vec![4, 0, 3]));
        let mut empty = Series::new(1000);
        empty.merge(&a);
        assert_eq!(empty, a);
        let mut c = Series::new(500);
        c.merge(&Series::new(500));
        assert!(c.counts.is_empty());
        let mut fine = Series::new(500);
        fine.add(3_600_000_000, 5);
        a.merge(&fine);
        assert_eq!(a.counts, vec![9, 0, 3]);
    }
}
