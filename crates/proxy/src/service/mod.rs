//! The Pingora `ProxyHttp` implementation. Each phase stays thin and calls a pure function:
//!
//! ```text
//! early_request_filter    downstream timeouts from the listener; route::Router::route (Host, path);
//!                         the gate: a login-side request parsed into a typed Operation
//! request_filter          redirect listener (308), header size (431), misroutes (421/404/400),
//!                         the gate's refusals (400/404/405), the access policy on the Operation,
//!                         a token request's parameters parsed, filtered and rebuilt (its form
//!                         body read here, bounded), an upstream without peers (503):
//!                         EdgeResponse::write, connection kept
//! upstream_peer           the request's plan (select::Selector): next (pool, peer) on each retry
//! fail_to_connect         back the peer off; retry GET/HEAD on the next peer/region, bounded
//! error_while_proxy       same for a reset before the first response byte
//! upstream_request_filter the target rebuilt from the Operation (or the token request);
//!                         headers::upstream_request: Host, X-Forwarded-*, no Authorization to data
//! response_filter         rewrite::Engine::apply_response (derived + user rules)
//! fail_to_proxy           502/504 with an OCI body (EdgeResponse)
//! logging                 Metrics::request, access_log::AccessLog::write
//! ```

mod names;
mod observe;
mod plan;
mod token;

pub use names::public_origin;
use names::RewriteVars;
use observe::request_id;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use registry_edge_config::Listener;
use registry_edge_gate::{Kind, Operation, TokenRequest};

use crate::access_log::AccessLog;
use crate::generation::Generation;
use crate::headers;
use crate::metrics::Metrics;
use crate::outcome::{Answered, PolicyReason};
use crate::policy::Refusal;
use crate::respond::{self, EdgeResponse};
use crate::route::{Misroute, Route};
use crate::upstream::PoolId;

/// At most this many attempts (first try included) for an idempotent request whose connection
/// failed before anything was sent.
const MAX_ATTEMPTS: usize = 3;

/// State shared by every listener's service and the admin app, for the life of the process.
/// What a configuration reload changes is in the current [`Generation`].
pub struct Shared {
    pub in_force: arc_swap::ArcSwap<Generation>,
    /// The file a reload reads (the one the process started with).
    pub config_path: Option<std::path::PathBuf>,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    pub draining: AtomicBool,
    /// The registry's `service=` as last seen in its challenges, for the challenges the edge
    /// writes itself.
    pub service_name: arc_swap::ArcSwapOption<String>,
    /// Each TLS listener's certificates, watched for rotation.
    pub certificates: Vec<crate::tls::Watched>,
    /// Per-process random prefix of request ids.
    pub id_prefix: u64,
    pub id_counter: std::sync::atomic::AtomicU64,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// When an unmapped URL was last logged, per `identity::URL_HEADERS` (ms, clock::now_ms).
    pub unmapped_warned: [std::sync::atomic::AtomicU64; 3],
    /// HTTP/2 connections and their request bodies in progress (the body deadline).
    pub h2: Arc<crate::h2watch::Registry>,
}

impl Shared {
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.in_force.load().upstreams.resolved()
    }

    /// The configuration in force now.
    pub fn generation(&self) -> Arc<Generation> {
        self.in_force.load_full()
    }
}

/// One listener's service.
pub struct Edge {
    pub shared: Arc<Shared>,
    pub listener: Listener,
}

pub struct Ctx {
    /// The configuration this request runs under, from its start to its end.
    generation: Arc<Generation>,
    start: Instant,
    route: Option<Route>,
    strip_prefix: usize,
    misroute: Option<Misroute>,
    /// A login-side request as the gate parsed it.
    op: Option<Operation>,
    /// Why the gate refused to parse it.
    gate: Option<registry_edge_gate::Reject>,
    /// A token request's parameters (its query, or its form body), filtered, to send upstream.
    token: Option<TokenRequest>,
    client_ip: Option<IpAddr>,
    /// The socket peer, when it differs from the client (a trusted proxy).
    peer_ip: Option<IpAddr>,
    country: Option<[u8; 2]>,
    continent: Option<[u8; 2]>,
    /// The policy's verdict: `None` passed; `Some(reason)` refused (or would be, in detect mode).
    refused: Option<PolicyReason>,
    token_path: bool,
    /// Sent upstream as X-Request-Id and written in the access log.
    request_id: String,
    /// When the first upstream attempt started.
    upstream_start: Option<Instant>,
    /// A token POST's form body, rebuilt from its filtered parameters, sent in place of the
    /// client's (which `request_filter` has read).
    token_body: Option<bytes::Bytes>,
    /// An HTTP/2 request body in progress, under the listener's idle deadline (h2watch.rs).
    body_wait: Option<Arc<crate::h2watch::BodyWait>>,
    host: String,
    attempt: usize,
    /// The (pool, peer) pairs this request may use, in order.
    candidates: Vec<(PoolId, std::net::SocketAddr)>,
    /// The regional endpoint the client's location prefers.
    preferred: Option<usize>,
    /// The pool of the attempt in progress (or the last one).
    pool: Option<PoolId>,
    /// Why the edge answered itself, when it did.
    answered: Option<Answered>,
    rules: Vec<usize>,
}

impl Ctx {
    /// A request's state at its start, under `generation`.
    pub(crate) fn new(generation: Arc<Generation>, request_id: String) -> Ctx {
        Ctx {
            generation,
            start: Instant::now(),
            route: None,
            strip_prefix: 0,
            misroute: None,
            op: None,
            gate: None,
            token: None,
            body_wait: None,
            client_ip: None,
            peer_ip: None,
            country: None,
            continent: None,
            refused: None,
            token_path: false,
            request_id,
            upstream_start: None,
            token_body: None,
            host: String::new(),
            attempt: 0,
            candidates: Vec::new(),
            preferred: None,
            pool: None,
            answered: None,
            rules: Vec::new(),
        }
    }
}

/// The Host a request names: the Host header, or the HTTP/2 `:authority`.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

impl Edge {
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

/// A stable per-client key, so that one client keeps to one peer (and region) while it is healthy.
fn client_key(ip: IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    h.finish()
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
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical());
        let req = session.req_header();
        if let Some(peer) = peer {
            let xff = req
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes());
            let client =
                registry_edge_geo::client_address(peer, xff, &ctx.generation.trusted_proxies);
            ctx.client_ip = Some(client.ip);
            ctx.peer_ip = Some(peer);
            if let Some(geo) = &ctx.generation.geo {
                let loc = geo.current().lookup(client.ip);
                ctx.country = loc.country;
                ctx.continent = loc.continent;
            }
        }
        ctx.host = request_host(req).unwrap_or_default().to_owned();
        match ctx
            .generation
            .router
            .route(request_host(req), req.uri.path())
        {
            Ok(r) => {
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
            Err(m) => ctx.misroute = Some(m),
        }
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
        let (Some(route), Some(id)) = (ctx.route, ctx.pool) else {
            return Ok(());
        };
        let pool = ctx.generation.upstreams.get(id).or_err(
            InternalError,
            "a planned upstream this configuration does not have",
        )?;
        // Login side: the target the gate judged, re-serialised; never the client's bytes.
        if let Some(op) = &ctx.op {
            let target = match (op.target(), &ctx.token) {
                (Some(t), _) => t,
                (None, token) => {
                    let mut t = session.req_header().uri.path().to_owned();
                    if let Some(q) = token.as_ref().filter(|_| ctx.token_body.is_none()) {
                        if !q.params.is_empty() {
                            t.push('?');
                            t.push_str(&q.serialize());
                        }
                    }
                    t
                }
            };
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
        self.unmapped_urls(upstream_response, ctx)
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
