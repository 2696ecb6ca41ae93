//! The file format: serde structs that mirror the YAML keys one to one. Every struct refuses unknown
//! keys; values whose syntax needs checking (durations, addresses, CIDRs) stay strings here so that
//! validation can report all of them at once, each with its position.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: u32,
    #[serde(default)]
    pub server: RawServer,
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    pub registry: RawRegistry,
    #[serde(default)]
    pub local_region: Option<String>,
    #[serde(default)]
    pub regions: Vec<RawRegionRule>,
    #[serde(default)]
    pub geoip: Option<RawGeoip>,
    #[serde(default)]
    pub clients: RawClients,
    #[serde(default)]
    pub access: RawAccess,
    #[serde(default)]
    pub rewrites: Vec<RawRewrite>,
    #[serde(default)]
    pub logging: RawLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
    #[serde(default)]
    pub public_scheme: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub max_request_header_bytes: Option<usize>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u64>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default)]
    pub redirect_to_https: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub header_read: Option<String>,
    pub idle: Option<String>,
    pub write: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub login_server: String,
    pub public_host: String,
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub token_server: Option<String>,
    #[serde(default)]
    pub token_paths: Option<Vec<String>>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub read_timeout: Option<String>,
    #[serde(default)]
    pub regional_endpoints: Vec<RawRegionalEndpoint>,
    #[serde(default)]
    pub data_endpoints: Vec<RawDataEndpoint>,
    #[serde(default)]
    pub unmapped_redirects: Option<String>,
    #[serde(default)]
    pub hide_server_headers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub tcp: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_statuses: Option<Vec<RawStatus>>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

/// A status code or a range written `"200-399"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionalEndpoint {
    pub region: String,
    pub endpoint: String,
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataEndpoint {
    pub region: String,
    pub endpoint: String,
    pub public_host: String,
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionRule {
    pub region: String,
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub continents: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoip {
    pub database: String,
    #[serde(default)]
    pub reload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub embargo: RawEmbargo,
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub repositories: Option<RawRepositories>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub security_events: Option<RawSecurityEvents>,
    #[serde(default)]
    pub auto_block: Option<RawAutoBlock>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityEvents {
    pub window: Option<String>,
    pub repository_scan: Option<u32>,
    pub failed_token_requests: Option<u32>,
    pub embargo_hits: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoBlock {
    pub after: u32,
    pub window: String,
    pub duration: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbargo {
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub unknown_country: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepositories {
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
    /// Wider than `u8` so that 300 or -1 get the validator's message, not serde's.
    #[serde(default)]
    pub ipv6_prefix: Option<i64>,
    #[serde(default)]
    pub exempt_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub name: String,
    #[serde(default)]
    pub condition: Option<RawCondition>,
    #[serde(default)]
    pub conditions: Option<Vec<RawCondition>>,
    #[serde(default)]
    pub action: Option<RawAction>,
    #[serde(default)]
    pub actions: Option<Vec<RawAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub request_header: Option<String>,
    #[serde(default)]
    pub variable: Option<String>,
    pub pattern: String,
    #[serde(default)]
    pub case_sensitive: bool,
    #[serde(default)]
    pub negate: bool,
    #[serde(default)]
    pub statuses: Vec<RawStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    #[serde(default)]
    pub set_header: Option<String>,
    #[serde(default)]
    pub delete_header: Option<String>,
    #[serde(default)]
    pub set_request_header: Option<String>,
    #[serde(default)]
    pub delete_request_header: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    #[serde(default)]
    pub access_log: Option<String>,
}
