//! Raw file structs → validated [`Config`]. Every check runs even after others failed, so that one
//! `check` run lists every mistake in the file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use registry_edge_rewrite::{
    ActionSpec, ConditionSpec, DerivedMapping, DerivedSpec, Engine, ErrorAt, PublicTarget,
    RuleSpec, Side, StatusRange, Subject, UpstreamAuthority, Var,
};

use crate::error::ConfigError;
use crate::files;
use crate::model::*;
use crate::position::PositionIndex;
use crate::raw::*;
use crate::values::{
    parse_cidr, parse_duration, parse_public_host, parse_size, parse_status, Authority, CountryCode,
};

pub const DEFAULT_PID_FILE: &str = "/run/registry-edge/registry-edge.pid";
pub const DEFAULT_UPGRADE_SOCK: &str = "/run/registry-edge/upgrade.sock";
pub const DEFAULT_TOKEN_PATHS: [&str; 2] = ["/oauth2/token", "/oauth2/exchange"];
/// `access.rate_limit.ipv6_prefix` when absent: a /64, what one IPv6 subscriber is given.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// `blob_cache.min_blob_size` when absent.
pub const DEFAULT_MIN_BLOB_SIZE: u64 = 1 << 20;
/// The smallest `blob_cache.max_size`: below it the cache could hold next to nothing.
pub const MIN_BLOB_CACHE_SIZE: u64 = 1 << 20;
/// `blob_cache.authorization_ttl` when absent.
pub const DEFAULT_AUTHORIZATION_TTL: Duration = Duration::from_secs(600);
/// The range of `blob_cache.authorization_ttl`.
const AUTHORIZATION_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// pingora itself refuses request headers over 1 MiB with a bare 400 before any hook runs.
const MAX_HEADER_LIMIT: usize = 1024 * 1024;

/// Whether files named by the configuration (certificates, CA, GeoIP database, the blob cache's
/// key file and directory) are opened.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub check_files: bool,
}

pub struct Validator<'a> {
    index: &'a PositionIndex,
    options: Options,
    base_dir: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub fn new(index: &'a PositionIndex, options: Options, base_dir: PathBuf) -> Self {
        Validator {
            index,
            options,
            base_dir,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        // One error, one line: multi-line messages (regex syntax errors) are folded.
        let message: String = message.into();
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let position = self.index.find(&path);
        self.errors.push(ConfigError {
            path,
            position,
            message,
        });
    }

    /// Runs `parse`, recording its error at `path`.
    fn check<T>(&mut self, path: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.err(path, e);
                    default
                }
            },
        }
    }

    /// A duration that must be above zero.
    fn positive_duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(path, text, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    /// Relative paths in the file are relative to the file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    fn cidrs(&mut self, path: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            if let Some(n) = self.check(&format!("{path}[{i}]"), parse_cidr(c)) {
                out.push(n);
            }
        }
        out
    }

    fn countries(&mut self, path: &str, list: &[String]) -> Vec<CountryCode> {
        let mut out: Vec<CountryCode> = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if let Some(code) = self.check(&p, CountryCode::parse(c)) {
                if out.contains(&code) {
                    self.err(p, format!("{code} is listed twice"));
                } else {
                    out.push(code);
                }
            }
        }
        out
    }

    pub fn config(&mut self, raw: RawConfig, source: &str) -> Option<Config> {
        if raw.version != 1 {
            self.err(
                "version",
                format!(
                    "version {} is not supported: this registry-edge reads version 1",
                    raw.version
                ),
            );
        }
        let server = self.server(&raw.server);
        let listeners = self.listeners(&raw.listeners);
        let admin = raw.admin.as_ref().and_then(|a| {
            let address = self.check("admin.address", parse_socket_addr(&a.address))?;
            if listeners.iter().any(|l| l.address == address) {
                self.err("admin.address", format!("{address} is also a listener"));
            }
            Some(Admin { address })
        });
        let registry = self.registry(&raw.registry);
        let regions = self.regions(&raw.regions);
        self.region_names(&raw.registry, &regions, raw.local_region.as_deref());
        let geoip = raw.geoip.as_ref().map(|g| self.geoip(g));
        let clients = Clients {
            trusted_proxies: self.cidrs("clients.trusted_proxies", &raw.clients.trusted_proxies),
        };
        let access = self.access(&raw.access);
        let blob_cache = raw.blob_cache.as_ref().map(|b| self.blob_cache(b));
        if geoip.is_none() {
            if !access.embargo_countries.is_empty() {
                self.err(
                    "access.embargo.countries",
                    "an embargo needs a GeoIP database: set geoip.database",
                );
            }
            if access.unknown_country == UnknownCountry::Deny {
                self.err(
                    "access.embargo.unknown_country",
                    "`deny` without geoip.database would refuse every client",
                );
            }
            if regions
                .iter()
                .any(|r| !r.countries.is_empty() || !r.continents.is_empty())
            {
                self.err(
                    "regions",
                    "choosing a region by country needs a GeoIP database: set geoip.database",
                );
            }
        }
        let rewrites = self.rewrites(&raw.rewrites);
        let engine = self.engine(&rewrites, &raw.rewrites, registry.as_ref());
        let logging = self.logging(&raw.logging);

        if !self.errors.is_empty() {
            return None;
        }
        Some(Config {
            source: source.to_owned(),
            server,
            listeners,
            admin,
            registry: registry?,
            local_region: raw.local_region.clone(),
            regions,
            geoip,
            clients,
            access,
            blob_cache,
            rewrites,
            engine: Arc::new(engine?),
            logging,
        })
    }

    fn server(&mut self, raw: &RawServer) -> Server {
        let threads = raw.threads.unwrap_or(1);
        if threads == 0 || threads > 1024 {
            self.err("server.threads", "must be between 1 and 1024");
        }
        Server {
            threads: threads.clamp(1, 1024),
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period.as_deref(),
                Duration::from_secs(30),
            ),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                raw.graceful_shutdown_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            pid_file: PathBuf::from(raw.pid_file.as_deref().unwrap_or(DEFAULT_PID_FILE)),
            upgrade_sock: PathBuf::from(
                raw.upgrade_sock.as_deref().unwrap_or(DEFAULT_UPGRADE_SOCK),
            ),
            http1: match raw.http1.as_deref() {
                None | Some("pingora") => Http1Session::Pingora,
                Some("lean") => Http1Session::Lean,
                Some(other) => {
                    self.err(
                        "server.http1",
                        format!("`{other}` is not `pingora` or `lean`"),
                    );
                    Http1Session::Pingora
                }
            },
        }
    }

    fn listeners(&mut self, raw: &[RawListener]) -> Vec<Listener> {
        if raw.is_empty() {
            self.err("listeners", "at least one listener is needed");
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let p = format!("listeners[{i}]");
            let address = self.check(&format!("{p}.address"), parse_socket_addr(&l.address));
            if let Some(a) = address {
                if !seen.insert(a) {
                    self.err(format!("{p}.address"), format!("{a} is listed twice"));
                }
            }
            let tls = l.tls.as_ref().map(|t| {
                if t.certificates.is_empty() {
                    self.err(
                        format!("{p}.tls.certificates"),
                        "a TLS listener needs at least one certificate",
                    );
                }
                let certificates = t
                    .certificates
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let cp = format!("{p}.tls.certificates[{j}]");
                        let pair = CertificatePair {
                            cert: self.resolve(&c.cert),
                            key: self.resolve(&c.key),
                        };
                        if self.options.check_files {
                            if let Err(e) = files::check_certificate(&pair.cert) {
                                self.err(format!("{cp}.cert"), e);
                            }
                            if let Err(e) = files::check_private_key(&pair.key) {
                                self.err(format!("{cp}.key"), e);
                            }
                        }
                        pair
                    })
                    .collect();
                ListenerTls { certificates }
            });
            let public_scheme = match l.public_scheme.as_deref() {
                None if tls.is_some() => Scheme::Https,
                None => Scheme::Http,
                Some("https") => Scheme::Https,
                Some("http") => Scheme::Http,
                Some(other) => {
                    self.err(
                        format!("{p}.public_scheme"),
                        format!("`{other}` is not `http` or `https`"),
                    );
                    Scheme::Http
                }
            };
            if l.redirect_to_https && tls.is_some() {
                self.err(
                    format!("{p}.redirect_to_https"),
                    "a TLS listener cannot redirect to https: it already is",
                );
            }
            let timeouts = Timeouts {
                header_read: self.positive_duration(
                    &format!("{p}.timeouts.header_read"),
                    l.timeouts.header_read.as_deref(),
                    Duration::from_secs(10),
                ),
                idle: self.positive_duration(
                    &format!("{p}.timeouts.idle"),
                    l.timeouts.idle.as_deref(),
                    Duration::from_secs(60),
                ),
                write: self.positive_duration(
                    &format!("{p}.timeouts.write"),
                    l.timeouts.write.as_deref(),
                    Duration::from_secs(60),
                ),
            };
            let max_request_header_bytes = l.max_request_header_bytes.unwrap_or(32 * 1024);
            if !(1024..MAX_HEADER_LIMIT).contains(&max_request_header_bytes) {
                self.err(
                    format!("{p}.max_request_header_bytes"),
                    format!("must be between 1024 and {}", MAX_HEADER_LIMIT - 1),
                );
            }
            let max_requests_per_connection = l.max_requests_per_connection.unwrap_or(1000);
            if max_requests_per_connection == 0 {
                self.err(
                    format!("{p}.max_requests_per_connection"),
                    "must be at least 1",
                );
            }
            let max_concurrent_streams = l.max_concurrent_streams.unwrap_or(100);
            if !(1..=1000).contains(&max_concurrent_streams) {
                self.err(
                    format!("{p}.max_concurrent_streams"),
                    "must be between 1 and 1000",
                );
            }
            if let Some(address) = address {
                out.push(Listener {
                    address,
                    tls,
                    public_scheme,
                    timeouts,
                    max_request_header_bytes,
                    max_requests_per_connection,
                    max_concurrent_streams,
                    redirect_to_https: l.redirect_to_https,
                });
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn upstream(
        &mut self,
        path: &str,
        endpoint_key: &str,
        endpoint: &str,
        tls: bool,
        ca_file: Option<&str>,
        peers: &[String],
        health: Option<&RawHealthCheck>,
        default_tcp: bool,
        timeouts: (Duration, Duration),
    ) -> Option<Upstream> {
        let authority = self.check(
            &format!("{path}.{endpoint_key}"),
            Authority::parse(endpoint, tls),
        );
        let ca_file = ca_file.map(|c| {
            let resolved = self.resolve(c);
            if self.options.check_files {
                if let Err(e) = files::check_ca_file(&resolved) {
                    self.err(format!("{path}.ca_file"), e);
                }
            }
            resolved
        });
        let mut parsed_peers = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            if let Some(a) = self.check(&format!("{path}.peers[{i}]"), parse_socket_addr(peer)) {
                parsed_peers.push(a);
            }
        }
        let health_check = self.health_check(&format!("{path}.health_check"), health, default_tcp);
        Some(Upstream {
            authority: authority?,
            tls,
            ca_file,
            peers: parsed_peers,
            health_check,
            connect_timeout: timeouts.0,
            read_timeout: timeouts.1,
        })
    }

    fn health_check(
        &mut self,
        path: &str,
        raw: Option<&RawHealthCheck>,
        default_tcp: bool,
    ) -> HealthCheck {
        let default = RawHealthCheck::default();
        let raw = raw.unwrap_or(&default);
        let tcp = raw.tcp.unwrap_or(default_tcp && raw.path.is_none());
        let kind = if tcp {
            if raw.path.is_some() || raw.healthy_statuses.is_some() {
                self.err(
                    format!("{path}.tcp"),
                    "a TCP probe has no path or statuses: remove them or set tcp: false",
                );
            }
            HealthCheckKind::Tcp
        } else {
            let probe_path = raw.path.clone().unwrap_or_else(|| "/v2/".into());
            if !probe_path.starts_with('/') {
                self.err(format!("{path}.path"), "must start with /");
            }
            let healthy_statuses = match &raw.healthy_statuses {
                None => vec![
                    StatusRange { from: 200, to: 399 },
                    StatusRange { from: 401, to: 401 },
                ],
                Some(list) => {
                    if list.is_empty() {
                        self.err(format!("{path}.healthy_statuses"), "must not be empty");
                    }
                    self.statuses(&format!("{path}.healthy_statuses"), list)
                }
            };
            HealthCheckKind::Http {
                path: probe_path,
                healthy_statuses,
            }
        };
        let interval = self.positive_duration(
            &format!("{path}.interval"),
            raw.interval.as_deref(),
            Duration::from_secs(10),
        );
        let timeout = self.positive_duration(
            &format!("{path}.timeout"),
            raw.timeout.as_deref(),
            Duration::from_secs(2),
        );
        if timeout > interval {
            self.err(format!("{path}.timeout"), "must not exceed the interval");
        }
        let unhealthy_after = raw.unhealthy_after.unwrap_or(3);
        let healthy_after = raw.healthy_after.unwrap_or(2);
        for (key, v) in [
            ("unhealthy_after", unhealthy_after),
            ("healthy_after", healthy_after),
        ] {
            if v == 0 {
                self.err(format!("{path}.{key}"), "must be at least 1");
            }
        }
        HealthCheck {
            kind,
            interval,
            timeout,
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    fn statuses(&mut self, path: &str, list: &[RawStatus]) -> Vec<StatusRange> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let r = match s {
                RawStatus::Code(n) => parse_status(Some(*n), None),
                RawStatus::Text(t) => parse_status(None, Some(t)),
            };
            if let Some(r) = self.check(&format!("{path}[{i}]"), r) {
                out.push(r);
            }
        }
        out
    }

    fn registry(&mut self, raw: &RawRegistry) -> Option<Registry> {
        let tls = raw.tls.unwrap_or(true);
        let connect_timeout = self.positive_duration(
            "registry.connect_timeout",
            raw.connect_timeout.as_deref(),
            Duration::from_secs(5),
        );
        let read_timeout = self.positive_duration(
            "registry.read_timeout",
            raw.read_timeout.as_deref(),
            Duration::from_secs(60),
        );
        let timeouts = (connect_timeout, read_timeout);
        let public_host = self.check("registry.public_host", parse_public_host(&raw.public_host));
        let login = self.upstream(
            "registry",
            "login_server",
            &raw.login_server,
            tls,
            raw.ca_file.as_deref(),
            &raw.peers,
            raw.health_check.as_ref(),
            false,
            timeouts,
        );
        let token_server = raw.token_server.as_deref().and_then(|t| {
            // Its peers come from resolving its name. A token server need not serve `/v2/`, so
            // it is probed by connection, not with the login server's HTTP probe.
            let probe = RawHealthCheck {
                tcp: Some(true),
                interval: raw.health_check.as_ref().and_then(|h| h.interval.clone()),
                timeout: raw.health_check.as_ref().and_then(|h| h.timeout.clone()),
                unhealthy_after: raw.health_check.as_ref().and_then(|h| h.unhealthy_after),
                healthy_after: raw.health_check.as_ref().and_then(|h| h.healthy_after),
                ..RawHealthCheck::default()
            };
            self.upstream(
                "registry",
                "token_server",
                t,
                tls,
                raw.ca_file.as_deref(),
                &[],
                Some(&probe),
                true,
                timeouts,
            )
        });
        let token_paths: Vec<String> = raw
            .token_paths
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_PATHS.iter().map(|s| s.to_string()).collect());
        for (i, t) in token_paths.iter().enumerate() {
            if !t.starts_with('/') || t.contains(['?', '#']) {
                self.err(
                    format!("registry.token_paths[{i}]"),
                    format!("`{t}` is not a path (it must start with / and carry no query)"),
                );
            } else if !canonical_token_path(t) {
                // The request gate matches token paths exactly and refuses any path outside
                // this alphabet: such a token path could never be reached.
                self.err(
                    format!("registry.token_paths[{i}]"),
                    format!(
                        "`{t}` must be written with letters, digits and `/ . _ - : = +` only, \
                         without empty, `.` or `..` segments"
                    ),
                );
            }
            if t == "/v2" || t.starts_with("/v2/") {
                self.err(
                    format!("registry.token_paths[{i}]"),
                    "a token path cannot be under /v2/, where the registry API lives",
                );
            }
        }

        let mut regional = Vec::new();
        let mut seen_regions = HashSet::new();
        for (i, r) in raw.regional_endpoints.iter().enumerate() {
            let p = format!("registry.regional_endpoints[{i}]");
            self.region_name(&format!("{p}.region"), &r.region);
            if !seen_regions.insert(r.region.clone()) {
                self.err(
                    format!("{p}.region"),
                    format!("region `{}` has two regional endpoints", r.region),
                );
            }
            let up = self.upstream(
                &p,
                "endpoint",
                &r.endpoint,
                r.tls.unwrap_or(tls),
                r.ca_file.as_deref().or(raw.ca_file.as_deref()),
                &r.peers,
                r.health_check.as_ref().or(raw.health_check.as_ref()),
                false,
                timeouts,
            );
            if let Some(upstream) = up {
                regional.push(RegionalEndpoint {
                    region: r.region.clone(),
                    upstream,
                });
            }
        }

        let mut data = Vec::new();
        let mut seen_regions = HashSet::new();
        let mut host_count: HashMap<String, usize> = HashMap::new();
        for (i, d) in raw.data_endpoints.iter().enumerate() {
            let p = format!("registry.data_endpoints[{i}]");
            self.region_name(&format!("{p}.region"), &d.region);
            if !seen_regions.insert(d.region.clone()) {
                self.err(
                    format!("{p}.region"),
                    format!("region `{}` has two data endpoints", d.region),
                );
            }
            let dhost = self.check(
                &format!("{p}.public_host"),
                parse_public_host(&d.public_host),
            );
            // A subdomain of the login host is accepted: the edge never forwards
            // `Authorization` or cookies to a data endpoint (`check` notes it).
            if let (Some(dh), Some(lh)) = (&dhost, &public_host) {
                if dh == lh {
                    self.err(
                        format!("{p}.public_host"),
                        format!(
                            "`{dh}` must not be the login public host: data URLs and registry \
                             API paths would share one name"
                        ),
                    );
                }
            }
            let up = self.upstream(
                &p,
                "endpoint",
                &d.endpoint,
                d.tls.unwrap_or(tls),
                d.ca_file.as_deref().or(raw.ca_file.as_deref()),
                &d.peers,
                d.health_check.as_ref(),
                true,
                timeouts,
            );
            if let (Some(upstream), Some(public_host)) = (up, dhost) {
                *host_count.entry(public_host.clone()).or_default() += 1;
                data.push(DataEndpoint {
                    region: d.region.clone(),
                    upstream,
                    public_host,
                    shared_public_host: false,
                });
            }
        }
        for d in &mut data {
            d.shared_public_host = host_count.get(&d.public_host).copied().unwrap_or(0) > 1;
        }

        // Derived rewrites map each upstream authority to one public name: two upstreams with
        // the same authority would make that mapping ambiguous.
        let mut authorities: Vec<(String, &Authority)> = Vec::new();
        if let Some(l) = &login {
            authorities.push(("registry.login_server".into(), &l.authority));
        }
        if let Some(t) = &token_server {
            authorities.push(("registry.token_server".into(), &t.authority));
        }
        for (i, r) in raw.regional_endpoints.iter().enumerate() {
            if let Some(e) = regional.iter().find(|e| e.region == r.region) {
                authorities.push((
                    format!("registry.regional_endpoints[{i}].endpoint"),
                    &e.upstream.authority,
                ));
            }
        }
        for (i, d) in raw.data_endpoints.iter().enumerate() {
            if let Some(e) = data.iter().find(|e| e.region == d.region) {
                authorities.push((
                    format!("registry.data_endpoints[{i}].endpoint"),
                    &e.upstream.authority,
                ));
            }
        }
        let mut errs = Vec::new();
        for (i, (path, a)) in authorities.iter().enumerate() {
            if let Some((first, _)) = authorities[..i].iter().find(|(_, b)| b == a) {
                errs.push((
                    path.clone(),
                    format!("{a} is already the upstream of {first}"),
                ));
            }
        }
        let mut publics: Vec<&str> = data.iter().map(|d| d.public_host.as_str()).collect();
        if let Some(h) = &public_host {
            publics.push(h);
        }
        for (path, a) in &authorities {
            if publics.contains(&a.host.as_str()) {
                errs.push((
                    path.clone(),
                    format!(
                        "`{}` is also a public host: the edge would proxy to itself",
                        a.host
                    ),
                ));
            }
        }
        for (p, m) in errs {
            self.err(p, m);
        }

        let unmapped_redirects = match raw.unmapped_redirects.as_deref() {
            None | Some("refuse") => UnmappedRedirects::Refuse,
            Some("pass") => UnmappedRedirects::Pass,
            Some(other) => {
                self.err(
                    "registry.unmapped_redirects",
                    format!("`{other}` is not `refuse` or `pass`"),
                );
                UnmappedRedirects::Refuse
            }
        };

        Some(Registry {
            login: login?,
            public_host: public_host?,
            token_server,
            token_paths,
            regional_endpoints: regional,
            data_endpoints: data,
            unmapped_redirects,
            hide_server_headers: raw.hide_server_headers.unwrap_or(true),
        })
    }

    fn region_name(&mut self, path: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.err(
                path,
                format!(
                    "`{name}` is not a region name (lower-case letters, digits and -, as eastus)"
                ),
            );
        }
    }

    fn regions(&mut self, raw: &[RawRegionRule]) -> Vec<RegionRule> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let p = format!("regions[{i}]");
            if r.countries.is_empty() && r.continents.is_empty() {
                self.err(
                    p.clone(),
                    "names no countries and no continents: it would never match",
                );
            }
            let countries = self.countries(&format!("{p}.countries"), &r.countries);
            let mut continents = Vec::new();
            for (j, c) in r.continents.iter().enumerate() {
                match Continent::from_code(&c.to_ascii_uppercase()) {
                    Some(k) => continents.push(k),
                    None => self.err(
                        format!("{p}.continents[{j}]"),
                        format!("`{c}` is not a continent code (AF, AN, AS, EU, NA, OC, SA)"),
                    ),
                }
            }
            out.push(RegionRule {
                region: r.region.clone(),
                countries,
                continents,
            });
        }
        out
    }

    /// Region names are checked against the file as written, so that a broken endpoint elsewhere
    /// does not hide a misspelt region.
    fn region_names(&mut self, raw: &RawRegistry, regions: &[RegionRule], local: Option<&str>) {
        let known: HashSet<&str> = raw
            .regional_endpoints
            .iter()
            .map(|r| r.region.as_str())
            .chain(raw.data_endpoints.iter().map(|d| d.region.as_str()))
            .collect();
        let mut list: Vec<&str> = known.iter().copied().collect();
        list.sort_unstable();
        let hint = if list.is_empty() {
            "no endpoint declares a region".to_string()
        } else {
            format!("known regions: {}", list.join(", "))
        };
        let mut errs = Vec::new();
        for (i, r) in regions.iter().enumerate() {
            if !known.contains(r.region.as_str()) {
                errs.push((
                    format!("regions[{i}].region"),
                    format!("no endpoint has region `{}` ({hint})", r.region),
                ));
            }
        }
        if let Some(l) = local {
            if !known.contains(l) {
                errs.push((
                    "local_region".to_string(),
                    format!("no endpoint has region `{l}` ({hint})"),
                ));
            }
        }
        for (p, m) in errs {
            self.err(p, m);
        }
    }

    fn geoip(&mut self, raw: &RawGeoip) -> GeoIp {
        let database = self.resolve(&raw.database);
        if self.options.check_files {
            if let Err(e) = files::check_geoip(&database) {
                self.err("geoip.database", e);
            }
        }
        GeoIp {
            database,
            reload: raw.reload.unwrap_or(true),
        }
    }

    fn access(&mut self, raw: &RawAccess) -> Access {
        let mode = match raw.mode.as_deref() {
            None | Some("enforce") => AccessMode::Enforce,
            Some("detect") => AccessMode::Detect,
            Some(other) => {
                self.err(
                    "access.mode",
                    format!("`{other}` is not `enforce` or `detect`"),
                );
                AccessMode::Enforce
            }
        };
        let unknown_country = match raw.embargo.unknown_country.as_deref() {
            None | Some("allow") => UnknownCountry::Allow,
            Some("deny") => UnknownCountry::Deny,
            Some(other) => {
                self.err(
                    "access.embargo.unknown_country",
                    format!("`{other}` is not `allow` or `deny`"),
                );
                UnknownCountry::Allow
            }
        };
        let embargo_countries = self.countries("access.embargo.countries", &raw.embargo.countries);
        let deny_cidrs = self.cidrs("access.deny_cidrs", &raw.deny_cidrs);
        let allow_cidrs = self.cidrs("access.allow_cidrs", &raw.allow_cidrs);
        let repositories_allow = match &raw.repositories {
            None => vec!["*".to_string()],
            Some(r) => {
                for (i, g) in r.allow.iter().enumerate() {
                    if let Err(e) = check_repository_glob(g) {
                        self.err(format!("access.repositories.allow[{i}]"), e);
                    }
                }
                r.allow.clone()
            }
        };
        let rate_limit = raw.rate_limit.as_ref().map(|r| {
            if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
                self.err(
                    "access.rate_limit.requests_per_second",
                    "must be a number greater than zero",
                );
            }
            if r.burst == 0 {
                self.err("access.rate_limit.burst", "must be at least 1");
            }
            let ipv6_prefix = match r.ipv6_prefix {
                None => DEFAULT_IPV6_PREFIX,
                Some(bits) => u8::try_from(bits)
                    .ok()
                    .filter(|b| *b <= 128)
                    .unwrap_or_else(|| {
                        self.err(
                            "access.rate_limit.ipv6_prefix",
                            format!("{bits} is not a prefix length from 0 to 128 (default 64: one bucket per /64)"),
                        );
                        DEFAULT_IPV6_PREFIX
                    }),
            };
            RateLimit {
                requests_per_second: r.requests_per_second,
                burst: r.burst,
                ipv6_prefix,
                exempt_cidrs: self.cidrs("access.rate_limit.exempt_cidrs", &r.exempt_cidrs),
            }
        });
        let se = raw.security_events.as_ref();
        let threshold = |v: &mut Self, key: &str, value: Option<u32>, default: u32| {
            let n = value.unwrap_or(default);
            if n == 0 {
                v.err(
                    format!("access.security_events.{key}"),
                    "must be at least 1",
                );
                return default;
            }
            n
        };
        let security_events = SecurityEvents {
            window: self.positive_duration(
                "access.security_events.window",
                se.and_then(|s| s.window.as_deref()),
                Duration::from_secs(60),
            ),
            repository_scan: threshold(
                self,
                "repository_scan",
                se.and_then(|s| s.repository_scan),
                20,
            ),
            failed_token_requests: threshold(
                self,
                "failed_token_requests",
                se.and_then(|s| s.failed_token_requests),
                10,
            ),
            embargo_hits: threshold(self, "embargo_hits", se.and_then(|s| s.embargo_hits), 20),
        };
        let auto_block = raw.auto_block.as_ref().map(|a| {
            if a.after == 0 {
                self.err("access.auto_block.after", "must be at least 1");
            }
            AutoBlock {
                after: a.after.max(1),
                window: self.positive_duration(
                    "access.auto_block.window",
                    Some(&a.window),
                    Duration::from_secs(600),
                ),
                duration: self.positive_duration(
                    "access.auto_block.duration",
                    Some(&a.duration),
                    Duration::from_secs(900),
                ),
            }
        });
        Access {
            security_events,
            auto_block,
            mode,
            embargo_countries,
            unknown_country,
            deny_cidrs,
            allow_cidrs,
            read_only: raw.read_only.unwrap_or(false),
            repositories_allow,
            rate_limit,
        }
    }

    fn blob_cache(&mut self, raw: &RawBlobCache) -> BlobCache {
        let path_given = !raw.path.trim().is_empty();
        let key_given = !raw.key_file.trim().is_empty();
        for (key, given) in [("path", path_given), ("key_file", key_given)] {
            if !given {
                self.err(format!("blob_cache.{key}"), "must not be empty");
            }
        }
        let path = self.resolve(&raw.path);
        let key_file = self.resolve(&raw.key_file);
        let max_text = raw.max_size.0.trim();
        let max_size = self.check("blob_cache.max_size", parse_size(max_text));
        if max_size.is_some_and(|n| n < MIN_BLOB_CACHE_SIZE) {
            self.err(
                "blob_cache.max_size",
                format!("`{max_text}` is below the minimum of 1MiB (1048576 bytes)"),
            );
        }
        let min_blob_size = match &raw.min_blob_size {
            None => Some(DEFAULT_MIN_BLOB_SIZE),
            Some(t) => {
                let size = self.check("blob_cache.min_blob_size", parse_size(&t.0));
                if let (Some(min), Some(max)) = (size, max_size) {
                    if min > max {
                        self.err(
                            "blob_cache.min_blob_size",
                            format!(
                                "`{}` is more than max_size (`{max_text}`): no blob could be cached",
                                t.0.trim()
                            ),
                        );
                    }
                }
                size
            }
        };
        let authorization_ttl = self.duration(
            "blob_cache.authorization_ttl",
            raw.authorization_ttl.as_deref(),
            DEFAULT_AUTHORIZATION_TTL,
        );
        if !AUTHORIZATION_TTL_RANGE.contains(&authorization_ttl) {
            self.err("blob_cache.authorization_ttl", "must be between 1s and 1h");
        }
        // Clearing a cache (`rm -rf` of its directory) must not take the shared key with it.
        if path_given && key_given && key_file.starts_with(&path) {
            self.err(
                "blob_cache.key_file",
                format!(
                    "`{}` is inside blob_cache.path: clearing the cache would remove the key; keep it elsewhere",
                    key_file.display()
                ),
            );
        }
        if self.options.check_files {
            if key_given {
                if let Err(e) = files::check_blob_cache_key(&key_file) {
                    self.err("blob_cache.key_file", e);
                }
            }
            if path_given {
                if let Err(e) = files::check_blob_cache_dir(&path) {
                    self.err("blob_cache.path", e);
                }
            }
        }
        BlobCache {
            path,
            max_size: max_size.unwrap_or(MIN_BLOB_CACHE_SIZE),
            min_blob_size: min_blob_size.unwrap_or(DEFAULT_MIN_BLOB_SIZE),
            key_file,
            authorization_ttl,
        }
    }

    fn rewrites(&mut self, raw: &[RawRewrite]) -> Vec<RuleSpec> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let p = format!("rewrites[{i}]");
            if r.name.trim().is_empty() {
                self.err(format!("{p}.name"), "must not be empty");
            } else if !names.insert(r.name.clone()) {
                self.err(
                    format!("{p}.name"),
                    format!("`{}` names another rule too", r.name),
                );
            } else if r.name.starts_with("registry:") {
                self.err(
                    format!("{p}.name"),
                    "names starting with `registry:` are kept for the derived rules",
                );
            }
            let (conds, cond_path): (Vec<&RawCondition>, Box<dyn Fn(usize) -> String>) =
                match (&r.condition, &r.conditions) {
                    (Some(_), Some(_)) => {
                        self.err(
                            format!("{p}.conditions"),
                            "write `condition` or `conditions`, not both",
                        );
                        (Vec::new(), Box::new(|_| String::new()))
                    }
                    (Some(c), None) => {
                        let pp = p.clone();
                        (vec![c], Box::new(move |_| format!("{pp}.condition")))
                    }
                    (None, Some(cs)) => {
                        let pp = p.clone();
                        (
                            cs.iter().collect(),
                            Box::new(move |j| format!("{pp}.conditions[{j}]")),
                        )
                    }
                    (None, None) => (Vec::new(), Box::new(|_| String::new())),
                };
            let (acts, act_path): (Vec<&RawAction>, Box<dyn Fn(usize) -> String>) =
                match (&r.action, &r.actions) {
                    (Some(_), Some(_)) => {
                        self.err(
                            format!("{p}.actions"),
                            "write `action` or `actions`, not both",
                        );
                        (Vec::new(), Box::new(|_| String::new()))
                    }
                    (Some(a), None) => {
                        let pp = p.clone();
                        (vec![a], Box::new(move |_| format!("{pp}.action")))
                    }
                    (None, Some(a)) => {
                        let pp = p.clone();
                        (
                            a.iter().collect(),
                            Box::new(move |j| format!("{pp}.actions[{j}]")),
                        )
                    }
                    (None, None) => {
                        self.err(p.clone(), "a rule needs an `action` (or `actions`)");
                        (Vec::new(), Box::new(|_| String::new()))
                    }
                };
            let mut conditions = Vec::new();
            let mut statuses = Vec::new();
            for (j, c) in conds.iter().enumerate() {
                let cp = cond_path(j);
                let subject = match (&c.header, &c.request_header, &c.variable) {
                    (Some(h), None, None) => Some(Subject::Header {
                        side: Side::Response,
                        name: h.clone(),
                    }),
                    (None, Some(h), None) => Some(Subject::Header {
                        side: Side::Request,
                        name: h.clone(),
                    }),
                    (None, None, Some(v)) => match Var::from_name(v) {
                        Some(var) => Some(Subject::Var(var)),
                        None => {
                            self.err(
                                format!("{cp}.variable"),
                                format!(
                                    "`{v}` is not a variable (client_ip, host, request_uri, scheme, public_origin)"
                                ),
                            );
                            None
                        }
                    },
                    _ => {
                        self.err(
                            cp.clone(),
                            "a condition names exactly one of `header`, `request_header`, `variable`",
                        );
                        None
                    }
                };
                statuses.extend(self.statuses(&format!("{cp}.statuses"), &c.statuses));
                if let Some(subject) = subject {
                    conditions.push(ConditionSpec {
                        subject,
                        pattern: c.pattern.clone(),
                        case_sensitive: c.case_sensitive,
                        negate: c.negate,
                    });
                }
            }
            let mut actions = Vec::new();
            for (j, a) in acts.iter().enumerate() {
                let ap = act_path(j);
                let named = [
                    (&a.set_header, true, Side::Response),
                    (&a.delete_header, false, Side::Response),
                    (&a.set_request_header, true, Side::Request),
                    (&a.delete_request_header, false, Side::Request),
                ];
                let chosen: Vec<_> = named.iter().filter(|(h, ..)| h.is_some()).collect();
                if chosen.len() != 1 {
                    self.err(
                        ap.clone(),
                        "an action names exactly one of `set_header`, `delete_header`, `set_request_header`, `delete_request_header`",
                    );
                    continue;
                }
                let (header, is_set, side) = chosen[0];
                let header = header.as_deref().unwrap_or_default().to_owned();
                match (is_set, &a.value) {
                    (true, Some(v)) => actions.push(ActionSpec::Set {
                        side: *side,
                        header,
                        value: v.clone(),
                    }),
                    (true, None) => self.err(ap.clone(), "a set action needs a `value`"),
                    (false, None) => actions.push(ActionSpec::Delete {
                        side: *side,
                        header,
                    }),
                    (false, Some(_)) => {
                        self.err(format!("{ap}.value"), "a delete action takes no `value`")
                    }
                }
            }
            out.push(RuleSpec {
                name: r.name.clone(),
                conditions,
                statuses,
                actions,
            });
        }
        out
    }

    /// Compiles user and derived rules; maps the engine's errors back onto YAML paths.
    fn engine(
        &mut self,
        rules: &[RuleSpec],
        raw: &[RawRewrite],
        registry: Option<&Registry>,
    ) -> Option<Engine> {
        let derived = registry.map(derived_spec);
        match Engine::compile(rules, derived.as_ref()) {
            Ok(e) => Some(e),
            Err(errors) => {
                for e in errors {
                    let Some(r) = raw.get(e.rule) else {
                        self.err("registry", format!("derived rewrite rules: {}", e.message));
                        continue;
                    };
                    let base = format!("rewrites[{}]", e.rule);
                    let cond = |j: usize| match r.condition {
                        Some(_) => format!("{base}.condition"),
                        None => format!("{base}.conditions[{j}]"),
                    };
                    let act = |j: usize| match r.action {
                        Some(_) => format!("{base}.action"),
                        None => format!("{base}.actions[{j}]"),
                    };
                    let path = match e.at {
                        ErrorAt::Rule => base.clone(),
                        ErrorAt::Condition(j) => cond(j),
                        ErrorAt::ConditionPattern(j) => format!("{}.pattern", cond(j)),
                        ErrorAt::Action(j) => act(j),
                        ErrorAt::ActionValue(j) => format!("{}.value", act(j)),
                    };
                    self.err(path, e.message);
                }
                None
            }
        }
    }

    fn logging(&mut self, raw: &RawLogging) -> Logging {
        let access_log = match raw.access_log.as_deref() {
            None | Some("stdout") => AccessLog::Stdout,
            Some("stderr") => AccessLog::Stderr,
            Some("off") => AccessLog::Off,
            Some(p) => {
                let path = self.resolve(p);
                if self.options.check_files {
                    let dir_ok = path.parent().is_some_and(|d| d.is_dir());
                    if !dir_ok {
                        self.err(
                            "logging.access_log",
                            format!("the directory of `{}` does not exist", path.display()),
                        );
                    }
                }
                AccessLog::File(path)
            }
        };
        Logging { access_log }
    }
}

/// The standard rules: every upstream authority maps to the public name clients use.
pub fn derived_spec(registry: &Registry) -> DerivedSpec {
    let login = |u: &Upstream| DerivedMapping {
        upstream: UpstreamAuthority {
            host: u.authority.host.clone(),
            port: u.authority.port,
        },
        target: PublicTarget::Login,
    };
    let mut mappings = vec![login(&registry.login)];
    mappings.extend(registry.token_server.iter().map(login));
    mappings.extend(
        registry
            .regional_endpoints
            .iter()
            .map(|r| login(&r.upstream)),
    );
    mappings.extend(registry.data_endpoints.iter().map(|d| DerivedMapping {
        upstream: UpstreamAuthority {
            host: d.upstream.authority.host.clone(),
            port: d.upstream.authority.port,
        },
        target: PublicTarget::Data {
            public_host: d.public_host.clone(),
            region_prefix: d.shared_public_host.then(|| d.region.clone()),
        },
    }));
    DerivedSpec {
        login_public_host: registry.public_host.clone(),
        mappings,
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address with a port, such as 0.0.0.0:443 or [::]:443")
    })
}

/// Repository globs: repository-name characters and `*`, which matches any run of characters,
/// `/` included (`team/*` covers `team/app` and `team/tools/app`).
fn check_repository_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    if glob.starts_with('/') || glob.ends_with('/') || glob.contains("//") {
        return Err(format!(
            "`{glob}`: a repository pattern has no leading, trailing or double /"
        ));
    }
    let ok = glob.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'.' | b'_' | b'-' | b'/' | b'*')
    });
    if !ok {
        return Err(format!(
            "`{glob}`: repository names are lower case letters, digits, . _ - and /; patterns add *"
        ));
    }
    Ok(())
}

/// A path the request gate can match: the grammar's alphabet, no empty, `.` or `..` segment.
fn canonical_token_path(t: &str) -> bool {
    let rest = &t[1..];
    !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b':' | b'=' | b'+')
        })
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_access(access: &str) -> Result<crate::Config, crate::ConfigErrors> {
        let yaml = format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry:\n  login_server: \"127.0.0.1:5000\"\n  tls: false\n  public_host: registry.localhost\naccess:\n{access}"
        );
        crate::parse(
            &yaml,
            "edge.yaml",
            Path::new("."),
            Options { check_files: false },
        )
    }

    fn ipv6_prefix(config: &crate::Config) -> u8 {
        config.access.rate_limit.as_ref().unwrap().ipv6_prefix
    }

    #[test]
    fn rate_limit_ipv6_prefix_defaults_to_64_and_takes_0_to_128() {
        let c = parse_access("  rate_limit: { requests_per_second: 1, burst: 1 }\n").unwrap();
        assert_eq!(ipv6_prefix(&c), 64);
        for bits in [0u8, 48, 56, 64, 128] {
            let c = parse_access(&format!(
                "  rate_limit: {{ requests_per_second: 1, burst: 1, ipv6_prefix: {bits} }}\n"
            ))
            .unwrap();
            assert_eq!(ipv6_prefix(&c), bits);
        }
    }

    #[test]
    fn rate_limit_ipv6_prefix_out_of_range_is_a_positioned_error() {
        for bits in ["129", "-1", "256", "99999999999"] {
            let e = parse_access(&format!(
                "  rate_limit:\n    burst: 1\n    requests_per_second: 1\n    ipv6_prefix: {bits}\n"
            ))
            .unwrap_err()
            .to_string();
            assert_eq!(
                e,
                format!("edge.yaml:11:18: access.rate_limit.ipv6_prefix: {bits} is not a prefix length from 0 to 128 (default 64: one bucket per /64)")
            );
        }
        // Not a number at all: serde's error, on the key.
        let e =
            parse_access("  rate_limit: { requests_per_second: 1, burst: 1, ipv6_prefix: /64 }\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("edge.yaml:8:"), "{e}");
        assert!(e.contains("ipv6_prefix"), "{e}");
    }

    #[test]
    fn server_http1_takes_pingora_or_lean() {
        let parse = |server: &str| {
            crate::parse(
                &format!("version: 1\nserver:\n{server}listeners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry:\n  login_server: \"127.0.0.1:5000\"\n  tls: false\n  public_host: registry.localhost\n"),
                "edge.yaml",
                Path::new("."),
                Options { check_files: false },
            )
        };
        assert_eq!(
            parse("  threads: 1\n").unwrap().server.http1,
            Http1Session::Pingora
        );
        assert_eq!(
            parse("  http1: pingora\n").unwrap().server.http1,
            Http1Session::Pingora
        );
        assert_eq!(
            parse("  http1: lean\n").unwrap().server.http1,
            Http1Session::Lean
        );
        assert_eq!(
            parse("  threads: 1\n  http1: hyper\n")
                .unwrap_err()
                .to_string(),
            "edge.yaml:4:10: server.http1: `hyper` is not `pingora` or `lean`"
        );
    }

    /// A configuration with `keys` added to the `registry` block.
    fn parse_registry(keys: &str) -> Result<crate::Config, crate::ConfigErrors> {
        let yaml = format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry:\n  login_server: \"127.0.0.1:5000\"\n  tls: false\n  public_host: registry.localhost\n{keys}"
        );
        crate::parse(
            &yaml,
            "edge.yaml",
            Path::new("."),
            Options { check_files: false },
        )
    }

    #[test]
    fn token_paths_are_written_as_the_gate_matches_them() {
        let c = parse_registry(
            "  token_paths: [/oauth2/token, /auth/v1.0/token]\n  unmapped_redirects: pass\n",
        )
        .unwrap();
        assert_eq!(c.registry.unmapped_redirects, UnmappedRedirects::Pass);
        assert!(c.registry.hide_server_headers);
        for bad in [
            "/oauth2/t%6fken",
            "/oauth2//token",
            "/oauth2/./token",
            "/a~b",
            "/",
        ] {
            let e = parse_registry(&format!("  token_paths: [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("registry.token_paths[0]"), "{bad}: {e}");
        }
        let e = parse_registry("  unmapped_redirects: maybe\n").unwrap_err();
        assert!(e.to_string().contains("is not `refuse` or `pass`"), "{e}");
    }

    /// A configuration whose line 7 is `blob_cache:` and whose lines 8 on are `block`.
    fn parse_blob_cache(block: &str, base: &str) -> Result<crate::Config, crate::ConfigErrors> {
        let yaml = format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry:\n  login_server: \"127.0.0.1:5000\"\n  tls: false\n  public_host: registry.localhost\nblob_cache:\n{block}"
        );
        crate::parse(
            &yaml,
            "edge.yaml",
            Path::new(base),
            Options { check_files: false },
        )
    }

    #[test]
    fn blob_cache_takes_defaults_and_resolves_paths_like_the_rest_of_the_file() {
        let c = parse_blob_cache(
            "  path: cache/blobs\n  max_size: 50GiB\n  key_file: /etc/registry-edge/blob-cache.key\n",
            "/etc/registry-edge",
        )
        .unwrap();
        assert_eq!(
            c.blob_cache,
            Some(BlobCache {
                path: PathBuf::from("/etc/registry-edge/cache/blobs"),
                max_size: 50 << 30,
                min_blob_size: 1 << 20,
                key_file: PathBuf::from("/etc/registry-edge/blob-cache.key"),
                authorization_ttl: Duration::from_secs(600),
            })
        );
        let c = parse_blob_cache(
            "  { path: /var/cache/b, max_size: 1048576, min_blob_size: 0, key_file: k, authorization_ttl: 1h }\n",
            "/etc/registry-edge",
        )
        .unwrap();
        assert_eq!(
            c.blob_cache,
            Some(BlobCache {
                path: PathBuf::from("/var/cache/b"),
                max_size: MIN_BLOB_CACHE_SIZE,
                min_blob_size: 0,
                key_file: PathBuf::from("/etc/registry-edge/k"),
                authorization_ttl: Duration::from_secs(3600),
            })
        );
        let c = parse_blob_cache(
            "  { path: c, max_size: \"10GB\", min_blob_size: 10GB, key_file: k, authorization_ttl: 1s }\n",
            ".",
        )
        .unwrap();
        let b = c.blob_cache.unwrap();
        assert_eq!(
            (b.max_size, b.min_blob_size),
            (10_000_000_000, 10_000_000_000)
        );
        assert_eq!(b.authorization_ttl, Duration::from_secs(1));
        // Left out, the cache is off.
        assert_eq!(parse_registry("").unwrap().blob_cache, None);
    }

    #[test]
    fn the_full_example_caches_blobs_and_the_minimal_one_does_not() {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
        let load = |name: &str| {
            crate::load(&conf.join(name), Options { check_files: false })
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            load("registry-edge.yaml").blob_cache,
            Some(BlobCache {
                path: PathBuf::from("/var/cache/registry-edge/blobs"),
                max_size: 50 << 30,
                min_blob_size: DEFAULT_MIN_BLOB_SIZE,
                key_file: PathBuf::from("/etc/registry-edge/blob-cache.key"),
                authorization_ttl: DEFAULT_AUTHORIZATION_TTL,
            })
        );
        assert_eq!(load("minimal.yaml").blob_cache, None);
    }

    #[test]
    fn blob_cache_bad_values_are_positioned_errors() {
        let ok = [
            "  path: /var/cache/blobs\n",
            "  max_size: 1GiB\n",
            "  key_file: /etc/k\n",
        ];
        // (the key replaced or added, the expected error)
        for (line, want) in [
            ("  path: \"\"\n", "edge.yaml:8:9: blob_cache.path: must not be empty"),
            ("  key_file: \" \"\n", "edge.yaml:10:13: blob_cache.key_file: must not be empty"),
            ("  max_size: 10 GiB\n", "edge.yaml:9:13: blob_cache.max_size: `10 GiB` is not a size: write a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"),
            ("  max_size: -1\n", "edge.yaml:9:13: blob_cache.max_size: `-1` is not a size: write a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"),
            ("  max_size: 1.5\n", "edge.yaml:9:13: blob_cache.max_size: `1.5` is not a size: write a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"),
            ("  max_size: 1e9\n", "edge.yaml:9:13: blob_cache.max_size: `1000000000.0` is not a size: write a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"),
            ("  max_size: 99999999999999999999\n", "edge.yaml:9:13: blob_cache.max_size: `99999999999999999999` is too large: a size is at most 2^64 - 1 bytes"),
            ("  max_size: 20000000TiB\n", "edge.yaml:9:13: blob_cache.max_size: `20000000TiB` is too large: a size is at most 2^64 - 1 bytes"),
            ("  max_size: 1048575\n", "edge.yaml:9:13: blob_cache.max_size: `1048575` is below the minimum of 1MiB (1048576 bytes)"),
            ("  max_size: 1MB\n", "edge.yaml:9:13: blob_cache.max_size: `1MB` is below the minimum of 1MiB (1048576 bytes)"),
            ("  min_blob_size: 2GiB\n", "edge.yaml:11:18: blob_cache.min_blob_size: `2GiB` is more than max_size (`1GiB`): no blob could be cached"),
            ("  min_blob_size: \"\"\n", "edge.yaml:11:18: blob_cache.min_blob_size: `` is not a size: write a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 512MiB, 10GB, 1048576"),
            ("  authorization_ttl: 2h\n", "edge.yaml:11:22: blob_cache.authorization_ttl: must be between 1s and 1h"),
            ("  authorization_ttl: 500ms\n", "edge.yaml:11:22: blob_cache.authorization_ttl: must be between 1s and 1h"),
            ("  authorization_ttl: 0s\n", "edge.yaml:11:22: blob_cache.authorization_ttl: must be between 1s and 1h"),
            ("  authorization_ttl: 10\n", "edge.yaml:11:22: blob_cache.authorization_ttl: `10` is not a duration: write a number and a unit, such as 500ms, 10s, 5m, 1h"),
            ("  key_file: /var/cache/blobs/hmac.key\n", "edge.yaml:10:13: blob_cache.key_file: `/var/cache/blobs/hmac.key` is inside blob_cache.path: clearing the cache would remove the key; keep it elsewhere"),
        ] {
            let key = line.trim_start().split(':').next().unwrap();
            let mut block: Vec<&str> = ok
                .iter()
                .copied()
                .filter(|l| !l.trim_start().starts_with(&format!("{key}:")))
                .collect();
            let at = ok.iter().position(|l| l.trim_start().starts_with(&format!("{key}:")));
            block.insert(at.unwrap_or(block.len()), line);
            let e = parse_blob_cache(&block.concat(), ".").unwrap_err().to_string();
            assert_eq!(e, want, "{line:?}");
        }
    }

    #[test]
    fn blob_cache_errors_are_collected_and_its_keys_checked() {
        let e = parse_blob_cache(
            "  path: \"\"\n  max_size: 12XB\n  min_blob_size: -5\n  key_file: \"\"\n  authorization_ttl: 2d\n",
            ".",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "blob_cache.path",
                "blob_cache.max_size",
                "blob_cache.min_blob_size",
                "blob_cache.key_file",
                "blob_cache.authorization_ttl",
            ]
        );
        // Unknown and missing keys: serde's message, on the block.
        let e = parse_blob_cache(
            "  path: p\n  max_size: 1GiB\n  key_file: k\n  max_age: 1d\n",
            ".",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("edge.yaml:11:") && e.contains("unknown field `max_age`"),
            "{e}"
        );
        let e = parse_blob_cache("  path: p\n  key_file: k\n", ".")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `max_size`"), "{e}");
        let e = parse_blob_cache("  path: p\n  max_size: true\n  key_file: k\n", ".")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected a size such as 512MiB, 10GB or 1048576"),
            "{e}"
        );
    }
}
