//! A configuration in force: everything a request reads from the configuration, built together
//! and swapped as one. Each request takes the generation current when it starts
//! (`ProxyHttp::new_ctx`) and keeps it to its end, so that a reload never changes the rules under
//! a request in flight.
//!
//! What a reload keeps: upstream peers and their health for upstreams that name the same host
//! and port, the rate limiter's buckets and the security tracker's table when their settings
//! are unchanged, and the GeoIP database when its path is unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::IntCounter;
use registry_edge_config::Config;
use registry_edge_geo::{CidrSet, ReloadingDb};
use registry_edge_rewrite::Engine;

use crate::blob_cache::store::Store;
use crate::blob_cache::BlobCache;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::route::Router;
use crate::security::Security;
use crate::select::Selector;
use crate::upstream::Upstreams;
use crate::BuildError;

pub struct Generation {
    /// 1 for the configuration the process started with, one more at each applied reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Upstreams,
    pub engine: Arc<Engine>,
    pub policy: Policy,
    pub trusted_proxies: CidrSet,
    pub geo: Option<Arc<ReloadingDb>>,
    pub selector: Selector,
    pub security: Arc<Security>,
    /// One counter per rule of `engine`, by index.
    pub rewrites: Vec<IntCounter>,
    /// The blob cache (`blob_cache:`); `None` when not configured or its directory is unusable.
    pub blob_cache: Option<Arc<BlobCache>>,
    /// Set once another generation replaced this one: its probe loops stop.
    retired: AtomicBool,
}

impl Generation {
    /// Builds a generation from a validated configuration. Reads files (CA files, the GeoIP
    /// database when its path is new): call it off the async threads.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Generation>,
        metrics: &Metrics,
    ) -> Result<Generation, BuildError> {
        let names: Vec<&str> = (0..config.engine.rule_count())
            .map(|i| config.engine.rule_name(i))
            .collect();
        let rewrites = metrics.rewrite_counters(&names)?;
        let upstreams = Upstreams::new(&config, metrics)?;
        if let Some(prev) = previous {
            upstreams.adopt(&prev.upstreams);
        }
        let geo = match &config.geoip {
            None => None,
            Some(g) => match previous
                .and_then(|p| p.geo.as_ref())
                .filter(|db| db.path() == g.database)
            {
                Some(db) => Some(db.clone()),
                None => Some(Arc::new(ReloadingDb::open(&g.database)?)),
            },
        };
        let a = &config.access;
        let security = match previous
            .map(|p| &p.security)
            .filter(|s| s.same_settings(&a.security_events, a.auto_block.as_ref()))
        {
            Some(s) => s.clone(),
            None => Arc::new(Security::new(&a.security_events, a.auto_block.as_ref())),
        };
        let blob_cache = match &config.blob_cache {
            None => None,
            Some(b) => blob_cache(b, previous.and_then(|p| p.blob_cache.as_deref()), metrics)?,
        };
        Ok(Generation {
            number: previous.map_or(1, |p| p.number + 1),
            blob_cache,
            router: Router::new(&config),
            policy: Policy::renewed(a, previous.map(|p| &p.policy)),
            trusted_proxies: CidrSet::new(&config.clients.trusted_proxies),
            selector: Selector::new(&config),
            engine: config.engine.clone(),
            upstreams,
            geo,
            security,
            rewrites,
            retired: AtomicBool::new(false),
            config,
        })
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// The blob cache of a configuration: the previous generation's store when the path is the same
/// (its index, fills in progress and budget carry over), else the directory opened anew. A key
/// file that cannot be read is an error (as a CA file is); a directory that cannot be used is
/// logged and counted, and the edge runs without a cache.
fn blob_cache(
    b: &registry_edge_config::BlobCache,
    previous: Option<&BlobCache>,
    metrics: &Metrics,
) -> Result<Option<Arc<BlobCache>>, BuildError> {
    let key_error = |reason: String| BuildError::BlobCacheKey {
        path: b.key_file.display().to_string(),
        reason,
    };
    let key = std::fs::read(&b.key_file).map_err(|e| key_error(e.to_string()))?;
    if key.len() < registry_edge_config::BLOB_CACHE_KEY_MIN_BYTES {
        return Err(key_error(format!(
            "{} bytes; a key needs at least {}",
            key.len(),
            registry_edge_config::BLOB_CACHE_KEY_MIN_BYTES
        )));
    }
    if let Some(p) = previous.filter(|p| p.store.dir() == b.path) {
        return Ok(Some(Arc::new(p.renewed(
            &key,
            b.min_blob_size,
            b.authorization_ttl,
            b.max_size,
        ))));
    }
    match Store::open(&b.path, b.max_size, metrics.blob_cache.clone()) {
        Ok(store) => Ok(Some(Arc::new(BlobCache::new(
            Arc::new(store),
            &key,
            b.min_blob_size,
            b.authorization_ttl,
        )))),
        Err(e) => {
            log::warn!(
                "blob cache: {} is not usable ({e}); blobs are proxied without it",
                b.path.display()
            );
            metrics.blob_cache.errors[0].inc();
            Ok(None)
        }
    }
}

/// Settings a running process cannot change: its listeners (addresses, TLS, timeouts, limits:
/// they are fixed into the listening services), `server:` (threads, pid file, upgrade socket,
/// grace periods), the admin address and the access log's destination. Each with how to compare
/// it and how to keep the running value: one row per section.
type RestartOnly = (
    &'static str,
    fn(&Config, &Config) -> bool,
    fn(&mut Config, &Config),
);
const RESTART_ONLY: [RestartOnly; 4] = [
    (
        "listeners",
        |a, b| a.listeners != b.listeners,
        |new, running| new.listeners = running.listeners.clone(),
    ),
    (
        "server",
        |a, b| a.server != b.server,
        |new, running| new.server = running.server.clone(),
    ),
    (
        "admin",
        |a, b| a.admin != b.admin,
        |new, running| new.admin = running.admin.clone(),
    ),
    (
        "logging",
        |a, b| a.logging != b.logging,
        |new, running| new.logging = running.logging.clone(),
    ),
];

/// The restart-only sections (above) that `new` changes.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|(_, differ, _)| differ(running, new))
        .map(|(name, _, _)| *name)
        .collect()
}

/// `new` with the running process's values of the settings only a restart changes, so that the
/// generation describes what actually serves.
pub fn keep_running_settings(running: &Config, mut new: Config) -> Config {
    for (_, _, keep) in RESTART_ONLY {
        keep(&mut new, running);
    }
    new
}

/// The sections a reload changes, for the log line that reports it.
pub fn changed_sections(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.registry != new.registry {
        changed.push("registry");
    }
    if running.local_region != new.local_region || running.regions != new.regions {
        changed.push("regions");
    }
    if running.geoip != new.geoip {
        changed.push("geoip");
    }
    if running.clients.trusted_proxies != new.clients.trusted_proxies {
        changed.push("clients");
    }
    if running.access != new.access {
        changed.push("access");
    }
    if running.rewrites != new.rewrites {
        changed.push("rewrites");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::minimal;

    #[test]
    fn restart_only_settings_are_reported_and_keep_their_running_values() {
        let running = minimal("", "");
        let new = minimal(
            ", max_request_header_bytes: 4096",
            "server: { threads: 3 }\naccess: { read_only: true }\n",
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            ["listeners", "server"]
        );
        let kept = keep_running_settings(&running, new.clone());
        assert_eq!(kept.listeners, running.listeners);
        assert_eq!(kept.server, running.server);
        // What a reload applies stays new.
        assert!(kept.access.read_only && !running.access.read_only);
        assert!(restart_only_changes(&running, &kept).is_empty());
        assert_eq!(changed_sections(&running, &kept), ["access"]);
    }

    #[test]
    fn changed_sections_name_each_section_a_reload_applies() {
        let running = minimal("", "");
        assert!(changed_sections(&running, &running).is_empty());
        let new = crate::testing::config(
            "version: 1\nlisteners: [{ address: \"127.0.0.1:1\" }]\nregistry:\n  login_server: r2.internal\n  public_host: r.example\nclients: { trusted_proxies: [10.0.0.0/8] }\nrewrites:\n  - name: frame\n    action: { set_header: X-Frame-Options, value: DENY }\n",
        );
        assert_eq!(
            changed_sections(&running, &new),
            ["registry", "clients", "rewrites"]
        );
        assert!(restart_only_changes(&running, &new).is_empty());
    }
}
