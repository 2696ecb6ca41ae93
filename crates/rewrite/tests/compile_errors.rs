//! Every kind of compile error is reported, at the position the config crate maps to a YAML
//! path, and all of them at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/helpers.rs"]
mod helpers;

use helpers::*;
use registry_edge_rewrite::*;

fn location(pattern: &str) -> ConditionSpec {
    header_condition(Side::Response, "Location", pattern, false)
}

/// The single error `rule` compiles to.
fn only_error(rule: RuleSpec) -> CompileError {
    match Engine::compile(&[rule], None) {
        Ok(_) => panic!("compiled"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

fn assert_error(rule: RuleSpec, at: ErrorAt, fragment: &str) {
    let error = only_error(rule);
    assert_eq!(error.rule, 0);
    assert_eq!(error.at, at, "{error}");
    assert!(
        error.message.contains(fragment),
        "{:?} lacks {fragment:?}",
        error.message
    );
    assert_eq!(error.to_string(), error.message);
}

#[test]
fn invalid_regex() {
    assert_error(
        rule(
            vec![location("https://(unclosed")],
            vec![set(Side::Response, "X", "1")],
        ),
        ErrorAt::ConditionPattern(0),
        "invalid pattern",
    );
}

#[test]
fn capture_group_the_pattern_lacks() {
    assert_error(
        rule(
            vec![location("^https://(.*)$")],
            vec![set(Side::Response, "Location", "x{http_resp_Location_2}")],
        ),
        ErrorAt::ActionValue(0),
        "1 capture group(s), so there is no group 2",
    );
}

#[test]
fn capture_of_a_header_no_condition_matches() {
    assert_error(
        rule(
            vec![location("(.*)")],
            vec![set(Side::Response, "Location", "{http_resp_Link_1}")],
        ),
        ErrorAt::ActionValue(0),
        "no condition of this rule matches response header \"Link\"",
    );
    // The same name on the other side is another header.
    assert_error(
        rule(
            vec![location("(.*)")],
            vec![set(Side::Response, "Location", "{http_req_Location_1}")],
        ),
        ErrorAt::ActionValue(0),
        "request header",
    );
}

#[test]
fn capture_of_a_negated_condition() {
    let mut negated = location("(.*)");
    negated.negate = true;
    assert_error(
        rule(
            vec![negated],
            vec![set(Side::Response, "X", "{http_resp_Location_1}")],
        ),
        ErrorAt::ActionValue(0),
        "negated conditions offer no captures",
    );
}

#[test]
fn unknown_variable() {
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "{var_server_port}")]),
        ErrorAt::ActionValue(0),
        "unknown variable `{var_server_port}`",
    );
}

#[test]
fn unbalanced_braces() {
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "a{var_host")]),
        ErrorAt::ActionValue(0),
        "unbalanced `{`",
    );
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "a}b")]),
        ErrorAt::ActionValue(0),
        "unbalanced `}`",
    );
}

#[test]
fn unknown_reference() {
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "{host}")]),
        ErrorAt::ActionValue(0),
        "unknown reference `{host}`",
    );
}

#[test]
fn invalid_header_names() {
    let bad_condition = header_condition(Side::Response, "Bad Header", "x", true);
    assert_error(
        rule(vec![bad_condition], vec![set(Side::Response, "X", "1")]),
        ErrorAt::Condition(0),
        "\"Bad Header\" is not a valid header name",
    );
    assert_error(
        rule(vec![], vec![set(Side::Response, "X:Y", "1")]),
        ErrorAt::Action(0),
        "\"X:Y\" is not a valid header name",
    );
    assert_error(
        rule(
            vec![],
            vec![ActionSpec::Delete {
                side: Side::Response,
                header: "".into(),
            }],
        ),
        ErrorAt::Action(0),
        "not a valid header name",
    );
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "{http_resp_A B}")]),
        ErrorAt::ActionValue(0),
        "not a valid header name",
    );
}

#[test]
fn request_action_in_a_response_rule() {
    assert_error(
        rule(vec![location("x")], vec![set(Side::Request, "X-Seen", "1")]),
        ErrorAt::Action(0),
        "run on the response",
    );
    let mut by_status = rule(
        vec![],
        vec![ActionSpec::Delete {
            side: Side::Request,
            header: "Cookie".into(),
        }],
    );
    by_status.statuses = vec![StatusRange { from: 200, to: 299 }];
    assert_error(by_status, ErrorAt::Action(0), "run on the response");
}

#[test]
fn response_reference_in_a_request_rule() {
    assert_error(
        rule(vec![], vec![set(Side::Request, "X", "{http_resp_Server}")]),
        ErrorAt::ActionValue(0),
        "does not exist yet",
    );
}

#[test]
fn rule_without_actions() {
    assert_error(
        rule(vec![location("x")], vec![]),
        ErrorAt::Rule,
        "no actions",
    );
}

#[test]
fn empty_status_range() {
    let mut r = rule(vec![], vec![set(Side::Response, "X", "1")]);
    r.statuses = vec![StatusRange { from: 399, to: 300 }];
    assert_error(r, ErrorAt::Rule, "status range 399-300 is empty");
}

#[test]
fn literal_text_that_no_header_may_carry() {
    assert_error(
        rule(vec![], vec![set(Side::Response, "X", "a\r\nInjected: 1")]),
        ErrorAt::ActionValue(0),
        "not allowed in a header value",
    );
}

#[test]
fn derived_spec_errors() {
    let mut spec = contoso_derived();
    spec.login_public_host = "bad host".into();
    spec.mappings.push(DerivedMapping {
        upstream: upstream("reg.eastus.data.azurecr.io", 443),
        target: PublicTarget::Data {
            public_host: "data/host".into(),
            region_prefix: Some("east/us".into()),
        },
    });
    spec.mappings.push(DerivedMapping {
        upstream: upstream(LOGIN, 443),
        target: PublicTarget::Data {
            public_host: PUBLIC_DATA.into(),
            region_prefix: None,
        },
    });
    spec.mappings.push(DerivedMapping {
        upstream: upstream("a/b", 0),
        target: PublicTarget::Login,
    });
    let errors = Engine::compile(&[], Some(&spec)).err().unwrap();
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(errors
        .iter()
        .all(|e| e.rule == CompileError::DERIVED && e.at == ErrorAt::Rule));
    for fragment in [
        "login public host \"bad host\"",
        "data public host \"data/host\"",
        "region \"east/us\"",
        "mapped to two different public targets",
        "upstream host \"a/b\"",
        "has port 0",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(fragment)),
            "{fragment}: {messages:#?}"
        );
    }
    assert_eq!(errors.len(), 6, "{messages:#?}");
}

#[test]
fn a_duplicate_upstream_with_the_same_target_is_harmless() {
    let mut spec = contoso_derived();
    spec.mappings.push(spec.mappings[0].clone());
    assert!(Engine::compile(&[], Some(&spec)).is_ok());
}

#[test]
fn every_error_of_every_rule_is_reported_in_order() {
    let rules = [
        rule(
            vec![location("(")],
            vec![set(Side::Response, "X", "{var_nope}")],
        ),
        rule(
            vec![location("ok")],
            vec![set(Side::Response, "Location", "{http_resp_Location_1}")],
        ),
        rule(vec![], vec![]),
    ];
    let mut spec = contoso_derived();
    spec.login_public_host = String::new();
    let errors = Engine::compile(&rules, Some(&spec)).err().unwrap();
    let found: Vec<(usize, ErrorAt)> = errors.iter().map(|e| (e.rule, e.at)).collect();
    assert_eq!(
        found,
        [
            (0, ErrorAt::ConditionPattern(0)),
            (0, ErrorAt::ActionValue(0)),
            (1, ErrorAt::ActionValue(0)),
            (2, ErrorAt::Rule),
            (CompileError::DERIVED, ErrorAt::Rule),
        ]
    );
}
