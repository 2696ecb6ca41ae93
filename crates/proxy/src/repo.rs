//! Which repositories a request names, for the `repositories.allow` list: the `<name>` of
//! `/v2/<name>/{manifests,blobs,tags,referrers}/...`, the `from=` of a blob mount, the
//! `<name>` of `/acr/v1/<name>/{_tags,_manifests}...`, and the `scope=` of token requests.
//! A path under `/v2/` or `/acr/v1/` that does not parse as one of these is reported as such, so
//! that a restrictive allow-list can refuse it rather than guess.

use std::sync::OnceLock;

use regex::Regex;

/// A repository name component as the distribution spec defines it.
const COMPONENT: &str = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";

fn v2_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let name = format!("{COMPONENT}(?:/{COMPONENT})*");
        constant(&format!(
            r"^/v2/(?P<name>{name})/(?:manifests/[^/]+|blobs/uploads/?[^/]*|blobs/[^/]+|tags/list|referrers/[^/]+)$"
        ))
    })
}

fn acr_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let name = format!("{COMPONENT}(?:/{COMPONENT})*");
        constant(&format!(
            r"^/acr/v1/(?P<name>{name})/(?:_tags|_manifests)(?:/[^/]+)?$"
        ))
    })
}

fn name_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| constant(&format!("^{COMPONENT}(?:/{COMPONENT})*$")))
}

/// The patterns here are constants, compiled once and covered by the unit tests.
#[expect(
    clippy::expect_used,
    reason = "constant patterns, exercised by the unit tests"
)]
fn constant(pattern: &str) -> Regex {
    Regex::new(pattern).expect("constant repository pattern")
}

/// What a request path is, as far as repository policy goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/v2/` itself, token paths, anything outside the registry APIs.
    NoRepository,
    /// `/v2/_catalog` or `/acr/v1/_catalog`.
    Catalog,
    /// Names the repositories: the path's, then a mount's `from=` (percent-decoded).
    Repositories(Vec<std::borrow::Cow<'a, str>>),
    /// Under `/v2/` or `/acr/v1/` but not a form this edge knows: no name can be vouched for.
    Unparsed,
}

pub fn target<'a>(path: &'a str, query: Option<&'a str>) -> Target<'a> {
    if path == "/v2/" || path == "/v2" {
        return Target::NoRepository;
    }
    if path == "/v2/_catalog" || path == "/acr/v1/_catalog" {
        return Target::Catalog;
    }
    if let Some(c) = v2_re().captures(path) {
        let Some(name) = c.name("name") else {
            return Target::Unparsed;
        };
        let mut names = vec![std::borrow::Cow::Borrowed(name.as_str())];
        if path.contains("/blobs/uploads") {
            for (k, v) in query_pairs(query.unwrap_or("")) {
                if k == "from" {
                    names.push(v);
                }
            }
        }
        return Target::Repositories(names);
    }
    if let Some(c) = acr_re().captures(path) {
        return match c.name("name") {
            Some(n) => Target::Repositories(vec![std::borrow::Cow::Borrowed(n.as_str())]),
            None => Target::Unparsed,
        };
    }
    if path.starts_with("/v2/") || path.starts_with("/acr/") {
        return Target::Unparsed;
    }
    Target::NoRepository
}

/// A repository name as the distribution spec writes them (after decoding).
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= 255 && name_re().is_match(name)
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space).
pub fn query_pairs(
    q: &str,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The repository names of `scope=repository:<name>:<actions>` values (also
/// `repository(plugin):...`); other scope types yield nothing.
pub fn scope_repository(scope: &str) -> Option<&str> {
    let rest = scope.strip_prefix("repository:").or_else(|| {
        scope
            .strip_prefix("repository(")
            .and_then(|r| r.split_once("):").map(|(_, n)| n))
    })?;
    let (name, _actions) = rest.rsplit_once(':')?;
    Some(name)
}

/// Glob patterns of public repositories, compiled once: `*` matches any run of characters,
/// `/` included.
#[derive(Debug)]
pub struct Allow {
    everything: bool,
    re: Option<Regex>,
}

impl Allow {
    pub fn new(globs: &[String]) -> Allow {
        if globs.iter().any(|g| g == "*") {
            return Allow {
                everything: true,
                re: None,
            };
        }
        let alternatives: Vec<String> = globs
            .iter()
            .map(|g| {
                g.split('*')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join(".*")
            })
            .collect();
        let re = if alternatives.is_empty() {
            None
        } else {
            Regex::new(&format!("^(?:{})$", alternatives.join("|"))).ok()
        };
        Allow {
            everything: false,
            re,
        }
    }

    pub fn everything(&self) -> bool {
        self.everything
    }

    /// A valid name matched by a pattern. Names that are not valid repository names (encoded,
    /// upper case, dot segments) are never public.
    pub fn allows(&self, name: &str) -> bool {
        if self.everything {
            return true;
        }
        is_valid_name(name) && self.re.as_ref().is_some_and(|r| r.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn names(t: Target<'_>) -> Vec<String> {
        match t {
            Target::Repositories(v) => v.into_iter().map(Cow::into_owned).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_name_their_repositories() {
        assert_eq!(
            names(target("/v2/team/app/manifests/latest", None)),
            ["team/app"]
        );
        assert_eq!(names(target("/v2/a/blobs/sha256:abc", None)), ["a"]);
        assert_eq!(
            names(target("/v2/x/blobs/y/blobs/sha256:abc", None)),
            ["x/blobs/y"]
        );
        assert_eq!(
            names(target("/v2/team/app/blobs/uploads/", None)),
            ["team/app"]
        );
        assert_eq!(
            names(target("/v2/team/app/blobs/uploads/u-1", None)),
            ["team/app"]
        );
        assert_eq!(names(target("/v2/team/app/tags/list", None)), ["team/app"]);
        assert_eq!(
            names(target("/v2/team/app/referrers/sha256:abc", None)),
            ["team/app"]
        );
        assert_eq!(names(target("/acr/v1/team/app/_tags", None)), ["team/app"]);
        assert_eq!(
            names(target("/acr/v1/team/app/_manifests/sha256:a", None)),
            ["team/app"]
        );
        assert_eq!(
            names(target(
                "/v2/pub/app/blobs/uploads/",
                Some("mount=sha256:abc&from=secret%2Fapp")
            )),
            ["pub/app", "secret/app"]
        );
        assert_eq!(target("/v2/", None), Target::NoRepository);
        assert_eq!(target("/oauth2/token", None), Target::NoRepository);
        assert_eq!(target("/v2/_catalog", None), Target::Catalog);
        assert_eq!(target("/acr/v1/_catalog", None), Target::Catalog);
        assert_eq!(target("/v2/Secret/manifests/x", None), Target::Unparsed);
        assert_eq!(target("/v2/secr%65t/manifests/x", None), Target::Unparsed);
        assert_eq!(target("/v2/x/unknown/y", None), Target::Unparsed);
        assert_eq!(target("/acr/v2/x", None), Target::Unparsed);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            scope_repository("repository:team/app:pull,push"),
            Some("team/app")
        );
        assert_eq!(
            scope_repository("repository(plugin):team/app:pull"),
            Some("team/app")
        );
        assert_eq!(scope_repository("registry:catalog:*"), None);
        let pairs: Vec<_> =
            query_pairs("scope=repository%3Ateam%2Fapp%3Apull&service=x+y").collect();
        assert_eq!(pairs[0].1, "repository:team/app:pull");
        assert_eq!(pairs[1].1, "x y");
    }

    #[test]
    fn allow_globs() {
        let a = Allow::new(&["public/*".into(), "tools".into()]);
        assert!(a.allows("public/app"));
        assert!(a.allows("public/deep/app"));
        assert!(a.allows("tools"));
        assert!(!a.allows("tools/x"));
        assert!(!a.allows("secret/app"));
        assert!(!a.allows("public/../secret"));
        assert!(!a.allows("public/%2e%2e/secret"));
        assert!(!a.allows("Public/app"));
        assert!(Allow::new(&["*".into()]).allows("anything/at/all"));
        assert!(!Allow::new(&[]).allows("x"));
    }
}
