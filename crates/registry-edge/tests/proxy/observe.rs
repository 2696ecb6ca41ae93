//! Observability: counts after a scripted series, the access log (a JSON line per request, secrets
//! kept out, request ids in), and security events (a normal pull and push raise none; a scanner
//! and a credential guesser are reported and blocked).

use std::time::{Duration, Instant};

use crate::support::{
    access_log_with, assert_oci_error, connect_from, get, get_from, metrics_text, sample, send,
    start_edge, start_edge_with, Edge, DIGEST, HTTP_OPTS, SAS,
};

/// Security events with low thresholds, blocking after one; 127.0.6.200 never blocked.
const SECURITY: &str = r#"access:
  repositories: { allow: ["team/*"] }
  security_events: { window: 60s, repository_scan: 5, failed_token_requests: 3, embargo_hits: 5 }
  auto_block: { after: 1, window: 10m, duration: 10m }
  allow_cidrs: ["127.0.6.200/32"]
"#;

/// The access log has one JSON line per request; the query's values are redacted unless known
/// to be harmless (a SAS signature is not); credentials never appear.
#[test]
fn access_log_has_a_line_per_request_with_queries_redacted() {
    let edge = start_edge("access-log", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let down = format!("down.test:{}", edge.http);
    let (blob, sas_blob) = (
        format!("/v2/team/app/blobs/{DIGEST}"),
        format!("/blob?{SAS}&size=1000"),
    );
    let basic = "X-Forwarded-For: 203.0.113.9\r\nAuthorization: Basic dTpw\r\n";
    for (h, target, extra, status) in [
        (&host, "/v2/", "", 401),
        (&host, blob.as_str(), "", 307),
        (
            &data_host,
            sas_blob.as_str(),
            "Authorization: Bearer secret\r\n",
            200,
        ),
        (&host, "/v2/echo/app/manifests/latest", basic, 200),
        (&down, &format!("/x?{SAS}"), "", 502),
    ] {
        assert_eq!(get(edge.http, h, target, extra).status, status, "{target}");
    }
    let echo = format!("/echo?{SAS}");
    for _ in 0..16 {
        assert_eq!(get(edge.http, &data_host, &echo, "").status, 200);
    }

    let log = access_log_with(&edge, 21, |_| true);
    assert!(log.lines().count() >= 20, "{log}");
    for line in log.lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(j["status"].is_number());
    }
    assert!(!log.contains("AbC"), "no SAS signature in the access log");
    assert!(log.contains("sig=REDACTED"), "{log}");
    assert!(
        !log.contains("secret") && !log.contains("dTpw"),
        "no credentials in the log"
    );
}

#[test]
fn metrics_count_a_scripted_series() {
    let edge = start_edge_with("metrics", HTTP_OPTS, SECURITY);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let from = |host: &str, target: &str| get_from("127.0.6.1", edge.http, host, target, "");

    for _ in 0..3 {
        assert_eq!(from(&host, "/v2/").status, 401);
    }
    for _ in 0..2 {
        assert_eq!(from("nowhere.example", "/v2/").status, 421);
    }
    let blob = format!("/v2/team/app/blobs/{DIGEST}");
    assert_eq!(from(&host, &blob).status, 307);
    let r = from(&data_host, &format!("/blob?{SAS}&size=1000"));
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let down = format!("down.test:{}", edge.http);
    assert_eq!(from(&down, &format!("/x?{SAS}")).status, 502);
    // `logging` runs after the response is written, and counts a request's series one after
    // the other: wait until all eight are counted, each series in full.
    let upstream_login = "registry_edge_upstream_requests_total{upstream=\"login\"}";
    let counted = [
        (
            "registry_edge_http_edge_responses_total{reason=\"unknown_host\"}",
            2.0,
        ),
        (
            "registry_edge_http_edge_responses_total{reason=\"upstream_error\"}",
            1.0,
        ),
        (
            "registry_edge_rewrites_applied_total{rule=\"registry:www-authenticate\"}",
            3.0,
        ),
        (
            "registry_edge_rewrites_applied_total{rule=\"registry:location\"}",
            1.0,
        ),
        (upstream_login, 4.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = metrics_text(edge.admin);
        let total: f64 = m
            .lines()
            .filter(|l| l.starts_with("registry_edge_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let all = total >= 8.0 && counted.iter().all(|(s, want)| sample(&m, s) >= *want);
        if all || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let req = |route: &str, class: &str, decision: &str| {
        sample(&m, &format!("registry_edge_http_requests_total{{decision=\"{decision}\",method=\"GET\",route=\"{route}\",status_class=\"{class}\"}}"))
    };
    assert_eq!(req("login", "4xx", "proxied"), 3.0);
    assert_eq!(req("none", "4xx", "edge"), 2.0);
    assert_eq!(req("login", "3xx", "proxied"), 1.0);
    assert_eq!(req("data", "2xx", "proxied"), 1.0);
    assert_eq!(
        req("data", "5xx", "error"),
        1.0,
        "{}",
        m.lines()
            .filter(|l| l.starts_with("registry_edge_http_requests_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (series, want) in counted {
        assert_eq!(sample(&m, series), want, "{series}");
    }
    assert!(sample(&m, "registry_edge_http_response_body_bytes_total") >= 1000.0);
    // A gauge that is never negative: present, and not below zero.
    assert!(
        m.lines()
            .any(|l| l.starts_with("registry_edge_http_open_connections ")),
        "no open connections gauge"
    );
    assert!(sample(&m, "registry_edge_http_open_connections") >= 0.0);
    assert!(m.contains("registry_edge_tls_certificate_expiry_timestamp_seconds{certificate="));
}

/// The access log's lines as JSON, once it holds `n` lines of `client`.
fn access_lines(edge: &Edge, n: usize, client: &str) -> Vec<serde_json::Value> {
    access_log_with(edge, n, |l| l["client"] == client)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A normal pull and push raise no event: the 401 on /v2/, a token, manifests, blobs, and the
/// 404s a push gets probing for blobs the registry does not have yet.
#[test]
fn a_normal_pull_and_push_raise_no_security_event() {
    let edge = start_edge_with("security-normal", HTTP_OPTS, SECURITY);
    let host = format!("registry.test:{}", edge.http);
    let normal = "127.0.6.2";
    assert_eq!(get_from(normal, edge.http, &host, "/v2/", "").status, 401);
    let token = "/oauth2/token?scope=repository:team/app:pull,push";
    assert_eq!(get_from(normal, edge.http, &host, token, "").status, 200);
    let bearer = "Authorization: Bearer t\r\n";
    let manifest = "/v2/team/app/manifests/1";
    assert_eq!(
        get_from(normal, edge.http, &host, manifest, bearer).status,
        200
    );
    for _ in 0..12 {
        let mut s = connect_from(normal, edge.http);
        let r = send(&mut s, &format!("HEAD /v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer t\r\n\r\n"));
        assert_eq!(r.status, 404);
    }
    let mut s = connect_from(normal, edge.http);
    let r = send(&mut s, &format!("POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(r.status, 202);

    // Every request observed (its line written after the tracker saw it): no event among them.
    let lines = access_lines(&edge, 16, normal);
    let events: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("event").is_some()).collect();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        get_from(normal, edge.http, &host, "/v2/", "").status,
        401,
        "not blocked"
    );
}

/// A scanner walking repository names and a credential guesser: one event each, then blocked;
/// an address of allow_cidrs raises the event but is never blocked.
#[test]
fn scanners_and_credential_guessers_are_reported_and_blocked() {
    let edge = start_edge_with("security-events", HTTP_OPTS, SECURITY);
    let host = format!("registry.test:{}", edge.http);
    let scanner = "127.0.6.3";
    let mut statuses = Vec::new();
    for i in 0..8 {
        let target = format!("/v2/guess{i}/app/manifests/latest");
        statuses.push(get_from(scanner, edge.http, &host, &target, "").status);
        // Observations are made in `logging`, just after the response: wait for its line.
        access_lines(&edge, i + 1, scanner);
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[403; 3], "{statuses:?}");
    let r = get_from(scanner, edge.http, &host, "/v2/", "");
    assert_oci_error(&r, 403, "DENIED");
    for i in 0..8 {
        let target = format!("/v2/guess{i}/x/manifests/1");
        let r = get_from("127.0.6.200", edge.http, &host, &target, "");
        assert_eq!(r.status, 401);
    }
    // Credential guessing: failed token requests (the test token server refuses wrong:wrong).
    let token = "/oauth2/token?service=registry.test";
    for i in 0..3 {
        let wrong = "Authorization: Basic d3Jvbmc6d3Jvbmc=\r\n";
        let r = get_from("127.0.6.5", edge.http, &host, token, wrong);
        assert_eq!(r.status, 401);
        access_lines(&edge, i + 1, "127.0.6.5");
    }
    assert_eq!(
        get_from("127.0.6.5", edge.http, &host, token, "").status,
        403,
        "blocked after guessing"
    );
    let m = metrics_text(edge.admin);
    let kind = |k: &str| format!("registry_edge_security_events_total{{kind=\"{k}\"}}");
    assert_eq!(sample(&m, &kind("credential_guessing")), 1.0);
    assert_eq!(sample(&m, &kind("repository_scan")), 2.0);
    assert_eq!(sample(&m, "registry_edge_security_blocks_total"), 2.0);
    assert_eq!(
        sample(
            &m,
            "registry_edge_access_refusals_total{mode=\"enforce\",reason=\"auto_block\"}"
        ),
        5.0
    );

    // Each event is a line of the access log.
    let log = access_log_with(&edge, 3, |l| l.get("event").is_some());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("event").is_some()).collect();
    assert_eq!(events.len(), 3, "{events:?}");
    let scans = events.iter().filter(|e| e["event"] == "repository_scan");
    assert_eq!(scans.count(), 2);
    assert!(events
        .iter()
        .any(|e| e["event"] == "credential_guessing" && e["client"] == "127.0.6.5"));
    assert_eq!(events.iter().filter(|e| e["client"] == scanner).count(), 1);
    assert!(events
        .iter()
        .any(|e| e["client"] == "127.0.6.200" && e["blocked_for_s"].is_null()));
}

/// Secrets never reach a line: Basic and Bearer credentials, cookies, SAS signatures in queries
/// and paths, tokens in query strings and in token POST bodies. Every request line has a request
/// id, and the same id went upstream.
#[test]
fn access_log_keeps_secrets_out_and_request_ids_in() {
    let edge = start_edge_with("access-secrets", HTTP_OPTS, SECURITY);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let sas_blob = format!("/blob?{SAS}&size=1000");
    let secrets = [
        (
            "Authorization: Basic c2VjcmV0LXVzZXI6c2VjcmV0LXBhc3M=\r\n",
            "/v2/",
            host.as_str(),
        ),
        (
            "Authorization: Bearer secret-bearer-token\r\n",
            "/v2/team/app/manifests/1",
            host.as_str(),
        ),
        ("Cookie: session=secret-cookie\r\n", "/v2/", host.as_str()),
        (
            "",
            "/blob;sig=secret-path-sig/x?sig=secret-query-sig&size=10",
            data_host.as_str(),
        ),
        (
            "",
            "/oauth2/token?access_token=secret-query-token&refresh_token=secret-refresh",
            host.as_str(),
        ),
        ("", sas_blob.as_str(), data_host.as_str()),
    ];
    for (header, target, h) in secrets {
        let _ = get_from("127.0.6.4", edge.http, h, target, header);
    }
    let body = "grant_type=password&username=u&password=secret-form-password";
    let mut s = connect_from("127.0.6.4", edge.http);
    let r = send(
        &mut s,
        &format!("POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert_eq!(r.status, 200);
    let log = access_log_with(&edge, 7, |_| true);
    for secret in [
        "c2VjcmV0",
        "secret-user",
        "secret-bearer-token",
        "secret-cookie",
        "secret-path-sig",
        "secret-query-sig",
        "secret-query-token",
        "secret-refresh",
        "secret-form-password",
        "AbC%2B",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the access log");
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .all(|l| l.get("event").is_some()
            || l["request_id"].as_str().is_some_and(|id| id.len() == 32)));
    let last_login = edge
        .login
        .seen
        .lock()
        .unwrap()
        .last()
        .map(|r| r.header("x-request-id").unwrap_or_default().to_string())
        .unwrap();
    assert!(
        lines.iter().any(|l| l["request_id"] == last_login.as_str()),
        "the upstream saw a logged request id"
    );
}
