//! The access log: one JSON line per request. The request path formats its line straight into
//! a shared buffer (no allocation, no system call); a dedicated thread writes the buffer out
//! every [`FLUSH_EVERY`], or at once when it holds [`FLUSH_BYTES`]. When the writer falls behind
//! and the buffer holds [`MAX_BYTES`], lines are dropped and counted, never waited for.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use registry_edge_config::AccessLog as Target;

use crate::clock::since_epoch;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// Beyond this, lines are dropped (the destination is too slow).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

pub struct AccessEvent<'a> {
    pub request_id: &'a str,
    pub region: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub country: Option<[u8; 2]>,
    /// The access policy's refusal reason (also in detect mode).
    pub decision: Option<&'a str>,
    pub method: &'a str,
    /// The client's Host (or `:authority`); written when made of host-name characters.
    pub host: &'a str,
    /// The request's path, or its path and query (`path?query`): written as `path` and
    /// `query` through [`crate::redact`]'s allow-lists.
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration: std::time::Duration,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    /// Why the edge answered itself, when it did.
    pub edge: Option<&'a str>,
    /// How a blob request with a cache token was served (blob_cache::CacheUse).
    pub cache: Option<&'a str>,
    pub rules: Vec<&'a str>,
    pub error: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

struct Writer {
    lines: Mutex<Vec<u8>>,
    thread: std::thread::Thread,
}

pub struct AccessLog {
    writer: Option<Arc<Writer>>,
    dropped: IntCounter,
}

impl AccessLog {
    pub fn start(target: &Target, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
            Target::Off => {
                return Ok(AccessLog {
                    writer: None,
                    dropped,
                });
            }
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (handle_tx, handle_rx) = std::sync::mpsc::channel::<Arc<Writer>>();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let Ok(writer) = handle_rx.recv() else { return };
                let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_BYTES * 2);
                loop {
                    std::thread::park_timeout(FLUSH_EVERY);
                    if let Ok(mut lines) = writer.lines.lock() {
                        std::mem::swap(&mut *lines, &mut spare);
                    }
                    if !spare.is_empty() {
                        let _ = out.write_all(&spare);
                        let _ = out.flush();
                        // Keep a normal-sized allocation; give back one a burst grew.
                        if spare.capacity() > FLUSH_BYTES * 4 {
                            spare = Vec::with_capacity(FLUSH_BYTES * 2);
                        } else {
                            spare.clear();
                        }
                    }
                    if Arc::strong_count(&writer) == 1 {
                        return;
                    }
                }
            })?
            .thread()
            .clone();
        let writer = Arc::new(Writer {
            lines: Mutex::new(Vec::with_capacity(FLUSH_BYTES * 2)),
            thread,
        });
        let _ = handle_tx.send(writer.clone());
        Ok(AccessLog {
            writer: Some(writer),
            dropped,
        })
    }

    /// Appends one line through `format` (which writes the JSON object without the newline);
    /// drops and counts it when the buffer is full.
    fn append(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let Some(w) = &self.writer else { return };
        let Ok(mut lines) = w.lines.lock() else {
            self.dropped.inc();
            return;
        };
        if lines.len() >= MAX_BYTES {
            drop(lines);
            self.dropped.inc();
            return;
        }
        let before = lines.len();
        format(&mut lines);
        lines.push(b'\n');
        let wake = before < FLUSH_BYTES && lines.len() >= FLUSH_BYTES;
        drop(lines);
        if wake {
            w.thread.unpark();
        }
    }

    /// A security event line, in the same stream as the requests.
    pub fn write_event(&self, mut event: serde_json::Value) {
        if let Some(map) = event.as_object_mut() {
            map.insert("ts".into(), since_epoch().as_secs_f64().into());
        }
        self.append(|out| {
            let _ = serde_json::to_writer(out, &event);
        });
    }

    pub fn write(&self, e: AccessEvent<'_>) {
        let now = since_epoch();
        self.append(|out| format_event(out, &e, now));
    }
}

/// One request's JSON object. `now`: since the Unix epoch. Numbers are written without
/// `core::fmt` (a request's line is formatted on the request path).
pub fn format_event(out: &mut Vec<u8>, e: &AccessEvent<'_>, now: std::time::Duration) {
    out.extend_from_slice(b"{\"ts\":");
    push_seconds(out, now);
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, e.request_id);
    out.extend_from_slice(b",\"client\":");
    quoted_or_null(out, e.client_ip, crate::headers::push_ip);
    out.extend_from_slice(b",\"country\":");
    match e.country {
        // ISO codes: two ASCII letters (anything else in a database is written escaped).
        Some(c) if c.iter().all(u8::is_ascii_alphanumeric) => {
            out.push(b'"');
            out.extend_from_slice(&c);
            out.push(b'"');
        }
        Some(c) => json_str(out, &String::from_utf8_lossy(&c)),
        None => out.extend_from_slice(b"null"),
    }
    field(out, "decision", e.decision);
    field(out, "method", Some(e.method));
    // Host, path and query through the allow-lists of crate::redact (what they write needs no
    // JSON escaping): SAS signatures, tokens and upload states never reach the log, nor a
    // credential smuggled into a path segment.
    out.extend_from_slice(b",\"host\":\"");
    crate::redact::write_host(out, e.host);
    let (path, query) = match e.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (e.path, None),
    };
    out.extend_from_slice(b"\",\"path\":\"");
    crate::redact::write_path(out, path);
    out.extend_from_slice(b"\",\"query\":");
    quoted_or_null(out, query, crate::redact::write_query);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes\":");
    push_u64(out, e.bytes_sent as u64);
    out.extend_from_slice(b",\"duration_s\":");
    push_seconds(out, e.duration);
    field(out, "route", e.route);
    field(out, "upstream", e.upstream);
    field(out, "region", e.region);
    field(out, "edge", e.edge);
    field(out, "cache", e.cache);
    out.extend_from_slice(b",\"rules\":[");
    for (i, r) in e.rules.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, r);
    }
    out.push(b']');
    field(out, "error", e.error);
    field(out, "user_agent", e.user_agent);
    out.push(b'}');
}

/// `,"name":"value"` or `,"name":null`.
fn field(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `"…"` with what `write` writes inside (characters that need no JSON escaping), or `null`.
fn quoted_or_null<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(v) => {
            out.push(b'"');
            write(out, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Seconds with six decimals (microseconds), as `{:.6}` of the seconds would print them
/// (truncated to the microsecond rather than rounded).
fn push_seconds(out: &mut Vec<u8>, d: std::time::Duration) {
    push_u64(out, d.as_secs());
    let micros = d.subsec_micros();
    let mut frac = [b'.', b'0', b'0', b'0', b'0', b'0', b'0'];
    let mut m = micros;
    for slot in frac[1..].iter_mut().rev() {
        *slot = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&frac);
}

/// Bytes a JSON string can't hold as they are: quotes, backslashes and control characters.
static ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// A JSON string: quotes, backslashes and control characters escaped.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => b"",
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_every_field_escaped() {
        let e = AccessEvent {
            request_id: "00ab",
            region: Some("eastus"),
            client_ip: Some("2001:db8::7".parse().unwrap()),
            country: Some(*b"DE"),
            decision: None,
            method: "GET",
            host: "registry.example",
            path: "/v2/a\"b\\c\n\u{1}/blobs;sig=secret",
            status: 307,
            bytes_sent: 12,
            duration: std::time::Duration::from_micros(1_500),
            route: Some("login"),
            upstream: None,
            edge: None,
            cache: None,
            rules: vec!["registry:location", "x\"y"],
            error: None,
            user_agent: Some("containerd/1.7 \u{e9}"),
        };
        let mut out = Vec::new();
        format_event(
            &mut out,
            &e,
            std::time::Duration::from_millis(1_700_000_000_250),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], 1_700_000_000.25);
        assert_eq!(v["client"], "2001:db8::7");
        assert_eq!(v["country"], "DE");
        assert_eq!(v["decision"], serde_json::Value::Null);
        assert_eq!(v["host"], "registry.example");
        assert_eq!(v["path"], "/v2/REDACTED/REDACTED");
        assert_eq!(v["query"], serde_json::Value::Null);
        assert_eq!(v["status"], 307);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_s"], 0.0015);
        assert_eq!(v["rules"], serde_json::json!(["registry:location", "x\"y"]));
        assert_eq!(v["user_agent"], "containerd/1.7 \u{e9}");
        assert_eq!(v["cache"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 20);
    }

    #[test]
    fn numbers_are_written_as_core_fmt_would() {
        for n in [0u64, 7, 10, 99, 1_000, 4_294_967_296, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for (d, text) in [
            (std::time::Duration::ZERO, "0.000000"),
            (std::time::Duration::new(5, 1_000), "5.000001"),
            (std::time::Duration::new(0, 999_999_999), "0.999999"),
            (
                std::time::Duration::new(1_700_000_000, 250_000_000),
                "1700000000.250000",
            ),
        ] {
            let mut out = Vec::new();
            push_seconds(&mut out, d);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn every_character_survives_a_json_round_trip() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("\u{e9}\u{2028}\u{1f600}");
        for s in [all.as_str(), "", "plain", "\"", "\\", "a\u{0}b"] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
            assert!(!out.iter().any(|b| *b < 0x20 || *b == 0x7f), "{out:?}");
        }
    }

    #[test]
    fn lines_reach_the_file_and_overflow_is_counted() {
        let dir = std::env::temp_dir().join(format!("re-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(&Target::File(path.clone()), dropped.clone()).unwrap();
        for i in 0..1000 {
            log.write_event(serde_json::json!({ "event": "e", "n": i }));
        }
        std::thread::sleep(FLUSH_EVERY * 4);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert_eq!(dropped.get(), 0);
        // A destination that never keeps up: the buffer stops at MAX_BYTES and counts the rest.
        let stuck = AccessLog {
            writer: Some(Arc::new(Writer {
                lines: Mutex::new(Vec::new()),
                thread: std::thread::current(),
            })),
            dropped: dropped.clone(),
        };
        let line = "x".repeat(1000);
        for _ in 0..(MAX_BYTES / 1000 + 100) {
            stuck.write_event(serde_json::json!({ "pad": line }));
        }
        assert!(dropped.get() >= 90, "{}", dropped.get());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn targets_are_written_through_the_allow_lists() {
        let line = |host: &str, path: &str| {
            let e = AccessEvent {
                request_id: "1",
                region: None,
                client_ip: None,
                country: None,
                decision: None,
                method: "GET",
                host,
                path,
                status: 200,
                bytes_sent: 0,
                duration: std::time::Duration::ZERO,
                route: None,
                upstream: None,
                edge: None,
                cache: None,
                rules: Vec::new(),
                error: None,
                user_agent: None,
            };
            let mut out = Vec::new();
            format_event(&mut out, &e, std::time::Duration::ZERO);
            let text = String::from_utf8(out).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            (text, v)
        };
        let (_, v) = line("registry.example:443", "/v2/team/app/manifests/1");
        assert_eq!(v["path"], "/v2/team/app/manifests/1");
        assert_eq!(v["query"], serde_json::Value::Null);
        let (text, v) = line(
            "evil\"host?sig=SECRET0",
            "/blob;sig=SECRET1/x/sig%3DSECRET2?sv=2020-10-02&sig=SECRET3&access_token=SECRET4&_state=SECRET5&n=10",
        );
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(v["host"], "REDACTED");
        assert_eq!(v["path"], "/REDACTED/x/REDACTED");
        assert_eq!(
            v["query"],
            "sv=2020-10-02&sig=REDACTED&access_token=REDACTED&_state=REDACTED&n=10"
        );
    }
}
