//! registry-edge's own listening service for the proxy listeners (the admin listener keeps
//! pingora's).
//!
//! pingora's `services::listening::Service` spawns one task per accepted connection whose
//! future holds the downstream handshake (TLS included) and the event loop inline: 8.8 KB per
//! connection before any application code runs, for as long as the connection is open. Its
//! stream adds timing bookkeeping on every read and write, a 1,460-byte write buffer per
//! connection, and a one-byte read to wait for each request. [`EdgeListener`] replaces it:
//!
//! - a connection task holds only its socket and a small state between requests; the TLS
//!   handshake runs in a box freed when it ends, and pingora's session, buffers and proxy future
//!   exist only while a request is served (HTTP/2 connections go to pingora's own loop);
//! - a plain connection waits for its next request on the socket's readiness, without a read;
//! - [`Conn`] writes a response head and a small body in one system call (a write buffer of at
//!   most [`WRITE_HOLD`](conn::WRITE_HOLD) bytes, allocated while a response is written and
//!   released between requests; larger writes go out directly, together with what is buffered);
//! - every request head, and the HTTP/2 preface, is read under deadlines (slowloris): `idle`
//!   for its first byte, then `header_read` in total up to the blank line that ends it. pingora
//!   0.9 only bounds each single read, so a client that sends one byte just before every
//!   timeout would otherwise keep a connection forever. The deadline's timer is armed only
//!   when a read has to wait: a head that arrives whole, the usual case, never touches the
//!   runtime's timer wheel.
//!
//! Listening sockets are taken from, and registered in, pingora's table of listening file
//! descriptors, so a graceful upgrade hands them over as before.
//!
//! The module, by concern:
//!
//! - this file: [`EdgeListener`], the pingora service (the listening socket, taken over or
//!   bound; the accept loops; the wait for upstream names), the [`Settings`] every connection
//!   reads, and each connection's dispatch: a plain one to the HTTP/1 loop, a TLS one through
//!   the handshake to the HTTP/1 loop or, by ALPN, to pingora's HTTP/2 server beside its
//!   `h2watch` watchdog;
//! - [`tls`]: the TLS handshake (within `header_read`, failures counted), the [`SslDigest`]
//!   pingora reads from it, and a TLS stream as a [`Transport`](conn::Transport);
//! - [`h1`]: the HTTP/1 request loop, [`serve_h1`]: the wait for each request's first byte
//!   under `idle` holding only the socket, and pingora's session built only once it has come;
//! - [`conn`]: [`Conn`], the stream pingora reads and writes: reads under the head deadlines,
//!   the head's end found where pingora's parser finds it, write coalescing, pingora's
//!   `Server: Pingora` line dropped from its own answers, and the pingora stream traits.
//!
//! [`SslDigest`]: pingora::protocols::tls::SslDigest

mod conn;
mod h1;
pub(crate) mod lean;
pub(crate) mod sendfile;
mod tls;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::ALPN;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::tls::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};

use self::conn::Conn;
use self::h1::serve_h1;
use self::tls::handshake;

/// Listen backlog (as pingora's listeners).
const BACKLOG: u32 = 65535;
/// Binding an address in use is retried this many times, a second apart (as pingora's).
const BIND_TRIES: usize = 30;

/// One proxy listener.
pub(crate) struct EdgeListener<A> {
    name: String,
    address: std::net::SocketAddr,
    app: Arc<A>,
    settings: Arc<Settings>,
}

/// What every connection of a listener needs.
pub(crate) struct Settings {
    pub(crate) tls: Option<TlsAcceptor>,
    /// Allowed for a request head's (or the HTTP/2 preface's) first byte, and between requests.
    pub(crate) idle: Duration,
    /// Allowed for a whole request head once its first byte arrived, and for a TLS handshake.
    pub(crate) header_read: Duration,
    /// `registry_edge_http_open_connections`.
    pub(crate) open_connections: prometheus::IntGauge,
    /// `registry_edge_tls_handshake_failures_total` for this listener, `reason="error"`.
    pub(crate) tls_failed: prometheus::IntCounter,
    /// The same, `reason="timeout"`.
    pub(crate) tls_timed_out: prometheus::IntCounter,
    /// Whether every upstream has peers: connections are accepted once it holds (or after
    /// [`RESOLVE_WAIT`]), so that a starting or upgraded instance does not answer 503 for want
    /// of addresses it is about to have. Until then they wait in the listen backlog (during an
    /// upgrade the old instance still accepts).
    pub(crate) upstreams_resolved: Arc<dyn Fn() -> bool + Send + Sync>,
    /// HTTP/2 connections, watched for stalled request bodies (h2watch.rs).
    pub(crate) h2: Arc<crate::h2watch::Registry>,
    /// `registry_edge_http2_body_timeouts_total`.
    pub(crate) h2_body_timeouts: prometheus::IntCounter,
    /// HTTP/1 connections are served by the lean session (`server.http1: lean`, lean/).
    pub(crate) lean: bool,
    /// Requests served on one HTTP/1 connection at most (the lean session counts them; pingora's
    /// is told through `keepalive_request_limit`).
    pub(crate) max_requests: u64,
    /// Called once, when the listener starts accepting (Shared::listeners_waiting).
    pub(crate) accepting: Arc<dyn Fn() + Send + Sync>,
}

/// Longest wait for upstream names before accepting anyway (a name that does not resolve
/// must not keep the listener dark: `/readyz` reports it, requests get 503).
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

impl<A> EdgeListener<A> {
    pub(crate) fn new(
        name: String,
        address: std::net::SocketAddr,
        app: A,
        settings: Settings,
    ) -> Self {
        EdgeListener {
            name,
            address,
            app: Arc::new(app),
            settings: Arc::new(settings),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> pingora::services::Service for EdgeListener<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let listener = match listen(self.address, fds).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                log::error!("{}: cannot listen on {}: {e}", self.name, self.address);
                // A proxy that cannot listen on its configured address must not keep running
                // as if it served it.
                std::process::exit(1);
            }
        };
        let started = tokio::time::Instant::now();
        while !(self.settings.upstreams_resolved)() && started.elapsed() < RESOLVE_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !(self.settings.upstreams_resolved)() {
            log::warn!(
                "{}: accepting connections before every upstream name is resolved (waited {:?}); their requests get 503 until then",
                self.name,
                RESOLVE_WAIT
            );
        }
        (self.settings.accepting)();
        let loops: Vec<_> = (0..listeners_per_fd.max(1))
            .map(|_| {
                tokio::spawn(accept_loop(
                    listener.clone(),
                    self.app.clone(),
                    self.settings.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for l in loops {
            if let Err(e) = l.await {
                log::error!("{}: accept loop failed: {e}", self.name);
            }
        }
        self.app.http_cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.address.to_string()])
    }
}

/// The listening socket for `address`: the one handed over by the previous instance during a
/// graceful upgrade, else a new one, registered in the table so that the next upgrade hands it
/// over in turn.
async fn listen(addr: std::net::SocketAddr, fds: Option<ListenFds>) -> io::Result<TcpListener> {
    // The table's key, as pingora's own listeners write it.
    let address = addr.to_string();
    if let Some(fd) = fds.as_ref().and_then(|t| t.lock().get(&address).copied()) {
        // SAFETY: the table holds listening sockets received from the previous instance during
        // a graceful upgrade, open and owned by nothing else in this process; each address's
        // is taken once, by its one listener.
        #[allow(unsafe_code)]
        let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        return TcpListener::from_std(std);
    }
    let mut tries = 0;
    let listener = loop {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => break socket.listen(BACKLOG)?,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                log::warn!("{address} is in use, trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(t) = &fds {
        t.lock().add(address, listener.as_raw_fd());
    }
    Ok(listener)
}

async fn accept_loop<A: HttpServerApp + Send + Sync + 'static>(
    listener: Arc<TcpListener>,
    app: Arc<A>,
    settings: Arc<Settings>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    log::debug!("TCP_NODELAY on a connection from {peer}: {e}");
                }
                tokio::spawn(connection(
                    app.clone(),
                    settings.clone(),
                    shutdown.clone(),
                    tcp,
                    peer,
                ));
            }
            Err(e) => {
                log::error!("accept() failed: {e}");
                // Out of descriptors or memory: wait for connections to close instead of
                // spinning on the listener.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Counts an open connection for as long as it lives.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection<A: HttpServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    settings: Arc<Settings>,
    shutdown: ShutdownWatch,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) {
    settings.open_connections.inc();
    let _open = Open(settings.open_connections.clone());
    let local = tcp.local_addr().ok();
    let Some(acceptor) = &settings.tls else {
        let conn = Box::new(Conn::new(tcp, peer, None, &settings));
        return serve_h1(&app, conn, &settings, shutdown).await;
    };
    // Boxed: the handshake's state, the TLS stream included, is freed when it ends instead of
    // sizing the task for the connection's lifetime.
    let Some(mut conn) = Box::pin(handshake(acceptor, tcp, peer, &settings)).await else {
        return;
    };
    if matches!(conn.alpn, Some(ALPN::H2)) {
        // pingora's HTTP/2 server; the preface is read under the head deadlines, each stream's
        // request body under `idle` by the watchdog beside it.
        conn.new_head();
        let Some(local) = local else {
            ServerApp::process_new(&app, conn, &shutdown).await;
            return;
        };
        let watched = settings.h2.open(peer, local);
        tokio::select! {
            _ = ServerApp::process_new(&app, conn, &shutdown) => {}
            () = watched.connection.stalled(settings.idle) => {
                settings.h2_body_timeouts.inc();
                log::debug!("HTTP/2 connection from {peer} closed: a request body stalled");
            }
        }
        return;
    }
    serve_h1(&app, conn, &settings, shutdown).await
}
