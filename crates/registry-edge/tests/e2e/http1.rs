//! HTTP/1.1 plumbing for the harness: message heads and body framing, a small server for the token
//! and data servers, and a relay that frames messages in both directions so that it can rewrite
//! (the login-side shim) or record (the client-side tap) response heads while bodies stream through.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite,
    AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
const BUF: usize = 256 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A message head: its start line and headers, as received.
#[derive(Clone, Debug)]
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(raw).map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {l:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Head { line, headers })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Method and target of a request line.
    pub fn request(&self) -> io::Result<(String, String)> {
        let mut p = self.line.split(' ');
        match (p.next(), p.next(), p.next()) {
            (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => {
                Ok((m.to_string(), t.to_string()))
            }
            _ => Err(invalid(format!("bad request line {:?}", self.line))),
        }
    }

    /// Status of a status line.
    pub fn status(&self) -> io::Result<u16> {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", self.line)))
    }
}

/// Reads one head, through its empty line. `None` on a clean end of stream before any byte.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(Some(head));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn chunked(h: &Head) -> bool {
    h.get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn content_length(h: &Head) -> io::Result<Option<u64>> {
    h.get("content-length")
        .map(|v| v.parse().map_err(|_| invalid("bad Content-Length")))
        .transpose()
}

pub fn request_framing(h: &Head) -> io::Result<Framing> {
    Ok(if chunked(h) {
        Framing::Chunked
    } else {
        content_length(h)?.map_or(Framing::None, Framing::Length)
    })
}

pub fn response_framing(method: &str, status: u16, h: &Head) -> io::Result<Framing> {
    Ok(
        if method == "HEAD" || status == 204 || status == 304 || status < 200 {
            Framing::None
        } else if chunked(h) {
            Framing::Chunked
        } else {
            content_length(h)?.map_or(Framing::UntilClose, Framing::Length)
        },
    )
}

/// Copies one body from `r` to `w` as framed, chunk lines and all, byte for byte.
pub async fn copy_body<R, W>(r: &mut R, w: &mut W, framing: Framing) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            let copied = tokio::io::copy_buf(&mut (&mut *r).take(n), w).await?;
            if copied != n {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Framing::UntilClose => {
            tokio::io::copy_buf(r, w).await?;
        }
        Framing::Chunked => loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            w.write_all(&line).await?;
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or_default();
            let n = u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if n == 0 {
                // Trailers, through the empty line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    w.write_all(&t).await?;
                    if t == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            // The chunk and its CRLF.
            let want = n + 2;
            let copied = tokio::io::copy_buf(&mut (&mut *r).take(want), w).await?;
            if copied != want {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        },
    }
    w.flush().await
}

/// Reads one request body whole (the servers here only take small bodies).
async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, framing: Framing) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    copy_body(r, &mut out, framing).await?;
    if framing == Framing::Chunked {
        // Strip the chunk framing copied verbatim above.
        let mut body = Vec::new();
        let mut rest = &out[..];
        while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(
                std::str::from_utf8(&rest[..pos])
                    .unwrap_or("0")
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .map_err(|_| invalid("bad chunk size"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&rest[pos + 2..pos + 2 + n]);
            rest = &rest[pos + 2 + n + 2..];
        }
        return Ok(body);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Server

pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of a file from `start`, streamed.
    File {
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Body::Bytes(body.into()),
        }
    }
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

fn bind() -> (std::net::TcpListener, SocketAddr) {
    let l = crate::ports::listener();
    l.set_nonblocking(true).expect("nonblocking listener");
    let addr = l.local_addr().expect("local address");
    (l, addr)
}

/// Serves `handler` on a free loopback port, HTTP/1.1 with keepalive.
pub fn serve(rt: &tokio::runtime::Runtime, handler: Handler) -> SocketAddr {
    let (std_listener, addr) = bind();
    rt.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        while let Ok((sock, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = server_conn(sock, handler).await;
            });
        }
    });
    addr
}

async fn server_conn(sock: TcpStream, handler: Handler) -> io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::with_capacity(BUF, r);
    loop {
        let Some(raw) = read_head(&mut r).await? else {
            return Ok(());
        };
        let head = Head::parse(&raw)?;
        let (method, target) = head.request()?;
        if head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = read_body(&mut r, request_framing(&head)?).await?;
        let close = head
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let head_only = method == "HEAD";
        let resp = handler(Request {
            method,
            target,
            headers: head.headers,
            body,
        });
        let len = match &resp.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        };
        let mut out = format!("HTTP/1.1 {} R\r\nContent-Length: {len}\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes()).await?;
        if !head_only {
            match resp.body {
                Body::Bytes(b) => w.write_all(&b).await?,
                Body::File { path, start, len } => {
                    let mut f = tokio::fs::File::open(&path).await?;
                    f.seek(io::SeekFrom::Start(start)).await?;
                    let mut f = BufReader::with_capacity(BUF, f).take(len);
                    let n = tokio::io::copy_buf(&mut f, &mut w).await?;
                    if n != len {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        w.flush().await?;
        if close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Relay

/// One response as it passed through a relay.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    pub target: String,
    pub status: u16,
    /// The upstream's `Location`, before any change.
    pub upstream_location: Option<String>,
    /// What the relay appended to `Location` (the shim's SAS query), if anything.
    pub appended: Option<String>,
    /// The head as the relay forwarded it.
    pub head: Head,
}

pub type Exchanges = Arc<Mutex<Vec<Exchange>>>;

/// Given the path of a blob redirect's `Location`, the query to append (the shim's SAS).
pub type Signer = Arc<dyn Fn(&str) -> String + Send + Sync>;

#[derive(Clone)]
pub enum RelayKind {
    /// Login side, between the edge and the registry: appends a SAS query to the `Location` of
    /// blob redirects, as ACR's are signed; every other byte passes unchanged.
    Shim(Signer),
    /// Client side, between a client and the edge: changes nothing, records every response head.
    Tap,
}

/// A relay on a free loopback port towards `upstream`.
pub fn relay(
    rt: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    kind: RelayKind,
    log: Exchanges,
) -> SocketAddr {
    let (std_listener, addr) = bind();
    rt.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        while let Ok((sock, _)) = listener.accept().await {
            let (kind, log) = (kind.clone(), log.clone());
            tokio::spawn(async move {
                let _ = relay_conn(sock, upstream, kind, log).await;
            });
        }
    });
    addr
}

async fn relay_conn(
    client: TcpStream,
    upstream: SocketAddr,
    kind: RelayKind,
    log: Exchanges,
) -> io::Result<()> {
    // A client that tries TLS on a plain port first (skopeo with --tls-verify=false does): refuse
    // at once, so that it falls back to plain HTTP without waiting for a handshake timeout.
    let mut first = [0u8; 1];
    if client.peek(&mut first).await? == 0 || first[0] == 0x16 {
        return Ok(());
    }
    let up = TcpStream::connect(upstream).await?;
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let requests = tokio::spawn(relay_requests(cr, uw, tx));
    let result = relay_responses(ur, cw, rx, kind, log).await;
    requests.abort();
    result
}

async fn relay_requests(
    cr: impl AsyncRead + Unpin,
    mut uw: impl AsyncWrite + Unpin,
    tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
) -> io::Result<()> {
    let mut cr = BufReader::with_capacity(BUF, cr);
    loop {
        let Some(raw) = read_head(&mut cr).await? else {
            let _ = uw.shutdown().await;
            return Ok(());
        };
        let head = Head::parse(&raw)?;
        let _ = tx.send(head.request()?);
        uw.write_all(&raw).await?;
        copy_body(&mut cr, &mut uw, request_framing(&head)?).await?;
    }
}

async fn relay_responses(
    ur: impl AsyncRead + Unpin,
    mut cw: impl AsyncWrite + Unpin,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    kind: RelayKind,
    log: Exchanges,
) -> io::Result<()> {
    let mut ur = BufReader::with_capacity(BUF, ur);
    loop {
        let Some(raw) = read_head(&mut ur).await? else {
            let _ = cw.shutdown().await;
            return Ok(());
        };
        let head = Head::parse(&raw)?;
        let status = head.status()?;
        if (100..200).contains(&status) && status != 101 {
            cw.write_all(&raw).await?;
            continue;
        }
        let (method, target) = rx
            .recv()
            .await
            .ok_or_else(|| invalid("a response without a request"))?;
        let upstream_location = head.get("location").map(str::to_string);
        let (out, appended) = match &kind {
            RelayKind::Shim(sign) => shim_head(&raw, &head, &method, &target, status, sign),
            RelayKind::Tap => (raw, None),
        };
        let forwarded = Head::parse(&out)?;
        log.lock().expect("relay log").push(Exchange {
            method: method.clone(),
            target,
            status,
            upstream_location,
            appended,
            head: forwarded,
        });
        cw.write_all(&out).await?;
        let framing = response_framing(&method, status, &head)?;
        copy_body(&mut ur, &mut cw, framing).await?;
        if framing == Framing::UntilClose {
            let _ = cw.shutdown().await;
            return Ok(());
        }
    }
}

/// The shim's only change: a blob redirect's `Location` gets the SAS query appended. The raw head
/// is otherwise forwarded as received, line by line.
fn shim_head(
    raw: &[u8],
    head: &Head,
    method: &str,
    target: &str,
    status: u16,
    sign: &Signer,
) -> (Vec<u8>, Option<String>) {
    let path = target.split('?').next().unwrap_or_default();
    let blob = path.contains("/blobs/sha256:") && !path.contains("/blobs/uploads/");
    let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
    let Some(location) = head.get("location") else {
        return (raw.to_vec(), None);
    };
    if !(blob && redirect && (method == "GET" || method == "HEAD")) {
        return (raw.to_vec(), None);
    }
    // The storage path of the redirect: after scheme://authority, before any query.
    let after_scheme = location.split_once("://").map_or(location, |(_, r)| r);
    let loc_path = after_scheme
        .find('/')
        .map_or("/", |i| &after_scheme[i..])
        .split('?')
        .next()
        .unwrap_or("/");
    let sas = sign(loc_path);
    let sep = if location.contains('?') { '&' } else { '?' };
    let new_location = format!("{location}{sep}{sas}");
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len() + sas.len() + 1);
    for line in text.split_inclusive("\r\n") {
        match line.split_once(':') {
            Some((name, _)) if name.trim().eq_ignore_ascii_case("location") => {
                out.push_str(&format!("{name}: {new_location}\r\n"));
            }
            _ => out.push_str(line),
        }
    }
    (out.into_bytes(), Some(sas))
}

// ---------------------------------------------------------------------------------------------
// TLS pass-through tap: the bytes are not touched; the ClientHello is read for its SNI and ALPN.

#[derive(Clone, Debug, Default)]
pub struct ClientHello {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

pub type Hellos = Arc<Mutex<Vec<ClientHello>>>;

pub fn tls_tap(rt: &tokio::runtime::Runtime, upstream: SocketAddr, log: Hellos) -> SocketAddr {
    let (std_listener, addr) = bind();
    rt.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let mut record = vec![0u8; 5];
                if sock.read_exact(&mut record).await.is_err() {
                    return;
                }
                let len = u16::from_be_bytes([record[3], record[4]]) as usize;
                let mut body = vec![0u8; len];
                if sock.read_exact(&mut body).await.is_err() {
                    return;
                }
                if record[0] == 0x16 {
                    log.lock()
                        .expect("hello log")
                        .push(parse_client_hello(&body).unwrap_or_default());
                }
                record.extend_from_slice(&body);
                if up.write_all(&record).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
            });
        }
    });
    addr
}

/// SNI and ALPN of a ClientHello handshake message (the body of its first TLS record).
fn parse_client_hello(b: &[u8]) -> Option<ClientHello> {
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(a)
        }
        fn u8(&mut self) -> Option<usize> {
            self.take(1).map(|b| b[0] as usize)
        }
        fn u16(&mut self) -> Option<usize> {
            self.take(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        }
    }
    let mut c = Cur(b);
    if c.u8()? != 1 {
        return None;
    }
    c.take(3)?; // handshake length
    c.take(2 + 32)?; // version, random
    let n = c.u8()?;
    c.take(n)?; // session id
    let n = c.u16()?;
    c.take(n)?; // cipher suites
    let n = c.u8()?;
    c.take(n)?; // compression methods
    let n = c.u16()?;
    let mut ext = Cur(c.take(n)?);
    let mut hello = ClientHello::default();
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let n = ext.u16()?;
        let mut data = Cur(ext.take(n)?);
        match ty {
            0 => {
                data.u16()?;
                data.u8()?;
                let n = data.u16()?;
                hello.sni = Some(String::from_utf8_lossy(data.take(n)?).into_owned());
            }
            16 => {
                let n = data.u16()?;
                let mut list = Cur(data.take(n)?);
                while !list.0.is_empty() {
                    let n = list.u8()?;
                    hello
                        .alpn
                        .push(String::from_utf8_lossy(list.take(n)?).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}
