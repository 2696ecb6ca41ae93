//! Who is asking and for what (`early_request_filter`): the client address and its location,
//! the Host, the route, and for the login side the request as the gate parsed it.

use pingora::http::RequestHeader;
use pingora_proxy::Session;

use super::{request_host, Ctx, Edge};
use crate::route::Route;

impl Edge {
    /// The client: the socket peer, or the address a trusted proxy forwarded for; its country
    /// and continent when a GeoIP database is configured.
    pub(super) fn locate_client(&self, session: &Session, ctx: &mut Ctx) {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical())
        else {
            return;
        };
        let xff = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        let client = registry_edge_geo::client_address(peer, xff, &ctx.generation.trusted_proxies);
        ctx.client_ip = Some(client.ip);
        ctx.peer_ip = Some(peer);
        if let Some(geo) = &ctx.generation.geo {
            let loc = geo.current().lookup(client.ip);
            ctx.country = loc.country;
            ctx.continent = loc.continent;
        }
    }

    /// The route by Host and path; a login-side request parsed into an Operation, or the gate's
    /// refusal kept for `request_filter`.
    pub(super) fn route(&self, req: &RequestHeader, ctx: &mut Ctx) {
        ctx.host = request_host(req).unwrap_or_default().to_owned();
        let r = match ctx
            .generation
            .router
            .route(request_host(req), req.uri.path())
        {
            Ok(r) => r,
            Err(m) => {
                ctx.misroute = Some(m);
                return;
            }
        };
        ctx.route = Some(r.route);
        ctx.strip_prefix = r.strip_prefix;
        if matches!(r.route, Route::Login | Route::Token) {
            match registry_edge_gate::parse(
                req.method.as_str(),
                req.uri.path(),
                req.uri.query(),
                &ctx.generation.config.registry.token_paths,
            ) {
                Ok(op) => ctx.op = Some(op),
                Err(reject) => ctx.gate = Some(reject),
            }
        }
    }
}
