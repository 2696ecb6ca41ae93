//! A login-side request as a registry operation. The path must be *exactly* one of the routes
//! below, written as the specification writes it: no `%` anywhere, no empty, `.` or `..`
//! segment, no `;` parameter, no trailing slash where the spec has none, names, tags and digests
//! by [`crate::grammar`]. The query is decoded as Go decodes it, and only the parameters each
//! route defines are accepted, each at most once and validated. What goes upstream is
//! [`Operation::target`], re-serialised from the parsed values.
//!
//! ```text
//! /v2/                                   GET HEAD          base (API version check)
//! /v2/_catalog                           GET HEAD          catalog          ?n ?last
//! /v2/<name>/manifests/<tag|digest>      GET HEAD PUT DELETE
//! /v2/<name>/blobs/<digest>              GET HEAD DELETE
//! /v2/<name>/blobs/uploads/              POST              upload start     ?mount ?from ?digest
//! /v2/<name>/blobs/uploads/<id>          GET PATCH PUT DELETE               ?_state ?digest
//! /v2/<name>/tags/list                   GET HEAD                           ?n ?last
//! /v2/<name>/referrers/<digest>          GET HEAD                           ?artifactType
//! /acr/v1/_catalog                       GET HEAD                           ?n ?last ?orderby
//! /acr/v1/<name>/_tags[/<tag>]           GET HEAD PATCH DELETE              ?n ?last ?orderby ?digest
//! /acr/v1/<name>/_manifests[/<digest>]   GET HEAD PATCH DELETE              ?n ?last ?orderby
//! <token path>                           GET POST          (its parameters: crate::token)
//! ```
//!
//! Every `/v2/` route also takes containerd's `?ns=<registry host>`.

use crate::form;
use crate::grammar;

/// What a request does, with its parameters validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Base,
    Catalog,
    Manifest {
        reference: String,
    },
    Blob {
        digest: String,
    },
    /// `POST .../blobs/uploads/`; a cross-repository mount names its source in `from`.
    UploadStart,
    Upload {
        id: String,
    },
    Tags,
    Referrers {
        digest: String,
    },
    AcrCatalog,
    AcrTags {
        tag: Option<String>,
    },
    AcrManifests {
        reference: Option<String>,
    },
    /// The `index`-th configured token path; its query and body are [`crate::TokenRequest`]s.
    Token {
        index: usize,
    },
}

/// A query parameter some route defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    N,
    Last,
    OrderBy,
    Mount,
    From,
    Digest,
    State,
    NoUploadCache,
    ArtifactType,
    Ns,
}

impl Param {
    const ALL: [Param; 10] = [
        Param::N,
        Param::Last,
        Param::OrderBy,
        Param::Mount,
        Param::From,
        Param::Digest,
        Param::State,
        Param::NoUploadCache,
        Param::ArtifactType,
        Param::Ns,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Param::N => "n",
            Param::Last => "last",
            Param::OrderBy => "orderby",
            Param::Mount => "mount",
            Param::From => "from",
            Param::Digest => "digest",
            Param::State => "_state",
            Param::NoUploadCache => "_nouploadcache",
            Param::ArtifactType => "artifactType",
            Param::Ns => "ns",
        }
    }
}

/// A parsed, validated login-side request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: Kind,
    /// The repository the path names (`None` for base, catalogs and token paths).
    pub name: Option<String>,
    /// The query's parameters, decoded and validated, in the order received.
    pub query: Vec<(Param, String)>,
}

/// Why the edge answers a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// OCI error code.
    pub code: &'static str,
    pub reason: RejectReason,
    pub message: &'static str,
    /// For a 405: the methods the route takes.
    pub allow: Option<&'static str>,
}

/// Which grammar rule a refused request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NonCanonicalPath,
    UnknownRoute,
    NameInvalid,
    ReferenceInvalid,
    DigestInvalid,
    MethodNotAllowed,
    QueryInvalid,
}

impl RejectReason {
    /// Bounded label for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::NonCanonicalPath => "non_canonical_path",
            RejectReason::UnknownRoute => "unknown_route",
            RejectReason::NameInvalid => "name_invalid",
            RejectReason::ReferenceInvalid => "reference_invalid",
            RejectReason::DigestInvalid => "digest_invalid",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::QueryInvalid => "query_invalid",
        }
    }
}

impl Reject {
    const fn new(
        status: u16,
        code: &'static str,
        reason: RejectReason,
        message: &'static str,
    ) -> Self {
        Reject {
            status,
            code,
            reason,
            message,
            allow: None,
        }
    }

    pub const NON_CANONICAL: Reject = Reject::new(
        400,
        "NAME_INVALID",
        RejectReason::NonCanonicalPath,
        "the path is not in canonical form: no percent-encoding, empty, `.` or `..` segments, `;` parameters or characters outside the registry grammar",
    );
    pub const UNKNOWN_ROUTE: Reject = Reject::new(
        404,
        "NAME_UNKNOWN",
        RejectReason::UnknownRoute,
        "no registry API route has this path",
    );
    pub const NAME_INVALID: Reject = Reject::new(
        400,
        "NAME_INVALID",
        RejectReason::NameInvalid,
        "invalid repository name",
    );
    pub const REFERENCE_INVALID: Reject = Reject::new(
        400,
        "TAG_INVALID",
        RejectReason::ReferenceInvalid,
        "the manifest reference is neither a valid tag nor a valid digest",
    );
    pub const DIGEST_INVALID: Reject = Reject::new(
        400,
        "DIGEST_INVALID",
        RejectReason::DigestInvalid,
        "invalid digest",
    );
    pub const QUERY_INVALID: Reject = Reject::new(
        400,
        "UNSUPPORTED",
        RejectReason::QueryInvalid,
        "the query has a parameter this route does not define, a duplicate, an encoded or case-folded name, or an invalid value",
    );
    const fn method(allow: &'static str) -> Reject {
        Reject {
            status: 405,
            code: "UNSUPPORTED",
            reason: RejectReason::MethodNotAllowed,
            message: "the method is not allowed on this route",
            allow: Some(allow),
        }
    }
}

/// Characters a canonical registry path may hold: the union of the grammar's alphabets.
fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b':' | b'=' | b'+')
}

/// The path is built of grammar characters, with no empty (except a final one), `.` or `..`
/// segment.
fn canonical(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(path_byte) {
        return false;
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let last = segs.len() - 1;
    segs.iter()
        .enumerate()
        .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
}

/// Parses a login-side request. `token_paths` are the configured token paths, matched exactly.
pub fn parse<S: AsRef<str>>(
    method: &str,
    path: &str,
    query: Option<&str>,
    token_paths: &[S],
) -> Result<Operation, Reject> {
    if !canonical(path) {
        return Err(Reject::NON_CANONICAL);
    }
    if let Some(index) = token_paths.iter().position(|t| t.as_ref() == path) {
        allow(method, &["GET", "POST"], "GET, POST")?;
        // The token request's own parser reads the query.
        return Ok(Operation {
            kind: Kind::Token { index },
            name: None,
            query: Vec::new(),
        });
    }
    let (kind, name) = route(path)?;
    if let Some(name) = &name {
        if !grammar::is_name(name) {
            return Err(Reject::NAME_INVALID);
        }
    }
    check_method(&kind, method)?;
    let query = parse_query(&kind, query)?;
    Ok(Operation { kind, name, query })
}

fn route(path: &str) -> Result<(Kind, Option<String>), Reject> {
    if path == "/v2/" || path == "/v2" {
        return Ok((Kind::Base, None));
    }
    if path == "/v2/_catalog" {
        return Ok((Kind::Catalog, None));
    }
    if path == "/acr/v1/_catalog" {
        return Ok((Kind::AcrCatalog, None));
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| Some(segs[..k].join("/"));
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok((Kind::Tags, name(n - 2)));
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let last = segs[n - 1];
            if last.is_empty() {
                return Ok((Kind::UploadStart, name(n - 3)));
            }
            if !grammar::is_upload_id(last) {
                return Err(Reject::UNKNOWN_ROUTE);
            }
            return Ok((
                Kind::Upload {
                    id: last.to_owned(),
                },
                name(n - 3),
            ));
        }
        if n >= 3 {
            let last = segs[n - 1];
            match segs[n - 2] {
                "manifests" => {
                    if !grammar::is_reference(last) {
                        return Err(Reject::REFERENCE_INVALID);
                    }
                    let reference = last.to_owned();
                    return Ok((Kind::Manifest { reference }, name(n - 2)));
                }
                "blobs" => {
                    if !grammar::is_digest(last) {
                        return Err(Reject::DIGEST_INVALID);
                    }
                    let digest = last.to_owned();
                    return Ok((Kind::Blob { digest }, name(n - 2)));
                }
                "referrers" => {
                    if !grammar::is_digest(last) {
                        return Err(Reject::DIGEST_INVALID);
                    }
                    let digest = last.to_owned();
                    return Ok((Kind::Referrers { digest }, name(n - 2)));
                }
                _ => {}
            }
        }
        return Err(Reject::UNKNOWN_ROUTE);
    }
    if let Some(rest) = path.strip_prefix("/acr/v1/") {
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| Some(segs[..k].join("/"));
        if n >= 2 {
            match segs[n - 1] {
                "_tags" => return Ok((Kind::AcrTags { tag: None }, name(n - 1))),
                "_manifests" => return Ok((Kind::AcrManifests { reference: None }, name(n - 1))),
                _ => {}
            }
        }
        if n >= 3 {
            let last = segs[n - 1];
            match segs[n - 2] {
                "_tags" => {
                    if !grammar::is_tag(last) {
                        return Err(Reject::REFERENCE_INVALID);
                    }
                    let tag = Some(last.to_owned());
                    return Ok((Kind::AcrTags { tag }, name(n - 2)));
                }
                "_manifests" => {
                    if !grammar::is_reference(last) {
                        return Err(Reject::REFERENCE_INVALID);
                    }
                    let reference = Some(last.to_owned());
                    return Ok((Kind::AcrManifests { reference }, name(n - 2)));
                }
                _ => {}
            }
        }
    }
    Err(Reject::UNKNOWN_ROUTE)
}

fn allow(method: &str, methods: &[&str], header: &'static str) -> Result<(), Reject> {
    if methods.contains(&method) {
        Ok(())
    } else {
        Err(Reject::method(header))
    }
}

fn check_method(kind: &Kind, method: &str) -> Result<(), Reject> {
    match kind {
        Kind::Base | Kind::Catalog | Kind::Tags | Kind::Referrers { .. } | Kind::AcrCatalog => {
            allow(method, &["GET", "HEAD"], "GET, HEAD")
        }
        Kind::Manifest { .. } => allow(
            method,
            &["GET", "HEAD", "PUT", "DELETE"],
            "GET, HEAD, PUT, DELETE",
        ),
        Kind::Blob { .. } => allow(method, &["GET", "HEAD", "DELETE"], "GET, HEAD, DELETE"),
        Kind::UploadStart => allow(method, &["POST"], "POST"),
        Kind::Upload { .. } => allow(
            method,
            &["GET", "PATCH", "PUT", "DELETE"],
            "GET, PATCH, PUT, DELETE",
        ),
        Kind::AcrTags { .. } | Kind::AcrManifests { .. } => allow(
            method,
            &["GET", "HEAD", "PATCH", "DELETE"],
            "GET, HEAD, PATCH, DELETE",
        ),
        Kind::Token { .. } => allow(method, &["GET", "POST"], "GET, POST"),
    }
}

/// The parameters a route defines.
fn params(kind: &Kind) -> &'static [Param] {
    use Param::*;
    match kind {
        Kind::Base | Kind::Manifest { .. } | Kind::Blob { .. } => &[Ns],
        Kind::Catalog | Kind::Tags => &[N, Last, Ns],
        Kind::UploadStart => &[Mount, From, Digest, Ns],
        Kind::Upload { .. } => &[State, Digest, NoUploadCache, Ns],
        Kind::Referrers { .. } => &[ArtifactType, Ns],
        Kind::AcrCatalog | Kind::AcrManifests { .. } => &[N, Last, OrderBy],
        Kind::AcrTags { .. } => &[N, Last, OrderBy, Digest],
        Kind::Token { .. } => &[],
    }
}

fn valid_value(kind: &Kind, p: Param, v: &str) -> bool {
    match p {
        Param::N => !v.is_empty() && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()),
        Param::Last => match kind {
            Kind::Tags | Kind::AcrTags { .. } => grammar::is_tag(v),
            Kind::AcrManifests { .. } => grammar::is_reference(v),
            _ => grammar::is_name(v),
        },
        Param::OrderBy => {
            !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphabetic())
        }
        Param::Mount | Param::Digest => grammar::is_digest(v),
        Param::From => grammar::is_name(v),
        // Opaque upload state minted by the registry (base64url, JWT-like): printable ASCII.
        Param::State => {
            !v.is_empty() && v.len() <= 8192 && v.bytes().all(|b| (0x21..0x7f).contains(&b))
        }
        Param::NoUploadCache => v == "true" || v == "false",
        Param::ArtifactType => grammar::is_media_type(v),
        // containerd's upstream registry host: a host name or address, with a port.
        Param::Ns => {
            !v.is_empty()
                && v.len() <= 255
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        }
    }
}

fn parse_query(kind: &Kind, raw: Option<&str>) -> Result<Vec<(Param, String)>, Reject> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    // Names are matched as sent: an encoded name (`fr%6fm`) decodes to a defined one only for
    // some readers.
    if !raw_names(raw).all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
        return Err(Reject::QUERY_INVALID);
    }
    let pairs = form::pairs(raw).map_err(|_| Reject::QUERY_INVALID)?;
    let defined = params(kind);
    let mut out: Vec<(Param, String)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        // A case-folded name (`From`) is the same name to ASP.NET.
        let p = Param::ALL
            .iter()
            .copied()
            .find(|p| p.as_str().eq_ignore_ascii_case(&k))
            .ok_or(Reject::QUERY_INVALID)?;
        if p.as_str() != k || !defined.contains(&p) {
            return Err(Reject::QUERY_INVALID);
        }
        if out.iter().any(|(q, _)| *q == p) || !valid_value(kind, p, &v) {
            return Err(Reject::QUERY_INVALID);
        }
        out.push((p, v));
    }
    Ok(out)
}

/// The names of the raw (undecoded) pairs.
fn raw_names(raw: &str) -> impl Iterator<Item = &str> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
}

impl Operation {
    /// The repositories the request names: the path's, then a mount's source.
    pub fn repositories(&self) -> impl Iterator<Item = &str> {
        self.name
            .as_deref()
            .into_iter()
            .chain(self.param(Param::From))
    }

    /// A listing of every repository (`/v2/_catalog`, `/acr/v1/_catalog`).
    pub fn lists_repositories(&self) -> bool {
        matches!(self.kind, Kind::Catalog | Kind::AcrCatalog)
    }

    /// A blob mount that names no source repository (the registry may then look in any).
    pub fn sourceless_mount(&self) -> bool {
        self.kind == Kind::UploadStart
            && self.param(Param::Mount).is_some()
            && self.param(Param::From).is_none()
    }

    pub fn param(&self, p: Param) -> Option<&str> {
        self.query
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| v.as_str())
    }

    /// The path, re-serialised from the parsed values (`None` for a token path, whose path is
    /// the configured one).
    pub fn path(&self) -> Option<String> {
        let name = self.name.as_deref().unwrap_or("");
        Some(match &self.kind {
            Kind::Base => "/v2/".to_owned(),
            Kind::Catalog => "/v2/_catalog".to_owned(),
            Kind::Manifest { reference } => format!("/v2/{name}/manifests/{reference}"),
            Kind::Blob { digest } => format!("/v2/{name}/blobs/{digest}"),
            Kind::UploadStart => format!("/v2/{name}/blobs/uploads/"),
            Kind::Upload { id } => format!("/v2/{name}/blobs/uploads/{id}"),
            Kind::Tags => format!("/v2/{name}/tags/list"),
            Kind::Referrers { digest } => format!("/v2/{name}/referrers/{digest}"),
            Kind::AcrCatalog => "/acr/v1/_catalog".to_owned(),
            Kind::AcrTags { tag: None } => format!("/acr/v1/{name}/_tags"),
            Kind::AcrTags { tag: Some(t) } => format!("/acr/v1/{name}/_tags/{t}"),
            Kind::AcrManifests { reference: None } => format!("/acr/v1/{name}/_manifests"),
            Kind::AcrManifests { reference: Some(r) } => {
                format!("/acr/v1/{name}/_manifests/{r}")
            }
            Kind::Token { .. } => return None,
        })
    }

    /// The request target for the upstream: [`Operation::path`] and the query re-encoded.
    pub fn target(&self) -> Option<String> {
        let mut t = self.path()?;
        if !self.query.is_empty() {
            t.push('?');
            t.push_str(&form::serialize(
                self.query.iter().map(|(p, v)| (p.as_str(), v.as_str())),
            ));
        }
        Some(t)
    }

    /// A bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::Base => "base",
            Kind::Catalog => "catalog",
            Kind::Manifest { .. } => "manifest",
            Kind::Blob { .. } => "blob",
            Kind::UploadStart => "upload_start",
            Kind::Upload { .. } => "upload",
            Kind::Tags => "tags",
            Kind::Referrers { .. } => "referrers",
            Kind::AcrCatalog => "acr_catalog",
            Kind::AcrTags { .. } => "acr_tags",
            Kind::AcrManifests { .. } => "acr_manifests",
            Kind::Token { .. } => "token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [&str; 2] = ["/oauth2/token", "/oauth2/exchange"];
    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(method: &str, target: &str) -> Operation {
        let (p, q) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        parse(method, p, q, &TOKEN).unwrap_or_else(|e| panic!("{target}: {e:?}"))
    }

    fn err(method: &str, target: &str) -> &'static str {
        let (p, q) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        match parse(method, p, q, &TOKEN) {
            Ok(op) => panic!("{target} parsed as {op:?}"),
            Err(e) => e.reason.label(),
        }
    }

    #[test]
    fn every_route_parses_and_serialises_back() {
        for (m, t) in [
            ("GET", "/v2/".to_owned()),
            ("GET", "/v2/_catalog?n=10&last=a%2Fb".to_owned()),
            ("HEAD", "/v2/team/app/manifests/latest".to_owned()),
            ("PUT", format!("/v2/team/app/manifests/{D}")),
            ("GET", format!("/v2/x/blobs/y/blobs/{D}")),
            ("POST", "/v2/team/app/blobs/uploads/".to_owned()),
            (
                "POST",
                format!("/v2/pub/app/blobs/uploads/?mount={D}&from=team%2Fapp"),
            ),
            (
                "PATCH",
                "/v2/team/app/blobs/uploads/4bd3c6e0-3a5e?_state=abc%3D%3D".to_owned(),
            ),
            (
                "PUT",
                format!("/v2/team/app/blobs/uploads/u1?_state=x&digest={D}"),
            ),
            ("GET", "/v2/team/app/tags/list?n=2&last=v1".to_owned()),
            (
                "GET",
                format!("/v2/team/app/referrers/{D}?artifactType=application%2Fvnd.x%2Bjson"),
            ),
            ("GET", "/acr/v1/_catalog".to_owned()),
            ("GET", "/acr/v1/team/app/_tags".to_owned()),
            ("DELETE", "/acr/v1/team/app/_tags/v1".to_owned()),
            ("GET", format!("/acr/v1/team/app/_manifests/{D}")),
            ("GET", "/v2/team/app/manifests/v1?ns=docker.io".to_owned()),
        ] {
            let op = ok(m, &t);
            let target = op.target().unwrap();
            // The rebuilt target parses to the same operation.
            assert_eq!(ok(m, &target), op, "{t} → {target}");
        }
        let op = ok(
            "POST",
            &format!("/v2/pub/app/blobs/uploads/?mount={D}&from=team%2Fapp"),
        );
        assert_eq!(
            op.repositories().collect::<Vec<_>>(),
            ["pub/app", "team/app"]
        );
        assert_eq!(
            op.target().unwrap(),
            format!(
                "/v2/pub/app/blobs/uploads/?mount=sha256%3A{}&from=team%2Fapp",
                &D[7..]
            )
        );
        assert_eq!(ok("GET", "/v2").target().unwrap(), "/v2/");
        assert_eq!(ok("POST", "/oauth2/token").kind, Kind::Token { index: 0 });
        assert_eq!(ok("GET", "/oauth2/exchange").kind, Kind::Token { index: 1 });
        assert!(ok("GET", "/v2/_catalog").lists_repositories());
        assert!(ok("POST", &format!("/v2/a/blobs/uploads/?mount={D}")).sourceless_mount());
    }

    #[test]
    fn encodings_and_odd_forms_are_refused() {
        for t in [
            "/v%32/demo/app/manifests/1.0",
            "/%762/demo/app/manifests/1.0",
            "/v%32/_catalog",
            "/%61cr/v1/_catalog",
            "/v2/demo%2fapp/manifests/1",
            "/v2/demo/app/manifests/1;x",
            "/v2/demo/../app/manifests/1",
            "/v2/./demo/app/manifests/1",
            "/v2//demo/app/manifests/1",
            "/v2/demo\\app/manifests/1",
            "/v2/demo/app/manifests/%c0%ae",
            "/oauth2/%74oken",
            "/oauth2/token;x",
            "v2/",
            "",
        ] {
            assert_eq!(err("GET", t), "non_canonical_path", "{t}");
        }
        for t in [
            "/ACR/v1/_catalog",
            "/Acr/v1/team/app/_tags",
            "/V2/demo/app/manifests/1",
            "/v2/demo/app/tags/list/",
            "/v2/demo/app/unknown/x",
            "/v2/_catalog/",
            "/oauth2/token/",
            "/OAuth2/Token",
            "/acr/v2/x/_tags",
            "/",
            "/favicon.ico",
            "/v2/demo/app/blobs/uploads",
        ] {
            let r = err("GET", t);
            assert!(r == "unknown_route" || r == "digest_invalid", "{t}: {r}");
        }
        assert_eq!(err("GET", "/v2/Demo/app/manifests/1"), "name_invalid");
        assert_eq!(err("GET", "/v2/demo/app/manifests/.1"), "reference_invalid");
        assert_eq!(err("GET", "/v2/demo/app/manifests/"), "reference_invalid");
        assert_eq!(
            err("GET", "/v2/demo/app/blobs/sha256:XYZ"),
            "digest_invalid"
        );
        assert_eq!(
            err("POST", "/v2/demo/app/manifests/1"),
            "method_not_allowed"
        );
        assert_eq!(err("DELETE", "/v2/_catalog"), "method_not_allowed");
    }

    #[test]
    fn queries_hold_only_defined_parameters() {
        let up = "/v2/pub/app/blobs/uploads/";
        for q in [
            "fr%6fm=demo%2Fapp",
            "From=demo/app",
            "FROM=demo/app",
            "from=demo/app&from=pub/x",
            "from=x%22,realm=%22https://evil.example/steal",
            "from=x%00",
            "from=x%0d%0a",
            "from=Demo/app",
            "mount=sha256:aa",
            "mount=sha256:aa;from=x",
            "x=1",
            "from=%zz",
        ] {
            assert_eq!(err("POST", &format!("{up}?{q}")), "query_invalid", "{q}");
        }
        assert_eq!(err("GET", "/v2/a/tags/list?n=1x"), "query_invalid");
        assert_eq!(err("GET", "/v2/a/manifests/v1?n=1"), "query_invalid");
        assert_eq!(err("GET", "/v2/a/tags/list?last=a/b"), "query_invalid");
    }
}
