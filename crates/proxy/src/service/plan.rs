//! Which upstream peers a request may use, in order, and when it may move to the next.

use pingora::prelude::*;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora_proxy::Session;

use std::net::IpAddr;

use super::{Ctx, Edge, MAX_ATTEMPTS};
use crate::outcome::EdgeReason;
use crate::respond::EdgeResponse;
use crate::route::Route;
use crate::upstream::PoolId;

/// GET and HEAD: what the edge may send again, retry, or redirect.
pub(super) fn idempotent(method: &http::Method) -> bool {
    *method == http::Method::GET || *method == http::Method::HEAD
}

impl Edge {
    /// Plans the upstream; with no usable peer, answers 503 here (an error from `upstream_peer`
    /// would close the connection).
    pub(super) async fn plan_or_refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        ctx.candidates = self.plan(ctx);
        if !ctx.candidates.is_empty() {
            return Ok(false);
        }
        let message = match ctx.route {
            Some(Route::Data(i)) => format!(
                "region {} cannot serve this blob right now; retry the download",
                ctx.generation
                    .upstreams
                    .get(PoolId::Data(i))
                    .and_then(|p| p.region.as_deref())
                    .unwrap_or("?")
            ),
            _ => "the registry is not reachable from this edge right now; retry later".to_string(),
        };
        let r = EdgeResponse::error(503, "UNAVAILABLE", EdgeReason::NoUpstreamPeer, message);
        self.answer(session, ctx, &r).await?;
        Ok(true)
    }

    /// The (pool, peer) pairs for a routed request: the data endpoint of exactly its region; the
    /// token server; or the login side's regions in order of preference.
    pub(super) fn plan(&self, ctx: &mut Ctx) -> Vec<(PoolId, std::net::SocketAddr)> {
        let ups = &ctx.generation.upstreams;
        let key = ctx.client_ip.map_or(0, client_key);
        let pools = match ctx.route {
            None => Vec::new(),
            Some(Route::Data(i)) => vec![PoolId::Data(i)],
            Some(Route::Token) => vec![PoolId::Token],
            Some(Route::Login) => {
                let plan = ctx
                    .generation
                    .selector
                    .login_plan(ups, ctx.country, ctx.continent);
                ctx.preferred = plan.preferred;
                plan.pools
            }
        };
        let mut out = Vec::new();
        for id in pools {
            let peers = ups.get(id).map(|p| p.usable_peers(key)).unwrap_or_default();
            out.extend(peers.into_iter().map(|a| (id, a)));
            if out.len() >= MAX_ATTEMPTS {
                break;
            }
        }
        out
    }

    /// GET and HEAD may go to the next candidate, within the attempt bound.
    pub(super) fn may_retry(&self, session: &Session, ctx: &Ctx) -> bool {
        idempotent(&session.req_header().method)
            && ctx.attempt + 1 < ctx.candidates.len().min(MAX_ATTEMPTS)
    }

    /// The peer that failed is avoided for a while (health.rs's back-off).
    pub(super) fn back_off(&self, peer: &HttpPeer, ctx: &Ctx) {
        let pool = ctx.pool.and_then(|id| ctx.generation.upstreams.get(id));
        if let (Some(pool), Some(addr)) = (pool, peer.address().as_inet()) {
            pool.back_off(*addr);
        }
    }

    /// Moves to the next candidate when the request may go on there; counted as a retry.
    pub(super) fn retry_next(&self, session: &Session, ctx: &mut Ctx, e: &mut Error) -> bool {
        if !self.may_retry(session, ctx) {
            return false;
        }
        if let Some(pool) = ctx.pool.and_then(|id| ctx.generation.upstreams.get(id)) {
            pool.metrics.retries.inc();
        }
        ctx.attempt += 1;
        e.set_retry(true);
        true
    }

    /// An HTTP/2 request whose body is still to come gets the HTTP/1 rule: no more than the
    /// listener's idle time between its bytes (pingora reads it with no deadline).
    pub(super) fn watch_h2_body(&self, session: &mut Session, ctx: &mut Ctx) {
        if session.req_header().version != http::Version::HTTP_2
            || self.shared.h2.is_empty()
            || session.is_body_done()
        {
            return;
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        if let (Some(client), Some(local)) = (client, local) {
            ctx.body_wait = self.shared.h2.body(client, local);
        }
    }
}

/// A stable per-client key, so that one client keeps to one peer (and region) while it is healthy.
fn client_key(ip: IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    h.finish()
}
