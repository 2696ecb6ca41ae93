//! Properties that must hold for any input: user rules never touch values their condition
//! does not match; the derived rules are idempotent; and after them no URL position (Location,
//! Link target, realm) still designates an upstream authority.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/helpers.rs"]
mod helpers;

use helpers::*;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use registry_edge_rewrite::*;

/// Upstreams of the generated configuration: default ports, a custom plain-HTTP port, IPv6.
fn upstreams() -> Vec<(&'static str, u16)> {
    vec![
        (LOGIN, 443),
        (DATA_EAST, 443),
        (DATA_WEST, 443),
        ("registry.internal", 5000),
        ("legacy.internal", 80),
        ("2001:db8::7", 443),
    ]
}

fn derived() -> DerivedSpec {
    let mut spec = contoso_derived();
    spec.mappings.push(DerivedMapping {
        upstream: upstream("registry.internal", 5000),
        target: PublicTarget::Login,
    });
    spec.mappings.push(DerivedMapping {
        upstream: upstream("legacy.internal", 80),
        target: PublicTarget::Data {
            public_host: "legacy-data.example.com".into(),
            region_prefix: None,
        },
    });
    spec.mappings.push(DerivedMapping {
        upstream: upstream("2001:db8::7", 443),
        target: PublicTarget::Login,
    });
    spec
}

fn random_case(text: &str) -> impl Strategy<Value = String> {
    let text = text.to_owned();
    proptest::collection::vec(any::<bool>(), text.len()).prop_map(move |upper| {
        text.chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// `scheme://authority` designating an upstream, in any of the spellings that mean it.
fn upstream_origin() -> impl Strategy<Value = String> {
    proptest::sample::select(upstreams()).prop_flat_map(|(host, port)| {
        let scheme_default = |scheme: &str| if scheme == "https" { 443 } else { 80 };
        (
            proptest::sample::select(vec!["http", "https"]),
            random_case(host),
            random_case("https"),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(scheme, host, cased_scheme, explicit, root_dot)| {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else if root_dot {
                    format!("{host}.")
                } else {
                    host
                };
                let scheme_text = &cased_scheme[..scheme.len()];
                if port == scheme_default(scheme) && !explicit {
                    format!("{scheme_text}://{host}")
                } else {
                    format!("{scheme_text}://{host}:{port}")
                }
            })
    })
}

fn rest() -> impl Strategy<Value = String> {
    (
        "(/[A-Za-z0-9._~%-]{0,8}){0,4}",
        proptest::option::of("[A-Za-z0-9=&%._~+/-]{0,40}"),
        proptest::option::of("[A-Za-z0-9]{0,6}"),
    )
        .prop_map(|(path, query, fragment)| {
            let mut rest = path;
            if let Some(query) = query {
                rest.push('?');
                rest.push_str(&query);
            }
            if let Some(fragment) = fragment {
                rest.push('#');
                rest.push_str(&fragment);
            }
            rest
        })
}

fn upstream_url() -> impl Strategy<Value = String> {
    (upstream_origin(), rest()).prop_map(|(origin, rest)| origin + &rest)
}

/// URLs of all kinds: upstream, foreign, relative.
fn any_url() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => upstream_url(),
        1 => rest().prop_map(|rest| if rest.starts_with('/') { rest } else { format!("/{rest}") }),
        1 => rest().prop_map(|rest| format!("https://example.org{rest}")),
        1 => rest().prop_map(|rest| format!("https://{PUBLIC}{rest}")),
    ]
}

fn link_value(urls: Vec<String>) -> String {
    urls.iter()
        .enumerate()
        .map(|(i, url)| format!("<{url}>; rel=\"r{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn challenge(realm: &str) -> String {
    format!(r#"Bearer realm="{realm}",service="{LOGIN}",scope="repository:a/b:pull""#)
}

/// Does `url` designate one of the upstreams, read as a client would?
fn designates_upstream(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let (default_port, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (80, rest)
    } else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        (host.to_owned(), after.strip_prefix(':').unwrap_or(""))
    } else {
        let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
        (host.trim_end_matches('.').to_owned(), port)
    };
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse().unwrap_or(0)
    };
    upstreams().iter().any(|(h, p)| *h == host && *p == port)
}

fn status() -> impl Strategy<Value = u16> {
    proptest::sample::select(vec![200, 201, 202, 206, 301, 302, 303, 307, 308, 401, 404])
}

fn response() -> impl Strategy<Value = (u16, HeaderMap)> {
    (
        status(),
        proptest::collection::vec(any_url(), 0..3),
        proptest::collection::vec(proptest::collection::vec(any_url(), 1..4), 0..3),
        proptest::collection::vec(any_url(), 0..3),
    )
        .prop_map(|(status, locations, links, realms)| {
            let mut map = HeaderMap::new();
            for location in locations {
                map.append("location", HeaderValue::from_str(&location).unwrap());
            }
            for link in links {
                map.append("link", HeaderValue::from_str(&link_value(link)).unwrap());
            }
            for realm in realms {
                map.append(
                    "www-authenticate",
                    HeaderValue::from_str(&challenge(&realm)).unwrap(),
                );
            }
            map.insert(
                "docker-content-digest",
                HeaderValue::from_static("sha256:abc"),
            );
            (status, map)
        })
}

fn request() -> impl Strategy<Value = Request> {
    (any::<bool>(), proptest::option::of(1024u16..=65535)).prop_map(|(tls, public_port)| Request {
        scheme: if tls { "https" } else { "http" }.into(),
        public_port,
        ..Request::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn values_no_condition_matches_are_never_changed(
        pattern in "\\^?[ab]{1,3}\\$?",
        case_sensitive in any::<bool>(),
        subject in proptest::collection::vec("[abAB ]{0,6}", 0..5),
        other in proptest::collection::vec("[abAB ]{0,6}", 0..3),
    ) {
        let rules = [RuleSpec {
            name: "p".into(),
            ..rule(
                vec![header_condition(Side::Response, "X-Subject", &pattern, case_sensitive)],
                vec![set(Side::Response, "x-subject", "new<{http_resp_X-Subject_0}>")],
            )
        }];
        let engine = engine(&rules, Some(&derived()));
        let regex = regex::RegexBuilder::new(&pattern).case_insensitive(!case_sensitive).build().unwrap();
        let mut map = HeaderMap::new();
        for value in &subject {
            map.append("x-subject", HeaderValue::from_str(value).unwrap());
        }
        for value in &other {
            map.append("x-other", HeaderValue::from_str(value).unwrap());
        }
        let before = map.clone();
        respond(&engine, 200, &mut map);
        let after = values(&map, "x-subject");
        prop_assert_eq!(after.len(), subject.len());
        for (old, new) in subject.iter().zip(&after) {
            match regex.find(old) {
                None => prop_assert_eq!(old, new),
                Some(found) => prop_assert_eq!(new, &format!("new<{}>", found.as_str())),
            }
        }
        prop_assert_eq!(before.get_all("x-other").iter().collect::<Vec<_>>(), map.get_all("x-other").iter().collect::<Vec<_>>());
        prop_assert_eq!(before.len(), map.len());
    }

    #[test]
    fn derived_rules_are_idempotent((status, mut map) in response(), request in request()) {
        let engine = engine(&[], Some(&derived()));
        respond_to(&engine, &request, status, &mut map);
        let once = map.clone();
        let again = respond_to(&engine, &request, status, &mut map);
        prop_assert!(again.is_empty(), "fired again: {:?}", again);
        prop_assert_eq!(map, once);
    }

    #[test]
    fn no_url_position_keeps_an_upstream_authority(
        locations in proptest::collection::vec(upstream_url(), 1..3),
        links in proptest::collection::vec(proptest::collection::vec(any_url(), 1..4), 1..3),
        realms in proptest::collection::vec(upstream_url(), 1..3),
        request in request(),
    ) {
        let engine = engine(&[], Some(&derived()));
        let mut redirect = HeaderMap::new();
        for location in &locations {
            redirect.append("location", HeaderValue::from_str(location).unwrap());
        }
        for link in &links {
            redirect.append("link", HeaderValue::from_str(&link_value(link.clone())).unwrap());
        }
        respond_to(&engine, &request, 307, &mut redirect);
        for location in values(&redirect, "location") {
            prop_assert!(!designates_upstream(&location), "{}", location);
            prop_assert!(location.starts_with(&format!("{}://", request.scheme)), "{}", location);
        }
        for link in values(&redirect, "link") {
            for target in link.split('<').skip(1) {
                let url = target.split('>').next().unwrap_or("");
                prop_assert!(!designates_upstream(url), "{}", url);
            }
        }

        let mut challenge_map = HeaderMap::new();
        for realm in &realms {
            challenge_map.append("www-authenticate", HeaderValue::from_str(&challenge(realm)).unwrap());
        }
        respond_to(&engine, &request, 401, &mut challenge_map);
        for value in values(&challenge_map, "www-authenticate") {
            let realm = value.split("realm=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
            prop_assert!(!designates_upstream(realm), "{}", realm);
            prop_assert!(value.contains(&format!("service=\"{LOGIN}\"")), "{}", value);
        }
    }

    #[test]
    fn path_query_and_fragment_survive_byte_for_byte(origin in upstream_origin(), rest in rest(), request in request()) {
        let engine = engine(&[], Some(&derived()));
        let mut map = HeaderMap::new();
        map.insert("location", HeaderValue::from_str(&format!("{origin}{rest}")).unwrap());
        respond_to(&engine, &request, 302, &mut map);
        let location = values(&map, "location").remove(0);
        prop_assert!(location.ends_with(&rest), "{} does not end with {}", location, rest);
    }
}
