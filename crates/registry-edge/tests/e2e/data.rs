//! The data endpoint, as Azure Storage behaves behind ACR: it serves the registry's storage
//! directory by path (GET/HEAD, Range → 206), answers 400 `InvalidAuthenticationInfo` to any request
//! that carries `Authorization`, and 403 to one without a valid SAS signature. The SAS is the
//! harness's ACR-ism: the login-side shim appends it to the registry's blob redirects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use crate::http1::{serve, Body, Request, Response};

/// Signs and checks the SAS-like query: `sv`, `se` (expiry, ISO 8601 with `:` percent-encoded),
/// `sr`, `sp` and `sig`, the percent-encoded base64 HMAC-SHA256 of `sp`, `se` and the path. The
/// query is compared byte for byte: a proxy that decodes or re-encodes it breaks the signature.
pub struct Sas {
    key: ring::hmac::Key,
}

const SV: &str = "2021-08-06";

impl Sas {
    pub fn new() -> Sas {
        let rng = ring::rand::SystemRandom::new();
        Sas {
            key: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("HMAC key"),
        }
    }

    fn sig(&self, path: &str, se: &str) -> String {
        let tag = ring::hmac::sign(&self.key, format!("r\n{se}\n{path}").as_bytes());
        pct(&base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
    }

    /// The query for `path`, valid for an hour.
    pub fn sign(&self, path: &str) -> String {
        let se = pct(&iso8601(unix_now() + 3600));
        format!("sv={SV}&se={se}&sr=b&sp=r&sig={}", self.sig(path, &se))
    }

    pub fn verify(&self, path: &str, query: &str) -> Result<(), &'static str> {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let (Some(se), Some(sig)) = (param("se"), param("sig")) else {
            return Err("no signature");
        };
        if param("sv") != Some(SV) || param("sr") != Some("b") || param("sp") != Some("r") {
            return Err("signature fields");
        }
        if sig.as_bytes() != self.sig(path, se).as_bytes() {
            return Err("signature mismatch");
        }
        Ok(())
    }
}

/// Percent-encodes what Azure encodes in a SAS: everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-11-23T12:00:00Z` from Unix seconds (days → civil date, proleptic Gregorian).
pub fn iso8601(t: u64) -> String {
    let (days, secs) = ((t / 86400) as i64, t % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// What the data endpoint saw.
#[derive(Clone, Debug)]
pub struct DataHit {
    pub method: String,
    pub path: String,
    pub authorization: bool,
    pub range: Option<String>,
    pub status: u16,
}

/// Which byte a corrupting fault changes.
#[derive(Clone, Copy)]
enum Flip {
    Last,
    Middle,
}

pub struct DataServer {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<DataHit>>>,
    /// Paths whose bytes are served with the last one changed (a storage fault), as long as
    /// they are listed.
    pub corrupt: Arc<Mutex<Vec<String>>>,
    /// Paths whose bytes are served with the middle one changed (inside a chunk the edge relays
    /// between plain sockets before the body is verified), as long as they are listed.
    pub corrupt_middle: Arc<Mutex<Vec<String>>>,
    /// Paths whose answer declares one byte more than it sends, then the connection closes
    /// (storage that stops mid-body), as long as they are listed.
    pub truncated: Arc<Mutex<Vec<String>>>,
}

fn azure_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    Response::new(
        status,
        &[
            ("Content-Type", "application/xml"),
            ("x-ms-error-code", code),
            ("x-ms-version", SV),
        ],
        body,
    )
}

fn serve_blob(root: &std::path::Path, sas: &Sas, req: &Request) -> Response {
    if req.header("authorization").is_some() {
        return azure_error(
            400,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
        );
    }
    let path = req.path();
    if let Err(why) = sas.verify(path, req.query()) {
        return azure_error(
            403,
            "AuthenticationFailed",
            &format!("Server failed to authenticate the request: {why}."),
        );
    }
    if req.method != "GET" && req.method != "HEAD" {
        return azure_error(
            405,
            "UnsupportedHttpVerb",
            "The resource doesn't support the specified HTTP verb.",
        );
    }
    let rel = path.trim_start_matches('/');
    if !path.starts_with("/docker/registry/v2/blobs/") || rel.split('/').any(|s| s == "..") {
        return azure_error(404, "BlobNotFound", "The specified blob does not exist.");
    }
    let file = root.join(rel);
    let Ok(meta) = std::fs::metadata(&file) else {
        return azure_error(404, "BlobNotFound", "The specified blob does not exist.");
    };
    let size = meta.len();
    let base = [
        ("Content-Type", "application/octet-stream".to_string()),
        ("Accept-Ranges", "bytes".to_string()),
        ("x-ms-version", SV.to_string()),
        ("x-ms-blob-type", "BlockBlob".to_string()),
    ];
    let mut headers: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (status, start, len) = match req.header("range").map(|r| parse_range(r, size)) {
        None => (200, 0, size),
        Some(Some((a, b))) => {
            headers.push(("Content-Range".into(), format!("bytes {a}-{b}/{size}")));
            (206, a, b - a + 1)
        }
        Some(None) => {
            let mut r = azure_error(
                416,
                "InvalidRange",
                "The range specified is invalid for the current size of the resource.",
            );
            r.headers
                .push(("Content-Range".into(), format!("bytes */{size}")));
            return r;
        }
    };
    Response {
        status,
        headers,
        body: Body::File {
            path: file,
            start,
            len,
        },
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: the inclusive range, or None (416).
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (a <= b && b < size).then_some((a, b))
}

pub fn start(rt: &tokio::runtime::Runtime, root: PathBuf, sas: Arc<Sas>) -> DataServer {
    let hits: Arc<Mutex<Vec<DataHit>>> = Arc::default();
    let corrupt: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = hits.clone();
    let faults = corrupt.clone();
    let corrupt_middle: Arc<Mutex<Vec<String>>> = Arc::default();
    let faults_middle = corrupt_middle.clone();
    let truncated: Arc<Mutex<Vec<String>>> = Arc::default();
    let short = truncated.clone();
    let addr = serve(
        rt,
        Arc::new(move |req: Request| {
            let mut resp = serve_blob(&root, &sas, &req);
            let listed = |list: &Mutex<Vec<String>>| {
                list.lock().expect("faults").iter().any(|p| p == req.path())
            };
            let flip = if listed(&faults) {
                Some(Flip::Last)
            } else if listed(&faults_middle) {
                Some(Flip::Middle)
            } else {
                None
            };
            if let (Some(flip), 200, Body::File { path, start, len }) =
                (flip, resp.status, &resp.body)
            {
                let mut bytes = std::fs::read(path).expect("blob");
                bytes.truncate((*start + *len) as usize);
                bytes.drain(..*start as usize);
                let at = match flip {
                    Flip::Last => bytes.len().checked_sub(1),
                    Flip::Middle => Some(bytes.len() / 2),
                };
                if let Some(b) = at.and_then(|i| bytes.get_mut(i)) {
                    *b ^= 0xff;
                }
                resp.body = Body::Bytes(bytes);
            }
            let cut = short
                .lock()
                .expect("faults")
                .iter()
                .any(|p| p == req.path());
            if let (true, 200, Body::File { len, .. }) = (cut, resp.status, &mut resp.body) {
                *len += 1;
            }
            log.lock().expect("data log").push(DataHit {
                method: req.method.clone(),
                path: req.path().to_string(),
                authorization: req.header("authorization").is_some(),
                range: req.header("range").map(str::to_string),
                status: resp.status,
            });
            resp
        }),
    );
    DataServer {
        addr,
        hits,
        corrupt,
        corrupt_middle,
        truncated,
    }
}

#[test]
fn iso8601_dates() {
    assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(iso8601(1_795_435_200), "2026-11-23T12:00:00Z");
}

#[test]
fn sas_is_checked_byte_for_byte() {
    let sas = Sas::new();
    let q = sas.sign("/docker/registry/v2/blobs/sha256/ab/abc/data");
    assert!(q.contains("%3A") && q.ends_with("%3D"), "{q}");
    assert!(sas
        .verify("/docker/registry/v2/blobs/sha256/ab/abc/data", &q)
        .is_ok());
    assert!(sas
        .verify("/docker/registry/v2/blobs/sha256/ab/abd/data", &q)
        .is_err());
    assert!(sas
        .verify(
            "/docker/registry/v2/blobs/sha256/ab/abc/data",
            &q.replace("%3A", ":")
        )
        .is_err());
    assert!(sas
        .verify("/docker/registry/v2/blobs/sha256/ab/abc/data", "")
        .is_err());
    assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
    assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
    assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
    assert_eq!(parse_range("bytes=100-", 100), None);
}
