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

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use registry_edge_config::Listener;
use registry_edge_gate::{Kind, Operation, TokenRequest};
use registry_edge_rewrite::{HeaderStore, RequestContext, Var};

use crate::access_log::{AccessEvent, AccessLog};
use crate::generation::Generation;
use crate::headers;
use crate::metrics::{method_index, route_index, Metrics};
use crate::policy::Refusal;
use crate::respond::EdgeResponse;
use crate::route::{host_port, normalise_host, Misroute, Route};
use crate::upstream::PoolId;

/// At most this many attempts (first try included) for an idempotent request whose connection
/// failed before anything was sent.
const MAX_ATTEMPTS: usize = 3;

/// State shared by every listener's service and the admin app, for the life of the process.
/// What a configuration reload changes is in the current [`Generation`].
pub struct Shared {
    pub current: arc_swap::ArcSwap<Generation>,
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
    /// When an unmapped URL was last logged, per `identity::URL_HEADERS` (ms, health::now_ms).
    pub unmapped_warned: [std::sync::atomic::AtomicU64; 3],
    /// HTTP/2 connections and their request bodies in progress (the body deadline).
    pub h2: Arc<crate::h2watch::Registry>,
}

impl Shared {
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.current.load().upstreams.resolved()
    }

    /// The configuration in force now.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }
}

/// One listener's service.
pub struct Edge {
    pub shared: Arc<Shared>,
    pub listener: Listener,
}

pub struct Ctx {
    /// The configuration this request runs under, from its start to its end.
    gen: Arc<Generation>,
    start: Option<Instant>,
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
    decision: Option<&'static str>,
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
    /// The pool of the attempt in progress.
    current: Option<PoolId>,
    edge_reason: Option<&'static str>,
    rules: Vec<usize>,
}

/// pingora's response header, rewritten through its own methods so that its case map stays true.
struct ResponseHeaders<'a>(&'a mut ResponseHeader);

impl HeaderStore for ResponseHeaders<'_> {
    fn headers(&self) -> &http::HeaderMap {
        &self.0.headers
    }
    fn replace_one(&mut self, name: &http::HeaderName, value: http::HeaderValue) {
        // One call through pingora's own method keeps its case map in step.
        let _ = self.0.insert_header(name.clone(), value);
    }
    fn replace_all(&mut self, name: &http::HeaderName, values: Vec<http::HeaderValue>) {
        self.0.remove_header(name);
        for v in values {
            let _ = self.0.append_header(name.clone(), v);
        }
    }
    fn remove_all(&mut self, name: &http::HeaderName) {
        self.0.remove_header(name);
    }
}

struct RequestHeaders<'a>(&'a mut RequestHeader);

impl HeaderStore for RequestHeaders<'_> {
    fn headers(&self) -> &http::HeaderMap {
        &self.0.headers
    }
    fn replace_one(&mut self, name: &http::HeaderName, value: http::HeaderValue) {
        // One call through pingora's own method keeps its case map in step.
        let _ = self.0.insert_header(name.clone(), value);
    }
    fn replace_all(&mut self, name: &http::HeaderName, values: Vec<http::HeaderValue>) {
        self.0.remove_header(name);
        for v in values {
            let _ = self.0.append_header(name.clone(), v);
        }
    }
    fn remove_all(&mut self, name: &http::HeaderName) {
        self.0.remove_header(name);
    }
}

/// The Host a request names: the Host header, or the HTTP/2 `:authority`.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Bytes of a request head as a client sent it (request line and header lines).
fn header_bytes(req: &RequestHeader) -> usize {
    let uri = &req.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

impl Edge {
    fn scheme(&self) -> &'static str {
        self.listener.public_scheme.as_str()
    }

    /// The response header policy, for proxied responses and the edge's own alike: derived and
    /// user rules of the rewrite engine.
    fn rewrite_response(&self, session: &Session, response: &mut ResponseHeader, ctx: &mut Ctx) {
        let vars = RewriteVars::new(session, ctx, self.scheme());
        let rctx = vars.context(ctx, self.scheme(), &session.req_header().headers);
        let status = response.status.as_u16();
        let applied = ctx
            .gen
            .engine
            .apply_response(status, &mut ResponseHeaders(response), &rctx);
        ctx.rules.extend(applied.iter());
    }

    fn learn_service(&self, response: &ResponseHeader) {
        let Some(service) = crate::identity::service_of(response) else {
            return;
        };
        // It goes upstream in token requests: a host name, an address, a port.
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_');
        if service.is_empty() || service.len() > 255 || !service.bytes().all(plain) {
            return;
        }
        let known = self.shared.service_name.load();
        if known.as_deref().map(String::as_str) != Some(service) {
            self.shared
                .service_name
                .store(Some(Arc::new(service.to_owned())));
        }
    }

    /// The registry's token audience: as its challenges name it, or its login server's authority
    /// before any challenge was seen (what ACR uses).
    fn registry_service(&self, ctx: &Ctx) -> String {
        self.shared
            .service_name
            .load_full()
            .map(|s| s.as_ref().clone())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(ctx.gen.upstreams.login.host_header.as_bytes()).into_owned()
            })
    }

    /// Absolute URLs that the rewrites left on an upstream's authority: counted, logged at most
    /// once a minute per header, and for a redirect refused (`registry.unmapped_redirects`).
    fn unmapped_urls(&self, response: &ResponseHeader, ctx: &Ctx) -> Result<()> {
        let registry = &ctx.gen.config.registry;
        let status = response.status.as_u16();
        let mut publics = Vec::with_capacity(1 + registry.data_endpoints.len());
        publics.push(registry.public_host.clone());
        publics.extend(
            registry
                .data_endpoints
                .iter()
                .map(|d| d.public_host.clone()),
        );
        let found = crate::identity::unmapped(response, status, &publics);
        let mut refuse = false;
        for (i, host) in found {
            self.shared.metrics.unmapped_urls[i].inc();
            let now = crate::health::now_ms();
            let last = &self.shared.unmapped_warned[i];
            let before = last.load(Ordering::Relaxed);
            // 0: never warned (the clock starts with the process).
            if (before == 0 || now.saturating_sub(before) >= 60_000)
                && last
                    .compare_exchange(before, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                log::warn!(
                    "the registry sent a {} URL on {host}, which no rewrite maps to a public host: \
                     clients would bypass the edge (is a data endpoint written as the registry \
                     writes it? see docs/operations.md); counted in \
                     registry_edge_rewrite_unmapped_urls_total, next warning in a minute at most",
                    crate::identity::URL_HEADERS[i]
                );
            }
            refuse |= i == 0
                && (300..400).contains(&status)
                && registry.unmapped_redirects == registry_edge_config::UnmappedRedirects::Refuse;
        }
        if refuse {
            return Err(Error::explain(
                Custom("unmapped_redirect"),
                "the registry redirected to a location this edge does not publish",
            ));
        }
        Ok(())
    }

    /// Plans the upstream; with no usable peer, answers 503 here (an error from `upstream_peer`
    /// would close the connection).
    async fn plan_or_refuse(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.candidates = self.plan(ctx);
        if !ctx.candidates.is_empty() {
            return Ok(false);
        }
        let message = match ctx.route {
            Some(Route::Data(i)) => format!(
                "region {} cannot serve this blob right now; retry the download",
                ctx.gen
                    .upstreams
                    .get(PoolId::Data(i))
                    .region
                    .as_deref()
                    .unwrap_or("?")
            ),
            _ => "the registry is not reachable from this edge right now; retry later".to_string(),
        };
        let r = EdgeResponse::error(503, "UNAVAILABLE", "no_upstream_peer", message);
        self.answer(session, ctx, &r).await?;
        Ok(true)
    }

    /// Feeds the security event tracker with what this request showed; writes and counts events.
    fn observe_security(&self, session: &Session, ctx: &Ctx, status: u16) {
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

    /// GET and HEAD may go to the next candidate, within the attempt bound.
    fn may_retry(&self, session: &Session, ctx: &Ctx) -> bool {
        let method = &session.req_header().method;
        let idempotent = *method == http::Method::GET || *method == http::Method::HEAD;
        idempotent && ctx.attempt + 1 < ctx.candidates.len().min(MAX_ATTEMPTS)
    }

    /// Runs the access policy for a routed request.
    fn policy(&self, session: &Session, ctx: &mut Ctx) -> Option<Refusal> {
        let client = ctx.client_ip?;
        if ctx.gen.security.blocked(client) && !ctx.gen.policy.allowed(client) {
            return Some(Refusal {
                status: 403,
                code: "DENIED",
                reason: "auto_block",
                message: "this address is temporarily refused after repeated suspicious requests"
                    .into(),
                retry_after: None,
                allow: None,
                challenge_scope: None,
            });
        }
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
        ctx.gen.policy.decide(&crate::policy::Request {
            client,
            country: ctx.country,
            method: &req.method,
            operation: ctx.op.as_ref(),
            token_path: ctx.token_path,
            authorized: req.headers.contains_key(http::header::AUTHORIZATION),
            content_length,
        })
    }

    /// The edge's answer for a policy refusal. A hidden repository without credentials gets the
    /// registry's own kind of challenge.
    fn edge_refusal(&self, ctx: &Ctx, refusal: Refusal) -> EdgeResponse {
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
    async fn answer(&self, session: &mut Session, ctx: &mut Ctx, r: &EdgeResponse) -> Result<()> {
        ctx.edge_reason = Some(r.reason);
        self.shared.metrics.edge_response(r.reason);
        let mut header = r.header(session.req_header().uri.path())?;
        self.rewrite_response(session, &mut header, ctx);
        r.write(session, header).await
    }

    /// Decides whether the edge answers the request itself.
    fn refusal(&self, session: &Session, ctx: &Ctx) -> Option<EdgeResponse> {
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
            let is_read = req.method == http::Method::GET || req.method == http::Method::HEAD;
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

    /// A token request's parameters: its query (GET) or its form body (POST, read here within
    /// [`crate::policy::TOKEN_BODY_LIMIT`] however it is framed, under the listener's idle
    /// deadline), decoded, held to the known names, the hidden repositories' scopes dropped,
    /// kept in `ctx` to be sent upstream re-encoded. `Some`: the edge's answer instead.
    async fn token_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<EdgeResponse>> {
        let invalid = |m: &'static str| {
            Some(EdgeResponse::error(
                400,
                "UNSUPPORTED",
                "token_request_invalid",
                m,
            ))
        };
        let req = session.req_header();
        let query = req.uri.query().unwrap_or("");
        let post = req.method == http::Method::POST;
        if post && !query.is_empty() {
            return Ok(invalid(
                "a token POST carries its parameters in the body, not the query",
            ));
        }
        // A GET's parameters are its query; a body would be a second, unread set (some token
        // servers read form bodies on any method).
        let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if !post && has_body {
            let mut r = EdgeResponse::error(
                400,
                "UNSUPPORTED",
                "token_request_invalid",
                "a token GET has no body",
            );
            r.close = true;
            return Ok(Some(r));
        }
        let raw = if post {
            let form = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim())
                .is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"));
            let body = match self.read_token_body(session).await? {
                Ok(b) => b,
                Err(r) => return Ok(Some(r)),
            };
            if !form && !body.is_empty() {
                let r = EdgeResponse::error(
                    415,
                    "UNSUPPORTED",
                    "token_body_type",
                    "a token request body must be application/x-www-form-urlencoded",
                );
                return Ok(Some(r));
            }
            match String::from_utf8(body) {
                Ok(s) => s,
                Err(_) => return Ok(invalid("the token request body is not UTF-8")),
            }
        } else {
            query.to_owned()
        };
        let mut token = match TokenRequest::parse(&raw) {
            Ok(t) => t,
            Err(e) => return Ok(invalid(e.message())),
        };
        // The audience: clients echo the public host the challenges named; the token server
        // validates the registry's own name.
        if let Some(service) = token.get(registry_edge_gate::token::TokenParam::Service) {
            let registry = self.registry_service(ctx);
            if service.eq_ignore_ascii_case(&ctx.gen.config.registry.public_host) {
                token.set(registry_edge_gate::token::TokenParam::Service, registry);
            } else if service != registry {
                return Ok(Some(EdgeResponse::error(
                    400,
                    "UNSUPPORTED",
                    "token_service_unknown",
                    "the token request's service is not this registry",
                )));
            }
        }
        let dropped = ctx.gen.policy.filter_token(&mut token);
        for _ in 0..dropped {
            self.shared
                .metrics
                .refusal("hidden_scope", ctx.gen.policy.detect_only());
        }
        if post {
            ctx.token_body = Some(bytes::Bytes::from(token.serialize()));
        }
        ctx.token = Some(token);
        Ok(None)
    }

    /// The whole request body, or the edge's answer: 413 past the limit, 408 when the client
    /// stops sending for the listener's idle time (both close the connection: the rest of the
    /// body is not read).
    async fn read_token_body(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<Vec<u8>, EdgeResponse>> {
        // What is read here is what pingora sends upstream from (its retry buffer), as one
        // piece at the end of the body, which `request_body_filter` replaces.
        session.enable_retry_buffering();
        let idle = self.listener.timeouts.idle;
        let mut body = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(idle, session.read_request_body()).await {
                Ok(chunk) => chunk?,
                Err(_) => {
                    let mut r = EdgeResponse::error(
                        408,
                        "UNSUPPORTED",
                        "token_body_timeout",
                        "the token request body did not arrive in time",
                    );
                    r.close = true;
                    return Ok(Err(r));
                }
            };
            let Some(chunk) = chunk else {
                return Ok(Ok(body));
            };
            body.extend_from_slice(&chunk);
            if body.len() as u64 > crate::policy::TOKEN_BODY_LIMIT {
                let mut r = EdgeResponse::error(
                    413,
                    "SIZE_INVALID",
                    "token_body_over_limit",
                    "token request body too large",
                );
                r.close = true;
                return Ok(Err(r));
            }
        }
    }

    /// An HTTP/2 request whose body is still to come gets the HTTP/1 rule: no more than the
    /// listener's idle time between its bytes (pingora reads it with no deadline).
    fn watch_h2_body(&self, session: &mut Session, ctx: &mut Ctx) {
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

    /// The (pool, peer) pairs for a routed request: the data endpoint of exactly its region; the
    /// token server; or the login side's regions in order of preference.
    fn plan(&self, ctx: &mut Ctx) -> Vec<(PoolId, std::net::SocketAddr)> {
        let ups = &ctx.gen.upstreams;
        let key = ctx.client_ip.map_or(0, client_key);
        let pools = match ctx.route {
            None => Vec::new(),
            Some(Route::Data(i)) => vec![PoolId::Data(i)],
            Some(Route::Token) => vec![PoolId::Token],
            Some(Route::Login) => {
                let plan = ctx.gen.selector.login_plan(ups, ctx.country, ctx.continent);
                ctx.preferred = plan.preferred;
                plan.pools
            }
        };
        let mut out = Vec::new();
        for id in pools {
            out.extend(ups.get(id).usable_peers(key).into_iter().map(|a| (id, a)));
            if out.len() >= MAX_ATTEMPTS {
                break;
            }
        }
        out
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
        Ctx {
            gen: self.shared.generation(),
            start: Some(Instant::now()),
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
            decision: None,
            token_path: false,
            request_id: request_id(self.shared.id_prefix, n),
            upstream_start: None,
            token_body: None,
            host: String::new(),
            attempt: 0,
            candidates: Vec::new(),
            preferred: None,
            current: None,
            edge_reason: None,
            rules: Vec::new(),
        }
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
            let client = registry_edge_geo::client_address(peer, xff, &ctx.gen.trusted_proxies);
            ctx.client_ip = Some(client.ip);
            ctx.peer_ip = Some(peer);
            if let Some(geo) = &ctx.gen.geo {
                let loc = geo.current().lookup(client.ip);
                ctx.country = loc.country;
                ctx.continent = loc.continent;
            }
        }
        ctx.host = request_host(req).unwrap_or_default().to_owned();
        match ctx.gen.router.route(request_host(req), req.uri.path()) {
            Ok(r) => {
                ctx.route = Some(r.route);
                ctx.strip_prefix = r.strip_prefix;
                if matches!(r.route, Route::Login | Route::Token) {
                    match registry_edge_gate::parse(
                        req.method.as_str(),
                        req.uri.path(),
                        req.uri.query(),
                        &ctx.gen.config.registry.token_paths,
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
        if let Some(r) = self.refusal(session, ctx) {
            self.answer(session, ctx, &r).await?;
            return Ok(true);
        }
        // The address checks, the embargo and the rate limit come first, also for a request the
        // gate refused (an embargoed client learns nothing else, a flood of garbage is limited).
        if let Some(refusal) = self.policy(session, ctx) {
            ctx.decision = Some(refusal.reason);
            self.shared
                .metrics
                .refusal(refusal.reason, ctx.gen.policy.detect_only());
            if !ctx.gen.policy.detect_only() {
                let r = self.edge_refusal(ctx, refusal);
                self.answer(session, ctx, &r).await?;
                return Ok(true);
            }
        }
        // What does not parse is never forwarded, in detect mode too: the grammar is not a policy
        // decision.
        if let Some(g) = &ctx.gate {
            let mut r = EdgeResponse::error(g.status, g.code, g.reason, g.message);
            r.allow = g.allow;
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
        ctx.current = Some(id);
        ctx.upstream_start.get_or_insert_with(Instant::now);
        Ok(ctx.gen.upstreams.get(id).http_peer(addr))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(id) = ctx.current {
            let pool = ctx.gen.upstreams.get(id);
            pool.metrics.connect_errors.inc();
            if let Some(addr) = peer.address().as_inet() {
                pool.back_off(*addr);
            }
            if self.may_retry(session, ctx) {
                pool.metrics.retries.inc();
                ctx.attempt += 1;
                e.set_retry(true);
            }
        }
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
            if let Some(id) = ctx.current {
                let pool = ctx.gen.upstreams.get(id);
                if let Some(addr) = peer.address().as_inet() {
                    pool.back_off(*addr);
                }
                pool.metrics.retries.inc();
            }
            ctx.attempt += 1;
            e.set_retry(true);
        } else {
            let method = &session.req_header().method;
            let idempotent = *method == http::Method::GET || *method == http::Method::HEAD;
            if !idempotent || session.retry_buffer_truncated() {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(route), Some(id)) = (ctx.route, ctx.current) else {
            return Ok(());
        };
        let pool = ctx.gen.upstreams.get(id);
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
            .is_some_and(|ip| ctx.gen.trusted_proxies.contains(ip));
        headers::upstream_request(
            upstream,
            &headers::Forwarding {
                host_header: &pool.host_value,
                strip_prefix: ctx.strip_prefix,
                client_ip: ctx.peer_ip,
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
            .gen
            .engine
            .apply_request(&mut RequestHeaders(upstream), &rctx);
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
        let registry = &ctx.gen.config.registry;
        crate::identity::public_service(upstream_response, &registry.public_host);
        if registry.hide_server_headers {
            crate::identity::hide_server(upstream_response);
        }
        self.unmapped_urls(upstream_response, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = *e.esource() == ErrorSource::Upstream;
        let (status, reason, message) = match e.etype() {
            HTTPStatus(c) => (*c, "status", "the request could not be served"),
            Custom("unmapped_redirect") => (
                502,
                "unmapped_redirect",
                "the registry redirected to a location this edge does not publish",
            ),
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout if upstream => (
                504,
                "upstream_timeout",
                "the registry did not answer in time",
            ),
            _ if upstream => (502, "upstream_error", "the registry could not be reached"),
            ReadError | WriteError | ConnectionClosed => (0, "client_gone", ""),
            _ if *e.esource() == ErrorSource::Downstream => {
                (400, "bad_request", "malformed request")
            }
            _ => (500, "internal", "internal error"),
        };
        ctx.edge_reason = Some(reason);
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
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
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
}

/// The strings a rewrite context borrows, built once per use, and only those some rule reads
/// (none, unless user rules use `{var_client_ip}`, `{var_request_uri}` or `{var_public_origin}`).
struct RewriteVars {
    client_ip: String,
    uri: String,
    origin: String,
}

impl RewriteVars {
    fn new(session: &Session, ctx: &Ctx, scheme: &str) -> RewriteVars {
        let uses = |v| ctx.gen.engine.uses_var(v);
        RewriteVars {
            client_ip: match ctx.client_ip {
                Some(ip) if uses(Var::ClientIp) => ip.to_string(),
                _ => String::new(),
            },
            uri: if uses(Var::RequestUri) {
                session.req_header().uri.to_string()
            } else {
                String::new()
            },
            origin: if uses(Var::PublicOrigin) {
                public_origin(scheme, &ctx.host)
            } else {
                String::new()
            },
        }
    }

    fn context<'a>(
        &'a self,
        ctx: &'a Ctx,
        scheme: &'a str,
        request_headers: &'a http::HeaderMap,
    ) -> RequestContext<'a> {
        RequestContext {
            client_ip: &self.client_ip,
            host: &ctx.host,
            request_uri: &self.uri,
            scheme,
            public_port: host_port(&ctx.host),
            public_origin: &self.origin,
            request_headers,
        }
    }
}

/// `scheme://public host[:port the client used]`.
pub fn public_origin(scheme: &str, host: &str) -> String {
    let name = normalise_host(host);
    match host_port(host) {
        Some(p) => format!("{scheme}://{name}:{p}"),
        None => format!("{scheme}://{name}"),
    }
}

/// 32 hex digits: the process's random prefix, then the request counter (what
/// `format!("{prefix:016x}{n:016x}")` writes, without `core::fmt`).
fn request_id(prefix: u64, n: u64) -> String {
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
