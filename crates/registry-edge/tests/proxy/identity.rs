//! No upstream name reaches a client (identity.rs in the proxy): the challenge's `service` is the
//! public host, redirects to a storage host no data endpoint is configured for are refused (or
//! passed) and counted, the registry's and pingora's server identity is not shown, and a data
//! host under the login host never receives credentials.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{
    assert_oci_error, eventually, get, metrics_text, sample, send, start_edge_opts, Edge, EdgeOpts,
    DIGEST,
};

const LOCATION: &str = "registry_edge_rewrite_unmapped_urls_total{header=\"location\"}";

/// The warnings about the unmapped storage host, once there is one, and the whole log for a
/// failure message.
fn warnings(edge: &Edge) -> (usize, String) {
    let read = || {
        let log = std::fs::read_to_string(edge.dir.join("stderr.log")).unwrap_or_default();
        let n = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("storage.invalid"))
            .count();
        (n, log)
    };
    eventually("a warning naming the host", Duration::from_secs(5), || {
        read().0 > 0
    });
    read()
}

#[test]
fn unmapped_redirects_are_refused_counted_and_logged_once() {
    let edge = start_edge_opts("unmapped-refuse", &EdgeOpts::default());
    let host = format!("registry.test:{}", edge.http);
    let target = format!("/v2/team/unmapped/blobs/{DIGEST}");
    let before = sample(&metrics_text(edge.admin), LOCATION);
    for _ in 0..3 {
        let r = get(edge.http, &host, &target, "Authorization: Bearer t\r\n");
        assert_oci_error(&r, 502, "UNAVAILABLE");
        assert!(r.header("location").is_none(), "{:?}", r.headers);
    }
    assert_eq!(sample(&metrics_text(edge.admin), LOCATION), before + 3.0);
    let (n, log) = warnings(&edge);
    assert_eq!(n, 1, "one warning per minute, naming the host:\n{log}");
    // A mapped redirect is untouched.
    let r = get(
        edge.http,
        &host,
        &format!("/v2/team/app/blobs/{DIGEST}"),
        "Authorization: Bearer t\r\n",
    );
    assert_eq!(r.status, 307);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(&format!("http://data.test:{}/", edge.http))),
        "{:?}",
        r.headers
    );
}

#[test]
fn unmapped_redirects_pass_when_configured() {
    let edge = start_edge_opts(
        "unmapped-pass",
        &EdgeOpts {
            registry_opts: "  unmapped_redirects: pass\n",
            ..EdgeOpts::default()
        },
    );
    let host = format!("registry.test:{}", edge.http);
    let target = format!("/v2/team/unmapped/blobs/{DIGEST}");
    let r = get(edge.http, &host, &target, "");
    assert_eq!(r.status, 307);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("http://storage.invalid:")));
    assert_eq!(sample(&metrics_text(edge.admin), LOCATION), 1.0);
    let (n, log) = warnings(&edge);
    assert_eq!(n, 1, "{log}");
}

#[test]
fn challenges_name_the_public_host_and_no_server_is_named() {
    let edge = start_edge_opts(
        "identity",
        &EdgeOpts {
            data_host: Some("blobs.registry.test"),
            ..EdgeOpts::default()
        },
    );
    let host = format!("registry.test:{}", edge.http);

    // The registry's challenge and the edge's own (a hidden repository) name the public host.
    let r = get(edge.http, &host, "/v2/", "");
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("service=\"registry.test\""),
        "{challenge}"
    );
    // A token request naming the public host reaches the token server with the registry's
    // name; an unknown audience is refused at the edge.
    let r = get(
        edge.http,
        &host,
        "/oauth2/token?service=registry.test&scope=repository:team/app:pull",
        "",
    );
    assert_eq!(r.status, 200);
    let target = r.json()["target"].as_str().unwrap().to_string();
    assert!(
        !target.contains("registry.test") && target.contains("service="),
        "{target}"
    );
    let r = get(
        edge.http,
        &host,
        "/oauth2/token?service=elsewhere.example&scope=repository:team/app:pull",
        "",
    );
    assert_oci_error(&r, 400, "UNSUPPORTED");

    // The origin's Server and X-Powered-By do not pass.
    let r = get(edge.http, &host, "/v2/echo/app/manifests/x", "");
    assert_eq!(r.status, 200);
    assert!(r.header("server").is_none(), "{:?}", r.headers);
    assert!(r.header("x-powered-by").is_none(), "{:?}", r.headers);

    // pingora's own answer to a head it cannot parse names no server either.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\nBad Header\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 400"), "{text}");
    assert!(!text.contains("server:"), "{text}");

    // A data host under the login host: Authorization and cookies never reach the data
    // endpoint (its origin echoes what it received).
    let data = format!("blobs.registry.test:{}", edge.http);
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!(
            "GET /echo?sig=1 HTTP/1.1\r\nHost: {data}\r\nAuthorization: Basic dTpw\r\nCookie: session=secret\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = r.json();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");
}
