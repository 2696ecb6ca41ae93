//! A small HTTP/1.1 client (exact bytes, a connection reused on purpose, a chosen loopback
//! source address), curl where TLS and HTTP/2 matter, and what a test reads of the edge: its
//! metrics and its access log, polled until what is awaited shows.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::edge::Edge;
use super::origin::pattern;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub fn read_response(r: &mut impl BufRead, head: bool) -> Response {
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

/// Writes `raw` on the connection and reads one response (its head only after a HEAD).
pub fn send(stream: &mut TcpStream, raw: &str) -> Response {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    read_response(&mut r, raw.starts_with("HEAD "))
}

/// A GET on a fresh connection; `extra`: header lines, each ending in CRLF.
pub fn get(port: u16, host: &str, target: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    send(
        &mut s,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"),
    )
}

/// A request from a chosen loopback source address, on a fresh connection.
pub fn get_from(src: &str, port: u16, host: &str, target: &str, extra: &str) -> Response {
    let mut s = connect_from(src, port);
    send(
        &mut s,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"),
    )
}

pub fn connect_from(src: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&dst.into()).unwrap();
    sock.into()
}

/// An answer of the edge's own: `status`, an OCI error body with `code`, no `Server`.
pub fn assert_oci_error(r: &Response, status: u16, code: &str) {
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

/// `POST /v2/team/app/blobs/uploads/` on a new connection: the connection, for the rest of the
/// upload, and the answer.
pub fn start_upload(port: u16, host: &str) -> (TcpStream, Response) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let r = send(
        &mut s,
        &format!("POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
    );
    (s, r)
}

/// POST then a chunked PATCH of 3 MiB + 17 bytes of the pattern, on one connection.
pub fn uploads(edge: &Edge, host: &str) -> Response {
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

/// curl with `args`: (stdout, stderr).
pub fn curl(args: &[&str]) -> (String, String) {
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

pub fn metrics_text(admin: u16) -> String {
    String::from_utf8(get(admin, "a", "/metrics", "").body).unwrap()
}

/// The value of `series` (name and labels, exactly) in a metrics text; 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Until `check` holds, polled every 50 ms; fails naming `what` after `within`.
pub fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Until the metrics text holds every one of `needles`: that text. The requests a test made
/// are counted after their response is written, so a test that just got its answer polls.
pub fn metrics_with(admin: u16, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics_text(admin);
        let missing: Vec<&&str> = needles.iter().filter(|n| !m.contains(**n)).collect();
        if missing.is_empty() {
            return m;
        }
        assert!(Instant::now() < deadline, "metrics lack {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The edge's access log, whole lines only (its writer flushes every 100 ms).
pub fn access_log(edge: &Edge) -> String {
    let mut text = std::fs::read_to_string(edge.dir.join("access.log")).unwrap_or_default();
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    text
}

/// Until the access log has at least `n` lines for which `counts` holds: the whole log.
pub fn access_log_with(
    edge: &Edge,
    n: usize,
    counts: impl Fn(&serde_json::Value) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = access_log(edge);
        let found = log
            .lines()
            .filter(|l| counts(&serde_json::from_str(l).unwrap()))
            .count();
        if found >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{found} of {n} lines in the access log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
