//! Upstream pools: one per configured upstream (login server, token server, each regional and data
//! endpoint). Peers come from the configuration or from resolving the name in a background task
//! (never in a request: pingora's `HttpPeer::new` with a name resolves blocking and panics on
//! failure). A failed resolution keeps the last good set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use registry_edge_config::{Config, HealthCheck, Upstream};

use crate::health::PeerHealth;
use crate::metrics::{Metrics, UpstreamMetrics};

/// A peer and its health, kept across re-resolutions while the address stays.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub addr: SocketAddr,
    pub health: Arc<PeerHealth>,
}

fn entries(addrs: &[SocketAddr]) -> Vec<PeerEntry> {
    addrs
        .iter()
        .map(|a| PeerEntry {
            addr: *a,
            health: Arc::default(),
        })
        .collect()
}

/// Which pool: the login server, the token server, a regional or a data endpoint (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolId {
    Login,
    Token,
    Regional(usize),
    Data(usize),
}

/// How long a pooled upstream connection may stay idle before it is closed.
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct Pool {
    /// Bounded label: `login`, `token`, `regional:<region>`, `data:<region>`.
    pub name: String,
    pub tls: bool,
    /// SNI and certificate name: the bare host (an IP literal is checked against IP SANs).
    sni: String,
    /// The Host header sent upstream.
    pub host_header: String,
    /// The same, ready to insert (a reference count, not a copy, per request).
    pub host_value: http::HeaderValue,
    host: String,
    port: u16,
    static_peers: bool,
    peers: ArcSwap<Vec<PeerEntry>>,
    group_key: u64,
    pub health_check: HealthCheck,
    /// The region of a regional or data endpoint.
    pub region: Option<String>,
    ca: Option<Arc<[WrappedX509]>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    pub metrics: UpstreamMetrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("host_header", &self.host_header)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}: cannot read the CA file: {1}")]
    Ca(String, String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}: not a valid Host header value")]
    Host(String),
}

impl Pool {
    fn new(
        name: String,
        group_key: u64,
        u: &Upstream,
        region: Option<String>,
        metrics: &Metrics,
    ) -> Result<Pool, UpstreamError> {
        let ca = match &u.ca_file {
            None => None,
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| UpstreamError::Ca(path.display().to_string(), e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| UpstreamError::Ca(path.display().to_string(), e.to_string()))?;
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(wrapped))
            }
        };
        let metrics = metrics.upstreams.get(&name)?;
        metrics.peers.set(u.peers.len() as i64);
        let host_header = u.authority.host_header(u.tls);
        let host_value = http::HeaderValue::from_str(&host_header)
            .map_err(|_| UpstreamError::Host(host_header.clone()))?;
        Ok(Pool {
            name,
            tls: u.tls,
            sni: u.authority.host.clone(),
            host_header,
            host_value,
            host: u.authority.host.clone(),
            port: u.authority.port,
            static_peers: !u.peers.is_empty(),
            peers: ArcSwap::from_pointee(entries(&u.peers)),
            group_key,
            health_check: u.health_check.clone(),
            region,
            ca,
            connect_timeout: u.connect_timeout,
            read_timeout: u.read_timeout,
            metrics,
        })
    }

    pub fn has_peers(&self) -> bool {
        !self.peers.load().is_empty()
    }

    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.peers.load().iter().map(|p| p.addr).collect()
    }

    pub fn peers(&self) -> Arc<Vec<PeerEntry>> {
        self.peers.load_full()
    }

    /// Peers healthy by the probes and not backed off, rotated by `key` so that one client keeps
    /// to one peer while it stays healthy.
    pub fn usable_peers(&self, key: u64) -> Vec<SocketAddr> {
        let peers = self.peers.load();
        let usable: Vec<SocketAddr> = peers
            .iter()
            .filter(|p| p.health.usable())
            .map(|p| p.addr)
            .collect();
        if usable.is_empty() {
            return usable;
        }
        let start = (key % usable.len() as u64) as usize;
        usable[start..]
            .iter()
            .chain(&usable[..start])
            .copied()
            .collect()
    }

    pub fn has_usable_peer(&self) -> bool {
        self.peers.load().iter().any(|p| p.health.usable())
    }

    /// A connect failure or an early reset: keep new requests off this peer for a probe interval.
    pub fn back_off(&self, addr: SocketAddr) {
        if let Some(p) = self.peers.load().iter().find(|p| p.addr == addr) {
            p.health.back_off(self.health_check.interval);
        }
    }

    /// The pingora peer for `addr`, with this upstream's TLS settings and timeouts.
    pub fn http_peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, self.tls, self.sni.clone());
        // Connections are pooled by address and SNI, not by CA: keep each upstream's connections
        // to itself, so that one verified against another upstream's CA is never reused here.
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout);
        // Per read, not per body: layers of tens of GB must not hit a total deadline.
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.read_timeout);
        o.idle_timeout = Some(POOL_IDLE);
        o.ca = self.ca.clone();
        Box::new(peer)
    }

    /// The peer a probe connects to: the probe's own timeout.
    pub fn probe_peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = self.http_peer(addr);
        peer.options.connection_timeout = Some(self.health_check.timeout);
        peer.options.total_connection_timeout = Some(self.health_check.timeout);
        peer
    }

    /// After a reload: takes over what `old` knows about the same upstream (same host, port and
    /// kind of peer list): its resolved peers, and every peer's health.
    fn adopt(&self, old: &Pool) {
        if old.name != self.name
            || old.host != self.host
            || old.port != self.port
            || old.static_peers != self.static_peers
        {
            return;
        }
        let known = old.peers.load();
        if self.static_peers {
            let next: Vec<PeerEntry> = self
                .peers
                .load()
                .iter()
                .map(|p| PeerEntry {
                    addr: p.addr,
                    health: known
                        .iter()
                        .find(|k| k.addr == p.addr)
                        .map_or_else(|| p.health.clone(), |k| k.health.clone()),
                })
                .collect();
            self.peers.store(Arc::new(next));
        } else {
            self.metrics.peers.set(known.len() as i64);
            self.peers.store(known.clone());
        }
    }

    /// Re-resolves the name; keeps the last good set when resolution fails or finds nothing.
    pub async fn resolve(&self) {
        if self.static_peers {
            return;
        }
        let target = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let result = tokio::net::lookup_host(target)
            .await
            .map(|addrs| addrs.collect::<Vec<_>>());
        self.apply_resolution(result);
    }

    /// Takes a resolution's outcome: a new non-empty set replaces the peers; an error or an
    /// empty answer keeps the last good set.
    fn apply_resolution(&self, result: std::io::Result<Vec<SocketAddr>>) {
        match result {
            Ok(mut found) if !found.is_empty() => {
                found.sort();
                found.dedup();
                let current = self.peers.load();
                if current.iter().map(|p| p.addr).ne(found.iter().copied()) {
                    log::info!("upstream {}: peers {:?}", self.name, found);
                    self.metrics.peers.set(found.len() as i64);
                    let next: Vec<PeerEntry> = found
                        .iter()
                        .map(|a| PeerEntry {
                            addr: *a,
                            health: current
                                .iter()
                                .find(|p| p.addr == *a)
                                .map_or_else(Arc::default, |p| p.health.clone()),
                        })
                        .collect();
                    self.peers.store(Arc::new(next));
                }
            }
            Ok(_) => {
                self.metrics.resolve_failures.inc();
                log::warn!(
                    "upstream {}: {} resolved to no address; keeping {} peer(s)",
                    self.name,
                    self.host,
                    self.peers.load().len()
                );
            }
            Err(e) => {
                self.metrics.resolve_failures.inc();
                log::warn!(
                    "upstream {}: cannot resolve {}: {e}; keeping {} peer(s)",
                    self.name,
                    self.host,
                    self.peers.load().len()
                );
            }
        }
    }
}

/// Every upstream of a configuration, in fixed positions.
#[derive(Debug)]
pub struct Upstreams {
    pub login: Pool,
    pub token: Option<Pool>,
    pub regional: Vec<Pool>,
    /// Same order as `registry.data_endpoints`.
    pub data: Vec<Pool>,
}

impl Upstreams {
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Upstreams, UpstreamError> {
        let r = &config.registry;
        Ok(Upstreams {
            login: Pool::new("login".into(), 1, &r.login, None, metrics)?,
            token: r
                .token_server
                .as_ref()
                .map(|t| Pool::new("token".into(), 2, t, None, metrics))
                .transpose()?,
            regional: (0u64..)
                .zip(&r.regional_endpoints)
                .map(|(i, e)| {
                    Pool::new(
                        format!("regional:{}", e.region),
                        1000 + i,
                        &e.upstream,
                        Some(e.region.clone()),
                        metrics,
                    )
                })
                .collect::<Result<_, _>>()?,
            data: (0u64..)
                .zip(&r.data_endpoints)
                .map(|(i, d)| {
                    Pool::new(
                        format!("data:{}", d.region),
                        2000 + i,
                        &d.upstream,
                        Some(d.region.clone()),
                        metrics,
                    )
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// After a reload: each pool takes over the peers and health of the running pool of the
    /// same name when it names the same upstream.
    pub fn adopt(&self, old: &Upstreams) {
        for pool in self.all() {
            if let Some(o) = old.all().find(|o| o.name == pool.name) {
                pool.adopt(o);
            }
        }
    }

    /// The first pool without a peer (nothing resolved yet), by name.
    pub fn unresolved(&self) -> Option<&str> {
        self.all().find(|p| !p.has_peers()).map(|p| p.name.as_str())
    }

    /// The pool `id` names: `Token` is the login pool when no token server is configured;
    /// `None` for an index this configuration does not have.
    pub fn get(&self, id: PoolId) -> Option<&Pool> {
        match id {
            PoolId::Login => Some(&self.login),
            PoolId::Token => Some(self.token.as_ref().unwrap_or(&self.login)),
            PoolId::Regional(i) => self.regional.get(i),
            PoolId::Data(i) => self.data.get(i),
        }
    }

    pub fn ids(&self) -> Vec<PoolId> {
        let mut ids = vec![PoolId::Login];
        if self.token.is_some() {
            ids.push(PoolId::Token);
        }
        ids.extend((0..self.regional.len()).map(PoolId::Regional));
        ids.extend((0..self.data.len()).map(PoolId::Data));
        ids
    }

    pub fn all(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.login)
            .chain(self.token.iter())
            .chain(self.regional.iter())
            .chain(self.data.iter())
    }

    /// Ready once every upstream has at least one peer.
    pub fn resolved(&self) -> bool {
        self.all().all(Pool::has_peers)
    }

    pub async fn resolve_all(&self) {
        for p in self.all() {
            p.resolve().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let yaml = "version: 1\nlisteners: [{ address: \"127.0.0.1:1\" }]\nregistry:\n  login_server: registry.internal\n  public_host: registry.example\n";
        crate::testing::config(yaml)
    }

    #[test]
    fn failed_resolution_keeps_the_last_good_set() {
        let config = config();
        let metrics = Metrics::new().unwrap();
        let ups = Upstreams::new(&config, &metrics).unwrap();
        let pool = &ups.login;
        assert!(!pool.has_peers());
        assert!(!ups.resolved());
        let good: Vec<SocketAddr> = vec![
            "192.0.2.1:443".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
        ];
        pool.apply_resolution(Ok(good.clone()));
        assert_eq!(pool.peer_addrs(), good);
        assert!(ups.resolved());
        pool.apply_resolution(Err(std::io::Error::other("SERVFAIL")));
        pool.apply_resolution(Ok(Vec::new()));
        assert_eq!(pool.peer_addrs(), good);
        assert_eq!(pool.metrics.resolve_failures.get(), 2);
        assert_eq!(pool.metrics.peers.get(), 2);
    }

    #[test]
    fn usable_peers_rotate_by_client_and_skip_backed_off_ones() {
        let config = config();
        let metrics = Metrics::new().unwrap();
        let ups = Upstreams::new(&config, &metrics).unwrap();
        let pool = &ups.login;
        let a: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:443".parse().unwrap();
        pool.apply_resolution(Ok(vec![a, b]));
        assert_eq!(pool.usable_peers(0), vec![a, b]);
        assert_eq!(pool.usable_peers(1), vec![b, a]);
        // The client key picks the first peer (key modulo the peer count); the rest follow.
        for key in [2, 7, 1 << 40, u64::MAX] {
            let want = if key % 2 == 0 { vec![a, b] } else { vec![b, a] };
            assert_eq!(pool.usable_peers(key), want, "key {key}");
        }
        pool.back_off(a);
        assert_eq!(pool.usable_peers(0), vec![b]);
        // A re-resolution keeps what is known about a peer that stays.
        pool.apply_resolution(Ok(vec![a, "192.0.2.3:443".parse().unwrap()]));
        assert!(!pool.usable_peers(0).contains(&a));
        let peer = pool.http_peer(b);
        assert_eq!(peer.sni, "registry.internal");
        assert_eq!(
            peer.options.connection_timeout,
            Some(std::time::Duration::from_secs(5))
        );
    }
}
