//! Admission limits checked during the handshake: node capacity, per-IP and
//! per-user connection counts, and the handshake rate. Shared by every
//! shard; touched once per connection, never on the delivery path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("connection limit reached")]
    Capacity,
    #[error("too many connections from this address")]
    PerIp,
    #[error("too many connections for this user")]
    PerUser,
    #[error("handshake rate limit")]
    Rate,
}

impl LimitError {
    pub fn label(self) -> &'static str {
        match self {
            LimitError::Capacity => "capacity",
            LimitError::PerIp => "limit_ip",
            LimitError::PerUser => "limit_user",
            LimitError::Rate => "rate",
        }
    }
}

pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    per_user: Mutex<HashMap<Arc<str>, u32>>,
    rate: Option<Mutex<TokenBucket>>,
}

/// Held by a connection for its whole life; gives its slots back on drop.
/// Two pointers unless per-IP or per-user limits are on: every idle
/// connection carries one.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    keys: Option<Box<Keys>>,
}

#[derive(Default)]
struct Keys {
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize, max_per_user: usize, per_s: u32) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            max_per_user,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            rate: (per_s > 0).then(|| Mutex::new(TokenBucket::new(per_s, per_s, Instant::now()))),
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Reserves a node slot and a slot for `ip`, and takes a handshake token.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, LimitError> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Capacity);
        }
        let mut permit = ConnPermit {
            limits: self.clone(),
            keys: None,
        };
        if let Some(rate) = &self.rate {
            if !rate.lock().take(Instant::now()) {
                return Err(LimitError::Rate);
            }
        }
        if self.max_per_ip > 0 {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n as usize >= self.max_per_ip {
                return Err(LimitError::PerIp);
            }
            *n += 1;
            permit.keys.get_or_insert_with(Box::default).ip = Some(ip);
        }
        Ok(permit)
    }
}

impl ConnPermit {
    /// Adds the per-user slot once the token named the user.
    pub fn add_user(&mut self, user: &Arc<str>) -> Result<(), LimitError> {
        if self.limits.max_per_user == 0 {
            return Ok(());
        }
        let mut map = self.limits.per_user.lock();
        let n = map.entry(user.clone()).or_insert(0);
        if *n as usize >= self.limits.max_per_user {
            if *n == 0 {
                map.remove(user);
            }
            return Err(LimitError::PerUser);
        }
        *n += 1;
        drop(map);
        self.keys.get_or_insert_with(Box::default).user = Some(user.clone());
        Ok(())
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        let Some(keys) = &self.keys else { return };
        if let Some(ip) = keys.ip {
            release(&mut self.limits.per_ip.lock(), &ip);
        }
        if let Some(user) = &keys.user {
            release(&mut self.limits.per_user.lock(), user);
        }
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A classic token bucket; `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_returned_on_drop() {
        let l = ConnLimits::new(2, 1, 1, 0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(LimitError::PerIp));
        let mut p2 = l.admit(b).unwrap();
        assert_eq!(
            l.admit("127.0.0.3".parse().unwrap()).err(),
            Some(LimitError::Capacity)
        );
        let u: Arc<str> = Arc::from("alice");
        p2.add_user(&u).unwrap();
        drop(p1);
        let mut p3 = l.admit(a).unwrap();
        assert_eq!(p3.add_user(&u).err(), Some(LimitError::PerUser));
        drop(p2);
        p3.add_user(&u).unwrap();
        drop(p3);
        assert_eq!(l.open(), 0);
        assert!(l.per_ip.lock().is_empty() && l.per_user.lock().is_empty());
    }

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }
}
