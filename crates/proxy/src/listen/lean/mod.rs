//! The lean HTTP/1 session (`server.http1: lean`): registry-edge's own request reader and
//! response framer, run under the same `HttpProxy<Edge>` through pingora's custom-session hook
//! (`ServerSession::new_custom`). Every `ProxyHttp` phase is the same as with pingora's session;
//! what differs is how a request head and body are read and how a response is framed:
//!
//! - the head is parsed by httparse ([`head::parse_request`]) into one `RequestHeader` whose
//!   fields are slices of the head's own buffer, and checked by the stricter rules in [`head`];
//! - body bytes are slices of the read buffer, not copies; a `Content-Length` body and chunked
//!   data are handed on as they arrive;
//! - the response head is written into [`Conn`]'s write buffer and leaves with the body's first
//!   bytes in one system call (as with pingora's session, through the same `Conn`);
//! - pipelined requests are served in order: bytes read past a request's end start the next one;
//! - no protocol upgrades (a `101` ends the exchange with an error).
//!
//! pingora hands no connection back from a custom session (`finish` returns no stream), so a
//! session that may keep its connection puts it, with any bytes read past its request, in a
//! slot shared with the connection's loop ([`serve_lean`]), which serves the next request from
//! there.

pub mod differential;
pub mod head;

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use pingora::apps::HttpServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::body_buffer::FixedBuffer;
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::{Digest, GetSocketDigest, Ssl};
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use self::head::{Chunked, Framing, Parsed, Refused, Step};
use super::conn::{Conn, Transport};
use super::sendfile::FileSender;
use super::Settings;

/// Most body bytes asked of one read, and handed on at a time.
const BODY_READ: usize = 64 * 1024;
/// Room reserved for a request head's read.
const HEAD_READ: usize = 4096;
/// A request body kept for a retry up to this size (pingora's limit).
const RETRY_BUFFER: usize = 64 * 1024;

/// A connection handed back by a finished session: the stream and what was read past the
/// request.
pub(super) struct Back<T> {
    conn: Box<Conn<T>>,
    buf: BytesMut,
}

type Slot<T> = Arc<Mutex<Option<Back<T>>>>;

/// The HTTP/1 request loop with the lean session.
pub(super) async fn serve_lean<A: HttpServerApp + Send + Sync + 'static, T: Transport>(
    app: &Arc<A>,
    mut conn: Box<Conn<T>>,
    settings: &Settings,
    mut shutdown: ShutdownWatch,
) {
    let slot: Slot<T> = Arc::new(Mutex::new(None));
    let mut buf = BytesMut::new();
    let mut served: u64 = 0;
    let mut first = true;
    loop {
        conn.release_buffers();
        if *shutdown.borrow() {
            return;
        }
        conn.new_head();
        if buf.is_empty() {
            buf = BytesMut::new();
            // As pingora's loop: the wait holds only the socket.
            if !super::h1::next_request(&mut conn, first, settings, &mut shutdown).await {
                return;
            }
        } else {
            // A pipelined request: its first bytes came with the last one.
            conn.head_bytes(&buf);
        }
        first = false;
        let parsed = match read_head(&mut conn, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(HeadError::Refused(Refused(why))) => {
                log::debug!("lean HTTP/1: request refused with 400: {why}");
                let _ = conn.write_all(&bad_request()).await;
                let _ = conn.flush().await;
                return;
            }
            Err(HeadError::Io(e)) => {
                // As pingora's session: a head cut short is the client's error, logged (and
                // counted by the log filter as pingora's own line would be).
                let etype = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ErrorType::ConnectionClosed
                } else {
                    ErrorType::ReadError
                };
                let e = because(etype, "while reading request headers", e);
                log::error!(target: LOG_TARGET, "Fail to proxy: {e}, downstream session type: lean");
                return;
            }
        };
        served += 1;
        let keepalive = parsed.keepalive && served < settings.max_requests && !*shutdown.borrow();
        let session = Lean::new(conn, buf, parsed, keepalive, slot.clone(), shutdown.clone());
        let serve = app.process_new_http(ServerSession::new_custom(Box::new(session)), &shutdown);
        Box::pin(serve).await;
        let back = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(back) = back else {
            return;
        };
        conn = back.conn;
        buf = back.buf;
    }
}

/// A chunked body's framing error, as pingora names it (its `INVALID_CHUNK`).
const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");

/// The log target of the loop's own lines, which [`crate::logfilter`] reads as pingora's.
pub(crate) const LOG_TARGET: &str = "registry_edge_proxy::listen::lean";

/// An error of the client's side (what pingora's proxy answers and logs as such).
fn down<T>(etype: ErrorType, context: impl Into<pingora::ImmutStr>) -> Result<T> {
    Err(Error::explain(etype, context).into_down())
}

fn because(etype: ErrorType, context: &'static str, cause: std::io::Error) -> Box<Error> {
    Error::because(etype, context, cause).into_down()
}

fn down_because<T>(etype: ErrorType, context: &'static str, cause: std::io::Error) -> Result<T> {
    Err(because(etype, context, cause))
}

/// pingora's bare 400 (its `Server` line aside), closing the connection.
fn bad_request() -> Vec<u8> {
    let date = pingora::protocols::http::date::get_cached_date();
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n",
    );
    out
}

enum HeadError {
    Refused(Refused),
    Io(std::io::Error),
}

/// Reads until `buf` starts with a whole request head. `Ok(None)`: the client closed before
/// sending a byte of it.
async fn read_head<T: Transport>(
    conn: &mut Conn<T>,
    buf: &mut BytesMut,
) -> std::result::Result<Option<Parsed>, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(p) = head::parse_request(buf).map_err(HeadError::Refused)? {
                return Ok(Some(p));
            }
        }
        buf.reserve(HEAD_READ);
        match conn.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(HeadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed mid-head",
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Where the request body stands.
enum BodyIn {
    Length(u64),
    Chunked(Chunked),
    Done,
}

/// How the response body is framed, once its head is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyOut {
    Unset,
    Length(u64),
    Chunked,
    /// Until the connection closes (no length given to an HTTP/1.0 or unframed response).
    Close,
    Done,
}

/// One request and its response on a lean HTTP/1 connection.
pub(super) struct Lean<T> {
    /// `None` once handed back to the loop.
    conn: Option<Box<Conn<T>>>,
    /// Bytes read and not yet used: the body's next bytes, then the next request's.
    buf: BytesMut,
    req: Box<RequestHeader>,
    raw_head: Bytes,
    empty_body: bool,
    body_in: BodyIn,
    body_read: usize,
    body_out: BodyOut,
    body_sent: usize,
    response: Option<Box<ResponseHeader>>,
    keepalive: bool,
    half_closed: bool,
    digest: Digest,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    retry: Option<FixedBuffer>,
    slot: Slot<T>,
    shutdown: ShutdownWatch,
}

impl<T: Transport> Lean<T> {
    fn new(
        conn: Box<Conn<T>>,
        buf: BytesMut,
        parsed: Parsed,
        keepalive: bool,
        slot: Slot<T>,
        shutdown: ShutdownWatch,
    ) -> Self {
        let digest = Digest {
            ssl_digest: conn.get_ssl_digest(),
            socket_digest: conn.get_socket_digest(),
            ..Digest::default()
        };
        let mut req = parsed.header;
        // Over plain TCP the blob cache's hits are sent by the kernel, as with pingora's
        // session: the connection's file sender rides with the request head (sendfile.rs).
        // Only a GET is answered with a file's bytes; other requests skip the extension map's
        // allocation.
        if req.method == Method::GET {
            if let Some(tcp) = (conn.as_ref() as &dyn Any).downcast_ref::<Conn<TcpStream>>() {
                req.extensions_mut().insert(FileSender::on(tcp));
            }
        }
        let body_in = match parsed.framing {
            Framing::Empty => BodyIn::Done,
            Framing::Length(n) => BodyIn::Length(n),
            Framing::Chunked => BodyIn::Chunked(Chunked::Size),
        };
        Lean {
            conn: Some(conn),
            buf,
            req,
            raw_head: parsed.raw,
            empty_body: parsed.framing == Framing::Empty,
            body_in,
            body_read: 0,
            body_out: BodyOut::Unset,
            body_sent: 0,
            response: None,
            keepalive,
            half_closed: false,
            digest,
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
            retry: None,
            slot,
            shutdown,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn<T>> {
        match self.conn.as_deref_mut() {
            Some(c) => Ok(c),
            None => down(ErrorType::H1Error, "the connection was handed back"),
        }
    }

    /// Reads more bytes into `buf`; an end of stream is an error (the body is unfinished).
    async fn fill(&mut self) -> Result<()> {
        let timeout = self.read_timeout;
        self.buf.reserve(BODY_READ);
        let mut buf = std::mem::take(&mut self.buf);
        let conn = self.conn()?;
        let read = conn.read_buf(&mut buf);
        let n = match timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => {
                    self.buf = buf;
                    return down(ErrorType::ReadTimedout, "reading a request body");
                }
            },
            None => read.await,
        };
        self.buf = buf;
        match n {
            Ok(0) => {
                self.half_closed = true;
                down(ErrorType::ConnectionClosed, "the client closed mid-body")
            }
            Ok(_) => Ok(()),
            Err(e) => down_because(ErrorType::ReadError, "reading a request body", e),
        }
    }

    async fn next_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match &mut self.body_in {
                BodyIn::Done => return Ok(None),
                BodyIn::Length(left) => {
                    if self.buf.is_empty() {
                        self.fill().await?;
                        continue;
                    }
                    let n = (self.buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.body_in = BodyIn::Done;
                    }
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                BodyIn::Chunked(state) => match state.step(&mut self.buf, BODY_READ) {
                    Ok(Step::Data(d)) => return Ok(Some(d)),
                    Ok(Step::Framing) => {}
                    Ok(Step::More) => self.fill().await?,
                    Ok(Step::End) => {
                        self.body_in = BodyIn::Done;
                        return Ok(None);
                    }
                    Err(Refused(why)) => {
                        self.keepalive = false;
                        return down(INVALID_CHUNK, why);
                    }
                },
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let timeout = self.write_timeout;
        let conn = self.conn()?;
        let write = conn.write_all(bytes);
        match timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(r) => r.map_err(|e| because(ErrorType::WriteError, "writing a response", e)),
                Err(_) => down(ErrorType::WriteTimedout, "writing a response"),
            },
            None => write
                .await
                .map_err(|e| because(ErrorType::WriteError, "writing a response", e)),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        let timeout = self.write_timeout;
        let conn = self.conn()?;
        let flush = conn.flush();
        match timeout {
            Some(t) => match tokio::time::timeout(t, flush).await {
                Ok(r) => r.map_err(|e| because(ErrorType::WriteError, "flushing a response", e)),
                Err(_) => down(ErrorType::WriteTimedout, "flushing a response"),
            },
            None => flush
                .await
                .map_err(|e| because(ErrorType::WriteError, "flushing a response", e)),
        }
    }

    async fn write_head(&mut self, mut resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self
            .response
            .as_ref()
            .is_some_and(|r| !r.status.is_informational())
        {
            log::warn!("a response head was written twice; the second is dropped");
            return Ok(());
        }
        let status = resp.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.keepalive = false;
            return down(ErrorType::H1Error, "no protocol upgrade on lean HTTP/1");
        }
        let mut out = BytesMut::with_capacity(512);
        if status.is_informational() {
            serialize(&resp, &mut out)?;
            self.write(&out).await?;
            self.flush().await?;
            self.response = Some(resp);
            return Ok(());
        }
        if !matches!(self.body_in, BodyIn::Done) || *self.shutdown.borrow() {
            // Answered before its body was read, or the server is stopping: the connection
            // ends with this response.
            self.keepalive = false;
        }
        self.body_out = response_framing(&self.req.method, &resp);
        if self.body_out == BodyOut::Close {
            self.keepalive = false;
        }
        resp.insert_header(DATE, pingora::protocols::http::date::get_cached_date())?;
        resp.insert_header(
            CONNECTION,
            if self.keepalive {
                "keep-alive"
            } else {
                "close"
            },
        )?;
        serialize(&resp, &mut out)?;
        self.write(&out).await?;
        self.response = Some(resp);
        match self.body_out {
            _ if end => self.finish_body().await?,
            // The head waits (at most `WRITE_HOLD` bytes) to leave with the body's first bytes.
            BodyOut::Length(n) if n > 0 => {}
            // No body follows, or one of unknown length that may be produced slowly.
            _ => self.flush().await?,
        }
        Ok(())
    }

    async fn body(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self.body_out {
            BodyOut::Unset => down(ErrorType::H1Error, "a response body before its head"),
            BodyOut::Done => Ok(()),
            BodyOut::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                if n < data.len() {
                    log::warn!(
                        "response body longer than its Content-Length: {} bytes dropped",
                        data.len() - n
                    );
                }
                if n > 0 {
                    self.write(&data[..n]).await?;
                }
                self.body_sent += n;
                self.body_out = BodyOut::Length(left - n as u64);
                Ok(())
            }
            BodyOut::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                self.write(size.as_bytes()).await?;
                self.write(data).await?;
                self.write(b"\r\n").await?;
                self.body_sent += data.len();
                Ok(())
            }
            BodyOut::Close => {
                self.write(data).await?;
                self.body_sent += data.len();
                Ok(())
            }
        }
    }

    async fn finish_body(&mut self) -> Result<()> {
        match self.body_out {
            BodyOut::Unset | BodyOut::Done => return Ok(()),
            BodyOut::Length(0) => {}
            BodyOut::Length(left) => {
                self.keepalive = false;
                self.body_out = BodyOut::Done;
                return Error::e_explain(
                    ErrorType::H1Error,
                    format!("response body ended {left} bytes short of its Content-Length"),
                );
            }
            BodyOut::Chunked => self.write(b"0\r\n\r\n").await?,
            BodyOut::Close => self.keepalive = false,
        }
        self.body_out = BodyOut::Done;
        self.flush().await
    }

    async fn drain(&mut self) -> Result<()> {
        while self.next_body().await?.is_some() {}
        Ok(())
    }

    async fn close(&mut self) {
        self.keepalive = false;
        if let Some(c) = self.conn.as_deref_mut() {
            let _ = c.flush().await;
            let _ = c.shutdown().await;
        }
    }
}

/// How a response to `method` is framed: none for `HEAD`, `204` and `304`; else as its head
/// says, chunked before a length, and until the connection closes without either (as pingora).
fn response_framing(method: &Method, resp: &ResponseHeader) -> BodyOut {
    if method == Method::HEAD
        || resp.status == StatusCode::NO_CONTENT
        || resp.status == StatusCode::NOT_MODIFIED
    {
        return BodyOut::Length(0);
    }
    let chunked = resp
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        return BodyOut::Chunked;
    }
    let mut length: Option<u64> = None;
    for v in resp.headers.get_all(CONTENT_LENGTH) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(item.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (n, length) {
                (None, _) => return BodyOut::Close,
                (Some(n), Some(l)) if n != l => return BodyOut::Close,
                (Some(n), _) => length = Some(n),
            }
        }
    }
    length.map_or(BodyOut::Close, BodyOut::Length)
}

/// A response head on the wire, as pingora writes it.
fn serialize(resp: &ResponseHeader, out: &mut BytesMut) -> Result<()> {
    out.put_slice(match resp.version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        Version::HTTP_11 | Version::HTTP_2 => b"HTTP/1.1 ",
        _ => return down(ErrorType::H1Error, "response version"),
    });
    out.put_slice(resp.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = resp.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    resp.header_to_h1_wire(out);
    out.put_slice(b"\r\n");
    Ok(())
}

#[async_trait]
impl<T: Transport> CustomSession for Lean<T> {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let data = self.next_body().await?;
        if let Some(d) = &data {
            self.body_read += d.len();
            if let Some(r) = self.retry.as_mut() {
                r.write_to_buffer(d);
            }
        }
        Ok(data)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        match self.drain_timeout {
            Some(t) => match tokio::time::timeout(t, self.drain()).await {
                Ok(r) => r,
                Err(_) => down(ErrorType::ReadTimedout, "draining a request body"),
            },
            None => self.drain().await,
        }
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.write_head(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.write_head(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.body(&data).await?;
        if end {
            self.finish_body().await?;
        }
        Ok(())
    }

    async fn write_trailers(&mut self, _trailers: HeaderMap) -> Result<()> {
        // As pingora's HTTP/1 session: trailers are not sent.
        Ok(())
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end = false;
        for task in tasks {
            end = match task {
                HttpTask::Header(h, e) => {
                    self.write_head(h, false).await?;
                    e
                }
                HttpTask::Body(d, e) => {
                    if let Some(d) = d {
                        self.body(&d).await?;
                    }
                    e
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(ErrorType::H1Error, "upgraded body on lean HTTP/1")
                }
                HttpTask::Trailer(_) | HttpTask::Done => true,
                HttpTask::Failed(e) => {
                    let _ = self.flush().await;
                    return Err(e);
                }
            };
        }
        if end {
            self.finish_body().await?;
        }
        Ok(end || self.body_out == BodyOut::Done)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        // The method only: a target may carry secrets (the edge's own summary names the
        // request, redacted).
        format!("{} (lean HTTP/1)", self.req.method)
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.close().await;
    }

    async fn abandon(&mut self, _ctx: &str) {
        // Closing without the rest of a length-framed body, or without a chunked body's last
        // chunk: the client cannot take it for a whole response.
        self.close().await;
    }

    fn is_body_done(&mut self) -> bool {
        matches!(self.body_in, BodyIn::Done)
    }

    async fn finish(&mut self) -> Result<()> {
        self.finish_body().await?;
        if !self.keepalive || self.half_closed || self.response.is_none() {
            self.close().await;
            return Ok(());
        }
        self.drain_request_body().await?;
        if let Some(conn) = self.conn.take() {
            let buf = std::mem::take(&mut self.buf);
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Back { conn, buf });
        }
        Ok(())
    }

    fn is_body_empty(&mut self) -> bool {
        self.empty_body
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if !(no_body_expected || matches!(self.body_in, BodyIn::Done)) {
            return self.read_body_bytes().await;
        }
        let closed = || {
            Error::e_explain(
                ErrorType::ConnectionClosed,
                "the client closed before the response was complete",
            )
        };
        if self.half_closed {
            return closed();
        }
        if !self.buf.is_empty() {
            // The next request is here already; it waits for this response.
            return std::future::pending().await;
        }
        self.buf.reserve(HEAD_READ);
        let mut buf = std::mem::take(&mut self.buf);
        let n = self.conn()?.read_buf(&mut buf).await;
        self.buf = buf;
        match n {
            Ok(0) => {
                self.half_closed = true;
                self.keepalive = false;
                closed()
            }
            // Pipelined bytes of the next request: kept for it.
            Ok(_) => std::future::pending().await,
            Err(e) => down_because(ErrorType::ReadError, "while waiting for a response", e),
        }
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        Some(&mut self.digest)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.peer_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.local_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.raw_head.clone()
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(FixedBuffer::new(RETRY_BUFFER));
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry.as_ref().is_some_and(FixedBuffer::is_truncated)
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        let r = self.retry.as_ref()?;
        if r.is_truncated() {
            None
        } else {
            r.get_buffer()
        }
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>> {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
