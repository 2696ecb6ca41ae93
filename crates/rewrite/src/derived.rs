//! The rules every registry needs, derived from the `registry` block rather than written by
//! hand: URLs that name an upstream authority become URLs on the public host.

mod scan;
mod url;

use http::header::{LINK, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue};
use regex::bytes::{Regex, RegexBuilder};

use crate::context::RequestContext;
use crate::error::{CompileError, ErrorAt};
use crate::spec::{DerivedSpec, PublicTarget};
use crate::store::HeaderStore;

/// The derived rules, in the order they run; their names are part of the access log.
pub(crate) const RULES: [DerivedRule; 3] = [
    DerivedRule::Location,
    DerivedRule::Link,
    DerivedRule::WwwAuthenticate,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DerivedRule {
    /// `Location` on 3xx (blob redirects to the data endpoint), 201, 202 and 204 (uploads: the
    /// upload status a registry reports with 204 carries the upload Location too).
    Location,
    /// Every `<URL>` of `Link` (catalog and tag pagination), whatever the status.
    Link,
    /// The `realm` of every challenge in `WWW-Authenticate` on 401.
    WwwAuthenticate,
}

impl DerivedRule {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DerivedRule::Location => "registry:location",
            DerivedRule::Link => "registry:link",
            DerivedRule::WwwAuthenticate => "registry:www-authenticate",
        }
    }

    fn header(self) -> &'static HeaderName {
        match self {
            DerivedRule::Location => &LOCATION,
            DerivedRule::Link => &LINK,
            DerivedRule::WwwAuthenticate => &WWW_AUTHENTICATE,
        }
    }

    fn applies_to(self, status: u16) -> bool {
        match self {
            DerivedRule::Location => matches!(status, 300..=399 | 201 | 202 | 204),
            DerivedRule::Link => true,
            DerivedRule::WwwAuthenticate => status == 401,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Derived {
    mappings: Box<[Mapping]>,
    /// Matches any upstream host name, case-insensitively. A `Link` value lists many URLs,
    /// mostly relative ones: one multi-literal scan decides whether any of them can need work
    /// before they are looked at one by one. `None` when there are no upstreams.
    prefilter: Option<Regex>,
}

#[derive(Debug)]
struct Mapping {
    /// Lower case, no brackets, no trailing dot.
    host: Box<str>,
    port: u16,
    public_host: Box<str>,
    region_prefix: Option<Box<str>>,
}

impl Derived {
    pub(crate) fn compile(spec: &DerivedSpec, errors: &mut Vec<CompileError>) -> Option<Derived> {
        let before = errors.len();
        let mut error = |message: String| {
            errors.push(CompileError::new(
                CompileError::DERIVED,
                ErrorAt::Rule,
                message,
            ));
        };
        if !is_public_host(&spec.login_public_host) {
            error(format!(
                "login public host {:?} is not a host name",
                spec.login_public_host
            ));
        }
        let mut mappings: Vec<Mapping> = Vec::with_capacity(spec.mappings.len());
        for mapping in &spec.mappings {
            let upstream = &mapping.upstream;
            let host = upstream.host.trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%:".contains(&b))
            {
                error(format!(
                    "upstream host {:?} is not a host name or IP literal",
                    upstream.host
                ));
            }
            if upstream.port == 0 {
                error(format!("upstream {:?} has port 0", upstream.host));
            }
            let (public_host, region_prefix) = match &mapping.target {
                PublicTarget::Login => (spec.login_public_host.as_str(), None),
                PublicTarget::Data {
                    public_host,
                    region_prefix,
                } => {
                    if !is_public_host(public_host) {
                        error(format!(
                            "data public host {public_host:?} is not a host name"
                        ));
                    }
                    if let Some(region) = region_prefix {
                        let unreserved = region
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                        if !unreserved || region.is_empty() || region == "." || region == ".." {
                            error(format!(
                                "region {region:?} cannot be a URL path segment (use letters, \
                                 digits, '-', '.', '_', '~')"
                            ));
                        }
                    }
                    (public_host.as_str(), region_prefix.as_deref())
                }
            };
            let compiled = Mapping {
                host: host.into(),
                port: upstream.port,
                public_host: public_host.to_ascii_lowercase().into(),
                region_prefix: region_prefix.map(Into::into),
            };
            match mappings
                .iter()
                .find(|m| m.host == compiled.host && m.port == compiled.port)
            {
                Some(same)
                    if same.public_host != compiled.public_host
                        || same.region_prefix != compiled.region_prefix =>
                {
                    error(format!(
                        "upstream {}:{} is mapped to two different public targets",
                        compiled.host, compiled.port
                    ));
                }
                Some(_) => {}
                None => mappings.push(compiled),
            }
        }
        let prefilter = if mappings.is_empty() {
            None
        } else {
            let alternation = mappings
                .iter()
                .map(|m| regex::escape(&m.host))
                .collect::<Vec<_>>()
                .join("|");
            // ASCII case folding only: host names are ASCII (IDNs travel as punycode).
            match RegexBuilder::new(&format!("(?i-u:{alternation})")).build() {
                Ok(regex) => Some(regex),
                Err(e) => {
                    error(format!("upstream host names do not form a search: {e}"));
                    None
                }
            }
        };
        if errors.len() != before {
            return None;
        }
        Some(Derived {
            mappings: mappings.into_boxed_slice(),
            prefilter,
        })
    }

    /// Runs one derived rule; `true` when it changed a value.
    pub(crate) fn apply<H: HeaderStore + ?Sized>(
        &self,
        rule: DerivedRule,
        status: u16,
        store: &mut H,
        ctx: &RequestContext<'_>,
    ) -> bool {
        if self.mappings.is_empty() || !rule.applies_to(status) {
            return false;
        }
        let name = rule.header();
        let values = store.headers().get_all(name);
        let mut iter = values.iter();
        let Some(first) = iter.next() else {
            return false;
        };
        if iter.next().is_none() {
            // The usual shape: one value, replaced without building a list.
            return match self.rewrite_value(rule, first.as_bytes(), ctx) {
                Some(new) => {
                    store.replace_one(name, new);
                    true
                }
                None => false,
            };
        }
        let mut rewritten: Option<Vec<HeaderValue>> = None;
        for (i, value) in values.iter().enumerate() {
            match (
                self.rewrite_value(rule, value.as_bytes(), ctx),
                &mut rewritten,
            ) {
                (Some(new), Some(out)) => out.push(new),
                (Some(new), None) => {
                    let mut out: Vec<HeaderValue> = values.iter().take(i).cloned().collect();
                    out.push(new);
                    rewritten = Some(out);
                }
                (None, Some(out)) => out.push(value.clone()),
                (None, None) => {}
            }
        }
        match rewritten {
            Some(values) => {
                store.replace_all(name, values);
                true
            }
            None => false,
        }
    }

    /// The value with its upstream URLs rewritten, or `None` when none is there.
    fn rewrite_value(
        &self,
        rule: DerivedRule,
        value: &[u8],
        ctx: &RequestContext<'_>,
    ) -> Option<HeaderValue> {
        let mut splice = Splice::new(value);
        match rule {
            // Location and the realm are one URL at a known place: reading its authority is
            // cheaper than any search. Link values list many URLs, mostly relative ones, so a
            // single multi-literal scan for the upstream host names decides first.
            DerivedRule::Location => {
                let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
                let end = value.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
                splice.url(self, start..end, ctx);
            }
            DerivedRule::Link => {
                if self.prefilter.as_ref().is_some_and(|p| p.is_match(value)) {
                    scan::link_targets(value, |range| splice.url(self, range, ctx));
                }
            }
            DerivedRule::WwwAuthenticate => {
                scan::realm_values(value, |range| splice.url(self, range, ctx));
            }
        }
        splice.finish()
    }

    fn lookup(&self, url: &[u8]) -> Option<(&Mapping, usize)> {
        let authority = url::authority(url)?;
        let mapping = self.mappings.iter().find(|m| {
            m.host.as_bytes().eq_ignore_ascii_case(authority.host)
                && match authority.port {
                    Some(port) => port == m.port,
                    None => authority.default_ports.contains(&m.port),
                }
        })?;
        Some((mapping, authority.end))
    }
}

/// Builds a rewritten value only once a URL in it actually changes, so values that merely
/// mention an upstream (a `service=` parameter) cost no allocation.
struct Splice<'v> {
    value: &'v [u8],
    out: Option<Vec<u8>>,
    copied: usize,
}

impl<'v> Splice<'v> {
    fn new(value: &'v [u8]) -> Splice<'v> {
        Splice {
            value,
            out: None,
            copied: 0,
        }
    }

    fn url(&mut self, derived: &Derived, range: std::ops::Range<usize>, ctx: &RequestContext<'_>) {
        let Some(url) = self.value.get(range.clone()) else {
            return;
        };
        let Some((mapping, authority_end)) = derived.lookup(url) else {
            return;
        };
        let rest = &url[authority_end..];
        let region = mapping.region_prefix.as_deref();
        let slash = !rest.starts_with(b"/");
        let origin_len = ctx.scheme.len()
            + 3
            + mapping.public_host.len()
            + ctx.public_port.map_or(0, |port| 1 + decimal_len(port))
            + region.map_or(0, |r| 4 + r.len() + usize::from(slash));
        let value = self.value;
        // Sized for the usual single URL, so the value is handed to `HeaderValue` without
        // reallocating.
        let out = self
            .out
            .get_or_insert_with(|| Vec::with_capacity(value.len() - authority_end + origin_len));
        out.extend_from_slice(&value[self.copied..range.start]);
        out.extend_from_slice(ctx.scheme.as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(mapping.public_host.as_bytes());
        if let Some(port) = ctx.public_port {
            out.push(b':');
            push_decimal(out, port);
        }
        if let Some(region) = region {
            out.extend_from_slice(b"/_r/");
            out.extend_from_slice(region.as_bytes());
            if slash {
                out.push(b'/');
            }
        }
        // Path, query (SAS signatures) and fragment stay byte for byte.
        out.extend_from_slice(rest);
        self.copied = range.end;
    }

    fn finish(self) -> Option<HeaderValue> {
        let mut out = self.out?;
        out.extend_from_slice(&self.value[self.copied..]);
        // Only bytes of the original value, the validated host names and the scheme went in;
        // were the scheme ever not header-safe, the value is left as it was.
        HeaderValue::try_from(out).ok()
    }
}

fn decimal_len(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut n = n;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[..len].iter().rev());
}

fn is_public_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
