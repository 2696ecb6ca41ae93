//! registry-edge's own listening service: the accept loop, the TLS handshake, the connection
//! type pingora's HTTP code reads and writes, and the HTTP/1 request loop.
//!
//! pingora's `services::listening::Service` spawns one task per accepted connection whose
//! future holds the downstream handshake (TLS included) and the event loop inline: 8.8 KB per
//! connection before any application code runs, for as long as the connection is open. Its
//! stream adds timing bookkeeping on every read and write, a 1,460-byte write buffer per
//! connection, and a one-byte read to wait for each request. [`EdgeListener`] replaces it for
//! the proxy listeners (the admin listener keeps pingora's):
//!
//! - a connection task holds only its socket and a small state between requests; the TLS
//!   handshake runs in a box freed when it ends, and pingora's session, buffers and proxy future
//!   exist only while a request is served (HTTP/2 connections go to pingora's own loop);
//! - a plain connection waits for its next request on the socket's readiness, without a read;
//! - [`Conn`] writes a response head and a small body in one system call (a write buffer of at
//!   most [`WRITE_HOLD`] bytes, allocated while a response is written and released between
//!   requests; larger writes go out directly, together with what is buffered);
//! - every request head, and the HTTP/2 preface, is read under deadlines (slowloris): `idle`
//!   for its first byte, then `header_read` in total up to the blank line that ends it. pingora
//!   0.9 only bounds each single read, so a client that sends one byte just before every
//!   timeout would otherwise keep a connection forever. The deadline's timer is armed only
//!   when a read has to wait: a head that arrives whole, the usual case, never touches the
//!   runtime's timer wheel.
//!
//! Listening sockets are taken from, and registered in, pingora's table of listening file
//! descriptors, so a graceful upgrade hands them over as before.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::tls::{ServerTlsStream, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Most bytes a connection holds back to send with the next write (a response head waiting
/// for its body). pingora's own stream held as many; a write that does not fit goes out at
/// once, with what is held, in one vectored system call.
pub const WRITE_HOLD: usize = 1460;
/// Listen backlog (as pingora's listeners).
const BACKLOG: u32 = 65535;
/// Binding an address in use is retried this many times, a second apart (as pingora's).
const BIND_TRIES: usize = 30;

/// One proxy listener.
pub struct EdgeListener<A> {
    name: String,
    address: std::net::SocketAddr,
    app: Arc<A>,
    settings: Arc<Settings>,
}

/// What every connection of a listener needs.
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    /// Allowed for a request head's (or the HTTP/2 preface's) first byte, and between requests.
    pub idle: Duration,
    /// Allowed for a whole request head once its first byte arrived, and for a TLS handshake.
    pub header_read: Duration,
    /// `registry_edge_http_open_connections`.
    pub open_connections: prometheus::IntGauge,
    /// `registry_edge_tls_handshake_failures_total` for this listener, `reason="error"`.
    pub tls_failed: prometheus::IntCounter,
    /// The same, `reason="timeout"`.
    pub tls_timed_out: prometheus::IntCounter,
    /// Whether every upstream has peers: connections are accepted once it holds (or after
    /// [`RESOLVE_WAIT`]), so that a starting or upgraded instance does not answer 503 for want
    /// of addresses it is about to have. Until then they wait in the listen backlog (during an
    /// upgrade the old instance still accepts).
    pub upstreams_resolved: Arc<dyn Fn() -> bool + Send + Sync>,
    /// HTTP/2 connections, watched for stalled request bodies (h2watch.rs).
    pub h2: Arc<crate::h2watch::Registry>,
    /// `registry_edge_http2_body_timeouts_total`.
    pub h2_body_timeouts: prometheus::IntCounter,
}

/// Longest wait for upstream names before accepting anyway (a name that does not resolve
/// must not keep the listener dark: `/readyz` reports it, requests get 503).
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

impl<A> EdgeListener<A> {
    pub fn new(name: String, address: std::net::SocketAddr, app: A, settings: Settings) -> Self {
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

/// The TLS handshake, within `header_read`.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    settings: &Settings,
) -> Option<Box<Conn<ServerTlsStream<TcpStream>>>> {
    let tls = match tokio::time::timeout(settings.header_read, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        // Counted, and logged at debug only: scanners and broken clients would flood the log.
        Ok(Err(e)) => {
            settings.tls_failed.inc();
            log::debug!("TLS handshake with {peer} failed: {e}");
            return None;
        }
        Err(_) => {
            settings.tls_timed_out.inc();
            log::debug!("TLS handshake with {peer} timed out");
            return None;
        }
    };
    let c = tls.get_ref().1;
    let alpn = match c.alpn_protocol() {
        Some(b"h2") => Some(ALPN::H2),
        Some(b"http/1.1") => Some(ALPN::H1),
        _ => None,
    };
    let cipher = c
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or_default();
    let version = c
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let digest = SslDigest::new(cipher, version, None, None, Vec::new());
    let mut conn = Box::new(Conn::new(tls, peer, Some(Arc::new(digest)), settings));
    conn.alpn = alpn;
    Some(conn)
}

/// pingora's HTTP/1 loop (`apps::HttpServerApp`'s `ServerApp`), with the wait between requests
/// outside it.
async fn serve_h1<A: HttpServerApp + Send + Sync + 'static, T: Transport>(
    app: &Arc<A>,
    mut conn: Box<Conn<T>>,
    settings: &Settings,
    mut shutdown: ShutdownWatch,
) {
    let mut persistent: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        conn.release_buffers();
        if *shutdown.borrow() {
            return;
        }
        // Stale readiness is possible on a new socket and after a request body (see
        // `Transport::poll_wait`).
        let verify = first || conn.body_read;
        let arrived = tokio::select! {
            biased;
            r = tokio::time::timeout(settings.idle, std::future::poll_fn(|cx| conn.poll_next_byte(cx, verify))) => {
                matches!(r, Ok(Ok(true)))
            }
            _ = shutdown.changed() => false,
        };
        if !arrived {
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

/// What a [`Conn`] runs over: a TCP socket, or TLS over one.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync + fmt::Debug + 'static {
    /// Waits until bytes of a request may be there without reading them, when the transport
    /// can tell: `Ready(Ok(false))` at end of stream. `None` when it cannot (TLS may hold
    /// decrypted bytes already, or get a record that holds none): then a byte is read.
    ///
    /// `verify`: readiness alone is not trusted and the socket is peeked (a system call only
    /// when readiness is set). A new socket reports itself readable as soon as it is
    /// registered, data or not, and pingora reads a request body to its exact end, which leaves
    /// the socket marked readable. After a request without a body, pingora's last read was a
    /// short one, which cleared the readiness, so the next report is real (and a false one only
    /// costs the session's memory while it waits under the head deadlines).
    fn poll_wait(&self, cx: &mut Context<'_>, verify: bool) -> Option<Poll<io::Result<bool>>>;
    fn fd(&self) -> i32;
}

impl Transport for TcpStream {
    fn poll_wait(&self, cx: &mut Context<'_>, verify: bool) -> Option<Poll<io::Result<bool>>> {
        if !verify {
            return Some(TcpStream::poll_read_ready(self, cx).map_ok(|()| true));
        }
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        Some(self.poll_peek(cx, &mut rb).map_ok(|n| n > 0))
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

impl Transport for ServerTlsStream<TcpStream> {
    fn poll_wait(&self, _: &mut Context<'_>, _: bool) -> Option<Poll<io::Result<bool>>> {
        None
    }
    fn fd(&self) -> i32 {
        self.get_ref().0.as_raw_fd()
    }
}

/// A downstream connection as pingora's HTTP code sees it (`Box<dyn IO>`).
pub struct Conn<T> {
    io: T,
    /// Bytes held back for the next write: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// A byte read while waiting for a request, served before anything else.
    held: Option<u8>,
    /// The head deadline in force when `armed` (first byte, then the whole head); allocated
    /// while a head is read.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// A byte of the current head has arrived: the deadline is `header_read`.
    started: bool,
    /// The head has ended: reads pass through.
    done: bool,
    /// Bytes were read after the current head (a request body).
    body_read: bool,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    idle: Duration,
    header_read: Duration,
    socket: Arc<SocketDigest>,
    ssl: Option<Arc<SslDigest>>,
    alpn: Option<ALPN>,
}

impl<T: Transport> Conn<T> {
    fn new(
        io: T,
        peer: std::net::SocketAddr,
        ssl: Option<Arc<SslDigest>>,
        settings: &Settings,
    ) -> Self {
        let socket = SocketDigest::from_raw_fd(io.fd());
        let _ = socket.peer_addr.set(Some(PingoraAddr::Inet(peer)));
        Conn {
            io,
            wbuf: Vec::new(),
            wpos: 0,
            held: None,
            timer: None,
            armed: false,
            started: false,
            done: true,
            body_read: false,
            tail: [0; 3],
            idle: settings.idle,
            header_read: settings.header_read,
            socket: Arc::new(socket),
            ssl,
            alpn: None,
        }
    }

    /// The next bytes read begin a request head (or the HTTP/2 preface).
    fn new_head(&mut self) {
        self.done = false;
        self.body_read = false;
        self.armed = false;
        self.started = false;
        self.tail = [0; 3];
    }

    /// Between requests: nothing is held for writing, so the buffer goes.
    fn release_buffers(&mut self) {
        if self.wpos >= self.wbuf.len() {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        if self.done {
            self.timer = None;
        }
    }

    /// Until a request's first byte may be there: `false` at end of stream. `verify`: see
    /// [`Transport::poll_wait`].
    fn poll_next_byte(&mut self, cx: &mut Context<'_>, verify: bool) -> Poll<io::Result<bool>> {
        if self.held.is_some() {
            return Poll::Ready(Ok(true));
        }
        if let Some(ready) = self.io.poll_wait(cx, verify) {
            return ready;
        }
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        if rb.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.held = Some(byte[0]);
        Poll::Ready(Ok(true))
    }

    fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    /// Bytes of the head arrived: from now on the header deadline applies; the head ends at its
    /// blank line.
    fn seen(&mut self, new: &[u8]) {
        if new.is_empty() || self.done {
            return;
        }
        if head_ends(&mut self.tail, new) {
            self.done = true;
            self.armed = false;
            self.timer = None;
            return;
        }
        // The head goes on past what arrived: from its first byte, `header_read` bounds it.
        // (A head that arrives whole, the usual case, never touches the timer wheel.)
        if !self.started {
            self.started = true;
            self.arm(Instant::now() + self.header_read);
        }
    }

    /// Writes out what is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T> fmt::Debug for Conn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.socket.peer_addr.get())
            .field("tls", &self.ssl.is_some())
            .finish()
    }
}

impl<T: Transport> AsyncRead for Conn<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if let Some(b) = me.held {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            me.held = None;
            buf.put_slice(&[b]);
            me.seen(&[b]);
            // The rest of what has arrived, if the transport has it at hand.
            let before = buf.filled().len();
            if buf.remaining() > 0 {
                if let Poll::Ready(Ok(())) = Pin::new(&mut me.io).poll_read(cx, buf) {
                    me.seen(&buf.filled()[before..]);
                }
            }
            return Poll::Ready(Ok(()));
        }
        if me.done {
            let before = buf.filled().len();
            let r = Pin::new(&mut me.io).poll_read(cx, buf);
            me.body_read |= buf.filled().len() > before;
            return r;
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut me.io).poll_read(cx, buf) {
            r?;
            me.seen(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        // Nothing at hand: only now does a deadline need the timer wheel (a head that has not
        // begun waits at most `idle`; one that has, the `header_read` armed at its first byte).
        if !me.armed {
            me.arm(Instant::now() + me.idle);
        }
        if let Some(t) = &mut me.timer {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers not received in time",
                )));
            }
        }
        Poll::Pending
    }
}

impl<T: Transport> AsyncWrite for Conn<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let held = me.wbuf.len() - me.wpos;
        if held + buf.len() <= WRITE_HOLD {
            if me.wbuf.capacity() == 0 {
                me.wbuf.reserve_exact(WRITE_HOLD);
            }
            match pingora_server_line(buf) {
                // pingora's own bare answers (a head it cannot parse, CONNECT) name it.
                Some(at) => {
                    me.wbuf.extend_from_slice(&buf[..at]);
                    me.wbuf.extend_from_slice(&buf[at + PINGORA_SERVER.len()..]);
                }
                None => me.wbuf.extend_from_slice(buf),
            }
            return Poll::Ready(Ok(buf.len()));
        }
        // Too much to hold: what is held and the new bytes, in one system call.
        while me.wpos < me.wbuf.len() {
            let held = &me.wbuf[me.wpos..];
            let slices = [io::IoSlice::new(held), io::IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut me.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < held.len() {
                me.wpos += n;
                continue;
            }
            let of_buf = n - held.len();
            me.wbuf.clear();
            me.wpos = 0;
            if of_buf > 0 {
                return Poll::Ready(Ok(of_buf));
            }
        }
        Pin::new(&mut me.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl<T: Transport> Shutdown for Conn<T> {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            log::debug!("shutting a connection down: {e}");
        }
    }
}

impl<T: Transport> UniqueID for Conn<T> {
    fn id(&self) -> UniqueIDType {
        self.io.fd()
    }
}

impl<T> Ssl for Conn<T> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl<T> GetTimingDigest for Conn<T> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl<T> GetProxyDigest for Conn<T> {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl<T> GetSocketDigest for Conn<T> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket.clone())
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.socket = Arc::new(digest);
    }
}

/// Peeking is not offered: pingora peeks only for the cleartext HTTP/2 preface, which the
/// listeners do not accept.
impl<T> Peek for Conn<T> {}

/// Whether `new` completes the blank line that ends a head, given the `tail` (last 3 bytes) seen
/// before it; updates `tail`. The blank line is found as pingora's parser (httparse) finds it: a
/// line feed, then an empty line ended by `\n` or `\r\n` — so `\r\n\r\n`, and also the bare-LF
/// forms `\n\n` and `\n\r\n`. A head that pingora will parse as complete is complete here too,
/// and its body is never read under the head's deadline.
fn head_ends(tail: &mut [u8; 3], new: &[u8]) -> bool {
    // Across the boundary: the last 3 bytes seen and the first 3 new ones.
    let mut edge = [0u8; 6];
    edge[..3].copy_from_slice(tail);
    let k = new.len().min(3);
    edge[3..3 + k].copy_from_slice(&new[..k]);
    if blank_line(&edge[..3 + k]) || blank_line(new) {
        return true;
    }
    if new.len() >= 3 {
        tail.copy_from_slice(&new[new.len() - 3..]);
    } else {
        let mut t = [0u8; 6];
        t[..3].copy_from_slice(tail);
        t[3..3 + new.len()].copy_from_slice(new);
        tail.copy_from_slice(&t[new.len()..new.len() + 3]);
    }
    false
}

/// The header line pingora's own error responses carry (`error_resp::gen_error_response`).
const PINGORA_SERVER: &[u8] = b"Server: Pingora\r\n";

/// Where `Server: Pingora` starts in a response head that pingora wrote itself: the edge's
/// answers and the proxied ones carry no such line, so only pingora's bare 400/405/502 do.
fn pingora_server_line(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(b"HTTP/1.") {
        return None;
    }
    let head = memchr::memmem::find(buf, b"\r\n\r\n").map_or(buf.len(), |e| e + 2);
    memchr::memmem::find(&buf[..head], b"\r\nServer: Pingora\r\n").map(|i| i + 2)
}

/// `\n\n` or `\n\r\n` somewhere in `b`.
fn blank_line(b: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', b).any(|i| match b.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => b.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that records each write call (a vectored call is one write) and takes at most
    /// `limit` bytes per call.
    #[derive(Debug, Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: usize,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut taken = Vec::new();
            for b in bufs {
                let room = self.limit - taken.len();
                taken.extend_from_slice(&b[..b.len().min(room)]);
            }
            let n = taken.len();
            self.writes.push(taken);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Transport for Recorder {
        fn poll_wait(&self, _: &mut Context<'_>, _: bool) -> Option<Poll<io::Result<bool>>> {
            Some(Poll::Ready(Ok(true)))
        }
        fn fd(&self) -> i32 {
            -1
        }
    }

    fn conn(limit: usize) -> Conn<Recorder> {
        let settings = Settings {
            tls: None,
            idle: Duration::from_secs(5),
            header_read: Duration::from_secs(5),
            open_connections: prometheus::IntGauge::new("open", "open").unwrap_or_else(|e| {
                unreachable!("{e}");
            }),
            tls_failed: prometheus::IntCounter::new("failed", "failed")
                .unwrap_or_else(|e| unreachable!("{e}")),
            tls_timed_out: prometheus::IntCounter::new("timed_out", "timed out")
                .unwrap_or_else(|e| unreachable!("{e}")),
            upstreams_resolved: Arc::new(|| true),
            h2: Arc::default(),
            h2_body_timeouts: prometheus::IntCounter::new("h2", "h2")
                .unwrap_or_else(|e| unreachable!("{e}")),
        };
        let io = Recorder {
            writes: Vec::new(),
            limit,
        };
        Conn::new(io, ([127, 0, 0, 1], 1).into(), None, &settings)
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 1600\r\nDocker-Content-Digest: sha256:0\r\n\r\n";

    #[tokio::test]
    async fn a_head_and_a_small_body_leave_in_one_write_at_the_flush() -> io::Result<()> {
        let mut c = conn(usize::MAX);
        c.write_all(HEAD).await?;
        c.write_all(&[7u8; 1000]).await?;
        assert!(
            c.io.writes.is_empty(),
            "nothing is written before the flush"
        );
        c.flush().await?;
        assert_eq!(c.io.writes.len(), 1);
        assert_eq!(c.io.writes[0].len(), HEAD.len() + 1000);
        c.release_buffers();
        assert_eq!(c.wbuf.capacity(), 0, "an idle connection holds no buffer");
        Ok(())
    }

    #[tokio::test]
    async fn a_body_too_large_to_hold_leaves_with_the_held_head_in_one_call() -> io::Result<()> {
        let mut c = conn(usize::MAX);
        c.write_all(HEAD).await?;
        let body = vec![9u8; 64 * 1024];
        c.write_all(&body).await?;
        assert_eq!(c.io.writes.len(), 1);
        assert_eq!(&c.io.writes[0][..HEAD.len()], HEAD);
        assert_eq!(&c.io.writes[0][HEAD.len()..], &body[..]);
        // Nothing is held after a direct write.
        c.flush().await?;
        assert_eq!(c.io.writes.len(), 1);
        Ok(())
    }

    /// Whatever the socket takes per call, every byte leaves once and in order, and at most
    /// WRITE_HOLD bytes wait for a later write.
    #[tokio::test]
    async fn short_writes_keep_every_byte_in_order() -> io::Result<()> {
        for limit in [1, 7, 100, 1460, 1461, 5000] {
            let mut c = conn(limit);
            let mut expected = Vec::new();
            let mut seed = 0x2545_f491_u32;
            for i in 0..200u32 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let len = (seed % 4000) as usize + 1;
                let chunk: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                c.write_all(&chunk).await?;
                expected.extend_from_slice(&chunk);
                let written: usize = c.io.writes.iter().map(Vec::len).sum();
                assert!(expected.len() - written <= WRITE_HOLD, "limit {limit}");
            }
            c.flush().await?;
            assert_eq!(c.io.writes.concat(), expected, "limit {limit}");
        }
        Ok(())
    }

    /// Split anywhere, in up to three pieces: the end is found in the piece that completes it,
    /// never before.
    #[test]
    fn the_blank_line_is_found_across_any_split() {
        let head = b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n";
        let end = head.len();
        for i in 0..=end {
            for j in i..=end {
                let mut tail = [0u8; 3];
                let pieces = [&head[..i], &head[i..j], &head[j..]];
                let mut seen = 0;
                let mut found_at = None;
                for p in pieces {
                    seen += p.len();
                    if head_ends(&mut tail, p) {
                        found_at = Some(seen);
                        break;
                    }
                }
                assert_eq!(found_at, Some(end), "split at {i}, {j}");
            }
        }
        let mut tail = [0u8; 3];
        assert!(!head_ends(&mut tail, b"GET / HTTP/1.1\r\nA: b\r\n"));
        assert!(!head_ends(&mut tail, b"\r"));
        assert!(head_ends(&mut tail, b"\n"));
    }

    #[test]
    fn pingoras_server_line_is_found_only_in_its_own_heads() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n";
        let at = pingora_server_line(bare).unwrap();
        let mut out = bare[..at].to_vec();
        out.extend_from_slice(&bare[at + PINGORA_SERVER.len()..]);
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            pingora_server_line(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n"),
            None
        );
        // A body that happens to hold the line is not a head.
        assert_eq!(
            pingora_server_line(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nx\r\nServer: Pingora\r\n"),
            None
        );
        assert_eq!(pingora_server_line(b"body\r\nServer: Pingora\r\n"), None);
    }

    /// Bare-LF heads end where httparse says they end, in one piece or split anywhere.
    #[test]
    fn bare_lf_heads_end_where_pingora_parses_them_to_end() {
        for head in [
            &b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\nHost: a\nContent-Length: 9\n\n"[..],
            b"GET /v2/ HTTP/1.1\r\nHost: a\n\r\n",
            b"GET /v2/ HTTP/1.1\nHost: a\r\n\n",
        ] {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let parsed = httparse::Request::new(&mut headers).parse(head).unwrap();
            assert_eq!(parsed, httparse::Status::Complete(head.len()));
            for i in 0..=head.len() {
                let mut tail = [0u8; 3];
                let first = head_ends(&mut tail, &head[..i]);
                let found = first || head_ends(&mut tail, &head[i..]);
                assert!(found, "{head:?} split at {i}");
                assert!(!first || i == head.len(), "{head:?} ended early at {i}");
            }
        }
        let mut tail = [0u8; 3];
        assert!(!head_ends(&mut tail, b"GET / HTTP/1.1\nA: b\n"));
        assert!(!head_ends(&mut tail, b"\r"));
        assert!(head_ends(&mut tail, b"\n"));
    }
}
