use super::*;

fn printable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

#[test]
fn registry_paths_are_kept_whole() {
    for p in [
        "/v2/",
        "/v2/team/app/manifests/v1.2.3-rc_1",
        "/v2/team/app/blobs/sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "/v2/team/app/blobs/uploads/5c1e0b6a-7d8e-4f00-9b1a-2b3c4d5e6f70",
        "/v2/_catalog",
        "/acr/v1/team/app/_tags",
        "/_r/eastus/docker/registry/v2/blobs/sha256/6c/x/data",
        "/oauth2/token",
        "/v2/a/b/referrers/sha256:ab",
        "",
    ] {
        assert_eq!(path(p), p);
        assert!(matches!(path(p), std::borrow::Cow::Borrowed(_)));
    }
}

#[test]
fn segments_outside_the_charset_are_replaced() {
    for (p, want) in [
        ("/v2/x/sig%3DSECRET", "/v2/x/REDACTED"),
        ("/blob;sig=SECRET/x", "/REDACTED/x"),
        ("/v2/a%2Fb/manifests/1", "/v2/REDACTED/manifests/1"),
        ("/v2/a b/c", "/v2/REDACTED/c"),
        ("/v2/caf\u{e9}/x", "/v2/REDACTED/x"),
        ("/v2/a\"b\\c\n/x", "/v2/REDACTED/x"),
        ("/v2//x", "/v2//x"),
        ("*", "REDACTED"),
    ] {
        assert_eq!(path(p), want, "{p}");
    }
    let long = format!("/v2/{}/x", "a".repeat(MAX_SEGMENT + 1));
    assert_eq!(path(&long), "/v2/REDACTED/x");
    let digest = format!("/v2/a/blobs/sha512:{}", "f".repeat(128));
    assert_eq!(path(&digest), digest);
}

#[test]
fn query_values_only_for_allowed_keys() {
    for (q, want) in [
        ("n=10&last=team%2Fapp", "n=10&last=team%2Fapp"),
        (
            "mount=sha256:ab&from=team/app",
            "mount=sha256:ab&from=team/app",
        ),
        (
            "sv=2020-10-02&se=2026-11-23T12%3A00%3A00Z&sr=b&sp=r&sig=AbC%2Bd%2Fe%3D",
            "sv=2020-10-02&se=2026-11-23T12%3A00%3A00Z&sr=b&sp=r&sig=REDACTED",
        ),
        (
            "access_token=SECRET&refresh_token=SECRET&_state=SECRET&code=SECRET",
            "access_token=REDACTED&refresh_token=REDACTED&_state=REDACTED&code=REDACTED",
        ),
        (
            "X-Amz-Signature=SECRET&X-Amz-Credential=SECRET",
            "X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED",
        ),
        (
            "password=SECRET;token=SECRET",
            "password=REDACTED;token=REDACTED",
        ),
        // Percent-encoded or odd keys are not keys of the list, whatever they decode to.
        ("sc%6fpe=repository:x:pull", "REDACTED=REDACTED"),
        ("%73ig=SECRET", "REDACTED=REDACTED"),
        ("a b=c", "REDACTED=REDACTED"),
        // Bare words are kept only when they are keys of the list.
        ("SECRETWORD", "REDACTED"),
        ("digest", "digest"),
        ("n=5;sig=SECRET", "n=5;sig=REDACTED"),
        // A value of an allowed key with characters outside the value set.
        ("n=1=2", "n=REDACTED"),
        ("scope=a\"b", "scope=REDACTED"),
        ("N=10", "N=REDACTED"),
        ("&&n=1&", "&&n=1&"),
        ("", ""),
    ] {
        assert_eq!(query(q), want, "{q}");
    }
    let long_key = format!("{}=1", "k".repeat(MAX_KEY + 1));
    assert_eq!(query(&long_key), "REDACTED=REDACTED");
    assert_eq!(
        query("service=registry.example&scope=repository:team/app:pull,push"),
        "service=registry.example&scope=repository:team/app:pull,push"
    );
}

#[test]
fn targets_and_summaries() {
    assert_eq!(
        target("/v2/a/blobs/uploads/u-1/sig%3DSECRET2?_state=S&sig=SECRET1&digest=sha256:ab"),
        "/v2/a/blobs/uploads/u-1/REDACTED?_state=REDACTED&sig=REDACTED&digest=sha256:ab"
    );
    assert_eq!(target("/v2/"), "/v2/");
    assert_eq!(target("/v2/?"), "/v2/?");
    assert_eq!(
        summary_of(
            "PATCH",
            "registry.test:8443",
            "login",
            "/v2/a/b/sig%3DX",
            Some("sig=Y&n=1")
        ),
        "PATCH registry.test:8443 login /v2/a/b/REDACTED?sig=REDACTED&n=1"
    );
    assert_eq!(
        summary_of("GET", "evil\"host/x?sig=1", "none", "/", None),
        "GET REDACTED none /"
    );
    assert_eq!(summary_of("GET", "-", "none", "/", None), "GET - none /");
    assert_eq!(
        summary_of("G\u{e9}T", "[::1]:80", "data", "/x", None),
        "REDACTED [::1]:80 data /x"
    );
}

#[test]
fn free_text_keeps_words_and_loses_credentials() {
    for (text, want) in [
        // pingora's line with its default request summary.
        (
            "Fail to proxy: Downstream ConnectionClosed context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, status: 0, tries: 1, retry: false, PATCH /v2/a/uploads/u1/sig%3DS2?_state=S4&sig=S1, Host: registry.test:18080",
            "Fail to proxy: Downstream ConnectionClosed context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, status: 0, tries: 1, retry: false, PATCH /v2/a/uploads/u1/REDACTED?_state=REDACTED&sig=REDACTED, Host: registry.test:18080",
        ),
        ("Authorization: Bearer S3", "Authorization: REDACTED"),
        ("got bearer S3 from x", "got bearer REDACTED from x"),
        ("Basic dXNlcjpwYXNz", "Basic REDACTED"),
        (
            r#"{"authorization": "Bearer S3", "host": "h"}"#,
            r#"{"authorization": "REDACTED", "host": "h"}"#,
        ),
        (
            r#"{"access_token":"S1","expires_in":300}"#,
            r#"{"access_token":"REDACTED","expires_in":300}"#,
        ),
        ("cookie: a=S1; b=S2\nnext line", "cookie: REDACTED\nnext line"),
        (
            "redirect to https://user:S1@data.example:443/docker/x?sv=1&sig=S2 failed",
            "redirect to https://REDACTED@data.example:443/docker/x?sv=1&sig=REDACTED failed",
        ),
        ("form grant_type=password&password=S1", "form grant_type=REDACTED&password=REDACTED"),
        ("token=\"S1\" here", "token=\"REDACTED\" here"),
        ("sig='S1'", "sig='REDACTED'"),
        ("n=\"5\"", "n=\"5\""),
        ("word sig%3DS1 word", "word REDACTED word"),
        ("blob;sig=S1", "REDACTED;sig=REDACTED"),
        ("uri: /v2/x/y?sig=S1, version: HTTP/1.1", "uri: /v2/x/y?sig=REDACTED, version: HTTP/1.1"),
        ("is it ok? yes", "is it ok? yes"),
        (
            "cannot write the pid file /run/registry-edge/edge.pid: Permission denied",
            "cannot write the pid file /run/registry-edge/edge.pid: Permission denied",
        ),
        ("upstream login: peers [127.0.0.1:5000, [::1]:5000]", "upstream login: peers [127.0.0.1:5000, [::1]:5000]"),
        ("50% done (os error 104)", "50% done (os error 104)"),
        ("caf\u{e9} \u{1f600}", "caf\u{e9} \u{1f600}"),
    ] {
        assert_eq!(scrub(text), want, "{text}");
        assert_eq!(scrub(want), want, "idempotent: {want}");
    }
}

#[test]
fn what_is_written_is_one_json_safe_line() {
    let nasty = "/v2/\"\\\n\r\t\u{0}\u{7f}\u{e9}/x?\"=\\&a=\n&n=\u{1}";
    for s in [target(nasty), path(nasty).into_owned(), query(nasty)] {
        assert!(printable(&s), "{s:?}");
    }
    let mut out = Vec::new();
    write_host(&mut out, "h\"\n");
    assert_eq!(out, REDACTED.as_bytes());
}
