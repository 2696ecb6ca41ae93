//! Guarantees that the rewrite engine never panics, whatever the rules and headers: any
//! `RuleSpec`/`DerivedSpec` either compiles or yields errors, and a compiled engine applied to
//! any request and response leaves valid headers, reports only rules it has, and gives the
//! same headers when the derived rules are applied twice.
//!
//! Patterns, templates and values are drawn from fragments of real rules (App Gateway
//! references, regex pieces, URLs on the upstream hosts) mixed with arbitrary bytes, so the
//! fuzzer reaches the compiled paths and not only the error paths.
//!
//! Run (in `fuzz/`; `RUSTC_BOOTSTRAP=1` lets the stable toolchain build it):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run rewrite_compile_apply -- -max_len=2048 -len_control=0`

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use registry_edge_rewrite::*;

const NAMES: &[&str] = &[
    "Location",
    "location",
    "Link",
    "WWW-Authenticate",
    "Set-Cookie",
    "X-A",
    "x-a",
    "Server",
    "bad name",
    "",
];

const PATTERN_PIECES: &[&str] = &[
    "^",
    "$",
    "(.*)",
    ".*",
    "https",
    r":\/\/",
    "contoso",
    r"\.",
    ".",
    "azurecr.io",
    "(",
    ")",
    "[a-z]+",
    "(?i)",
    "(?-u)",
    r"\b",
    "|",
    "?",
    "*",
    "+",
    "{2}",
    r"\d",
    r"\xFF",
    "é",
    "(?:a|ab)",
    "(?P<n>x)",
    "[",
    "realm=\"",
];

const TEMPLATE_PIECES: &[&str] = &[
    "https://edge.example.com",
    "{http_resp_Location_1}",
    "{http_resp_Location_0}",
    "{http_resp_Location}",
    "{http_resp_WWW-Authenticate_1}",
    "{http_resp_WWW-Authenticate_2}",
    "{http_req_X-A_1}",
    "{http_req_X-A}",
    "{http_resp_X-A_3}",
    "{var_client_ip}",
    "{var_host}",
    "{var_request_uri}",
    "{var_scheme}",
    "{var_public_origin}",
    "{var_nope}",
    "{",
    "}",
    "{}",
    "{http_resp_}",
    "{http_resp_a b_1}",
    "\r\n",
];

const VALUE_PIECES: &[&str] = &[
    "https://contoso.azurecr.io",
    "HTTPS://CONTOSO.AZURECR.IO:443",
    "http://registry.internal:5000",
    "https://[2001:db8::7]",
    "https://contoso.eastus.data.azurecr.io",
    "https://x@contoso.azurecr.io",
    "https://contoso.azurecr.io@evil.example",
    "//contoso.azurecr.io",
    "/v2/hello/blobs/uploads/1?_state=a%2Bb",
    "?sig=abc%2Bdef%3D&sp=r",
    "#frag",
    "<",
    ">",
    "; rel=\"next\", ",
    "Bearer realm=\"",
    "\",service=\"contoso.azurecr.io\"",
    "realm=",
    "\"",
    "\\",
    ",",
    " ",
    "\t",
    "é",
];

const UPSTREAMS: &[(&str, u16)] = &[
    ("contoso.azurecr.io", 443),
    ("contoso.eastus.data.azurecr.io", 443),
    ("registry.internal", 5000),
    ("2001:db8::7", 443),
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> arbitrary::Result<&'a str> {
    Ok(*u.choose(from)?)
}

/// Text made of known pieces and arbitrary strings.
fn text(u: &mut Unstructured<'_>, pieces: &[&str], max: usize) -> arbitrary::Result<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=max)? {
        if u.ratio(1, 5)? {
            let s: &str = u.arbitrary()?;
            out.push_str(s.get(..s.len().min(8)).unwrap_or(""));
        } else {
            out.push_str(pick(u, pieces)?);
        }
    }
    Ok(out)
}

fn name(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1, 8)? {
        Ok(String::from(<&str>::arbitrary(u)?))
    } else {
        Ok(pick(u, NAMES)?.to_owned())
    }
}

fn side(u: &mut Unstructured<'_>) -> arbitrary::Result<Side> {
    Ok(if u.ratio(1, 4)? {
        Side::Request
    } else {
        Side::Response
    })
}

fn rule(u: &mut Unstructured<'_>) -> arbitrary::Result<RuleSpec> {
    let mut conditions = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let subject = if u.ratio(1, 6)? {
            Subject::Var(*u.choose(&[
                Var::ClientIp,
                Var::Host,
                Var::RequestUri,
                Var::Scheme,
                Var::PublicOrigin,
            ])?)
        } else {
            Subject::Header {
                side: side(u)?,
                name: name(u)?,
            }
        };
        conditions.push(ConditionSpec {
            subject,
            pattern: text(u, PATTERN_PIECES, 6)?,
            case_sensitive: u.arbitrary()?,
            negate: u.ratio(1, 5)?,
        });
    }
    let mut actions = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        actions.push(if u.ratio(1, 5)? {
            ActionSpec::Delete {
                side: side(u)?,
                header: name(u)?,
            }
        } else {
            ActionSpec::Set {
                side: side(u)?,
                header: name(u)?,
                value: text(u, TEMPLATE_PIECES, 4)?,
            }
        });
    }
    let mut statuses = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        statuses.push(StatusRange {
            from: u.int_in_range(100..=599)?,
            to: u.int_in_range(100..=599)?,
        });
    }
    Ok(RuleSpec {
        name: String::from(<&str>::arbitrary(u)?),
        conditions,
        statuses,
        actions,
    })
}

fn derived(u: &mut Unstructured<'_>) -> arbitrary::Result<DerivedSpec> {
    let mut mappings = Vec::new();
    for &(host, port) in UPSTREAMS {
        if u.ratio(3, 4)? {
            let target = if u.arbitrary()? {
                PublicTarget::Login
            } else {
                PublicTarget::Data {
                    public_host: pick(u, &["data.example.com", "bad host", ""])?.to_owned(),
                    region_prefix: if u.arbitrary()? {
                        Some(pick(u, &["eastus", "west/us", ".."])?.to_owned())
                    } else {
                        None
                    },
                }
            };
            mappings.push(DerivedMapping {
                upstream: UpstreamAuthority {
                    host: host.to_owned(),
                    port: if u.ratio(1, 10)? {
                        u.arbitrary()?
                    } else {
                        port
                    },
                },
                target,
            });
        }
    }
    Ok(DerivedSpec {
        login_public_host: pick(u, &["edge.example.com", "Edge.Example.COM", "x y"])?.to_owned(),
        mappings,
    })
}

fn headers(u: &mut Unstructured<'_>) -> arbitrary::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let Ok(name) = HeaderName::from_bytes(name(u)?.as_bytes()) else {
            continue;
        };
        let mut value = text(u, VALUE_PIECES, 8)?.into_bytes();
        if u.ratio(1, 10)? {
            value.push(u.arbitrary()?);
        }
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            map.append(name, value);
        }
    }
    Ok(map)
}

fn all_valid(map: &HeaderMap) -> bool {
    map.values()
        .all(|value| HeaderValue::from_bytes(value.as_bytes()).is_ok())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let run = |u: &mut Unstructured<'_>| -> arbitrary::Result<()> {
        let mut rules = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            rules.push(rule(u)?);
        }
        let derived = if u.ratio(3, 4)? {
            Some(derived(u)?)
        } else {
            None
        };
        let Ok(engine) = Engine::compile(&rules, derived.as_ref()) else {
            return Ok(());
        };
        let request_headers = headers(u)?;
        let host = text(u, &["edge.example.com", ":8443", "\n"], 2)?;
        let uri = text(u, &["/v2/", "x", "?a=b"], 3)?;
        let origin = format!("https://{host}");
        let ctx = RequestContext {
            client_ip: "203.0.113.9",
            host: &host,
            request_uri: &uri,
            scheme: pick(u, &["https", "http"])?,
            public_port: u.arbitrary()?,
            public_origin: &origin,
            request_headers: &request_headers,
        };
        let status = *u.choose(&[200, 201, 202, 206, 301, 302, 307, 401, 404, 500])?;

        let mut request = request_headers.clone();
        let applied = engine.apply_request(&mut request, &ctx);
        assert!(applied.iter().all(|i| i < engine.rule_count()));
        assert!(all_valid(&request));

        let mut response = headers(u)?;
        let applied = engine.apply_response(status, &mut response, &ctx);
        assert!(applied.iter().all(|i| i < engine.rule_count()));
        for i in applied.iter() {
            let _ = engine.rule_name(i);
        }
        assert!(all_valid(&response));

        if rules.is_empty() {
            // The derived rules alone are idempotent.
            let once = response.clone();
            let again = engine.apply_response(status, &mut response, &ctx);
            assert!(again.is_empty(), "derived rules fired twice: {once:?}");
            assert_eq!(response, once);
        }
        Ok(())
    };
    let _ = run(&mut u);
});
