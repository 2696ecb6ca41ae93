//! registry-edge as a running process in front of registry-shaped origins started here: a login
//! origin (401 with a realm on itself, 307 to the data origin, manifests, uploads) and a data origin
//! that behaves like Azure Storage (400 with `Authorization`, 403 without a signature, Range, large
//! blobs). Real sockets on loopback; curl where TLS and HTTP/2 matter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/ports.rs"]
mod ports;

/// The process log: secrets redacted on every error path, client floods rate-limited.
#[path = "proxy/h2.rs"]
mod h2;
#[path = "proxy/identity.rs"]
mod identity;
#[path = "proxy/logs.rs"]
mod logs;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ports::free_port;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};

// ---------------------------------------------------------------------------------------------
// Origins

/// Byte `i` of every generated blob: a pattern a proxy cannot produce by accident.
fn pattern(i: u64) -> u8 {
    ((i.wrapping_mul(31).wrapping_add(7)) % 251) as u8
}

const SAS: &str = "sv=2020-10-02&se=2026-11-23T12%3A00%3A00Z&sr=b&sp=r&sig=AbC%2Bd%2Fe%3D";
const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
const MANIFEST: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Login,
    Data,
    /// Accepts connections, reads the request, never answers.
    Silent,
}

struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body_len: u64,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Seen = Arc<Mutex<Vec<Req>>>;

struct Origin {
    addr: SocketAddr,
    seen: Seen,
    /// The accept loop and every connection task, to stop the origin as a crash would.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    /// Stops listening and drops every open connection.
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[derive(Clone, Default)]
struct OriginOpts {
    data: Option<String>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The signature this region's URLs carry (login) or demand (data).
    sig: Option<String>,
    /// Listen here instead of a fresh port (a restart).
    bind: Option<SocketAddr>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn start_origin(kind: Kind, data_authority: Option<String>) -> Origin {
    start_origin_tls(kind, data_authority, None)
}

/// An origin behind TLS when `tls` holds a rustls server configuration.
fn start_origin_tls(
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

fn start_origin_opts(kind: Kind, opts: OriginOpts) -> Origin {
    let bind = opts.bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    let std_listener = TcpListener::bind(bind).unwrap();
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
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
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
        // Request body: Content-Length or chunked, counted and checked against the pattern.
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
                    return Ok(());
                }
                for (j, b) in buf[..k].iter().enumerate() {
                    body_ok &= *b == pattern(req.body_len + j as u64);
                }
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
                let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                if n == 0 {
                    let mut end = String::new();
                    r.read_line(&mut end).await?;
                    break;
                }
                let mut chunk = vec![0u8; n as usize];
                r.read_exact(&mut chunk).await?;
                for (j, b) in chunk.iter().enumerate() {
                    body_ok &= *b == pattern(req.body_len + j as u64);
                }
                req.body_len += n;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf).await?;
            }
        }
        if kind == Kind::Silent {
            tokio::time::sleep(Duration::from_secs(120)).await;
            return Ok(());
        }
        let resp = respond(kind, me, data.as_deref(), sig.as_deref(), &req, body_ok);
        let head_only = req.method == "HEAD";
        seen.lock().unwrap().push(req);
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
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut pos = start;
                    let end = start + len;
                    while pos < end {
                        let k = (end - pos).min(buf.len() as u64) as usize;
                        for (j, b) in buf[..k].iter_mut().enumerate() {
                            *b = pattern(pos + j as u64);
                        }
                        w.write_all(&buf[..k]).await?;
                        pos += k as u64;
                    }
                }
            }
        }
    }
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

fn respond(
    kind: Kind,
    me: SocketAddr,
    data: Option<&str>,
    sig: Option<&str>,
    req: &Req,
    body_ok: bool,
) -> Resp {
    let path = req.target.split('?').next().unwrap_or_default();
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let echo = || {
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
    };
    match kind {
        Kind::Login => {
            // Registry-shaped paths that show what the edge forwarded (the gate lets only
            // registry routes through).
            if path.starts_with("/v2/echo/") {
                return echo();
            }
            // A registry whose blob redirects name a storage host no data endpoint is
            // configured for (docs/operations.md, "why do my clients see a storage URL").
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
            } else if path.ends_with(
                "/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ) {
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
                echo()
            }
        }
        Kind::Data => {
            if req.header("authorization").is_some() {
                return fixed(
                    400,
                    &[],
                    b"<Error><Code>InvalidAuthenticationInfo</Code></Error>",
                );
            }
            if !query.contains("sig=") || sig.is_some_and(|s| !query.contains(&format!("sig={s}")))
            {
                return fixed(
                    403,
                    &[],
                    b"<Error><Code>AuthenticationFailed</Code></Error>",
                );
            }
            if path == "/echo" {
                return echo();
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
        Kind::Silent => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// The edge process

struct Certs {
    ca: PathBuf,
    /// Server configurations for TLS origins: one for `localhost`, one for another name.
    localhost: Arc<tokio_rustls::rustls::ServerConfig>,
    wrong_name: Arc<tokio_rustls::rustls::ServerConfig>,
}

fn origin_tls(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(cfg)
}

fn make_certs(dir: &Path) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "registry-edge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for name in ["registry.test", "data.test"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Certs {
        ca: ca_path,
        localhost: origin_tls(&issuer, "localhost"),
        wrong_name: origin_tls(&issuer, "other.example"),
    }
}

struct Edge {
    child: Child,
    dir: PathBuf,
    http: u16,
    tls: u16,
    redirect: u16,
    v6: Option<u16>,
    admin: u16,
    certs: Certs,
    login: Origin,
    data: Origin,
    token_seen: Seen,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// The plain listener's options used unless a test needs others.
const HTTP_OPTS: &str = "    timeouts: { header_read: 5s, idle: 5s, write: 5s }\n    max_request_header_bytes: 4096\n    max_requests_per_connection: 50\n";

fn start_edge(name: &str, http_opts: &str) -> Edge {
    start_edge_with(name, http_opts, "")
}

/// `extra`: top-level YAML added to the configuration (geoip, clients, access).
fn start_edge_with(name: &str, http_opts: &str, extra: &str) -> Edge {
    start_edge_full(name, http_opts, extra, "1s")
}

fn start_edge_full(name: &str, http_opts: &str, extra: &str, grace_period: &str) -> Edge {
    start_edge_opts(
        name,
        &EdgeOpts {
            http_opts,
            extra,
            grace_period,
            ..EdgeOpts::default()
        },
    )
}

/// What a test may change in the edge's configuration.
#[derive(Clone, Copy)]
struct EdgeOpts<'a> {
    /// Options of the plain listener (indented as `HTTP_OPTS`).
    http_opts: &'a str,
    /// Options of the TLS listener.
    tls_opts: &'a str,
    /// Top-level YAML.
    extra: &'a str,
    grace_period: &'a str,
    /// The registry's read timeout.
    read_timeout: &'a str,
    /// Keys added to the `registry` block.
    registry_opts: &'a str,
    /// A further data endpoint: its public host, served by the data origin under another
    /// authority (`localhost:<port>`).
    data_host: Option<&'a str>,
}

impl Default for EdgeOpts<'_> {
    fn default() -> Self {
        EdgeOpts {
            http_opts: HTTP_OPTS,
            tls_opts: "",
            extra: "",
            grace_period: "1s",
            read_timeout: "2s",
            registry_opts: "",
            data_host: None,
        }
    }
}

fn start_edge_opts(name: &str, o: &EdgeOpts<'_>) -> Edge {
    let EdgeOpts {
        http_opts,
        tls_opts,
        extra,
        grace_period,
        read_timeout,
        registry_opts,
        data_host,
    } = *o;
    let dir = std::env::temp_dir().join(format!("registry-edge-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = make_certs(&dir);
    let data = start_origin(Kind::Data, None);
    let login = start_origin(Kind::Login, Some(data.addr.to_string()));
    let silent = start_origin(Kind::Silent, None);
    let token = start_origin(Kind::Login, None);
    let tls_data = start_origin_tls(Kind::Data, None, Some(certs.localhost.clone()));
    let tls_wrong = start_origin_tls(Kind::Data, None, Some(certs.wrong_name.clone()));
    let refused = free_port();
    let (http, tls, redirect, admin) = (free_port(), free_port(), free_port(), free_port());
    let v6 = ipv6_available().then(|| {
        TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let v6_listener = v6
        .map(|p| format!("  - address: \"[::1]:{p}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        r#"version: 1
server:
  threads: 2
  grace_period: {grace_period}
  graceful_shutdown_timeout: 1s
  pid_file: {dir}/edge.pid
  upgrade_sock: {dir}/upgrade.sock
listeners:
  - address: "127.0.0.1:{http}"
{http_opts}  - address: "127.0.0.1:{tls}"
    tls:
      certificates:
        - {{ cert: registry.test.pem, key: registry.test.key }}
        - {{ cert: data.test.pem, key: data.test.key }}
{tls_opts}  - address: "127.0.0.1:{redirect}"
    redirect_to_https: true
{v6_listener}admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{login}"
  public_host: registry.test
  tls: false
  token_server: "{token}"
  connect_timeout: 1s
  read_timeout: {read_timeout}
{registry_opts}  data_endpoints:
    - {{ region: eastus, endpoint: "{data}", public_host: data.test, peers: ["127.0.0.1:{refused}", "{data}"] }}
    - {{ region: westus, endpoint: "127.0.0.1:{refused}", public_host: down.test }}
    - {{ region: centralus, endpoint: "{silent}", public_host: slow.test }}
    - {{ region: tlsregion, endpoint: "localhost:{tls_data_port}", public_host: tls-data.test, tls: true,
         ca_file: ca.pem }}
    - {{ region: wrongname, endpoint: "localhost:{tls_wrong_port}", public_host: wrong-data.test, tls: true,
         ca_file: ca.pem, peers: ["{tls_wrong}"] }}
    - {{ region: systemroots, endpoint: "localhost:{tls_data_port2}", public_host: roots-data.test, tls: true,
         peers: ["{tls_data}"] }}
{data_extra}{extra}rewrites:
  - name: frame-policy
    action: {{ set_header: X-Frame-Options, value: DENY }}
logging:
  access_log: {dir}/access.log
"#,
        dir = dir.display(),
        login = login.addr,
        data = data.addr,
        silent = silent.addr,
        token = token.addr,
        tls_data = tls_data.addr,
        tls_data_port = tls_data.addr.port(),
        tls_data_port2 = free_port(),
        tls_wrong = tls_wrong.addr,
        tls_wrong_port = tls_wrong.addr.port(),
        data_extra = data_host.map_or(String::new(), |h| format!(
            "    - {{ region: extra, endpoint: \"localhost:{}\", public_host: {h} }}\n",
            data.addr.port()
        )),
    );
    let child = spawn_edge(&dir, &yaml);
    let edge = Edge {
        child,
        dir,
        http,
        tls,
        redirect,
        v6,
        admin,
        certs,
        login,
        data,
        token_seen: token.seen.clone(),
    };
    wait_ready(&edge, Some(edge.tls));
    edge
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: exact bytes, one connection reused on purpose.

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn read_response(r: &mut impl BufRead, head: bool) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head {
        return resp;
    }
    if let Some(n) = resp
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap())
    {
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).unwrap();
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    }
    resp
}

fn send(stream: &mut TcpStream, raw: &str) -> Response {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    read_response(&mut r, raw.starts_with("HEAD "))
}

fn get(port: u16, host: &str, target: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    send(
        &mut s,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"),
    )
}

fn assert_oci_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "{r:?}"
    );
    assert_eq!(r.json()["errors"][0]["code"], code, "{r:?}");
    assert!(r.header("server").is_none(), "no Server: Pingora: {r:?}");
}

fn connection_alive(s: &mut TcpStream, host: &str) -> bool {
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_ok()
        && {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).is_ok() && line.starts_with("HTTP/1.1 ")
        }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests. One edge process serves all of them, in sequence, so that the suite stays quick.

#[test]
fn edge_core() {
    let edge = start_edge("core", HTTP_OPTS);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    // The realm and the blob Location name the client's public origin; the SAS query survives
    // byte for byte; `service=` is the public host (mapped back in token requests).
    let r = get(edge.http, &host, "/v2/", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"http://{host}/oauth2/token\",service=\"registry.test\"")
    );
    let r = get(
        edge.http,
        &host,
        &format!("/v2/team/app/blobs/{DIGEST}"),
        "",
    );
    assert_eq!(r.status, 307);
    assert_eq!(r.header("content-length"), Some("0"));
    let location = r.header("location").unwrap().to_string();
    assert_eq!(
        location,
        format!("http://{data_host}/docker/registry/v2/blobs/sha256/6c/x/data?{SAS}")
    );

    // Following it, with the Authorization a careless client resends, still works: the edge
    // drops the header towards the data endpoint (which would answer 400 otherwise).
    let target = location
        .strip_prefix(&format!("http://{data_host}"))
        .unwrap();
    let r = get(
        edge.http,
        &data_host,
        target,
        "Authorization: Bearer secret\r\n",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i as u64)));
    let seen = edge.data.seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.target, target, "query kept byte for byte");
    assert!(last.header("authorization").is_none());
    assert_eq!(
        last.header("host"),
        Some(edge.data.addr.to_string().as_str())
    );
    drop(seen);

    // Range → 206 with the exact Content-Range and bytes.
    let r = get(
        edge.http,
        &data_host,
        &format!("/blob?{SAS}&size=1000000"),
        "Range: bytes=1000-1999\r\n",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/1000000"));
    assert_eq!(r.body.len(), 1000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(1000 + i as u64)));

    // HEAD on a manifest keeps the digest and type.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!("HEAD /v2/team/app/manifests/latest HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(DIGEST));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        r.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );

    // Link pagination is rewritten.
    let r = get(edge.http, &host, "/v2/_catalog", "");
    assert_eq!(
        r.header("link"),
        Some(format!("<http://{host}/v2/_catalog?last=b&n=2>; rel=\"next\"").as_str())
    );

    // Forwarding headers: set by the edge, a client's X-Forwarded-For is not believed.
    let r = get(
        edge.http,
        &host,
        "/v2/echo/app/manifests/latest",
        "X-Forwarded-For: 203.0.113.9\r\nAuthorization: Basic dTpw\r\n",
    );
    let j = r.json();
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-forwarded-host"], host.as_str());
    assert_eq!(j["headers"]["host"], edge.login.addr.to_string().as_str());
    assert_eq!(
        j["headers"]["authorization"], "Basic dTpw",
        "the login side keeps credentials"
    );

    // Token paths go to the token server; the rest of the login host to the login server.
    let r = get(
        edge.http,
        &host,
        "/oauth2/token?scope=repository:team/app:pull&service=registry.test",
        "",
    );
    let j = r.json();
    // The target is rebuilt from the decoded parameters, re-encoded, with the registry's own
    // `service` in place of the public host.
    assert_eq!(
        j["target"],
        format!(
            "/oauth2/token?scope=repository%3Ateam%2Fapp%3Apull&service={}",
            edge.login.addr.to_string().replace(':', "%3A")
        )
    );
    assert_ne!(j["headers"]["host"], edge.login.addr.to_string().as_str());
    let r = get(edge.http, &host, "/v2/echo/app/manifests/x", "");
    assert_eq!(
        r.json()["headers"]["host"],
        edge.login.addr.to_string().as_str()
    );
    // A path that is no registry route is answered by the edge, never forwarded.
    let r = get(edge.http, &host, "/oauth2/other", "");
    assert_oci_error(&r, 404, "NAME_UNKNOWN");

    // A chunked upload streams through; the absolute upload Location is rewritten.
    let r = uploads(&edge, &host);
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-body-ok"), Some("true"));
    assert_eq!(
        r.header("x-body-len"),
        Some((3 * 1024 * 1024 + 17).to_string().as_str())
    );
    assert_eq!(
        r.header("location"),
        Some(format!("http://{host}/v2/team/app/blobs/uploads/u-1?_state=next").as_str())
    );

    // Misdirected requests: 421 with an OCI body, and the connection stays usable.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(&mut s, "GET /v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_oci_error(&r, 421, "UNSUPPORTED");
    // The user's response rules apply to the edge's own answers as to proxied ones.
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        get(edge.http, &host, "/v2/", "").header("x-frame-options"),
        Some("DENY")
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let r = send(&mut s, "GET /v2/ HTTP/1.1\r\n\r\n");
    assert_oci_error(&r, 421, "UNSUPPORTED");
    let r = send(
        &mut s,
        "GET /v2/a/../b/manifests/x HTTP/1.1\r\nHost: registry.test\r\n\r\n",
    );
    assert_oci_error(&r, 400, "NAME_INVALID");
    let r = send(
        &mut s,
        "GET /v2/a%2Fb/manifests/x HTTP/1.1\r\nHost: registry.test\r\n\r\n",
    );
    assert_oci_error(&r, 400, "NAME_INVALID");
    assert!(
        connection_alive(&mut s, &host),
        "refusals keep the connection"
    );

    // Headers over the listener's limit: 431, OCI body.
    let big = "x".repeat(5000);
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n"),
    );
    assert_oci_error(&r, 431, "UNSUPPORTED");

    // Upstream refuses → 502; upstream never answers → 504 after the read timeout; both with an
    // OCI body, and other routes unaffected.
    let t = Instant::now();
    let r = get(
        edge.http,
        &format!("down.test:{}", edge.http),
        &format!("/x?{SAS}"),
        "",
    );
    assert_oci_error(&r, 502, "UNAVAILABLE");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let t = Instant::now();
    let r = get(
        edge.http,
        &format!("slow.test:{}", edge.http),
        &format!("/x?{SAS}"),
        "",
    );
    assert_oci_error(&r, 504, "UNAVAILABLE");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(get(edge.http, &host, "/v2/", "").status, 401);

    // Garbage on the socket: a 400 or a closed connection, and the process lives on.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x00\x00\x00\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost registry.test\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 400"),
            "junk {junk:?} → {text:?}"
        );
    }
    assert_eq!(get(edge.http, &host, "/v2/", "").status, 401);

    // The redirect listener: GET/HEAD → 308 to https, others refused; unknown hosts never
    // become an open redirect.
    let r = get(
        edge.redirect,
        "registry.test",
        "/v2/team/app/manifests/1?x=y",
        "",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://registry.test/v2/team/app/manifests/1?x=y")
    );
    let mut s = TcpStream::connect(("127.0.0.1", edge.redirect)).unwrap();
    let r = send(
        &mut s,
        "POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_oci_error(&r, 405, "UNSUPPORTED");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = get(edge.redirect, "evil.example", "/", "");
    assert_eq!(r.status, 421);

    // TLS: the certificate is chosen by SNI, verified against the test CA; HTTP/2 and HTTP/1.1.
    let ca = edge.certs.ca.to_str().unwrap();
    for (name, path) in [("registry.test", "/v2/"), ("data.test", "/echo?sig=1")] {
        for version in ["--http2", "--http1.1"] {
            let url = format!("https://{name}:{}{path}", edge.tls);
            let resolve = format!("{name}:{}:127.0.0.1", edge.tls);
            let (out, err) = curl(&[
                version,
                "--cacert",
                ca,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ]);
            let want = if name == "registry.test" {
                "401"
            } else {
                "200"
            };
            let v = if version == "--http2" { "2" } else { "1.1" };
            assert_eq!(out, format!("{v} {want}"), "{name} {version}: {err}");
        }
    }
    // Over TLS the public URLs are https and carry the client's port.
    let resolve = format!("registry.test:{}:127.0.0.1", edge.tls);
    let (out, err) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("https://registry.test:{}/v2/", edge.tls),
    ]);
    assert!(
        out.contains(&format!(
            "realm=\"https://registry.test:{}/oauth2/token\"",
            edge.tls
        )),
        "{out}{err}"
    );
    // HTTP/2 carries only `:authority`, no Host: it routes the same (curl sends no Host on h2).
    let (out, err) = curl(&[
        "--http2",
        "-v",
        "--cacert",
        ca,
        "--resolve",
        &format!("data.test:{}:127.0.0.1", edge.tls),
        &format!("https://data.test:{}/echo?sig=1", edge.tls),
    ]);
    assert!(err.contains("[:authority: data.test:"), "{err}");
    assert!(!err.contains("[host: "), "{err}");
    assert!(out.contains("\"x-forwarded-host\":\"data.test:"), "{out}");

    // The server's suite order: AES-128-GCM although OpenSSL offers AES-256-GCM first; a client
    // that offers only another suite still gets it.
    for (ciphers, want) in [
        (None, "TLSv1.3 / TLS_AES_128_GCM_SHA256"),
        (
            Some("TLS_AES_256_GCM_SHA384"),
            "TLSv1.3 / TLS_AES_256_GCM_SHA384",
        ),
        (
            Some("TLS_CHACHA20_POLY1305_SHA256"),
            "TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let mut args = vec!["-v", "--cacert", ca, "--resolve", &resolve];
        if let Some(c) = ciphers {
            args.extend(["--tls13-ciphers", c]);
        }
        let url = format!("https://registry.test:{}/v2/", edge.tls);
        args.extend(["-o", "/dev/null", &url]);
        let (_, err) = curl(&args);
        assert!(err.contains(want), "{ciphers:?}: {err}");
    }

    // Plain HTTP to the TLS listener: the handshake fails, is counted, and the connection closes.
    let series = format!(
        "registry_edge_tls_handshake_failures_total{{listener=\"127.0.0.1:{}\",reason=\"error\"}}",
        edge.tls
    );
    let before = sample(&metrics_text(edge.admin), &series);
    let mut s = TcpStream::connect(("127.0.0.1", edge.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the edge closes the connection: {closed:?}");
    assert!(
        !rest.starts_with(b"HTTP/"),
        "no HTTP answer on a TLS listener"
    );
    assert_eq!(sample(&metrics_text(edge.admin), &series), before + 1.0);

    // TLS to the upstream: SNI and verification against the configured CA; a certificate for
    // another name, or the system roots that do not know the test CA, fail as 502.
    let r = get(
        edge.http,
        &format!("tls-data.test:{}", edge.http),
        "/echo?sig=1",
        "",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let upstream_host = r.json()["headers"]["host"].as_str().unwrap().to_string();
    assert!(upstream_host.starts_with("localhost:"), "{upstream_host}");
    for h in ["wrong-data.test", "roots-data.test"] {
        let r = get(edge.http, &format!("{h}:{}", edge.http), "/echo?sig=1", "");
        assert_oci_error(&r, 502, "UNAVAILABLE");
    }

    // Connect failures of GET are retried on the next peer: one of data.test's two peers
    // refuses. Each client keeps to one peer order; sixteen clients make it all but certain
    // (1 - 2^-16) that one starts with the refusing peer, and none of them sees a failure.
    for i in 0..16 {
        let r = get_from(
            &format!("127.0.7.{}", i + 1),
            edge.http,
            &data_host,
            &format!("/echo?{SAS}"),
            "",
        );
        assert_eq!(r.status, 200);
    }

    // IPv6 listener.
    if let Some(p) = edge.v6 {
        let mut s = TcpStream::connect(("::1", p)).unwrap();
        let r = send(&mut s, "GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n");
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("realm=\"http://registry.test/oauth2/token\""));
    }

    // Admin: health, readiness, metrics from the registry the edge created.
    assert_eq!(get(edge.admin, "a", "/healthz", "").status, 200);
    assert_eq!(get(edge.admin, "a", "/readyz", "").status, 200);
    let m = String::from_utf8(get(edge.admin, "a", "/metrics", "").body).unwrap();
    for needle in [
        "registry_edge_http_requests_total{decision=\"proxied\",method=\"GET\",route=\"login\",status_class=\"4xx\"}",
        "registry_edge_rewrites_applied_total{rule=\"registry:location\"} ",
        "registry_edge_upstream_connect_errors_total{upstream=\"data:westus\"} ",
        "registry_edge_http_edge_responses_total{reason=\"unknown_host\"} ",
        "registry_edge_ready 1",
        "registry_edge_upstream_retries_total{upstream=\"data:eastus\"} ",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }
    assert!(!m.contains("registry_edge_upstream_connect_errors_total{upstream=\"data:westus\"} 0"));
    assert!(!m.contains("registry_edge_upstream_retries_total{upstream=\"data:eastus\"} 0"));

    // The access log has one JSON line per request; the query's values are redacted unless
    // known to be harmless (a SAS signature is not).
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(edge.dir.join("access.log")).unwrap();
    assert!(log.lines().count() >= 20, "{log}");
    for line in log.lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(j["status"].is_number());
    }
    assert!(!log.contains("AbC"), "no SAS signature in the access log");
    assert!(log.contains("sig=REDACTED"), "{log}");
    assert!(
        !log.contains("secret") && !log.contains("dTpw"),
        "no credentials in the log"
    );
}

/// POST then a chunked PATCH of 3 MiB + 17 bytes of the pattern, on one connection.
fn uploads(edge: &Edge, host: &str) -> Response {
    let (mut s, r) = start_upload(edge.http, host);
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    assert_eq!(
        loc,
        format!("http://{host}/v2/team/app/blobs/uploads/u-1?_state=St%2Bate")
    );
    let target = loc.strip_prefix(&format!("http://{host}")).unwrap();
    s.write_all(
        format!("PATCH {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let total: u64 = 3 * 1024 * 1024 + 17;
    let mut pos = 0u64;
    while pos < total {
        let n = (total - pos).min(100_000);
        let chunk: Vec<u8> = (pos..pos + n).map(pattern).collect();
        s.write_all(format!("{n:x}\r\n").as_bytes()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
        pos += n;
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    read_response(&mut r, false)
}

#[test]
fn large_blob_to_a_slow_reader_keeps_rss_flat() {
    let edge = start_edge("rss", HTTP_OPTS);
    let data_host = format!("data.test:{}", edge.http);
    let size: u64 = 2 << 30;
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    s.write_all(
        format!("GET /blob?{SAS}&size={size} HTTP/1.1\r\nHost: {data_host}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::with_capacity(64 * 1024, s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim_end().is_empty() {
            break;
        }
    }
    let pid = edge.child.id();
    let before = rss_kib(pid);
    let mut max = before;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut mismatch = false;
    let mut reads = 0u64;
    while got < size {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended at {got}");
        if buf[..n]
            .iter()
            .enumerate()
            .any(|(i, b)| *b != pattern(got + i as u64))
        {
            mismatch = true;
        }
        got += n as u64;
        reads += 1;
        // A reader slower than the origin: the edge must hold the origin back, not buffer.
        if reads % 64 == 0 {
            std::thread::sleep(Duration::from_millis(8));
            max = max.max(rss_kib(pid));
        }
    }
    assert!(!mismatch, "bytes differ from the origin's");
    let growth_mib = max.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, max {max} KiB during a {size}-byte download");
    assert!(
        growth_mib < 48,
        "RSS grew by {growth_mib} MiB while streaming {size} bytes"
    );
}

#[test]
fn downstream_protection() {
    let edge = start_edge(
        "protect",
        "    timeouts: { header_read: 2s, idle: 3s, write: 2s }\n    max_requests_per_connection: 3\n",
    );
    let host = format!("registry.test:{}", edge.http);

    // Slowloris: a head trickled one byte at a time, each byte well inside the idle timeout,
    // is cut at the total header deadline.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let t = Instant::now();
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Slow: {}",
        "a".repeat(100)
    );
    let mut cut = false;
    for b in head.bytes() {
        if s.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        if t.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let mut buf = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut buf);
    assert!(
        cut || t.elapsed() < Duration::from_secs(8),
        "a trickled head was not cut: {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cut late: {:?}",
        t.elapsed()
    );
    assert!(!String::from_utf8_lossy(&buf).contains("401"));

    // A head sent at a normal pace on a reused connection is not affected by earlier requests.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    for _ in 0..2 {
        let r = send(
            &mut s,
            &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_eq!(r.status, 401);
        std::thread::sleep(Duration::from_millis(2500));
    }
    // The third request is the last one this connection may carry.
    let r = send(
        &mut s,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(r.status, 401);
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the connection closes after max_requests_per_connection"
    );

    // Keepalive idle timeout: an idle connection is closed after `idle`.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    let r = send(
        &mut s,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    );
    assert_eq!(r.status, 401);
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_secs(6),
        "idle close after {idle:?}"
    );

    // A reader that stops reading a large body is dropped after the write timeout, and the
    // edge stays responsive.
    let mut s = TcpStream::connect(("127.0.0.1", edge.http)).unwrap();
    s.write_all(
        format!(
            "GET /blob?{SAS}&size={} HTTP/1.1\r\nHost: data.test:{}\r\n\r\n",
            1u64 << 30,
            edge.http
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(_) => break true,
        }
        if total > (900 << 20) {
            break false;
        }
    };
    assert!(closed, "a stalled reader's connection was kept open");
    assert!(
        total < (512 << 20),
        "read {total} bytes from a stalled connection"
    );
    assert_eq!(get(edge.http, &host, "/v2/", "").status, 401);
}

// ---------------------------------------------------------------------------------------------
// GeoIP and the access policy. Clients come from several addresses of 127.0.0.0/8, which the
// test's own MMDB places in countries.

#[derive(serde::Serialize)]
struct GeoRecord {
    country: GeoCode,
    continent: GeoContinent,
}
#[derive(serde::Serialize)]
struct GeoCode {
    iso_code: &'static str,
}
#[derive(serde::Serialize)]
struct GeoContinent {
    code: &'static str,
}

/// 127.0.1.0/24 US, 127.0.2.0/24 CU, 127.0.3.0/24 `third` (DE, or CU after a "sanctions update"),
/// 127.0.9.0/24 (the trusted proxies) US; everything else unknown.
fn mmdb(third: &'static str) -> Vec<u8> {
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    for (net, iso, cont) in [
        ("127.0.1.0/24", "US", "NA"),
        ("127.0.2.0/24", "CU", "NA"),
        ("127.0.3.0/24", third, "EU"),
        ("127.0.9.0/24", "US", "NA"),
    ] {
        let rec = GeoRecord {
            country: GeoCode { iso_code: iso },
            continent: GeoContinent { code: cont },
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

/// A request from a chosen loopback source address, on a fresh connection.
fn get_from(src: &str, port: u16, host: &str, target: &str, extra: &str) -> Response {
    let mut s = connect_from(src, port);
    send(
        &mut s,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"),
    )
}

fn connect_from(src: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&dst.into()).unwrap();
    sock.into()
}

fn geo_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("registry-edge-geo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn policy_yaml(db: &Path, mode: &str) -> String {
    format!(
        r#"geoip: {{ database: "{db}", reload: true }}
clients:
  trusted_proxies: ["127.0.9.0/24"]
access:
  mode: {mode}
  embargo: {{ countries: [CU], unknown_country: deny }}
  deny_cidrs: ["127.0.5.0/24"]
  allow_cidrs: ["127.0.2.9/32"]
  read_only: true
  repositories: {{ allow: ["team/*"] }}
  rate_limit: {{ requests_per_second: 0.2, burst: 5, exempt_cidrs: ["127.0.1.99/32"] }}
"#,
        db = db.display()
    )
}

#[test]
fn embargo_and_access_policy() {
    let gdir = geo_dir("policy");
    let db = gdir.join("country.mmdb");
    std::fs::write(&db, mmdb("DE")).unwrap();
    let edge = start_edge_with("policy", HTTP_OPTS, &policy_yaml(&db, "enforce"));
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    // An allowed country is proxied; an embargoed one gets 451 DENIED on every route, with a
    // message naming the policy and not the country list, and the connection stays usable.
    assert_eq!(
        get_from("127.0.1.1", edge.http, &host, "/v2/", "").status,
        401
    );
    for (h, target) in [
        (host.as_str(), "/v2/"),
        (host.as_str(), "/v2/team/app/manifests/1"),
        (host.as_str(), "/oauth2/token?service=registry.test"),
        (data_host.as_str(), "/blob?sig=1"),
    ] {
        let r = get_from("127.0.2.1", edge.http, h, target, "");
        assert_oci_error(&r, 451, "DENIED");
        let msg = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("export-control"), "{msg}");
        assert!(!msg.contains("CU"), "{msg}");
    }
    let mut s = connect_from("127.0.2.2", edge.http);
    assert_eq!(
        send(
            &mut s,
            &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n")
        )
        .status,
        451
    );
    assert_eq!(
        send(
            &mut s,
            &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n")
        )
        .status,
        451
    );

    // A client that lies: X-Forwarded-For from an untrusted peer is ignored.
    let r = get_from(
        "127.0.2.1",
        edge.http,
        &host,
        "/v2/",
        "X-Forwarded-For: 127.0.1.1\r\n",
    );
    assert_eq!(r.status, 451);
    // Through a trusted proxy the forwarded address counts, walked right to left.
    let via = |xff: &str| {
        get_from(
            "127.0.9.1",
            edge.http,
            &host,
            "/v2/",
            &format!("X-Forwarded-For: {xff}\r\n"),
        )
        .status
    };
    assert_eq!(via("127.0.2.1"), 451);
    assert_eq!(via("127.0.1.1"), 401);
    assert_eq!(
        via("127.0.1.1, 127.0.2.1, 127.0.9.7"),
        451,
        "the first untrusted hop from the right"
    );
    assert_eq!(
        via("127.0.2.1, 127.0.1.1"),
        401,
        "left of an untrusted hop is not believed"
    );
    assert_eq!(
        via("garbage, 127.0.9.7"),
        401,
        "a malformed entry stops at the last trusted hop"
    );
    let r = get_from(
        "127.0.9.1",
        edge.http,
        &host,
        "/v2/",
        "X-Forwarded-For: 127.0.1.1\r\nX-Forwarded-For: 127.0.2.1\r\n",
    );
    assert_eq!(r.status, 451, "several headers are one list, in order");

    // Unknown country → denied per unknown_country; deny_cidrs → 403; allow_cidrs pass.
    assert_oci_error(
        &get_from("127.0.4.1", edge.http, &host, "/v2/", ""),
        451,
        "DENIED",
    );
    assert_oci_error(
        &get_from("127.0.5.1", edge.http, &host, "/v2/", ""),
        403,
        "DENIED",
    );
    assert_eq!(
        get_from("127.0.2.9", edge.http, &host, "/v2/", "").status,
        401
    );

    // Read-only: pushes refused with Allow; token POSTs pass.
    let mut s = connect_from("127.0.1.5", edge.http);
    let r = send(
        &mut s,
        &format!("PUT /v2/team/app/manifests/1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"),
    );
    assert_oci_error(&r, 405, "UNSUPPORTED");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = send(
        &mut s,
        &format!("POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 19\r\n\r\ngrant_type=password"),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));

    // Repositories that are not public answer as absent ones; encoded tricks do not get around.
    let r = get_from(
        "127.0.1.6",
        edge.http,
        &host,
        "/v2/secret/app/manifests/1",
        "",
    );
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_string();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{host}/oauth2/token\"")),
        "{challenge}"
    );
    assert!(
        challenge.ends_with(",scope=\"repository:secret/app:pull\""),
        "{challenge}"
    );
    let r = get_from(
        "127.0.1.6",
        edge.http,
        &host,
        "/v2/secret/app/manifests/1",
        "Authorization: Bearer t\r\n",
    );
    assert_oci_error(&r, 404, "NAME_UNKNOWN");
    assert_eq!(
        get_from(
            "127.0.1.6",
            edge.http,
            &host,
            "/v2/team/app/manifests/1",
            ""
        )
        .status,
        200
    );
    for (i, trick) in [
        "/v2/team/..%2Fsecret/app/manifests/1",
        "/v2/team/%2e%2e/secret/app/manifests/1",
        "/v2/team/../secret/app/manifests/1",
        "/v2//secret/app/manifests/1",
        "/v2/secr%65t/app/manifests/1",
        "/v2/SECRET/app/manifests/1",
        "/v2/_catalog",
        "/acr/v1/_catalog",
        "/acr/v1/secret/app/_tags",
    ]
    .into_iter()
    .enumerate()
    {
        // One address each: the rate limit counts refused requests too.
        let r = get_from(
            &format!("127.0.1.{}", 40 + i),
            edge.http,
            &host,
            trick,
            "Authorization: Bearer t\r\n",
        );
        assert!(
            [400, 403, 404].contains(&r.status),
            "{trick} → {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // Token requests lose the scopes of hidden repositories (and name the registry's own
    // audience upstream).
    let svc = edge.login.addr.to_string().replace(':', "%3A");
    let r = get_from(
        "127.0.1.8",
        edge.http,
        &host,
        "/oauth2/token?service=registry.test&scope=repository:secret/app:pull&scope=repository:team/app:pull",
        "",
    );
    assert_eq!(
        r.json()["target"],
        format!("/oauth2/token?service={svc}&scope=repository%3Ateam%2Fapp%3Apull")
    );
    // Names are decoded as the token server decodes them: an encoded `scope` is a scope.
    let r = get_from(
        "127.0.1.29",
        edge.http,
        &host,
        "/oauth2/token?service=registry.test&sc%6fpe=repository:secret/app:pull",
        "",
    );
    assert_eq!(r.json()["target"], format!("/oauth2/token?service={svc}"));
    // Names token clients do not send, case-folded names, repeats and `;` are refused.
    for trick in [
        "/oauth2/token?service=registry.test&Scope=repository:secret/app:pull",
        "/oauth2/token?service=registry.test&service=y",
        "/oauth2/token?service=registry.test;scope=repository:secret/app:pull",
        "/oauth2/token?service=registry.test&other=1",
        "/oauth2/token?service=%zz",
    ]
    .iter()
    .enumerate()
    {
        let r = get_from(
            &format!("127.0.1.{}", 30 + trick.0),
            edge.http,
            &host,
            trick.1,
            "",
        );
        assert_oci_error(&r, 400, "UNSUPPORTED");
    }

    // ... in a token POST's form body too (read by the edge, sent again rebuilt without them).
    let body = "grant_type=refresh_token&service=registry.test&scope=repository%3Asecret%2Fapp%3Apull&scope=repository%3Ateam%2Fapp%3Apull&refresh_token=abc";
    let mut s = connect_from("127.0.1.9", edge.http);
    let r = send(
        &mut s,
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 200);
    let seen = edge.token_seen.lock().unwrap();
    let last = seen.last().unwrap();
    let kept = format!(
        "grant_type=refresh_token&service={svc}&scope=repository%3Ateam%2Fapp%3Apull&refresh_token=abc"
    );
    assert_eq!(
        last.body_len,
        kept.len() as u64,
        "the hidden scope left the body"
    );
    let before = seen.len();
    drop(seen);

    // A chunked body is held to the same limit: 413, and nothing reaches the token server.
    let chunk = "scope=".to_string() + &"a".repeat(8192);
    let mut chunked = String::new();
    for _ in 0..9 {
        chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    chunked.push_str("0\r\n\r\n");
    let mut s = connect_from("127.0.1.9", edge.http);
    let r = send(
        &mut s,
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        ),
    );
    assert_oci_error(&r, 413, "SIZE_INVALID");
    // A chunked form under the limit is decoded and rebuilt like any other; a JSON body and an
    // encoded parameter name in a form are not a way around the scope filter.
    let form = "service=registry.test&sc%6fpe=repository%3Asecret%2Fapp%3Apull";
    let mut s = connect_from("127.0.1.9", edge.http);
    let r = send(
        &mut s,
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{form}\r\n0\r\n\r\n",
            form.len()
        ),
    );
    assert_eq!(r.status, 200);
    let json = "{\"scope\":\"repository:secret/app:pull\"}";
    let mut s = connect_from("127.0.1.9", edge.http);
    let r = send(
        &mut s,
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        ),
    );
    assert_oci_error(&r, 415, "UNSUPPORTED");
    let seen = edge.token_seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        before + 1,
        "only the valid form reached the token server"
    );
    assert_eq!(
        seen.last().unwrap().body_len,
        format!("service={svc}").len() as u64
    );
    drop(seen);

    // Rate limit: a client past its burst gets 429 with Retry-After; its neighbour does not;
    // the exempt address never does.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get_from("127.0.1.20", edge.http, &host, "/v2/", "").status);
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    let r = get_from("127.0.1.20", edge.http, &host, "/v2/", "");
    assert_oci_error(&r, 429, "TOOMANYREQUESTS");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        get_from("127.0.1.21", edge.http, &host, "/v2/", "").status,
        401
    );
    for _ in 0..10 {
        assert_eq!(
            get_from("127.0.1.99", edge.http, &host, "/v2/", "").status,
            401
        );
    }

    // The database is replaced under load: by rename, by a broken copy (refused, old kept), by a
    // symlink swap; no request fails, and the new data takes effect.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for t in 0..3 {
        let (stop, failures, host, port) =
            (stop.clone(), failures.clone(), host.clone(), edge.http);
        load.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Distinct addresses so that the rate limit does not interfere.
                let src = format!("127.0.3.{}", 1 + (t * 80 + n % 80));
                n += 1;
                let r = std::panic::catch_unwind(|| get_from(&src, port, &host, "/v2/", "").status);
                match r {
                    Ok(401) | Ok(451) | Ok(429) => {}
                    other => failures.lock().unwrap().push(format!("{src}: {other:?}")),
                }
            }
        }));
    }
    let admin = edge.admin;
    let reloads = |result: &str| -> u64 {
        let m = String::from_utf8(get(admin, "a", "/metrics", "").body).unwrap();
        m.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "registry_edge_geoip_reloads_total{{result=\"{result}\"}} "
                ))
            })
            .map_or(0, |v| v.parse().unwrap())
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    // 1. rename over the path: 127.0.3.0/24 becomes CU.
    let tmp = gdir.join("country.mmdb.tmp");
    std::fs::write(&tmp, mmdb("CU")).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    wait_for("the renamed database", &|| {
        get_from("127.0.3.250", edge.http, &host, "/v2/", "").status == 451
    });
    // 2. a broken file copied over in place: refused, the old one stays in force.
    let ok_before = reloads("ok");
    std::fs::write(&db, b"not a database at all").unwrap();
    wait_for("the refusal", &|| reloads("refused") >= 1);
    assert_eq!(
        get_from("127.0.3.251", edge.http, &host, "/v2/", "").status,
        451
    );
    // then a good copy in place, back to DE.
    std::fs::write(&db, mmdb("DE")).unwrap();
    wait_for("the copied database", &|| {
        get_from("127.0.3.252", edge.http, &host, "/v2/", "").status == 401
    });
    assert!(reloads("ok") > ok_before);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );

    // The policy's refusals are counted by reason.
    let m = String::from_utf8(get(edge.admin, "a", "/metrics", "").body).unwrap();
    for needle in [
        "registry_edge_access_refusals_total{mode=\"enforce\",reason=\"embargo\"}",
        "registry_edge_access_refusals_total{mode=\"enforce\",reason=\"rate_limit\"}",
        "registry_edge_access_refusals_total{mode=\"enforce\",reason=\"not_public\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }
    let _ = std::fs::remove_dir_all(&gdir);
}

#[test]
fn kubernetes_symlink_swap_and_detect_mode() {
    // The ConfigMap/Secret layout: country.mmdb -> ..data/country.mmdb, ..data -> ..v1.
    let gdir = geo_dir("k8s");
    let v1 = gdir.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("country.mmdb"), mmdb("DE")).unwrap();
    std::os::unix::fs::symlink("..v1", gdir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/country.mmdb", gdir.join("country.mmdb")).unwrap();
    let db = gdir.join("country.mmdb");
    let edge = start_edge_with("detect", HTTP_OPTS, &policy_yaml(&db, "detect"));
    let host = format!("registry.test:{}", edge.http);

    // Detect mode: decided and counted, but let through.
    let r = get_from("127.0.2.1", edge.http, &host, "/v2/", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        get_from("127.0.3.1", edge.http, &host, "/v2/", "").status,
        401
    );

    // The swap: a new directory, then ..data replaced atomically by rename.
    let v2 = gdir.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("country.mmdb"), mmdb("CU")).unwrap();
    std::os::unix::fs::symlink("..v2", gdir.join("..data_tmp")).unwrap();
    std::fs::rename(gdir.join("..data_tmp"), gdir.join("..data")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = String::from_utf8(get(edge.admin, "a", "/metrics", "").body).unwrap();
        if m.contains("registry_edge_geoip_reloads_total{result=\"ok\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the symlink swap was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        get_from("127.0.3.2", edge.http, &host, "/v2/", "").status,
        401
    );
    let m = String::from_utf8(get(edge.admin, "a", "/metrics", "").body).unwrap();
    assert!(
        m.contains("registry_edge_access_refusals_total{mode=\"detect\",reason=\"embargo\"} 2"),
        "{}",
        m.lines()
            .filter(|l| l.contains("refusals"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(edge.dir.join("access.log")).unwrap();
    let embargoed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"decision\":\"embargo\""))
        .collect();
    assert_eq!(embargoed.len(), 2, "{log}");
    assert!(embargoed.iter().all(|l| l.contains("\"status\":401")));
    let _ = std::fs::remove_dir_all(&gdir);
}

// ---------------------------------------------------------------------------------------------
// Two regions: each with a login front that redirects to its own data endpoint, whose signed
// URLs only that endpoint accepts. US clients belong to eastus, European ones to westus.

struct Region {
    login: Origin,
    data: Origin,
    sig: String,
}

fn start_region(name: &str) -> Region {
    let sig = format!("signed-by-{name}");
    let data = start_origin_opts(
        Kind::Data,
        OriginOpts {
            sig: Some(sig.clone()),
            ..OriginOpts::default()
        },
    );
    let login = start_origin_opts(
        Kind::Login,
        OriginOpts {
            data: Some(data.addr.to_string()),
            sig: Some(sig.clone()),
            ..OriginOpts::default()
        },
    );
    Region { login, data, sig }
}

fn restart(o: &Origin, kind: Kind, data: Option<String>, sig: &str) -> Origin {
    start_origin_opts(
        kind,
        OriginOpts {
            data,
            sig: Some(sig.to_string()),
            bind: Some(o.addr),
            ..OriginOpts::default()
        },
    )
}

fn metric(admin: u16, prefix: &str) -> f64 {
    let m = String::from_utf8(get(admin, "a", "/metrics", "").body).unwrap();
    m.lines()
        .find_map(|l| {
            l.strip_prefix(prefix)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// One pull of one blob as docker does it: ask the login host, follow the redirect to the data
/// host; a failed data download is retried by asking the login host again. Returns the region
/// whose data endpoint served the bytes.
fn pull(src: &str, port: u16) -> Result<String, String> {
    let host = format!("registry.test:{port}");
    let mut last = String::new();
    for _attempt in 0..3 {
        let r = get_from(src, port, &host, "/v2/team/app/manifests/1", "");
        if r.status != 200 {
            last = format!("manifest {}", r.status);
            continue;
        }
        let r = get_from(
            src,
            port,
            &host,
            &format!("/v2/team/app/blobs/{DIGEST}"),
            "",
        );
        if r.status != 307 {
            last = format!("blob redirect {}", r.status);
            continue;
        }
        let loc = r.header("location").unwrap().to_string();
        let target = loc
            .strip_prefix(&format!("http://data.test:{port}"))
            .ok_or_else(|| format!("redirect off the data host: {loc}"))?
            .to_string();
        let region = target
            .strip_prefix("/_r/")
            .and_then(|t| t.split('/').next())
            .unwrap_or_default()
            .to_string();
        let r = get_from(src, port, &format!("data.test:{port}"), &target, "");
        if r.status == 200 && r.body.len() == 1 << 20 {
            return Ok(region);
        }
        last = format!("data {} from {region}", r.status);
    }
    Err(last)
}

#[test]
fn two_regions_nearest_healthy_and_failover() {
    let gdir = geo_dir("regions");
    let db = gdir.join("country.mmdb");
    std::fs::write(&db, mmdb("DE")).unwrap();
    let east = start_region("eastus");
    let west = start_region("westus");
    let global = start_origin(Kind::Login, Some(east.data.addr.to_string()));
    let extra = format!(
        r#"geoip: {{ database: "{db}" }}
local_region: eastus
regions:
  - {{ region: eastus, countries: [US] }}
  - {{ region: westus, continents: [EU] }}
"#,
        db = db.display()
    );
    // The regions replace the single-region registry of the other tests.
    let edge = start_edge_regions(&extra, &global, &east, &west);
    let port = edge.http;
    let us = "127.0.1.10";
    let de = "127.0.3.10";

    // Each client is served by its region, login and data.
    assert_eq!(pull(us, port).unwrap(), "eastus");
    assert_eq!(pull(de, port).unwrap(), "westus");
    let east_seen = east.login.seen.lock().unwrap().len();
    let west_seen = west.login.seen.lock().unwrap().len();
    assert!(east_seen >= 2 && west_seen >= 2, "{east_seen} {west_seen}");
    assert_eq!(
        global.seen.lock().unwrap().len(),
        0,
        "the global login server is the last resort"
    );

    // Stop eastus's login front during a series of pulls: every pull completes.
    east.login.stop();
    let stopped = Instant::now();
    let mut regions = Vec::new();
    let mut marked_down = None;
    for i in 0..20 {
        regions.push(
            pull(&format!("127.0.1.{}", 20 + i), port)
                .expect("a pull failed with eastus's login front down"),
        );
        if marked_down.is_none()
            && String::from_utf8(get(edge.admin, "a", "/metrics", "").body)
                .unwrap()
                .lines()
                .any(|l| {
                    l.starts_with("registry_edge_upstream_peer_healthy")
                        && l.contains("regional:eastus")
                        && l.ends_with(" 0")
                })
        {
            marked_down = Some(stopped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while marked_down.is_none() {
        let m = String::from_utf8(get(edge.admin, "a", "/metrics", "").body).unwrap();
        if m.lines().any(|l| {
            l.starts_with("registry_edge_upstream_peer_healthy")
                && l.contains("regional:eastus")
                && l.ends_with(" 0")
        }) {
            marked_down = Some(stopped.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the probes never marked eastus's login front down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failovers = metric(
        edge.admin,
        "registry_edge_upstream_failovers_total{upstream=\"regional:eastus\"}",
    );
    let retries = metric(
        edge.admin,
        "registry_edge_upstream_retries_total{upstream=\"regional:eastus\"}",
    );
    let connect_errors = metric(
        edge.admin,
        "registry_edge_upstream_connect_errors_total{upstream=\"regional:eastus\"}",
    );
    eprintln!(
        "login front down: marked down after {:?}; failovers {failovers}, retries {retries}, connect errors {connect_errors}; data regions {regions:?}",
        marked_down.unwrap()
    );
    assert!(
        failovers >= 20.0,
        "every US pull went elsewhere: {failovers}"
    );
    assert!(connect_errors >= 1.0);

    // Start it again: its clients come back within two probe intervals (healthy_after: 2).
    let east_login = restart(
        &east.login,
        Kind::Login,
        Some(east.data.addr.to_string()),
        &east.sig,
    );
    let started = Instant::now();
    loop {
        if pull("127.0.1.50", port).unwrap() == "eastus"
            && !east_login.seen.lock().unwrap().is_empty()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "traffic did not return to eastus"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_after = started.elapsed();
    eprintln!("login front back: traffic returned after {back_after:?}");
    assert!(
        back_after <= Duration::from_millis(2 * 1000 + 1500),
        "{back_after:?}"
    );

    // Stop eastus's data endpoint: its pulls fail over through the login side to westus.
    east.data.stop();
    let mut data_regions = Vec::new();
    for i in 0..10 {
        data_regions.push(
            pull(&format!("127.0.1.{}", 60 + i), port)
                .expect("a pull failed with eastus's data endpoint down"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("data endpoint down: pulls served from {data_regions:?}");
    assert!(
        data_regions.iter().all(|r| r == "westus"),
        "{data_regions:?}"
    );
    // A URL signed by eastus never goes to westus: it gets a 503 clients retry through login.
    let r = get_from(
        us,
        port,
        &format!("data.test:{port}"),
        &format!("/_r/eastus/blob?sig={}", east.sig),
        "",
    );
    assert!([502, 503].contains(&r.status), "{}", r.status);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");

    // Start it again: pulls return to eastus within two probe intervals.
    let _east_data = restart(&east.data, Kind::Data, None, &east.sig);
    let started = Instant::now();
    while pull("127.0.1.80", port).unwrap() != "eastus" {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "data traffic did not return to eastus"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "data endpoint back: traffic returned after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() <= Duration::from_millis(2 * 1000 + 1500));
    let _ = std::fs::remove_dir_all(&gdir);
}

/// An edge whose registry has two regions (and a global login server as last resort).
fn start_edge_regions(extra: &str, global: &Origin, east: &Region, west: &Region) -> Edge {
    let dir = std::env::temp_dir().join(format!("registry-edge-it-regions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = make_certs(&dir);
    let (http, tls, redirect, admin) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"version: 1
server: {{ threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, pid_file: {dir}/edge.pid, upgrade_sock: {dir}/upgrade.sock }}
listeners:
  - address: "127.0.0.1:{http}"
admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{global}"
  public_host: registry.test
  tls: false
  connect_timeout: 1s
  read_timeout: 5s
  health_check: {{ path: /v2/, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}
  regional_endpoints:
    - {{ region: eastus, endpoint: "{east_login}" }}
    - {{ region: westus, endpoint: "{west_login}" }}
  data_endpoints:
    - {{ region: eastus, endpoint: "{east_data}", public_host: data.test,
         health_check: {{ tcp: true, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }} }}
    - {{ region: westus, endpoint: "{west_data}", public_host: data.test,
         health_check: {{ tcp: true, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }} }}
{extra}logging:
  access_log: {dir}/access.log
"#,
        dir = dir.display(),
        global = global.addr,
        east_login = east.login.addr,
        west_login = west.login.addr,
        east_data = east.data.addr,
        west_data = west.data.addr,
    );
    let child = spawn_edge(&dir, &yaml);
    let dummy = || Origin {
        addr: "127.0.0.1:9".parse().unwrap(),
        seen: Arc::default(),
        tasks: Arc::default(),
    };
    let edge = Edge {
        child,
        dir,
        http,
        tls,
        redirect,
        v6: None,
        admin,
        certs,
        login: dummy(),
        data: dummy(),
        token_seen: Arc::default(),
    };
    wait_ready(&edge, None);
    edge
}

/// Writes the configuration into `dir` and starts the edge on it.
fn spawn_edge(dir: &Path, yaml: &str) -> Child {
    let config = dir.join("edge.yaml");
    std::fs::write(&config, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Until `/readyz` answers 200 (and `tls_port`, when given, accepts), or fails with the edge's log.
fn wait_ready(edge: &Edge, tls_port: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = TcpStream::connect(("127.0.0.1", edge.admin)).is_ok_and(|mut s| {
            send(&mut s, "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n").status == 200
        });
        if ready && tls_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edge did not become ready: {}",
            std::fs::read_to_string(edge.dir.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Observability: counts after a scripted series, secrets kept out of the log, security events.

fn metrics_text(admin: u16) -> String {
    String::from_utf8(get(admin, "a", "/metrics", "").body).unwrap()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn metrics_log_and_security_events() {
    let extra = r#"access:
  repositories: { allow: ["team/*"] }
  security_events: { window: 60s, repository_scan: 5, failed_token_requests: 3, embargo_hits: 5 }
  auto_block: { after: 1, window: 10m, duration: 10m }
  allow_cidrs: ["127.0.6.200/32"]
"#;
    let edge = start_edge_with("observe", HTTP_OPTS, extra);
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);

    // A scripted series.
    for _ in 0..3 {
        assert_eq!(
            get_from("127.0.6.1", edge.http, &host, "/v2/", "").status,
            401
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get_from("127.0.6.1", edge.http, "nowhere.example", "/v2/", "").status,
            421
        );
    }
    assert_eq!(
        get_from(
            "127.0.6.1",
            edge.http,
            &host,
            &format!("/v2/team/app/blobs/{DIGEST}"),
            ""
        )
        .status,
        307
    );
    let r = get_from(
        "127.0.6.1",
        edge.http,
        &data_host,
        &format!("/blob?{SAS}&size=1000"),
        "",
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));
    assert_eq!(
        get_from(
            "127.0.6.1",
            edge.http,
            &format!("down.test:{}", edge.http),
            &format!("/x?{SAS}"),
            ""
        )
        .status,
        502
    );
    // `logging` runs after the response is written: wait until all eight are counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = metrics_text(edge.admin);
        let total: f64 = m
            .lines()
            .filter(|l| l.starts_with("registry_edge_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= 8.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let req = |route: &str, class: &str, decision: &str| {
        sample(&m, &format!("registry_edge_http_requests_total{{decision=\"{decision}\",method=\"GET\",route=\"{route}\",status_class=\"{class}\"}}"))
    };
    assert_eq!(req("login", "4xx", "proxied"), 3.0);
    assert_eq!(req("none", "4xx", "edge"), 2.0);
    assert_eq!(req("login", "3xx", "proxied"), 1.0);
    assert_eq!(req("data", "2xx", "proxied"), 1.0);
    assert_eq!(
        req("data", "5xx", "error"),
        1.0,
        "{}",
        m.lines()
            .filter(|l| l.starts_with("registry_edge_http_requests_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_http_edge_responses_total{reason=\"unknown_host\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_http_edge_responses_total{reason=\"upstream_error\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_rewrites_applied_total{rule=\"registry:www-authenticate\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_rewrites_applied_total{rule=\"registry:location\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_upstream_requests_total{upstream=\"login\"}"
        ),
        4.0
    );
    assert!(sample(&m, "registry_edge_http_response_body_bytes_total") >= 1000.0);
    assert!(sample(&m, "registry_edge_http_open_connections") >= 0.0);
    assert!(m.contains("registry_edge_tls_certificate_expiry_timestamp_seconds{certificate="));

    // A normal pull and push raise no event: the 401 on /v2/, a token, manifests, blobs, and the
    // 404s a push gets probing for blobs the registry does not have yet.
    let normal = "127.0.6.2";
    assert_eq!(get_from(normal, edge.http, &host, "/v2/", "").status, 401);
    assert_eq!(
        get_from(
            normal,
            edge.http,
            &host,
            "/oauth2/token?scope=repository:team/app:pull,push",
            ""
        )
        .status,
        200
    );
    assert_eq!(
        get_from(
            normal,
            edge.http,
            &host,
            "/v2/team/app/manifests/1",
            "Authorization: Bearer t\r\n"
        )
        .status,
        200
    );
    for _ in 0..12 {
        let mut s = connect_from(normal, edge.http);
        let r = send(&mut s, &format!("HEAD /v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer t\r\n\r\n"));
        assert_eq!(r.status, 404);
    }
    let mut s = connect_from(normal, edge.http);
    let r = send(&mut s, &format!("POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(r.status, 202);

    // A scanner walking repository names: one event, then blocked.
    let scanner = "127.0.6.3";
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            get_from(
                scanner,
                edge.http,
                &host,
                &format!("/v2/guess{i}/app/manifests/latest"),
                "",
            )
            .status,
        );
        // Observations are made in `logging`, just after the response: let it run.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[403; 3], "{statuses:?}");
    let r = get_from(scanner, edge.http, &host, "/v2/", "");
    assert_oci_error(&r, 403, "DENIED");
    // An address of allow_cidrs raises the event but is never blocked.
    for i in 0..8 {
        assert_eq!(
            get_from(
                "127.0.6.200",
                edge.http,
                &host,
                &format!("/v2/guess{i}/x/manifests/1"),
                ""
            )
            .status,
            401
        );
    }
    // Credential guessing: failed token requests (the test token server refuses wrong:wrong).
    for _ in 0..3 {
        let r = get_from(
            "127.0.6.5",
            edge.http,
            &host,
            "/oauth2/token?service=registry.test",
            "Authorization: Basic d3Jvbmc6d3Jvbmc=\r\n",
        );
        assert_eq!(r.status, 401);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_from(
            "127.0.6.5",
            edge.http,
            &host,
            "/oauth2/token?service=registry.test",
            ""
        )
        .status,
        403,
        "blocked after guessing"
    );
    let m = metrics_text(edge.admin);
    assert_eq!(
        sample(
            &m,
            "registry_edge_security_events_total{kind=\"credential_guessing\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "registry_edge_security_events_total{kind=\"repository_scan\"}"
        ),
        2.0
    );
    assert_eq!(sample(&m, "registry_edge_security_blocks_total"), 2.0);
    assert_eq!(
        sample(
            &m,
            "registry_edge_access_refusals_total{mode=\"enforce\",reason=\"auto_block\"}"
        ),
        5.0
    );

    // Secrets never reach a line: Basic and Bearer credentials, cookies, SAS signatures in
    // queries and paths, tokens in query strings and in token POST bodies.
    let secrets = [
        (
            "Authorization: Basic c2VjcmV0LXVzZXI6c2VjcmV0LXBhc3M=\r\n",
            "/v2/",
            host.as_str(),
        ),
        (
            "Authorization: Bearer secret-bearer-token\r\n",
            "/v2/team/app/manifests/1",
            host.as_str(),
        ),
        ("Cookie: session=secret-cookie\r\n", "/v2/", host.as_str()),
        (
            "",
            "/blob;sig=secret-path-sig/x?sig=secret-query-sig&size=10",
            data_host.as_str(),
        ),
        (
            "",
            "/oauth2/token?access_token=secret-query-token&refresh_token=secret-refresh",
            host.as_str(),
        ),
    ];
    for (header, target, h) in secrets {
        let _ = get_from("127.0.6.4", edge.http, h, target, header);
    }
    let body = "grant_type=password&username=u&password=secret-form-password";
    let mut s = connect_from("127.0.6.4", edge.http);
    let r = send(
        &mut s,
        &format!("POST /oauth2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(edge.dir.join("access.log")).unwrap();
    for secret in [
        "c2VjcmV0",
        "secret-user",
        "secret-bearer-token",
        "secret-cookie",
        "secret-path-sig",
        "secret-query-sig",
        "secret-query-token",
        "secret-refresh",
        "secret-form-password",
        "AbC%2B",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the access log");
    }
    // Every request line has a request id, and the same id went upstream.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("event").is_some()).collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "repository_scan")
            .count(),
        2
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "credential_guessing" && e["client"] == "127.0.6.5"));
    assert_eq!(events.iter().filter(|e| e["client"] == scanner).count(), 1);
    assert!(events
        .iter()
        .any(|e| e["client"] == "127.0.6.200" && e["blocked_for_s"].is_null()));
    assert!(lines
        .iter()
        .all(|l| l.get("event").is_some()
            || l["request_id"].as_str().is_some_and(|id| id.len() == 32)));
    let last_login = edge
        .login
        .seen
        .lock()
        .unwrap()
        .last()
        .map(|r| r.header("x-request-id").unwrap_or_default().to_string())
        .unwrap();
    assert!(
        lines.iter().any(|l| l["request_id"] == last_login.as_str()),
        "the upstream saw a logged request id"
    );
}

#[test]
fn certificate_rotation_without_restart() {
    let edge = start_edge("rotate", HTTP_OPTS);
    let url = format!("https://registry.test:{}/v2/", edge.tls);
    let resolve = format!("registry.test:{}:127.0.0.1", edge.tls);
    let status_with = |ca: &Path| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .0
    };
    assert_eq!(status_with(&edge.certs.ca), "401");

    // New certificates from another CA.
    let next = edge.dir.join("next");
    std::fs::create_dir_all(&next).unwrap();
    let next_certs = make_certs(&next);
    let reloads = |result: &str| {
        sample(
            &metrics_text(edge.admin),
            &format!("registry_edge_tls_certificate_reloads_total{{result=\"{result}\"}}"),
        )
    };
    // A broken key first: refused, the old certificate keeps serving.
    std::fs::write(edge.dir.join("registry.test.key.tmp"), "not a key").unwrap();
    std::fs::rename(
        edge.dir.join("registry.test.key.tmp"),
        edge.dir.join("registry.test.key"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads("refused") < 1.0 {
        assert!(Instant::now() < deadline, "a broken key was not refused");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status_with(&edge.certs.ca),
        "401",
        "the old certificate still serves"
    );
    // Then the new pair, each file renamed into place.
    for f in ["registry.test.pem", "registry.test.key"] {
        std::fs::copy(next.join(f), edge.dir.join(format!("{f}.tmp"))).unwrap();
        std::fs::rename(edge.dir.join(format!("{f}.tmp")), edge.dir.join(f)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_with(&next_certs.ca) != "401" {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(
        status_with(&edge.certs.ca),
        "401",
        "the old CA no longer verifies the listener"
    );
    assert!(reloads("ok") >= 1.0);
    // The other certificate on the same listener was reloaded with it and still answers.
    let data = curl(&[
        "--cacert",
        edge.certs.ca.to_str().unwrap(),
        "--resolve",
        &format!("data.test:{}:127.0.0.1", edge.tls),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://data.test:{}/echo?sig=1", edge.tls),
    ]);
    assert_eq!(data.0, "200", "{}", data.1);
}

/// A large blob downloading at a client's pace (8 MiB, then a pause): (bytes, all bytes right).
fn slow_download(port: u16, data_host: &str, size: u64) -> std::thread::JoinHandle<(u64, bool)> {
    let data_host = data_host.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!("GET /blob?{SAS}&size={size} HTTP/1.1\r\nHost: {data_host}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let head = read_response(&mut r, true);
        assert_eq!(head.status, 200);
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut ok = true;
        while got < size {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "download cut at {got}");
            ok &= buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(got + i as u64));
            got += n as u64;
            if got % (8 << 20) < n as u64 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (got, ok)
    })
}

/// `GET /v2/` (a 401 challenge) on a new connection each, until `stop`: (answered, failures).
/// The load that ran across `what` went through unharmed: no small request failed, enough of
/// them ran, and the download arrived whole with its bytes unchanged.
fn assert_load_unharmed(
    what: &str,
    done: u32,
    failed: &[String],
    got: u64,
    intact: bool,
    size: u64,
) {
    assert!(
        failed.is_empty(),
        "{} of {} small requests failed across {what}: {failed:?}",
        failed.len(),
        done + failed.len() as u32
    );
    assert!(done > 10, "{done}");
    assert_eq!(got, size);
    assert!(intact, "the download's bytes changed across {what}");
}

fn small_requests(
    port: u16,
    host: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    let host = host.to_owned();
    std::thread::spawn(move || {
        let (mut done, mut failed) = (0u32, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = std::panic::catch_unwind(|| get(port, &host, "/v2/", "").status);
            match r {
                Ok(401) => done += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (done, failed)
    })
}

#[test]
fn graceful_upgrade_under_load() {
    // A longer grace period than the download takes.
    let edge = start_edge_full("upgrade", HTTP_OPTS, "", "30s");
    let config = edge.dir.join("edge.yaml");
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let old_pid = edge.child.id();
    assert_eq!(
        std::fs::read_to_string(edge.dir.join("edge.pid"))
            .unwrap()
            .trim(),
        old_pid.to_string()
    );

    // A large blob downloading at a client's pace, and a stream of small requests.
    let size: u64 = 256 << 20;
    let port = edge.http;
    let download = slow_download(port, &data_host, size);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let small = small_requests(port, &host, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    // The new process inherits `upgrade`'s stdio: give it files, not pipes this test would wait on.
    let status = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["upgrade", "-c"])
        .arg(&config)
        .stdout(std::fs::File::create(edge.dir.join("upgrade.out")).unwrap())
        .stderr(std::fs::File::create(edge.dir.join("upgrade.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(edge.dir.join("upgrade.err")).unwrap_or_default()
    );
    let new_pid: u32 = std::fs::read_to_string(edge.dir.join("edge.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    // The old process drains: /readyz is served by the new one now.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, failed) = small.join().unwrap();
    let (got, ok) = download.join().unwrap();
    // Stop the new process (started through `upgrade`) before asserting, whatever happens: its
    // grace period is long, so SIGINT (fast shutdown).
    let _ = Command::new("kill")
        .args(["-INT", &new_pid.to_string()])
        .status();
    assert_load_unharmed("the upgrade", done, &failed, got, ok, size);
    eprintln!(
        "upgrade under load: {done} small requests, none failed; {size}-byte download intact"
    );
}

/// `POST /v2/team/app/blobs/uploads/` on a new connection: the connection, for the rest of the
/// upload, and the answer.
fn start_upload(port: u16, host: &str) -> (TcpStream, Response) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let r = send(
        &mut s,
        &format!("POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
    );
    (s, r)
}

/// `registry-edge reload -c FILE`: (success, stdout + stderr).
fn reload_command(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_reload_under_load() {
    let edge = start_edge_with("reload", HTTP_OPTS, "");
    let config = edge.dir.join("edge.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let port = edge.http;
    let gauge = |series: &str| sample(&metrics_text(edge.admin), series);
    assert_eq!(gauge("registry_edge_config_generation"), 1.0);
    assert_eq!(uploads(&edge, &host).status, 202, "writes pass before");
    assert_eq!(
        get(port, &host, "/v2/", "").header("x-frame-options"),
        Some("DENY")
    );

    // A download in flight and a stream of small requests across every reload below.
    let size: u64 = 192 << 20;
    let download = slow_download(port, &data_host, size);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let small = small_requests(port, &host, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // An upload in flight across the reload: its head passed the policy before, its body ends
    // after; it finishes under the configuration it started with.
    let (mut upload, started) = start_upload(port, &host);
    assert_eq!(started.status, 202);
    let target = started
        .header("location")
        .unwrap()
        .strip_prefix(&format!("http://{host}"))
        .unwrap()
        .to_string();
    upload
        .write_all(
            format!("PATCH {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .as_bytes(),
        )
        .unwrap();

    // 1. Policy and rewrites change; the login upstream's settings too (its peers and their
    //    health are kept: no request may find it without a peer).
    let changed = original
        .replace(
            "rewrites:\n",
            "access:\n  read_only: true\n  deny_cidrs: [\"127.0.9.0/24\"]\nrewrites:\n",
        )
        .replace("value: DENY", "value: SAMEORIGIN")
        .replace("read_timeout: 2s", "read_timeout: 3s");
    std::fs::write(&config, &changed).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(ok, "{out}");
    assert!(out.contains("generation 2"), "{out}");
    assert!(out.contains("applied: registry, access, rewrites"), "{out}");
    assert!(!out.contains("restart required"), "{out}");
    upload.write_all(b"6\r\n world\r\n0\r\n\r\n").unwrap();
    let finished = read_response(&mut BufReader::new(upload.try_clone().unwrap()), false);
    assert_eq!(
        finished.status, 202,
        "the upload in flight finishes: {finished:?}"
    );
    assert_eq!(
        finished.header("x-frame-options"),
        Some("DENY"),
        "under the rules it started with"
    );
    assert_oci_error(&start_upload(port, &host).1, 405, "UNSUPPORTED");
    assert_eq!(
        get(port, &host, "/v2/", "").header("x-frame-options"),
        Some("SAMEORIGIN")
    );
    assert_eq!(get_from("127.0.9.9", port, &host, "/v2/", "").status, 403);
    assert_eq!(gauge("registry_edge_config_generation"), 2.0);
    assert_eq!(
        gauge("registry_edge_config_reloads_total{result=\"ok\"}"),
        1.0
    );

    // 2. An invalid file: `reload` refuses it before signalling (exit 64) ...
    let broken = changed.replace("read_only: true", "read_only: maybe");
    std::fs::write(&config, &broken).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(!ok);
    assert!(
        out.contains("edge.yaml:") && out.contains("read_only"),
        "{out}"
    );
    // ... and the process refuses it on a bare SIGHUP: logged, counted, old one kept.
    let pid = edge.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge("registry_edge_config_reloads_total{result=\"refused\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the refusal was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(edge.dir.join("edge.pid.reload")).unwrap();
    assert!(
        status.lines().next().unwrap().ends_with(" refused"),
        "{status}"
    );
    assert!(status.contains("read_only"), "{status}");
    let log = std::fs::read_to_string(edge.dir.join("stderr.log")).unwrap();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert_eq!(gauge("registry_edge_config_generation"), 2.0);
    assert_oci_error(&start_upload(port, &host).1, 405, "UNSUPPORTED");

    // 3. Listener and server settings need a restart: reported, running values kept, the rest
    //    applied.
    let restart_only = changed
        .replace(
            "graceful_shutdown_timeout: 1s",
            "graceful_shutdown_timeout: 2s",
        )
        .replace(
            "max_request_header_bytes: 4096",
            "max_request_header_bytes: 2048",
        )
        .replace("read_only: true", "read_only: false");
    std::fs::write(&config, &restart_only).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(ok, "{out}");
    assert!(out.contains("generation 3"), "{out}");
    assert!(out.contains("applied: access"), "{out}");
    assert!(
        out.contains("restart required") && out.contains("listeners, server"),
        "{out}"
    );
    assert_eq!(gauge("registry_edge_config_restart_pending"), 1.0);
    assert_eq!(uploads(&edge, &host).status, 202, "writes pass again");
    // The running header limit (4096) still applies, not the file's 2048.
    let long = format!("X-Long: {}\r\n", "a".repeat(3000));
    assert_eq!(get(port, &host, "/v2/", &long).status, 401);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, failed) = small.join().unwrap();
    let (got, intact) = download.join().unwrap();
    assert_load_unharmed("the reloads", done, &failed, got, intact, size);
    eprintln!("config reload under load: 3 reloads (2 applied, 1 refused), {done} small requests, none failed; {size}-byte download intact");
}
