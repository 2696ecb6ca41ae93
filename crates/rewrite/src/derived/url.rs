//! Recognising an absolute URL's authority without a general URL parser: only what is needed
//! to decide "is this one of our upstreams" and where the authority ends.

/// How the authority of a URL reads, when it is one we could own.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Authority<'u> {
    /// Host without brackets (IPv6) and without a trailing root dot.
    pub(super) host: &'u [u8],
    /// The explicit port, `None` when absent (or empty, which RFC 3986 reads as the default).
    pub(super) port: Option<u16>,
    /// Ports the URL means when it names none: one for `http:`/`https:`, both for a
    /// scheme-relative `//host` (its scheme is whatever the client used).
    pub(super) default_ports: &'static [u16],
    /// Offset in the URL of the first byte after the authority (path, query or fragment).
    pub(super) end: usize,
}

/// `None` for relative references, other schemes, and authorities we refuse to reason about:
/// any with userinfo (`user@host`), because `https://upstream@elsewhere/` names `elsewhere` and
/// rewriting `https://x@upstream/` would keep a userinfo aimed at some other party; and any with
/// a backslash, which WHATWG URL parsers (browsers) read as a path separator.
pub(super) fn authority(url: &[u8]) -> Option<Authority<'_>> {
    let (start, default_ports): (usize, &'static [u16]) =
        if starts_with_ignore_case(url, b"https://") {
            (8, &[443])
        } else if starts_with_ignore_case(url, b"http://") {
            (7, &[80])
        } else if url.starts_with(b"//") {
            (2, &[80, 443])
        } else {
            return None;
        };
    let rest = &url[start..];
    let len = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..len];
    if authority.iter().any(|b| matches!(b, b'@' | b'\\')) {
        return None;
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix(b"[") {
        let close = bracketed.iter().position(|&b| b == b']')?;
        let after = &bracketed[close + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(b":")?)
        };
        (&bracketed[..close], port)
    } else {
        let (host, port) = match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        };
        // `host.` is the same host, written as a fully qualified name.
        (host.strip_suffix(b".").unwrap_or(host), port)
    };
    let port = match port {
        None | Some(b"") => None,
        Some(digits) => Some(parse_port(digits)?),
    };
    Some(Authority {
        host,
        port,
        default_ports,
        end: start + len,
    })
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    digits.iter().try_fold(0u16, |port, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        port.checked_mul(10)?.checked_add(u16::from(b - b'0'))
    })
}

pub(super) fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> Option<(String, Option<u16>, &'static [u16], String)> {
        authority(url.as_bytes()).map(|a| {
            (
                String::from_utf8_lossy(a.host).into_owned(),
                a.port,
                a.default_ports,
                url[a.end..].to_owned(),
            )
        })
    }

    #[test]
    fn splits_authorities() {
        assert_eq!(
            parts("https://Reg.AzureCR.io/v2/?x#y"),
            Some(("Reg.AzureCR.io".into(), None, &[443][..], "/v2/?x#y".into()))
        );
        assert_eq!(
            parts("HTTP://host:5000?q"),
            Some(("host".into(), Some(5000), &[80][..], "?q".into()))
        );
        assert_eq!(
            parts("https://[2001:DB8::1]:8443/p"),
            Some(("2001:DB8::1".into(), Some(8443), &[443][..], "/p".into()))
        );
        assert_eq!(
            parts("https://[::1]"),
            Some(("::1".into(), None, &[443][..], "".into()))
        );
        assert_eq!(
            parts("//host.:/x"),
            Some(("host".into(), None, &[80, 443][..], "/x".into()))
        );
        assert_eq!(
            parts("https://h:0443/"),
            Some(("h".into(), Some(443), &[443][..], "/".into()))
        );
    }

    #[test]
    fn refuses_what_it_cannot_own() {
        for url in [
            "/v2/x",
            "v2/x",
            "ftp://host/",
            "https://user@host/",
            "https://host@evil.example/",
            "https://evil.example\\@host/",
            "https://host:99999/",
            "https://host:44x/",
            "https://[::1/",
            "https://[::1]x/",
            "https:/host/",
        ] {
            assert_eq!(parts(url), None, "{url}");
        }
    }
}
