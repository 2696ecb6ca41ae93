//! [`Conn`], a downstream connection as pingora's HTTP code reads and writes it, over a
//! [`Transport`] (TCP, or TLS over it):
//!
//! - reads: a byte read while waiting for a request is served first; every request head, and
//!   the HTTP/2 preface, is read under deadlines, `idle` for its first byte and `header_read` for
//!   the whole head, armed only when a read has to wait; the head ends where pingora's parser
//!   (httparse) ends it ([`head_ends`], [`blank_line`]), bare-LF forms included, so that a body
//!   is never read under the head's deadline;
//! - writes: at most [`WRITE_HOLD`] bytes are held back (a response head waiting for its body)
//!   and leave with the next write in one vectored system call; the buffer exists only while a
//!   response is written;
//! - the `Server: Pingora` line of pingora's own bare answers is dropped ([`pingora_server_line`]);
//! - a write of the [`sendfile`] placeholder sends the armed file's (or pipe's) bytes instead
//!   (plain TCP);
//! - the stream traits pingora asks of a `Box<dyn IO>` (shutdown, id, TLS and socket digests;
//!   no peeking, no timing digest).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::sendfile::{self, Slot};
use super::Settings;

/// Most bytes a connection holds back to send with the next write (a response head waiting
/// for its body). pingora's own stream held as many; a write that does not fit goes out at
/// once, with what is held, in one vectored system call.
pub(super) const WRITE_HOLD: usize = 1460;

/// What a [`Conn`] runs over: a TCP socket, or TLS over one.
pub(super) trait Transport:
    AsyncRead + AsyncWrite + Unpin + Send + Sync + fmt::Debug + 'static
{
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
    /// Sends up to `len` bytes of an armed file or pipe ([`sendfile`]); only TCP can.
    fn poll_send_file(
        &self,
        _cx: &mut Context<'_>,
        _source: sendfile::Source,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a file body on a transport the kernel cannot send files on",
        )))
    }
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
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        source: sendfile::Source,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        sendfile::poll_send_file(self, cx, source, len)
    }
}

/// A downstream connection as pingora's HTTP code sees it (`Box<dyn IO>`).
pub(super) struct Conn<T> {
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
    pub(super) body_read: bool,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    idle: Duration,
    header_read: Duration,
    socket: Arc<SocketDigest>,
    ssl: Option<Arc<SslDigest>>,
    /// The protocol the TLS handshake agreed on.
    pub(super) alpn: Option<ALPN>,
    /// The file placeholder writes stand for ([`sendfile`]); made when first asked for.
    file: std::sync::OnceLock<Slot>,
}

impl<T: Transport> Conn<T> {
    pub(super) fn new(
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
            file: std::sync::OnceLock::new(),
        }
    }

    /// The connection's armed file, shared with a [`sendfile::FileSender`].
    pub(super) fn file_slot(&self) -> &Slot {
        self.file.get_or_init(Slot::default)
    }

    /// The next bytes read begin a request head (or the HTTP/2 preface).
    pub(super) fn new_head(&mut self) {
        self.done = false;
        self.body_read = false;
        self.armed = false;
        self.started = false;
        self.tail = [0; 3];
    }

    /// The next request head began with `bytes`, read with the last request (pipelined): its
    /// deadline and its end are found as if they had just been read.
    pub(crate) fn head_bytes(&mut self, bytes: &[u8]) {
        self.seen(bytes);
    }

    /// Between requests: nothing is held for writing, so the buffer goes.
    pub(super) fn release_buffers(&mut self) {
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
    pub(super) fn poll_next_byte(
        &mut self,
        cx: &mut Context<'_>,
        verify: bool,
    ) -> Poll<io::Result<bool>> {
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
        if let Some(offset) = sendfile::placeholder_offset(buf) {
            // The head goes first, then the file's (or pipe's) bytes in place of the
            // placeholder's.
            let source = sendfile::armed_at(me.file.get(), offset)?;
            ready!(me.poll_drain(cx))?;
            return me.io.poll_send_file(cx, source, buf.len());
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
pub(super) mod tests;
