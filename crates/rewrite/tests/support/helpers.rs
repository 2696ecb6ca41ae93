//! Builders shared by the integration tests: the seed's rules, rules of conditions and actions,
//! a Contoso-like registry, and header maps written as lists.

#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue};
use registry_edge_rewrite::*;

pub const LOGIN: &str = "contososecurepublicacr.azurecr.io";
pub const DATA_EAST: &str = "contososecurepublicacr.eastus.data.azurecr.io";
pub const DATA_WEST: &str = "contososecurepublicacr.westus.data.azurecr.io";
pub const PUBLIC: &str = "acr-secure.contoso.com";
pub const PUBLIC_DATA: &str = "acr-secure-data.contoso.com";

/// The three rules of the reference architecture, entered as its text gives them.
pub fn seed_rules() -> Vec<RuleSpec> {
    vec![
        seed_rule(
            "rewrite-location",
            "Location",
            r"https:\/\/contososecurepublicacr.azurecr.io(.*)$",
            302,
            "https://acr-secure.contoso.com{http_resp_Location_1}",
        ),
        seed_rule(
            "rewrite-www-authenticate",
            "WWW-Authenticate",
            r"^(.*)https:\/\/contososecurepublicacr.azurecr.io\/oauth2\/token(.*)$",
            401,
            "{http_resp_WWW-Authenticate_1}https://acr-secure.contoso.com/oauth2/token{http_resp_WWW-Authenticate_2}",
        ),
        seed_rule(
            "rewrite-data-location",
            "Location",
            r"https:\/\/contososecurepublicacr.eastus.data.azurecr.io(.*)$",
            302,
            "https://acr-secure-data.contoso.com{http_resp_Location_1}",
        ),
    ]
}

/// A seed rule: on responses of `status` whose `header` matches `pattern` (case ignored), sets
/// that header to `value`.
fn seed_rule(name: &str, header: &str, pattern: &str, status: u16, value: &str) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        conditions: vec![header_condition(Side::Response, header, pattern, false)],
        statuses: vec![StatusRange {
            from: status,
            to: status,
        }],
        actions: vec![set(Side::Response, header, value)],
    }
}

/// A condition on header `name` of the `side` message, not negated.
pub fn header_condition(
    side: Side,
    name: &str,
    pattern: &str,
    case_sensitive: bool,
) -> ConditionSpec {
    ConditionSpec {
        subject: Subject::Header {
            side,
            name: name.into(),
        },
        pattern: pattern.into(),
        case_sensitive,
        negate: false,
    }
}

pub fn set(side: Side, header: &str, value: &str) -> ActionSpec {
    ActionSpec::Set {
        side,
        header: header.into(),
        value: value.into(),
    }
}

/// A rule named `r` that any status may fire.
pub fn rule(conditions: Vec<ConditionSpec>, actions: Vec<ActionSpec>) -> RuleSpec {
    RuleSpec {
        name: "r".into(),
        conditions,
        statuses: vec![],
        actions,
    }
}

pub fn upstream(host: &str, port: u16) -> UpstreamAuthority {
    UpstreamAuthority {
        host: host.into(),
        port,
    }
}

/// Login server, two regional login endpoints, two data endpoints sharing one public host.
pub fn contoso_derived() -> DerivedSpec {
    let data = |region: &str| PublicTarget::Data {
        public_host: PUBLIC_DATA.into(),
        region_prefix: Some(region.into()),
    };
    DerivedSpec {
        login_public_host: PUBLIC.into(),
        mappings: vec![
            DerivedMapping {
                upstream: upstream(LOGIN, 443),
                target: PublicTarget::Login,
            },
            DerivedMapping {
                upstream: upstream("contososecurepublicacr.eastus.geo.azurecr.io", 443),
                target: PublicTarget::Login,
            },
            DerivedMapping {
                upstream: upstream("contososecurepublicacr.westus.geo.azurecr.io", 443),
                target: PublicTarget::Login,
            },
            DerivedMapping {
                upstream: upstream(DATA_EAST, 443),
                target: data("eastus"),
            },
            DerivedMapping {
                upstream: upstream(DATA_WEST, 443),
                target: data("westus"),
            },
        ],
    }
}

pub fn engine(rules: &[RuleSpec], derived: Option<&DerivedSpec>) -> Engine {
    match Engine::compile(rules, derived) {
        Ok(engine) => engine,
        Err(errors) => panic!("does not compile: {errors:#?}"),
    }
}

pub fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in list {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// Every value of `name`, as text.
pub fn values(map: &HeaderMap, name: &str) -> Vec<String> {
    map.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[derive(Debug, Clone)]
pub struct Request {
    pub headers: HeaderMap,
    pub client_ip: String,
    pub host: String,
    pub request_uri: String,
    pub scheme: String,
    pub public_port: Option<u16>,
    pub public_origin: String,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            headers: HeaderMap::new(),
            client_ip: "203.0.113.9".into(),
            host: PUBLIC.into(),
            request_uri: "/v2/hello-world/blobs/sha256:abc".into(),
            scheme: "https".into(),
            public_port: None,
            public_origin: format!("https://{PUBLIC}"),
        }
    }
}

impl Request {
    pub fn ctx(&self) -> RequestContext<'_> {
        RequestContext {
            client_ip: &self.client_ip,
            host: &self.host,
            request_uri: &self.request_uri,
            scheme: &self.scheme,
            public_port: self.public_port,
            public_origin: &self.public_origin,
            request_headers: &self.headers,
        }
    }
}

/// Applies the response rules and returns the names of those that fired.
pub fn respond(engine: &Engine, status: u16, map: &mut HeaderMap) -> Vec<String> {
    respond_to(engine, &Request::default(), status, map)
}

pub fn respond_to(
    engine: &Engine,
    request: &Request,
    status: u16,
    map: &mut HeaderMap,
) -> Vec<String> {
    let applied = engine.apply_response(status, map, &request.ctx());
    applied
        .iter()
        .map(|i| engine.rule_name(i).to_owned())
        .collect()
}
