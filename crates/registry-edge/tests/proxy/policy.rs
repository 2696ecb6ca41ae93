//! GeoIP and the access policy, enforced: embargoed countries, unknown ones, denied and allowed
//! networks, addresses forwarded by trusted proxies, read-only, repositories that are not public
//! (in paths and in token requests' scopes), and the rate limit. Clients come from several
//! addresses of 127.0.0.0/8, which the test's own database places in countries (`mmdb`).

use crate::support::{
    assert_oci_error, connect_from, get_from, metrics_with, policy_edge, send, Edge, Response,
};

/// An allowed country is proxied; an embargoed one gets 451 DENIED on every route, with a
/// message naming the policy and not the country list, and the connection stays usable.
/// Unknown country → denied per unknown_country; deny_cidrs → 403; allow_cidrs pass.
#[test]
fn embargoed_and_denied_clients_are_refused_on_every_route() {
    let (_gdir, edge) = policy_edge("policy-embargo");
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    assert_eq!(
        get_from("127.0.1.1", edge.http, &host, "/v2/", "").status,
        401
    );
    for (h, target) in [
        (host.as_str(), "/v2/"),
        (host.as_str(), "/v2/team/app/manifests/1"),
        (host.as_str(), "/oauth2/token?service=registry.test"),
        (data_host.as_str(), "/blob?sig=1"),
    ] {
        let r = get_from("127.0.2.1", edge.http, h, target, "");
        assert_oci_error(&r, 451, "DENIED");
        let msg = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("export-control"), "{msg}");
        assert!(!msg.contains("CU"), "{msg}");
    }
    let mut s = connect_from("127.0.2.2", edge.http);
    for _ in 0..2 {
        let r = send(
            &mut s,
            &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_eq!(r.status, 451);
    }

    assert_oci_error(
        &get_from("127.0.4.1", edge.http, &host, "/v2/", ""),
        451,
        "DENIED",
    );
    assert_oci_error(
        &get_from("127.0.5.1", edge.http, &host, "/v2/", ""),
        403,
        "DENIED",
    );
    assert_eq!(
        get_from("127.0.2.9", edge.http, &host, "/v2/", "").status,
        401
    );
    // The policy's refusals are counted by reason.
    metrics_with(
        edge.admin,
        &["registry_edge_access_refusals_total{mode=\"enforce\",reason=\"embargo\"}"],
    );
}

#[test]
fn forwarded_addresses_count_only_through_trusted_proxies() {
    let (_gdir, edge) = policy_edge("policy-xff");
    let host = format!("registry.test:{}", edge.http);

    // A client that lies: X-Forwarded-For from an untrusted peer is ignored.
    let r = get_from(
        "127.0.2.1",
        edge.http,
        &host,
        "/v2/",
        "X-Forwarded-For: 127.0.1.1\r\n",
    );
    assert_eq!(r.status, 451);
    // Through a trusted proxy the forwarded address counts, walked right to left.
    let via = |xff: &str| {
        get_from(
            "127.0.9.1",
            edge.http,
            &host,
            "/v2/",
            &format!("X-Forwarded-For: {xff}\r\n"),
        )
        .status
    };
    assert_eq!(via("127.0.2.1"), 451);
    assert_eq!(via("127.0.1.1"), 401);
    assert_eq!(
        via("127.0.1.1, 127.0.2.1, 127.0.9.7"),
        451,
        "the first untrusted hop from the right"
    );
    assert_eq!(
        via("127.0.2.1, 127.0.1.1"),
        401,
        "left of an untrusted hop is not believed"
    );
    assert_eq!(
        via("garbage, 127.0.9.7"),
        401,
        "a malformed entry stops at the last trusted hop"
    );
    let r = get_from(
        "127.0.9.1",
        edge.http,
        &host,
        "/v2/",
        "X-Forwarded-For: 127.0.1.1\r\nX-Forwarded-For: 127.0.2.1\r\n",
    );
    assert_eq!(r.status, 451, "several headers are one list, in order");
}

/// Read-only: pushes refused with Allow; token POSTs pass. Repositories that are not public
/// answer as absent ones; encoded tricks do not get around.
#[test]
fn read_only_and_hidden_repositories() {
    let (_gdir, edge) = policy_edge("policy-hidden");
    let host = format!("registry.test:{}", edge.http);

    let mut s = connect_from("127.0.1.5", edge.http);
    let r = send(
        &mut s,
        &format!("PUT /v2/team/app/manifests/1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"),
    );
    assert_oci_error(&r, 405, "UNSUPPORTED");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = send(
        &mut s,
        &format!("POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 19\r\n\r\ngrant_type=password"),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));

    let r = get_from(
        "127.0.1.6",
        edge.http,
        &host,
        "/v2/secret/app/manifests/1",
        "",
    );
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_string();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{host}/oauth2/token\"")),
        "{challenge}"
    );
    assert!(
        challenge.ends_with(",scope=\"repository:secret/app:pull\""),
        "{challenge}"
    );
    let r = get_from(
        "127.0.1.6",
        edge.http,
        &host,
        "/v2/secret/app/manifests/1",
        "Authorization: Bearer t\r\n",
    );
    assert_oci_error(&r, 404, "NAME_UNKNOWN");
    assert_eq!(
        get_from(
            "127.0.1.6",
            edge.http,
            &host,
            "/v2/team/app/manifests/1",
            ""
        )
        .status,
        200
    );
    for (i, trick) in [
        "/v2/team/..%2Fsecret/app/manifests/1",
        "/v2/team/%2e%2e/secret/app/manifests/1",
        "/v2/team/../secret/app/manifests/1",
        "/v2//secret/app/manifests/1",
        "/v2/secr%65t/app/manifests/1",
        "/v2/SECRET/app/manifests/1",
        "/v2/_catalog",
        "/acr/v1/_catalog",
        "/acr/v1/secret/app/_tags",
    ]
    .into_iter()
    .enumerate()
    {
        // One address each: the rate limit counts refused requests too.
        let r = get_from(
            &format!("127.0.1.{}", 40 + i),
            edge.http,
            &host,
            trick,
            "Authorization: Bearer t\r\n",
        );
        assert!(
            [400, 403, 404].contains(&r.status),
            "{trick} → {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    metrics_with(
        edge.admin,
        &["registry_edge_access_refusals_total{mode=\"enforce\",reason=\"not_public\"}"],
    );
}

/// Token requests lose the scopes of hidden repositories (and name the registry's own audience
/// upstream).
#[test]
fn token_queries_lose_hidden_scopes() {
    let (_gdir, edge) = policy_edge("policy-token-query");
    let host = format!("registry.test:{}", edge.http);
    let svc = edge.login.addr.to_string().replace(':', "%3A");
    let r = get_from(
        "127.0.1.8",
        edge.http,
        &host,
        "/oauth2/token?service=registry.test&scope=repository:secret/app:pull&scope=repository:team/app:pull",
        "",
    );
    assert_eq!(
        r.json()["target"],
        format!("/oauth2/token?service={svc}&scope=repository%3Ateam%2Fapp%3Apull")
    );
    // Names are decoded as the token server decodes them: an encoded `scope` is a scope.
    let r = get_from(
        "127.0.1.29",
        edge.http,
        &host,
        "/oauth2/token?service=registry.test&sc%6fpe=repository:secret/app:pull",
        "",
    );
    assert_eq!(r.json()["target"], format!("/oauth2/token?service={svc}"));
    // Names token clients do not send, case-folded names, repeats and `;` are refused.
    for trick in [
        "/oauth2/token?service=registry.test&Scope=repository:secret/app:pull",
        "/oauth2/token?service=registry.test&service=y",
        "/oauth2/token?service=registry.test;scope=repository:secret/app:pull",
        "/oauth2/token?service=registry.test&other=1",
        "/oauth2/token?service=%zz",
    ]
    .iter()
    .enumerate()
    {
        let r = get_from(
            &format!("127.0.1.{}", 30 + trick.0),
            edge.http,
            &host,
            trick.1,
            "",
        );
        assert_oci_error(&r, 400, "UNSUPPORTED");
    }
}

/// A token POST from 127.0.1.9 with `content_type`, `Content-Length` or (`chunked`) chunked
/// `body`.
fn token_post(edge: &Edge, content_type: &str, body: &str, chunked: bool) -> Response {
    let host = format!("registry.test:{}", edge.http);
    let framing = if chunked {
        format!("Transfer-Encoding: chunked\r\n\r\n{body}")
    } else {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    };
    let mut s = connect_from("127.0.1.9", edge.http);
    send(
        &mut s,
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{framing}"
        ),
    )
}

/// ... in a token POST's form body too (read by the edge, sent again rebuilt without them).
#[test]
fn token_bodies_lose_hidden_scopes() {
    let (_gdir, edge) = policy_edge("policy-token-body");
    let svc = edge.login.addr.to_string().replace(':', "%3A");
    let form = "application/x-www-form-urlencoded";
    let body = "grant_type=refresh_token&service=registry.test&scope=repository%3Asecret%2Fapp%3Apull&scope=repository%3Ateam%2Fapp%3Apull&refresh_token=abc";
    let r = token_post(&edge, form, body, false);
    assert_eq!(r.status, 200);
    let seen = edge.token_seen.lock().unwrap();
    let last = seen.last().unwrap();
    let kept = format!(
        "grant_type=refresh_token&service={svc}&scope=repository%3Ateam%2Fapp%3Apull&refresh_token=abc"
    );
    assert_eq!(
        last.body_len,
        kept.len() as u64,
        "the hidden scope left the body"
    );
    let before = seen.len();
    drop(seen);

    // A chunked body is held to the same limit: 413, and nothing reaches the token server.
    let chunk = "scope=".to_string() + &"a".repeat(8192);
    let mut chunked = String::new();
    for _ in 0..9 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let r = token_post(&edge, form, &chunked, true);
    assert_oci_error(&r, 413, "SIZE_INVALID");
    // A chunked form under the limit is decoded and rebuilt like any other; a JSON body and an
    // encoded parameter name in a form are not a way around the scope filter.
    let small = "service=registry.test&sc%6fpe=repository%3Asecret%2Fapp%3Apull";
    let r = token_post(
        &edge,
        form,
        &format!("{:x}\r\n{small}\r\n0\r\n\r\n", small.len()),
        true,
    );
    assert_eq!(r.status, 200);
    let json = "{\"scope\":\"repository:secret/app:pull\"}";
    let r = token_post(&edge, "application/json", json, false);
    assert_oci_error(&r, 415, "UNSUPPORTED");
    let seen = edge.token_seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        before + 1,
        "only the valid form reached the token server"
    );
    assert_eq!(
        seen.last().unwrap().body_len,
        format!("service={svc}").len() as u64
    );
}

/// Rate limit: a client past its burst gets 429 with Retry-After; its neighbour does not; the
/// exempt address never does.
#[test]
fn clients_past_their_burst_are_limited() {
    let (_gdir, edge) = policy_edge("policy-rate");
    let host = format!("registry.test:{}", edge.http);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get_from("127.0.1.20", edge.http, &host, "/v2/", "").status);
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    let r = get_from("127.0.1.20", edge.http, &host, "/v2/", "");
    assert_oci_error(&r, 429, "TOOMANYREQUESTS");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        get_from("127.0.1.21", edge.http, &host, "/v2/", "").status,
        401
    );
    for _ in 0..10 {
        assert_eq!(
            get_from("127.0.1.99", edge.http, &host, "/v2/", "").status,
            401
        );
    }
    metrics_with(
        edge.admin,
        &["registry_edge_access_refusals_total{mode=\"enforce\",reason=\"rate_limit\"}"],
    );
}
