//! What the service keeps: [`Shared`] for the life of the process, [`Edge`] per listener, and
//! [`Ctx`] per request (written by the phases, read once more in `logging`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pingora::http::RequestHeader;

use registry_edge_config::Listener;
use registry_edge_gate::{Operation, TokenRequest};

use crate::access_log::AccessLog;
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::outcome::{Answered, PolicyReason};
use crate::route::{Misroute, Route};
use crate::upstream::PoolId;

/// State shared by every listener's service and the admin app, for the life of the process.
/// What a configuration reload changes is in the current [`Generation`].
pub struct Shared {
    pub in_force: arc_swap::ArcSwap<Generation>,
    /// The file a reload reads (the one the process started with).
    pub config_path: Option<std::path::PathBuf>,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    pub draining: AtomicBool,
    /// Proxy listeners started but not yet accepting: binding an address in use is retried
    /// (listen::BIND_TRIES, a second apart), and until every listener accepts, the process is not
    /// ready (`/readyz` 503) however healthy the rest is.
    pub listeners_waiting: AtomicUsize,
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
    /// Why the process is not ready (`/readyz` answers it with 503), or `None` when it is.
    pub fn unready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if self.listeners_waiting.load(Ordering::Acquire) > 0 {
            Some("listeners not accepting yet")
        } else if !self.in_force.load().upstreams.resolved() {
            Some("upstreams not resolved")
        } else {
            None
        }
    }

    pub fn ready(&self) -> bool {
        self.unready().is_none()
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
    /// Connections of fills' own exchanges with data endpoints (service::fill), pooled by
    /// peer like pingora's.
    pub fill_upstream: pingora::connectors::TransportConnector,
}

pub struct Ctx {
    /// The configuration this request runs under, from its start to its end.
    pub(super) generation: Arc<Generation>,
    pub(super) start: Instant,
    pub(super) route: Option<Route>,
    pub(super) strip_prefix: usize,
    pub(super) misroute: Option<Misroute>,
    /// A login-side request as the gate parsed it.
    pub(super) op: Option<Operation>,
    /// Why the gate refused to parse it.
    pub(super) gate: Option<registry_edge_gate::Reject>,
    /// A token request's parameters (its query, or its form body), filtered, to send upstream.
    pub(super) token: Option<TokenRequest>,
    pub(super) client_ip: Option<IpAddr>,
    /// The socket peer, when it differs from the client (a trusted proxy).
    pub(super) peer_ip: Option<IpAddr>,
    pub(super) country: Option<[u8; 2]>,
    pub(super) continent: Option<[u8; 2]>,
    /// The policy's verdict: `None` passed; `Some(reason)` refused (or would be, in detect mode).
    pub(super) refused: Option<PolicyReason>,
    pub(super) token_path: bool,
    /// Sent upstream as X-Request-Id and written in the access log.
    pub(super) request_id: String,
    /// When the first upstream attempt started.
    pub(super) upstream_start: Option<Instant>,
    /// A token POST's form body, rebuilt from its filtered parameters, sent in place of the
    /// client's (which `request_filter` has read).
    pub(super) token_body: Option<bytes::Bytes>,
    /// An HTTP/2 request body in progress, under the listener's idle deadline (h2watch.rs).
    pub(super) body_wait: Option<Arc<crate::h2watch::BodyWait>>,
    pub(super) host: String,
    pub(super) attempt: usize,
    /// The (pool, peer) pairs this request may use, in order.
    pub(super) candidates: Vec<(PoolId, std::net::SocketAddr)>,
    /// The regional endpoint the client's location prefers.
    pub(super) preferred: Option<usize>,
    /// The pool of the attempt in progress (or the last one).
    pub(super) pool: Option<PoolId>,
    /// Why the edge answered itself, when it did.
    pub(super) answered: Option<Answered>,
    /// The digest a data-host request's valid cache token names (blob_cache::token).
    pub(super) blob: Option<crate::blob_cache::Digest>,
    /// The right to fill the token's digest, until the upstream answers.
    pub(super) claim: Option<crate::blob_cache::Claim>,
    /// The fill this request's response body is.
    pub(super) fill: Option<crate::blob_cache::Fill>,
    /// How a request with a cache token was served.
    pub(super) cache_use: Option<crate::blob_cache::CacheUse>,
    pub(super) rules: Vec<usize>,
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
            blob: None,
            claim: None,
            fill: None,
            cache_use: None,
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
