//! What a response shows of the upstreams: the rewrite engine's rules, the token audience, the
//! URLs no rule mapped (`response_filter`, and the edge's own answers).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

use pingora::http::RequestHeader;
use registry_edge_rewrite::{HeaderStore, RequestContext, Var};

use super::{Ctx, Edge};
use crate::route::{host_port, normalise_host};

impl Edge {
    pub(super) fn learn_service(&self, response: &ResponseHeader) {
        let Some(service) = crate::identity::service_of(response) else {
            return;
        };
        // It goes upstream in token requests: a host name, an address, a port.
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_');
        if service.is_empty() || service.len() > 255 || !service.bytes().all(plain) {
            return;
        }
        let known = self.shared.service_name.load();
        if known.as_deref().map(String::as_str) != Some(service) {
            self.shared
                .service_name
                .store(Some(Arc::new(service.to_owned())));
        }
    }

    /// The registry's token audience: as its challenges name it, or its login server's authority
    /// before any challenge was seen (what ACR uses).
    pub(super) fn registry_service(&self, ctx: &Ctx) -> String {
        self.shared
            .service_name
            .load_full()
            .map(|s| s.as_ref().clone())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(ctx.generation.upstreams.login.host_header.as_bytes())
                    .into_owned()
            })
    }

    /// Absolute URLs that the rewrites left on an upstream's authority: counted, logged at most
    /// once a minute per header, and for a redirect refused (`registry.unmapped_redirects`).
    pub(super) fn unmapped_urls(&self, response: &ResponseHeader, ctx: &Ctx) -> Result<()> {
        let registry = &ctx.generation.config.registry;
        let status = response.status.as_u16();
        let mut publics = Vec::with_capacity(1 + registry.data_endpoints.len());
        publics.push(registry.public_host.clone());
        publics.extend(
            registry
                .data_endpoints
                .iter()
                .map(|d| d.public_host.clone()),
        );
        let found = crate::identity::unmapped(response, status, &publics);
        let mut refuse = false;
        for (i, host) in found {
            self.shared.metrics.unmapped_urls[i].inc();
            let now = crate::clock::now_ms();
            let last = &self.shared.unmapped_warned[i];
            let before = last.load(Ordering::Relaxed);
            // 0: never warned (the clock starts with the process).
            if (before == 0 || now.saturating_sub(before) >= 60_000)
                && last
                    .compare_exchange(before, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                log::warn!(
                    "the registry sent a {} URL on {host}, which no rewrite maps to a public host: \
                     clients would bypass the edge (is a data endpoint written as the registry \
                     writes it? see docs/operations.md); counted in \
                     registry_edge_rewrite_unmapped_urls_total, next warning in a minute at most",
                    crate::identity::URL_HEADERS[i]
                );
            }
            refuse |= i == 0
                && (300..400).contains(&status)
                && registry.unmapped_redirects == registry_edge_config::UnmappedRedirects::Refuse;
        }
        if refuse {
            return Err(Error::explain(
                Custom(crate::identity::UNMAPPED_REDIRECT),
                "the registry redirected to a location this edge does not publish",
            ));
        }
        Ok(())
    }

    /// The response header policy, for proxied responses and the edge's own alike: derived and
    /// user rules of the rewrite engine.
    pub(super) fn rewrite_response(
        &self,
        session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) {
        let vars = RewriteVars::new(session, ctx, self.scheme());
        let rctx = vars.context(ctx, self.scheme(), &session.req_header().headers);
        let status = response.status.as_u16();
        let applied = ctx
            .generation
            .engine
            .apply_response(status, &mut Headers(response), &rctx);
        ctx.rules.extend(applied.iter());
    }
}

/// A pingora head (request or response), rewritten through its own methods so that its case map
/// stays true.
pub(super) trait Head {
    fn map(&self) -> &http::HeaderMap;
    fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn remove(&mut self, name: &http::HeaderName);
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn map(&self) -> &http::HeaderMap {
                &self.headers
            }
            fn insert(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.append_header(name, value);
            }
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
head!(RequestHeader);
head!(ResponseHeader);

/// The rewrite engine's view of a pingora head.
pub(super) struct Headers<'a, H: Head>(pub &'a mut H);

impl<H: Head> HeaderStore for Headers<'_, H> {
    fn headers(&self) -> &http::HeaderMap {
        self.0.map()
    }
    fn replace_one(&mut self, name: &http::HeaderName, value: http::HeaderValue) {
        // One call through pingora's own method keeps its case map in step.
        self.0.insert(name.clone(), value);
    }
    fn replace_all(&mut self, name: &http::HeaderName, values: Vec<http::HeaderValue>) {
        self.0.remove(name);
        for v in values {
            self.0.append(name.clone(), v);
        }
    }
    fn remove_all(&mut self, name: &http::HeaderName) {
        self.0.remove(name);
    }
}

/// The strings a rewrite context borrows, built once per use, and only those some rule reads
/// (none, unless user rules use `{var_client_ip}`, `{var_request_uri}` or `{var_public_origin}`).
pub(super) struct RewriteVars {
    client_ip: String,
    uri: String,
    origin: String,
}

impl RewriteVars {
    pub(super) fn new(session: &Session, ctx: &Ctx, scheme: &str) -> RewriteVars {
        let uses = |v| ctx.generation.engine.uses_var(v);
        RewriteVars {
            client_ip: match ctx.client_ip {
                Some(ip) if uses(Var::ClientIp) => ip.to_string(),
                _ => String::new(),
            },
            uri: if uses(Var::RequestUri) {
                session.req_header().uri.to_string()
            } else {
                String::new()
            },
            origin: if uses(Var::PublicOrigin) {
                public_origin(scheme, &ctx.host)
            } else {
                String::new()
            },
        }
    }

    pub(super) fn context<'a>(
        &'a self,
        ctx: &'a Ctx,
        scheme: &'a str,
        request_headers: &'a http::HeaderMap,
    ) -> RequestContext<'a> {
        RequestContext {
            client_ip: &self.client_ip,
            host: &ctx.host,
            request_uri: &self.uri,
            scheme,
            public_port: host_port(&ctx.host),
            public_origin: &self.origin,
            request_headers,
        }
    }
}

/// `scheme://public host[:port the client used]`.
pub fn public_origin(scheme: &str, host: &str) -> String {
    let name = normalise_host(host);
    match host_port(host) {
        Some(p) => format!("{scheme}://{name}:{p}"),
        None => format!("{scheme}://{name}"),
    }
}
