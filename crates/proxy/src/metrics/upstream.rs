//! The per-upstream metric families: resolved per pool when a generation is built
//! ([`Families::get`]), removed when a reload drops the upstream ([`Families::forget`]).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use super::{counter_vec, gauge_vec, Reg};

/// Per-upstream handles, resolved once per pool.
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
    /// From the first attempt to the end of the response.
    pub duration: Histogram,
}

pub struct Families {
    requests: IntCounterVec,
    failovers: IntCounterVec,
    healthy_peers: IntGaugeVec,
    /// `[upstream, region, peer]`, set by the probes.
    pub peer_healthy: IntGaugeVec,
    /// `[upstream, to]` (`up`, `down`), counted by the probes.
    pub health_transitions: IntCounterVec,
    connect_errors: IntCounterVec,
    retries: IntCounterVec,
    peers: IntGaugeVec,
    resolve_failures: IntCounterVec,
    duration: HistogramVec,
}

impl Families {
    pub(super) fn new(reg: &mut Reg, buckets: Vec<f64>) -> Result<Families, prometheus::Error> {
        let by_upstream = &["upstream"];
        Ok(Families {
            requests: counter_vec(
                reg,
                "registry_edge_upstream_requests_total",
                "Requests served by an upstream (the attempt that answered).",
                by_upstream,
            )?,
            failovers: counter_vec(
                reg,
                "registry_edge_upstream_failovers_total",
                "Requests whose preferred regional upstream could not serve them (served by another region or the login server).",
                by_upstream,
            )?,
            healthy_peers: gauge_vec(
                reg,
                "registry_edge_upstream_healthy_peers",
                "Peers of an upstream currently healthy by the probes.",
                by_upstream,
            )?,
            peer_healthy: gauge_vec(
                reg,
                "registry_edge_upstream_peer_healthy",
                "1 when a peer of an upstream is healthy by the probes.",
                &["upstream", "region", "peer"],
            )?,
            health_transitions: counter_vec(
                reg,
                "registry_edge_upstream_health_transitions_total",
                "Peers marked down or up by the probes.",
                &["upstream", "to"],
            )?,
            connect_errors: counter_vec(
                reg,
                "registry_edge_upstream_connect_errors_total",
                "Failed connections to an upstream peer.",
                by_upstream,
            )?,
            retries: counter_vec(
                reg,
                "registry_edge_upstream_retries_total",
                "Requests retried on the next peer or region.",
                by_upstream,
            )?,
            peers: gauge_vec(
                reg,
                "registry_edge_upstream_peers",
                "Peers currently known for an upstream (resolved or configured).",
                by_upstream,
            )?,
            resolve_failures: counter_vec(
                reg,
                "registry_edge_upstream_resolve_failures_total",
                "Failed name resolutions of an upstream (the last good set is kept).",
                by_upstream,
            )?,
            duration: reg.add(HistogramVec::new(
                HistogramOpts::new(
                    "registry_edge_upstream_duration_seconds",
                    "Time from the first upstream attempt to the end of the response, by the upstream that answered.",
                )
                .buckets(buckets),
                by_upstream,
            )?)?,
        })
    }

    /// The handles of one upstream.
    pub fn get(&self, name: &str) -> Result<UpstreamMetrics, prometheus::Error> {
        let n = &[name];
        Ok(UpstreamMetrics {
            requests: self.requests.get_metric_with_label_values(n)?,
            failovers: self.failovers.get_metric_with_label_values(n)?,
            healthy_peers: self.healthy_peers.get_metric_with_label_values(n)?,
            connect_errors: self.connect_errors.get_metric_with_label_values(n)?,
            retries: self.retries.get_metric_with_label_values(n)?,
            peers: self.peers.get_metric_with_label_values(n)?,
            resolve_failures: self.resolve_failures.get_metric_with_label_values(n)?,
            duration: self.duration.get_metric_with_label_values(n)?,
        })
    }

    /// After a reload removed an upstream: its series go (a missing series is not an error).
    pub fn forget(&self, name: &str, region: &str, peers: &[std::net::SocketAddr]) {
        let n = &[name];
        let _ = self.requests.remove_label_values(n);
        let _ = self.failovers.remove_label_values(n);
        let _ = self.healthy_peers.remove_label_values(n);
        let _ = self.connect_errors.remove_label_values(n);
        let _ = self.retries.remove_label_values(n);
        let _ = self.peers.remove_label_values(n);
        let _ = self.resolve_failures.remove_label_values(n);
        let _ = self.duration.remove_label_values(n);
        for to in ["up", "down"] {
            let _ = self.health_transitions.remove_label_values(&[name, to]);
        }
        for p in peers {
            let _ = self
                .peer_healthy
                .remove_label_values(&[name, region, &p.to_string()]);
        }
    }
}
