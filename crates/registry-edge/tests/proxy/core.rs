//! What every request meets: the rewrites that keep clients on the public origin, the headers
//! sent upstream, uploads streamed through, the edge's own answers to requests it will not
//! forward, upstream failures (refused, silent, TLS, retried on another peer), and the
//! listeners (redirect, IPv6, TLS with SNI, HTTP/2 and the server's suite order, admin).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{
    assert_oci_error, curl, eventually, get, get_from, is_pattern, metrics_text, metrics_with,
    sample, send, start_edge, uploads, DIGEST, HTTP_OPTS, MANIFEST, SAS,
};

/// Whether the connection still carries a request (any answer will do).
fn connection_alive(s: &mut TcpStream, host: &str) -> bool {
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_ok()
        && {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 ")
        }
}

/// Until `series` shows in the metrics, then not at 0.
fn assert_counted(admin: u16, series: &str) {
    let m = metrics_with(admin, &[&format!("{series} ")]);
    assert!(!m.contains(&format!("{series} 0")), "{series} at 0");
}

/// The realm and the blob Location name the client's public origin; the SAS query survives
/// byte for byte; `service=` is the public host (mapped back in token requests).
#[test]
fn challenge_and_blob_redirect_name_the_public_origin() {
    let edge = start_edge("core-redirect", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    let r = get(edge.http, &host, "/v2/", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"http://{host}/oauth2/token\",service=\"registry.test\"")
    );
    let r = get(
        edge.http,
        &host,
        &format!("/v2/team/app/blobs/{DIGEST}"),
        "",
    );
    assert_eq!(r.status, 307);
    assert_eq!(r.header("content-length"), Some("0"));
    let location = r.header("location").unwrap().to_string();
    assert_eq!(
        location,
        format!("http://{data_host}/docker/registry/v2/blobs/sha256/6c/x/data?{SAS}")
    );

    // Following it, with the Authorization a careless client resends, still works: the edge
    // drops the header towards the data endpoint (which would answer 400 otherwise).
    let target = location
        .strip_prefix(&format!("http://{data_host}"))
        .unwrap();
    let r = get(
        edge.http,
        &data_host,
        target,
        "Authorization: Bearer secret\r\n",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.len(), 1 << 20);
    assert!(is_pattern(&r.body, 0));
    let seen = edge.data.seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.target, target, "query kept byte for byte");
    assert!(last.header("authorization").is_none());
    assert_eq!(
        last.header("host"),
        Some(edge.data.addr.to_string().as_str())
    );
    drop(seen);

    // Counted: the proxied 401 of the login side, the rewritten Location.
    metrics_with(
        edge.admin,
        &[
            "registry_edge_http_requests_total{decision=\"proxied\",method=\"GET\",route=\"login\",status_class=\"4xx\"}",
            "registry_edge_rewrites_applied_total{rule=\"registry:location\"} ",
        ],
    );
}

#[test]
fn ranges_manifest_heads_and_pagination() {
    let edge = start_edge("core-range", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    // Range → 206 with the exact Content-Range and bytes.
    let r = get(
        edge.http,
        &data_host,
        &format!("/blob?{SAS}&size=1000000"),
        "Range: bytes=1000-1999\r\n",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/1000000"));
    assert_eq!(r.body.len(), 1000);
    assert!(is_pattern(&r.body, 1000));

    // HEAD on a manifest keeps the digest and type.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!("HEAD /v2/team/app/manifests/latest HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(DIGEST));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        r.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );

    // Link pagination is rewritten.
    let r = get(edge.http, &host, "/v2/_catalog", "");
    assert_eq!(
        r.header("link"),
        Some(format!("<http://{host}/v2/_catalog?last=b&n=2>; rel=\"next\"").as_str())
    );
}

#[test]
fn forwarding_headers_and_token_routing() {
    let edge = start_edge("core-forward", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);

    // Forwarding headers: set by the edge, a client's X-Forwarded-For is not believed.
    let r = get(
        edge.http,
        &host,
        "/v2/echo/app/manifests/latest",
        "X-Forwarded-For: 203.0.113.9\r\nAuthorization: Basic dTpw\r\n",
    );
    let j = r.json();
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-forwarded-host"], host.as_str());
    assert_eq!(j["headers"]["host"], edge.login.addr.to_string().as_str());
    assert_eq!(
        j["headers"]["authorization"], "Basic dTpw",
        "the login side keeps credentials"
    );

    // Token paths go to the token server; the rest of the login host to the login server.
    let r = get(
        edge.http,
        &host,
        "/oauth2/token?scope=repository:team/app:pull&service=registry.test",
        "",
    );
    let j = r.json();
    // The target is rebuilt from the decoded parameters, re-encoded, with the registry's own
    // `service` in place of the public host.
    assert_eq!(
        j["target"],
        format!(
            "/oauth2/token?scope=repository%3Ateam%2Fapp%3Apull&service={}",
            edge.login.addr.to_string().replace(':', "%3A")
        )
    );
    assert_ne!(j["headers"]["host"], edge.login.addr.to_string().as_str());
    let r = get(edge.http, &host, "/v2/echo/app/manifests/x", "");
    assert_eq!(
        r.json()["headers"]["host"],
        edge.login.addr.to_string().as_str()
    );
    // A path that is no registry route is answered by the edge, never forwarded.
    let r = get(edge.http, &host, "/oauth2/other", "");
    assert_oci_error(&r, 404, "NAME_UNKNOWN");
}

/// A chunked upload streams through; the absolute upload Location is rewritten.
#[test]
fn chunked_upload_streams_through() {
    let edge = start_edge("core-upload", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);
    let r = uploads(&edge, &host);
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-body-ok"), Some("true"));
    assert_eq!(
        r.header("x-body-len"),
        Some((3 * 1024 * 1024 + 17).to_string().as_str())
    );
    assert_eq!(
        r.header("location"),
        Some(format!("http://{host}/v2/team/app/blobs/uploads/u-1?_state=next").as_str())
    );
}

#[test]
fn misdirected_and_malformed_requests_get_the_edges_answers() {
    let edge = start_edge("core-refusals", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);

    // Misdirected requests: 421 with an OCI body, and the connection stays usable.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(&mut s, "GET /v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_oci_error(&r, 421, "UNSUPPORTED");
    // The user's response rules apply to the edge's own answers as to proxied ones.
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        get(edge.http, &host, "/v2/", "").header("x-frame-options"),
        Some("DENY")
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let r = send(&mut s, "GET /v2/ HTTP/1.1\r\n\r\n");
    assert_oci_error(&r, 421, "UNSUPPORTED");
    let r = send(
        &mut s,
        "GET /v2/a/../b/manifests/x HTTP/1.1\r\nHost: registry.test\r\n\r\n",
    );
    assert_oci_error(&r, 400, "NAME_INVALID");
    let r = send(
        &mut s,
        "GET /v2/a%2Fb/manifests/x HTTP/1.1\r\nHost: registry.test\r\n\r\n",
    );
    assert_oci_error(&r, 400, "NAME_INVALID");
    assert!(
        connection_alive(&mut s, &host),
        "refusals keep the connection"
    );

    // Headers over the listener's limit: 431, OCI body.
    let big = "x".repeat(5000);
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n"),
    );
    assert_oci_error(&r, 431, "UNSUPPORTED");

    // Garbage on the socket: a 400 or a closed connection, and the process lives on.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x00\x00\x00\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost registry.test\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 400"),
            "junk {junk:?} → {text:?}"
        );
    }
    assert_eq!(get(edge.http, &host, "/v2/", "").status, 401);

    // The misdirected requests are counted by reason.
    metrics_with(
        edge.admin,
        &["registry_edge_http_edge_responses_total{reason=\"unknown_host\"} "],
    );
}

/// Upstream refuses → 502; upstream never answers → 504 after the read timeout; both with an
/// OCI body, and other routes unaffected. TLS to the upstream: SNI and verification against the
/// configured CA; a certificate for another name, or the system roots that do not know the test
/// CA, fail as 502.
#[test]
fn upstream_failures_answer_502_and_504() {
    let edge = start_edge("core-upstream", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);

    let t = Instant::now();
    let r = get(
        edge.http,
        &format!("down.test:{}", edge.http),
        &format!("/x?{SAS}"),
        "",
    );
    assert_oci_error(&r, 502, "UNAVAILABLE");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let t = Instant::now();
    let r = get(
        edge.http,
        &format!("slow.test:{}", edge.http),
        &format!("/x?{SAS}"),
        "",
    );
    assert_oci_error(&r, 504, "UNAVAILABLE");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(get(edge.http, &host, "/v2/", "").status, 401);

    let r = get(
        edge.http,
        &format!("tls-data.test:{}", edge.http),
        "/echo?sig=1",
        "",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let upstream_host = r.json()["headers"]["host"].as_str().unwrap().to_string();
    assert!(upstream_host.starts_with("localhost:"), "{upstream_host}");
    for h in ["wrong-data.test", "roots-data.test"] {
        let r = get(edge.http, &format!("{h}:{}", edge.http), "/echo?sig=1", "");
        assert_oci_error(&r, 502, "UNAVAILABLE");
    }

    // The refused connections are counted against their upstream.
    assert_counted(
        edge.admin,
        "registry_edge_upstream_connect_errors_total{upstream=\"data:westus\"}",
    );
}

/// Connect failures of GET are retried on the next peer: one of data.test's two peers refuses.
/// Each client keeps to one peer order; sixteen clients make it all but certain (1 - 2^-16) that
/// one starts with the refusing peer, and none of them sees a failure.
#[test]
fn connect_failures_are_retried_on_the_next_peer() {
    let edge = start_edge("core-retry", HTTP_OPTS);
    let data_host = format!("data.test:{}", edge.http);
    for i in 0..16 {
        let r = get_from(
            &format!("127.0.7.{}", i + 1),
            edge.http,
            &data_host,
            &format!("/echo?{SAS}"),
            "",
        );
        assert_eq!(r.status, 200);
    }
    assert_counted(
        edge.admin,
        "registry_edge_upstream_retries_total{upstream=\"data:eastus\"}",
    );
}

#[test]
fn redirect_ipv6_and_admin_listeners() {
    let edge = start_edge("core-listeners", HTTP_OPTS);

    // The redirect listener: GET/HEAD → 308 to https, others refused; unknown hosts never
    // become an open redirect.
    let r = get(
        edge.redirect,
        "registry.test",
        "/v2/team/app/manifests/1?x=y",
        "",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://registry.test/v2/team/app/manifests/1?x=y")
    );
    let mut s = TcpStream::connect(("127.0.0.1", edge.redirect)).unwrap();
    let r = send(
        &mut s,
        "POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_oci_error(&r, 405, "UNSUPPORTED");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = get(edge.redirect, "evil.example", "/", "");
    assert_eq!(r.status, 421);

    // IPv6 listener.
    if let Some(p) = edge.v6 {
        let mut s = TcpStream::connect(("::1", p)).unwrap();
        let r = send(&mut s, "GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n");
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("realm=\"http://registry.test/oauth2/token\""));
    }

    // Admin: health, readiness, metrics from the registry the edge created.
    assert_eq!(get(edge.admin, "a", "/healthz", "").status, 200);
    assert_eq!(get(edge.admin, "a", "/readyz", "").status, 200);
    let m = metrics_text(edge.admin);
    assert!(
        m.contains("registry_edge_ready 1"),
        "metrics lack readiness"
    );
}

/// TLS: the certificate is chosen by SNI, verified against the test CA; HTTP/2 and HTTP/1.1.
#[test]
fn tls_listener_chooses_certificates_by_sni_over_h2_and_h1() {
    let edge = start_edge("core-tls", HTTP_OPTS);
    let ca = edge.certs.ca.to_str().unwrap();
    for (name, path) in [("registry.test", "/v2/"), ("data.test", "/echo?sig=1")] {
        for version in ["--http2", "--http1.1"] {
            let url = format!("https://{name}:{}{path}", edge.tls);
            let resolve = format!("{name}:{}:127.0.0.1", edge.tls);
            let (out, err) = curl(&[
                version,
                "--cacert",
                ca,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ]);
            let want = if name == "registry.test" {
                "401"
            } else {
                "200"
            };
            let v = if version == "--http2" { "2" } else { "1.1" };
            assert_eq!(out, format!("{v} {want}"), "{name} {version}: {err}");
        }
    }
    // Over TLS the public URLs are https and carry the client's port.
    let resolve = format!("registry.test:{}:127.0.0.1", edge.tls);
    let (out, err) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("https://registry.test:{}/v2/", edge.tls),
    ]);
    assert!(
        out.contains(&format!(
            "realm=\"https://registry.test:{}/oauth2/token\"",
            edge.tls
        )),
        "{out}{err}"
    );
    // HTTP/2 carries only `:authority`, no Host: it routes the same (curl sends no Host on h2).
    let (out, err) = curl(&[
        "--http2",
        "-v",
        "--cacert",
        ca,
        "--resolve",
        &format!("data.test:{}:127.0.0.1", edge.tls),
        &format!("https://data.test:{}/echo?sig=1", edge.tls),
    ]);
    assert!(err.contains("[:authority: data.test:"), "{err}");
    assert!(!err.contains("[host: "), "{err}");
    assert!(out.contains("\"x-forwarded-host\":\"data.test:"), "{out}");
}

#[test]
fn tls_suite_order_and_plain_http_refused() {
    let edge = start_edge("core-suites", HTTP_OPTS);
    let ca = edge.certs.ca.to_str().unwrap();
    let resolve = format!("registry.test:{}:127.0.0.1", edge.tls);
    // The server's suite order: AES-128-GCM although OpenSSL offers AES-256-GCM first; a client
    // that offers only another suite still gets it.
    for (ciphers, want) in [
        (None, "TLSv1.3 / TLS_AES_128_GCM_SHA256"),
        (
            Some("TLS_AES_256_GCM_SHA384"),
            "TLSv1.3 / TLS_AES_256_GCM_SHA384",
        ),
        (
            Some("TLS_CHACHA20_POLY1305_SHA256"),
            "TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let mut args = vec!["-v", "--cacert", ca, "--resolve", &resolve];
        if let Some(c) = ciphers {
            args.extend(["--tls13-ciphers", c]);
        }
        let url = format!("https://registry.test:{}/v2/", edge.tls);
        args.extend(["-o", "/dev/null", &url]);
        let (_, err) = curl(&args);
        assert!(err.contains(want), "{ciphers:?}: {err}");
    }

    // Plain HTTP to the TLS listener: the handshake fails, is counted, and the connection closes.
    let series = format!(
        "registry_edge_tls_handshake_failures_total{{listener=\"127.0.0.1:{}\",reason=\"error\"}}",
        edge.tls
    );
    let before = sample(&metrics_text(edge.admin), &series);
    let mut s = TcpStream::connect(("127.0.0.1", edge.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the edge closes the connection: {closed:?}");
    assert!(
        !rest.starts_with(b"HTTP/"),
        "no HTTP answer on a TLS listener"
    );
    // Counted when the handshake task ends, which may be just after the close is seen.
    eventually(
        "the failed handshake to be counted",
        Duration::from_secs(5),
        || sample(&metrics_text(edge.admin), &series) == before + 1.0,
    );
}

/// A proxy listener whose address is taken keeps the edge unready while it retries the bind
/// (`/readyz` 503, the ready gauge at 0): a load balancer must not send clients to an address the
/// edge does not serve yet. Once the address is free the listener binds, `/readyz` says ready and
/// the listener serves.
#[test]
fn readiness_waits_for_every_listener_to_accept() {
    let dir = crate::support::edge_dir("core-listener-wait");
    let login = crate::support::start_origin(crate::support::Kind::Login, None);
    let held = crate::ports::listener();
    let http = held.local_addr().unwrap().port();
    let admin = crate::ports::free_port();
    let yaml = format!(
        r#"version: 1
{server}listeners:
  - address: "127.0.0.1:{http}"
admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{login}"
  public_host: registry.test
  tls: false
"#,
        server = crate::ports::server_section(&dir.display().to_string(), "1s"),
        login = login.addr,
    );
    let mut child = crate::support::spawn_edge(&dir, &yaml);
    let readyz = || {
        TcpStream::connect(("127.0.0.1", admin))
            .ok()
            .map(|mut s| send(&mut s, "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n"))
    };
    // The admin app answers; the listener's address is still held by this test.
    eventually("the admin app", Duration::from_secs(20), || {
        readyz().is_some()
    });
    let log = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    eventually("a bind retried", Duration::from_secs(10), || {
        log().contains("is in use, trying again")
    });
    let r = readyz().expect("the admin app");
    assert_eq!(r.status, 503, "{}", log());
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "listeners not accepting yet\n"
    );
    let m = metrics_text(admin);
    assert!(m.contains("\nregistry_edge_ready 0\n"), "{m}");

    drop(held);
    eventually("ready", Duration::from_secs(10), || {
        readyz().is_some_and(|r| r.status == 200)
    });
    assert_eq!(
        get(http, &format!("registry.test:{http}"), "/v2/", "").status,
        401
    );
    let m = metrics_text(admin);
    assert!(m.contains("\nregistry_edge_ready 1\n"), "{m}");
    child.kill().unwrap();
    child.wait().unwrap();
}
