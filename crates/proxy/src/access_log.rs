//! The access log: one JSON line per request, written by a dedicated thread. The request path
//! only formats the line and hands it over; when the writer falls behind, lines are dropped and
//! counted, never waited for.

use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use prometheus::IntCounter;
use registry_edge_config::AccessLog as Target;

/// Lines buffered between the request path and the writer thread.
const BUFFER_LINES: usize = 16 * 1024;

pub struct AccessEvent<'a> {
    pub client_ip: Option<IpAddr>,
    pub country: Option<[u8; 2]>,
    /// The access policy's refusal reason (also in detect mode).
    pub decision: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_s: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    /// Why the edge answered itself, when it did.
    pub edge: Option<&'a str>,
    pub rules: Vec<&'a str>,
    pub error: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: IntCounter,
}

impl AccessLog {
    pub fn start(target: &Target, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
            Target::Off => {
                return Ok(AccessLog { tx: None, dropped });
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
        let (tx, rx) = sync_channel::<String>(BUFFER_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
                while let Ok(line) = rx.recv() {
                    let _ = w.write_all(line.as_bytes());
                    // Flush when the queue is empty, so lines appear promptly when idle.
                    let mut more = true;
                    while more {
                        match rx.try_recv() {
                            Ok(l) => {
                                let _ = w.write_all(l.as_bytes());
                            }
                            Err(_) => more = false,
                        }
                    }
                    let _ = w.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
        })
    }

    pub fn write(&self, e: AccessEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = serde_json::json!({
            "ts": now,
            "client": e.client_ip.map(|i| i.to_string()),
            "country": e.country.map(|c| String::from_utf8_lossy(&c).into_owned()),
            "decision": e.decision,
            "method": e.method,
            "host": e.host,
            // The path only: queries carry SAS signatures and tokens.
            "path": e.path,
            "status": e.status,
            "bytes": e.bytes_sent,
            "duration_s": e.duration_s,
            "route": e.route,
            "upstream": e.upstream,
            "edge": e.edge,
            "rules": e.rules,
            "error": e.error,
            "user_agent": e.user_agent,
        });
        let mut s = line.to_string();
        s.push('\n');
        match tx.try_send(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
