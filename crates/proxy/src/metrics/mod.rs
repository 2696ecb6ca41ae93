//! Prometheus metrics. The registry is created at start and passed in (never the process-global
//! one); every handle the request path touches is resolved once here, so a request only
//! increments (no label lookups, no string building).
//!
//! Naming: `registry_edge_<area>_<name>_<unit>`, counters end in `_total`. Labels are bounded:
//! route, method (7 values), status class, decision, upstream name (from the configuration), rule
//! name, country (ISO codes and `unknown`), fixed reason lists. docs/metrics.md lists every
//! metric; a test fails when the two disagree.

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use registry_edge_config::CountryCode;

use crate::outcome::{Disposition, EdgeReason, PolicyReason};
use crate::route::Route;
use crate::security::Kind as SecurityKind;

mod cache;
mod upstream;
pub use upstream::{Families as UpstreamFamilies, UpstreamMetrics};

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

/// Registers collectors and remembers their names (for the documentation test).
pub(crate) struct Reg {
    registry: Registry,
    names: Vec<String>,
}

impl Reg {
    pub(crate) fn add<C: Collector + Clone + 'static>(
        &mut self,
        c: C,
    ) -> Result<C, prometheus::Error> {
        for d in c.desc() {
            self.names.push(d.fq_name.clone());
        }
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// What the request counters learn of a finished request.
pub struct Finished<'a> {
    pub route: Option<Route>,
    pub method: &'a http::Method,
    /// The status written (0: none).
    pub status: u16,
    pub disposition: Disposition,
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// For a routed request with a client address: its country, and whether the address and
    /// country checks refused it.
    pub geo: Option<(Option<[u8; 2]>, bool)>,
}

pub struct Metrics {
    pub registry: Registry,
    names: Vec<String>,
    /// `[route][method][status class][disposition]`.
    requests: Vec<IntCounter>,
    durations: Vec<Histogram>,
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    rewrites: IntCounterVec,
    edge_responses: Vec<IntCounter>,
    /// `[reason][enforce, detect]`.
    refusals: Vec<[IntCounter; 2]>,
    /// `[country index]` → (allowed, refused); the last entry is `unknown`.
    geo: Vec<[IntCounter; 2]>,
    geo_index: HashMap<[u8; 2], usize>,
    security: Vec<IntCounter>,
    pub blocks: IntCounter,
    /// Absolute URLs on no public host left in Location, Link or a realm, by header
    /// (identity.rs, in the order of `identity::URL_HEADERS`).
    pub unmapped_urls: Vec<IntCounter>,
    /// HTTP/2 connections ended because a request body stalled (h2watch.rs).
    pub h2_body_timeouts: IntCounter,
    /// Per-upstream families (upstream.rs).
    pub upstreams: upstream::Families,
    /// The blob cache's (cache.rs).
    pub blob_cache: crate::blob_cache::CacheMetrics,
    pub ready: IntGauge,
    pub geo_reloads: IntCounterVec,
    /// `[ok, refused]`.
    pub config_reloads: [IntCounter; 2],
    pub config_generation: IntGauge,
    pub config_restart_pending: IntGauge,
    pub config_loaded_at: IntGauge,
    pub geo_build_epoch: IntGauge,
    pub certificate_expiry: IntGaugeVec,
    pub certificate_reloads: IntCounterVec,
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounterVec,
    pub access_log_dropped: IntCounter,
}

pub(crate) fn counter_vec(
    reg: &mut Reg,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    reg.add(IntCounterVec::new(Opts::new(name, help), labels)?)
}

pub(crate) fn gauge_vec(
    reg: &mut Reg,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    reg.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let mut reg = Reg {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let requests_vec = counter_vec(
            &mut reg,
            "registry_edge_http_requests_total",
            "Requests answered, by route, method, status class and decision.",
            &["route", "method", "status_class", "decision"],
        )?;
        let mut requests = Vec::new();
        for r in ROUTES {
            for m in METHODS {
                for s in STATUS_CLASSES {
                    for d in Disposition::ALL {
                        requests.push(requests_vec.get_metric_with_label_values(&[
                            r,
                            m,
                            s,
                            d.label(),
                        ])?);
                    }
                }
            }
        }
        let duration_vec = reg.add(HistogramVec::new(
            HistogramOpts::new(
                "registry_edge_http_request_duration_seconds",
                "Time from request start to the end of the response, by route.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?)?;
        let durations = ROUTES
            .iter()
            .map(|r| duration_vec.get_metric_with_label_values(&[r]))
            .collect::<Result<_, _>>()?;
        let bytes_sent = reg.add(IntCounter::new(
            "registry_edge_http_response_body_bytes_total",
            "Response body bytes sent to clients.",
        )?)?;
        let bytes_received = reg.add(IntCounter::new(
            "registry_edge_http_request_body_bytes_total",
            "Request body bytes received from clients.",
        )?)?;
        let rewrites_vec = counter_vec(
            &mut reg,
            "registry_edge_rewrites_applied_total",
            "Responses (or requests) a rewrite rule changed, by rule.",
            &["rule"],
        )?;
        let edge_vec = counter_vec(
            &mut reg,
            "registry_edge_http_edge_responses_total",
            "Responses the edge wrote itself instead of proxying, by reason.",
            &["reason"],
        )?;
        let edge_responses = EdgeReason::ALL
            .iter()
            .map(|r| edge_vec.get_metric_with_label_values(&[r.label()]))
            .collect::<Result<_, _>>()?;
        let refusal_vec = counter_vec(
            &mut reg,
            "registry_edge_access_refusals_total",
            "Requests the access policy refused (mode=detect: would have refused), by reason.",
            &["reason", "mode"],
        )?;
        let refusals = PolicyReason::ALL
            .iter()
            .map(|r| {
                Ok([
                    refusal_vec.get_metric_with_label_values(&[r.label(), "enforce"])?,
                    refusal_vec.get_metric_with_label_values(&[r.label(), "detect"])?,
                ])
            })
            .collect::<Result<_, prometheus::Error>>()?;
        let geo_vec = counter_vec(
            &mut reg,
            "registry_edge_geo_requests_total",
            "Routed requests by the client's country (ISO code or unknown) and whether the address and country checks let them through.",
            &["country", "decision"],
        )?;
        let mut geo = Vec::new();
        let mut geo_index = HashMap::new();
        for (i, c) in CountryCode::all().enumerate() {
            geo_index.insert(c.bytes(), i);
            geo.push([
                geo_vec.get_metric_with_label_values(&[c.as_str(), "allowed"])?,
                geo_vec.get_metric_with_label_values(&[c.as_str(), "refused"])?,
            ]);
        }
        geo.push([
            geo_vec.get_metric_with_label_values(&["unknown", "allowed"])?,
            geo_vec.get_metric_with_label_values(&["unknown", "refused"])?,
        ]);
        let security_vec = counter_vec(
            &mut reg,
            "registry_edge_security_events_total",
            "Security events (a client address crossing an abuse threshold), by kind.",
            &["kind"],
        )?;
        let security = SecurityKind::ALL
            .iter()
            .map(|k| security_vec.get_metric_with_label_values(&[k.label()]))
            .collect::<Result<_, _>>()?;
        let blocks = reg.add(IntCounter::new(
            "registry_edge_security_blocks_total",
            "Client addresses blocked by access.auto_block (each block once).",
        )?)?;
        let unmapped_vec = counter_vec(
            &mut reg,
            "registry_edge_rewrite_unmapped_urls_total",
            "Absolute URLs an upstream sent in Location, Link or a WWW-Authenticate realm that no rewrite mapped to a public host.",
            &["header"],
        )?;
        let unmapped_urls = crate::identity::URL_HEADERS
            .iter()
            .map(|h| unmapped_vec.get_metric_with_label_values(&[h]))
            .collect::<Result<_, _>>()?;
        let h2_body_timeouts = reg.add(IntCounter::new(
            "registry_edge_http2_body_timeouts_total",
            "HTTP/2 connections ended because a request body sent nothing for the listener's idle timeout.",
        )?)?;
        let upstreams = upstream::Families::new(&mut reg, DURATION_BUCKETS.to_vec())?;
        let blob_cache = cache::new(&mut reg)?;
        let ready = reg.add(IntGauge::new(
            "registry_edge_ready",
            "1 when the edge takes traffic (upstreams resolved, not draining).",
        )?)?;
        let geo_reloads = counter_vec(
            &mut reg,
            "registry_edge_geoip_reloads_total",
            "GeoIP database replacements, by result (ok, refused).",
            &["result"],
        )?;
        let reloads_vec = counter_vec(
            &mut reg,
            "registry_edge_config_reloads_total",
            "Configuration reloads (SIGHUP or `registry-edge reload`), by result (ok, refused).",
            &["result"],
        )?;
        let config_reloads = [
            reloads_vec.get_metric_with_label_values(&["ok"])?,
            reloads_vec.get_metric_with_label_values(&["refused"])?,
        ];
        let config_generation = reg.add(IntGauge::new(
            "registry_edge_config_generation",
            "Number of the configuration in force: 1 at start, one more at each applied reload.",
        )?)?;
        let config_restart_pending = reg.add(IntGauge::new(
            "registry_edge_config_restart_pending",
            "1 when the last reloaded file changed settings that only a restart or upgrade applies.",
        )?)?;
        let config_loaded_at = reg.add(IntGauge::new(
            "registry_edge_config_loaded_timestamp_seconds",
            "When (Unix seconds) the configuration in force was loaded.",
        )?)?;
        let geo_build_epoch = reg.add(IntGauge::new(
            "registry_edge_geoip_build_timestamp_seconds",
            "Build time (Unix seconds) of the GeoIP database in use.",
        )?)?;
        let certificate_expiry = gauge_vec(
            &mut reg,
            "registry_edge_tls_certificate_expiry_timestamp_seconds",
            "Expiry (Unix seconds) of each listener certificate in use, by listener and file.",
            &["listener", "certificate"],
        )?;
        let certificate_reloads = counter_vec(
            &mut reg,
            "registry_edge_tls_certificate_reloads_total",
            "Replaced certificate or key files picked up, by result (ok, refused: the old ones stay).",
            &["result"],
        )?;
        let tls_handshake_failures = counter_vec(
            &mut reg,
            "registry_edge_tls_handshake_failures_total",
            "TLS handshakes that failed, by listener and reason (error: refused by either side, timeout: not done within timeouts.header_read).",
            &["listener", "reason"],
        )?;
        let open_connections = reg.add(IntGauge::new(
            "registry_edge_http_open_connections",
            "Client connections currently open on the proxy listeners.",
        )?)?;
        let access_log_dropped = reg.add(IntCounter::new(
            "registry_edge_access_log_dropped_lines_total",
            "Access log lines dropped because the writer fell behind.",
        )?)?;
        // The process log's counters live as long as the logger (which exists before this
        // registry); the registry shows the same collectors.
        if let Some(c) = crate::logfilter::counters() {
            reg.add(c.client_errors.clone())?;
            reg.add(c.suppressed.clone())?;
        }
        Ok(Metrics {
            registry: reg.registry,
            names: reg.names,
            requests,
            durations,
            bytes_sent,
            bytes_received,
            rewrites: rewrites_vec,
            edge_responses,
            refusals,
            geo,
            geo_index,
            security,
            blocks,
            h2_body_timeouts,
            unmapped_urls,
            upstreams,
            blob_cache,
            ready,
            geo_reloads,
            config_reloads,
            config_generation,
            config_restart_pending,
            config_loaded_at,
            geo_build_epoch,
            certificate_expiry,
            certificate_reloads,
            open_connections,
            tls_handshake_failures,
            access_log_dropped,
        })
    }

    /// Every metric name registered, for the documentation test.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// One counter per rewrite rule of an engine (user rules, then derived), by index.
    pub fn rewrite_counters(
        &self,
        rule_names: &[&str],
    ) -> Result<Vec<IntCounter>, prometheus::Error> {
        rule_names
            .iter()
            .map(|n| self.rewrites.get_metric_with_label_values(&[n]))
            .collect()
    }

    /// After a reload removed a rewrite rule.
    pub fn forget_rewrite(&self, rule: &str) {
        let _ = self.rewrites.remove_label_values(&[rule]);
    }

    /// A finished request: its counters and duration.
    pub fn record(&self, r: &Finished<'_>) {
        let route = route_index(r.route);
        let i = ((route * METHODS.len() + method_index(r.method)) * STATUS_CLASSES.len()
            + status_index(r.status))
            * Disposition::COUNT
            + r.disposition.index();
        self.requests[i].inc();
        self.durations[route].observe(r.seconds);
        self.bytes_sent.inc_by(r.bytes_sent);
        self.bytes_received.inc_by(r.bytes_received);
        if let Some((country, refused)) = r.geo {
            self.geo(country, refused);
        }
    }

    pub fn edge_response(&self, reason: EdgeReason) {
        self.edge_responses[reason.index()].inc();
    }

    pub fn refusal(&self, reason: PolicyReason, detect: bool) {
        self.refusals[reason.index()][usize::from(detect)].inc();
    }

    pub fn geo(&self, country: Option<[u8; 2]>, refused: bool) {
        let i = country
            .and_then(|c| self.geo_index.get(&c).copied())
            .unwrap_or(self.geo.len() - 1);
        self.geo[i][usize::from(refused)].inc();
    }

    pub fn security_event(&self, kind: SecurityKind) {
        self.security[kind.index()].inc();
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

#[cfg(test)]
mod tests;
