//! A token request's parameters: parsed, filtered, mapped and rebuilt (`request_filter`).

use pingora::prelude::*;
use pingora_proxy::Session;

use registry_edge_gate::TokenRequest;

use super::{Ctx, Edge};
use crate::outcome::{EdgeReason, PolicyReason};
use crate::respond::EdgeResponse;

impl Edge {
    /// A token request's parameters: its query (GET) or its form body (POST, read here within
    /// [`crate::policy::TOKEN_BODY_LIMIT`] however it is framed, under the listener's idle
    /// deadline), decoded, held to the known names, the hidden repositories' scopes dropped,
    /// kept in `ctx` to be sent upstream re-encoded. `Some`: the edge's answer instead.
    pub(super) async fn token_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<EdgeResponse>> {
        let invalid = |m: &'static str| {
            Some(EdgeResponse::error(
                400,
                "UNSUPPORTED",
                EdgeReason::TokenRequestInvalid,
                m,
            ))
        };
        let req = session.req_header();
        let query = req.uri.query().unwrap_or("");
        let post = req.method == http::Method::POST;
        if post && !query.is_empty() {
            return Ok(invalid(
                "a token POST carries its parameters in the body, not the query",
            ));
        }
        // A GET's parameters are its query; a body would be a second, unread set (some token
        // servers read form bodies on any method).
        let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if !post && has_body {
            let mut r = EdgeResponse::error(
                400,
                "UNSUPPORTED",
                EdgeReason::TokenRequestInvalid,
                "a token GET has no body",
            );
            r.close = true;
            return Ok(Some(r));
        }
        let raw = if post {
            let form = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim())
                .is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"));
            let body = match self.read_token_body(session).await? {
                Ok(b) => b,
                Err(r) => return Ok(Some(r)),
            };
            if !form && !body.is_empty() {
                let r = EdgeResponse::error(
                    415,
                    "UNSUPPORTED",
                    EdgeReason::TokenBodyType,
                    "a token request body must be application/x-www-form-urlencoded",
                );
                return Ok(Some(r));
            }
            match String::from_utf8(body) {
                Ok(s) => s,
                Err(_) => return Ok(invalid("the token request body is not UTF-8")),
            }
        } else {
            query.to_owned()
        };
        let mut token = match TokenRequest::parse(&raw) {
            Ok(t) => t,
            Err(e) => return Ok(invalid(e.message())),
        };
        // The audience: clients echo the public host the challenges named; the token server
        // validates the registry's own name.
        if let Some(service) = token.get(registry_edge_gate::token::TokenParam::Service) {
            let registry = self.registry_service(ctx);
            if service.eq_ignore_ascii_case(&ctx.generation.config.registry.public_host) {
                token.set(registry_edge_gate::token::TokenParam::Service, registry);
            } else if service != registry {
                return Ok(Some(EdgeResponse::error(
                    400,
                    "UNSUPPORTED",
                    EdgeReason::TokenServiceUnknown,
                    "the token request's service is not this registry",
                )));
            }
        }
        let dropped = ctx.generation.policy.filter_token(&mut token);
        for _ in 0..dropped {
            self.shared.metrics.refusal(
                PolicyReason::HiddenScope,
                ctx.generation.policy.detect_only(),
            );
        }
        if post {
            ctx.token_body = Some(bytes::Bytes::from(token.serialize()));
        }
        ctx.token = Some(token);
        Ok(None)
    }

    /// The whole request body, or the edge's answer: 413 past the limit, 408 when the client
    /// stops sending for the listener's idle time (both close the connection: the rest of the
    /// body is not read).
    pub(super) async fn read_token_body(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<Vec<u8>, EdgeResponse>> {
        // What is read here is what pingora sends upstream from (its retry buffer), as one
        // piece at the end of the body, which `request_body_filter` replaces.
        session.enable_retry_buffering();
        let idle = self.listener.timeouts.idle;
        let mut body = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(idle, session.read_request_body()).await {
                Ok(chunk) => chunk?,
                Err(_) => {
                    let mut r = EdgeResponse::error(
                        408,
                        "UNSUPPORTED",
                        EdgeReason::TokenBodyTimeout,
                        "the token request body did not arrive in time",
                    );
                    r.close = true;
                    return Ok(Err(r));
                }
            };
            let Some(chunk) = chunk else {
                return Ok(Ok(body));
            };
            body.extend_from_slice(&chunk);
            if body.len() as u64 > crate::policy::TOKEN_BODY_LIMIT {
                let mut r = EdgeResponse::error(
                    413,
                    "SIZE_INVALID",
                    EdgeReason::TokenBodyOverLimit,
                    "token request body too large",
                );
                r.close = true;
                return Ok(Err(r));
            }
        }
    }
}

/// The target sent upstream for a login-side request: the gate's [`Operation::target`], or for
/// a token request its path and the filtered parameters re-encoded (a POST's go in the rebuilt
/// body). `None` off the login side.
///
/// [`Operation::target`]: registry_edge_gate::Operation::target
pub(super) fn upstream_target(path: &str, ctx: &Ctx) -> Option<String> {
    let op = ctx.op.as_ref()?;
    if let Some(t) = op.target() {
        return Some(t);
    }
    let mut t = path.to_owned();
    if let Some(q) = ctx.token.as_ref().filter(|_| ctx.token_body.is_none()) {
        if !q.params.is_empty() {
            t.push('?');
            t.push_str(&q.serialize());
        }
    }
    Some(t)
}
