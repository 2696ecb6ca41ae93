//! `access.rate_limit`: a token bucket per client, with burst, in bounded memory. A client is
//! an IPv4 address, or an IPv6 prefix (`access.rate_limit.ipv6_prefix`, default /64): one IPv6
//! subscriber is usually given a whole /64 and could otherwise take a fresh bucket with every
//! address of it. IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! The buckets live in a `slots::SlotTable`: a fixed array of slots indexed by a keyed hash of the
//! client (sharded behind mutexes). A client whose slot another one took over starts again with a
//! full bucket: a collision can only be lenient, never limit a client for someone else's traffic,
//! and the keyed hash keeps a client from choosing its collisions. Memory is
//! `SHARDS × SLOTS_PER_SHARD × 32` bytes (2 MiB) whatever the number of clients: a slot is a
//! 16-byte key, an 8-byte token count and an 8-byte timestamp, the timestamp doubling as the mark
//! of an unused slot.
//!
//! Why not pingora-limits: its `Rate` (`pingora-limits/src/rate.rs` and `estimator.rs` in the
//! pingora repository) counts events per key and fixed interval in a count-min sketch, two of
//! them (current and previous interval) of 4 hashes × 1,024 counters for `Rate::new`. A key's
//! count is the smallest of its 4 counters, and each counter adds up every key hashed to it:
//!
//! - Collisions over-count, charging a client for other clients' traffic. Among `n` clients, one
//!   is over-counted when each of its 4 counters is shared, with probability
//!   `(1 − (1 − 1/1024)^(n−1))^4`. A simulation of that sketch (`n` clients sending the same
//!   number of requests per interval, 5 runs each) over-counts about 15 % of clients at 1,000
//!   clients, 93 % at 4,096 (estimates 3.1× the true count on average) and all of them at
//!   10,000 (7.7×): a limit of 10 requests a second would then refuse a client sending 2. This
//!   table errs the other way.
//! - No burst: it reports the count of the last completed interval (or a weighted mix of the last
//!   two), not a bucket that lets `burst` requests through at once and refills at
//!   `requests_per_second`; a pull opens with a burst of manifest and blob requests.
//! - No `Retry-After`: it keeps counts, not when the next request would pass.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::slots::{ip_key, SlotTable};

const SHARDS: usize = 64;
const SLOTS_PER_SHARD: usize = 1024;

/// The IPv6 prefix length a limiter starts with: `access.rate_limit.ipv6_prefix`'s default.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

#[derive(Clone, Copy)]
struct Slot {
    key: u128,
    tokens: f64,
    /// Nanoseconds since `RateLimiter::epoch` at the last refill; [`UNUSED`] for a slot no
    /// client has taken yet.
    at: u64,
}

/// The `at` of an empty slot: 584 years after the limiter was created.
const UNUSED: u64 = u64::MAX;

// The layout the module documentation promises.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl crate::slots::Slot for Slot {
    fn holds(&self, key: u128) -> bool {
        self.at != UNUSED && self.key == key
    }
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// IPv6 clients are keyed by this many leading bits (0..=128).
    ipv6_prefix: AtomicU8,
    epoch: Instant,
    table: SlotTable<Slot, SHARDS, SLOTS_PER_SHARD>,
}

/// A refusal: how long until one request would pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

/// The bucket key of a client: an IPv4 address (or an IPv4-mapped IPv6 one) as [`ip_key`] has
/// it; any other IPv6 address cut to its first `ipv6_prefix` bits (more than 128 count as 128).
/// No IPv6 prefix meets an IPv4 key: a masked key inside `::ffff:0:0/96` would need the
/// address itself to be IPv4-mapped (the mask keeps those 96 bits whenever it keeps the
/// `ffff`), and such an address is keyed as IPv4.
fn bucket_key(ip: IpAddr, ipv6_prefix: u8) -> u128 {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(v6) & mask
        }
        _ => ip_key(ip),
    }
}

impl RateLimiter {
    /// A limiter of `requests_per_second` with `burst`, keying IPv6 clients by
    /// [`DEFAULT_IPV6_PREFIX`] bits; [`set_ipv6_prefix`](Self::set_ipv6_prefix) changes that.
    pub fn new(requests_per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: requests_per_second,
            burst: f64::from(burst),
            ipv6_prefix: AtomicU8::new(DEFAULT_IPV6_PREFIX),
            epoch: Instant::now(),
            table: SlotTable::new(Slot {
                key: 0,
                tokens: 0.0,
                at: UNUSED,
            }),
        }
    }

    /// Whether this limiter already enforces this rate and burst.
    pub fn same_settings(&self, requests_per_second: f64, burst: u32) -> bool {
        self.rate == requests_per_second && self.burst == f64::from(burst)
    }

    /// Keys IPv6 clients by their first `bits` bits from now on (values over 128 count as
    /// 128): every address of one prefix shares a bucket. A limiter kept across a reload takes
    /// the new length in place; buckets under the old keys are simply never matched again
    /// (their clients start with a full bucket once), the table's size does not change.
    pub fn set_ipv6_prefix(&self, bits: u8) {
        self.ipv6_prefix.store(bits.min(128), Ordering::Relaxed);
    }

    /// The length set by [`set_ipv6_prefix`](Self::set_ipv6_prefix).
    #[cfg(test)]
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix.load(Ordering::Relaxed)
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check_at(ip, self.epoch.elapsed().as_nanos() as u64)
    }

    /// `now`: nanoseconds since the limiter was created (tests drive time explicitly).
    pub fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Limited> {
        let k = bucket_key(ip, self.ipv6_prefix.load(Ordering::Relaxed));
        let at = now.min(UNUSED - 1);
        // A client new to its slot (or back after another took it over) has a full bucket.
        let full = || Slot {
            key: k,
            tokens: self.burst,
            at,
        };
        self.table.with(k, full, |slot, taken| {
            if !taken {
                let elapsed = now.saturating_sub(slot.at) as f64 / 1e9;
                slot.tokens = (slot.tokens + elapsed * self.rate).min(self.burst);
                slot.at = at;
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
        })
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Spends `a`'s burst of 2 and tells whether `b` is then limited too (shares the bucket).
    fn shared(rl: &RateLimiter, a: &str, b: &str, now: u64) -> bool {
        assert!(rl.check_at(ip(a), now).is_ok());
        assert!(rl.check_at(ip(a), now).is_ok());
        assert!(rl.check_at(ip(a), now).is_err());
        rl.check_at(ip(b), now).is_err()
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_by_default() {
        let rl = RateLimiter::new(0.001, 2);
        assert_eq!(rl.ipv6_prefix(), 64);
        // Rotating through its /64 gains a client nothing.
        assert!(shared(
            &rl,
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff:ffff:ffff:fffe",
            0
        ));
        // The neighbouring /64 is another client.
        assert!(!shared(&rl, "2001:db8:1:3::1", "2001:db8:1:4::1", 0));
    }

    #[test]
    fn the_ipv6_prefix_is_configurable() {
        let rl = RateLimiter::new(0.001, 2);
        rl.set_ipv6_prefix(48);
        assert_eq!(rl.ipv6_prefix(), 48);
        assert!(shared(&rl, "2001:db8:1:2::1", "2001:db8:1:ffff::1", 0));
        assert!(!shared(&rl, "2001:db8:2::1", "2001:db8:3::1", 0));

        let rl = RateLimiter::new(0.001, 2);
        rl.set_ipv6_prefix(128);
        assert!(!shared(&rl, "2001:db8::1", "2001:db8::2", 0));

        // 0: every IPv6 client in one bucket, IPv4 clients still one each.
        let rl = RateLimiter::new(0.001, 2);
        rl.set_ipv6_prefix(0);
        assert!(shared(&rl, "2001:db8::1", "2a00:1450::1", 0));
        assert!(!shared(&rl, "192.0.2.1", "192.0.2.2", 0));
        let fresh = RateLimiter::new(0.001, 2);
        fresh.set_ipv6_prefix(0);
        assert!(!shared(&fresh, "192.0.2.3", "::", 0));

        // Over 128 is 128.
        rl.set_ipv6_prefix(200);
        assert_eq!(rl.ipv6_prefix(), 128);
    }

    #[test]
    fn ipv4_stays_per_address_and_mapped_addresses_are_ipv4() {
        let rl = RateLimiter::new(0.001, 2);
        assert!(!shared(&rl, "192.0.2.1", "192.0.2.2", 0));
        assert!(shared(&rl, "198.51.100.1", "::ffff:198.51.100.1", 0));
        assert!(shared(&rl, "::ffff:203.0.113.1", "203.0.113.1", 0));
        // The mapped form of one address is not its /64 (which would hold every IPv4 address).
        assert!(!shared(&rl, "::ffff:203.0.113.2", "::ffff:203.0.113.3", 0));
    }

    #[test]
    fn ipv6_prefixes_never_meet_ipv4_keys() {
        for bits in [0u8, 1, 64, 95, 96, 97, 127, 128] {
            for v6 in [
                "::",
                "::1",
                "::ffff:0:0",
                "::fffe:c000:201",
                "0:0:0:0:0:ffff:0:1",
                "8000::c000:201",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "::ffff:ffff:ffff",
            ] {
                let k = bucket_key(ip(v6), bits);
                let mapped = IpAddr::V6(v6.parse().unwrap()).to_canonical().is_ipv4();
                if !mapped {
                    // An IPv4 key is ::ffff:a.b.c.d.
                    assert_ne!(k >> 32, 0xffff, "{v6}/{bits}");
                }
            }
        }
        assert_eq!(
            bucket_key(ip("192.0.2.1"), 64),
            bucket_key(ip("::ffff:192.0.2.1"), 0)
        );
    }

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        let rl = RateLimiter::new(1.0, 1);
        let bytes = rl.table.slots() * std::mem::size_of::<Slot>();
        assert_eq!(bytes, 2 << 20);
    }

    #[test]
    fn an_empty_slot_is_not_taken_for_a_client_at_time_zero() {
        // `::` at prefix 0 (or /128) is key 0, the key of an empty slot: the timestamp, not
        // the key, tells an empty slot.
        let rl = RateLimiter::new(0.001, 1);
        rl.set_ipv6_prefix(0);
        assert!(rl.check_at(ip("2001:db8::1"), 0).is_ok());
        assert!(rl.check_at(ip("::"), 0).is_err());
    }

    #[test]
    fn memory_is_bounded_whatever_the_clients() {
        let rl = RateLimiter::new(1.0, 1);
        for i in 0..200_000u32 {
            let _ = rl.check_at(IpAddr::V4(i.into()), 0);
        }
        assert_eq!(rl.table.slots(), SHARDS * SLOTS_PER_SHARD);
    }
}
