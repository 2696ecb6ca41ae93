//! The file format: serde structs that mirror the YAML keys one to one. Every struct refuses unknown
//! keys; values whose syntax needs checking (durations, addresses, CIDRs) stay strings here so that
//! validation can report all of them at once, each with its position (sizes too, see [`RawSize`]). A key left out reads as
//! `None` in an `Option` field and as the type's default where `#[serde(default)]` says so: on the
//! field, or on a struct whose every key may be left out.

use serde::Deserialize;

/// Declares the structs of the file format: each derives `Debug` and `Deserialize` and refuses
/// unknown keys. The attributes written above a struct (`#[derive(Default)]`, a container
/// `#[serde(default)]`) are added to these.
macro_rules! file_format {
    ($($(#[$attr:meta])* pub struct $name:ident $fields:tt)*) => {
        $(
            #[derive(Debug, Deserialize)]
            #[serde(deny_unknown_fields)]
            $(#[$attr])*
            pub struct $name $fields
        )*
    };
}

file_format! {
    pub struct RawConfig {
        pub version: u32,
        #[serde(default)]
        pub server: RawServer,
        pub listeners: Vec<RawListener>,
        pub admin: Option<RawAdmin>,
        pub registry: RawRegistry,
        pub local_region: Option<String>,
        #[serde(default)]
        pub regions: Vec<RawRegionRule>,
        pub geoip: Option<RawGeoip>,
        #[serde(default)]
        pub clients: RawClients,
        #[serde(default)]
        pub access: RawAccess,
        pub blob_cache: Option<RawBlobCache>,
        #[serde(default)]
        pub rewrites: Vec<RawRewrite>,
        #[serde(default)]
        pub logging: RawLogging,
    }

    #[derive(Default)]
    pub struct RawServer {
        pub threads: Option<usize>,
        pub grace_period: Option<String>,
        pub graceful_shutdown_timeout: Option<String>,
        pub pid_file: Option<String>,
        pub upgrade_sock: Option<String>,
        pub http1: Option<String>,
    }

    pub struct RawListener {
        pub address: String,
        pub tls: Option<RawListenerTls>,
        pub public_scheme: Option<String>,
        #[serde(default)]
        pub timeouts: RawTimeouts,
        pub max_request_header_bytes: Option<usize>,
        pub max_requests_per_connection: Option<u64>,
        pub max_concurrent_streams: Option<u32>,
        #[serde(default)]
        pub redirect_to_https: bool,
    }

    pub struct RawListenerTls {
        pub certificates: Vec<RawCertificate>,
    }

    pub struct RawCertificate {
        pub cert: String,
        pub key: String,
    }

    #[derive(Default)]
    pub struct RawTimeouts {
        pub header_read: Option<String>,
        pub idle: Option<String>,
        pub write: Option<String>,
    }

    pub struct RawAdmin {
        pub address: String,
    }

    pub struct RawRegistry {
        pub login_server: String,
        pub public_host: String,
        pub tls: Option<bool>,
        pub ca_file: Option<String>,
        #[serde(default)]
        pub peers: Vec<String>,
        pub token_server: Option<String>,
        pub token_paths: Option<Vec<String>>,
        pub health_check: Option<RawHealthCheck>,
        pub connect_timeout: Option<String>,
        pub read_timeout: Option<String>,
        #[serde(default)]
        pub regional_endpoints: Vec<RawRegionalEndpoint>,
        #[serde(default)]
        pub data_endpoints: Vec<RawDataEndpoint>,
        pub unmapped_redirects: Option<String>,
        pub hide_server_headers: Option<bool>,
    }

    #[derive(Default)]
    pub struct RawHealthCheck {
        pub path: Option<String>,
        pub tcp: Option<bool>,
        pub interval: Option<String>,
        pub timeout: Option<String>,
        pub healthy_statuses: Option<Vec<RawStatus>>,
        pub unhealthy_after: Option<u32>,
        pub healthy_after: Option<u32>,
    }

    pub struct RawRegionalEndpoint {
        pub region: String,
        pub endpoint: String,
        pub tls: Option<bool>,
        pub ca_file: Option<String>,
        #[serde(default)]
        pub peers: Vec<String>,
        pub health_check: Option<RawHealthCheck>,
    }

    pub struct RawDataEndpoint {
        pub region: String,
        pub endpoint: String,
        pub public_host: String,
        pub tls: Option<bool>,
        pub ca_file: Option<String>,
        #[serde(default)]
        pub peers: Vec<String>,
        pub health_check: Option<RawHealthCheck>,
    }

    pub struct RawRegionRule {
        pub region: String,
        #[serde(default)]
        pub countries: Vec<String>,
        #[serde(default)]
        pub continents: Vec<String>,
    }

    pub struct RawGeoip {
        pub database: String,
        pub reload: Option<bool>,
    }

    #[derive(Default)]
    #[serde(default)]
    pub struct RawClients {
        pub trusted_proxies: Vec<String>,
    }

    #[derive(Default)]
    #[serde(default)]
    pub struct RawAccess {
        pub mode: Option<String>,
        pub embargo: RawEmbargo,
        pub deny_cidrs: Vec<String>,
        pub allow_cidrs: Vec<String>,
        pub read_only: Option<bool>,
        pub repositories: Option<RawRepositories>,
        pub rate_limit: Option<RawRateLimit>,
        pub security_events: Option<RawSecurityEvents>,
        pub auto_block: Option<RawAutoBlock>,
    }

    #[derive(Default)]
    pub struct RawSecurityEvents {
        pub window: Option<String>,
        pub repository_scan: Option<u32>,
        pub failed_token_requests: Option<u32>,
        pub embargo_hits: Option<u32>,
    }

    pub struct RawAutoBlock {
        pub after: u32,
        pub window: String,
        pub duration: String,
    }

    #[derive(Default)]
    #[serde(default)]
    pub struct RawEmbargo {
        pub countries: Vec<String>,
        pub unknown_country: Option<String>,
    }

    pub struct RawRepositories {
        pub allow: Vec<String>,
    }

    pub struct RawRateLimit {
        pub requests_per_second: f64,
        pub burst: u32,
        /// Wider than `u8` so that 300 or -1 get the validator's message, not serde's.
        pub ipv6_prefix: Option<i64>,
        #[serde(default)]
        pub exempt_cidrs: Vec<String>,
    }

    pub struct RawBlobCache {
        pub path: String,
        pub max_size: RawSize,
        pub min_blob_size: Option<RawSize>,
        pub key_file: String,
        pub authorization_ttl: Option<String>,
    }

    pub struct RawRewrite {
        pub name: String,
        pub condition: Option<RawCondition>,
        pub conditions: Option<Vec<RawCondition>>,
        pub action: Option<RawAction>,
        pub actions: Option<Vec<RawAction>>,
    }

    pub struct RawCondition {
        pub header: Option<String>,
        pub request_header: Option<String>,
        pub variable: Option<String>,
        pub pattern: String,
        #[serde(default)]
        pub case_sensitive: bool,
        #[serde(default)]
        pub negate: bool,
        #[serde(default)]
        pub statuses: Vec<RawStatus>,
    }

    pub struct RawAction {
        pub set_header: Option<String>,
        pub delete_header: Option<String>,
        pub set_request_header: Option<String>,
        pub delete_request_header: Option<String>,
        pub value: Option<String>,
    }

    #[derive(Default)]
    pub struct RawLogging {
        pub access_log: Option<String>,
    }
}

/// A status code or a range written `"200-399"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(u64),
    Text(String),
}

/// A size as written: `50GiB` or a bare number of bytes, kept as text whatever its YAML type, so
/// that a negative, fractional or oversized number gets the validator's message (with its
/// position) and not serde's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSize(pub String);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as 512MiB, 10GB or 1048576")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<RawSize, E> {
                Ok(RawSize(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<RawSize, E> {
                Ok(RawSize(v.to_string()))
            }
            /// `{:?}` keeps a fraction or exponent visible (`1e9` shows as `1000000000.0`), so the
            /// size parser refuses it instead of taking a float for a whole number.
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawSize, E> {
                Ok(RawSize(format!("{v:?}")))
            }
        }
        deserializer.deserialize_any(Text)
    }
}
