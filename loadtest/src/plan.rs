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
    /// Rooms: connection i joins room (i / room size) mod T (and the next
    /// K − 1 rooms); the room size is ⌈conns / T⌉ unless `--room-size`.
    Rooms,
}

/// The parameters of a [`TopicPlan`], as the parent hands them to workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub topics: u32,
    pub dist: Dist,
    /// Topics per connection: drawn uniformly in `min..=max` per
    /// connection (the same for every connection when equal).
    pub min_per_conn: u32,
    pub max_per_conn: u32,
    pub seed: u64,
    /// Rooms: connections per room.
    pub room_size: u64,
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
    spec: TopicSpec,
    /// Cumulative Zipf weights, normalised to end at 1.0 (Zipf only).
    zipf_cdf: Vec<f64>,
}

impl TopicPlan {
    /// `min_per_conn ..= max_per_conn` must be within `1..=topics`.
    pub fn new(spec: &TopicSpec) -> Result<TopicPlan, String> {
        let topics = spec.topics;
        if topics == 0 {
            return Err("--topics must be at least 1".into());
        }
        if spec.min_per_conn == 0 || spec.min_per_conn > spec.max_per_conn {
            return Err("topics per connection: the range must be 1 or more, low..=high".into());
        }
        if spec.max_per_conn > topics {
            return Err(format!(
                "topics per connection must be at most --topics ({topics})"
            ));
        }
        if spec.dist == Dist::Rooms && spec.room_size == 0 {
            return Err("--room-size must be at least 1".into());
        }
        let zipf_cdf = if spec.dist == Dist::Zipf {
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
            spec: spec.clone(),
            zipf_cdf,
        })
    }

    /// The most topics a connection can have.
    pub fn max_per_conn(&self) -> u32 {
        self.spec.max_per_conn
    }

    /// How many topics connection `conn` subscribes to.
    pub fn count_for(&self, conn: u64) -> u32 {
        let (lo, hi) = (self.spec.min_per_conn, self.spec.max_per_conn);
        if lo == hi {
            return lo;
        }
        let mut rng =
            SplitMix64::new(self.spec.seed ^ conn.wrapping_mul(0x9FB2_1C65_1E98_DF25) ^ 0x5EED);
        lo + rng.below(hi - lo + 1)
    }

    /// Fills `out` with the distinct topic indices of connection `conn`.
    pub fn topics_for(&self, conn: u64, out: &mut Vec<u32>) {
        out.clear();
        let per_conn = self.count_for(conn);
        let topics = self.spec.topics;
        let k = per_conn as usize;
        match self.spec.dist {
            Dist::One => {
                out.extend(0..per_conn);
                return;
            }
            Dist::Rooms => {
                let room = ((conn / self.spec.room_size) % u64::from(topics)) as u32;
                out.extend(
                    (0..per_conn)
                        .map(|j| ((u64::from(room) + u64::from(j)) % u64::from(topics)) as u32),
                );
                return;
            }
            Dist::Uniform | Dist::Zipf => {}
        }
        let mut rng = SplitMix64::new(self.spec.seed ^ conn.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        // Rejection sampling is cheap while K is small against T; bounded
        // tries keep a skewed Zipf with K close to T from looping, and the
        // fallback fills with the lowest unused indices.
        let mut tries = 0u32;
        while out.len() < k && tries < 64 * per_conn {
            tries += 1;
            let t = match self.spec.dist {
                Dist::Zipf => self.zipf_sample(&mut rng),
                _ => rng.below(topics),
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

/// Deliveries connection `conn` must see (`picked` is scratch space).
pub fn conn_expected(plan: &TopicPlan, msgs: u64, conn: u64, picked: &mut Vec<u32>) -> u64 {
    let topics = plan.spec.topics;
    plan.topics_for(conn, picked);
    picked
        .iter()
        .map(|&t| msgs_for_topic(msgs, topics, t))
        .sum::<u64>()
}

/// Deliveries a range of connections must see in total: (fast, slow).
pub fn expected_deliveries(
    plan: &TopicPlan,
    msgs: u64,
    conns: std::ops::Range<u64>,
    slow_fraction: f64,
) -> (u64, u64) {
    let mut picked = Vec::with_capacity(plan.max_per_conn() as usize);
    let (mut fast, mut slow) = (0, 0);
    for c in conns {
        let n = conn_expected(plan, msgs, c, &mut picked);
        if is_slow(c, slow_fraction) {
            slow += n;
        } else {
            fast += n;
        }
    }
    (fast, slow)
}

/// Whether connection `conn` is one of the slow readers: exactly
/// ⌊conns × fraction⌋ of the first `conns`, spread evenly.
pub fn is_slow(conn: u64, fraction: f64) -> bool {
    fraction > 0.0 && ((conn + 1) as f64 * fraction).floor() > (conn as f64 * fraction).floor()
}

/// Number of subscribers of each topic over all connections.
#[cfg(test)]
pub fn subscribers_per_topic(plan: &TopicPlan, conns: u64) -> Vec<u64> {
    let mut counts = vec![0u64; plan.spec.topics as usize];
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

/// Where connection `conn` goes with `targets` URLs and `source_ips`
/// source addresses: target `conn mod targets`, source address
/// `⌊conn / targets⌋ mod source_ips`, so each target gets an even share of
/// every source address (its own ~28k ephemeral ports per pair) whatever
/// the two counts. With one target this is `source_ip(conn, source_ips)`.
pub fn route(conn: u64, targets: usize, source_ips: u32) -> (usize, Ipv4Addr) {
    let n = targets.max(1) as u64;
    ((conn % n) as usize, source_ip(conn / n, source_ips))
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

    fn spec(topics: u32, lo: u32, hi: u32, dist: Dist, seed: u64) -> TopicSpec {
        TopicSpec {
            topics,
            dist,
            min_per_conn: lo,
            max_per_conn: hi,
            seed,
            room_size: 50,
        }
    }

    #[test]
    fn messages_spread_round_robin() {
        assert_eq!(msgs_for_topic(10, 3, 0), 4);
        assert_eq!(msgs_for_topic(10, 3, 1), 3);
        assert_eq!(msgs_for_topic(10, 3, 2), 3);
        assert_eq!(msgs_for_topic(5, 1, 0), 5);
    }

    #[test]
    fn topic_picks_are_distinct_deterministic_and_in_range() {
        for dist in [Dist::One, Dist::Uniform, Dist::Zipf, Dist::Rooms] {
            for (t, lo, hi) in [
                (1, 1, 1),
                (10, 3, 3),
                (5, 5, 5),
                (1000, 8, 8),
                (1000, 1, 50),
            ] {
                let p = TopicPlan::new(&spec(t, lo, hi, dist, 7)).expect("valid plan");
                let mut a = Vec::new();
                let mut b = Vec::new();
                for c in 0..200 {
                    p.topics_for(c, &mut a);
                    p.topics_for(c, &mut b);
                    assert_eq!(a, b);
                    let k = p.count_for(c);
                    assert!((lo..=hi).contains(&k));
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
    fn ranges_cover_their_span() {
        let p = TopicPlan::new(&spec(1000, 1, 50, Dist::Zipf, 3)).expect("valid plan");
        let counts: Vec<u32> = (0..5000).map(|c| p.count_for(c)).collect();
        assert_eq!(counts.iter().min(), Some(&1));
        assert_eq!(counts.iter().max(), Some(&50));
        let mean = counts.iter().map(|&k| f64::from(k)).sum::<f64>() / 5000.0;
        assert!((24.0..27.0).contains(&mean), "{mean}");
    }

    #[test]
    fn rooms_group_consecutive_connections() {
        let p = TopicPlan::new(&spec(200, 1, 1, Dist::Rooms, 0)).expect("valid plan");
        let mut a = Vec::new();
        for (c, room) in [(0, 0), (49, 0), (50, 1), (9_999, 199), (10_000, 0)] {
            p.topics_for(c, &mut a);
            assert_eq!(a, vec![room], "conn {c}");
        }
        let counts = subscribers_per_topic(&p, 10_000);
        assert!(counts.iter().all(|&n| n == 50));
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let p = TopicPlan::new(&spec(100, 1, 1, Dist::Zipf, 1)).expect("valid plan");
        let counts = subscribers_per_topic(&p, 20_000);
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[99]);
        // Rank 1 has weight 1/H(100) ≈ 19%.
        assert!((3000..4600).contains(&counts[0]), "{}", counts[0]);
    }

    #[test]
    fn slow_readers_are_an_exact_even_share() {
        let slow = (0..1000).filter(|&c| is_slow(c, 0.05)).count();
        assert_eq!(slow, 50);
        assert!((0..1000).all(|c| !is_slow(c, 0.0)));
        assert!((0..1000).all(|c| is_slow(c, 1.0)));
        let p = TopicPlan::new(&spec(1, 1, 1, Dist::One, 0)).expect("valid plan");
        assert_eq!(expected_deliveries(&p, 10, 0..100, 0.1), (900, 100));
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
    fn routes_spread_targets_and_sources() {
        // One target: the plain round-robin over source addresses.
        for c in 0..20 {
            assert_eq!(route(c, 1, 4), (0, source_ip(c, 4)));
        }
        // 3 targets, 3 source addresses: every (target, source) pair is
        // used equally, not only the diagonal.
        let mut pairs = std::collections::BTreeMap::new();
        for c in 0..900 {
            let (t, ip) = route(c, 3, 3);
            *pairs.entry((t, ip)).or_insert(0u32) += 1;
        }
        assert_eq!(pairs.len(), 9);
        assert!(pairs.values().all(|&n| n == 100));
        assert_eq!(route(4, 3, 2), (1, Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(TopicPlan::new(&spec(0, 1, 1, Dist::One, 0)).is_err());
        assert!(TopicPlan::new(&spec(3, 4, 4, Dist::Uniform, 0)).is_err());
        assert!(TopicPlan::new(&spec(3, 0, 0, Dist::Uniform, 0)).is_err());
        assert!(TopicPlan::new(&spec(3, 2, 1, Dist::Uniform, 0)).is_err());
        let mut s = spec(3, 1, 1, Dist::Rooms, 0);
        s.room_size = 0;
        assert!(TopicPlan::new(&s).is_err());
    }
}
