//! The Pingora `ProxyHttp` implementation: glue. Each phase calls the functions that decide,
//! which live beside it (`arrive`, `token`, `plan`, `names`, `observe`) or in their own modules
//! (`respond`, `policy`, `headers`, the gate and rewrite crates):
//!
//! ```text
//! early_request_filter    listener timeouts; Edge::locate_client (address, country);
//!                         Edge::route: route::Router::route, then registry_edge_gate::parse
//! request_filter          respond::before_policy (431, 421/404/400, redirect 308/405);
//!                         Edge::policy → policy::Policy::decide (auto-block first), answered by
//!                         respond::EdgeResponse::refused; respond::EdgeResponse::gate (400/404/405);
//!                         Edge::token_request (token paths); Edge::watch_h2_body;
//!                         Edge::plan_or_refuse (503): every answer through Edge::answer
//! upstream_peer           ctx.candidates[attempt] → upstream::Pool::http_peer
//! fail_to_connect         Edge::back_off, Edge::retry_next (GET/HEAD, at most MAX_ATTEMPTS)
//! error_while_proxy       the same for a reset before the first response byte
//! upstream_request_filter token::upstream_target (what was judged, re-serialised);
//!                         headers::upstream_request; the engine's request rules
//! request_body_filter     h2watch progress; a token POST's rebuilt body
//! response_filter         Edge::rewrite_response, identity::public_service / hide_server,
//!                         Edge::unmapped_urls
//! fail_to_proxy           respond::failure → 502/504 with an OCI body
//! logging                 Edge::record: observe::finished → Metrics::record,
//!                         observe::access_event → AccessLog::write, the security tracker
//! ```

mod arrive;
mod blobs;
mod fill;
mod names;
mod observe;
mod plan;
mod state;
mod token;

pub use names::public_origin;
use names::RewriteVars;
use observe::request_id;
pub use state::{request_host, Ctx, Edge, Shared};

use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use registry_edge_gate::Kind;

use crate::headers;
use crate::outcome::Answered;
use crate::policy::Refusal;
use crate::respond::{self, EdgeResponse};
use crate::route::Route;

/// At most this many attempts (first try included) for an idempotent request whose connection
/// failed before anything was sent.
const MAX_ATTEMPTS: usize = 3;

impl Edge {
    /// The request head that goes upstream, from the client's (`upstream`, a copy): what the
    /// gate judged, re-serialised on the login side; headers::upstream_request; a data
    /// target without the cache token; the engine's request rules. `upstream_request_filter`
    /// and a fill's own exchange (`fill`) both send this.
    fn upstream_head(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(route), Some(id)) = (ctx.route, ctx.pool) else {
            return Ok(());
        };
        let pool = ctx.generation.upstreams.get(id).or_err(
            InternalError,
            "a planned upstream this configuration does not have",
        )?;
        // Login side: the target the gate judged, re-serialised; never the client's bytes.
        if let Some(target) = token::upstream_target(session.req_header().uri.path(), ctx) {
            let uri: http::Uri = target
                .parse()
                .or_err(InvalidHTTPHeader, "rebuilt request target")?;
            upstream.set_uri(uri);
        }
        if let Some(body) = &ctx.token_body {
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
        let peer_trusted = ctx
            .peer_ip
            .is_some_and(|ip| ctx.generation.trusted_proxies.contains(ip));
        headers::upstream_request(
            upstream,
            &headers::Forwarding {
                host_header: &pool.host_value,
                strip_prefix: ctx.strip_prefix,
                peer_ip: ctx.peer_ip,
                peer_trusted,
                public_host: &ctx.host,
                public_scheme: self.scheme(),
                strip_authorization: matches!(route, Route::Data(_)),
            },
        )?;
        if matches!(route, Route::Data(_)) {
            // A cache token is the edge's, valid or not: the data endpoint gets its URL as the
            // registry signed it.
            let pq = upstream.uri.path_and_query().map_or("/", |pq| pq.as_str());
            if let Some(n) = crate::blob_cache::token::suffix_len(pq) {
                let bare = pq.get(..pq.len() - n).unwrap_or(pq);
                let uri: http::Uri = bare
                    .parse()
                    .or_err(InvalidHTTPHeader, "data target without the cache token")?;
                upstream.set_uri(uri);
            }
        }
        upstream.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        // The client's request is read while the upstream copy is changed: two objects.
        let vars = RewriteVars::new(session, ctx, self.scheme());
        let rctx = vars.context(ctx, self.scheme(), &session.req_header().headers);
        let applied = ctx
            .generation
            .engine
            .apply_request(&mut names::Headers(upstream), &rctx);
        ctx.rules.extend(applied.iter());
        Ok(())
    }

    fn scheme(&self) -> &'static str {
        self.listener.public_scheme.as_str()
    }

    /// Runs the access policy for a routed request.
    fn policy(&self, session: &Session, ctx: &mut Ctx) -> Option<Refusal> {
        let client = ctx.client_ip?;
        let req = session.req_header();
        ctx.token_path = ctx
            .op
            .as_ref()
            .is_some_and(|op| matches!(op.kind, Kind::Token { .. }));
        let content_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let g = &ctx.generation;
        g.policy.decide(&crate::policy::Request {
            client,
            country: ctx.country,
            method: &req.method,
            operation: ctx.op.as_ref(),
            token_path: ctx.token_path,
            authorized: req.headers.contains_key(http::header::AUTHORIZATION),
            content_length,
            blocked: g.security.blocked(client),
        })
    }

    /// The edge's answer for a policy refusal, its challenge naming the public token URL.
    fn refused(&self, ctx: &Ctx, refusal: Refusal) -> EdgeResponse {
        let registry = &ctx.generation.config.registry;
        let token_path = registry
            .token_paths
            .first()
            .map_or("/oauth2/token", String::as_str);
        let realm = format!("{}{token_path}", public_origin(self.scheme(), &ctx.host));
        EdgeResponse::refused(refusal, &realm, &registry.public_host)
    }

    /// Answers with one of the edge's own responses, under the same header policy.
    async fn answer(&self, session: &mut Session, ctx: &mut Ctx, r: &EdgeResponse) -> Result<()> {
        ctx.answered = Some(r.reason);
        if let Answered::Edge(reason) = r.reason {
            self.shared.metrics.edge_response(reason);
        }
        let mut header = r.header(session.req_header().uri.path())?;
        self.rewrite_response(session, &mut header, ctx);
        r.write(session, header).await
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    /// No downstream modules: pingora's default adds a (disabled) response compression module,
    /// which still costs an allocation and a header inspection per request. Registry content is
    /// compressed layers and small JSON; the edge passes `Content-Encoding` through untouched.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    /// What pingora prints for the request in its `Fail to proxy` / `Fail to filter request`
    /// lines: method, host, route and the target through the allow-lists of crate::redact
    /// (pingora's default is the raw target with its query: SAS signatures, tokens).
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        crate::redact::summary(session, ctx.route.map_or("none", Route::label))
    }

    fn new_ctx(&self) -> Ctx {
        let n = self.shared.id_counter.fetch_add(1, Ordering::Relaxed);
        Ctx::new(
            self.shared.generation(),
            request_id(self.shared.id_prefix, n),
        )
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let t = &self.listener.timeouts;
        session.set_keepalive(Some(t.idle.as_secs().max(1)));
        session.set_write_timeout(Some(t.write));
        session.set_read_timeout(Some(t.idle));
        self.locate_client(session, ctx);
        self.route(session.req_header(), ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let own = respond::before_policy(
            session.req_header(),
            &ctx.host,
            ctx.misroute.as_ref(),
            &self.listener,
        );
        if let Some(r) = own {
            self.answer(session, ctx, &r).await?;
            return Ok(true);
        }
        // The address checks, the embargo and the rate limit come first, also for a request the
        // gate refused (an embargoed client learns nothing else, a flood of garbage is limited).
        if let Some(refusal) = self.policy(session, ctx) {
            let detect = ctx.generation.policy.detect_only();
            ctx.refused = Some(refusal.reason);
            self.shared.metrics.refusal(refusal.reason, detect);
            if !detect {
                let r = self.refused(ctx, refusal);
                self.answer(session, ctx, &r).await?;
                return Ok(true);
            }
        }
        // What does not parse is never forwarded, in detect mode too: the grammar is not a policy
        // decision.
        if let Some(g) = &ctx.gate {
            let r = EdgeResponse::gate(g);
            self.answer(session, ctx, &r).await?;
            return Ok(true);
        }
        if ctx.token_path {
            if let Some(r) = self.token_request(session, ctx).await? {
                self.answer(session, ctx, &r).await?;
                return Ok(true);
            }
        }
        if self.serve_cached_blob(session, ctx).await? {
            return Ok(true);
        }
        self.watch_h2_body(session, ctx);
        self.plan_or_refuse(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(&(id, addr)) = ctx.candidates.get(ctx.attempt) else {
            return Err(Error::explain(
                HTTPStatus(502),
                "no upstream peer left for this request",
            ));
        };
        ctx.pool = Some(id);
        ctx.upstream_start.get_or_insert_with(Instant::now);
        let pool = ctx.generation.upstreams.get(id).or_err(
            InternalError,
            "a planned upstream this configuration does not have",
        )?;
        Ok(pool.http_peer(addr))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pool) = ctx.pool.and_then(|id| ctx.generation.upstreams.get(id)) {
            pool.metrics.connect_errors.inc();
        }
        self.back_off(peer, ctx);
        self.retry_next(session, ctx, &mut e);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A reset or close before the first response byte of a GET/HEAD: nothing reached the
        // client, so the next peer (or region) may answer instead.
        let early = *e.esource() == ErrorSource::Upstream
            && session.response_written().is_none()
            && matches!(
                e.etype(),
                ConnectionClosed | ReadError | WriteError | H1Error | H2Error | InvalidH2
            );
        if early && self.may_retry(session, ctx) {
            self.back_off(peer, ctx);
            self.retry_next(session, ctx, &mut e);
        } else if !plan::idempotent(&session.req_header().method)
            || session.retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.upstream_head(session, upstream, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(w) = &ctx.body_wait {
            w.progress();
            if end_of_stream {
                w.finish();
            }
        }
        if ctx.token_body.is_none() {
            return Ok(());
        }
        // The client's body was read in `request_filter`; what goes upstream is the rebuilt one.
        *body = if end_of_stream {
            ctx.token_body.take()
        } else {
            Some(bytes::Bytes::new())
        };
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            self.learn_service(upstream_response);
        }
        self.rewrite_response(session, upstream_response, ctx);
        let registry = &ctx.generation.config.registry;
        crate::identity::public_service(upstream_response, &registry.public_host);
        if registry.hide_server_headers {
            crate::identity::hide_server(upstream_response);
        }
        self.unmapped_urls(upstream_response, ctx)?;
        self.sign_blob_redirect(upstream_response, ctx);
        self.begin_blob_fill(upstream_response, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // A fill whose disk writer is behind holds the client back a little (blob_cache::pace).
        self.blob_fill_chunk(body, end_of_stream, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, reason, message) = respond::failure(
            e.etype(),
            *e.esource() == ErrorSource::Upstream,
            *e.esource() == ErrorSource::Downstream,
        );
        ctx.answered = Some(Answered::Edge(reason));
        if status > 0 && session.response_written().is_none() {
            let code = if status >= 500 {
                "UNAVAILABLE"
            } else {
                "UNSUPPORTED"
            };
            let mut r = EdgeResponse::error(status, code, reason, message);
            // After a failed upstream exchange the request body may be half read: close.
            r.close = true;
            let _ = self.answer(session, ctx, &r).await;
        } else if status == 0 {
            // Nothing to write: counted all the same, so that clients going away show.
            self.shared.metrics.edge_response(reason);
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.record(session, e, ctx);
    }
}
