//! What a finished request leaves behind: metrics, its access log line, what it tells the
//! security tracker; and request ids.

use pingora::prelude::*;
use pingora_proxy::Session;

use registry_edge_gate::Kind;

use super::{Ctx, Edge};
use crate::access_log::AccessEvent;
use crate::metrics::{method_index, route_index};
use crate::route::Route;
use crate::upstream::PoolId;

impl Edge {
    /// A finished request: metrics, the access log line, the security tracker.
    pub(super) fn record(&self, session: &Session, e: Option<&Error>, ctx: &Ctx) {
        let m = &self.shared.metrics;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
        let detect = ctx.gen.policy.detect_only();
        let decision = if ctx.decision.is_some() && !detect {
            1
        } else if e.is_some() {
            3
        } else if ctx.edge_reason.is_some() {
            2
        } else {
            0
        };
        let req = session.req_header();
        m.request(
            route_index(ctx.route),
            method_index(&req.method),
            status,
            decision,
            elapsed.as_secs_f64(),
        );
        m.bytes_sent.inc_by(session.body_bytes_sent() as u64);
        m.bytes_received.inc_by(session.body_bytes_read() as u64);
        if ctx.route.is_some() && ctx.client_ip.is_some() {
            let refused = matches!(
                ctx.decision,
                Some("deny_cidr" | "embargo" | "unknown_country")
            );
            m.geo(ctx.country, refused);
        }
        if let Some(id) = ctx.current {
            let ups = &ctx.gen.upstreams;
            let pool = ups.get(id);
            pool.metrics.requests.inc();
            if let Some(t) = ctx.upstream_start {
                pool.metrics.duration.observe(t.elapsed().as_secs_f64());
            }
            // Served elsewhere than the region the client's location prefers: a failover.
            if let Some(p) = ctx.preferred {
                if id != PoolId::Regional(p) {
                    ups.get(PoolId::Regional(p)).metrics.failovers.inc();
                }
            }
        }
        for &i in &ctx.rules {
            if let Some(c) = ctx.gen.rewrites.get(i) {
                c.inc();
            }
        }
        self.observe_security(session, ctx, status);
        let region = ctx
            .current
            .and_then(|id| ctx.gen.upstreams.get(id).region.as_deref());
        let req = session.req_header();
        self.shared.access_log.write(AccessEvent {
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
            country: ctx.country,
            decision: ctx.decision,
            method: req.method.as_str(),
            host: &ctx.host,
            // The access log splits off the query and redacts both by allow-list.
            path: req
                .uri
                .path_and_query()
                .map_or(req.uri.path(), |pq| pq.as_str()),
            status,
            bytes_sent: session.body_bytes_sent(),
            duration: elapsed,
            route: ctx.route.map(Route::label),
            upstream: ctx
                .current
                .map(|id| ctx.gen.upstreams.get(id).name.as_str()),
            region,
            edge: ctx.edge_reason,
            rules: ctx
                .rules
                .iter()
                .map(|&i| ctx.gen.engine.rule_name(i))
                .collect(),
            error: e.map(|e| e.etype().as_str()),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        });
    }

    /// Feeds the security event tracker with what this request showed; writes and counts events.
    pub(super) fn observe_security(&self, session: &Session, ctx: &Ctx, status: u16) {
        use crate::security::Observation;
        let Some(client) = ctx.client_ip else { return };
        let mut observations = Vec::new();
        if ctx.decision == Some("embargo") {
            observations.push(Observation::EmbargoHit);
        }
        if ctx.token_path && (status == 401 || status == 403) {
            observations.push(Observation::TokenFailure);
        }
        // Scanning: names refused as hidden, or absent at the registry on manifests and tags
        // (a push's 404s on blobs are normal).
        let names_a_repository = ctx
            .op
            .as_ref()
            .is_some_and(|op| matches!(op.kind, Kind::Manifest { .. } | Kind::Tags));
        let named = ctx.decision == Some("not_public") || (status == 404 && names_a_repository);
        // A path the gate refused is a probe too; it is counted under its raw path.
        let session_path = session.req_header().uri.path();
        let first_name = if ctx.gate.is_some() {
            Some(session_path)
        } else if named {
            ctx.op.as_ref().and_then(|op| op.repositories().next())
        } else {
            None
        };
        if let Some(name) = first_name {
            observations.push(Observation::RepositoryMiss(name));
        }
        let exempt = ctx.gen.policy.allowed(client);
        for obs in observations {
            if let Some(ev) = ctx.gen.security.observe(client, obs, exempt) {
                self.shared.metrics.security_event(ev.kind.name());
                if ev.blocked_until_ms.is_some() {
                    self.shared.metrics.blocks.inc();
                }
                self.shared.access_log.write_event(serde_json::json!({
                    "event": ev.kind.name(),
                    "client": client.to_string(),
                    "count": ev.count,
                    "window_s": ctx.gen.config.access.security_events.window.as_secs(),
                    "blocked_for_s": ev.blocked_until_ms.map(|until| {
                        until.saturating_sub(crate::health::now_ms()) / 1000
                    }),
                }));
            }
        }
    }
}

/// 32 hex digits: the process's random prefix, then the request counter (what
/// `format!("{prefix:016x}{n:016x}")` writes, without `core::fmt`).
pub(super) fn request_id(prefix: u64, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, slot) in id.iter_mut().enumerate() {
        let word = if i < 16 { prefix } else { n };
        let shift = 60 - 4 * (i % 16);
        *slot = HEX[((word >> shift) & 0xf) as usize];
    }
    id.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn request_ids_are_the_two_words_in_hex() {
        for (p, n) in [(0, 0), (0x0123_4567_89ab_cdef, 1), (u64::MAX, 0xfeed)] {
            assert_eq!(super::request_id(p, n), format!("{p:016x}{n:016x}"));
        }
    }
}
