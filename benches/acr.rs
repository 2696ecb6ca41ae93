//! Recorded ACR responses and the Contoso configuration of the reference architecture.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use registry_edge_rewrite::{
    ActionSpec, ConditionSpec, DerivedMapping, DerivedSpec, PublicTarget, RuleSpec, Side,
    StatusRange, Subject, UpstreamAuthority,
};

pub const LOGIN: &str = "contososecurepublicacr.azurecr.io";
pub const PUBLIC: &str = "acr-secure.contoso.com";
pub const PUBLIC_DATA: &str = "acr-secure-data.contoso.com";

/// Headers every ACR response carries, in the order ACR sends them.
fn common(map: &mut HeaderMap) {
    push(map, "date", "Tue, 14 May 2024 09:12:44 GMT");
    push(map, "connection", "keep-alive");
    push(map, "server", "openresty");
    push(map, "docker-distribution-api-version", "registry/2.0");
    push(
        map,
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    );
    push(map, "x-content-type-options", "nosniff");
    push(
        map,
        "x-ms-correlation-request-id",
        "5d0bc1e2-8f5a-4c59-9a0e-3f1f8c2b7d41",
    );
    push(
        map,
        "x-ms-request-id",
        "b2f4a7f0-63d1-4f0e-a4f2-0a8c4b1e9d77",
    );
    push(
        map,
        "access-control-expose-headers",
        "Docker-Content-Digest, WWW-Authenticate, Link, X-Ms-Correlation-Request-Id",
    );
}

/// `GET /v2/hello-world/manifests/latest`: 200, nothing to rewrite.
pub fn manifest() -> (u16, HeaderMap) {
    let mut map = HeaderMap::new();
    push(&mut map, "content-length", "1573");
    push(
        &mut map,
        "content-type",
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    push(
        &mut map,
        "docker-content-digest",
        "sha256:f54a58bc1aac5ea1a25d796ae155dc228b3f0e11d046ae276b39c4bf2f13d8c4",
    );
    push(
        &mut map,
        "etag",
        "\"sha256:f54a58bc1aac5ea1a25d796ae155dc228b3f0e11d046ae276b39c4bf2f13d8c4\"",
    );
    common(&mut map);
    (200, map)
}

/// `GET /v2/hello-world/blobs/sha256:...`: 307 to the eastus data endpoint with a SAS query.
pub fn blob_redirect() -> (u16, HeaderMap) {
    let mut map = HeaderMap::new();
    push(&mut map, "content-length", "0");
    push(
        &mut map,
        "location",
        "https://contososecurepublicacr.eastus.data.azurecr.io/docker/registry/v2/blobs/sha256/2d/\
         2db29710123e3e53a794f2694094b9b4338aa9ee5c40b930cb8063a1be392c54/data?se=2024-05-14T09%3A32%3A44Z\
         &sig=3fYxv4%2Bq5n9rQdQm0s2hB8Yk1cX7u1rVbq9Zt%2FL0aWE%3D&sp=r&spr=https&sr=b&sv=2020-10-02\
         &regid=4e3c2f1a0b9d4c8e9f7a6b5c4d3e2f1a",
    );
    push(
        &mut map,
        "docker-content-digest",
        "sha256:2db29710123e3e53a794f2694094b9b4338aa9ee5c40b930cb8063a1be392c54",
    );
    common(&mut map);
    (307, map)
}

/// The same redirect as a 302, the status the reference architecture's rules were written for.
pub fn blob_redirect_302() -> (u16, HeaderMap) {
    let (_, map) = blob_redirect();
    (302, map)
}

/// `GET /v2/`: 401 with the Bearer challenge.
pub fn challenge() -> (u16, HeaderMap) {
    let mut map = HeaderMap::new();
    push(&mut map, "content-length", "149");
    push(&mut map, "content-type", "application/json; charset=utf-8");
    push(
        &mut map,
        "www-authenticate",
        "Bearer realm=\"https://contososecurepublicacr.azurecr.io/oauth2/token\",\
         service=\"contososecurepublicacr.azurecr.io\"",
    );
    common(&mut map);
    (401, map)
}

fn push(map: &mut HeaderMap, name: &'static str, value: &'static str) {
    map.append(
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    );
}

/// Login server, two regional login endpoints and two data endpoints sharing one public host,
/// as `registry-edge init` derives them for a geo-replicated registry.
pub fn derived() -> DerivedSpec {
    let login = |host: &str| DerivedMapping {
        upstream: UpstreamAuthority {
            host: host.into(),
            port: 443,
        },
        target: PublicTarget::Login,
    };
    let data = |region: &str| DerivedMapping {
        upstream: UpstreamAuthority {
            host: format!("contososecurepublicacr.{region}.data.azurecr.io"),
            port: 443,
        },
        target: PublicTarget::Data {
            public_host: PUBLIC_DATA.into(),
            region_prefix: Some(region.into()),
        },
    };
    DerivedSpec {
        login_public_host: PUBLIC.into(),
        mappings: vec![
            login(LOGIN),
            login("contososecurepublicacr.eastus.geo.azurecr.io"),
            login("contososecurepublicacr.westus.geo.azurecr.io"),
            data("eastus"),
            data("westus"),
        ],
    }
}

/// The reference architecture's three App Gateway rules, verbatim.
pub fn seed_rules() -> Vec<RuleSpec> {
    let rule = |name: &str, header: &str, status: u16, pattern: &str, value: &str| RuleSpec {
        name: name.into(),
        conditions: vec![ConditionSpec {
            subject: Subject::Header {
                side: Side::Response,
                name: header.into(),
            },
            pattern: pattern.into(),
            case_sensitive: false,
            negate: false,
        }],
        statuses: vec![StatusRange {
            from: status,
            to: status,
        }],
        actions: vec![ActionSpec::Set {
            side: Side::Response,
            header: header.into(),
            value: value.into(),
        }],
    };
    vec![
        rule(
            "rewrite-location",
            "Location",
            302,
            r"https:\/\/contososecurepublicacr.azurecr.io(.*)$",
            "https://acr-secure.contoso.com{http_resp_Location_1}",
        ),
        rule(
            "rewrite-www-authenticate",
            "WWW-Authenticate",
            401,
            r"^(.*)https:\/\/contososecurepublicacr.azurecr.io\/oauth2\/token(.*)$",
            "{http_resp_WWW-Authenticate_1}https://acr-secure.contoso.com/oauth2/token{http_resp_WWW-Authenticate_2}",
        ),
        rule(
            "rewrite-data-location",
            "Location",
            302,
            r"https:\/\/contososecurepublicacr.eastus.data.azurecr.io(.*)$",
            "https://acr-secure-data.contoso.com{http_resp_Location_1}",
        ),
    ]
}
