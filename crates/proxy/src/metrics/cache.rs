//! The blob cache's metrics (blob_cache.rs), registered whether or not a cache is configured.

use prometheus::{Counter, IntCounter, IntGauge};

use super::{counter_vec, Reg};
use crate::blob_cache::{CacheMetrics, CacheUse};

pub(super) fn new(reg: &mut Reg) -> Result<CacheMetrics, prometheus::Error> {
    let requests = counter_vec(
        reg,
        "registry_edge_blob_cache_requests_total",
        "Blob requests carrying a cache token, by how they were served (hit, fill, miss, corrupt, bypass).",
        &["result"],
    )?;
    let bytes = counter_vec(
        reg,
        "registry_edge_blob_cache_bytes_total",
        "Body bytes of blob requests carrying a cache token, by source (cache, upstream).",
        &["source"],
    )?;
    let errors = counter_vec(
        reg,
        "registry_edge_blob_cache_errors_total",
        "Cache operations the disk refused (write: a fill not stored; read: an entry missing or of the wrong size, dropped); the transfer goes on from the upstream.",
        &["kind"],
    )?;
    Ok(CacheMetrics {
        requests: CacheUse::ALL
            .iter()
            .map(|u| requests.get_metric_with_label_values(&[u.label()]))
            .collect::<Result<_, _>>()?,
        bytes: [
            bytes.get_metric_with_label_values(&["cache"])?,
            bytes.get_metric_with_label_values(&["upstream"])?,
        ],
        verification_failures: reg.add(IntCounter::new(
            "registry_edge_blob_cache_verification_failures_total",
            "Fills whose bytes did not hash to the digest (or had another length): not stored, the client's transfer cut.",
        )?)?,
        evictions: reg.add(IntCounter::new(
            "registry_edge_blob_cache_evictions_total",
            "Entries removed to keep the cache within blob_cache.max_size.",
        )?)?,
        errors: [
            errors.get_metric_with_label_values(&["write"])?,
            errors.get_metric_with_label_values(&["read"])?,
        ],
        disk_bytes: reg.add(IntGauge::new(
            "registry_edge_blob_cache_disk_bytes",
            "Bytes of complete entries in the cache (this process's index).",
        )?)?,
        entries: reg.add(IntGauge::new(
            "registry_edge_blob_cache_entries",
            "Complete entries in the cache (this process's index).",
        )?)?,
        paced_seconds: reg.add(Counter::new(
            "registry_edge_blob_cache_fill_paced_seconds_total",
            "Seconds fills held their clients back because the disk writer was behind the network (at most 4 s per GiB of the blob, and at least 2 s, per fill).",
        )?)?,
        relayed_bytes: reg.add(IntCounter::new(
            "registry_edge_blob_cache_relayed_bytes_total",
            "Fill bytes sent to clients spliced from the data endpoint's socket through pipes (plain TCP on both sides): never copied through the edge's memory for the client.",
        )?)?,
    })
}
