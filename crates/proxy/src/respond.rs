//! Responses the edge writes itself (421, 400, 404, 405, 308, 431, 502, 503, 504). They carry the
//! OCI error body clients print, the registry's API version header under `/v2/`, no
//! `Server: Pingora`, and a Content-Length so that the connection stays alive where HTTP allows
//! (pingora's `respond_error` would close it).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora_proxy::Session;

/// An answer of the edge's own.
#[derive(Debug, Clone)]
pub struct EdgeResponse {
    pub status: u16,
    /// OCI error code (`DENIED`, `UNSUPPORTED`, `UNAVAILABLE`, ...), or `None` for a non-error.
    pub code: Option<&'static str>,
    pub message: String,
    pub location: Option<String>,
    pub allow: Option<&'static str>,
    /// Label for `registry_edge_http_edge_responses_total`.
    pub reason: &'static str,
    /// Close the connection after the response (the request body could not be drained).
    pub close: bool,
    /// Further headers (Retry-After, WWW-Authenticate).
    pub extra: Vec<(&'static str, String)>,
}

impl EdgeResponse {
    pub fn error(
        status: u16,
        code: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        EdgeResponse {
            status,
            code: Some(code),
            message: message.into(),
            location: None,
            allow: None,
            reason,
            close: false,
            extra: Vec::new(),
        }
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
