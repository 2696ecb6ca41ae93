//! App Gateway rule semantics beyond the seed: negation, variables, AND, request rules,
//! deletes, whole-value references, and values that cannot be written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/helpers.rs"]
mod helpers;

use helpers::*;
use registry_edge_rewrite::*;

fn on(side: Side, name: &str, pattern: &str) -> ConditionSpec {
    header_condition(side, name, pattern, true)
}

fn var(var: Var, pattern: &str) -> ConditionSpec {
    ConditionSpec {
        subject: Subject::Var(var),
        pattern: pattern.into(),
        case_sensitive: true,
        negate: false,
    }
}

fn not(mut condition: ConditionSpec) -> ConditionSpec {
    condition.negate = true;
    condition
}

fn marker() -> ActionSpec {
    set(Side::Response, "X-Fired", "yes")
}

fn fires(rule: RuleSpec, map: &mut http::HeaderMap, request: &Request) -> bool {
    let engine = engine(&[rule], None);
    !respond_to(&engine, request, 200, map).is_empty()
}

#[test]
fn negated_condition_holds_when_nothing_matches_including_a_missing_header() {
    let r = || {
        rule(
            vec![not(on(Side::Response, "Server", "^nginx"))],
            vec![marker()],
        )
    };
    let request = Request::default();
    assert!(fires(r(), &mut headers(&[]), &request));
    assert!(fires(r(), &mut headers(&[("Server", "Kestrel")]), &request));
    assert!(!fires(
        r(),
        &mut headers(&[("Server", "Kestrel"), ("Server", "nginx/1.25")]),
        &request
    ));
}

#[test]
fn missing_header_never_matches() {
    let r = rule(vec![on(Side::Response, "Server", "")], vec![marker()]);
    assert!(!fires(r, &mut headers(&[]), &Request::default()));
}

#[test]
fn any_value_of_a_header_may_match() {
    let r = rule(vec![on(Side::Response, "Vary", "^Origin$")], vec![marker()]);
    let mut map = headers(&[("Vary", "Accept"), ("Vary", "Origin")]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(values(&map, "x-fired"), ["yes"]);
}

#[test]
fn all_conditions_must_hold() {
    let r = || {
        rule(
            vec![
                on(Side::Response, "Content-Type", "json"),
                var(Var::RequestUri, "^/v2/"),
                on(Side::Request, "User-Agent", "(?i)docker"),
            ],
            vec![marker()],
        )
    };
    let mut request = Request {
        headers: headers(&[("User-Agent", "Docker-Client/24.0.7 (linux)")]),
        ..Request::default()
    };
    assert!(fires(
        r(),
        &mut headers(&[("Content-Type", "application/json")]),
        &request
    ));
    assert!(!fires(
        r(),
        &mut headers(&[("Content-Type", "text/plain")]),
        &request
    ));
    request.request_uri = "/acr/v1/_catalog".into();
    assert!(!fires(
        r(),
        &mut headers(&[("Content-Type", "application/json")]),
        &request
    ));
}

#[test]
fn case_sensitivity_follows_the_condition() {
    let mut condition = on(Side::Response, "Server", "^kestrel$");
    assert!(!fires(
        rule(vec![condition.clone()], vec![marker()]),
        &mut headers(&[("Server", "Kestrel")]),
        &Request::default()
    ));
    condition.case_sensitive = false;
    assert!(fires(
        rule(vec![condition], vec![marker()]),
        &mut headers(&[("Server", "Kestrel")]),
        &Request::default()
    ));
}

#[test]
fn statuses_restrict_the_rule() {
    let mut r = rule(vec![], vec![marker()]);
    r.statuses = vec![
        StatusRange { from: 300, to: 399 },
        StatusRange { from: 401, to: 401 },
    ];
    let engine = engine(&[r], None);
    for (status, expected) in [
        (200, false),
        (301, true),
        (399, true),
        (400, false),
        (401, true),
    ] {
        let mut map = headers(&[]);
        assert_eq!(
            !respond(&engine, status, &mut map).is_empty(),
            expected,
            "{status}"
        );
    }
}

#[test]
fn variables_in_conditions_and_templates() {
    let r = rule(
        vec![var(Var::ClientIp, r"^203\.0\.113\.")],
        vec![set(
            Side::Response,
            "X-Edge",
            "{var_client_ip} {var_host} {var_request_uri} {var_scheme} {var_public_origin}",
        )],
    );
    let mut map = headers(&[]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(
        values(&map, "x-edge"),
        ["203.0.113.9 acr-secure.contoso.com /v2/hello-world/blobs/sha256:abc https https://acr-secure.contoso.com"]
    );
}

#[test]
fn request_captures_and_whole_values_in_a_response_template() {
    let r = rule(
        vec![on(Side::Request, "X-Tenant", "^(\\w+)$")],
        vec![set(
            Side::Response,
            "X-Echo",
            "{http_req_x-tenant_1}|{http_req_X-Tenant}|{http_resp_Via}",
        )],
    );
    let request = Request {
        headers: headers(&[("X-Tenant", "blue")]),
        ..Request::default()
    };
    let mut map = headers(&[("Via", "1.1 a"), ("Via", "1.1 b")]);
    assert!(fires(r, &mut map, &request));
    assert_eq!(values(&map, "x-echo"), ["blue|blue|1.1 a, 1.1 b"]);
}

#[test]
fn capture_zero_is_the_whole_match_and_an_unmatched_group_is_empty() {
    let r = rule(
        vec![on(Side::Response, "Server", "k(es)trel(/[0-9.]+)?")],
        vec![set(
            Side::Response,
            "X-Out",
            "[{http_resp_server_0}][{http_resp_Server_2}]",
        )],
    );
    let mut map = headers(&[("Server", "Microsoft-kestrel")]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(values(&map, "x-out"), ["[kestrel][]"]);
}

#[test]
fn set_on_another_header_writes_one_value_from_the_first_match() {
    let r = rule(
        vec![on(Side::Response, "X-In", "^v=(\\d+)$")],
        vec![set(Side::Response, "X-Out", "got {http_resp_X-In_1}")],
    );
    let mut map = headers(&[
        ("X-In", "nope"),
        ("X-In", "v=2"),
        ("X-In", "v=3"),
        ("X-Out", "a"),
        ("X-Out", "b"),
    ]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(values(&map, "x-out"), ["got 2"]);
    assert_eq!(values(&map, "x-in"), ["nope", "v=2", "v=3"]);
}

#[test]
fn set_on_the_matched_header_handles_every_value_with_its_own_captures() {
    let r = rule(
        vec![on(Side::Response, "Set-Cookie", "^(session=[^;]*)(.*)$")],
        vec![set(
            Side::Response,
            "Set-Cookie",
            "{http_resp_Set-Cookie_1}; Secure{http_resp_Set-Cookie_2}",
        )],
    );
    let mut map = headers(&[
        ("Set-Cookie", "session=a; Path=/"),
        ("Set-Cookie", "theme=dark"),
        ("Set-Cookie", "session=b"),
    ]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(
        values(&map, "set-cookie"),
        [
            "session=a; Secure; Path=/",
            "theme=dark",
            "session=b; Secure"
        ]
    );
}

#[test]
fn a_negated_condition_on_the_target_does_not_make_the_set_per_value() {
    let r = rule(
        vec![not(on(Side::Response, "X-A", "bad"))],
        vec![set(Side::Response, "X-A", "clean")],
    );
    let mut map = headers(&[("X-A", "one"), ("X-A", "two")]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(values(&map, "x-a"), ["clean"]);
}

#[test]
fn delete_removes_every_value_and_counts_only_when_present() {
    let r = || {
        rule(
            vec![],
            vec![ActionSpec::Delete {
                side: Side::Response,
                header: "Server".into(),
            }],
        )
    };
    let mut map = headers(&[("Server", "a"), ("Server", "b"), ("Date", "x")]);
    assert!(fires(r(), &mut map, &Request::default()));
    assert!(values(&map, "server").is_empty());
    assert_eq!(values(&map, "date"), ["x"]);
    assert!(!fires(r(), &mut map, &Request::default()));
}

#[test]
fn a_value_that_is_not_a_header_value_is_skipped_and_not_counted() {
    let r = rule(vec![], vec![set(Side::Response, "X-Host", "{var_host}")]);
    let request = Request {
        host: "evil\r\nInjected: 1".into(),
        ..Request::default()
    };
    let mut map = headers(&[("X-Host", "before")]);
    assert!(!fires(r, &mut map, &request));
    assert_eq!(values(&map, "x-host"), ["before"]);
    assert!(values(&map, "injected").is_empty());
}

#[test]
fn actions_read_the_message_as_the_conditions_saw_it() {
    let r = rule(
        vec![on(Side::Response, "X-A", "^(.*)$")],
        vec![
            set(Side::Response, "X-A", "new"),
            set(Side::Response, "X-B", "{http_resp_X-A}/{http_resp_X-A_1}"),
        ],
    );
    let mut map = headers(&[("X-A", "old")]);
    assert!(fires(r, &mut map, &Request::default()));
    assert_eq!(values(&map, "x-a"), ["new"]);
    assert_eq!(values(&map, "x-b"), ["old/old"]);
}

#[test]
fn later_rules_see_earlier_rules_changes() {
    let first = rule(vec![], vec![set(Side::Response, "X-A", "1")]);
    let second = rule(
        vec![on(Side::Response, "X-A", "^1$")],
        vec![set(Side::Response, "X-B", "saw {http_resp_X-A_0}")],
    );
    let engine = engine(&[first, second], None);
    let mut map = headers(&[]);
    assert_eq!(respond(&engine, 200, &mut map), ["r", "r"]);
    assert_eq!(values(&map, "x-b"), ["saw 1"]);
}

#[test]
fn request_rules_run_on_the_request_only() {
    let request_rule = RuleSpec {
        name: "tag-client".into(),
        conditions: vec![on(Side::Request, "User-Agent", "^(containerd)/")],
        statuses: vec![],
        actions: vec![
            set(
                Side::Request,
                "X-Client",
                "{http_req_User-Agent_1} from {var_client_ip}",
            ),
            ActionSpec::Delete {
                side: Side::Request,
                header: "Cookie".into(),
            },
        ],
    };
    let response_rule = RuleSpec {
        name: "stamp".into(),
        conditions: vec![],
        statuses: vec![],
        actions: vec![set(Side::Response, "X-Stamp", "1")],
    };
    let engine = engine(&[request_rule, response_rule], None);
    let request = Request::default();
    let mut outgoing = headers(&[("User-Agent", "containerd/1.7"), ("Cookie", "a=b")]);
    let applied = engine.apply_request(&mut outgoing, &request.ctx());
    assert_eq!(applied.iter().collect::<Vec<_>>(), [0]);
    assert_eq!(
        values(&outgoing, "x-client"),
        ["containerd from 203.0.113.9"]
    );
    assert!(values(&outgoing, "cookie").is_empty());
    assert!(values(&outgoing, "x-stamp").is_empty());

    let mut response = headers(&[("User-Agent", "containerd/1.7")]);
    assert_eq!(respond(&engine, 200, &mut response), ["stamp"]);
    assert!(values(&response, "x-client").is_empty());
}

#[test]
fn response_rules_read_request_headers_from_the_context() {
    let r = RuleSpec {
        name: "vary-by-ua".into(),
        conditions: vec![on(Side::Request, "User-Agent", "^(\\S+)")],
        statuses: vec![],
        actions: vec![set(Side::Response, "X-UA", "{http_req_User-Agent_1}")],
    };
    let engine = engine(&[r], None);
    let request = Request {
        headers: headers(&[("User-Agent", "skopeo/1.13 extra")]),
        ..Request::default()
    };
    let mut map = headers(&[]);
    assert_eq!(respond_to(&engine, &request, 200, &mut map), ["vary-by-ua"]);
    assert_eq!(values(&map, "x-ua"), ["skopeo/1.13"]);
    // The request rules list is empty: the rule is a response rule.
    let mut outgoing = request.headers.clone();
    assert!(engine
        .apply_request(&mut outgoing, &request.ctx())
        .is_empty());
}

#[test]
fn obs_text_values_are_matched_as_bytes() {
    let r = rule(
        vec![on(Side::Response, "X-Name", "^caf")],
        vec![set(Side::Response, "X-Name", "{http_resp_X-Name_0}e")],
    );
    let engine = engine(&[r], None);
    let mut map = http::HeaderMap::new();
    map.insert("x-name", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
    map.append("x-name", http::HeaderValue::from_bytes(b"other").unwrap());
    respond(&engine, 200, &mut map);
    let got: Vec<&[u8]> = map.get_all("x-name").iter().map(|v| v.as_bytes()).collect();
    assert_eq!(got, [&b"cafe"[..], &b"other"[..]]);
}

#[test]
fn the_engine_says_which_variables_its_rules_read() {
    let all = [
        Var::ClientIp,
        Var::Host,
        Var::RequestUri,
        Var::Scheme,
        Var::PublicOrigin,
    ];
    let none = engine(&[rule(vec![], vec![marker()])], None);
    assert!(all.iter().all(|v| !none.uses_var(*v)));
    let in_condition = engine(
        &[rule(vec![var(Var::ClientIp, "^203\\.")], vec![marker()])],
        None,
    );
    assert!(in_condition.uses_var(Var::ClientIp));
    assert!(!in_condition.uses_var(Var::RequestUri));
    let in_request_template = engine(
        &[rule(
            vec![],
            vec![set(Side::Request, "X-Uri", "{var_request_uri}")],
        )],
        None,
    );
    assert!(in_request_template.uses_var(Var::RequestUri));
    assert!(!in_request_template.uses_var(Var::PublicOrigin));
    let in_response_template = engine(
        &[rule(
            vec![],
            vec![set(Side::Response, "X-O", "at {var_public_origin}")],
        )],
        None,
    );
    assert!(in_response_template.uses_var(Var::PublicOrigin));
    assert!(!in_response_template.uses_var(Var::ClientIp));
}
