//! The origins: registry-shaped servers on loopback. A login origin answers `/v2/` with a 401
//! whose realm is on itself, blob GETs with a 307 to its data origin, manifests, uploads and
//! token requests, and echoes what it received on `/v2/echo/…`; a data origin behaves like Azure
//! Storage (400 with `Authorization`, 403 without a signature, Range, blobs of any size made of
//! [`pattern`]); a silent origin reads a request and never answers.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};

/// Byte `i` of every generated blob: a pattern a proxy cannot produce by accident.
pub fn pattern(i: u64) -> u8 {
    ((i.wrapping_mul(31).wrapping_add(7)) % 251) as u8
}

/// The longest run [`pattern_run`] gives.
const RUN: usize = 256 * 1024;

/// The pattern from byte `start` on, `len` (at most [`RUN`]) bytes of it: a slice of one table,
/// since the pattern repeats every 251 bytes (compared and copied whole, a 2 GiB blob costs the
/// test little time).
fn pattern_run(start: u64, len: usize) -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    let table = TABLE.get_or_init(|| (0..(251 + RUN) as u64).map(pattern).collect());
    let from = (start % 251) as usize;
    &table[from..from + len]
}

/// Whether `bytes` are the pattern from byte `start` on.
pub fn is_pattern(bytes: &[u8], start: u64) -> bool {
    bytes
        .chunks(RUN)
        .zip((start..).step_by(RUN))
        .all(|(chunk, at)| chunk == pattern_run(at, chunk.len()))
}

pub const SAS: &str = "sv=2020-10-02&se=2026-11-23T12%3A00%3A00Z&sr=b&sp=r&sig=AbC%2Bd%2Fe%3D";
pub const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
pub const MANIFEST: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Login,
    Data,
    /// Accepts connections, reads the request, never answers.
    Silent,
}

/// A request as an origin received it (its body counted, not kept).
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every request an origin answered, in order.
pub type Seen = Arc<Mutex<Vec<Req>>>;

pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Seen,
    /// The accept loop and every connection task, to stop the origin as a crash would.
    pub tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    /// Stops listening and drops every open connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[derive(Clone, Default)]
pub struct OriginOpts {
    pub data: Option<String>,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The signature this region's URLs carry (login) or demand (data).
    pub sig: Option<String>,
    /// Listen here instead of a fresh port (a restart).
    pub bind: Option<SocketAddr>,
}

/// The runtime every origin of the test binary runs on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn start_origin(kind: Kind, data_authority: Option<String>) -> Origin {
    start_origin_tls(kind, data_authority, None)
}

/// An origin behind TLS when `tls` holds a rustls server configuration.
pub fn start_origin_tls(
    kind: Kind,
    data_authority: Option<String>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> Origin {
    start_origin_opts(
        kind,
        OriginOpts {
            data: data_authority,
            tls,
            ..OriginOpts::default()
        },
    )
}

pub fn start_origin_opts(kind: Kind, opts: OriginOpts) -> Origin {
    let std_listener = match opts.bind {
        Some(bind) => TcpListener::bind(bind).unwrap(),
        None => crate::ports::listener(),
    };
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let tasks2 = tasks.clone();
    let accept = runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let opts = opts.clone();
            let conn = tokio::spawn(async move {
                let (data, sig) = (opts.data, opts.sig);
                match opts.tls {
                    None => {
                        let _ = serve_conn(sock, kind, addr, data, sig, seen).await;
                    }
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        if let Ok(stream) = acceptor.accept(sock).await {
                            let _ = serve_conn(stream, kind, addr, data, sig, seen).await;
                        }
                    }
                }
            });
            tasks2.lock().unwrap().push(conn.abort_handle());
        }
    });
    tasks.lock().unwrap().push(accept.abort_handle());
    Origin { addr, seen, tasks }
}

async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(
    sock: S,
    kind: Kind,
    me: SocketAddr,
    data: Option<String>,
    sig: Option<String>,
    seen: Seen,
) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(sock);
    let mut r = TokioBufReader::new(r);
    loop {
        let Some((req, body_ok)) = read_request(&mut r).await? else {
            return Ok(());
        };
        let resp = match kind {
            Kind::Login => respond_login(me, data.as_deref(), sig.as_deref(), &req, body_ok),
            Kind::Data => respond_data(sig.as_deref(), &req, body_ok),
            Kind::Silent => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return Ok(());
            }
        };
        let head_only = req.method == "HEAD";
        seen.lock().unwrap().push(req);
        write_response(&mut w, resp, head_only).await?;
    }
}

/// One request, its body (Content-Length or chunked) counted and checked against the pattern:
/// the request and whether every body byte matched. `None` when the connection ends first.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(Req, bool)>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Req {
        method,
        target,
        headers,
        body_len: 0,
    };
    let mut body_ok = true;
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let mut left = n;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let k = r.read(&mut buf[..left.min(65536) as usize]).await?;
            if k == 0 {
                return Ok(None);
            }
            body_ok &= is_pattern(&buf[..k], req.body_len);
            req.body_len += k as u64;
            left -= k as u64;
        }
    } else if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n =
                u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).await?;
                break;
            }
            let mut chunk = vec![0u8; n as usize];
            r.read_exact(&mut chunk).await?;
            body_ok &= is_pattern(&chunk, req.body_len);
            req.body_len += n;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    }
    Ok(Some((req, body_ok)))
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    resp: Resp,
    head_only: bool,
) -> std::io::Result<()> {
    match resp {
        Resp::Fixed {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            w.write_all(out.as_bytes()).await?;
            if !head_only {
                w.write_all(&body).await?;
            }
        }
        Resp::Blob {
            status,
            start,
            len,
            total,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\n"
            );
            if status == 206 {
                out.push_str(&format!(
                    "Content-Range: bytes {start}-{}/{total}\r\n",
                    start + len - 1
                ));
            }
            out.push_str("\r\n");
            w.write_all(out.as_bytes()).await?;
            if !head_only {
                let mut pos = start;
                let end = start + len;
                while pos < end {
                    let k = (end - pos).min(RUN as u64) as usize;
                    w.write_all(pattern_run(pos, k)).await?;
                    pos += k as u64;
                }
            }
        }
    }
    Ok(())
}

enum Resp {
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Blob {
        status: u16,
        start: u64,
        len: u64,
        total: u64,
    },
}

fn fixed(status: u16, headers: &[(&str, String)], body: &[u8]) -> Resp {
    Resp::Fixed {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        body: body.to_vec(),
    }
}

/// 200 with what the origin received: target, headers (names in lower case), body length and
/// whether the body was the pattern; and the server identity a registry's web server shows.
fn echo(req: &Req, body_ok: bool) -> Resp {
    let h: HashMap<String, String> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let j = serde_json::json!({"target": req.target, "headers": h, "body_len": req.body_len, "body_ok": body_ok});
    fixed(
        200,
        &[
            ("Content-Type", "application/json".into()),
            // What a registry's web server says of itself (the edge removes it).
            ("Server", "origin-httpd/1.0".into()),
            ("X-Powered-By", "origin-framework".into()),
        ],
        j.to_string().as_bytes(),
    )
}

/// What a registry's login host answers.
fn respond_login(
    me: SocketAddr,
    data: Option<&str>,
    sig: Option<&str>,
    req: &Req,
    body_ok: bool,
) -> Resp {
    let path = req.target.split('?').next().unwrap_or_default();
    // Registry-shaped paths that show what the edge forwarded (the gate lets only registry
    // routes through).
    if path.starts_with("/v2/echo/") {
        return echo(req, body_ok);
    }
    // A registry whose blob redirects name a storage host no data endpoint is configured for
    // (docs/operations.md, "why do my clients see a storage URL").
    if path.starts_with("/v2/team/unmapped/blobs/") {
        return fixed(
            307,
            &[(
                "Location",
                format!("http://storage.invalid:{}/docker/x/data?{SAS}", me.port()),
            )],
            b"",
        );
    }
    let api = (
        "Docker-Distribution-Api-Version",
        "registry/2.0".to_string(),
    );
    if path == "/v2/" {
        fixed(
            401,
            &[
                api,
                (
                    "WWW-Authenticate",
                    format!("Bearer realm=\"http://{me}/oauth2/token\",service=\"{me}\""),
                ),
            ],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        )
    } else if path.contains("/blobs/uploads/") && req.method == "POST" {
        fixed(
            202,
            &[
                api,
                (
                    "Location",
                    format!("http://{me}/v2/team/app/blobs/uploads/u-1?_state=St%2Bate"),
                ),
                ("Range", "0-0".into()),
            ],
            b"",
        )
    } else if path.contains("/blobs/uploads/") {
        fixed(
            202,
            &[
                api,
                (
                    "Location",
                    format!("http://{me}/v2/team/app/blobs/uploads/u-1?_state=next"),
                ),
                ("Range", format!("0-{}", req.body_len.saturating_sub(1))),
                ("X-Body-Ok", body_ok.to_string()),
                ("X-Body-Len", req.body_len.to_string()),
            ],
            b"",
        )
    } else if path.starts_with("/oauth2/token")
        && req.header("authorization") == Some("Basic d3Jvbmc6d3Jvbmc=")
    {
        fixed(
            401,
            &[],
            b"{\"details\":\"incorrect username or password\"}",
        )
    } else if path
        .ends_with("/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000")
    {
        fixed(404, &[api], b"{\"errors\":[{\"code\":\"BLOB_UNKNOWN\"}]}")
    } else if path.contains("/blobs/") {
        let data = data.unwrap_or_default();
        fixed(
            307,
            &[
                api,
                (
                    "Location",
                    format!(
                        "http://{data}/docker/registry/v2/blobs/sha256/6c/x/data?{}",
                        sig.map_or(SAS.to_string(), |s| format!(
                            "sv=2020-10-02&sr=b&sp=r&sig={s}"
                        ))
                    ),
                ),
            ],
            b"",
        )
    } else if path.contains("/manifests/") {
        fixed(
            200,
            &[
                api,
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                ),
                ("Docker-Content-Digest", DIGEST.into()),
            ],
            MANIFEST.as_bytes(),
        )
    } else if path == "/v2/_catalog" {
        fixed(
            200,
            &[
                api,
                (
                    "Link",
                    format!("<http://{me}/v2/_catalog?last=b&n=2>; rel=\"next\""),
                ),
            ],
            b"{\"repositories\":[\"a\",\"b\"]}",
        )
    } else {
        echo(req, body_ok)
    }
}

/// What Azure Storage answers.
fn respond_data(sig: Option<&str>, req: &Req, body_ok: bool) -> Resp {
    let path = req.target.split('?').next().unwrap_or_default();
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    if req.header("authorization").is_some() {
        return fixed(
            400,
            &[],
            b"<Error><Code>InvalidAuthenticationInfo</Code></Error>",
        );
    }
    if !query.contains("sig=") || sig.is_some_and(|s| !query.contains(&format!("sig={s}"))) {
        return fixed(
            403,
            &[],
            b"<Error><Code>AuthenticationFailed</Code></Error>",
        );
    }
    if path == "/echo" {
        return echo(req, body_ok);
    }
    let total: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    if let Some(range) = req.header("range").and_then(|r| r.strip_prefix("bytes=")) {
        let (a, b) = range.split_once('-').unwrap();
        let a: u64 = a.parse().unwrap();
        let b: u64 = b.parse::<u64>().unwrap_or(total - 1).min(total - 1);
        return Resp::Blob {
            status: 206,
            start: a,
            len: b - a + 1,
            total,
        };
    }
    Resp::Blob {
        status: 200,
        start: 0,
        len: total,
        total,
    }
}
