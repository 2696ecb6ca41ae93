//! The Pingora `ProxyHttp` implementation. Each phase stays thin and calls a pure function:
//!
//! ```text
//! early_request_filter    downstream timeouts from the listener; route::Router::route (Host, path)
//! request_filter          redirect listener (308), header size (431), misroutes (421/404/400),
//!                         an upstream without peers (503): EdgeResponse::write, connection kept
//! upstream_peer           Upstreams → Pool::peer (round-robin; next peer on each retry)
//! fail_to_connect         retry GET/HEAD on the next peer, bounded
//! upstream_request_filter headers::upstream_request: Host, URI, X-Forwarded-*, no Authorization to data
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
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use registry_edge_config::{Config, Listener};
use registry_edge_rewrite::{Engine, HeaderStore, RequestContext};

use crate::access_log::{AccessEvent, AccessLog};
use crate::headers;
use crate::metrics::{method_index, route_index, Metrics};
use crate::policy::{Policy, Refusal};
use crate::respond::EdgeResponse;
use crate::route::{host_port, normalise_host, Misroute, Route, Router};
use crate::upstream::{Pool, Upstreams};

/// At most this many attempts (first try included) for an idempotent request whose connection
/// failed before anything was sent.
const MAX_ATTEMPTS: usize = 3;

/// State shared by every listener's service and the admin app.
pub struct Shared {
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Upstreams,
    pub metrics: Metrics,
    pub engine: Arc<Engine>,
    pub access_log: AccessLog,
    pub draining: AtomicBool,
    pub policy: Policy,
    pub trusted_proxies: registry_edge_geo::CidrSet,
    pub geo: Option<registry_edge_geo::ReloadingDb>,
    /// The registry's `service=` as last seen in its challenges, for the challenges the edge
    /// writes itself.
    pub service_name: arc_swap::ArcSwapOption<String>,
}

impl Shared {
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.upstreams.resolved()
    }

    fn pool(&self, route: Route) -> &Pool {
        match route {
            Route::Login => &self.upstreams.login,
            Route::Token => self
                .upstreams
                .token
                .as_ref()
                .unwrap_or(&self.upstreams.login),
            Route::Data(i) => self.upstreams.data.get(i).unwrap_or(&self.upstreams.login),
        }
    }
}

/// One listener's service.
pub struct Edge {
    pub shared: Arc<Shared>,
    pub listener: Listener,
}

#[derive(Default)]
pub struct Ctx {
    start: Option<Instant>,
    route: Option<Route>,
    strip_prefix: usize,
    misroute: Option<Misroute>,
    client_ip: Option<IpAddr>,
    /// The socket peer, when it differs from the client (a trusted proxy).
    peer_ip: Option<IpAddr>,
    country: Option<[u8; 2]>,
    continent: Option<[u8; 2]>,
    /// The policy's verdict: `None` passed; `Some(reason)` refused (or would be, in detect mode).
    decision: Option<&'static str>,
    token_path: bool,
    /// A token POST whose form body is being collected to drop hidden repositories' scopes.
    token_body: Option<Vec<u8>>,
    host: String,
    attempt: usize,
    peer_start: Option<usize>,
    upstream: Option<&'static str>,
    edge_reason: Option<&'static str>,
    rules: Vec<usize>,
}

/// pingora's response header, rewritten through its own methods so that its case map stays true.
struct ResponseHeaders<'a>(&'a mut ResponseHeader);

impl HeaderStore for ResponseHeaders<'_> {
    fn headers(&self) -> &http::HeaderMap {
        &self.0.headers
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
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
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
        let client_ip = ctx.client_ip.map(|i| i.to_string()).unwrap_or_default();
        let req = session.req_header();
        let uri = req.uri.to_string();
        let origin = public_origin(self.scheme(), &ctx.host);
        let rctx = RequestContext {
            client_ip: &client_ip,
            host: &ctx.host,
            request_uri: &uri,
            scheme: self.scheme(),
            public_port: host_port(&ctx.host),
            public_origin: &origin,
            request_headers: &req.headers,
        };
        let status = response.status.as_u16();
        let applied =
            self.shared
                .engine
                .apply_response(status, &mut ResponseHeaders(response), &rctx);
        ctx.rules.extend(applied.iter());
    }

    fn learn_service(&self, response: &ResponseHeader) {
        let Some(v) = response
            .headers
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let Some(rest) = v.split("service=\"").nth(1) else {
            return;
        };
        let Some((service, _)) = rest.split_once('"') else {
            return;
        };
        let known = self.shared.service_name.load();
        if known.as_deref().map(String::as_str) != Some(service) {
            self.shared
                .service_name
                .store(Some(Arc::new(service.to_owned())));
        }
    }

    /// Runs the access policy for a routed request.
    fn policy(&self, session: &Session, ctx: &mut Ctx) -> Option<Refusal> {
        let client = ctx.client_ip?;
        let req = session.req_header();
        let path = req.uri.path();
        ctx.token_path = ctx.route == Some(Route::Token)
            || (ctx.route == Some(Route::Login)
                && self
                    .shared
                    .config
                    .registry
                    .token_paths
                    .iter()
                    .any(|t| t == path));
        let content_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        self.shared.policy.decide(&crate::policy::Request {
            client,
            country: ctx.country,
            method: &req.method,
            path,
            query: req.uri.query(),
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
            let token_path = self
                .shared
                .config
                .registry
                .token_paths
                .first()
                .map_or("/oauth2/token", String::as_str);
            let service = self
                .shared
                .service_name
                .load_full()
                .map(|s| s.as_ref().clone())
                .unwrap_or_else(|| self.shared.upstreams.login.host_header.clone());
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
        self.shared
            .metrics
            .refused_by_edge
            .with_label_values(&[r.reason])
            .inc();
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
        let route = ctx.route?;
        if !self.shared.pool(route).has_peers() {
            return Some(EdgeResponse::error(
                503,
                "UNAVAILABLE",
                "no_upstream_peer",
                "the registry is not reachable from this edge yet; retry later",
            ));
        }
        None
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Some(Instant::now()),
            ..Ctx::default()
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
            let client = registry_edge_geo::client_address(peer, xff, &self.shared.trusted_proxies);
            ctx.client_ip = Some(client.ip);
            ctx.peer_ip = Some(peer);
            if let Some(geo) = &self.shared.geo {
                let loc = geo.current().lookup(client.ip);
                ctx.country = loc.country;
                ctx.continent = loc.continent;
            }
        }
        ctx.host = request_host(req).unwrap_or_default().to_owned();
        match self.shared.router.route(request_host(req), req.uri.path()) {
            Ok(r) => {
                ctx.route = Some(r.route);
                ctx.strip_prefix = r.strip_prefix;
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
        let Some(refusal) = self.policy(session, ctx) else {
            return Ok(false);
        };
        ctx.decision = Some(refusal.reason);
        self.shared
            .metrics
            .policy_decisions
            .with_label_values(&[
                refusal.reason,
                if self.shared.policy.detect_only() {
                    "detect"
                } else {
                    "enforce"
                },
            ])
            .inc();
        if self.shared.policy.detect_only() {
            return Ok(false);
        }
        let r = self.edge_refusal(ctx, refusal);
        self.answer(session, ctx, &r).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .ok_or_else(|| Error::explain(HTTPStatus(421), "request was not routed"))?;
        let pool = self.shared.pool(route);
        ctx.upstream = Some(match route {
            Route::Login => "login",
            Route::Token => "token",
            Route::Data(_) => "data",
        });
        pool.peer(&mut ctx.peer_start, ctx.attempt).ok_or_else(|| {
            Error::explain(
                HTTPStatus(503),
                format!("upstream {} has no peer", pool.name),
            )
        })
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = ctx.route {
            let pool = self.shared.pool(route);
            pool.metrics.connect_errors.inc();
            let method = &session.req_header().method;
            let idempotent = *method == http::Method::GET || *method == http::Method::HEAD;
            let peers = pool.peer_addrs().len();
            if idempotent && ctx.attempt + 1 < MAX_ATTEMPTS.min(peers.max(1) + 1) {
                ctx.attempt += 1;
                pool.metrics.retries.inc();
                e.set_retry(true);
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
        let Some(route) = ctx.route else {
            return Ok(());
        };
        let pool = self.shared.pool(route);
        let trusted = &self.shared.config.clients.trusted_proxies;
        let peer_trusted = ctx
            .client_ip
            .is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)));
        headers::upstream_request(
            upstream,
            &headers::Forwarding {
                host_header: &pool.host_header,
                strip_prefix: ctx.strip_prefix,
                client_ip: ctx.client_ip,
                peer_trusted,
                public_host: &ctx.host,
                public_scheme: self.scheme(),
                strip_authorization: matches!(route, Route::Data(_)),
            },
        )?;
        if ctx.token_path
            && upstream.method == http::Method::POST
            && self.shared.policy.filters_repositories()
        {
            // The form body is collected (it is small: read-only caps it) and sent again without
            // the hidden scopes, so its length is not known yet.
            upstream.remove_header(&http::header::CONTENT_LENGTH);
            upstream.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            ctx.token_body = Some(Vec::new());
        }
        if ctx.token_path {
            if let Some(q) = upstream.uri.query() {
                if let Some(filtered) = self.shared.policy.filter_token_query(q) {
                    let pq = if filtered.is_empty() {
                        upstream.uri.path().to_owned()
                    } else {
                        format!("{}?{filtered}", upstream.uri.path())
                    };
                    let uri: http::Uri = pq
                        .parse()
                        .or_err(InvalidHTTPHeader, "filtered token request target")?;
                    upstream.set_uri(uri);
                }
            }
        }
        let client_ip = ctx.client_ip.map(|i| i.to_string()).unwrap_or_default();
        let uri = session.req_header().uri.to_string();
        let request_headers = session.req_header().headers.clone();
        let origin = public_origin(self.scheme(), &ctx.host);
        let rctx = RequestContext {
            client_ip: &client_ip,
            host: &ctx.host,
            request_uri: &uri,
            scheme: self.scheme(),
            public_port: host_port(&ctx.host),
            public_origin: &origin,
            request_headers: &request_headers,
        };
        let applied = self
            .shared
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
        let Some(collected) = ctx.token_body.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            collected.extend_from_slice(&chunk);
        }
        if collected.len() as u64 > crate::policy::TOKEN_BODY_LIMIT {
            return Err(Error::explain(
                HTTPStatus(413),
                "token request body too large",
            ));
        }
        if end_of_stream {
            let text = String::from_utf8_lossy(collected);
            let filtered = self
                .shared
                .policy
                .filter_token_query(&text)
                .unwrap_or_else(|| text.into_owned());
            *body = Some(bytes::Bytes::from(filtered));
            ctx.token_body = None;
        }
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
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = *e.esource() == ErrorSource::Upstream;
        let (status, reason, message) = match e.etype() {
            HTTPStatus(c) => (*c, "status", "the request could not be served"),
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
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let req = session.req_header();
        self.shared.metrics.request(
            route_index(ctx.route),
            method_index(&req.method),
            status,
            elapsed,
        );
        self.shared
            .metrics
            .bytes_sent
            .inc_by(session.body_bytes_sent() as u64);
        for &i in &ctx.rules {
            if let Some(c) = self.shared.metrics.rewrites.get(i) {
                c.inc();
            }
        }
        self.shared.access_log.write(AccessEvent {
            client_ip: ctx.client_ip,
            country: ctx.country,
            decision: ctx.decision,
            method: req.method.as_str(),
            host: &ctx.host,
            path: req.uri.path(),
            status,
            bytes_sent: session.body_bytes_sent(),
            duration_s: elapsed,
            route: ctx.route.map(Route::label),
            upstream: ctx.upstream,
            edge: ctx.edge_reason,
            rules: ctx
                .rules
                .iter()
                .map(|&i| self.shared.engine.rule_name(i))
                .collect(),
            error: e.map(|e| e.etype().as_str()),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        });
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
