//! The HTTP/1 request loop: pingora's own (`apps::HttpServerApp`'s `ServerApp`), with the wait
//! between requests taken out of it. A connection waits for its next request's first byte (under
//! `idle`) holding only the socket; pingora's session, buffers and proxy future are built once
//! that byte may be there, and the connection comes back from pingora between requests. The head
//! deadlines themselves are [`Conn`]'s (conn.rs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use super::conn::{Conn, Transport};
use super::Settings;

/// pingora's HTTP/1 loop (`apps::HttpServerApp`'s `ServerApp`), with the wait between requests
/// outside it.
pub(super) async fn serve_h1<A: HttpServerApp + Send + Sync + 'static, T: Transport>(
    app: &Arc<A>,
    mut conn: Box<Conn<T>>,
    settings: &Settings,
    mut shutdown: ShutdownWatch,
) {
    if settings.lean {
        return super::lean::serve_lean(app, conn, settings, shutdown).await;
    }
    let mut persistent: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        conn.release_buffers();
        if *shutdown.borrow() {
            return;
        }
        if !next_request(&mut conn, first, settings, &mut shutdown).await {
            return;
        }
        conn.new_head();
        let serve = serve_one(app, conn, first, persistent.take(), &shutdown);
        first = false;
        let Some(reused) = serve.await else {
            return;
        };
        let (stream, next) = reused.consume();
        conn = match stream.into_any().downcast::<Conn<T>>() {
            Ok(c) => c,
            Err(_) => {
                log::error!("a connection came back from pingora as another type; closing it");
                return;
            }
        };
        persistent = next;
    }
}

/// Waits, under `idle`, for the first byte of a connection's next request, holding only the
/// connection: `false` when the client closed, the wait timed out or the server is stopping.
/// Both HTTP/1 sessions' loops wait here.
pub(super) async fn next_request<T: Transport>(
    conn: &mut Conn<T>,
    first: bool,
    settings: &Settings,
    shutdown: &mut ShutdownWatch,
) -> bool {
    // Stale readiness is possible on a new socket and after a request body (see
    // `Transport::poll_wait`).
    let verify = first || conn.body_read;
    tokio::select! {
        biased;
        r = tokio::time::timeout(settings.idle, std::future::poll_fn(|cx| conn.poll_next_byte(cx, verify))) => {
            matches!(r, Ok(Ok(true)))
        }
        _ = shutdown.changed() => false,
    }
}

/// Starts serving one request: the session is built here, outside the connection's future, so
/// that the future does not keep room for it while the connection waits.
fn serve_one<'a, A: HttpServerApp + Send + Sync + 'static, T: Transport>(
    app: &'a Arc<A>,
    conn: Box<Conn<T>>,
    first: bool,
    persistent: Option<HttpPersistentSettings>,
    shutdown: &'a ShutdownWatch,
) -> Pin<Box<dyn Future<Output = Option<pingora::apps::ReusedHttpStream>> + Send + 'a>> {
    let mut session = ServerSession::new_http1(conn);
    if first {
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        session.set_keepalive_reuses_remaining(
            app.server_options().and_then(|o| o.keepalive_request_limit),
        );
    } else if let Some(p) = persistent {
        p.apply_to_session(&mut session);
    }
    app.process_new_http(session, shutdown)
}
