//! A bounded table of per-client state: a fixed array of slots indexed by a keyed hash of the
//! client's key, split into shards behind mutexes. The rate limiter ([`crate::ratelimit`]) and the
//! security event tracker ([`crate::security`]) keep their clients in one each.
//!
//! The table never grows: its memory is `SHARDS × SLOTS_PER_SHARD` slots whatever the number of
//! clients. Two keys that hash to one slot share it in turn: the key arriving takes the slot over
//! and the other key's state is forgotten, so a collision can only make the table forget (which
//! its users make lenient), never charge one client for another. The hash is keyed per table
//! ([`RandomState`]), so a client cannot choose whom it collides with.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// What a table holds per slot. An empty slot is any value for which [`holds`](Slot::holds) is
/// false for every key; the table is filled with one at the start.
pub(crate) trait Slot: Clone {
    /// Whether this slot holds the state of `key` (never true for an empty slot).
    fn holds(&self, key: u128) -> bool;
}

/// A client address as a table key: an IPv4 address as its IPv4-mapped IPv6 form
/// (`::ffff:192.0.2.1`), so both forms of one address share a key and no other IPv6 address has
/// it.
pub(crate) fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `SHARDS` mutexes of `SLOTS_PER_SHARD` slots each (both constants, so that indexing is a mask
/// when they are powers of two).
pub(crate) struct SlotTable<S, const SHARDS: usize, const SLOTS_PER_SHARD: usize> {
    hasher: RandomState,
    shards: Box<[Mutex<Box<[S]>>]>,
}

impl<S: Slot, const SHARDS: usize, const SLOTS_PER_SHARD: usize>
    SlotTable<S, SHARDS, SLOTS_PER_SHARD>
{
    /// A table of `SHARDS × SLOTS_PER_SHARD` copies of `empty`.
    pub(crate) fn new(empty: S) -> Self {
        // A table without a slot could not index one: refused at compile time.
        const { assert!(SHARDS > 0 && SLOTS_PER_SHARD > 0) };
        SlotTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![empty.clone(); SLOTS_PER_SHARD].into_boxed_slice()))
                .collect(),
        }
    }

    /// Runs `f` on `key`'s slot, under its shard's lock. A slot that does not hold `key` (empty,
    /// or another key's) is first given to `key` as `take()`, whatever it held is forgotten; `f`'s
    /// second argument tells whether that just happened.
    pub(crate) fn with<T>(
        &self,
        key: u128,
        take: impl FnOnce() -> S,
        f: impl FnOnce(&mut S, bool) -> T,
    ) -> T {
        let h = self.hasher.hash_one(key) as usize;
        let shard = &self.shards[h % SHARDS];
        let index = (h / SHARDS) % SLOTS_PER_SHARD;
        // A poisoned shard only means another request panicked mid-update: the slot data is
        // still plain values, so keep using it.
        let mut slots = shard.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[index];
        let taken = !slot.holds(key);
        if taken {
            *slot = take();
        }
        f(slot, taken)
    }

    /// How many slots the table has (counted, not computed: what the memory bound tests).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// How many slots hold some key's state.
    #[cfg(test)]
    fn taken(&self, holds_any: impl Fn(&S) -> bool) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let slots = s.lock().unwrap_or_else(|p| p.into_inner());
                slots.iter().filter(|s| holds_any(s)).count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter per key; `key: None` is an empty slot.
    #[derive(Clone, Default)]
    struct Count {
        key: Option<u128>,
        n: u32,
    }

    impl Slot for Count {
        fn holds(&self, key: u128) -> bool {
            self.key == Some(key)
        }
    }

    fn bump<const A: usize, const B: usize>(t: &SlotTable<Count, A, B>, key: u128) -> (u32, bool) {
        t.with(
            key,
            || Count {
                key: Some(key),
                n: 0,
            },
            |s, taken| {
                s.n += 1;
                (s.n, taken)
            },
        )
    }

    #[test]
    fn a_key_finds_its_state_again() {
        let t: SlotTable<Count, 8, 64> = SlotTable::new(Count::default());
        assert_eq!(bump(&t, 7), (1, true));
        assert_eq!(bump(&t, 7), (2, false));
        assert_eq!(bump(&t, 7), (3, false));
    }

    #[test]
    fn an_empty_slot_is_taken_even_for_the_key_it_looks_like() {
        // An empty slot whose fields read as key 0: `holds`, not the key field, decides.
        #[derive(Clone)]
        struct Raw {
            key: u128,
            used: bool,
        }
        impl Slot for Raw {
            fn holds(&self, key: u128) -> bool {
                self.used && self.key == key
            }
        }
        let t: SlotTable<Raw, 1, 1> = SlotTable::new(Raw {
            key: 0,
            used: false,
        });
        let take = || Raw { key: 0, used: true };
        assert!(t.with(0, take, |_, taken| taken));
        assert!(!t.with(0, take, |_, taken| taken));
    }

    #[test]
    fn a_collision_forgets_the_older_key() {
        // One slot: every key collides.
        let t: SlotTable<Count, 1, 1> = SlotTable::new(Count::default());
        assert_eq!(bump(&t, 1), (1, true));
        assert_eq!(bump(&t, 1), (2, false));
        assert_eq!(bump(&t, 2), (1, true), "the newcomer starts afresh");
        assert_eq!(bump(&t, 1), (1, true), "and the older key too");
    }

    #[test]
    fn memory_is_bounded_whatever_the_keys() {
        let t: SlotTable<Count, 4, 16> = SlotTable::new(Count::default());
        assert_eq!(t.slots(), 64);
        for k in 0..100_000u128 {
            bump(&t, k);
        }
        assert_eq!(t.slots(), 64);
    }

    #[test]
    fn keys_spread_over_every_slot_of_every_shard() {
        // 10,000 keys over 64 slots leave none empty unless the index wastes some (a slot index
        // taken from the same hash bits as the shard would fill 8 of them).
        let t: SlotTable<Count, 8, 8> = SlotTable::new(Count::default());
        for k in 0..10_000u128 {
            bump(&t, k);
        }
        assert_eq!(t.taken(|s| s.key.is_some()), 64);
    }

    #[test]
    fn a_poisoned_shard_keeps_serving() {
        let t: SlotTable<Count, 1, 4> = SlotTable::new(Count::default());
        assert_eq!(bump(&t, 9), (1, true));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.with(9, Count::default, |_, _| panic!("mid-update"))
        }));
        assert!(caught.is_err());
        assert_eq!(bump(&t, 9), (2, false));
    }

    #[test]
    fn both_forms_of_an_ipv4_address_share_a_key() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_key(v4), ip_key(mapped));
        assert_eq!(ip_key(v4), 0xffff_c000_0201);
        assert_ne!(ip_key(v6), ip_key(v4));
    }
}
