//! Responses the edge writes itself (421, 400, 404, 405, 308, 431, 502, 503, 504), and which one
//! a request gets: [`before_policy`] (header size, misroutes, the redirect listener),
//! [`EdgeResponse::gate`] (the request gate's refusals), [`EdgeResponse::refused`] (the access
//! policy's), [`failure`] (a failed exchange with the upstream). They carry the OCI error body
//! clients print, the registry's API version header under `/v2/`, no `Server: Pingora`, and a
//! Content-Length so that the connection stays alive where HTTP allows (pingora's
//! `respond_error` would close it).

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::ErrorType;
use pingora_proxy::Session;

use registry_edge_config::Listener;

use crate::outcome::{Answered, EdgeReason};
use crate::policy::Refusal;
use crate::route::{normalise_host, Misroute};

/// An answer of the edge's own.
#[derive(Debug, Clone)]
pub struct EdgeResponse {
    pub status: u16,
    /// OCI error code (`DENIED`, `UNSUPPORTED`, `UNAVAILABLE`, ...), or `None` for a non-error.
    pub code: Option<&'static str>,
    pub message: String,
    pub location: Option<String>,
    pub allow: Option<&'static str>,
    /// Why the edge answered (`registry_edge_http_edge_responses_total` for its own reasons).
    pub reason: Answered,
    /// Close the connection after the response (the request body could not be drained).
    pub close: bool,
    /// Further headers (Retry-After, WWW-Authenticate).
    pub extra: Vec<(&'static str, String)>,
}

impl EdgeResponse {
    pub fn error(
        status: u16,
        code: &'static str,
        reason: impl Into<Answered>,
        message: impl Into<String>,
    ) -> Self {
        EdgeResponse {
            status,
            code: Some(code),
            message: message.into(),
            location: None,
            allow: None,
            reason: reason.into(),
            close: false,
            extra: Vec::new(),
        }
    }

    /// The request gate's refusal (the request did not parse by the registry grammar).
    pub fn gate(g: &registry_edge_gate::Reject) -> Self {
        let mut r = EdgeResponse::error(g.status, g.code, EdgeReason::from(g.reason), g.message);
        r.allow = g.allow;
        r
    }

    /// The access policy's refusal. A hidden repository without credentials gets the
    /// registry's own kind of challenge: `realm` is the public token URL, `service` the public
    /// service name.
    pub fn refused(refusal: Refusal, realm: &str, service: &str) -> Self {
        let mut r = EdgeResponse::error(
            refusal.status,
            refusal.code,
            refusal.reason,
            refusal.message,
        );
        r.allow = refusal.allow;
        if let Some(secs) = refusal.retry_after {
            r.extra.push(("Retry-After", secs.to_string()));
        }
        if let Some(scope) = refusal.challenge_scope {
            let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
            if !scope.is_empty() {
                challenge.push_str(&format!(",scope=\"{scope}\""));
            }
            r.extra.push(("WWW-Authenticate", challenge));
        }
        r
    }

    /// The OCI error JSON; the message is escaped, never interpolated raw.
    pub fn body(&self) -> Bytes {
        match self.code {
            None => Bytes::new(),
            Some(code) => {
                let v = serde_json::json!({
                    "errors": [{ "code": code, "message": self.message, "detail": null }]
                });
                let mut s = v.to_string();
                s.push('\n');
                Bytes::from(s)
            }
        }
    }

    pub fn header(&self, path: &str) -> pingora::Result<ResponseHeader> {
        let body_len = self.body().len();
        let mut h = ResponseHeader::build(self.status, Some(6))?;
        if self.code.is_some() {
            h.insert_header("Content-Type", "application/json; charset=utf-8")?;
        }
        h.insert_header("Content-Length", body_len.to_string())?;
        if path == "/v2" || path.starts_with("/v2/") {
            h.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
        }
        if let Some(l) = &self.location {
            h.insert_header("Location", l.as_str())?;
        }
        if let Some(a) = self.allow {
            h.insert_header("Allow", a)?;
        }
        if self.close {
            h.insert_header("Connection", "close")?;
        }
        for (k, v) in &self.extra {
            h.append_header(*k, v.as_str())?;
        }
        Ok(h)
    }

    /// Writes the response with `header` (from [`EdgeResponse::header`], possibly rewritten by
    /// the user rules). The request body is drained first, so that keepalive survives a refusal
    /// of a request with a body.
    pub async fn write(
        &self,
        session: &mut Session,
        header: ResponseHeader,
    ) -> pingora::Result<()> {
        let head = session.req_header().method == http::Method::HEAD;
        // `||` short-circuits: a closing answer does not wait for the body.
        if self.close || session.drain_request_body().await.is_err() {
            session.set_keepalive(None);
        }
        let body = self.body();
        if head || body.is_empty() {
            session
                .write_response_header(Box::new(header), true)
                .await?;
        } else {
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

/// Bytes of a request head as a client sent it (request line and header lines).
pub fn header_bytes(req: &RequestHeader) -> usize {
    let uri = &req.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// The answer a request gets before the access policy runs, if any: headers over the
/// listener's limit (431), a misroute (421, 404, 400), and on a redirect listener a 308 to
/// https for GET/HEAD or a 405 for the rest. `host` is the Host the client named.
pub fn before_policy(
    req: &RequestHeader,
    host: &str,
    misroute: Option<&Misroute>,
    listener: &Listener,
) -> Option<EdgeResponse> {
    if header_bytes(req) > listener.max_request_header_bytes {
        return Some(EdgeResponse::error(
            431,
            "UNSUPPORTED",
            EdgeReason::HeaderTooLarge,
            format!(
                "request headers exceed {} bytes",
                listener.max_request_header_bytes
            ),
        ));
    }
    if let Some(m) = misroute {
        let (status, code, reason, message) = match m {
            Misroute::UnknownHost => (
                421,
                "UNSUPPORTED",
                EdgeReason::UnknownHost,
                "this edge does not serve the requested host",
            ),
            Misroute::UnknownRegion => (
                404,
                "BLOB_UNKNOWN",
                EdgeReason::UnknownRegion,
                "unknown data region in the path",
            ),
            Misroute::NonCanonicalPath => (
                400,
                "NAME_INVALID",
                EdgeReason::NonCanonicalPath,
                "the path has empty, `.` or `..` segments or encoded separators",
            ),
            Misroute::BadHost => (
                400,
                "UNSUPPORTED",
                EdgeReason::BadHost,
                "the Host header is not a host name with an optional port",
            ),
        };
        return Some(EdgeResponse::error(status, code, reason, message));
    }
    if !listener.redirect_to_https {
        return None;
    }
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        let mut r = EdgeResponse::error(
            405,
            "UNSUPPORTED",
            EdgeReason::HttpsRequired,
            "use https: this listener only redirects GET and HEAD",
        );
        r.allow = Some("GET, HEAD");
        return Some(r);
    }
    let host = normalise_host(host);
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(EdgeResponse {
        status: 308,
        code: None,
        message: String::new(),
        location: Some(format!("https://{host}{pq}")),
        allow: None,
        reason: EdgeReason::RedirectHttps.into(),
        close: false,
        extra: Vec::new(),
    })
}

/// What a failed exchange answers: its status (0: none, the client is gone), why, and the
/// message. `upstream`: the error came from the upstream side; `downstream`: from the client's.
pub fn failure(
    etype: &ErrorType,
    upstream: bool,
    downstream: bool,
) -> (u16, EdgeReason, &'static str) {
    use ErrorType::*;
    match etype {
        HTTPStatus(c) => (*c, EdgeReason::Status, "the request could not be served"),
        Custom(crate::identity::UNMAPPED_REDIRECT) => (
            502,
            EdgeReason::UnmappedRedirect,
            "the registry redirected to a location this edge does not publish",
        ),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout if upstream => (
            504,
            EdgeReason::UpstreamTimeout,
            "the registry did not answer in time",
        ),
        _ if upstream => (
            502,
            EdgeReason::UpstreamError,
            "the registry could not be reached",
        ),
        ReadError | WriteError | ConnectionClosed => (0, EdgeReason::ClientGone, ""),
        _ if downstream => (400, EdgeReason::BadRequest, "malformed request"),
        _ => (500, EdgeReason::Internal, "internal error"),
    }
}

#[cfg(test)]
mod tests;
