//! The process log, behind a filter that every record passes through (the binary installs it
//! around env_logger with [`install`]):
//!
//! - **scrubbed**: the formatted message goes through [`crate::redact::scrub`] (queries and
//!   `key=value` words by the query allow-list, paths by the path allow-list, credentials after
//!   `Bearer`, `Basic`, `Authorization`, `Cookie` replaced), whoever wrote it — the edge,
//!   pingora, rustls;
//! - **rate-limited where clients drive it**: pingora's and rustls's ERROR and WARN records
//!   about a client's misbehaviour ([`classify`]: aborted connections and bodies, timeouts,
//!   malformed requests and chunked bodies, HTTP/2 resets and handshakes, TLS alerts) are
//!   written at most [`BURST`] per [`WINDOW`] and kind; the rest are counted and summed up in
//!   one line, `suppressed K similar log lines (kind) in the last 10 s`, when the window ends.
//!   Every such record is counted, written or not, in `registry_edge_log_client_errors_total`;
//!   the suppressed ones in `registry_edge_log_lines_suppressed_total` (both by kind).
//!
//! pingora's own lines name the request through `ProxyHttp::request_summary`, which the edge
//! overrides with [`crate::redact::summary`]; the scrubber is the second line of defence for
//! every line that names a request some other way.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use prometheus::{IntCounter, IntCounterVec, Opts};

/// Length of a rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines of one kind written per window; the rest are suppressed.
pub const BURST: u32 = 10;

/// Kinds of client misbehaviour (the `kind` label).
pub const KINDS: [&str; 6] = [
    "client_closed",
    "client_timeout",
    "bad_request",
    "h2",
    "tls",
    "client_other",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client closed or reset the connection (mid-body, mid-head, while being written to).
    ClientClosed = 0,
    /// The client stopped reading or sending within the listener's timeouts.
    ClientTimeout = 1,
    /// A request pingora could not parse: head, Content-Length, chunked body, extra body bytes.
    BadRequest = 2,
    /// HTTP/2: a handshake or protocol error, a stream reset by the client.
    H2 = 3,
    /// TLS: handshake failures and alerts (rustls's warnings, pingora's handshake errors).
    Tls = 4,
    /// Any other error pingora attributes to the downstream side.
    ClientOther = 5,
}

impl Kind {
    pub fn label(self) -> &'static str {
        KINDS[self as usize]
    }
}

/// Which kind of client misbehaviour a record reports, if any: only pingora's and rustls's
/// ERROR and WARN records are considered (the edge's own lines are never suppressed).
pub fn classify(target: &str, level: Level, message: &str) -> Option<Kind> {
    if level > Level::Warn {
        return None;
    }
    if target.starts_with("rustls") {
        return Some(Kind::Tls);
    }
    // pingora's lines, and the lean HTTP/1 session's, written in pingora's form.
    if !(target.starts_with("pingora") || target == crate::listen::lean::LOG_TARGET) {
        return None;
    }
    // Lines that name no error source (pingora-core's services and apps).
    if message.starts_with("Downstream handshake") {
        return Some(Kind::Tls);
    }
    if message.starts_with("H2 handshake error") || message.contains("malformed requests") {
        return Some(Kind::H2);
    }
    // Body framing a peer got wrong: more bytes than declared, a Content-Length that is not a
    // number (its raw value is in the line).
    if message.starts_with("Peer sent more data than expected")
        || message.starts_with("invalid content-length header")
        || message.starts_with("negative content-length header")
    {
        return Some(Kind::BadRequest);
    }
    // A pingora error prints `<source> <type> context: ...`; the first source named is the
    // error's own (its causes and the request summary come after it).
    let source = message
        .split([' ', ':', ','])
        .find(|w| matches!(*w, "Downstream" | "Upstream" | "Internal"));
    match source {
        Some("Downstream") => {}
        Some(_) => return None,
        None => {
            return (message.contains("to downstream") || message.contains("from downstream"))
                .then_some(Kind::ClientClosed);
        }
    }
    let etype = message
        .split("Downstream ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .unwrap_or_default();
    Some(match etype {
        "ReadError" | "WriteError" | "ConnectionClosed"
            if message.contains("stream error received") =>
        {
            Kind::H2
        }
        "ReadError" | "WriteError" | "ConnectionClosed" => Kind::ClientClosed,
        "ReadTimedout" | "WriteTimedout" => Kind::ClientTimeout,
        "InvalidHTTPHeader" | "H1Error" | "InvalidChunk" => Kind::BadRequest,
        "H2Error" | "InvalidH2" | "H2Downgrade" => Kind::H2,
        "TLSHandshakeFailure" | "TLSHandshakeTimedout" | "HandshakeError" | "InvalidCert" => {
            Kind::Tls
        }
        _ => Kind::ClientOther,
    })
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// Per-kind fixed windows: [`BURST`] lines per [`WINDOW`], then suppression.
#[derive(Debug)]
pub struct Limiter {
    windows: [Window; KINDS.len()],
    window: Duration,
    burst: u32,
}

/// What to do with a record of a rate-limited kind.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Lines suppressed in the window that just ended: say so before this record.
    pub summary: Option<u64>,
    pub write: bool,
}

impl Limiter {
    pub fn new(window: Duration, burst: u32) -> Limiter {
        Limiter {
            windows: [Window {
                start: None,
                written: 0,
                suppressed: 0,
            }; KINDS.len()],
            window,
            burst,
        }
    }

    pub fn admit(&mut self, kind: Kind, now: Instant) -> Verdict {
        let w = &mut self.windows[kind as usize];
        let mut summary = None;
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
        {
            if w.suppressed > 0 {
                summary = Some(w.suppressed);
            }
            *w = Window {
                start: Some(now),
                written: 0,
                suppressed: 0,
            };
        }
        let write = w.written < self.burst;
        if write {
            w.written += 1;
        } else {
            w.suppressed += 1;
        }
        Verdict { summary, write }
    }

    /// Kinds whose window has ended with lines suppressed, each with their count (the window
    /// is closed: a later record starts a new one).
    pub fn ended(&mut self, now: Instant) -> Vec<(Kind, u64)> {
        let mut out = Vec::new();
        for (i, w) in self.windows.iter_mut().enumerate() {
            let over = w
                .start
                .is_some_and(|s| now.saturating_duration_since(s) >= self.window);
            if over && w.suppressed > 0 {
                out.push((KIND_ORDER[i], w.suppressed));
                w.suppressed = 0;
                w.start = None;
            }
        }
        out
    }
}

const KIND_ORDER: [Kind; KINDS.len()] = [
    Kind::ClientClosed,
    Kind::ClientTimeout,
    Kind::BadRequest,
    Kind::H2,
    Kind::Tls,
    Kind::ClientOther,
];

/// The two counters, process-wide (the logger exists before the metrics registry; the
/// registry registers these same collectors).
pub struct Counters {
    pub client_errors: IntCounterVec,
    pub suppressed: IntCounterVec,
    seen: Vec<IntCounter>,
    dropped: Vec<IntCounter>,
}

fn build_counters() -> Result<Counters, prometheus::Error> {
    let client_errors = IntCounterVec::new(
        Opts::new(
            "registry_edge_log_client_errors_total",
            "Client misbehaviour pingora or rustls reported in a log record (aborted connections, timeouts, malformed requests, HTTP/2 and TLS errors), by kind, whether the line was written or suppressed.",
        ),
        &["kind"],
    )?;
    let suppressed = IntCounterVec::new(
        Opts::new(
            "registry_edge_log_lines_suppressed_total",
            "Log lines about client misbehaviour not written because their kind exceeded its rate (10 lines per 10 s), by kind.",
        ),
        &["kind"],
    )?;
    let seen = KINDS
        .iter()
        .map(|k| client_errors.get_metric_with_label_values(&[k]))
        .collect::<Result<_, _>>()?;
    let dropped = KINDS
        .iter()
        .map(|k| suppressed.get_metric_with_label_values(&[k]))
        .collect::<Result<_, _>>()?;
    Ok(Counters {
        client_errors,
        suppressed,
        seen,
        dropped,
    })
}

/// The process-wide counters (`None` only if the collectors could not be built, which their
/// constant names and labels rule out).
pub fn counters() -> Option<&'static Counters> {
    static COUNTERS: OnceLock<Option<Counters>> = OnceLock::new();
    COUNTERS.get_or_init(|| build_counters().ok()).as_ref()
}

/// The logger: `inner` behind the scrubber and the rate limit.
pub struct Filter<L> {
    inner: L,
    limiter: Mutex<Limiter>,
    window: Duration,
}

/// Target of the filter's own summary lines.
const TARGET: &str = "registry_edge::log";

impl<L: Log> Filter<L> {
    pub fn new(inner: L) -> Filter<L> {
        Filter::with_limits(inner, WINDOW, BURST)
    }

    pub fn with_limits(inner: L, window: Duration, burst: u32) -> Filter<L> {
        Filter {
            inner,
            limiter: Mutex::new(Limiter::new(window, burst)),
            window,
        }
    }

    fn summary(&self, kind: Kind, suppressed: u64) {
        let secs = self.window.as_secs();
        self.inner.log(
            &Record::builder()
                .level(Level::Warn)
                .target(TARGET)
                .args(format_args!(
                    "suppressed {suppressed} similar log lines ({}) in the last {secs} s; registry_edge_log_lines_suppressed_total counts them",
                    kind.label()
                ))
                .build(),
        );
    }

    /// Writes the summaries of windows that have ended (called periodically, so that the last
    /// burst of a flood is reported even when nothing follows it).
    pub fn flush_summaries(&self, now: Instant) {
        let ended = match self.limiter.lock() {
            Ok(mut l) => l.ended(now),
            Err(_) => return,
        };
        for (kind, n) in ended {
            self.summary(kind, n);
        }
    }
}

impl<L: Log> Log for Filter<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let target = record.target();
        let watched = record.level() <= Level::Warn
            && (target.starts_with("pingora")
                || target.starts_with("rustls")
                || target == crate::listen::lean::LOG_TARGET);
        if !watched && !self.inner.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        if watched {
            if let Some(kind) = classify(target, record.level(), &text) {
                let counters = counters();
                if let Some(c) = counters {
                    c.seen[kind as usize].inc();
                }
                let verdict = match self.limiter.lock() {
                    Ok(mut l) => l.admit(kind, Instant::now()),
                    Err(_) => Verdict {
                        summary: None,
                        write: true,
                    },
                };
                if let Some(n) = verdict.summary {
                    self.summary(kind, n);
                }
                if !verdict.write {
                    if let Some(c) = counters {
                        c.dropped[kind as usize].inc();
                    }
                    return;
                }
            }
            if !self.inner.enabled(record.metadata()) {
                return;
            }
        }
        let clean = crate::redact::scrub(&text);
        self.inner.log(
            &Record::builder()
                .metadata(record.metadata().clone())
                .args(format_args!("{clean}"))
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs `inner` behind the filter as the process logger, with `max` as the level filter,
/// and starts the thread that writes the summaries of ended windows.
pub fn install<L: Log + 'static>(inner: L, max: LevelFilter) -> Result<(), log::SetLoggerError> {
    let filter: &'static Filter<L> = Box::leak(Box::new(Filter::new(inner)));
    log::set_logger(filter)?;
    log::set_max_level(max);
    // Without the thread, a summary would wait for the next line of its kind.
    let _ = std::thread::Builder::new()
        .name("log-summary".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            filter.flush_summaries(Instant::now());
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Capture(Mutex<Vec<(Level, String, String)>>);

    impl Log for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            m.level() <= Level::Info
        }
        fn log(&self, r: &Record<'_>) {
            if self.enabled(r.metadata()) {
                self.0.lock().unwrap().push((
                    r.level(),
                    r.target().to_owned(),
                    r.args().to_string(),
                ));
            }
        }
        fn flush(&self) {}
    }

    fn record<'a>(level: Level, target: &'a str, args: std::fmt::Arguments<'a>) -> Record<'a> {
        Record::builder()
            .level(level)
            .target(target)
            .args(args)
            .build()
    }

    /// pingora 0.9.1's lines as they read for each client failure (checked against a running
    /// edge; the request summary is the edge's).
    const CLIENT_LINES: [(&str, Level, &str, Kind); 15] = [
        ("pingora_proxy", Level::Error, "Fail to proxy: Downstream ConnectionClosed context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, sni: 127.0.0.1 cause:  context: Peer prematurely closed connection with 950000 bytes of body remaining to read, status: 0, tries: 1, retry: false, PATCH registry.test login /v2/a/blobs/uploads/u1", Kind::ClientClosed),
        ("pingora_proxy", Level::Error, "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 45, downstream session type: h1", Kind::ClientClosed),
        ("pingora_proxy", Level::Error, "Fail to proxy: Downstream InvalidChunk context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, sni: 127.0.0.1 cause:  context: Invalid chunked encoding: InvalidChunkSize, status: 400, tries: 1, retry: false, PATCH registry.test login /v2/a", Kind::BadRequest),
        ("pingora_proxy", Level::Error, "Fail to proxy: Downstream WriteTimedout context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, sni: 127.0.0.1 cause:  context: writing body, timeout: 2s, status: 400, tries: 1, retry: false, GET registry.test login /v2/a/big", Kind::ClientTimeout),
        ("pingora_proxy", Level::Error, "Fail to proxy: Downstream ReadError context: Peer: addr: 127.0.0.1:15000, scheme: HTTP, sni: 127.0.0.1 cause:  context: while reading downstream request body cause: stream error received: stream no longer needed, status: 0, tries: 1, retry: false, PATCH registry.test login /v2/a", Kind::H2),
        (crate::listen::lean::LOG_TARGET, Level::Error, "Fail to proxy: Downstream ConnectionClosed context: while reading request headers cause: the client closed mid-head, downstream session type: lean", Kind::ClientClosed),
        ("pingora_core::apps", Level::Error, "H2 handshake error  HandshakeError context: while h2 handshaking with client cause: connection error detected: unspecific protocol error detected", Kind::H2),
        ("pingora_core::protocols::http::v2::server", Level::Warn, "tearing down downstream h2 connection after 3 malformed requests", Kind::H2),
        ("pingora_core::services::listening", Level::Error, "Downstream handshake error from 1.2.3.4:5: bad", Kind::Tls),
        ("pingora_proxy::proxy_trait", Level::Error, "failed to send error response to downstream:  WriteError context: x", Kind::ClientClosed),
        ("pingora_proxy::proxy_h1", Level::Error, "Error finish sending body to downstream: Downstream WriteError cause: Broken pipe", Kind::ClientClosed),
        ("pingora_core::protocols::http::v1::body", Level::Warn, "Peer sent more data than expected: extra 5 bytes", Kind::BadRequest),
        ("rustls::msgs::handshake", Level::Warn, "Illegal SNI hostname received \"x\"", Kind::Tls),
        ("pingora_core::protocols::http::v1::common", Level::Warn, "invalid content-length header value 12x", Kind::BadRequest),
        ("pingora_core::protocols::http::v1::common", Level::Warn, "negative content-length header value -1", Kind::BadRequest),
    ];

    #[test]
    fn client_lines_are_classified() {
        for (target, level, message, kind) in CLIENT_LINES {
            assert_eq!(classify(target, level, message), Some(kind), "{message}");
        }
        for (target, level, message) in [
            // Upstream failures and the edge's own lines are never rate-limited.
            ("registry_edge_proxy::service", Level::Error, "Fail to proxy: Downstream ConnectionClosed context: while reading request headers"),
            ("pingora_proxy", Level::Error, "Fail to proxy: Upstream ReadError context: Peer: addr: 127.0.0.1:15000 cause: Connection reset by peer (os error 104), status: 502, tries: 1, retry: false, GET registry.test login /v2/Downstream"),
            ("pingora_proxy", Level::Warn, "Fail to proxy: Upstream ConnectRefused context: Peer, tries: 1, retry: true, GET x login /"),
            ("registry_edge_proxy::lib", Level::Error, "Fail to proxy: Downstream ConnectionClosed"),
            ("pingora_proxy", Level::Info, "Fail to proxy: Downstream ConnectionClosed"),
            ("pingora_core::server", Level::Error, "Graceful shutdown broadcast failed: x"),
        ] {
            assert_eq!(classify(target, level, message), None, "{message}");
        }
        assert_eq!(
            classify(
                "pingora_proxy",
                Level::Error,
                "Fail to proxy: Downstream HTTPStatus context: x"
            ),
            Some(Kind::ClientOther)
        );
    }

    #[test]
    fn the_limiter_writes_a_burst_then_counts() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(10), 3);
        let write = |v: Verdict| (v.summary, v.write);
        for _ in 0..3 {
            assert_eq!(write(l.admit(Kind::ClientClosed, t0)), (None, true));
        }
        for _ in 0..5 {
            assert_eq!(write(l.admit(Kind::ClientClosed, t0)), (None, false));
        }
        // Another kind has its own window.
        assert_eq!(write(l.admit(Kind::H2, t0)), (None, true));
        assert!(l.ended(t0 + Duration::from_secs(9)).is_empty());
        // The next window starts with the summary of the last one.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(write(l.admit(Kind::ClientClosed, t1)), (Some(5), true));
        for _ in 0..4 {
            l.admit(Kind::ClientClosed, t1);
        }
        assert_eq!(
            l.ended(t1 + Duration::from_secs(10)),
            vec![(Kind::ClientClosed, 2)]
        );
        assert!(l.ended(t1 + Duration::from_secs(20)).is_empty());
        assert_eq!(
            write(l.admit(Kind::ClientClosed, t1 + Duration::from_secs(21))),
            (None, true)
        );
    }

    #[test]
    fn records_are_scrubbed_limited_and_counted() {
        let f = Filter::with_limits(Capture::default(), Duration::from_secs(3600), 2);
        let c = counters().unwrap();
        let seen = c.seen[Kind::ClientClosed as usize].get();
        let dropped = c.dropped[Kind::ClientClosed as usize].get();
        let line = "Fail to proxy: Downstream ConnectionClosed context: x, PATCH /v2/a/sig%3DS2?sig=S1&n=1";
        for _ in 0..5 {
            f.log(&record(
                Level::Error,
                "pingora_proxy",
                format_args!("{line}"),
            ));
        }
        // The edge's own lines and upstream errors are written, scrubbed, whatever the rate.
        for _ in 0..3 {
            f.log(&record(
                Level::Error,
                "registry_edge_proxy",
                format_args!("refused Authorization: Bearer S3"),
            ));
            f.log(&record(
                Level::Error,
                "pingora_proxy",
                format_args!("Fail to proxy: Upstream ReadError, GET /x?access_token=S4"),
            ));
        }
        f.log(&record(
            Level::Debug,
            "pingora_proxy",
            format_args!("not enabled"),
        ));
        let lines = f.inner.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2 + 3 + 3, "{lines:?}");
        let text: String = lines.iter().map(|l| format!("{}\n", l.2)).collect();
        for secret in ["S1", "S2", "S3", "S4", "not enabled"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        assert!(
            text.contains("PATCH /v2/a/REDACTED?sig=REDACTED&n=1"),
            "{text}"
        );
        assert!(text.contains("Authorization: REDACTED"), "{text}");
        assert_eq!(c.seen[Kind::ClientClosed as usize].get() - seen, 5);
        assert_eq!(c.dropped[Kind::ClientClosed as usize].get() - dropped, 3);
        // The window's end writes one summary line.
        f.flush_summaries(Instant::now() + Duration::from_secs(3601));
        let lines = f.inner.0.lock().unwrap().clone();
        let last = lines.last().unwrap();
        assert_eq!(last.0, Level::Warn);
        assert_eq!(last.1, TARGET);
        assert!(
            last.2
                .starts_with("suppressed 3 similar log lines (client_closed)"),
            "{last:?}"
        );
    }
}
