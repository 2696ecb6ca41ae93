//! No upstream name reaches a client (docs/rewrite-engine.md, "What clients see"):
//!
//! - the `service` of every challenge (the token audience, which for ACR is the registry's own
//!   login server name) becomes the public host; token requests map it back (service/token.rs);
//! - every absolute URL left in `Location`, `Link` or a challenge's `realm` after the rewrite
//!   engine ran is checked against the public hosts: one that is not on them is *unmapped*
//!   (counted, and logged at most once a minute per header); a redirect to one is refused
//!   unless `registry.unmapped_redirects: pass`;
//! - `Server`, `X-Powered-By` and ASP.NET's version headers are removed
//!   (`registry.hide_server_headers`).
//!
//! Pure functions over a response head.

use http::header::{LINK, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

/// Headers that name the software behind the edge.
pub static SERVER_HEADERS: [HeaderName; 4] = [
    http::header::SERVER,
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
];

/// The error type of a response refused for an unmapped redirect (`fail_to_proxy` answers 502).
pub const UNMAPPED_REDIRECT: &str = "unmapped_redirect";

/// The headers whose URLs are checked, as metric labels.
pub const URL_HEADERS: [&str; 3] = ["location", "link", "www-authenticate"];

pub fn hide_server(resp: &mut ResponseHeader) {
    for name in &SERVER_HEADERS {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
}

/// The `service` parameter's value range in a challenge, for each `service=` parameter.
fn service_ranges(v: &str) -> Vec<(usize, usize)> {
    let lower = v.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("service=") {
        let at = from + i;
        let start = at + "service=".len();
        // A parameter name starts the value, or follows a separator.
        let boundary = at == 0 || matches!(v.as_bytes()[at - 1], b' ' | b',' | b'\t');
        from = start;
        if !boundary {
            continue;
        }
        let rest = &v[start..];
        let (s, e) = if let Some(quoted) = rest.strip_prefix('"') {
            match quoted.find('"') {
                Some(j) => (start + 1, start + 1 + j),
                None => continue,
            }
        } else {
            let j = rest.find([',', ' ']).unwrap_or(rest.len());
            (start, start + j)
        };
        out.push((s, e));
        from = e;
    }
    out
}

/// The first `service` of the first challenge (the registry's audience).
pub fn service_of(resp: &ResponseHeader) -> Option<&str> {
    resp.headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| service_ranges(v).first().map(|&(s, e)| &v[s..e]))
}

/// Every challenge's `service` becomes `public`.
pub fn public_service(resp: &mut ResponseHeader, public: &str) {
    let values: Vec<HeaderValue> = resp
        .headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    if values.is_empty() {
        return;
    }
    let mut changed = false;
    let rewritten: Vec<HeaderValue> = values
        .into_iter()
        .map(|hv| {
            let Ok(v) = hv.to_str() else { return hv };
            let ranges = service_ranges(v);
            if ranges.is_empty() {
                return hv;
            }
            let mut out = String::with_capacity(v.len());
            let mut last = 0;
            for (s, e) in ranges {
                out.push_str(&v[last..s]);
                out.push_str(public);
                last = e;
            }
            out.push_str(&v[last..]);
            changed |= out != v;
            HeaderValue::from_str(&out).unwrap_or(hv)
        })
        .collect();
    if changed {
        resp.remove_header(&WWW_AUTHENTICATE);
        for v in rewritten {
            let _ = resp.append_header(WWW_AUTHENTICATE, v);
        }
    }
}

/// The host of an absolute URL (`scheme://` or `//`), lower case, without user info, port or
/// brackets; `None` for a relative one.
pub fn url_host(url: &str) -> Option<String> {
    let url = url.trim();
    let after = match url.find("://") {
        Some(i)
            if url[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            &url[i + 3..]
        }
        _ => url.strip_prefix("//")?,
    };
    let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The absolute URLs of a header value: `Location` whole, each `<URL>` of `Link`, each `realm`
/// of `WWW-Authenticate`.
fn urls<'a>(header: &str, v: &'a str) -> Vec<&'a str> {
    match header {
        "location" => vec![v],
        "link" => v
            .split('<')
            .skip(1)
            .filter_map(|p| p.split_once('>').map(|(u, _)| u))
            .collect(),
        _ => {
            let lower = v.to_ascii_lowercase();
            let mut out = Vec::new();
            let mut from = 0;
            while let Some(i) = lower[from..].find("realm=\"") {
                let s = from + i + "realm=\"".len();
                match v[s..].find('"') {
                    Some(j) => {
                        out.push(&v[s..s + j]);
                        from = s + j;
                    }
                    None => break,
                }
            }
            out
        }
    }
}

/// An absolute URL that names none of `publics`, as (index into [`URL_HEADERS`], its host).
pub fn unmapped(resp: &ResponseHeader, status: u16, publics: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, (name, applies)) in [
        (&LOCATION, matches!(status, 300..=399 | 201 | 202 | 204)),
        (&LINK, true),
        (&WWW_AUTHENTICATE, status == 401),
    ]
    .into_iter()
    .enumerate()
    {
        if !applies {
            continue;
        }
        for v in resp
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for url in urls(URL_HEADERS[i], v) {
                if let Some(host) = url_host(url) {
                    if !publics.contains(&host) {
                        out.push((i, host));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn every_challenge_names_the_public_host_as_its_service() {
        let mut r = resp(
            401,
            &[
                (
                    "WWW-Authenticate",
                    "Bearer realm=\"https://p.example/oauth2/token\",service=\"reg.azurecr.io\",scope=\"repository:a:pull\"",
                ),
                ("WWW-Authenticate", "Basic realm=\"x\", Service=reg.azurecr.io"),
            ],
        );
        assert_eq!(service_of(&r), Some("reg.azurecr.io"));
        public_service(&mut r, "p.example");
        let v: Vec<_> = r
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            v,
            [
                "Bearer realm=\"https://p.example/oauth2/token\",service=\"p.example\",scope=\"repository:a:pull\"",
                "Basic realm=\"x\", Service=p.example"
            ]
        );
        // `noservice=` is not a service parameter.
        assert!(service_ranges("Bearer noservice=\"x\"").is_empty());
    }

    #[test]
    fn urls_off_the_public_hosts_are_found() {
        let publics = vec!["p.example".to_string(), "d.example".to_string()];
        let r = resp(
            307,
            &[
                ("Location", "https://storage.internal:8443/x/data?sig=1"),
                (
                    "Link",
                    "</v2/_catalog?n=1>; rel=\"next\", <https://D.example/x>; rel=\"a\"",
                ),
            ],
        );
        assert_eq!(
            unmapped(&r, 307, &publics),
            [(0, "storage.internal".to_string())]
        );
        let r = resp(307, &[("Location", "https://d.example/x?sig=1")]);
        assert!(unmapped(&r, 307, &publics).is_empty());
        let r = resp(200, &[("Location", "https://other/")]);
        assert!(
            unmapped(&r, 200, &publics).is_empty(),
            "Location only on redirects and uploads"
        );
        let r = resp(
            401,
            &[(
                "WWW-Authenticate",
                "Bearer realm=\"https://reg.azurecr.io/oauth2/token\"",
            )],
        );
        assert_eq!(
            unmapped(&r, 401, &publics),
            [(2, "reg.azurecr.io".to_string())]
        );
        assert_eq!(url_host("//u@[::1]:5/x").as_deref(), Some("::1"));
        assert_eq!(url_host("/v2/relative"), None);
        assert_eq!(
            url_host("HTTP://P.Example./x").as_deref(),
            Some("p.example")
        );
    }

    #[test]
    fn server_identity_is_removed() {
        let mut r = resp(
            200,
            &[
                ("Server", "nginx"),
                ("X-Powered-By", "ASP.NET"),
                ("X-AspNet-Version", "4"),
                ("Content-Type", "x"),
            ],
        );
        hide_server(&mut r);
        assert!(r.headers.get("server").is_none() && r.headers.get("x-powered-by").is_none());
        assert!(r.headers.get("x-aspnet-version").is_none());
        assert_eq!(r.headers["content-type"], "x");
    }
}
