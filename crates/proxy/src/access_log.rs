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
    pub request_id: &'a str,
    pub region: Option<&'a str>,
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

    /// A security event line, in the same stream as the requests.
    pub fn write_event(&self, mut event: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        if let Some(map) = event.as_object_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            map.insert("ts".into(), now.into());
        }
        let mut s = event.to_string();
        s.push('\n');
        if tx.try_send(s).is_err() {
            self.dropped.inc();
        }
    }

    pub fn write(&self, e: AccessEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = serde_json::json!({
            "ts": now,
            "request_id": e.request_id,
            "client": e.client_ip.map(|i| i.to_string()),
            "country": e.country.map(|c| String::from_utf8_lossy(&c).into_owned()),
            "decision": e.decision,
            "method": e.method,
            "host": e.host,
            // The path only: queries carry SAS signatures and tokens; and a credential that
            // slipped into the path itself is masked.
            "path": redact(e.path),
            "status": e.status,
            "bytes": e.bytes_sent,
            "duration_s": e.duration_s,
            "route": e.route,
            "upstream": e.upstream,
            "region": e.region,
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

/// Masks the value of `sig=`, `token=`, `access_token=`, `refresh_token=`, `password=` and
/// `client_secret=` wherever they appear in a path (`;`, `/` and `&` end a value).
pub fn redact(path: &str) -> std::borrow::Cow<'_, str> {
    const KEYS: [&str; 6] = [
        "sig=",
        "access_token=",
        "refresh_token=",
        "token=",
        "password=",
        "client_secret=",
    ];
    let lower = path.to_ascii_lowercase();
    if !KEYS.iter().any(|k| lower.contains(k)) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    let bytes = path.as_bytes();
    while i < bytes.len() {
        if let Some(k) = KEYS.iter().find(|k| lower[i..].starts_with(*k)) {
            out.push_str(&path[i..i + k.len()]);
            out.push_str("REDACTED");
            i += k.len();
            while i < bytes.len() && !matches!(bytes[i], b';' | b'/' | b'&') {
                i += 1;
            }
            continue;
        }
        let c = path[i..].chars().next().unwrap_or('?');
        out.push(c);
        i += c.len_utf8();
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_paths_are_masked() {
        assert_eq!(
            redact("/v2/team/app/manifests/1"),
            "/v2/team/app/manifests/1"
        );
        assert_eq!(
            redact("/blob;sig=AbC%2B/x&SIG=zz;token=t1/y"),
            "/blob;sig=REDACTED/x&SIG=REDACTED;token=REDACTED/y"
        );
        assert_eq!(redact("/a/access_token=abc"), "/a/access_token=REDACTED");
    }
}
