//! The validated configuration. These types carry no `Deserialize`: the only way to get one is
//! through [`crate::load`] / [`crate::parse`], so every value in them has been checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use registry_edge_rewrite::{Engine, RuleSpec, StatusRange};

use crate::values::{Authority, CountryCode};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from, as given (for messages).
    pub source: String,
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub registry: Registry,
    pub local_region: Option<String>,
    pub regions: Vec<RegionRule>,
    pub geoip: Option<GeoIp>,
    pub clients: Clients,
    pub access: Access,
    /// `blob_cache`; `None` (the block left out): every blob comes from the registry's storage.
    pub blob_cache: Option<BlobCache>,
    /// The user rules as written (validated); the compiled engine also holds the derived rules.
    pub rewrites: Vec<RuleSpec>,
    pub engine: Arc<Engine>,
    pub logging: Logging,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    /// Which HTTP/1 session serves the proxy listeners' HTTP/1 connections.
    pub http1: Http1Session,
}

/// The HTTP/1 session under the proxy (`server.http1`). Both run the same `ProxyHttp` phases;
/// they differ in how a request head and body are read and a response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Session {
    /// pingora's own HTTP/1 server session.
    #[default]
    Pingora,
    /// registry-edge's own session, on httparse, behind pingora's custom-session hook.
    Lean,
}

impl Http1Session {
    pub fn as_str(self) -> &'static str {
        match self {
            Http1Session::Pingora => "pingora",
            Http1Session::Lean => "lean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub public_scheme: Scheme,
    pub timeouts: Timeouts,
    pub max_request_header_bytes: usize,
    pub max_requests_per_connection: u64,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    pub redirect_to_https: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// In order: the first one also answers clients that send no SNI.
    pub certificates: Vec<CertificatePair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Total time to read a request's headers.
    pub header_read: Duration,
    /// Keepalive idle time between requests.
    pub idle: Duration,
    /// How long a write to a stalled reader may block.
    pub write: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub login: Upstream,
    /// `registry.public_host`, lower case.
    pub public_host: String,
    pub token_server: Option<Upstream>,
    pub token_paths: Vec<String>,
    pub regional_endpoints: Vec<RegionalEndpoint>,
    pub data_endpoints: Vec<DataEndpoint>,
    /// What happens to a redirect whose absolute `Location` no derived rule mapped.
    pub unmapped_redirects: UnmappedRedirects,
    /// Upstream `Server`, `X-Powered-By`, `X-AspNet-Version`, `X-AspNetMvc-Version` removed.
    pub hide_server_headers: bool,
}

/// `registry.unmapped_redirects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedRedirects {
    /// The client gets 502 instead of a URL that would bypass the edge.
    Refuse,
    /// Passed as the registry wrote it (counted and logged).
    Pass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegionalEndpoint {
    pub region: String,
    pub upstream: Upstream,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataEndpoint {
    pub region: String,
    pub upstream: Upstream,
    /// Lower case.
    pub public_host: String,
    /// Several regions share `public_host`: URLs carry `/_r/<region>/`.
    pub shared_public_host: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub authority: Authority,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// Fixed peers; empty means "resolve the authority's host".
    pub peers: Vec<SocketAddr>,
    pub health_check: HealthCheck,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    Http {
        path: String,
        healthy_statuses: Vec<StatusRange>,
    },
    /// A TCP (and TLS, for TLS upstreams) connection probe.
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegionRule {
    pub region: String,
    pub countries: Vec<CountryCode>,
    pub continents: Vec<Continent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Continent {
    Africa,
    Antarctica,
    Asia,
    Europe,
    NorthAmerica,
    Oceania,
    SouthAmerica,
}

impl Continent {
    pub fn from_code(code: &str) -> Option<Continent> {
        Some(match code {
            "AF" => Continent::Africa,
            "AN" => Continent::Antarctica,
            "AS" => Continent::Asia,
            "EU" => Continent::Europe,
            "NA" => Continent::NorthAmerica,
            "OC" => Continent::Oceania,
            "SA" => Continent::SouthAmerica,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Continent::Africa => "AF",
            Continent::Antarctica => "AN",
            Continent::Asia => "AS",
            Continent::Europe => "EU",
            Continent::NorthAmerica => "NA",
            Continent::Oceania => "OC",
            Continent::SouthAmerica => "SA",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoIp {
    pub database: PathBuf,
    pub reload: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Clients {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    Enforce,
    Detect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownCountry {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub mode: AccessMode,
    pub embargo_countries: Vec<CountryCode>,
    pub unknown_country: UnknownCountry,
    pub deny_cidrs: Vec<IpNet>,
    pub allow_cidrs: Vec<IpNet>,
    pub read_only: bool,
    /// Glob patterns of public repositories; `*` matches any run of characters, `/` included.
    pub repositories_allow: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub security_events: SecurityEvents,
    pub auto_block: Option<AutoBlock>,
}

/// Per client address, within `window`: how many distinct repository names refused or absent
/// (scanning), failed token requests (credential guessing) and embargo refusals make an event.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvents {
    pub window: Duration,
    pub repository_scan: u32,
    pub failed_token_requests: u32,
    pub embargo_hits: u32,
}

/// After `after` security events of one address within `window`, refuse it for `duration`
/// (never an address of `allow_cidrs`).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoBlock {
    pub after: u32,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
    /// IPv6 clients share a bucket per prefix of this length (0..=128, default
    /// [`DEFAULT_IPV6_PREFIX`](crate::DEFAULT_IPV6_PREFIX)): one subscriber usually holds a
    /// whole /64 and could otherwise rotate through it. IPv4 clients have a bucket each.
    pub ipv6_prefix: u8,
    pub exempt_cidrs: Vec<IpNet>,
}

/// `blob_cache`: blobs served from a digest-verified disk cache, only to requests the registry has
/// just authorized (see docs/blob-cache.md).
#[derive(Debug, Clone, PartialEq)]
pub struct BlobCache {
    /// Directory of the cache (resolved like other paths in the file: relative to the file's directory).
    pub path: PathBuf,
    /// Disk budget in bytes for complete entries.
    pub max_size: u64,
    /// Blobs smaller than this (by the upstream's Content-Length) are not cached.
    pub min_blob_size: u64,
    /// File holding the HMAC key (at least 32 bytes of content) that signs the cache tokens put in rewritten blob redirects; every replica behind one load balancer must share it.
    pub key_file: PathBuf,
    /// How long a rewritten blob redirect may serve from the cache, at most (also never past the SAS `se=` of the URL).
    pub authorization_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub access_log: AccessLog,
}
