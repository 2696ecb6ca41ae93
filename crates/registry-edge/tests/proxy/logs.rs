//! The process log: no secret on any line the edge writes (its own, pingora's, the access log),
//! whatever path an error takes; and a flood of misbehaving clients writes a bounded number of
//! lines, each counted. The edge runs with the default log level, the access log on stdout and
//! the process log on stderr, in front of an origin that resets and streams on request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};

use crate::ports::{free_port, server_section};
use crate::support::h2::{connect_h2, frame, header_block, PREFACE};
use crate::support::{edge_dir, eventually, get, make_certs, metrics_text, runtime, sample, send};

/// Every secret of these tests starts with this; none may appear on stdout or stderr.
const MARK: &str = "SECRETMARK";

/// pingora's rate limit per kind and window (registry_edge_proxy::logfilter::BURST).
const BURST: usize = 10;

/// An origin for the error paths: `…/reset` answers a head and 100 kB of a 10 MB body, then
/// resets the connection; `…/big` streams 64 MiB; anything else gets `200 {}` once its body is
/// read (a body that ends early or a broken chunk closes the connection).
fn start_log_origin() -> (SocketAddr, tokio::task::AbortHandle) {
    let std_listener = crate::ports::listener();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let accept = runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = log_origin_conn(sock).await;
            });
        }
    });
    (addr, accept.abort_handle())
}

async fn log_origin_conn(sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = TokioBufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let target = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let (mut length, mut chunked) = (0u64, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
        }
        let mut buf = vec![0u8; 64 * 1024];
        while length > 0 {
            let n = r.read(&mut buf[..length.min(65536) as usize]).await?;
            if n == 0 {
                return Ok(());
            }
            length -= n as u64;
        }
        while chunked {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let Ok(n) = u64::from_str_radix(size.trim().split(';').next().unwrap_or("x"), 16)
            else {
                return Ok(());
            };
            let mut chunk = vec![0u8; n as usize + 2];
            r.read_exact(&mut chunk).await?;
            chunked = n > 0;
        }
        let path = target.split('?').next().unwrap_or_default();
        if path.ends_with("/reset") {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
                .await?;
            w.write_all(&vec![b'x'; 100_000]).await?;
            w.flush().await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }
        if path.ends_with("/big") {
            let total: u64 = 64 << 20;
            w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes())
                .await?;
            let chunk = vec![b'y'; 64 * 1024];
            for _ in 0..total / chunk.len() as u64 {
                w.write_all(&chunk).await?;
            }
            continue;
        }
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
        )
        .await?;
    }
}

struct LogEdge {
    child: Child,
    dir: PathBuf,
    http: u16,
    tls: u16,
    admin: u16,
    ca: PathBuf,
    origins: Vec<tokio::task::AbortHandle>,
}

impl Drop for LogEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for o in &self.origins {
            o.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LogEdge {
    /// stdout (the access log) and stderr (the process log), as written so far.
    fn output(&self) -> (String, String) {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        (read("stdout.log"), read("stderr.log"))
    }

    fn stderr_tail(&self) -> String {
        let (_, err) = self.output();
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn metric_sum(&self, name: &str) -> f64 {
        let text = metrics_text(self.admin);
        registry_edge_proxy::logfilter::KINDS
            .iter()
            .map(|k| sample(&text, &format!("{name}{{kind=\"{k}\"}}")))
            .sum()
    }
}

/// The edge with the log at its default level (info), the access log on stdout; a plain and a
/// TLS listener (HTTP/2 by ALPN), both with a 1 s write timeout; `data.test` in front of the
/// log origin, `down.test` in front of a port nobody listens on.
fn start_log_edge(name: &str) -> LogEdge {
    let dir = edge_dir(name);
    let certs = make_certs(&dir);
    let (login, login_task) = start_log_origin();
    let (data, data_task) = start_log_origin();
    let (http, tls, admin, refused) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"version: 1
{server}listeners:
  - address: "127.0.0.1:{http}"
    timeouts: {{ header_read: 5s, idle: 5s, write: 1s }}
  - address: "127.0.0.1:{tls}"
    timeouts: {{ header_read: 5s, idle: 5s, write: 1s }}
    tls:
      certificates:
        - {{ cert: registry.test.pem, key: registry.test.key }}
        - {{ cert: data.test.pem, key: data.test.key }}
admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{login}"
  public_host: registry.test
  tls: false
  connect_timeout: 1s
  read_timeout: 5s
  data_endpoints:
    - {{ region: eastus, endpoint: "{data}", public_host: data.test }}
    - {{ region: westus, endpoint: "127.0.0.1:{refused}", public_host: down.test }}
logging:
  access_log: stdout
"#,
        server = server_section(&dir.display().to_string(), "1s"),
    );
    let config = dir.join("edge.yaml");
    std::fs::write(&config, yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["run", "-c"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let edge = LogEdge {
        child,
        dir,
        http,
        tls,
        admin,
        ca: certs.ca,
        origins: vec![login_task, data_task],
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = TcpStream::connect(("127.0.0.1", admin)).is_ok_and(|mut s| {
            send(&mut s, "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n").status == 200
        });
        if ready && TcpStream::connect(("127.0.0.1", tls)).is_ok() {
            return edge;
        }
        assert!(
            Instant::now() < deadline,
            "edge did not become ready: {}",
            edge.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the edge closes (or 10 s pass); what was read.
fn drain(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

/// A request head and the first `sent` bytes of a `length`-byte body, then the connection is
/// closed: the client aborts its upload.
fn abort_upload(port: u16, method: &str, host: &str, target: &str, extra: &str) {
    let mut s = connect(port);
    s.write_all(
        format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 1000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&[b'a'; 50_000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
}

/// A chunked body whose second chunk size is not hexadecimal.
fn bad_chunk(port: u16, host: &str, target: &str) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(
        format!(
            "PATCH {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\nxx\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    drain(&mut s)
}

/// A request head cut short, then closed.
fn partial_head(port: u16, target: &str) {
    let mut s = connect(port);
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: regis").as_bytes())
        .unwrap();
}

/// Over TLS with ALPN h2: a PATCH stream with a 1 MB Content-Length, 16 kB of DATA, then
/// RST_STREAM (CANCEL) from the client.
fn h2_stream_reset(edge: &LogEdge, authority: &str, path: &str, authorization: &str) {
    let ca = edge.ca.clone();
    let port = edge.tls;
    let (authority, path, authorization) = (
        authority.to_string(),
        path.to_string(),
        authorization.to_string(),
    );
    runtime().block_on(async move {
        let tls = connect_h2(&ca, "data.test", port).await;
        let (mut r, mut w) = tokio::io::split(tls);
        // Whatever the edge sends (its SETTINGS, acknowledgements, a reset) is read and dropped.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let headers = header_block(&[
            (":method", "PATCH"),
            (":scheme", "https"),
            (":path", &path),
            (":authority", &authority),
            ("authorization", &authorization),
            ("content-length", "1000000"),
        ]);
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        out.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
        out.extend(frame(0x0, 0, 1, &[b'a'; 16_000])); // DATA
        w.write_all(&out).await.unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.write_all(&frame(0x3, 0, 1, &8u32.to_be_bytes())) // RST_STREAM CANCEL
            .await
            .unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        reader.abort();
    });
}

/// Until `check` holds for the edge's stderr, or fails after `within` with its last lines.
fn wait_for_stderr(edge: &LogEdge, what: &str, within: Duration, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    while !check(&edge.output().1) {
        assert!(
            Instant::now() < deadline,
            "{what}: not in the edge's stderr:\n{}",
            edge.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once the access log (the edge's stdout) has a line for which `awaited` holds: no secret on
/// the edge's stdout or stderr, and the access log's lines parsed.
fn assert_no_secret_once(
    edge: &LogEdge,
    awaited: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let parse = |stdout: &str| -> Vec<serde_json::Value> {
        // Whole lines only: the access log is written out every 100 ms.
        let whole = stdout.rfind('\n').map_or("", |i| &stdout[..i]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    eventually("the access log's line", Duration::from_secs(10), || {
        parse(&edge.output().0).iter().any(&awaited)
    });
    let (stdout, stderr) = edge.output();
    for (name, text) in [("stdout (access log)", &stdout), ("stderr", &stderr)] {
        if let Some(at) = text.find(MARK) {
            let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("a secret on the edge's {name}: {}", &text[line..end]);
        }
    }
    parse(&stdout)
}

/// The error paths of a client that misbehaves, each with secrets in the path, the query and
/// `Authorization` (an aborted upload, a broken chunk, an HTTP/2 stream reset, a head cut
/// short): nothing of them on the edge's stdout (the access log) or stderr (the process log,
/// pingora's lines included), while the lines themselves are there, naming the request by
/// method, host, route and the redacted target.
#[test]
fn client_errors_log_no_secret() {
    let edge = start_log_edge("log-secrets-client");
    let port = edge.http;
    let data = format!("data.test:{port}");
    let login = format!("registry.test:{port}");
    let bearer = format!("Authorization: Bearer {MARK}3\r\n");

    // 1. The client aborts an upload mid-body (data side, and an upload on the login side).
    abort_upload(
        port,
        "PUT",
        &data,
        &format!("/upload/sig%3D{MARK}2?sig={MARK}1&sv=2020-10-02&access_token={MARK}4"),
        &bearer,
    );
    abort_upload(
        port,
        "PATCH",
        &login,
        &format!("/v2/team/app/blobs/uploads/u-1?_state={MARK}5"),
        &bearer,
    );
    wait_for_stderr(&edge, "client abort", Duration::from_secs(5), |e| {
        e.contains(&format!(
            "PUT {data} data /upload/REDACTED?sig=REDACTED&sv=2020-10-02&access_token=REDACTED"
        ))
    });

    // 2. A broken chunk in a chunked request body: 400, and pingora's line.
    let answer = bad_chunk(port, &data, &format!("/upload/x?sig={MARK}8"));
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    wait_for_stderr(&edge, "bad chunk", Duration::from_secs(5), |e| {
        e.contains("InvalidChunk")
            && e.contains(&format!("PATCH {data} data /upload/x?sig=REDACTED"))
    });

    // 3. An HTTP/2 stream the client resets mid-upload.
    let h2_data = format!("data.test:{}", edge.tls);
    h2_stream_reset(
        &edge,
        &h2_data,
        &format!("/upload/sig%3D{MARK}9?sig={MARK}10"),
        &format!("Bearer {MARK}11"),
    );
    wait_for_stderr(&edge, "h2 stream reset", Duration::from_secs(5), |e| {
        e.contains("stream error received")
            && e.contains(&format!(
                "PATCH {h2_data} data /upload/REDACTED?sig=REDACTED"
            ))
    });

    // 4. A head cut short.
    partial_head(port, &format!("/v2/x?sig={MARK}13"));
    wait_for_stderr(&edge, "a head cut short", Duration::from_secs(5), |e| {
        e.contains("while reading request headers")
    });

    // The access log names every request, redacted (the stream reset's line is the last).
    let lines = assert_no_secret_once(&edge, |l| l["host"] == h2_data.as_str());
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/upload/REDACTED" && l["host"] == data.as_str()),
        "{lines:?}"
    );
    // None of these client failures went past the burst: every one was written.
    let m = metrics_text(edge.admin);
    let kind = |k: &str| {
        sample(
            &m,
            &format!("registry_edge_log_client_errors_total{{kind=\"{k}\"}}"),
        )
    };
    let suppressed = "registry_edge_log_lines_suppressed_total{kind=\"client_closed\"}";
    assert!(m.contains(&format!("{suppressed} ")), "no {suppressed}");
    assert_eq!(sample(&m, suppressed), 0.0);
    assert!(kind("client_closed") >= 2.0);
    assert!(kind("bad_request") >= 1.0);
    assert!(kind("h2") >= 1.0);
}

/// The error paths of an upstream or a reader that fail, each with secrets in the path, the
/// query and `Authorization` (an upstream reset mid-response, a client that stops reading, a
/// data host whose only peer refuses connections, a target the login side refuses itself): no
/// secret on the edge's stdout or stderr, and pingora's lines name the redacted target.
#[test]
fn upstream_errors_and_timeouts_log_no_secret() {
    let edge = start_log_edge("log-secrets-upstream");
    let port = edge.http;
    let data = format!("data.test:{port}");
    let login = format!("registry.test:{port}");
    let bearer = format!("Authorization: Bearer {MARK}3\r\n");

    // 1. The upstream resets the connection mid-response.
    let mut s = connect(port);
    s.write_all(
        format!(
            "GET /layer/reset?sig={MARK}6 HTTP/1.1\r\nHost: {data}\r\nAuthorization: Basic {MARK}7\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let got = drain(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(200)]
    );
    assert!(
        got.len() < 10_000_000,
        "the reset reached the client as a short body"
    );
    wait_for_stderr(&edge, "upstream reset", Duration::from_secs(5), |e| {
        e.contains(&format!("GET {data} data /layer/reset?sig=REDACTED"))
    });

    // 2. A client that stops reading a large response: the write timeout (1 s).
    let mut s = connect(port);
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    s.write_all(format!("GET /layer/big?sig={MARK}12 HTTP/1.1\r\nHost: {data}\r\n\r\n").as_bytes())
        .unwrap();
    wait_for_stderr(&edge, "write timeout", Duration::from_secs(15), |e| {
        e.contains("WriteTimedout")
            && e.contains(&format!("GET {data} data /layer/big?sig=REDACTED"))
    });
    drop(s);

    // 3. A data host whose only peer refuses connections (502 after the attempts); a target
    //    the login side refuses itself.
    let r = get(
        port,
        &format!("down.test:{port}"),
        &format!("/blob/sig%3D{MARK}14?sig={MARK}15"),
        &bearer,
    );
    assert_eq!(r.status, 502, "{r:?}");
    let _ = get(
        port,
        &login,
        &format!("/v2/team/app/manifests/1?sig={MARK}16"),
        &bearer,
    );
    wait_for_stderr(&edge, "connect refused", Duration::from_secs(5), |e| {
        e.contains(&format!(
            "GET down.test:{port} data /blob/REDACTED?sig=REDACTED"
        ))
    });

    // The access log names every request, redacted (the login side's line is the last).
    let lines = assert_no_secret_once(&edge, |l| l["path"] == "/v2/team/app/manifests/1");
    assert!(
        lines.iter().any(|l| l["path"] == "/blob/REDACTED"),
        "{lines:?}"
    );
    let m = metrics_text(edge.admin);
    assert!(
        sample(
            &m,
            "registry_edge_log_client_errors_total{kind=\"client_timeout\"}"
        ) >= 1.0
    );
}

/// 500 misbehaving connections (heads cut short, uploads aborted mid-body, broken chunks): at
/// most BURST lines per kind reach the log, every record is counted, and one line per kind
/// says how many were suppressed.
#[test]
fn a_flood_of_client_errors_writes_a_bounded_log() {
    const CONNECTIONS: usize = 500;
    let edge = start_log_edge("log-flood");
    let port = edge.http;
    let data = format!("data.test:{port}");
    let start = Instant::now();
    let mut open = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = connect(port);
        let request = match i % 3 {
            0 => format!("GET /v2/x?sig={MARK}1 HTTP/1.1\r\nHost: regis"),
            1 => format!(
                "PUT /upload/x?sig={MARK}2 HTTP/1.1\r\nHost: {data}\r\nContent-Length: 100000\r\n\r\nabc"
            ),
            _ => format!(
                "PATCH /upload/y?sig={MARK}3 HTTP/1.1\r\nHost: {data}\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"
            ),
        };
        s.write_all(request.as_bytes()).unwrap();
        open.push(s);
        if open.len() >= 50 {
            std::thread::sleep(Duration::from_millis(20));
            open.clear();
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    open.clear();
    let flood = start.elapsed();

    // Every connection's record is counted once the edge has seen them all close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = edge.metric_sum("registry_edge_log_client_errors_total");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = edge.metric_sum("registry_edge_log_client_errors_total");
        if now == seen && now > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the count does not settle: {now}"
        );
        seen = now;
    }
    let suppressed = edge.metric_sum("registry_edge_log_lines_suppressed_total");
    let (_, stderr) = edge.output();
    let written = stderr
        .lines()
        .filter(|l| l.contains(" ERROR ") && l.contains("Fail to proxy: Downstream"))
        .count();
    let errors = stderr.lines().filter(|l| l.contains(" ERROR ")).count();
    eprintln!(
        "flood: {CONNECTIONS} connections in {flood:?}: {seen} client error records, {written} lines written, {suppressed} suppressed, {errors} ERROR lines in all"
    );
    assert!(
        seen >= (CONNECTIONS * 9 / 10) as f64,
        "most connections make pingora log a record: {seen}"
    );
    // Two kinds (client_closed, bad_request), at most two windows each while the flood lasts.
    assert!(
        written <= 4 * BURST,
        "{written} lines written:\n{}",
        edge.stderr_tail()
    );
    assert_eq!(
        errors,
        written,
        "no other ERROR line:\n{}",
        edge.stderr_tail()
    );
    assert_eq!(
        written as f64 + suppressed,
        seen,
        "every record written or suppressed"
    );

    // When a window ends, one line per kind sums up what it suppressed.
    let summed = |e: &str| -> f64 {
        e.lines()
            .filter_map(|l| l.split("suppressed ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_for_stderr(
        &edge,
        "the suppression summaries",
        Duration::from_secs(15),
        |e| summed(e) == suppressed,
    );
    let (stdout, stderr) = edge.output();
    assert!(
        !stdout.contains(MARK) && !stderr.contains(MARK),
        "a secret in the output"
    );
}
