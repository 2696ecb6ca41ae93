//! Downstream protection: a head trickled in is cut at the header deadline, a connection carries
//! at most `max_requests_per_connection` requests and is closed when idle, a reader that stops
//! reading is dropped after the write timeout, and a slow reader of a large blob holds the
//! origin back instead of filling the edge's memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{access_log_with, get, is_pattern, send, start_edge, Edge, HTTP_OPTS, SAS};

/// Short listener deadlines, and three requests per connection.
const PROTECT_OPTS: &str =
    "    timeouts: { header_read: 2s, idle: 3s, write: 2s }\n    max_requests_per_connection: 3\n";

fn start_protected(name: &str) -> Edge {
    start_edge(name, PROTECT_OPTS)
}

/// Slowloris: a head trickled one byte at a time, each byte well inside the idle timeout, is cut
/// at the total header deadline.
#[test]
fn a_trickled_head_is_cut_at_the_header_deadline() {
    let edge = start_protected("protect-slowloris");
    let host = format!("registry.test:{}", edge.http);
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
}

#[test]
fn a_connection_ends_after_its_last_request_and_when_idle() {
    let edge = start_protected("protect-reuse");
    let host = format!("registry.test:{}", edge.http);

    // A head sent at a normal pace on a reused connection is not affected by earlier requests
    // (the pauses add up to more than the header deadline).
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
}

/// A reader that stops reading a large body is dropped after the write timeout, and the edge
/// stays responsive.
#[test]
fn a_stalled_reader_is_dropped_after_the_write_timeout() {
    let edge = start_protected("protect-stalled");
    let host = format!("registry.test:{}", edge.http);
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
    // The request ends (and is logged) when the edge gives up on the reader.
    access_log_with(&edge, 1, |l| {
        l["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("data.test"))
    });
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
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
        if !is_pattern(&buf[..n], got) {
            mismatch = true;
        }
        got += n as u64;
        reads += 1;
        // A reader slower than the origin: the edge must hold the origin back, not buffer.
        if reads.is_multiple_of(64) {
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
