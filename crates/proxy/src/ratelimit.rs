//! `access.rate_limit`: a token bucket per client address, with burst, in bounded memory.
//!
//! The table is a fixed array of slots indexed by a keyed hash of the address (sharded behind
//! mutexes). A client whose slot another address took over starts again with a full bucket: a
//! collision can only be lenient, never limit a client for someone else's traffic, and the keyed
//! hash keeps a client from choosing its collisions. Memory is `SLOTS × 32` bytes whatever the
//! number of clients.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 64;
const SLOTS_PER_SHARD: usize = 1024;

#[derive(Clone, Copy)]
struct Slot {
    key: u128,
    used: bool,
    tokens: f64,
    /// Nanoseconds since `RateLimiter::epoch` at the last refill.
    at: u64,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    epoch: Instant,
    shards: Vec<Mutex<Vec<Slot>>>,
}

/// A refusal: how long until one request would pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

/// A client address as a slot-table key: IPv4 and IPv6 never collide (the top bit marks IPv4).
/// Shared with the security event tracker, which keeps its table the same way.
pub(crate) fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | (1u128 << 127),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl RateLimiter {
    pub fn new(requests_per_second: f64, burst: u32) -> RateLimiter {
        let empty = Slot {
            key: 0,
            used: false,
            tokens: 0.0,
            at: 0,
        };
        RateLimiter {
            rate: requests_per_second,
            burst: f64::from(burst),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![empty; SLOTS_PER_SHARD]))
                .collect(),
        }
    }

    /// Whether this limiter already enforces this rate and burst.
    pub fn same_settings(&self, requests_per_second: f64, burst: u32) -> bool {
        self.rate == requests_per_second && self.burst == f64::from(burst)
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check_at(ip, self.epoch.elapsed().as_nanos() as u64)
    }

    /// `now`: nanoseconds since the limiter was created (tests drive time explicitly).
    pub fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Limited> {
        let k = key(ip);
        let h = self.hasher.hash_one(k) as usize;
        let shard = &self.shards[h % SHARDS];
        let index = (h / SHARDS) % SLOTS_PER_SHARD;
        // A poisoned shard only means another request panicked mid-update: the slot data is
        // still plain numbers, so keep using it.
        let mut slots = shard.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[index];
        if !slot.used || slot.key != k {
            *slot = Slot {
                key: k,
                used: true,
                tokens: self.burst,
                at: now,
            };
        } else {
            let elapsed = now.saturating_sub(slot.at) as f64 / 1e9;
            slot.tokens = (slot.tokens + elapsed * self.rate).min(self.burst);
            slot.at = now;
        }
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - slot.tokens) / self.rate;
            Err(Limited {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let rl = RateLimiter::new(2.0, 5);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert!(rl.check_at(a, 0).is_ok());
        }
        assert_eq!(
            rl.check_at(a, 0),
            Err(Limited {
                retry_after_secs: 1
            })
        );
        // Half a second refills one token at 2/s.
        assert!(rl.check_at(a, SEC / 2).is_ok());
        assert!(rl.check_at(a, SEC / 2).is_err());
        // Never more than the burst, however long the pause.
        for _ in 0..5 {
            assert!(rl.check_at(a, 100 * SEC).is_ok());
        }
        assert!(rl.check_at(a, 100 * SEC).is_err());
    }

    #[test]
    fn clients_are_independent() {
        let rl = RateLimiter::new(1.0, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(rl.check_at(a, 0).is_ok());
        assert!(rl.check_at(a, 0).is_ok());
        assert!(rl.check_at(a, 0).is_err());
        assert!(rl.check_at(b, 0).is_ok());
        assert!(rl.check_at(b, 0).is_ok());
    }

    #[test]
    fn retry_after_reflects_the_rate() {
        let rl = RateLimiter::new(0.1, 1);
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(rl.check_at(a, 0).is_ok());
        assert_eq!(
            rl.check_at(a, 0),
            Err(Limited {
                retry_after_secs: 10
            })
        );
    }

    #[test]
    fn memory_is_bounded_whatever_the_clients() {
        let rl = RateLimiter::new(1.0, 1);
        for i in 0..200_000u32 {
            let _ = rl.check_at(IpAddr::V4(i.into()), 0);
        }
        let total: usize = rl.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(total, SHARDS * SLOTS_PER_SHARD);
    }
}
