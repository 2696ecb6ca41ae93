//! The header-rewrite engine of registry-edge: rules in Application Gateway's terms (regex
//! conditions on headers and server variables, set/delete actions with
//! `{http_resp_<Header>_<N>}` templates) plus the rules every registry needs, derived from the
//! upstream authorities, that turn upstream URLs in `Location`, `Link` and the
//! `WWW-Authenticate` realm into public ones. Rules are compiled once into an [`Engine`] and
//! applied to header maps in place; a response with nothing to rewrite costs a few comparisons
//! and no allocation. No I/O happens here.
//!
//! ```
//! use registry_edge_rewrite::*;
//!
//! let derived = DerivedSpec {
//!     login_public_host: "acr-secure.contoso.com".into(),
//!     mappings: vec![DerivedMapping {
//!         upstream: UpstreamAuthority { host: "contoso.azurecr.io".into(), port: 443 },
//!         target: PublicTarget::Login,
//!     }],
//! };
//! let engine = Engine::compile(&[], Some(&derived)).map_err(|e| format!("{e:?}"))?;
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert(
//!     http::header::WWW_AUTHENTICATE,
//!     r#"Bearer realm="https://contoso.azurecr.io/oauth2/token",service="contoso.azurecr.io""#.parse()?,
//! );
//! let request_headers = http::HeaderMap::new();
//! let ctx = RequestContext {
//!     client_ip: "203.0.113.7",
//!     host: "acr-secure.contoso.com",
//!     request_uri: "/v2/",
//!     scheme: "https",
//!     public_port: None,
//!     public_origin: "https://acr-secure.contoso.com",
//!     request_headers: &request_headers,
//! };
//! let applied = engine.apply_response(401, &mut headers, &ctx);
//!
//! assert_eq!(
//!     headers[http::header::WWW_AUTHENTICATE],
//!     r#"Bearer realm="https://acr-secure.contoso.com/oauth2/token",service="contoso.azurecr.io""#
//! );
//! let fired: Vec<&str> = applied.iter().map(|i| engine.rule_name(i)).collect();
//! assert_eq!(fired, ["registry:www-authenticate"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod applied;
mod context;
mod derived;
mod error;
pub mod spec;
mod store;
mod template;
mod user;

pub use applied::Applied;
pub use context::RequestContext;
pub use error::{CompileError, ErrorAt};
pub use spec::*;
pub use store::HeaderStore;

use derived::Derived;
use user::{Phase, UserRule};

/// Compiled rules. Immutable and `Send + Sync`: build once per configuration and share it
/// behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    /// Every rule's name, by rule index: user rules first, then the derived ones.
    names: Box<[Box<str>]>,
    /// `(rule index, rule)` in declared order.
    request_rules: Box<[(usize, UserRule)]>,
    response_rules: Box<[(usize, UserRule)]>,
    derived: Option<Derived>,
    /// The variables some user rule reads.
    vars_read: Box<[Var]>,
}

impl Engine {
    /// Compiles the user rules (which run in the order given) and the derived registry rules
    /// (which run after them). Reports every error found, not only the first.
    pub fn compile(
        rules: &[RuleSpec],
        derived: Option<&DerivedSpec>,
    ) -> Result<Engine, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut request_rules = Vec::new();
        let mut response_rules = Vec::new();
        for (index, spec) in rules.iter().enumerate() {
            if let Some(rule) = user::compile(index, spec, &mut errors) {
                match rule.phase {
                    Phase::Request => request_rules.push((index, rule)),
                    Phase::Response => response_rules.push((index, rule)),
                }
            }
        }
        let derived = derived.and_then(|spec| Derived::compile(spec, &mut errors));
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut names: Vec<Box<str>> = rules.iter().map(|rule| rule.name.as_str().into()).collect();
        if derived.is_some() {
            names.extend(derived::RULES.iter().map(|rule| rule.name().into()));
        }
        let vars_read = [
            Var::ClientIp,
            Var::Host,
            Var::RequestUri,
            Var::Scheme,
            Var::PublicOrigin,
        ]
        .into_iter()
        .filter(|v| {
            request_rules
                .iter()
                .chain(response_rules.iter())
                .any(|(_, rule)| rule.reads_var(*v))
        })
        .collect();
        Ok(Engine {
            vars_read,
            names: names.into_boxed_slice(),
            request_rules: request_rules.into_boxed_slice(),
            response_rules: response_rules.into_boxed_slice(),
            derived,
        })
    }

    /// Runs the request rules on the request headers about to go upstream.
    pub fn apply_request<H: HeaderStore + ?Sized>(
        &self,
        headers: &mut H,
        ctx: &RequestContext<'_>,
    ) -> Applied {
        let mut applied = Applied::default();
        for (index, rule) in self.request_rules.iter() {
            if rule.apply(None, headers, ctx) {
                applied.push(*index);
            }
        }
        applied
    }

    /// Runs the response rules, then the derived rules, on the response headers about to go to
    /// the client. The rules may read the request through `ctx`.
    pub fn apply_response<H: HeaderStore + ?Sized>(
        &self,
        status: u16,
        headers: &mut H,
        ctx: &RequestContext<'_>,
    ) -> Applied {
        let mut applied = Applied::default();
        for (index, rule) in self.response_rules.iter() {
            if rule.apply(Some(status), headers, ctx) {
                applied.push(*index);
            }
        }
        if let Some(derived) = &self.derived {
            let first = self.names.len() - derived::RULES.len();
            for (offset, rule) in derived::RULES.into_iter().enumerate() {
                if derived.apply(rule, status, headers, ctx) {
                    applied.push(first + offset);
                }
            }
        }
        applied
    }

    /// The name of a rule, by the index [`Applied::iter`] yields; `""` for an index out of
    /// range.
    pub fn rule_name(&self, index: usize) -> &str {
        self.names.get(index).map_or("", |name| name)
    }

    /// User rules plus derived rules.
    pub fn rule_count(&self) -> usize {
        self.names.len()
    }

    /// Whether some rule reads `var` from the [`RequestContext`]. A caller may leave the
    /// context's string for a variable no rule reads empty, and save building it per request
    /// (the derived rules read only `scheme`, `host`, `public_port` and the headers).
    pub fn uses_var(&self, var: Var) -> bool {
        self.vars_read.contains(&var)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }
}
