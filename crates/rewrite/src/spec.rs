//! Uncompiled rule descriptions: plain data that the config crate builds from YAML and hands to
//! [`crate::Engine::compile`]. Nothing here is validated until compiled.

/// Which message a header belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Request,
    Response,
}

/// A server variable, App Gateway's `{var_<name>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    /// The resolved client address (after trusted-proxy processing).
    ClientIp,
    /// The Host the client sent (as received, port included).
    Host,
    /// Path and query as the client sent them.
    RequestUri,
    /// `http` or `https`: the public scheme of the listener.
    Scheme,
    /// `scheme://public_host[:port]` of the route the request arrived on.
    PublicOrigin,
}

impl Var {
    /// Parses the name used in YAML and in `{var_<name>}`.
    pub fn from_name(name: &str) -> Option<Var> {
        match name {
            "client_ip" => Some(Var::ClientIp),
            "host" => Some(Var::Host),
            "request_uri" => Some(Var::RequestUri),
            "scheme" => Some(Var::Scheme),
            "public_origin" => Some(Var::PublicOrigin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Var::ClientIp => "client_ip",
            Var::Host => "host",
            Var::RequestUri => "request_uri",
            Var::Scheme => "scheme",
            Var::PublicOrigin => "public_origin",
        }
    }
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A header; its name as written by the user (matched case-insensitively).
    Header {
        side: Side,
        name: String,
    },
    Var(Var),
}

/// An inclusive range of status codes (`302` is `302..=302`, `"300-399"` is `300..=399`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        self.from <= status && status <= self.to
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionSpec {
    pub subject: Subject,
    /// A regex searched in the value (anchored only where it says `^`/`$`).
    pub pattern: String,
    pub case_sensitive: bool,
    /// The condition holds when the pattern does *not* match; it then offers no captures.
    pub negate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSpec {
    /// Set (replace) a header to a template such as `https://x{http_resp_Location_1}`.
    Set {
        side: Side,
        header: String,
        value: String,
    },
    /// Remove every value of a header.
    Delete { side: Side, header: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    /// All must hold (AND), as in App Gateway.
    pub conditions: Vec<ConditionSpec>,
    /// Only responses with one of these statuses; empty means any status.
    pub statuses: Vec<StatusRange>,
    pub actions: Vec<ActionSpec>,
}

/// The URL scheme + authority of an upstream, as the registry writes it in its own URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuthority {
    /// Lower-case host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// The effective port (443 for TLS upstreams without an explicit port, else 80).
    pub port: u16,
}

/// Where URLs naming an upstream are sent instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicTarget {
    /// The login public host (`registry.public_host`); login server, token server and regional
    /// endpoints map here.
    Login,
    /// A data endpoint's public host. `region_prefix` is `Some(region)` when several regions share
    /// the host: the rewritten path then starts with `/_r/<region>`.
    Data {
        public_host: String,
        region_prefix: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedMapping {
    pub upstream: UpstreamAuthority,
    pub target: PublicTarget,
}

/// Everything needed to derive the standard rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedSpec {
    /// `registry.public_host`, a bare lower-case name.
    pub login_public_host: String,
    pub mappings: Vec<DerivedMapping>,
}
