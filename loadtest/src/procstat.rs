//! CPU time and memory of the server under test, from `/proc`.

use serde::Serialize;

/// Kernel clock ticks per second for `/proc/PID/stat` times. USER_HZ is 100
/// on every mainstream Linux architecture.
const CLK_TCK: f64 = 100.0;

/// Summed over the given processes (e.g. nginx master + worker).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

pub fn sample(pids: &[u32]) -> Result<Sample, String> {
    let mut s = Sample::default();
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        s.cpu_s +=
            cpu_seconds(&stat).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        s.rss += status_kb(&status, "VmRSS:").unwrap_or(0) * 1024;
        s.hwm += status_kb(&status, "VmHWM:").unwrap_or(0) * 1024;
    }
    Ok(s)
}

/// utime + stime (fields 14 and 15) in seconds. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last ')'.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn parses_status() {
        let st = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kb(st, "VmRSS:"), Some(1024));
        assert_eq!(status_kb(st, "VmHWM:"), Some(2048));
        assert_eq!(status_kb(st, "VmSwap:"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(&[std::process::id()]).expect("own /proc entry");
        assert!(s.rss > 0 && s.hwm >= s.rss);
    }
}
