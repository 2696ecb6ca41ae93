//! Which answer a request gets, and what each answer carries.

use super::*;
use crate::outcome::PolicyReason;

fn listener(extra: &str) -> Listener {
    crate::testing::minimal(extra, "").listeners[0].clone()
}

fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut h = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    for (k, v) in headers {
        h.append_header(k.to_string(), *v).unwrap();
    }
    h
}

fn edge(r: &EdgeResponse) -> (u16, &'static str) {
    (r.status, r.reason.label())
}

#[test]
fn header_bytes_count_the_request_line_and_each_header_line() {
    // "GET /v2/ HTTP/1.1\r\n" is 19 bytes; "host: r.example\r\n" is 17.
    let h = head("GET", "/v2/", &[("host", "r.example")]);
    assert_eq!(header_bytes(&h), 19 + 17);
}

#[test]
fn oversized_headers_get_431_before_anything_else() {
    let l = listener(", max_request_header_bytes: 1024, redirect_to_https: true");
    let big = "x".repeat(1100);
    let h = head("PUT", "/v2/", &[("x-big", &big)]);
    let r = before_policy(&h, "r.example", Some(&Misroute::UnknownHost), &l).unwrap();
    assert_eq!(edge(&r), (431, "header_too_large"));
    assert!(r.message.contains("1024"));
    // One byte under the limit passes to the next check.
    let fits = "x".repeat(1024 - header_bytes(&head("GET", "/v2/", &[("x-big", "")])));
    let h = head("GET", "/v2/", &[("x-big", &fits)]);
    assert_eq!(header_bytes(&h), 1024);
    assert!(before_policy(&h, "r.example", None, &listener("")).is_none());
}

#[test]
fn each_misroute_has_its_status_and_reason() {
    let l = listener("");
    let h = head("GET", "/v2/", &[]);
    for (m, want) in [
        (Misroute::UnknownHost, (421, "unknown_host")),
        (Misroute::UnknownRegion, (404, "unknown_region")),
        (Misroute::NonCanonicalPath, (400, "non_canonical_path")),
        (Misroute::BadHost, (400, "bad_host")),
    ] {
        let r = before_policy(&h, "r.example", Some(&m), &l).unwrap();
        assert_eq!(edge(&r), want, "{m:?}");
        assert!(r.code.is_some() && !r.close, "{m:?}");
    }
}

#[test]
fn a_redirect_listener_sends_reads_to_https_and_refuses_the_rest() {
    let l = listener(", redirect_to_https: true");
    let r = before_policy(
        &head("GET", "/v2/a/manifests/1?x=1", &[]),
        "R.Example.:80",
        None,
        &l,
    )
    .unwrap();
    assert_eq!(edge(&r), (308, "redirect_https"));
    assert_eq!(
        r.location.as_deref(),
        Some("https://r.example/v2/a/manifests/1?x=1")
    );
    assert!(r.body().is_empty());
    let r = before_policy(&head("HEAD", "/v2/", &[]), "r.example", None, &l).unwrap();
    assert_eq!(r.status, 308);
    let r = before_policy(&head("POST", "/v2/", &[]), "r.example", None, &l).unwrap();
    assert_eq!(edge(&r), (405, "https_required"));
    assert_eq!(r.allow, Some("GET, HEAD"));
    // An ordinary listener answers nothing itself.
    assert!(before_policy(&head("POST", "/v2/", &[]), "r.example", None, &listener("")).is_none());
}

#[test]
fn failures_map_to_status_and_reason() {
    use ErrorType::*;
    let cases: [(ErrorType, bool, bool, u16, &str); 9] = [
        (HTTPStatus(503), false, false, 503, "status"),
        (
            Custom(crate::identity::UNMAPPED_REDIRECT),
            true,
            false,
            502,
            "unmapped_redirect",
        ),
        (ConnectTimedout, true, false, 504, "upstream_timeout"),
        (ReadTimedout, true, false, 504, "upstream_timeout"),
        (ConnectRefused, true, false, 502, "upstream_error"),
        (ReadError, true, false, 502, "upstream_error"),
        (ReadError, false, true, 0, "client_gone"),
        (InvalidHTTPHeader, false, true, 400, "bad_request"),
        (InternalError, false, false, 500, "internal"),
    ];
    for (etype, upstream, downstream, status, reason) in cases {
        let (s, r, message) = failure(&etype, upstream, downstream);
        assert_eq!((s, r.label()), (status, reason), "{etype:?}");
        assert_eq!(message.is_empty(), status == 0, "{etype:?}");
    }
}

#[test]
fn gate_refusals_keep_their_status_code_and_allow() {
    let g = registry_edge_gate::parse("DELETE", "/v2/_catalog", None, &[] as &[&str]).unwrap_err();
    let r = EdgeResponse::gate(&g);
    assert_eq!(edge(&r), (405, "method_not_allowed"));
    assert_eq!((r.code, r.allow), (Some(g.code), g.allow));
    let g =
        registry_edge_gate::parse("GET", "/v2/a%2fb/tags/list", None, &[] as &[&str]).unwrap_err();
    assert_eq!(edge(&EdgeResponse::gate(&g)), (400, "non_canonical_path"));
}

#[test]
fn policy_refusals_carry_retry_after_and_the_registry_challenge() {
    let refusal = |reason, scope: Option<&str>, retry| Refusal {
        status: 401,
        code: "UNAUTHORIZED",
        reason,
        message: "authentication required".into(),
        retry_after: retry,
        allow: None,
        challenge_scope: scope.map(str::to_owned),
    };
    let realm = "https://r.example/oauth2/token";
    let r = EdgeResponse::refused(
        refusal(PolicyReason::NotPublic, Some("repository:a/b:pull"), None),
        realm,
        "r.example",
    );
    assert_eq!(r.reason, Answered::Policy(PolicyReason::NotPublic));
    assert_eq!(
        r.extra,
        vec![(
            "WWW-Authenticate",
            "Bearer realm=\"https://r.example/oauth2/token\",service=\"r.example\",scope=\"repository:a/b:pull\"".to_owned()
        )]
    );
    // A sourceless mount: the challenge names no scope.
    let r = EdgeResponse::refused(refusal(PolicyReason::NotPublic, Some(""), None), realm, "s");
    assert!(!r.extra[0].1.contains("scope="));
    let r = EdgeResponse::refused(refusal(PolicyReason::RateLimit, None, Some(7)), realm, "s");
    assert_eq!(r.extra, vec![("Retry-After", "7".to_owned())]);
}

#[test]
fn error_bodies_are_oci_json_with_the_message_escaped() {
    let r = EdgeResponse::error(
        400,
        "UNSUPPORTED",
        EdgeReason::BadRequest,
        "a \"quoted\" <x>",
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
    assert_eq!(v["errors"][0]["message"], "a \"quoted\" <x>");
    let h = r.header("/v2/x").unwrap();
    assert_eq!(
        h.headers.get("Docker-Distribution-Api-Version").unwrap(),
        "registry/2.0"
    );
    assert_eq!(
        h.headers.get("Content-Length").unwrap().to_str().unwrap(),
        r.body().len().to_string()
    );
    assert!(r
        .header("/healthz")
        .unwrap()
        .headers
        .get("Docker-Distribution-Api-Version")
        .is_none());
}
