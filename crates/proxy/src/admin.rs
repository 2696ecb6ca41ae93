//! The admin app on `admin.address`: `/metrics` (from the registry passed in), `/healthz` (the
//! process answers), `/readyz` (every proxy listener accepting, upstream names resolved, not
//! draining).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::service::Shared;

pub struct Admin {
    pub shared: Arc<Shared>,
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let len = r.body().len();
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return response(405, "text/plain", b"method not allowed\n".to_vec());
        }
        match req.uri.path() {
            "/metrics" => {
                self.shared
                    .metrics
                    .ready
                    .set(i64::from(self.shared.ready()));
                response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.render(),
                )
            }
            "/healthz" => response(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.shared.unready() {
                Some(why) => response(503, "text/plain", format!("{why}\n").into_bytes()),
                None => response(200, "text/plain", b"ready\n".to_vec()),
            },
            _ => response(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
