//! The access policy, decided in `request_filter` after routing and the gate (which has parsed a
//! login-side request into a typed [`Operation`]: the policy never looks at a raw path or query),
//! in this order:
//!
//! 1. an address the security tracker has blocked (`access.auto_block`) → 403, unless it is in
//!    `allow_cidrs`;
//! 2. `allow_cidrs` pass the address checks; `deny_cidrs` → 403; an embargoed country → 451; an
//!    unknown country → per `unknown_country`;
//! 3. `read_only` → 405 for anything but GET/HEAD (and the token paths);
//! 4. `repositories.allow` → a repository that is not public (named by the path, a mount's
//!    `from=`, or a token scope) answers as an absent one does, a catalog listing is refused, a
//!    mount without `from=` is refused;
//! 5. `rate_limit` → 429 with `Retry-After`.
//!
//! In `detect` mode the decision is made, logged and counted, but the request goes through.

use std::borrow::Cow;
use std::net::IpAddr;

use registry_edge_config::{Access, AccessMode, CountryCode, UnknownCountry};
use registry_edge_geo::CidrSet;

use registry_edge_gate::token::{Scope, TokenRequest};
use registry_edge_gate::Operation;

use crate::outcome::PolicyReason;
use crate::ratelimit::RateLimiter;
use crate::repo::Allow;

/// Largest token request body (form POST) the read-only policy lets through.
pub const TOKEN_BODY_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// OCI error code.
    pub code: &'static str,
    pub reason: PolicyReason,
    pub message: Cow<'static, str>,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
    /// For a 401 given as the registry gives it for an absent repository: the challenge scope.
    pub challenge_scope: Option<String>,
}

impl Refusal {
    fn new(status: u16, code: &'static str, reason: PolicyReason, message: &'static str) -> Self {
        Refusal {
            status,
            code,
            reason,
            message: Cow::Borrowed(message),
            retry_after: None,
            allow: None,
            challenge_scope: None,
        }
    }
}

pub struct Request<'a> {
    pub client: IpAddr,
    pub country: Option<[u8; 2]>,
    pub method: &'a http::Method,
    /// What the gate parsed a login-side request into (`None` on data routes).
    pub operation: Option<&'a Operation>,
    pub token_path: bool,
    /// The request carries credentials (`Authorization`).
    pub authorized: bool,
    /// Declared body size, when there is one.
    pub content_length: Option<u64>,
    /// The security tracker has blocked the client address (`access.auto_block`).
    pub blocked: bool,
}

pub struct Policy {
    pub mode: AccessMode,
    embargo: Vec<[u8; 2]>,
    unknown: UnknownCountry,
    deny: CidrSet,
    allow: CidrSet,
    read_only: bool,
    repositories: Allow,
    rate: Option<(std::sync::Arc<RateLimiter>, CidrSet)>,
}

impl Policy {
    pub fn new(a: &Access) -> Policy {
        Policy::renewed(a, None)
    }

    /// The policy of a reloaded configuration: the rate limiter's buckets carry over from
    /// `previous` when its rate and burst are unchanged, so that a reload never refills them.
    pub fn renewed(a: &Access, previous: Option<&Policy>) -> Policy {
        let kept = previous
            .and_then(|p| p.rate.as_ref())
            .map(|(limiter, _)| limiter.clone());
        Policy {
            mode: a.mode,
            embargo: a.embargo_countries.iter().map(CountryCode::bytes).collect(),
            unknown: a.unknown_country,
            deny: CidrSet::new(&a.deny_cidrs),
            allow: CidrSet::new(&a.allow_cidrs),
            read_only: a.read_only,
            repositories: Allow::new(&a.repositories_allow),
            rate: a.rate_limit.as_ref().map(|r| {
                let limiter = kept
                    .filter(|l| l.same_settings(r.requests_per_second, r.burst))
                    .unwrap_or_else(|| {
                        std::sync::Arc::new(RateLimiter::new(r.requests_per_second, r.burst))
                    });
                limiter.set_ipv6_prefix(r.ipv6_prefix);
                (limiter, CidrSet::new(&r.exempt_cidrs))
            }),
        }
    }

    /// The address is in `allow_cidrs`.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.contains(ip)
    }

    /// Some repositories are hidden: paths and token scopes must be inspected.
    pub fn filters_repositories(&self) -> bool {
        !self.repositories.everything()
    }

    pub fn detect_only(&self) -> bool {
        self.mode == AccessMode::Detect
    }

    /// `None`: the request passes. Pure except for the rate limiter's buckets.
    pub fn decide(&self, r: &Request<'_>) -> Option<Refusal> {
        if r.blocked && !self.allow.contains(r.client) {
            return Some(Refusal::new(
                403,
                "DENIED",
                PolicyReason::AutoBlock,
                "this address is temporarily refused after repeated suspicious requests",
            ));
        }
        if let Some(refusal) = self.address_and_country(r.client, r.country) {
            return Some(refusal);
        }
        let read = *r.method == http::Method::GET || *r.method == http::Method::HEAD;
        if self.read_only && !read {
            let token_post = r.token_path && *r.method == http::Method::POST;
            if !token_post {
                let mut x = Refusal::new(
                    405,
                    "UNSUPPORTED",
                    PolicyReason::ReadOnly,
                    "this registry is read-only here: only pulls are served",
                );
                x.allow = Some("GET, HEAD");
                return Some(x);
            }
            if r.content_length.is_some_and(|n| n > TOKEN_BODY_LIMIT) {
                return Some(Refusal::new(
                    413,
                    "SIZE_INVALID",
                    PolicyReason::TokenBodyTooLarge,
                    "token request body too large",
                ));
            }
        }
        if let (false, Some(op), false) =
            (self.repositories.everything(), r.operation, r.token_path)
        {
            if op.lists_repositories() {
                return Some(Refusal::new(
                    403,
                    "DENIED",
                    PolicyReason::Catalog,
                    "listing repositories is not available on this registry",
                ));
            }
            if let Some(hidden) = op.repositories().find(|n| !self.repositories.allows(n)) {
                return Some(absent(hidden, r.authorized));
            }
            if op.sourceless_mount() {
                // The registry could look for the digest in any repository, hidden ones included.
                return Some(absent("", r.authorized));
            }
        }
        if let Some((limiter, exempt)) = &self.rate {
            if !exempt.contains(r.client) {
                if let Err(l) = limiter.check(r.client) {
                    let mut x = Refusal::new(
                        429,
                        "TOOMANYREQUESTS",
                        PolicyReason::RateLimit,
                        "too many requests from this address; retry later",
                    );
                    x.retry_after = Some(l.retry_after_secs);
                    return Some(x);
                }
            }
        }
        None
    }

    /// The address and location checks alone (`geo lookup` shows them too).
    pub fn address_and_country(&self, client: IpAddr, country: Option<[u8; 2]>) -> Option<Refusal> {
        if self.allow.contains(client) {
            return None;
        }
        if self.deny.contains(client) {
            return Some(Refusal::new(
                403,
                "DENIED",
                PolicyReason::DenyCidr,
                "access from this network is denied by the registry's access policy",
            ));
        }
        match country {
            Some(c) if self.embargo.contains(&c) => Some(Refusal::new(
                451,
                "DENIED",
                PolicyReason::Embargo,
                "access from this location is not permitted by the registry's export-control policy",
            )),
            None if self.unknown == UnknownCountry::Deny => Some(Refusal::new(
                451,
                "DENIED",
                PolicyReason::UnknownCountry,
                "the location of this address could not be determined; the registry's export-control policy refuses such requests",
            )),
            _ => None,
        }
    }

    /// Drops the scopes of a token request that are not for public repositories (the token
    /// server then grants nothing for them, as for an absent repository): `registry:catalog:*`,
    /// scopes of other types and scopes that do not parse are dropped too when some repositories
    /// are hidden. Returns how many were dropped.
    pub fn filter_token(&self, t: &mut TokenRequest) -> usize {
        if self.repositories.everything() {
            return 0;
        }
        t.retain_scopes(|scope: Option<Scope<'_>>| {
            scope
                .and_then(|s| s.repository())
                .is_some_and(|name| self.repositories.allows(name))
        })
    }
}

/// What the registry answers for a repository that does not exist: without credentials, the
/// challenge; with them, NAME_UNKNOWN.
fn absent(name: &str, authorized: bool) -> Refusal {
    if authorized {
        Refusal::new(
            404,
            "NAME_UNKNOWN",
            PolicyReason::NotPublic,
            "repository name not known to registry",
        )
    } else {
        let mut x = Refusal::new(
            401,
            "UNAUTHORIZED",
            PolicyReason::NotPublic,
            "authentication required",
        );
        x.challenge_scope = Some(if name.is_empty() {
            String::new()
        } else {
            format!("repository:{name}:pull")
        });
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(access: &str) -> Policy {
        let c = crate::testing::minimal(
            "",
            &format!("geoip: {{ database: /x.mmdb }}\naccess:\n{access}"),
        );
        Policy::new(&c.access)
    }

    fn req<'a>(
        client: &str,
        country: Option<&str>,
        method: &'a http::Method,
        path: &'a str,
    ) -> Request<'a> {
        req_q(client, country, method, path, None)
    }

    /// The request as the gate parses it (the operation is leaked: tests only).
    fn req_q<'a>(
        client: &str,
        country: Option<&str>,
        method: &'a http::Method,
        path: &'a str,
        query: Option<&str>,
    ) -> Request<'a> {
        let op = registry_edge_gate::parse(method.as_str(), path, query, &["/oauth2/token"])
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        let token_path = matches!(op.kind, registry_edge_gate::Kind::Token { .. });
        Request {
            client: client.parse().unwrap(),
            country: country.map(|c| [c.as_bytes()[0], c.as_bytes()[1]]),
            method,
            operation: Some(Box::leak(Box::new(op))),
            token_path,
            authorized: false,
            content_length: None,
            blocked: false,
        }
    }

    const GET: http::Method = http::Method::GET;

    #[test]
    fn order_of_checks() {
        let p = policy(
            "  embargo: { countries: [CU, IR], unknown_country: deny }\n  deny_cidrs: [198.51.100.0/24]\n  allow_cidrs: [198.51.100.7/32, 203.0.113.0/24]\n  read_only: true\n",
        );
        let status = |r: &Request<'_>| p.decide(r).map(|x| x.status);
        assert_eq!(status(&req("192.0.2.1", Some("US"), &GET, "/v2/")), None);
        assert_eq!(
            status(&req("192.0.2.1", Some("CU"), &GET, "/v2/")),
            Some(451)
        );
        assert_eq!(status(&req("192.0.2.1", None, &GET, "/v2/")), Some(451));
        assert_eq!(
            status(&req("198.51.100.1", Some("US"), &GET, "/v2/")),
            Some(403)
        );
        // allow_cidrs pass the address and country checks, not read-only.
        assert_eq!(status(&req("198.51.100.7", Some("CU"), &GET, "/v2/")), None);
        assert_eq!(status(&req("203.0.113.5", None, &GET, "/v2/")), None);
        let put = http::Method::PUT;
        let r = p
            .decide(&req("203.0.113.5", Some("US"), &put, "/v2/a/manifests/1"))
            .unwrap();
        assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")));
        // The embargo comes before read-only: an embargoed PUT is a 451.
        assert_eq!(
            status(&req("192.0.2.1", Some("IR"), &put, "/v2/a/manifests/1")),
            Some(451)
        );
        let post = http::Method::POST;
        assert_eq!(
            status(&req("192.0.2.1", Some("US"), &post, "/oauth2/token")),
            None
        );
        let mut big = req("192.0.2.1", Some("US"), &post, "/oauth2/token");
        big.content_length = Some(TOKEN_BODY_LIMIT + 1);
        assert_eq!(status(&big), Some(413));
        assert_eq!(
            status(&req("192.0.2.1", Some("US"), &post, "/v2/a/blobs/uploads/")),
            Some(405)
        );
    }

    /// A blocked address is refused before everything else, unless `allow_cidrs` holds it.
    #[test]
    fn a_blocked_address_is_refused_first() {
        let p = policy("  allow_cidrs: [203.0.113.0/24]\n  deny_cidrs: [192.0.2.0/24]\n");
        let mut r = req("192.0.2.1", Some("US"), &GET, "/v2/");
        assert_eq!(p.decide(&r).map(|x| x.reason), Some(PolicyReason::DenyCidr));
        r.blocked = true;
        let x = p.decide(&r).unwrap();
        assert_eq!(
            (x.status, x.code, x.reason),
            (403, "DENIED", PolicyReason::AutoBlock)
        );
        let mut allowed = req("203.0.113.9", None, &GET, "/v2/");
        allowed.blocked = true;
        assert_eq!(p.decide(&allowed), None);
    }

    #[test]
    fn embargo_message_names_the_policy_not_the_countries() {
        let p = policy("  embargo: { countries: [CU, IR, KP, SY] }\n");
        let r = p
            .decide(&req("192.0.2.1", Some("KP"), &GET, "/v2/"))
            .unwrap();
        assert_eq!((r.status, r.code), (451, "DENIED"));
        assert!(r.message.contains("export-control policy"));
        for c in ["CU", "IR", "KP", "SY"] {
            assert!(!r.message.contains(c));
        }
    }

    #[test]
    fn hidden_repositories_answer_as_absent_ones() {
        let p = policy("  repositories: { allow: [\"public/*\"] }\n");
        assert_eq!(
            p.decide(&req("192.0.2.1", None, &GET, "/v2/public/app/manifests/1")),
            None
        );
        let r = p
            .decide(&req("192.0.2.1", None, &GET, "/v2/secret/app/manifests/1"))
            .unwrap();
        assert_eq!((r.status, r.code), (401, "UNAUTHORIZED"));
        assert_eq!(
            r.challenge_scope.as_deref(),
            Some("repository:secret/app:pull")
        );
        let mut with_token = req("192.0.2.1", None, &GET, "/v2/secret/app/manifests/1");
        with_token.authorized = true;
        assert_eq!(p.decide(&with_token).unwrap().status, 404);
        // Encoded and odd paths never reach the policy: the gate refuses them.
        for path in [
            "/v2/public%2fapp/manifests/1",
            "/v2/Public/app/manifests/1",
            "/v2/public/app/nothing",
        ] {
            assert!(
                registry_edge_gate::parse("GET", path, None, &["/oauth2/token"]).is_err(),
                "{path}"
            );
        }
        // A mount from a hidden repository into a public one, and one that names no source.
        let post = http::Method::POST;
        let digest = format!("sha256:{}", "a".repeat(64));
        for query in [
            format!("mount={digest}&from=secret%2Fapp"),
            format!("mount={digest}"),
        ] {
            let mut mount = req_q(
                "192.0.2.1",
                None,
                &post,
                "/v2/public/app/blobs/uploads/",
                Some(&query),
            );
            mount.authorized = true;
            assert_eq!(p.decide(&mount).unwrap().status, 404, "{query}");
        }
        let pub_mount = format!("mount={digest}&from=public%2Fother");
        let ok = req_q(
            "192.0.2.1",
            None,
            &post,
            "/v2/public/app/blobs/uploads/",
            Some(&pub_mount),
        );
        assert_eq!(p.decide(&ok), None);
        // Referrers of a hidden repository.
        let referrers = format!("/v2/secret/app/referrers/{digest}");
        assert_eq!(
            p.decide(&req("192.0.2.1", None, &GET, &referrers))
                .unwrap()
                .status,
            401
        );
        assert_eq!(
            p.decide(&req("192.0.2.1", None, &GET, "/v2/_catalog"))
                .unwrap()
                .status,
            403
        );
        assert_eq!(
            p.decide(&req("192.0.2.1", None, &GET, "/acr/v1/_catalog"))
                .unwrap()
                .status,
            403
        );
        assert_eq!(
            p.decide(&req("192.0.2.1", None, &GET, "/acr/v1/secret/app/_tags"))
                .unwrap()
                .status,
            401
        );
        assert_eq!(p.decide(&req("192.0.2.1", None, &GET, "/v2/")), None);
    }

    #[test]
    fn token_scopes_of_hidden_repositories_are_dropped() {
        let p = policy("  repositories: { allow: [\"public/*\"] }\n");
        let filtered = |q: &str| {
            let mut t = TokenRequest::parse(q).unwrap();
            let dropped = p.filter_token(&mut t);
            (t.serialize(), dropped)
        };
        assert_eq!(
            filtered(
                "service=r&scope=repository%3Apublic%2Fapp%3Apull&scope=repository:secret/app:pull"
            ),
            (
                "service=r&scope=repository%3Apublic%2Fapp%3Apull".to_owned(),
                1
            )
        );
        // Encoded names are decoded first: `sc%6fpe` is `scope` to the token server too.
        assert_eq!(
            filtered("service=r&sc%6fpe=repository:secret/app:pull"),
            ("service=r".to_owned(), 1)
        );
        assert_eq!(filtered("scope=registry:catalog:*"), (String::new(), 1));
        assert_eq!(
            filtered("scope=Repository:secret/app:pull"),
            (String::new(), 1)
        );
        assert_eq!(
            filtered("scope=repository:public/app:pull+repository:secret/app:push"),
            ("scope=repository%3Apublic%2Fapp%3Apull".to_owned(), 1)
        );
        let mut t = TokenRequest::parse("scope=repository:x:pull").unwrap();
        assert_eq!(policy("").filter_token(&mut t), 0);
        assert_eq!(t.serialize(), "scope=repository%3Ax%3Apull");
    }

    #[test]
    fn rate_limit_per_client_with_exemptions() {
        let p = policy("  rate_limit: { requests_per_second: 0.001, burst: 3, exempt_cidrs: [192.0.2.200/32] }\n");
        for _ in 0..3 {
            assert_eq!(p.decide(&req("192.0.2.1", None, &GET, "/v2/")), None);
        }
        let r = p.decide(&req("192.0.2.1", None, &GET, "/v2/")).unwrap();
        assert_eq!((r.status, r.code), (429, "TOOMANYREQUESTS"));
        assert!(r.retry_after.unwrap() >= 1);
        assert_eq!(p.decide(&req("192.0.2.2", None, &GET, "/v2/")), None);
        for _ in 0..10 {
            assert_eq!(p.decide(&req("192.0.2.200", None, &GET, "/v2/")), None);
        }
    }
}
