//! Routing by Host: which side of the registry a request is for. Pure and synchronous, so that
//! `early_request_filter` stays a thin call into it.
//!
//! - the login `public_host` → the login side, or the token server for the token paths; what the
//!   path means there is the gate's to decide (`registry_edge_gate::parse`, in service/arrive.rs);
//! - a data endpoint's `public_host` → that region's data endpoint; where several regions share the
//!   host, the region travels as a `/_r/<region>/` path prefix, stripped before forwarding; the
//!   path must be canonical ([`is_canonical`]): data URLs are the registry's own, and never need
//!   dot segments, empty segments or encoded separators;
//! - a Host that is not `name[:port]` (a port of 1 to 5 digits up to 65535) → 400;
//! - anything else → 421 (the edge only ever connects to configured upstreams: never an open proxy).

use std::collections::HashMap;

use registry_edge_config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The registry API and everything else on the login host.
    Login,
    /// A token path on the login host, when a separate token server is configured.
    Token,
    /// Index into `registry.data_endpoints`.
    Data(usize),
}

impl Route {
    /// A bounded metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Login => "login",
            Route::Token => "token",
            Route::Data(_) => "data",
        }
    }
}

/// Why a request cannot be routed; each maps to one answer the edge writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misroute {
    /// No Host, or a Host this edge does not serve: 421.
    UnknownHost,
    /// A shared data host without a known `/_r/<region>/` prefix: 404.
    UnknownRegion,
    /// A data path with `..`, `//`, encoded separators or control characters: 400.
    NonCanonicalPath,
    /// A Host header that is not `name[:port]`: 400.
    BadHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    /// Bytes to remove from the front of the path before forwarding (the `/_r/<region>` prefix).
    pub strip_prefix: usize,
}

#[derive(Debug)]
enum DataHost {
    Single(usize),
    Shared(HashMap<String, usize>),
}

#[derive(Debug)]
pub struct Router {
    login_host: String,
    token_paths: Vec<String>,
    token_server: bool,
    data_hosts: HashMap<String, DataHost>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut data_hosts: HashMap<String, DataHost> = HashMap::new();
        for (i, d) in config.registry.data_endpoints.iter().enumerate() {
            if d.shared_public_host {
                let entry = data_hosts
                    .entry(d.public_host.clone())
                    .or_insert_with(|| DataHost::Shared(HashMap::new()));
                if let DataHost::Shared(regions) = entry {
                    regions.insert(d.region.clone(), i);
                }
            } else {
                data_hosts.insert(d.public_host.clone(), DataHost::Single(i));
            }
        }
        Router {
            login_host: config.registry.public_host.clone(),
            token_paths: config.registry.token_paths.clone(),
            token_server: config.registry.token_server.is_some(),
            data_hosts,
        }
    }

    /// `host` is the Host header or `:authority` as received; `path` excludes the query.
    pub fn route(&self, host: Option<&str>, path: &str) -> Result<Routed, Misroute> {
        let raw = host.ok_or(Misroute::UnknownHost)?;
        if !valid_host(raw) {
            return Err(Misroute::BadHost);
        }
        let host = normalise_host(raw);
        if host == self.login_host {
            let route = if self.token_server && self.token_paths.iter().any(|t| t == path) {
                Route::Token
            } else {
                Route::Login
            };
            return Ok(Routed {
                route,
                strip_prefix: 0,
            });
        }
        let data = self.data_hosts.get(host.as_ref());
        if data.is_some() && !is_canonical(path) {
            return Err(Misroute::NonCanonicalPath);
        }
        match data {
            None => Err(Misroute::UnknownHost),
            Some(DataHost::Single(i)) => Ok(Routed {
                route: Route::Data(*i),
                strip_prefix: 0,
            }),
            Some(DataHost::Shared(regions)) => {
                let rest = path.strip_prefix("/_r/").ok_or(Misroute::UnknownRegion)?;
                let (region, _) = rest.split_once('/').ok_or(Misroute::UnknownRegion)?;
                let i = regions.get(region).ok_or(Misroute::UnknownRegion)?;
                Ok(Routed {
                    route: Route::Data(*i),
                    strip_prefix: "/_r/".len() + region.len(),
                })
            }
        }
    }
}

/// `name[:port]` or `[v6][:port]`: a name of letters, digits, `-`, `.` and `_`, a port of 1 to 5
/// digits up to 65535. Anything else (`registry.test:abc`, `:99999`, `a b`, `user@host`) is not a
/// Host this edge will pass on as X-Forwarded-Host or build a URL from.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => ("v6", after.strip_prefix(':').map_or(Some(""), Some)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    name_ok && port_ok
}

/// Lower case, port and trailing dot removed. An IPv6 literal keeps its brackets (and then
/// matches no public host).
pub fn normalise_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

/// The port the client put in its Host header, for the public URLs the rewrite builds.
pub fn host_port(host: &str) -> Option<u16> {
    let after = if host.starts_with('[') {
        host.split_once(']').map(|(_, rest)| rest)?
    } else {
        host
    };
    after.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// Registry paths never need `.`/`..` segments, empty segments, encoded `/`, `\` or `.`, or
/// control characters; a path that has them is refused rather than interpreted, so that what the
/// edge checks is what the registry serves.
pub fn is_canonical(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    // One pass: bytes, percent escapes, and each segment as its `/` closes it.
    let mut segment = 1;
    for (i, &c) in b.iter().enumerate().skip(1) {
        match c {
            b'/' => {
                if !segment_ok(&b[segment..i]) {
                    return false;
                }
                segment = i + 1;
            }
            b'%' => {
                if let (Some(&hi), Some(&lo)) = (b.get(i + 1), b.get(i + 2)) {
                    if matches!(
                        (hi, lo.to_ascii_lowercase()),
                        (b'2', b'f') | (b'5', b'c') | (b'2', b'e') | (b'0', b'0')
                    ) {
                        return false;
                    }
                }
            }
            0..=0x20 | 0x7f | b'\\' => return false,
            _ => {}
        }
    }
    // The last segment may be empty ("/v2/"), but not a dot segment.
    let last = &b[segment..];
    last != b"." && last != b".."
}

fn segment_ok(s: &[u8]) -> bool {
    !s.is_empty() && s != b"." && s != b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_syntax() {
        for ok in [
            "acr.contoso.com",
            "acr.contoso.com:8443",
            "ACR.contoso.com.",
            "[::1]",
            "[::1]:8080",
            "127.0.0.1:1",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "registry.test:abc",
            "registry.test:99999",
            "registry.test:0",
            "registry.test:",
            "registry.test:123456",
            "a b",
            "user@host",
            "[::1",
            "[zz]:1",
            "[::1]x",
            "host:1:2",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(normalise_host("ACR.Contoso.com:8443"), "acr.contoso.com");
        assert_eq!(normalise_host("acr.contoso.com."), "acr.contoso.com");
        assert_eq!(normalise_host("[::1]:8080"), "[::1]");
        assert_eq!(host_port("acr.contoso.com:8443"), Some(8443));
        assert_eq!(host_port("acr.contoso.com"), None);
        assert_eq!(host_port("[::1]:8080"), Some(8080));
        assert_eq!(host_port("[::1]"), None);
    }

    /// The rule as first written (several passes), kept as the oracle for the one-pass version.
    fn is_canonical_reference(path: &str) -> bool {
        if !path.starts_with('/') {
            return false;
        }
        if path.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'\\') {
            return false;
        }
        let lower_has = |needle: &str| {
            path.as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        };
        if lower_has("%2f") || lower_has("%5c") || lower_has("%2e") || lower_has("%00") {
            return false;
        }
        let body = &path[1..];
        if body.is_empty() {
            return true;
        }
        let segments: Vec<&str> = body.split('/').collect();
        let last = segments.len() - 1;
        segments
            .iter()
            .enumerate()
            .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
    }

    #[test]
    fn one_pass_agrees_with_the_reference_on_every_short_path() {
        // Every path of up to 6 characters over an alphabet that reaches each rule.
        let alphabet = [
            '/', '.', '%', '2', 'f', 'E', '5', 'c', '0', 'a', '\\', ' ', '\u{7f}', 'é',
        ];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..6 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    assert_eq!(is_canonical(&q), is_canonical_reference(&q), "{q:?}");
                    checked += 1;
                    if q.starts_with('/') {
                        next.push(q);
                    }
                }
            }
            paths = next;
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn canonical_paths() {
        for ok in [
            "/",
            "/v2/",
            "/v2/team/app/manifests/latest",
            "/v2/a/blobs/sha256:abc",
            "/oauth2/token",
        ] {
            assert!(is_canonical(ok), "{ok}");
        }
        for bad in [
            "",
            "v2/",
            "/v2//a",
            "/v2/../admin",
            "/v2/./a",
            "/v2/a%2Fb/manifests/x",
            "/v2/a%2e%2e/x",
            "/v2/a\\b",
            "/v2/a\tb",
            "/v2/a/..",
        ] {
            assert!(!is_canonical(bad), "{bad:?}");
        }
    }
}
