//! What a finished request leaves behind: metrics, its access log line, what it tells the
//! security tracker; and request ids.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

use registry_edge_gate::Kind;

use super::{Ctx, Edge};
use crate::access_log::AccessEvent;
use crate::metrics::Finished;
use crate::outcome::{Answered, Disposition, PolicyReason};
use crate::route::Route;
use crate::upstream::PoolId;

impl Edge {
    /// A finished request: metrics, the access log line, the security tracker.
    pub(super) fn record(&self, session: &Session, e: Option<&Error>, ctx: &Ctx) {
        let m = &self.shared.metrics;
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let sent = session.body_bytes_sent();
        // One reading of the clock for the metrics and the access log.
        let elapsed = ctx.start.elapsed();
        m.record(&finished(
            ctx,
            &req.method,
            status,
            e.is_some(),
            (sent as u64, session.body_bytes_read() as u64),
            elapsed,
        ));
        count_upstream(ctx);
        count_blob_cache(ctx, sent as u64);
        for &i in &ctx.rules {
            if let Some(c) = ctx.generation.rewrites.get(i) {
                c.inc();
            }
        }
        self.observe_security(session, ctx, status);
        let error = e.map(|e| e.etype().as_str());
        self.shared
            .access_log
            .write(access_event(ctx, req, status, sent, error, elapsed));
    }

    /// Feeds the security event tracker with what this request showed; writes and counts events.
    pub(super) fn observe_security(&self, session: &Session, ctx: &Ctx, status: u16) {
        use crate::security::Observation;
        let Some(client) = ctx.client_ip else { return };
        let mut observations = Vec::new();
        if ctx.refused == Some(PolicyReason::Embargo) {
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
        let named =
            ctx.refused == Some(PolicyReason::NotPublic) || (status == 404 && names_a_repository);
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
        let exempt = ctx.generation.policy.allowed(client);
        for obs in observations {
            if let Some(ev) = ctx.generation.security.observe(client, obs, exempt) {
                self.shared.metrics.security_event(ev.kind);
                if ev.blocked_until_ms.is_some() {
                    self.shared.metrics.blocks.inc();
                }
                self.shared.access_log.write_event(serde_json::json!({
                    "event": ev.kind.label(),
                    "client": client.to_string(),
                    "count": ev.count,
                    "window_s": ctx.generation.config.access.security_events.window.as_secs(),
                    "blocked_for_s": ev.blocked_until_ms.map(|until| {
                        until.saturating_sub(crate::clock::now_ms()) / 1000
                    }),
                }));
            }
        }
    }
}

/// What the request counters learn of a finished request. `failed`: it ended in an error;
/// `bytes`: body bytes sent and received; `elapsed`: since the request started.
pub(super) fn finished<'a>(
    ctx: &Ctx,
    method: &'a http::Method,
    status: u16,
    failed: bool,
    bytes: (u64, u64),
    elapsed: std::time::Duration,
) -> Finished<'a> {
    let enforced = ctx.refused.is_some() && !ctx.generation.policy.detect_only();
    let located = ctx.route.is_some() && ctx.client_ip.is_some();
    Finished {
        route: ctx.route,
        method,
        status,
        disposition: Disposition::of(enforced, failed, ctx.answered.is_some()),
        seconds: elapsed.as_secs_f64(),
        bytes_sent: bytes.0,
        bytes_received: bytes.1,
        geo: located.then(|| {
            let refused = ctx.refused.is_some_and(PolicyReason::by_location);
            (ctx.country, refused)
        }),
    }
}

/// The access log line of a finished request.
pub(super) fn access_event<'a>(
    ctx: &'a Ctx,
    req: &'a RequestHeader,
    status: u16,
    bytes_sent: usize,
    error: Option<&'a str>,
    elapsed: std::time::Duration,
) -> AccessEvent<'a> {
    let ups = &ctx.generation.upstreams;
    let pool = ctx.pool.and_then(|id| ups.get(id));
    AccessEvent {
        request_id: &ctx.request_id,
        client_ip: ctx.client_ip,
        country: ctx.country,
        decision: ctx.refused.map(PolicyReason::label),
        method: req.method.as_str(),
        host: &ctx.host,
        // The access log splits off the query and redacts both by allow-list.
        path: req
            .uri
            .path_and_query()
            .map_or(req.uri.path(), |pq| pq.as_str()),
        status,
        bytes_sent,
        duration: elapsed,
        route: ctx.route.map(Route::label),
        upstream: pool.map(|p| p.name.as_str()),
        region: pool.and_then(|p| p.region.as_deref()),
        edge: ctx.answered.map(Answered::label),
        cache: ctx.cache_use.map(crate::blob_cache::CacheUse::label),
        rules: ctx
            .rules
            .iter()
            .map(|&i| ctx.generation.engine.rule_name(i))
            .collect(),
        error,
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    }
}

/// A blob request with a cache token: how it was served, and its bytes by source.
fn count_blob_cache(ctx: &Ctx, sent: u64) {
    let (Some(cache), Some(used)) = (&ctx.generation.blob_cache, ctx.cache_use) else {
        return;
    };
    let m = cache.metrics();
    m.requests[used.index()].inc();
    let source = usize::from(used != crate::blob_cache::CacheUse::Hit);
    m.bytes[source].inc_by(sent);
}

/// The upstream that answered: its requests and duration, and a failover when the client's
/// preferred region did not serve it.
fn count_upstream(ctx: &Ctx) {
    let ups = &ctx.generation.upstreams;
    let Some((id, pool)) = ctx.pool.and_then(|id| Some((id, ups.get(id)?))) else {
        return;
    };
    pool.metrics.requests.inc();
    if let Some(t) = ctx.upstream_start {
        pool.metrics.duration.observe(t.elapsed().as_secs_f64());
    }
    if let Some(p) = ctx.preferred {
        if id != PoolId::Regional(p) {
            if let Some(preferred) = ups.get(PoolId::Regional(p)) {
                preferred.metrics.failovers.inc();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::generation::Generation;
    use crate::metrics::Metrics;

    const ZERO: std::time::Duration = std::time::Duration::ZERO;

    fn ctx(access: &str) -> Ctx {
        let config = crate::testing::minimal("", &format!("access:\n  mode: {access}\n"));
        let g = Generation::build(Arc::new(config), None, &Metrics::new().unwrap()).unwrap();
        let mut c = Ctx::new(Arc::new(g), "0123".into());
        c.route = Some(Route::Login);
        c.client_ip = Some("192.0.2.7".parse().unwrap());
        c.country = Some(*b"CU");
        c.host = "registry.example".into();
        c
    }

    #[test]
    fn an_enforced_refusal_is_refused_and_a_detected_one_goes_on() {
        let get = http::Method::GET;
        let mut c = ctx("enforce");
        c.refused = Some(PolicyReason::Embargo);
        c.answered = Some(PolicyReason::Embargo.into());
        let f = finished(&c, &get, 451, false, (10, 0), ZERO);
        assert_eq!(f.disposition, Disposition::Refused);
        assert_eq!(f.geo, Some((Some(*b"CU"), true)));
        let mut c = ctx("detect");
        c.refused = Some(PolicyReason::Embargo);
        c.pool = Some(PoolId::Login);
        let f = finished(&c, &get, 200, false, (10, 0), ZERO);
        assert_eq!(f.disposition, Disposition::Proxied);
        // Refused by location, even though it went on.
        assert_eq!(f.geo, Some((Some(*b"CU"), true)));
        assert_eq!(
            finished(&c, &get, 502, true, (0, 0), ZERO).disposition,
            Disposition::Error
        );
        // A refusal that is not by location counts the country as allowed.
        c.refused = Some(PolicyReason::RateLimit);
        assert_eq!(
            finished(&c, &get, 200, false, (0, 0), ZERO).geo,
            Some((Some(*b"CU"), false))
        );
        // An unrouted request has no place in the country counts.
        c.route = None;
        assert_eq!(finished(&c, &get, 421, false, (0, 0), ZERO).geo, None);
    }

    #[test]
    fn the_access_event_names_the_outcome_by_its_labels() {
        let mut c = ctx("enforce");
        c.refused = Some(PolicyReason::NotPublic);
        c.answered = Some(PolicyReason::NotPublic.into());
        let mut req = RequestHeader::build("GET", b"/v2/hidden/app/manifests/1?n=1", None).unwrap();
        req.insert_header("User-Agent", "skopeo/1").unwrap();
        let e = access_event(&c, &req, 401, 0, None, ZERO);
        assert_eq!(
            (e.decision, e.edge),
            (Some("not_public"), Some("not_public"))
        );
        assert_eq!((e.route, e.upstream, e.region), (Some("login"), None, None));
        assert_eq!(e.path, "/v2/hidden/app/manifests/1?n=1");
        assert_eq!(e.user_agent, Some("skopeo/1"));
        let mut c = ctx("enforce");
        c.pool = Some(PoolId::Login);
        c.answered = Some(crate::outcome::EdgeReason::UpstreamTimeout.into());
        let e = access_event(&c, &req, 504, 0, Some("ReadTimedout"), ZERO);
        assert_eq!((e.decision, e.edge), (None, Some("upstream_timeout")));
        assert_eq!(e.upstream, Some("login"));
        assert_eq!(e.error, Some("ReadTimedout"));
    }
}
