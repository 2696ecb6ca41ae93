//! What the engine may know about the request a header set belongs to.

use crate::spec::Var;

/// Per-request facts the rules read: server variables and, for response rules, the request
/// headers. Borrowed, so building one costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The resolved client address (after trusted-proxy processing).
    pub client_ip: &'a str,
    /// The Host the client sent, port included.
    pub host: &'a str,
    /// Path and query as the client sent them.
    pub request_uri: &'a str,
    /// Public scheme: `http` or `https`.
    pub scheme: &'a str,
    /// Port from the client's Host header; `None` when absent or the scheme's default.
    pub public_port: Option<u16>,
    /// `scheme://public_host[:port]` of the route the request came in on.
    pub public_origin: &'a str,
    pub request_headers: &'a http::HeaderMap,
}

impl<'a> RequestContext<'a> {
    pub fn var(&self, var: Var) -> &'a str {
        match var {
            Var::ClientIp => self.client_ip,
            Var::Host => self.host,
            Var::RequestUri => self.request_uri,
            Var::Scheme => self.scheme,
            Var::PublicOrigin => self.public_origin,
        }
    }
}
