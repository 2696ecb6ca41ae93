//! registry-edge's proxy: the Pingora service that publishes a registry under its public names.
//!
//! [`build`] turns a validated [`registry_edge_config::Config`] into a pingora `Server` with one
//! proxy service per listener, the admin app and the upstream resolver; the binary's `run` calls
//! it and then `run_forever`. The request path is described in [`service`].
//!
//! ```no_run
//! let config = registry_edge_config::load(
//!     std::path::Path::new("conf/local.yaml"),
//!     registry_edge_config::Options { check_files: true },
//! ).unwrap();
//! let server = registry_edge_proxy::build(config, registry_edge_proxy::RunOptions::default()).unwrap();
//! server.run_forever();
//! ```

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod blob_cache;
pub(crate) mod clock;
pub(crate) mod generation;
pub(crate) mod h2watch;
pub(crate) mod headers;
pub mod health;
pub(crate) mod identity;
pub(crate) mod listen;
pub mod logfilter;
pub mod metrics;
pub(crate) mod outcome;
pub mod policy;
pub(crate) mod ratelimit;
pub(crate) mod redact;
pub mod reload;
pub(crate) mod repo;
pub(crate) mod respond;
pub(crate) mod route;
pub(crate) mod security;
pub(crate) mod select;
pub(crate) mod service;
pub(crate) mod slots;
#[cfg(test)]
mod testing;
pub(crate) mod tls;
pub mod upstream;

/// The lean HTTP/1 session's head parser and body framing, and the two HTTP/1 sessions compared
/// on the same bytes (for the `http1_differential` fuzz target).
pub mod http1 {
    pub use crate::listen::lean::differential;
    pub use crate::listen::lean::head;
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};

use registry_edge_config::Config;

use crate::generation::Generation;
use crate::service::{Edge, Shared};

/// How often upstream names are re-resolved.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// How often the GeoIP database file is checked for a replacement.
const GEO_CHECK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take the listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
    /// The configuration file, read again on SIGHUP. `None`: reloads are refused.
    pub config_path: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Upstream(#[from] upstream::UpstreamError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("GeoIP: {0}")]
    Geo(#[from] registry_edge_geo::GeoError),
    #[error("blob_cache.key_file {path}: {reason}")]
    BlobCacheKey { path: String, reason: String },
}

/// Builds the server: nothing listens until `run_forever`/`run`.
pub fn build(config: Config, options: RunOptions) -> Result<Server, BuildError> {
    pingora::tls::install_default_crypto_provider();
    let config = Arc::new(config);
    let metrics = metrics::Metrics::new()?;
    let access_log = access_log::AccessLog::start(
        &config.logging.access_log,
        metrics.access_log_dropped.clone(),
    )
    .map_err(BuildError::AccessLog)?;
    let generation = Generation::build(config.clone(), None, &metrics)?;
    if let Some(db) = &generation.geo {
        metrics
            .geo_build_epoch
            .set(db.current().build_epoch() as i64);
    }
    metrics.config_generation.set(1);
    metrics
        .config_loaded_at
        .set(clock::since_epoch().as_secs() as i64);
    let mut certificates = Vec::new();
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            let resolver = Arc::new(tls::SniResolver::load(&tls.certificates)?);
            for (file, expiry) in resolver.expiries() {
                metrics
                    .certificate_expiry
                    .with_label_values(&[&listener.address.to_string(), &file])
                    .set(expiry);
            }
            certificates.push(tls::Watched::new(
                listener.address.to_string(),
                tls.certificates.clone(),
                resolver,
            ));
        }
    }
    let shared = Arc::new(Shared {
        in_force: arc_swap::ArcSwap::from_pointee(generation),
        config_path: options.config_path.clone(),
        certificates,
        service_name: arc_swap::ArcSwapOption::empty(),
        id_prefix: {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        },
        id_counter: std::sync::atomic::AtomicU64::new(0),
        metrics,
        access_log,
        draining: AtomicBool::new(false),
        listeners_waiting: Default::default(),
        reloading: tokio::sync::Mutex::new(()),
        h2: Arc::new(h2watch::Registry::default()),
        unmapped_warned: Default::default(),
    });

    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs().max(1)),
        // Attempts are bounded by the service itself (service::MAX_ATTEMPTS).
        max_retries: 4,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    for (i, listener) in config.listeners.iter().enumerate() {
        let edge = Edge {
            shared: shared.clone(),
            listener: listener.clone(),
            fill_upstream: pingora::connectors::TransportConnector::new(None),
        };
        let mut proxy = pingora_proxy::http_proxy(&server.configuration, edge);
        let mut o = pingora::apps::HttpServerOptions::default();
        // No cleartext HTTP/2: pingora peeks for its preface with no timeout at all, which
        // would let idle and slow connections live forever. HTTP/2 is offered over TLS (ALPN).
        o.h2c = false;
        // pingora counts reuses after the first request.
        o.keepalive_request_limit = Some(
            u32::try_from(listener.max_requests_per_connection.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        o.h2_idle_timeout = Some(listener.timeouts.idle);
        proxy.server_options = Some(o);
        // pingora's bounded defaults (header list size), with the listener's stream cap.
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_concurrent_streams(listener.max_concurrent_streams);
        proxy.h2_options = Some(h2);
        let address = listener.address.to_string();
        let tls = match &listener.tls {
            None => None,
            Some(_) => {
                let Some(watched) = shared.certificates.iter().find(|w| w.listener == address)
                else {
                    continue;
                };
                Some(tls::acceptor(watched.resolver.clone())?)
            }
        };
        let tls_failures = &shared.metrics.tls_handshake_failures;
        let service = listen::EdgeListener::new(
            format!("listener {i} {}", listener.address),
            listener.address,
            proxy,
            listen::Settings {
                tls,
                idle: listener.timeouts.idle,
                header_read: listener.timeouts.header_read,
                open_connections: shared.metrics.open_connections.clone(),
                upstreams_resolved: {
                    let shared = shared.clone();
                    Arc::new(move || shared.in_force.load().upstreams.resolved())
                },
                h2: shared.h2.clone(),
                h2_body_timeouts: shared.metrics.h2_body_timeouts.clone(),
                tls_failed: tls_failures.with_label_values(&[&address, "error"]),
                tls_timed_out: tls_failures.with_label_values(&[&address, "timeout"]),
                lean: config.server.http1 == registry_edge_config::Http1Session::Lean,
                max_requests: listener.max_requests_per_connection,
                accepting: {
                    let shared = shared.clone();
                    Arc::new(move || {
                        shared.listeners_waiting.fetch_sub(1, Ordering::AcqRel);
                    })
                },
            },
        );
        shared.listeners_waiting.fetch_add(1, Ordering::AcqRel);
        server.add_service(service);
    }

    if let Some(admin) = &config.admin {
        let mut service = pingora::services::listening::Service::new(
            "admin".to_string(),
            admin::Admin {
                shared: shared.clone(),
            },
        );
        service.add_tcp(&admin.address.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "maintenance",
        Maintenance {
            shared: shared.clone(),
        },
    ));
    Ok(server)
}

/// Resolves upstream names at start and then periodically; reloads the configuration on
/// SIGHUP; marks the edge as draining when pingora starts its graceful shutdown, so that
/// `/readyz` takes it out of rotation.
struct Maintenance {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, configuration reload is off: {e}");
                None
            }
        };
        spawn_probes(&self.shared, &self.shared.generation());
        let mut last_resolve: Option<tokio::time::Instant> = None;
        loop {
            if last_resolve.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY) {
                self.shared.generation().upstreams.resolve_all().await;
                last_resolve = Some(tokio::time::Instant::now());
            }
            self.check_geo().await;
            self.check_certificates().await;
            self.shared
                .metrics
                .ready
                .set(i64::from(self.shared.ready()));
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.shared.draining.store(true, Ordering::Relaxed);
                        self.shared.metrics.ready.set(0);
                        return;
                    }
                }
                Some(()) = hup => {
                    log::info!("SIGHUP: reloading the configuration");
                    if let (_, Some(generation)) = reload::reload(&self.shared).await {
                        spawn_probes(&self.shared, &generation);
                    }
                }
                _ = tokio::time::sleep(GEO_CHECK_EVERY) => {}
            }
        }
    }
}

/// One probe loop per upstream of a generation; they end when it is replaced.
fn spawn_probes(shared: &Arc<Shared>, generation: &Arc<generation::Generation>) {
    for id in generation.upstreams.ids() {
        tokio::spawn(probe_loop(shared.clone(), generation.clone(), id));
    }
}

impl Maintenance {
    /// Picks up replaced certificate and key files; a broken set is refused, the old one kept.
    async fn check_certificates(&self) {
        if self.shared.certificates.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            shared
                .certificates
                .iter()
                .map(|w| (w.listener.clone(), w.check(), w.resolver.expiries()))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(outcomes) = outcomes else { return };
        let m = &self.shared.metrics;
        for (listener, outcome, expiries) in outcomes {
            match outcome {
                tls::CertCheck::Unchanged => {}
                tls::CertCheck::Reloaded => {
                    m.certificate_reloads.with_label_values(&["ok"]).inc();
                    for (file, expiry) in expiries {
                        m.certificate_expiry
                            .with_label_values(&[&listener, &file])
                            .set(expiry);
                    }
                    log::info!("listener {listener}: certificates reloaded");
                }
                tls::CertCheck::Refused(e) => {
                    m.certificate_reloads.with_label_values(&["refused"]).inc();
                    log::error!("listener {listener}: new certificates refused, keeping the current ones: {e}");
                }
            }
        }
    }

    /// Reads a replaced database off the async threads; the swap itself is atomic.
    async fn check_geo(&self) {
        let generation = self.shared.generation();
        if generation.config.geoip.as_ref().is_none_or(|g| !g.reload) {
            return;
        }
        let outcome =
            tokio::task::spawn_blocking(move || generation.geo.as_ref().map(|g| g.check())).await;
        let m = &self.shared.metrics;
        match outcome {
            Ok(Some(registry_edge_geo::ReloadOutcome::Reloaded { build_epoch })) => {
                m.geo_reloads.with_label_values(&["ok"]).inc();
                m.geo_build_epoch.set(build_epoch as i64);
                log::info!("GeoIP database reloaded (built {build_epoch})");
            }
            Ok(Some(registry_edge_geo::ReloadOutcome::Refused(e))) => {
                m.geo_reloads.with_label_values(&["refused"]).inc();
                log::error!("GeoIP database replacement refused, keeping the current one: {e}");
            }
            Ok(_) => {}
            Err(e) => log::error!("GeoIP reload task failed: {e}"),
        }
    }
}

/// Probes every peer of one upstream each interval and applies the thresholds, until its
/// generation is replaced by a reload.
async fn probe_loop(
    shared: Arc<Shared>,
    generation: Arc<generation::Generation>,
    id: upstream::PoolId,
) {
    let connector = pingora::connectors::TransportConnector::new(None);
    let Some(pool) = generation.upstreams.get(id) else {
        return;
    };
    let hc = pool.health_check.clone();
    let region = pool.region.clone().unwrap_or_default();
    loop {
        tokio::time::sleep(hc.interval).await;
        if generation.retired() {
            return;
        }
        let peers = pool.peers();
        let mut healthy = 0;
        for p in peers.iter() {
            let ok =
                health::probe(&connector, &pool.probe_peer(p.addr), &pool.host_header, &hc).await;
            if let Some(up) = p.health.record(ok, &hc) {
                let to = if up { "up" } else { "down" };
                log::warn!(
                    "upstream {} peer {}: marked {to} by the probes",
                    pool.name,
                    p.addr
                );
                shared
                    .metrics
                    .upstreams
                    .health_transitions
                    .with_label_values(&[pool.name.as_str(), to])
                    .inc();
            }
            let state = p.health.healthy();
            healthy += usize::from(state);
            shared
                .metrics
                .upstreams
                .peer_healthy
                .with_label_values(&[pool.name.as_str(), region.as_str(), &p.addr.to_string()])
                .set(i64::from(state));
        }
        pool.metrics.healthy_peers.set(healthy as i64);
    }
}
