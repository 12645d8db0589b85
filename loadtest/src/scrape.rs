//! herald's Prometheus `/metrics`, read before and after a run so the
//! summary can show what the server counted itself (write syscalls per
//! delivery, bytes out, slow-consumer drops).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::parse_url;
use crate::publish;

/// One scrape: every sample line, `name{labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `name{a="b c"} value [timestamp]`: the value follows the
            // labels' closing brace, or the first space without labels.
            let split = match line.rfind('}') {
                Some(i) => i + 1,
                None => line.find(' ').unwrap_or(line.len()),
            };
            let (key, rest) = line.split_at(split);
            if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                m.insert(key.trim().to_string(), v);
            }
        }
        Scrape(m)
    }

    /// Sum over every label set of metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name
                    || k.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every sample: `name{labels}` and its value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// One series, e.g. `herald_closes_total{code="4008"}`; 0 if absent.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

pub async fn fetch(url: &str) -> Result<Scrape, String> {
    let (addr, host, path) = parse_url(url, "http", "/metrics")?;
    let (status, body) = publish::get(addr, &host, &path).await?;
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    Ok(Scrape::parse(&String::from_utf8_lossy(&body)))
}

/// What herald counted between two scrapes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeraldCounts {
    pub delivered: u64,
    pub write_syscalls: u64,
    pub bytes_out: u64,
    /// `herald_write_syscalls_total / herald_delivered_total` over the run.
    pub write_syscalls_per_delivery: f64,
    pub bytes_per_write: f64,
    pub published: u64,
    pub dropped_slow_consumer: u64,
    /// Sessions herald closed with 4008 (slow consumer).
    pub closes_4008: u64,
}

pub fn delta(before: &Scrape, after: &Scrape) -> HeraldCounts {
    let d = |name: &str| (after.sum(name) - before.sum(name)).max(0.0) as u64;
    let delivered = d("herald_delivered_total");
    let write_syscalls = d("herald_write_syscalls_total");
    let bytes_out = d("herald_bytes_out_total");
    let key_slow = "herald_dropped_total{reason=\"slow_consumer\"}";
    let key_4008 = "herald_closes_total{code=\"4008\"}";
    HeraldCounts {
        delivered,
        write_syscalls,
        bytes_out,
        write_syscalls_per_delivery: if delivered > 0 {
            write_syscalls as f64 / delivered as f64
        } else {
            0.0
        },
        bytes_per_write: if write_syscalls > 0 {
            bytes_out as f64 / write_syscalls as f64
        } else {
            0.0
        },
        published: d("herald_published_total"),
        dropped_slow_consumer: (after.get(key_slow) - before.get(key_slow)).max(0.0) as u64,
        closes_4008: (after.get(key_4008) - before.get(key_4008)).max(0.0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums() {
        let a = Scrape::parse(
            "# HELP x\nherald_delivered_total 10\nherald_connections{shard=\"0\"} 3\n\
             herald_connections{shard=\"1\"} 4\nherald_closes_total{code=\"4008\"} 2\n\
             herald_delivered_total_other 99\n",
        );
        assert_eq!(a.sum("herald_delivered_total"), 10.0);
        assert_eq!(a.sum("herald_connections"), 7.0);
        assert_eq!(a.get("herald_closes_total{code=\"4008\"}"), 2.0);
        let b = Scrape::parse(
            "herald_delivered_total 110\nherald_write_syscalls_total 25\n\
             herald_closes_total{code=\"4008\"} 5\n",
        );
        let d = delta(&a, &b);
        assert_eq!((d.delivered, d.write_syscalls, d.closes_4008), (100, 25, 3));
        assert!((d.write_syscalls_per_delivery - 0.25).abs() < 1e-9);
    }
}
