//! The edge's own answers: which one a request gets (`refusal`), the policy's refusals as
//! responses (`edge_refusal`), and writing them under the response header policy (`answer`).

use pingora::prelude::*;
use pingora_proxy::Session;

use super::{header_bytes, public_origin, Ctx, Edge};
use crate::policy::Refusal;
use crate::respond::EdgeResponse;
use crate::route::{normalise_host, Misroute};

impl Edge {
    /// The edge's answer for a policy refusal. A hidden repository without credentials gets the
    /// registry's own kind of challenge.
    pub(super) fn edge_refusal(&self, ctx: &Ctx, refusal: Refusal) -> EdgeResponse {
        let mut r = EdgeResponse::error(
            refusal.status,
            refusal.code,
            refusal.reason,
            refusal.message,
        );
        r.allow = refusal.allow;
        if let Some(secs) = refusal.retry_after {
            r.extra.push(("Retry-After", secs.to_string()));
        }
        if let Some(scope) = refusal.challenge_scope {
            let origin = public_origin(self.scheme(), &ctx.host);
            let token_path = ctx
                .gen
                .config
                .registry
                .token_paths
                .first()
                .map_or("/oauth2/token", String::as_str);
            let service = &ctx.gen.config.registry.public_host;
            let mut challenge =
                format!("Bearer realm=\"{origin}{token_path}\",service=\"{service}\"");
            if !scope.is_empty() {
                challenge.push_str(&format!(",scope=\"{scope}\""));
            }
            r.extra.push(("WWW-Authenticate", challenge));
        }
        r
    }

    /// Answers with one of the edge's own responses, under the same header policy.
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: &EdgeResponse,
    ) -> Result<()> {
        ctx.edge_reason = Some(r.reason);
        self.shared.metrics.edge_response(r.reason);
        let mut header = r.header(session.req_header().uri.path())?;
        self.rewrite_response(session, &mut header, ctx);
        r.write(session, header).await
    }

    /// Decides whether the edge answers the request itself.
    pub(super) fn refusal(&self, session: &Session, ctx: &Ctx) -> Option<EdgeResponse> {
        let req = session.req_header();
        if header_bytes(req) > self.listener.max_request_header_bytes {
            return Some(EdgeResponse::error(
                431,
                "UNSUPPORTED",
                "header_too_large",
                format!(
                    "request headers exceed {} bytes",
                    self.listener.max_request_header_bytes
                ),
            ));
        }
        if let Some(m) = &ctx.misroute {
            return Some(match m {
                Misroute::UnknownHost => EdgeResponse::error(
                    421,
                    "UNSUPPORTED",
                    "unknown_host",
                    "this edge does not serve the requested host",
                ),
                Misroute::UnknownRegion => EdgeResponse::error(
                    404,
                    "BLOB_UNKNOWN",
                    "unknown_region",
                    "unknown data region in the path",
                ),
                Misroute::NonCanonicalPath => EdgeResponse::error(
                    400,
                    "NAME_INVALID",
                    "non_canonical_path",
                    "the path has empty, `.` or `..` segments or encoded separators",
                ),
                Misroute::BadHost => EdgeResponse::error(
                    400,
                    "UNSUPPORTED",
                    "bad_host",
                    "the Host header is not a host name with an optional port",
                ),
            });
        }
        if self.listener.redirect_to_https {
            let is_read = super::plan::idempotent(&req.method);
            if !is_read {
                let mut r = EdgeResponse::error(
                    405,
                    "UNSUPPORTED",
                    "https_required",
                    "use https: this listener only redirects GET and HEAD",
                );
                r.allow = Some("GET, HEAD");
                return Some(r);
            }
            let host = normalise_host(&ctx.host);
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            return Some(EdgeResponse {
                status: 308,
                code: None,
                message: String::new(),
                location: Some(format!("https://{host}{pq}")),
                allow: None,
                reason: "redirect_https",
                close: false,
                extra: Vec::new(),
            });
        }
        None
    }
}
