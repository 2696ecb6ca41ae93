//! HTTP/1 framing (RFC 9112), run by the same table against both HTTP/1 sessions
//! (`server.http1: pingora` and `lean`): each case is written raw on a fresh connection, and its
//! outcome is what the client got (statuses, and whether the connection stayed open) and what
//! reached the origin (each echoed request's body length and whether its bytes were the ones
//! sent). Where the two sessions differ, the table says so, case by case: the lean session is
//! stricter where RFC 9112 lets a server choose, never looser.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const HOST: &str = "registry.test";
const ECHO: &str = "/v2/echo/app/manifests/x";

/// `n` bytes of the origin's pattern: the echo reports whether the body it got was exactly that.
fn body(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern).collect()
}

fn head(method: &str, version: &str, fields: &str) -> Vec<u8> {
    format!("{method} {ECHO} HTTP/{version}\r\nHost: {HOST}\r\n{fields}\r\n").into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn chunked(data: &[u8], size: usize, ext: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(size) {
        out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// What happened to one case: every response's status (an echoed one with the body length the
/// origin saw and `ok` when its bytes were the pattern), then `open` or `closed`.
fn outcome(port: u16, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut parts = Vec::new();
    let mut closed = false;
    // As many responses as there are requests, at most.
    let requests = raw
        .windows(10)
        .filter(|w| w.starts_with(b" /v2/echo/"))
        .count()
        .max(1);
    for _ in 0..requests {
        let mut first = [0u8; 1];
        match r.read(&mut first) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
        let mut rest = BufReader::new(std::io::Read::chain(&first[..], &mut r));
        let resp = read_response(&mut rest, false);
        if resp.status == 200 {
            let j = resp.json();
            parts.push(format!(
                "200 len={}{}",
                j["body_len"],
                if j["body_ok"] == true { " ok" } else { "" }
            ));
        } else {
            parts.push(resp.status.to_string());
        }
        if resp
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            closed = true;
            break;
        }
    }
    if !closed {
        // Open: a further request is answered on the same connection.
        s.write_all(&head("GET", "1.1", "")).unwrap();
        let mut first = [0u8; 1];
        closed = !matches!(r.read(&mut first), Ok(1));
    }
    parts.push(if closed { "closed" } else { "open" }.to_string());
    parts.join(", ")
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    pingora: &'static str,
    /// `None`: the same as pingora's.
    lean: Option<&'static str>,
}

fn case(
    name: &'static str,
    raw: Vec<u8>,
    pingora: &'static str,
    lean: Option<&'static str>,
) -> Case {
    Case {
        name,
        raw,
        pingora,
        lean,
    }
}

fn cases() -> Vec<Case> {
    let b5 = body(5);
    let b300 = body(300);
    let many: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(1_100_000));
    vec![
        case(
            "no body",
            head("GET", "1.1", ""),
            "200 len=0 ok, open",
            None,
        ),
        case(
            "Content-Length body",
            cat(&[&head("PUT", "1.1", "Content-Length: 300\r\n"), &b300]),
            "200 len=300 ok, open",
            None,
        ),
        case(
            "chunked body with extensions",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked\r\n"),
                &chunked(&b300, 7, ";name=\"v\""),
            ]),
            "200 len=300 ok, open",
            None,
        ),
        case(
            "chunked body with a trailer",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked\r\n"),
                b"5\r\n",
                &b5,
                b"\r\n0\r\nX-Trailer: 1\r\n\r\n",
            ]),
            "200 len=5 ok, open",
            None,
        ),
        case(
            "identical Content-Length twice",
            cat(&[
                &head("PUT", "1.1", "Content-Length: 5\r\nContent-Length: 5\r\n"),
                &b5,
            ]),
            "200 len=5 ok, open",
            None,
        ),
        case(
            "differing Content-Length",
            cat(&[
                &head("PUT", "1.1", "Content-Length: 5\r\nContent-Length: 6\r\n"),
                &b5,
            ]),
            "400, closed",
            None,
        ),
        case(
            "Content-Length with a sign",
            cat(&[&head("PUT", "1.1", "Content-Length: +5\r\n"), &b5]),
            "400, closed",
            None,
        ),
        case(
            "Content-Length and Transfer-Encoding",
            cat(&[
                &head(
                    "PUT",
                    "1.1",
                    "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                ),
                &chunked(&b5, 5, ""),
            ]),
            "200 len=5 ok, open",
            Some("400, closed"),
        ),
        case(
            "Transfer-Encoding other than chunked last",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked, gzip\r\n"),
                &b5,
            ]),
            "400, closed",
            None,
        ),
        case(
            "Transfer-Encoding with chunked after another coding",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: gzip, chunked\r\n"),
                &chunked(&b5, 5, ""),
            ]),
            "200 len=5 ok, open",
            Some("400, closed"),
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            cat(&[
                &head("PUT", "1.0", "Transfer-Encoding: chunked\r\n"),
                &chunked(&b5, 5, ""),
            ]),
            "400, closed",
            None,
        ),
        case(
            "chunk-size line ended by a bare LF",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked\r\n"),
                b"5\n",
                &b5,
                b"\r\n0\r\n\r\n",
            ]),
            "400, closed",
            None,
        ),
        case(
            "chunk data not followed by CRLF",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked\r\n"),
                b"5\r\n",
                &b5,
                b"XX0\r\n\r\n",
            ]),
            "400, closed",
            None,
        ),
        case(
            "chunk size over 64 bits",
            cat(&[
                &head("PUT", "1.1", "Transfer-Encoding: chunked\r\n"),
                b"10000000000000005\r\n",
                &b5,
                b"\r\n0\r\n\r\n",
            ]),
            "400, closed",
            None,
        ),
        case(
            "obs-fold",
            head("GET", "1.1", "X-A: a\r\n b\r\n"),
            "400, closed",
            None,
        ),
        case(
            "bare CR in a field",
            head("GET", "1.1", "X-A: a\rb\r\n"),
            "400, closed",
            None,
        ),
        case(
            "space before a field's colon",
            head("GET", "1.1", "X-A : a\r\n"),
            "400, closed",
            None,
        ),
        case(
            "bare LF line endings",
            format!("GET {ECHO} HTTP/1.1\nHost: {HOST}\n\n").into_bytes(),
            "200 len=0 ok, open",
            None,
        ),
        case(
            "no Host in HTTP/1.1",
            format!("GET {ECHO} HTTP/1.1\r\n\r\n").into_bytes(),
            "421, open",
            None,
        ),
        case(
            "Host twice",
            head("GET", "1.1", &format!("Host: {HOST}\r\n")),
            "400, closed",
            None,
        ),
        case(
            "absolute-form target naming another host",
            format!("GET http://elsewhere.test{ECHO} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
                .into_bytes(),
            "400, closed",
            None,
        ),
        case("300 fields", head("GET", "1.1", &many), "400, closed", None),
        case(
            "a head over 1 MiB",
            head("GET", "1.1", &huge),
            "400, closed",
            None,
        ),
        case(
            "HTTP/1.0 without keep-alive",
            head("GET", "1.0", ""),
            "200 len=0 ok, open",
            Some("200 len=0 ok, closed"),
        ),
        case(
            "HTTP/1.0 with keep-alive",
            head("GET", "1.0", "Connection: keep-alive\r\n"),
            "200 len=0 ok, open",
            None,
        ),
        case(
            "Connection: close",
            head("GET", "1.1", "Connection: close\r\n"),
            "200 len=0 ok, closed",
            None,
        ),
        case(
            "two requests pipelined",
            cat(&[
                &head("PUT", "1.1", "Content-Length: 5\r\n"),
                &b5,
                &head("GET", "1.1", ""),
            ]),
            "200 len=5 ok, closed",
            Some("200 len=5 ok, 200 len=0 ok, open"),
        ),
    ]
}

fn run(http1: &str) -> Vec<String> {
    let edge = start_edge_opts(
        &format!("framing-{http1}"),
        &EdgeOpts {
            http1: Some(http1),
            ..EdgeOpts::default()
        },
    );
    let mut wrong = Vec::new();
    for c in cases() {
        let got = outcome(edge.http, &c.raw);
        let want = if http1 == "lean" {
            c.lean.unwrap_or(c.pingora)
        } else {
            c.pingora
        };
        if got != want {
            wrong.push(format!("{http1}: {}: got `{got}`, want `{want}`", c.name));
        }
    }
    wrong
}

/// The framing table against pingora's HTTP/1 session.
#[test]
fn framing_pingora_session() {
    let wrong = run("pingora");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The same table against the lean HTTP/1 session.
#[test]
fn framing_lean_session() {
    let wrong = run("lean");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
