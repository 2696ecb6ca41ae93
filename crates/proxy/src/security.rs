//! Security events, the reference architecture's "unusual and potentially harmful attempts", per
//! client address and blind to a registry's normal noise: every pull starts with a 401 on `/v2/`
//! and every push probes missing blobs with 404s, so neither counts. What counts, within
//! `access.security_events.window`:
//!
//! - distinct repository names refused as not public or answered 404 on manifests or tags
//!   (`repository_scan`);
//! - token requests answered 401 or 403 (`credential_guessing`);
//! - embargo refusals (`embargo_hits`).
//!
//! Crossing a threshold raises one event per kind and window. With `access.auto_block`, an address
//! with `after` events within its window is refused for `duration`. Memory is bounded like the
//! rate limiter's, in a `slots::SlotTable` of its own: a fixed table of slots by keyed hash; a
//! collision forgets the older address (it can only be lenient).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

use registry_edge_config::{AutoBlock, SecurityEvents};

use crate::clock::now_ms;
use crate::slots::{ip_key, SlotTable};

const SHARDS: usize = 32;
const SLOTS_PER_SHARD: usize = 512;

crate::outcome::labelled! {
    /// A security event's kind (`registry_edge_security_events_total`, the event line's `event`).
    pub enum Kind {
        RepositoryScan => "repository_scan",
        CredentialGuessing => "credential_guessing",
        EmbargoHits => "embargo_hits",
    }
}

pub enum Observation<'a> {
    /// A repository name refused as not public, or absent at the registry.
    RepositoryMiss(&'a str),
    TokenFailure,
    EmbargoHit,
}

/// An event to write and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub count: u32,
    /// Set when this event made auto_block refuse the address (ms since the process epoch).
    pub blocked_until_ms: Option<u64>,
}

#[derive(Default, Clone)]
struct Slot {
    key: u128,
    used: bool,
    window_start: u64,
    repos: Vec<u64>,
    token_failures: u32,
    embargo_hits: u32,
    /// Kinds already reported in this window.
    reported: [bool; 3],
    /// Times of recent events (for auto_block).
    events: Vec<u64>,
    blocked_until: u64,
}

impl crate::slots::Slot for Slot {
    fn holds(&self, key: u128) -> bool {
        self.used && self.key == key
    }
}

pub struct Security {
    cfg: SecurityEvents,
    block: Option<AutoBlock>,
    /// Keys the hashes of repository names counted as distinct.
    hasher: RandomState,
    table: SlotTable<Slot, SHARDS, SLOTS_PER_SHARD>,
}

impl Security {
    /// Whether this tracker already runs with these settings (a reload keeps its table then).
    pub fn same_settings(&self, cfg: &SecurityEvents, block: Option<&AutoBlock>) -> bool {
        self.cfg == *cfg && self.block.as_ref() == block
    }

    pub fn new(cfg: &SecurityEvents, block: Option<&AutoBlock>) -> Security {
        Security {
            cfg: cfg.clone(),
            block: block.cloned(),
            hasher: RandomState::new(),
            table: SlotTable::new(Slot::default()),
        }
    }

    fn with_slot<T>(&self, ip: IpAddr, now: u64, f: impl FnOnce(&mut Slot) -> T) -> T {
        let k = ip_key(ip);
        let fresh = || Slot {
            key: k,
            used: true,
            window_start: now,
            ..Slot::default()
        };
        self.table.with(k, fresh, |slot, _| f(slot))
    }

    /// The address is refused by auto_block right now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        if self.block.is_none() {
            // Without auto_block no address is ever blocked: no table look-up per request.
            return false;
        }
        let now = now_ms();
        self.with_slot(ip, now, |s| s.blocked_until > now)
    }

    /// Counts one observation; returns the event it raised, if any. `exempt`: the address is in
    /// `allow_cidrs` and is never blocked.
    pub fn observe(&self, ip: IpAddr, obs: Observation<'_>, exempt: bool) -> Option<Event> {
        self.observe_at(ip, obs, exempt, now_ms())
    }

    pub fn observe_at(
        &self,
        ip: IpAddr,
        obs: Observation<'_>,
        exempt: bool,
        now: u64,
    ) -> Option<Event> {
        let window = self.cfg.window.as_millis() as u64;
        let repo_hash = match &obs {
            Observation::RepositoryMiss(name) => Some(self.hasher.hash_one(name)),
            _ => None,
        };
        let cfg = &self.cfg;
        let block = self.block.as_ref();
        self.with_slot(ip, now, |s| {
            if now.saturating_sub(s.window_start) >= window {
                s.window_start = now;
                s.repos.clear();
                s.token_failures = 0;
                s.embargo_hits = 0;
                s.reported = [false; 3];
            }
            let (kind, count, threshold) = match obs {
                Observation::RepositoryMiss(_) => {
                    if let Some(h) = repo_hash {
                        if !s.repos.contains(&h) && s.repos.len() < cfg.repository_scan as usize {
                            s.repos.push(h);
                        }
                    }
                    (
                        Kind::RepositoryScan,
                        s.repos.len() as u32,
                        cfg.repository_scan,
                    )
                }
                Observation::TokenFailure => {
                    s.token_failures = s.token_failures.saturating_add(1);
                    (
                        Kind::CredentialGuessing,
                        s.token_failures,
                        cfg.failed_token_requests,
                    )
                }
                Observation::EmbargoHit => {
                    s.embargo_hits = s.embargo_hits.saturating_add(1);
                    (Kind::EmbargoHits, s.embargo_hits, cfg.embargo_hits)
                }
            };
            let index = kind as usize;
            if count < threshold || s.reported[index] {
                return None;
            }
            s.reported[index] = true;
            let mut blocked_until_ms = None;
            if let (Some(b), false) = (block, exempt) {
                let since = now.saturating_sub(b.window.as_millis() as u64);
                s.events.retain(|t| *t >= since);
                s.events.push(now);
                if s.events.len() as u32 >= b.after {
                    s.blocked_until = now + b.duration.as_millis() as u64;
                    blocked_until_ms = Some(s.blocked_until);
                }
            }
            Some(Event {
                kind,
                count,
                blocked_until_ms,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn security(block: bool) -> Security {
        Security::new(
            &SecurityEvents {
                window: Duration::from_secs(60),
                repository_scan: 5,
                failed_token_requests: 3,
                embargo_hits: 2,
            },
            block
                .then_some(AutoBlock {
                    after: 1,
                    window: Duration::from_secs(600),
                    duration: Duration::from_secs(60),
                })
                .as_ref(),
        )
    }

    #[test]
    fn a_scan_raises_one_event_and_blocks() {
        let s = security(true);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let now = 1_000_000;
        for i in 0..4 {
            assert_eq!(
                s.observe_at(
                    ip,
                    Observation::RepositoryMiss(&format!("r{i}")),
                    false,
                    now
                ),
                None
            );
        }
        // The same name again is not a new one.
        assert_eq!(
            s.observe_at(ip, Observation::RepositoryMiss("r0"), false, now),
            None
        );
        let e = s
            .observe_at(ip, Observation::RepositoryMiss("r4"), false, now)
            .unwrap();
        assert_eq!((e.kind, e.count), (Kind::RepositoryScan, 5));
        assert_eq!(e.blocked_until_ms, Some(now + 60_000));
        // One event per kind and window.
        assert_eq!(
            s.observe_at(ip, Observation::RepositoryMiss("r5"), false, now),
            None
        );
        // Another address is unaffected.
        assert_eq!(
            s.observe_at(other, Observation::RepositoryMiss("r0"), false, now),
            None
        );
    }

    #[test]
    fn windows_reset_and_exempt_addresses_are_never_blocked() {
        let s = security(true);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(s.observe_at(ip, Observation::TokenFailure, true, 0), None);
        }
        // A new window starts the count again.
        assert_eq!(
            s.observe_at(ip, Observation::TokenFailure, true, 61_000),
            None
        );
        assert_eq!(
            s.observe_at(ip, Observation::TokenFailure, true, 61_000),
            None
        );
        let e = s
            .observe_at(ip, Observation::TokenFailure, true, 61_000)
            .unwrap();
        assert_eq!(e.kind, Kind::CredentialGuessing);
        assert_eq!(e.blocked_until_ms, None, "allow_cidrs are never blocked");
        let e = security(false)
            .observe_at(ip, Observation::EmbargoHit, false, 0)
            .is_none();
        assert!(e);
    }
}
