//! Peer health: App Gateway probe semantics (path, interval, timeout, healthy status ranges,
//! consecutive failures before a peer is taken out and successes before it is taken back) for
//! login-side upstreams, connection (TCP, and TLS for TLS upstreams) probes for data endpoints, and
//! passive marking: a connect failure or a reset before the first response byte backs a peer off
//! for one probe interval.
//!
//! Why not pingora-load-balancing's `HttpHealthCheck` / `TcpHealthCheck` (0.9.1,
//! `src/health_check.rs` and `src/lib.rs`): its thresholds are the same rule as
//! [`PeerHealth::record`] (`Health::observe_health` counts consecutive results opposite to the
//! current state, resets on an agreeing one, flips at `consecutive_failure` /
//! `consecutive_success`), and a `validator` on the response head could take the status ranges,
//! so neither is the reason. These are:
//!
//! - No deadline for the whole probe. `HttpHealthCheck::check` bounds the connection
//!   (`connection_timeout`, 1 s by default) and each write and read (`write_timeout`,
//!   `read_timeout`) apart, then reads the whole response body, each read under its own timeout:
//!   a peer trickling its body holds the probe as long as it likes. App Gateway's `timeout` bounds
//!   the probe; [`probe`] runs connect, request and status line under one `tokio::time::timeout`
//!   and reads no body.
//! - No timed back-off. A backend is taken out by the probes or by `set_enable(backend, false)`,
//!   a manual switch with no expiry; passive marking ("off for one interval") would be a second
//!   state kept beside it, which is what [`PeerHealth`] is.
//! - Its checks run inside a `LoadBalancer` / `HealthRegistry` over its own `Backend` set and
//!   selection (`select` by key over `RoundRobin`, consistent hashing…): the edge keeps its own
//!   peer lists (resolved in the background, carried over reloads) and chooses by region
//!   ([`crate::select`]) and client ([`crate::upstream::Pool::usable_peers`]), so the balancer
//!   would hold a copy of them only to read one flag per peer.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::HttpPeer;
use registry_edge_config::{HealthCheck, HealthCheckKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::now_ms;

/// One peer's state. New peers start healthy: an upstream is usable at once, and probes take it
/// out after `unhealthy_after` failures.
#[derive(Debug)]
pub struct PeerHealth {
    healthy: AtomicBool,
    /// Positive: consecutive successes; negative: consecutive failures.
    streak: AtomicI32,
    /// Passive back-off: not chosen before this instant (`clock::now_ms`).
    down_until_ms: AtomicU64,
}

impl Default for PeerHealth {
    fn default() -> Self {
        PeerHealth {
            healthy: AtomicBool::new(true),
            streak: AtomicI32::new(0),
            down_until_ms: AtomicU64::new(0),
        }
    }
}

impl PeerHealth {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Healthy by the probes and not backed off by a recent failure.
    pub fn usable(&self) -> bool {
        self.usable_at(now_ms())
    }

    /// [`usable`](Self::usable) at `now` (`clock::now_ms`).
    fn usable_at(&self, now: u64) -> bool {
        self.healthy() && self.down_until_ms.load(Ordering::Relaxed) <= now
    }

    /// Not chosen for `d` from now.
    pub fn back_off(&self, d: Duration) {
        self.back_off_at(now_ms(), d);
    }

    fn back_off_at(&self, now: u64, d: Duration) {
        self.down_until_ms
            .store(now + d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a probe result; returns the new state when it changed.
    pub fn record(&self, ok: bool, hc: &HealthCheck) -> Option<bool> {
        let streak = self.streak.load(Ordering::Relaxed);
        let streak = match (ok, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let healthy = self.healthy();
        if healthy && streak <= -(hc.unhealthy_after as i32) {
            self.healthy.store(false, Ordering::Relaxed);
            return Some(false);
        }
        if !healthy && streak >= hc.healthy_after as i32 {
            self.healthy.store(true, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Relaxed);
            return Some(true);
        }
        None
    }
}

/// One probe of `peer` (whose options carry the upstream's CA and SNI). `host` is the Host header
/// for HTTP probes.
pub async fn probe(
    connector: &TransportConnector,
    peer: &HttpPeer,
    host: &str,
    hc: &HealthCheck,
) -> bool {
    let work = async {
        let mut stream = connector.new_stream(peer).await.ok()?;
        match &hc.kind {
            HealthCheckKind::Tcp => Some(true),
            HealthCheckKind::Http {
                path,
                healthy_statuses,
            } => {
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: registry-edge-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(req.as_bytes()).await.ok()?;
                stream.flush().await.ok()?;
                let mut buf = [0u8; 64];
                let mut got = 0;
                while got < 12 {
                    let n = stream.read(&mut buf[got..]).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let line = std::str::from_utf8(&buf[..got]).ok()?;
                let status: u16 = line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
                Some(
                    healthy_statuses
                        .iter()
                        .any(|r| (r.from..=r.to).contains(&status)),
                )
            }
        }
    };
    matches!(tokio::time::timeout(hc.timeout, work).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_edge_rewrite::StatusRange;

    fn hc() -> HealthCheck {
        HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/v2/".into(),
                healthy_statuses: vec![StatusRange { from: 200, to: 399 }],
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }

    #[test]
    fn thresholds() {
        let h = PeerHealth::default();
        let hc = hc();
        assert!(h.healthy());
        assert_eq!(h.record(false, &hc), None);
        assert_eq!(h.record(false, &hc), None);
        assert_eq!(
            h.record(true, &hc),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.record(false, &hc), None);
        assert_eq!(h.record(false, &hc), None);
        assert_eq!(h.record(false, &hc), Some(false));
        assert!(!h.usable());
        assert_eq!(h.record(true, &hc), None);
        assert_eq!(h.record(true, &hc), Some(true));
        assert!(h.usable());
    }

    #[test]
    fn back_off_is_passive_and_temporary() {
        let h = PeerHealth::default();
        h.back_off_at(1_000, Duration::from_millis(50));
        assert!(h.healthy(), "a back-off is not a probe verdict");
        assert!(!h.usable_at(1_000));
        assert!(!h.usable_at(1_049));
        assert!(h.usable_at(1_050));
        // On the process clock: backed off now, for long enough not to end during the test.
        h.back_off(Duration::from_secs(3600));
        assert!(!h.usable());
        // A peer the probes took out stays out when its back-off ends.
        let down = PeerHealth::default();
        down.healthy.store(false, Ordering::Relaxed);
        assert!(!down.usable_at(u64::MAX));
    }
}
