//! Prometheus metrics. The registry is created at start and passed in (never the process-global
//! one); every handle is resolved once here, so the request path only increments.
//!
//! Naming: `registry_edge_<area>_<name>_<unit>`, counters end in `_total`. Labels are bounded:
//! route, method (7 values), status class, upstream name (from the configuration), rule name.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::route::Route;

pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OTHER"];
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Routes as labels; `none` is a request that was not routed (421, 400).
pub const ROUTES: [&str; 4] = ["login", "token", "data", "none"];

pub fn route_index(route: Option<Route>) -> usize {
    match route {
        Some(Route::Login) => 0,
        Some(Route::Token) => 1,
        Some(Route::Data(_)) => 2,
        None => 3,
    }
}

pub fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        _ => 6,
    }
}

pub fn status_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Per-upstream handles, indexed like [`crate::upstream::Upstreams`].
pub struct UpstreamMetrics {
    /// Requests this upstream served (the last attempt's).
    pub requests: IntCounter,
    /// Requests that preferred this (regional) upstream but were served by another.
    pub failovers: IntCounter,
    pub healthy_peers: IntGauge,
    pub connect_errors: IntCounter,
    pub retries: IntCounter,
    pub peers: IntGauge,
    pub resolve_failures: IntCounter,
}

pub struct Metrics {
    pub registry: Registry,
    /// `[route][method][status class]`.
    requests: Vec<IntCounter>,
    durations: Vec<Histogram>,
    pub bytes_sent: IntCounter,
    pub rewrites: Vec<IntCounter>,
    pub refused_by_edge: IntCounterVec,
    /// Policy refusals by reason and mode (`enforce`, or `detect` when only logged).
    pub policy_decisions: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_failovers: IntCounterVec,
    upstream_healthy_peers: IntGaugeVec,
    pub peer_healthy: IntGaugeVec,
    pub health_transitions: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_peers: IntGaugeVec,
    upstream_resolve_failures: IntCounterVec,
    pub ready: IntGauge,
    pub geo_reloads: IntCounterVec,
    pub geo_build_epoch: IntGauge,
}

impl Metrics {
    /// `rule_names`: the rewrite engine's rules, user then derived.
    pub fn new(rule_names: &[String]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "registry_edge_http_requests_total",
                "Requests answered, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )?;
        let mut requests = Vec::new();
        for r in ROUTES {
            for m in METHODS {
                for s in STATUS_CLASSES {
                    requests.push(requests_vec.get_metric_with_label_values(&[r, m, s])?);
                }
            }
        }
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "registry_edge_http_request_duration_seconds",
                "Time from request start to the end of the response, by route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                300.0,
            ]),
            &["route"],
        )?;
        let durations = ROUTES
            .iter()
            .map(|r| duration_vec.get_metric_with_label_values(&[r]))
            .collect::<Result<_, _>>()?;
        let bytes_sent = IntCounter::new(
            "registry_edge_http_response_body_bytes_total",
            "Response body bytes sent to clients.",
        )?;
        let rewrites_vec = IntCounterVec::new(
            Opts::new(
                "registry_edge_rewrites_applied_total",
                "Responses (or requests) a rewrite rule changed, by rule.",
            ),
            &["rule"],
        )?;
        let rewrites = rule_names
            .iter()
            .map(|n| rewrites_vec.get_metric_with_label_values(&[n]))
            .collect::<Result<_, _>>()?;
        let refused_by_edge = IntCounterVec::new(
            Opts::new(
                "registry_edge_http_edge_responses_total",
                "Responses the edge wrote itself instead of proxying, by reason.",
            ),
            &["reason"],
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "registry_edge_access_refusals_total",
                "Requests the access policy refused (mode=detect: would have refused), by reason.",
            ),
            &["reason", "mode"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_requests_total",
                "Requests served by an upstream (the attempt that answered).",
            ),
            &["upstream"],
        )?;
        let upstream_failovers = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_failovers_total",
                "Requests whose preferred regional upstream could not serve them (served by another region or the login server).",
            ),
            &["upstream"],
        )?;
        let upstream_healthy_peers = IntGaugeVec::new(
            Opts::new(
                "registry_edge_upstream_healthy_peers",
                "Peers of an upstream currently healthy by the probes.",
            ),
            &["upstream"],
        )?;
        let peer_healthy = IntGaugeVec::new(
            Opts::new(
                "registry_edge_upstream_peer_healthy",
                "1 when a peer of an upstream is healthy by the probes.",
            ),
            &["upstream", "region", "peer"],
        )?;
        let health_transitions = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_health_transitions_total",
                "Peers marked down or up by the probes.",
            ),
            &["upstream", "to"],
        )?;
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_connect_errors_total",
                "Failed connections to an upstream peer.",
            ),
            &["upstream"],
        )?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_retries_total",
                "Requests retried on another connection or peer.",
            ),
            &["upstream"],
        )?;
        let upstream_peers = IntGaugeVec::new(
            Opts::new(
                "registry_edge_upstream_peers",
                "Peers currently known for an upstream (resolved or configured).",
            ),
            &["upstream"],
        )?;
        let upstream_resolve_failures = IntCounterVec::new(
            Opts::new(
                "registry_edge_upstream_resolve_failures_total",
                "Failed name resolutions of an upstream (the last good set is kept).",
            ),
            &["upstream"],
        )?;
        let ready = IntGauge::new(
            "registry_edge_ready",
            "1 when the edge takes traffic (upstreams resolved, not draining).",
        )?;
        registry.register(Box::new(requests_vec))?;
        registry.register(Box::new(duration_vec))?;
        registry.register(Box::new(bytes_sent.clone()))?;
        registry.register(Box::new(rewrites_vec))?;
        registry.register(Box::new(refused_by_edge.clone()))?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_failovers.clone()))?;
        registry.register(Box::new(upstream_healthy_peers.clone()))?;
        registry.register(Box::new(peer_healthy.clone()))?;
        registry.register(Box::new(health_transitions.clone()))?;
        registry.register(Box::new(upstream_connect_errors.clone()))?;
        registry.register(Box::new(upstream_retries.clone()))?;
        registry.register(Box::new(upstream_peers.clone()))?;
        registry.register(Box::new(upstream_resolve_failures.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        let geo_reloads = IntCounterVec::new(
            Opts::new(
                "registry_edge_geoip_reloads_total",
                "GeoIP database replacements, by result (ok, refused).",
            ),
            &["result"],
        )?;
        let geo_build_epoch = IntGauge::new(
            "registry_edge_geoip_build_timestamp_seconds",
            "Build time (Unix seconds) of the GeoIP database in use.",
        )?;
        registry.register(Box::new(geo_reloads.clone()))?;
        registry.register(Box::new(geo_build_epoch.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            durations,
            bytes_sent,
            rewrites,
            refused_by_edge,
            policy_decisions,
            upstream_requests,
            upstream_failovers,
            upstream_healthy_peers,
            peer_healthy,
            health_transitions,
            upstream_connect_errors,
            upstream_retries,
            upstream_peers,
            upstream_resolve_failures,
            ready,
            geo_reloads,
            geo_build_epoch,
        })
    }

    pub fn upstream(&self, name: &str) -> Result<UpstreamMetrics, prometheus::Error> {
        Ok(UpstreamMetrics {
            requests: self
                .upstream_requests
                .get_metric_with_label_values(&[name])?,
            failovers: self
                .upstream_failovers
                .get_metric_with_label_values(&[name])?,
            healthy_peers: self
                .upstream_healthy_peers
                .get_metric_with_label_values(&[name])?,
            connect_errors: self
                .upstream_connect_errors
                .get_metric_with_label_values(&[name])?,
            retries: self
                .upstream_retries
                .get_metric_with_label_values(&[name])?,
            peers: self.upstream_peers.get_metric_with_label_values(&[name])?,
            resolve_failures: self
                .upstream_resolve_failures
                .get_metric_with_label_values(&[name])?,
        })
    }

    pub fn request(&self, route: usize, method: usize, status: u16, seconds: f64) {
        let i = (route * METHODS.len() + method) * STATUS_CLASSES.len() + status_index(status);
        if let Some(c) = self.requests.get(i) {
            c.inc();
        }
        if let Some(h) = self.durations.get(route) {
            h.observe(seconds);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for I/O reasons; a failure would mean a malformed
        // metric family, which registration already refused.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
