//! The request the upstream sees: its own authority in Host and an origin-form URI, the
//! forwarding headers set by the edge (never passed through from an untrusted client), and no
//! `Authorization` towards a data endpoint (Azure Storage refuses any request that carries one).

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;

pub struct Forwarding<'a> {
    pub host_header: &'a HeaderValue,
    /// Bytes of `/_r/<region>` to remove from the path.
    pub strip_prefix: usize,
    /// The socket peer's address (appended to X-Forwarded-For; the client itself unless a
    /// trusted proxy stands between).
    pub peer_ip: Option<IpAddr>,
    /// The socket peer is a trusted proxy: its X-Forwarded-For is kept and extended.
    pub peer_trusted: bool,
    /// The Host the client sent.
    pub public_host: &'a str,
    pub public_scheme: &'a str,
    pub strip_authorization: bool,
}

pub fn upstream_request(req: &mut RequestHeader, f: &Forwarding<'_>) -> Result<()> {
    // Origin form already (the usual case): the target goes up as the client sent it.
    let origin_form = req.uri.scheme().is_none() && req.uri.authority().is_none();
    if f.strip_prefix > 0 || !origin_form {
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let pq = if f.strip_prefix > 0 {
            pq.get(f.strip_prefix..).unwrap_or("/")
        } else {
            pq
        };
        let uri: http::Uri = pq
            .parse()
            .or_err(InvalidHTTPHeader, "request target is not a valid path")?;
        req.set_uri(uri);
    }
    // The client's Host becomes X-Forwarded-Host: its value is shared, not copied, when it is
    // the public host (it is unless the request came with `:authority` or an absolute URI).
    let forwarded_host = match req.headers.get(http::header::HOST) {
        Some(v) if v.as_bytes() == f.public_host.as_bytes() => Some(v.clone()),
        _ if f.public_host.is_empty() => None,
        _ => Some(
            HeaderValue::from_str(f.public_host)
                .or_err(InvalidHTTPHeader, "public host is not a header value")?,
        ),
    };
    req.insert_header(http::header::HOST, f.host_header.clone())?;

    // What a trusted proxy sent, then the address this request came from.
    let mut xff: Vec<u8> = Vec::new();
    if f.peer_trusted {
        for prior in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(prior) = prior.to_str() {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(prior.as_bytes());
            }
        }
    }
    if let Some(ip) = f.peer_ip {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        push_ip(&mut xff, ip);
    }
    // An insert replaces every value of its name; what is not replaced is removed.
    if xff.is_empty() {
        drop_header(req, &X_FORWARDED_FOR);
    } else {
        req.insert_header("X-Forwarded-For", xff)?;
    }
    drop_header(req, &FORWARDED);
    drop_header(req, &X_REAL_IP);
    for name in &REINTERPRETING {
        drop_header(req, name);
    }
    req.insert_header("X-Forwarded-Proto", scheme_value(f.public_scheme)?)?;
    match forwarded_host {
        Some(v) => req.insert_header("X-Forwarded-Host", v)?,
        None => drop_header(req, &X_FORWARDED_HOST),
    }
    if f.strip_authorization {
        drop_header(req, &http::header::AUTHORIZATION);
        drop_header(req, &http::header::COOKIE);
    }
    Ok(())
}

/// `ip` as `Display` writes it; IPv4 without `core::fmt` (every request writes one or two).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `http` and `https` without a copy; anything else as given.
fn scheme_value(scheme: &str) -> Result<HeaderValue> {
    static HTTP: HeaderValue = HeaderValue::from_static("http");
    static HTTPS: HeaderValue = HeaderValue::from_static("https");
    Ok(match scheme {
        "https" => HTTPS.clone(),
        "http" => HTTP.clone(),
        other => HeaderValue::from_str(other)
            .or_err(InvalidHTTPHeader, "public scheme is not a header value")?,
    })
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Headers that make a server treat the request as another method or protocol than the one the
/// gate judged: never forwarded.
static REINTERPRETING: [HeaderName; 4] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    http::header::UPGRADE,
];

/// Removes every value of `name` (one look-up when there is none, the usual case; pingora's
/// removal also searches its header-case map).
fn drop_header(req: &mut RequestHeader, name: &HeaderName) {
    if req.headers.contains_key(name) {
        req.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "203.0.113.7",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes());
        }
    }

    fn fwd(strip: usize, trusted: bool, data: bool) -> Forwarding<'static> {
        Forwarding {
            host_header: Box::leak(Box::new(HeaderValue::from_static(
                "reg.eastus.data.azurecr.io",
            ))),
            strip_prefix: strip,
            peer_ip: Some("192.0.2.7".parse().unwrap()),
            peer_trusted: trusted,
            public_host: "data.contoso.com:8443",
            public_scheme: "https",
            strip_authorization: data,
        }
    }

    #[test]
    fn data_request_loses_prefix_and_authorization_keeps_query() {
        let mut r = req(
            "/_r/eastus/a/b/data?sv=1&sig=abc%2B%3D",
            &[
                ("Authorization", "Bearer x"),
                ("Host", "data.contoso.com:8443"),
            ],
        );
        upstream_request(&mut r, &fwd("/_r/eastus".len(), false, true)).unwrap();
        assert_eq!(r.uri.to_string(), "/a/b/data?sv=1&sig=abc%2B%3D");
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.headers["host"], "reg.eastus.data.azurecr.io");
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert_eq!(r.headers["x-forwarded-host"], "data.contoso.com:8443");
    }

    #[test]
    fn method_overrides_and_upgrades_are_not_forwarded() {
        let mut r = req(
            "/v2/public/app/manifests/1",
            &[
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-HTTP-Method", "PUT"),
                ("X-Method-Override", "PATCH"),
                ("Upgrade", "h2c"),
                ("Accept", "application/json"),
            ],
        );
        upstream_request(&mut r, &fwd(0, false, false)).unwrap();
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "upgrade",
        ] {
            assert!(r.headers.get(name).is_none(), "{name}");
        }
        assert_eq!(r.headers["accept"], "application/json");
    }

    #[test]
    fn untrusted_peer_cannot_inject_forwarded_for() {
        let mut r = req(
            "/v2/",
            &[("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "1.2.3.4")],
        );
        upstream_request(&mut r, &fwd(0, false, false)).unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "192.0.2.7");
        assert!(r.headers.get("x-real-ip").is_none());
    }

    #[test]
    fn trusted_peer_chain_is_extended() {
        let mut r = req(
            "/v2/",
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("Authorization", "Basic eA=="),
            ],
        );
        upstream_request(&mut r, &fwd(0, true, false)).unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.1, 192.0.2.7");
        assert_eq!(r.headers["authorization"], "Basic eA==");
    }
}
