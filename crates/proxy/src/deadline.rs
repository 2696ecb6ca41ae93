//! Deadlines on request heads (slowloris). pingora 0.9 only bounds each single read by the
//! keepalive timeout (a fixed 60 s before the first request), so a client that sends one byte
//! just before every timeout keeps a connection forever. [`DeadlineApp`] wraps every downstream
//! stream in [`HeaderDeadline`], which allows `idle` for the first byte of a request head, then
//! `header_read` in total for the rest of the head, up to the blank line that ends it; a read
//! past either deadline fails and the connection is dropped. After the head the stream is a
//! plain pass-through until pingora hands the connection back for the next request. On HTTP/2
//! (TLS with ALPN) the "head" is the connection preface.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct HeaderDeadline {
    inner: Stream,
    idle: Duration,
    limit: Duration,
    /// The deadline in force (for the first byte, then for the rest of the head) when `armed`;
    /// one timer per connection, reset for each head.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// Bytes read ahead by [`Peek::try_peek`] (the wait for a request's first byte), served
    /// before anything else.
    held: [u8; HOLD],
    held_len: u8,
    /// A byte of the current head has arrived (the timer is the header deadline).
    started: bool,
    /// The head has ended: pass everything through.
    done: bool,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    /// Set when pingora hands the connection back for another request.
    rearm: AtomicBool,
    /// `registry_edge_http_open_connections`, decremented when the connection is dropped.
    open: prometheus::IntGauge,
}

impl Drop for HeaderDeadline {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl HeaderDeadline {
    /// Wraps a new connection, or rearms the wrapper of a connection that comes back for its
    /// next request (never nesting wrappers).
    pub fn wrap(
        stream: Stream,
        idle: Duration,
        limit: Duration,
        open: &prometheus::IntGauge,
    ) -> Stream {
        if let Some(me) = stream.as_any().downcast_ref::<HeaderDeadline>() {
            me.rearm.store(true, Ordering::Relaxed);
            return stream;
        }
        open.inc();
        Box::new(HeaderDeadline {
            open: open.clone(),
            inner: stream,
            idle,
            limit,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + idle)),
            armed: false,
            held: [0; HOLD],
            held_len: 0,
            started: false,
            done: false,
            tail: [0; 3],
            rearm: AtomicBool::new(false),
        })
    }

    /// Looks for the blank line that ends the head in `new`, continuing from the last bytes seen.
    fn scan(&mut self, new: &[u8]) {
        if head_ends(&mut self.tail, new) {
            self.done = true;
            self.armed = false;
        }
    }

    /// A byte of a head arrived: from now on the header deadline applies.
    fn head_started(&mut self) {
        if !self.started {
            self.started = true;
            let deadline = Instant::now() + self.limit;
            self.timer.as_mut().reset(deadline);
            self.armed = true;
        }
    }
}

impl fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("done", &self.done)
            .finish()
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.rearm.swap(false, Ordering::Relaxed) {
            me.done = false;
            me.armed = false;
            me.started = false;
            me.tail = [0; 3];
        }
        if me.held_len > 0 {
            let n = usize::from(me.held_len).min(buf.remaining());
            let before = buf.filled().len();
            buf.put_slice(&me.held[..n]);
            me.held.copy_within(n.., 0);
            me.held_len -= n as u8;
            if !me.done && n > 0 {
                me.head_started();
                me.scan(&buf.filled()[before..]);
            }
            return Poll::Ready(Ok(()));
        }
        if me.done {
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        if !me.armed {
            let deadline = Instant::now() + me.idle;
            me.timer.as_mut().reset(deadline);
            me.armed = true;
        }
        if me.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request headers not received in time",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                me.head_started();
                me.scan(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Waits for and reads the first bytes of the next head into the wrapper's own small buffer,
/// where the next read (or peek) finds them again: the wait for a request costs no buffer of
/// pingora's. Longer peeks go to the stream under the wrapper, unless bytes are held here, which
/// that stream cannot show (then: not supported, `false`).
#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if buf.len() > HOLD {
            if self.held_len > 0 {
                return Ok(false);
            }
            return self.inner.try_peek(buf).await;
        }
        while usize::from(self.held_len) < buf.len() {
            let have = usize::from(self.held_len);
            let (inner, held) = (&mut self.inner, &mut self.held);
            let mut rb = ReadBuf::new(&mut held[have..buf.len()]);
            std::future::poll_fn(|cx| Pin::new(&mut *inner).poll_read(cx, &mut rb)).await?;
            let n = rb.filled().len();
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.held_len += n as u8;
        }
        buf.copy_from_slice(&self.held[..buf.len()]);
        Ok(true)
    }
}

/// Whether `new` completes the blank line that ends a head, given the `tail` (last 3 bytes) seen
/// before it; updates `tail`.
fn head_ends(tail: &mut [u8; 3], new: &[u8]) -> bool {
    // Across the boundary: the last 3 bytes seen and the first 3 new ones.
    let mut edge = [0u8; 6];
    edge[..3].copy_from_slice(tail);
    let k = new.len().min(3);
    edge[3..3 + k].copy_from_slice(&new[..k]);
    if edge[..3 + k].windows(4).any(|w| w == b"\r\n\r\n")
        || memchr::memmem::find(new, b"\r\n\r\n").is_some()
    {
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

/// Bytes [`HeaderDeadline`] can hold for a peek.
const HOLD: usize = 8;

/// Wraps a pingora app so that every connection it serves reads its request heads under the
/// deadline, and runs HTTP/1 connections' request loop itself: between requests (and before the
/// first) a connection waits for its next byte here, holding only its stream, and pingora's
/// per-request state (its session, buffers and the proxy's future, tens of KiB) exists only
/// while a request is being served. HTTP/2 connections go to pingora's own loop.
pub struct DeadlineApp<A> {
    pub inner: Arc<A>,
    pub open_connections: prometheus::IntGauge,
    pub idle: Duration,
    pub header_read: Duration,
}

impl<A: HttpServerApp + Send + Sync + 'static> DeadlineApp<A> {
    /// Until the first byte of the next request head: `false` when the client closed, the
    /// `idle` deadline passed or the server is shutting down.
    async fn next_head(&self, stream: &mut Stream, shutdown: &ShutdownWatch) -> bool {
        let mut byte = [0u8; 1];
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            biased;
            r = tokio::time::timeout(self.idle, stream.try_peek(&mut byte)) => matches!(r, Ok(Ok(true))),
            _ = shutdown.changed() => false,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for DeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream =
            HeaderDeadline::wrap(stream, self.idle, self.header_read, &self.open_connections);
        let options = self.inner.server_options();
        let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1))
            && !options.is_some_and(|o| o.h2c || o.force_custom);
        if !h1 {
            return self.inner.process_new(stream, shutdown).await;
        }
        // pingora's HTTP/1 loop (apps::HttpServerApp's ServerApp), with the wait outside it.
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            if !self.next_head(&mut stream, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if first {
                first = false;
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
            } else if let Some(s) = settings.take() {
                s.apply_to_session(&mut session);
            }
            let (next, persistent) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
            // Rearms the head deadlines of the same wrapper for the next request.
            stream =
                HeaderDeadline::wrap(next, self.idle, self.header_read, &self.open_connections);
            settings = persistent;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::head_ends;

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
}
