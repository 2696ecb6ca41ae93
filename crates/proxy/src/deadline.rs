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
use pingora::apps::ServerApp;
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
    /// The deadline in force: for the first byte, then for the rest of the head.
    timer: Option<Pin<Box<Sleep>>>,
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
            timer: None,
            started: false,
            done: false,
            tail: [0; 3],
            rearm: AtomicBool::new(false),
        })
    }

    fn scan(&mut self, new: &[u8]) {
        let mut window = [0u8; 4];
        window[..3].copy_from_slice(&self.tail);
        for &b in new {
            window.copy_within(1.., 0);
            window[3] = b;
            if &window == b"\r\n\r\n" {
                self.done = true;
                self.timer = None;
                return;
            }
        }
        self.tail.copy_from_slice(&window[1..]);
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
            me.timer = None;
            me.started = false;
            me.tail = [0; 3];
        }
        if me.done {
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        let idle = me.idle;
        let timer = me
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)));
        {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request headers not received in time",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let filled = buf.filled();
            if filled.len() > before {
                if !me.started {
                    me.started = true;
                    let deadline = Instant::now() + me.limit;
                    me.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
                }
                let new = &filled[before..];
                me.scan(new);
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

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Wraps a pingora app so that every connection it serves reads its request heads under the
/// deadline.
pub struct DeadlineApp<A> {
    pub inner: Arc<A>,
    pub open_connections: prometheus::IntGauge,
    pub idle: Duration,
    pub header_read: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .process_new(
                HeaderDeadline::wrap(stream, self.idle, self.header_read, &self.open_connections),
                shutdown,
            )
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
