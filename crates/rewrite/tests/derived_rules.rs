//! The derived registry rules: upstream authorities in Location, Link and the
//! WWW-Authenticate realm become the public ones, and nothing else changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/helpers.rs"]
mod helpers;

use helpers::*;
use registry_edge_rewrite::*;

const SAS: &str = "?sv=2020&se=2024-05-01T10%3A00%3A00Z&sig=abc%2Bdef%3D&sp=r";
const BLOB: &str = "/docker/registry/v2/blobs/sha256/9f/9f86d081884c7d659a2feaa0c55ad015/data";

fn contoso() -> Engine {
    engine(&[], Some(&contoso_derived()))
}

fn location_after(
    engine: &Engine,
    request: &Request,
    status: u16,
    location: &str,
) -> (Vec<String>, String) {
    let mut map = headers(&[("Location", location)]);
    let fired = respond_to(engine, request, status, &mut map);
    (fired, values(&map, "location").join("\n"))
}

#[test]
fn blob_redirect_keeps_the_sas_query_byte_for_byte() {
    let (fired, location) = location_after(
        &contoso(),
        &Request::default(),
        307,
        &format!("https://{DATA_EAST}{BLOB}{SAS}"),
    );
    assert_eq!(fired, ["registry:location"]);
    assert_eq!(
        location,
        format!("https://{PUBLIC_DATA}/_r/eastus{BLOB}{SAS}")
    );
}

#[test]
fn shared_data_host_carries_each_region_in_the_path() {
    let engine = contoso();
    let (_, east) = location_after(
        &engine,
        &Request::default(),
        302,
        &format!("https://{DATA_EAST}/a/b?sig=x"),
    );
    let (_, west) = location_after(
        &engine,
        &Request::default(),
        302,
        &format!("https://{DATA_WEST}/a/b?sig=x"),
    );
    assert_eq!(
        east,
        "https://acr-secure-data.contoso.com/_r/eastus/a/b?sig=x"
    );
    assert_eq!(
        west,
        "https://acr-secure-data.contoso.com/_r/westus/a/b?sig=x"
    );
    let (_, bare) = location_after(
        &engine,
        &Request::default(),
        302,
        &format!("https://{DATA_WEST}?sig=x"),
    );
    assert_eq!(bare, "https://acr-secure-data.contoso.com/_r/westus/?sig=x");
}

#[test]
fn dedicated_data_host_gets_no_region_prefix() {
    let spec = DerivedSpec {
        login_public_host: PUBLIC.into(),
        mappings: vec![DerivedMapping {
            upstream: upstream("reg.eastus.data.azurecr.io", 443),
            target: PublicTarget::Data {
                public_host: "data.example.com".into(),
                region_prefix: None,
            },
        }],
    };
    let engine = engine(&[], Some(&spec));
    let (_, location) = location_after(
        &engine,
        &Request::default(),
        307,
        "https://reg.eastus.data.azurecr.io/a/b?sig=x#frag",
    );
    assert_eq!(location, "https://data.example.com/a/b?sig=x#frag");
}

#[test]
fn upload_locations_on_201_202_and_204() {
    let engine = contoso();
    // 204: the upload status (`GET .../blobs/uploads/<uuid>`) carries the upload's Location.
    for status in [201, 202, 204] {
        let (fired, location) = location_after(
            &engine,
            &Request::default(),
            status,
            &format!("https://{LOGIN}/v2/hello/blobs/uploads/2f1c?_state=a%2Bb%3D%3D"),
        );
        assert_eq!(fired, ["registry:location"], "{status}");
        assert_eq!(
            location,
            format!("https://{PUBLIC}/v2/hello/blobs/uploads/2f1c?_state=a%2Bb%3D%3D")
        );
    }
    // A 200 or 404 carrying a Location is not a redirect: its Location is left alone.
    for status in [200, 404] {
        let original = format!("https://{LOGIN}/v2/");
        let (fired, location) = location_after(&engine, &Request::default(), status, &original);
        assert!(fired.is_empty());
        assert_eq!(location, original);
    }
}

#[test]
fn relative_and_foreign_locations_are_untouched() {
    let engine = contoso();
    for location in [
        "/v2/hello/blobs/uploads/2f1c?_state=abc",
        "v2/relative",
        "https://example.org/v2/",
        "https://contososecurepublicacr.azurecr.io.example.org/v2/",
        "https://xcontososecurepublicacr.azurecr.io/v2/",
        "ftp://contososecurepublicacr.azurecr.io/v2/",
        "https://contososecurepublicacr.azurecr.io:8443/v2/",
        "http://contososecurepublicacr.azurecr.io/v2/",
        "/v2/?next=https://contososecurepublicacr.azurecr.io/v2/",
    ] {
        let (fired, after) = location_after(&engine, &Request::default(), 307, location);
        assert!(fired.is_empty(), "{location}");
        assert_eq!(after, location);
    }
}

#[test]
fn userinfo_never_fools_the_match() {
    let engine = contoso();
    for location in [
        // Names example.org: must not be taken for the registry.
        "https://contososecurepublicacr.azurecr.io@example.org/v2/",
        "https://contososecurepublicacr.azurecr.io:443@example.org/v2/",
        // Names the registry, with credentials for someone: left as the registry wrote it,
        // rather than turned into a URL on our host that still carries someone's userinfo.
        "https://user:secret@contososecurepublicacr.azurecr.io/v2/",
        "https://example.org\\@contososecurepublicacr.azurecr.io/v2/",
    ] {
        let (fired, after) = location_after(&engine, &Request::default(), 302, location);
        assert!(fired.is_empty(), "{location}");
        assert_eq!(after, location);
    }
}

#[test]
fn host_case_explicit_default_port_and_root_dot_are_the_same_authority() {
    let engine = contoso();
    for location in [
        "HTTPS://ContosoSecurePublicACR.AzureCR.IO/v2/",
        "https://contososecurepublicacr.azurecr.io:443/v2/",
        "https://contososecurepublicacr.azurecr.io:/v2/",
        "https://contososecurepublicacr.azurecr.io./v2/",
        "http://contososecurepublicacr.azurecr.io:443/v2/",
        "//contososecurepublicacr.azurecr.io/v2/",
    ] {
        let (fired, after) = location_after(&engine, &Request::default(), 302, location);
        assert_eq!(fired, ["registry:location"], "{location}");
        assert_eq!(after, "https://acr-secure.contoso.com/v2/", "{location}");
    }
}

#[test]
fn plain_http_upstream_on_a_custom_port() {
    let spec = DerivedSpec {
        login_public_host: "registry.example.com".into(),
        mappings: vec![DerivedMapping {
            upstream: upstream("registry.internal", 5000),
            target: PublicTarget::Login,
        }],
    };
    let engine = engine(&[], Some(&spec));
    let request = Request {
        scheme: "http".into(),
        public_port: Some(8080),
        ..Request::default()
    };
    let (_, after) = location_after(
        &engine,
        &request,
        307,
        "http://registry.internal:5000/v2/x/blobs/y",
    );
    assert_eq!(after, "http://registry.example.com:8080/v2/x/blobs/y");
    for other in [
        "http://registry.internal/v2/",
        "https://registry.internal/v2/",
        "http://registry.internal:5001/v2/",
    ] {
        let (fired, after) = location_after(&engine, &request, 307, other);
        assert!(fired.is_empty(), "{other}");
        assert_eq!(after, other);
    }
}

#[test]
fn ipv6_upstream() {
    let spec = DerivedSpec {
        login_public_host: PUBLIC.into(),
        mappings: vec![DerivedMapping {
            upstream: upstream("2001:db8::10", 8443),
            target: PublicTarget::Login,
        }],
    };
    let engine = engine(&[], Some(&spec));
    let (_, after) = location_after(
        &engine,
        &Request::default(),
        302,
        "https://[2001:DB8::10]:8443/v2/?a=b",
    );
    assert_eq!(after, "https://acr-secure.contoso.com/v2/?a=b");
    let (fired, _) = location_after(
        &engine,
        &Request::default(),
        302,
        "https://[2001:db8::10]/v2/",
    );
    assert!(fired.is_empty());
}

#[test]
fn public_port_from_the_client_is_kept() {
    let request = Request {
        public_port: Some(8443),
        ..Request::default()
    };
    let (_, after) = location_after(
        &contoso(),
        &request,
        307,
        &format!("https://{DATA_EAST}/x{SAS}"),
    );
    assert_eq!(
        after,
        format!("https://{PUBLIC_DATA}:8443/_r/eastus/x{SAS}")
    );
}

#[test]
fn regional_login_endpoints_map_to_the_login_host() {
    let (_, after) = location_after(
        &contoso(),
        &Request::default(),
        307,
        "https://contososecurepublicacr.westus.geo.azurecr.io/v2/x",
    );
    assert_eq!(after, "https://acr-secure.contoso.com/v2/x");
}

#[test]
fn link_pagination_rewrites_every_absolute_target() {
    let engine = contoso();
    let mut map = headers(&[
        (
            "Link",
            &format!(
                r#"<https://{LOGIN}/v2/_catalog?last=hello&n=100>; rel="next", </v2/_catalog?n=1>; rel="first", <https://example.org/x>; rel="help"; title="<https://{LOGIN}/in-a-title>""#
            ),
        ),
        (
            "Link",
            &format!("<https://{LOGIN}/acr/v1/hello/_tags?last=v2>; rel=\"next\""),
        ),
    ]);
    let fired = respond(&engine, 200, &mut map);
    assert_eq!(fired, ["registry:link"]);
    assert_eq!(
        values(&map, "link"),
        [
            format!(
                r#"<https://{PUBLIC}/v2/_catalog?last=hello&n=100>; rel="next", </v2/_catalog?n=1>; rel="first", <https://example.org/x>; rel="help"; title="<https://{LOGIN}/in-a-title>""#
            ),
            format!("<https://{PUBLIC}/acr/v1/hello/_tags?last=v2>; rel=\"next\""),
        ]
    );
}

#[test]
fn relative_link_is_untouched() {
    let original = r#"</v2/_catalog?last=hello&n=100>; rel="next""#;
    let mut map = headers(&[("Link", original)]);
    assert!(respond(&contoso(), 200, &mut map).is_empty());
    assert_eq!(values(&map, "link"), [original]);
}

#[test]
fn realm_is_rewritten_and_service_untouched() {
    let engine = contoso();
    let challenge = format!(
        r#"Bearer realm="https://{LOGIN}/oauth2/token",service="{LOGIN}",scope="repository:hello:pull""#
    );
    let mut map = headers(&[
        ("WWW-Authenticate", &challenge),
        ("Content-Type", "application/json"),
    ]);
    let fired = respond(&engine, 401, &mut map);
    assert_eq!(fired, ["registry:www-authenticate"]);
    assert_eq!(
        values(&map, "www-authenticate"),
        [format!(
            r#"Bearer realm="https://{PUBLIC}/oauth2/token",service="{LOGIN}",scope="repository:hello:pull""#
        )]
    );
    assert_eq!(values(&map, "content-type"), ["application/json"]);

    // Same challenge on another status: not a challenge to rewrite.
    let mut map = headers(&[("WWW-Authenticate", &challenge)]);
    assert!(respond(&engine, 403, &mut map).is_empty());
    assert_eq!(values(&map, "www-authenticate"), [challenge]);
}

#[test]
fn realm_of_every_challenge() {
    let mut map = headers(&[
        (
            "WWW-Authenticate",
            &format!(
                r#"Basic realm="https://{LOGIN}/", Bearer realm="https://{LOGIN}/oauth2/token",service="{LOGIN}""#
            ),
        ),
        (
            "WWW-Authenticate",
            r#"Negotiate abc==, Bearer realm="https://example.org/token""#,
        ),
        (
            "WWW-Authenticate",
            &format!("Bearer realm=https://{LOGIN}/oauth2/token,service={LOGIN}"),
        ),
    ]);
    respond(&contoso(), 401, &mut map);
    assert_eq!(
        values(&map, "www-authenticate"),
        [
            format!(
                r#"Basic realm="https://{PUBLIC}/", Bearer realm="https://{PUBLIC}/oauth2/token",service="{LOGIN}""#
            ),
            r#"Negotiate abc==, Bearer realm="https://example.org/token""#.to_owned(),
            format!("Bearer realm=https://{PUBLIC}/oauth2/token,service={LOGIN}"),
        ]
    );
}

#[test]
fn idempotent() {
    let engine = contoso();
    let mut map = headers(&[
        ("Location", &format!("https://{DATA_EAST}{BLOB}{SAS}")),
        (
            "Link",
            &format!("<https://{LOGIN}/v2/_catalog?n=1>; rel=\"next\""),
        ),
    ]);
    respond(&engine, 307, &mut map);
    let once = map.clone();
    assert!(respond(&engine, 307, &mut map).is_empty());
    assert_eq!(map, once);
}

#[test]
fn user_rules_run_first_then_derived() {
    let engine = engine(&seed_rules(), Some(&contoso_derived()));
    assert_eq!(engine.rule_count(), 6);
    let names: Vec<&str> = (0..engine.rule_count())
        .map(|i| engine.rule_name(i))
        .collect();
    assert_eq!(
        names,
        [
            "rewrite-location",
            "rewrite-www-authenticate",
            "rewrite-data-location",
            "registry:location",
            "registry:link",
            "registry:www-authenticate",
        ]
    );
    assert_eq!(engine.rule_name(99), "");

    // The seed's rule takes the 302 first; the derived rule then finds nothing left to do.
    let mut map = headers(&[("Location", &format!("https://{LOGIN}/v2/"))]);
    assert_eq!(respond(&engine, 302, &mut map), ["rewrite-location"]);
    // On a 307 only the derived rule applies.
    let mut map = headers(&[
        ("Location", &format!("https://{DATA_EAST}/x")),
        (
            "Link",
            &format!("<https://{LOGIN}/v2/_catalog?n=1>; rel=\"next\""),
        ),
    ]);
    assert_eq!(
        respond(&engine, 307, &mut map),
        ["registry:location", "registry:link"]
    );
}

#[test]
fn no_mappings_compile_to_rules_that_never_fire() {
    let spec = DerivedSpec {
        login_public_host: PUBLIC.into(),
        mappings: vec![],
    };
    let engine = engine(&[], Some(&spec));
    assert_eq!(engine.rule_count(), 3);
    let mut map = headers(&[("Location", &format!("https://{LOGIN}/v2/"))]);
    assert!(respond(&engine, 302, &mut map).is_empty());
}

#[test]
fn request_rules_are_not_affected_by_derived_rules() {
    let engine = contoso();
    let mut map = headers(&[("Location", &format!("https://{LOGIN}/v2/"))]);
    let request = Request::default();
    assert!(engine.apply_request(&mut map, &request.ctx()).is_empty());
    assert_eq!(values(&map, "location"), [format!("https://{LOGIN}/v2/")]);
}
