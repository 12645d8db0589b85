//! The deterministic run plan: which topics each connection subscribes to,
//! how many messages each of them must receive, and which local source
//! address it binds.
//!
//! Everything is a pure function of the command-line arguments and the
//! global connection index, so the parent and every worker process compute
//! the same plan without exchanging it.

use std::net::Ipv4Addr;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How connections pick their topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every connection subscribes to the first K topics.
    One,
    /// K distinct topics drawn uniformly.
    Uniform,
    /// K distinct topics drawn with Zipf weights (s = 1.0): topic r has
    /// weight 1/(r+1).
    Zipf,
}

/// A small, fast, seedable generator (SplitMix64). Quality is ample for
/// picking topics; it keeps the plan reproducible without a `rand` dep.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by the multiply-shift method.
    pub fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u64() as u32) * u64::from(n)) >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks the topics of each connection.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    topics: u32,
    per_conn: u32,
    dist: Dist,
    seed: u64,
    /// Cumulative Zipf weights, normalised to end at 1.0 (Zipf only).
    zipf_cdf: Vec<f64>,
}

impl TopicPlan {
    /// `per_conn` must be in `1..=topics`.
    pub fn new(topics: u32, per_conn: u32, dist: Dist, seed: u64) -> Result<TopicPlan, String> {
        if topics == 0 {
            return Err("--topics must be at least 1".into());
        }
        if per_conn == 0 || per_conn > topics {
            return Err(format!(
                "--subs-per-conn must be between 1 and --topics ({topics})"
            ));
        }
        let zipf_cdf = if dist == Dist::Zipf {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (0..topics)
                .map(|r| {
                    acc += 1.0 / f64::from(r + 1);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        Ok(TopicPlan {
            topics,
            per_conn,
            dist,
            seed,
            zipf_cdf,
        })
    }

    pub fn per_conn(&self) -> u32 {
        self.per_conn
    }

    /// Fills `out` with the distinct topic indices of connection `conn`.
    pub fn topics_for(&self, conn: u64, out: &mut Vec<u32>) {
        out.clear();
        let k = self.per_conn as usize;
        if self.dist == Dist::One {
            out.extend(0..self.per_conn);
            return;
        }
        let mut rng = SplitMix64::new(self.seed ^ conn.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        // Rejection sampling is cheap while K is small against T; bounded
        // tries keep a skewed Zipf with K close to T from looping, and the
        // fallback fills with the lowest unused indices.
        let mut tries = 0u32;
        while out.len() < k && tries < 64 * self.per_conn {
            tries += 1;
            let t = match self.dist {
                Dist::Zipf => self.zipf_sample(&mut rng),
                _ => rng.below(self.topics),
            };
            if !out.contains(&t) {
                out.push(t);
            }
        }
        let mut t = 0;
        while out.len() < k {
            if !out.contains(&t) {
                out.push(t);
            }
            t += 1;
        }
    }

    fn zipf_sample(&self, rng: &mut SplitMix64) -> u32 {
        let u = rng.unit();
        let i = self.zipf_cdf.partition_point(|&c| c <= u);
        // partition_point is at most len; clamp the u ≈ 1.0 rounding case.
        i.min(self.zipf_cdf.len() - 1) as u32
    }
}

/// Topic names of a fan-out run: `load.0 .. load.{T-1}`.
pub fn topic_names(topics: u32) -> Vec<String> {
    (0..topics).map(|i| format!("load.{i}")).collect()
}

/// The publisher sends message `m` to topic `m % T`, so topic `t` gets this
/// many of `msgs`.
pub fn msgs_for_topic(msgs: u64, topics: u32, t: u32) -> u64 {
    let t64 = u64::from(topics);
    msgs / t64 + u64::from(u64::from(t) < msgs % t64)
}

/// Deliveries a range of connections must see in total.
pub fn expected_deliveries(
    plan: &TopicPlan,
    msgs: u64,
    topics: u32,
    conns: std::ops::Range<u64>,
) -> u64 {
    let mut picked = Vec::with_capacity(plan.per_conn() as usize);
    let mut total = 0;
    for c in conns {
        plan.topics_for(c, &mut picked);
        total += picked
            .iter()
            .map(|&t| msgs_for_topic(msgs, topics, t))
            .sum::<u64>();
    }
    total
}

/// Number of subscribers of each topic over all connections.
#[cfg(test)]
pub fn subscribers_per_topic(plan: &TopicPlan, topics: u32, conns: u64) -> Vec<u64> {
    let mut counts = vec![0u64; topics as usize];
    let mut picked = Vec::new();
    for c in 0..conns {
        plan.topics_for(c, &mut picked);
        for &t in &picked {
            counts[t as usize] += 1;
        }
    }
    counts
}

/// The local address connection `conn` binds: 127.0.0.1, 127.0.0.2, ...
/// round-robin over `n` addresses, so each (source, target) pair has its
/// own ~28k ephemeral ports.
pub fn source_ip(conn: u64, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x7f00_0001u32 + (conn % u64::from(n.max(1))) as u32)
}

/// Splits `total` into `parts` nearly equal shares: (start, count) each.
pub fn shares(total: u64, parts: u32) -> Vec<(u64, u64)> {
    let p = u64::from(parts.max(1));
    let mut start = 0;
    (0..p)
        .map(|i| {
            let n = total / p + u64::from(i < total % p);
            let s = (start, n);
            start += n;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_spread_round_robin() {
        assert_eq!(msgs_for_topic(10, 3, 0), 4);
        assert_eq!(msgs_for_topic(10, 3, 1), 3);
        assert_eq!(msgs_for_topic(10, 3, 2), 3);
        assert_eq!(msgs_for_topic(5, 1, 0), 5);
    }

    #[test]
    fn topic_picks_are_distinct_deterministic_and_in_range() {
        for dist in [Dist::One, Dist::Uniform, Dist::Zipf] {
            for (t, k) in [(1, 1), (10, 3), (5, 5), (1000, 8)] {
                let p = TopicPlan::new(t, k, dist, 7).expect("valid plan");
                let mut a = Vec::new();
                let mut b = Vec::new();
                for c in 0..200 {
                    p.topics_for(c, &mut a);
                    p.topics_for(c, &mut b);
                    assert_eq!(a, b);
                    assert_eq!(a.len(), k as usize);
                    let mut s = a.clone();
                    s.sort_unstable();
                    s.dedup();
                    assert_eq!(s.len(), k as usize);
                    assert!(a.iter().all(|&x| x < t));
                }
            }
        }
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let p = TopicPlan::new(100, 1, Dist::Zipf, 1).expect("valid plan");
        let counts = subscribers_per_topic(&p, 100, 20_000);
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[99]);
        // Rank 1 has weight 1/H(100) ≈ 19%.
        assert!((3000..4600).contains(&counts[0]), "{}", counts[0]);
    }

    #[test]
    fn shares_cover_everything() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(1, 2), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn source_ips_round_robin() {
        assert_eq!(source_ip(0, 1), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(5, 3), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_ip(300, 1000), Ipv4Addr::new(127, 0, 1, 45));
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(TopicPlan::new(0, 1, Dist::One, 0).is_err());
        assert!(TopicPlan::new(3, 4, Dist::Uniform, 0).is_err());
        assert!(TopicPlan::new(3, 0, Dist::Uniform, 0).is_err());
    }
}
