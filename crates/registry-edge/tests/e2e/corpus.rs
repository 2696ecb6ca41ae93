//! The encoding corpus: the edge publishes only `public/*` (`access.repositories.allow`), the
//! registry behind it also holds `demo/app`, and a corpus of request variants that spell the hidden
//! repository, the catalog or a token scope for it in every encoding a registry or a token server
//! might decode is sent through the edge with exact bytes. Nothing of `demo/app` may come back, and
//! nothing naming it may reach the registry or the token server, however it is decoded.
//!
//! The variants are generated, not listed: for each operation of the distribution API (manifest by
//! tag and by digest, HEAD, blob, tags list, catalog, upload, cross-repository mount, referrers) and
//! ACR's `/acr/v1/` paths, every character of every segment percent-encoded one at a time (upper
//! and lower-case hex, and double-encoded as `%25XX`), all at once, case-flipped, with dot segments
//! (plain, `%2e`, overlong `%c0%ae`), `;` parameters, trailing and doubled slashes, backslashes,
//! overlong slashes and `%2f` in place of each `/`, and in absolute form; the mount's `from=` in
//! every encoding of its name and value, duplicated, `;`-separated, and with quotes that would
//! inject a second `realm` into a challenge; the token endpoint with every encoding of each
//! parameter's name and value, case variants, duplicates, `;` separators, in a GET query and in a
//! POST body (Content-Length and chunked, form, multipart and JSON), on every spelling of its path.
//! Each is sent anonymously, with Basic credentials, and (for the registry paths) with a bearer
//! token that the token server issued around the edge for the hidden repository, so that a request
//! the edge lets through is answered with content rather than a 401.
//!
//! Requests go over a raw `TcpStream` (curl would normalise the paths), one connection each,
//! `Connection: close`, the response read to its end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::harness::{step, Harness, LOGIN_HOST};
use crate::image::{self, Image, MANIFEST_TYPE};
use crate::token;

/// The repository the edge hides.
pub const HIDDEN: &str = "demo/app";
/// A published one, the positive control.
pub const PUBLIC: &str = "public/app";
/// The target of the control mount.
const MIRROR: &str = "public/mirror";

/// The edge's access section for the corpus: only `public/*` is published.
pub const ACCESS: &str = "access:\n  repositories: { allow: [\"public/*\"] }\n";

const WORKERS: usize = 4;

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: the request bytes exactly as generated.

/// A request body and its framing.
pub enum Framing {
    /// No body (`Content-Length: 0` on POST).
    Empty,
    Length(Vec<u8>),
    /// The body in chunks of this many bytes.
    Chunked(Vec<u8>, usize),
    /// Headers written by the caller, then these bytes as they are.
    Verbatim(Vec<u8>),
}

/// The bytes of one request: `Host` (the login host on `port`) and `Connection: close` first,
/// then `headers`, then the body as framed.
pub fn request(
    method: &str,
    target: &str,
    port: u16,
    headers: &[String],
    body: &Framing,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: {LOGIN_HOST}:{port}\r\nConnection: close\r\nUser-Agent: registry-edge-e2e-corpus\r\n"
    )
    .into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body {
        Framing::Empty => {
            if method != "GET" && method != "HEAD" {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
        Framing::Length(b) => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Framing::Chunked(b, size) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for c in b.chunks((*size).max(1)) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::Verbatim(b) => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(b);
        }
    }
    out
}

/// A response as read off the connection; `status` 0 when none came.
#[derive(Clone, Debug, Default)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub error: Option<String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn short(&self) -> String {
        format!(
            "{} {:?} body {:?}{}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)]),
            self.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )
    }
}

fn dechunk(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = b;
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..eol]).ok()?;
        let n = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..n)?);
        rest = rest.get(n + 2..)?;
    }
}

/// Sends `req` to `addr` on a connection of its own and reads the response to its end.
pub fn exchange(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            return Resp {
                error: Some(format!("connect: {e}")),
                ..Resp::default()
            }
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    // A server may answer and close before it read the whole request: keep what it answered.
    let write_error = s.write_all(req).err();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let mut read_error = None;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let error = match (write_error, read_error) {
        (None, None) => None,
        (w, r) => Some(format!("write: {w:?}, read: {r:?}")),
    };
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp {
            body: raw,
            error: Some(error.unwrap_or_else(|| "no complete response head".into())),
            ..Resp::default()
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
        error,
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        body = dechunk(&body).unwrap_or(body);
    } else if let Some(n) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.truncate(n);
    }
    resp.body = body;
    resp
}

// ---------------------------------------------------------------------------------------------
// What "names the hidden repository" means, in any encoding

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| b[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `t` names the hidden repository, once lower-cased, `\` read as `/`, empty and `.` segments
/// dropped, `..` resolved and `;` parameters removed.
fn hidden_in(t: &str) -> bool {
    let t = t.to_ascii_lowercase().replace('\\', "/");
    if t.contains(HIDDEN) {
        return true;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in t.split('/') {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    segments.join("/").contains(HIDDEN)
}

/// Whether `s` names the hidden repository in any spelling the corpus uses: as it is, with overlong
/// UTF-8 read as the character it imitates, and percent-decoded up to three times.
pub fn names_hidden(s: &str) -> bool {
    let mut cur = s
        .to_ascii_lowercase()
        .replace("%e0%80%af", "/")
        .replace("%c0%af", "/")
        .replace("%e0%80%ae", ".")
        .replace("%c0%ae", ".")
        .replace("%c1%9c", "\\");
    if hidden_in(s) || hidden_in(&cur) {
        return true;
    }
    for _ in 0..3 {
        let next = pct_decode(&cur);
        if hidden_in(&next) {
            return true;
        }
        if next == cur {
            break;
        }
        cur = next;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// The hidden content and the checks on each response

/// What of the hidden repository must never come back.
pub struct Secrets {
    /// Byte strings no body may contain: the manifest, the config, every layer (whole when small,
    /// a window of its random bytes otherwise).
    needles: Vec<(String, Vec<u8>)>,
    /// Hex of every hidden digest: never in a successful or redirecting answer, never in
    /// `Docker-Content-Digest`.
    hexes: Vec<String>,
}

impl Secrets {
    fn of(image: &Image) -> Secrets {
        let mut needles = vec![
            ("the hidden manifest".to_string(), image.manifest.clone()),
            (
                "the hidden config blob".to_string(),
                std::fs::read(&image.config.path).expect("hidden config"),
            ),
        ];
        for (i, l) in image.layers.iter().enumerate() {
            let bytes = std::fs::read(&l.path).expect("hidden layer");
            let needle = if bytes.len() <= 8192 {
                bytes
            } else {
                let mid = bytes.len() / 2;
                bytes[mid..mid + 64].to_vec()
            };
            needles.push((format!("hidden layer {i}"), needle));
        }
        let hexes = std::iter::once(&image.manifest_digest)
            .chain(image.blobs().into_iter().map(|b| &b.digest))
            .map(|d| d.trim_start_matches("sha256:").to_string())
            .collect();
        Secrets { needles, hexes }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The JWTs of a JSON body (`token`, `access_token`; once when they are the same).
fn jwts(body: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = ["token", "access_token"]
        .iter()
        .filter_map(|k| body[k].as_str().map(str::to_string))
        .collect();
    out.dedup();
    out
}

/// Everything in `r` that gives the hidden repository away; empty when nothing does. Success and
/// the redirects that carry content (a blob's 302/303/307 to storage) count; a 301/308 only
/// repeats the request's own path and query back (distribution cleaning a path), so the registry
/// log, not the answer, shows that such a request got through.
pub fn leaks(r: &Resp, s: &Secrets) -> Vec<String> {
    let mut out = Vec::new();
    let ok = (200..300).contains(&r.status) || matches!(r.status, 302 | 303 | 307);
    let text = r.text();
    for (what, needle) in &s.needles {
        if contains(&r.body, needle) {
            out.push(format!("the body holds {what}"));
        }
    }
    for hex in &s.hexes {
        if r.header("docker-content-digest")
            .is_some_and(|v| v.contains(hex.as_str()))
        {
            out.push(format!("Docker-Content-Digest names hidden sha256:{hex}"));
        }
        if ok
            && (text.contains(hex.as_str())
                || r.headers.iter().any(|(_, v)| v.contains(hex.as_str())))
        {
            out.push(format!("a {} answer names hidden sha256:{hex}", r.status));
        }
    }
    if ok {
        for (k, v) in &r.headers {
            if names_hidden(v) {
                out.push(format!("a {} answer's {k} names {HIDDEN}: {v}", r.status));
            }
        }
        if names_hidden(&text) {
            out.push(format!("a {} answer's body names {HIDDEN}", r.status));
        }
    }
    let json = r.json();
    if json["name"].as_str().is_some_and(names_hidden) && json.get("tags").is_some() {
        out.push(format!("a tag list of {HIDDEN}"));
    }
    if json["imageName"].as_str().is_some_and(names_hidden) {
        out.push(format!("an ACR listing of {HIDDEN}"));
    }
    if json["repositories"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n.as_str().is_some_and(names_hidden)))
    {
        out.push(format!("a catalog naming {HIDDEN}"));
    }
    for jwt in jwts(&json) {
        let claims = token::claims(&jwt);
        for a in claims["access"].as_array().into_iter().flatten() {
            let name = a["name"].as_str().unwrap_or_default();
            if names_hidden(name) {
                out.push(format!("a token granting {a}"));
            }
            let listing = a["type"] == "registry"
                && name == "catalog"
                && a["actions"].as_array().is_some_and(|x| !x.is_empty());
            if listing {
                out.push(format!("a token granting the catalog: {a}"));
            }
        }
    }
    for (k, v) in &r.headers {
        if k.eq_ignore_ascii_case("www-authenticate")
            && (v.contains("evil.example") || v.matches("realm=").count() > 1)
        {
            out.push(format!("an injected challenge: {v}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Generating the corpus

/// One request of the corpus.
pub struct Variant {
    /// The operation it targets (`manifest`, `token-get`, ...), for the histograms.
    pub family: &'static str,
    /// How it was made: the mutation and the credentials.
    pub label: String,
    pub bytes: Vec<u8>,
}

impl Variant {
    fn first_line(&self) -> String {
        let end = self
            .bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end.min(300)]).into_owned()
    }
}

fn enc(b: u8) -> String {
    format!("%{b:02X}")
}
fn enc_lower(b: u8) -> String {
    format!("%{b:02x}")
}
fn enc_double(b: u8) -> String {
    format!("%25{b:02X}")
}
fn enc_all(s: &str, f: fn(u8) -> String) -> String {
    s.bytes().map(f).collect()
}
/// `s` with its `j`-th byte written by `f`.
fn enc_at(s: &str, j: usize, f: fn(u8) -> String) -> String {
    let b = s.as_bytes();
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&b[..j]),
        f(b[j]),
        String::from_utf8_lossy(&b[j + 1..])
    )
}
fn has_hex_letter(b: u8) -> bool {
    enc(b) != enc_lower(b)
}

/// The encodings of one string, as (label, spelling): each byte encoded on its own (upper-case
/// hex, lower-case hex where it differs, double-encoded), then all of it at once in each way.
/// `limit` bounds the per-byte forms (digests are long and their hex is not what is guarded).
fn spellings(s: &str, limit: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (j, &b) in s.as_bytes().iter().enumerate().take(limit) {
        out.push((format!("{j}:%XX"), enc_at(s, j, enc)));
        if has_hex_letter(b) {
            out.push((format!("{j}:%xx"), enc_at(s, j, enc_lower)));
        }
        out.push((format!("{j}:%25XX"), enc_at(s, j, enc_double)));
    }
    out.push(("all:%XX".into(), enc_all(s, enc)));
    out.push(("all:%xx".into(), enc_all(s, enc_lower)));
    out.push(("all:%25XX".into(), enc_all(s, enc_double)));
    out
}

/// Every mutation of a path given as segments, as (label, path).
fn path_forms(segs: &[String], port: u16) -> Vec<(String, String)> {
    let join = |segs: &[String]| format!("/{}", segs.join("/"));
    let plain = join(segs);
    let mut out = vec![("plain".to_string(), plain.clone())];
    let with = |i: usize, seg: String| {
        let mut v = segs.to_vec();
        v[i] = seg;
        join(&v)
    };
    // Each byte of each segment encoded on its own, each segment wholly, all at once.
    for (i, seg) in segs.iter().enumerate() {
        let limit = if seg.len() > 16 { 8 } else { seg.len() };
        for (label, spelled) in spellings(seg, limit) {
            out.push((format!("seg{i} {label}"), with(i, spelled)));
        }
    }
    for (label, f) in [
        ("%XX", enc as fn(u8) -> String),
        ("%xx", enc_lower),
        ("%25XX", enc_double),
    ] {
        let all: Vec<String> = segs.iter().map(|s| enc_all(s, f)).collect();
        out.push((format!("every segment {label}"), join(&all)));
    }
    // Case.
    for (i, seg) in segs.iter().enumerate() {
        if seg.bytes().any(|b| b.is_ascii_lowercase()) {
            out.push((format!("seg{i} upper"), with(i, seg.to_ascii_uppercase())));
            let mut cap = seg.clone();
            if let Some(f) = cap.get_mut(..1) {
                f.make_ascii_uppercase();
            }
            if cap != *seg && cap != seg.to_ascii_uppercase() {
                out.push((format!("seg{i} capitalised"), with(i, cap)));
            }
        }
    }
    out.push(("all upper".into(), plain.to_ascii_uppercase()));
    // Dot segments inserted before each segment, plain, encoded and overlong.
    for k in 0..segs.len() {
        let insert = |extra: &[&str]| {
            let mut v: Vec<String> = segs[..k].to_vec();
            v.extend(extra.iter().map(|s| s.to_string()));
            v.extend_from_slice(&segs[k..]);
            join(&v)
        };
        for dd in [
            "..",
            "%2e%2e",
            "%2E%2E",
            ".%2e",
            "%2e.",
            "%c0%ae%c0%ae",
            "..;",
        ] {
            out.push((
                format!("public/{dd} before seg{k}"),
                insert(&["public", dd]),
            ));
        }
        for d in [".", "%2e", "%2E", "%c0%ae"] {
            out.push((format!("{d} before seg{k}"), insert(&[d])));
        }
        out.push((
            format!("public/app/../.. before seg{k}"),
            insert(&["public", "app", "..", ".."]),
        ));
    }
    // `;` parameters.
    for (i, seg) in segs.iter().enumerate() {
        if !seg.is_empty() {
            out.push((format!("seg{i};x"), with(i, format!("{seg};x"))));
            out.push((format!("seg{i};"), with(i, format!("{seg};"))));
        }
    }
    // Trailing forms.
    for t in ["/", "//", "/.", "%2f", "%00", "%20", "?", "#x", ";"] {
        out.push((format!("trailing {t}"), format!("{plain}{t}")));
    }
    // Each separator replaced; every separator replaced.
    for p in 1..segs.len() {
        for sep in [
            "//",
            "\\",
            "%5c",
            "%5C",
            "%2f",
            "%2F",
            "%252f",
            "%c0%af",
            "%C0%AF",
            "%e0%80%af",
        ] {
            let path = format!("/{}{sep}{}", segs[..p].join("/"), segs[p..].join("/"));
            out.push((format!("separator {p} as {sep}"), path));
        }
    }
    for sep in ["//", "\\", "%2f"] {
        out.push((
            format!("every separator as {sep}"),
            format!("/{}", segs.join(sep)),
        ));
    }
    out.push(("leading //".into(), format!("/{plain}")));
    // Absolute form.
    out.push((
        "absolute-form".into(),
        format!("http://{LOGIN_HOST}:{port}{plain}"),
    ));
    out.push((
        "absolute-form upper".into(),
        format!("HTTP://{}:{port}{plain}", LOGIN_HOST.to_ascii_uppercase()),
    ));
    out.push((
        "absolute-form seg0 encoded".into(),
        format!(
            "http://{LOGIN_HOST}:{port}{}",
            with(0, enc_all(&segs[0], enc))
        ),
    ));
    out
}

/// The mount's query: `from=` in every spelling, duplicated, separated by `;`, injected.
fn mount_queries(digest: &str) -> Vec<(String, String)> {
    let m = format!("mount={digest}");
    let mut out = vec![("plain".to_string(), format!("{m}&from={HIDDEN}"))];
    for (label, key) in spellings("from", 4) {
        out.push((format!("key {label}"), format!("{m}&{key}={HIDDEN}")));
    }
    for (label, value) in spellings(HIDDEN, HIDDEN.len()) {
        out.push((format!("value {label}"), format!("{m}&from={value}")));
    }
    let tricks = [
        ("key From", format!("{m}&From={HIDDEN}")),
        ("key FROM", format!("{m}&FROM={HIDDEN}")),
        ("value Demo/App", format!("{m}&from=Demo/App")),
        ("value DEMO/APP", format!("{m}&from=DEMO/APP")),
        ("from first", format!("from={HIDDEN}&{m}")),
        (
            "public then hidden",
            format!("{m}&from={PUBLIC}&from={HIDDEN}"),
        ),
        (
            "hidden then public",
            format!("{m}&from={HIDDEN}&from={PUBLIC}"),
        ),
        (
            "encoded key then public",
            format!("{m}&fr%6fm={HIDDEN}&from={PUBLIC}"),
        ),
        (
            "public then encoded key",
            format!("{m}&from={PUBLIC}&fr%6fm={HIDDEN}"),
        ),
        ("; separator", format!("{m};from={HIDDEN}")),
        (
            "public ; hidden",
            format!("{m}&from={PUBLIC};from={HIDDEN}"),
        ),
        ("value ;x", format!("{m}&from={HIDDEN};x")),
        ("value public/../", format!("{m}&from=public/../{HIDDEN}")),
        (
            "value public/%2e%2e/",
            format!("{m}&from=public/%2e%2e/{HIDDEN}"),
        ),
        (
            "value public/app/../../",
            format!("{m}&from=public/app/../../{HIDDEN}"),
        ),
        ("value demo//app", format!("{m}&from=demo//app")),
        ("value demo/./app", format!("{m}&from=demo/./app")),
        ("value demo%5capp", format!("{m}&from=demo%5capp")),
        ("value demo\\app", format!("{m}&from=demo\\app")),
        ("value demo%c0%afapp", format!("{m}&from=demo%c0%afapp")),
        ("value +demo/app", format!("{m}&from=+{HIDDEN}")),
        ("value demo/app+", format!("{m}&from={HIDDEN}+")),
        ("value %20demo/app", format!("{m}&from=%20{HIDDEN}")),
        ("value demo/app%00", format!("{m}&from={HIDDEN}%00")),
        ("value demo/app/", format!("{m}&from={HIDDEN}/")),
        ("value demo%252Fapp", format!("{m}&from=demo%252Fapp")),
        ("separator %26", format!("{m}%26from%3D{HIDDEN}")),
        (
            "quote injection",
            format!("{m}&from=x%22,realm=%22https://evil.example"),
        ),
        (
            "quote injection after public",
            format!("{m}&from={PUBLIC}%22,realm=%22https://evil.example/%22,scope=%22x"),
        ),
        (
            "quote injection, hidden",
            format!("{m}&from={HIDDEN}%22,realm=%22https://evil.example"),
        ),
        (
            "raw quote injection",
            format!("{m}&from=x\",realm=\"https://evil.example"),
        ),
    ];
    out.extend(tricks.into_iter().map(|(l, q)| (l.to_string(), q)));
    out
}

/// Token request parameters naming the hidden repository (or the catalog), as (label, raw
/// `application/x-www-form-urlencoded` text).
fn token_params(service: &str) -> Vec<(String, String)> {
    let scope = format!("repository:{HIDDEN}:pull");
    let public = format!("repository:{PUBLIC}:pull");
    let sv = format!("service={service}");
    let mut out = vec![("plain".to_string(), format!("{sv}&scope={scope}"))];
    for (label, key) in spellings("scope", 5) {
        out.push((format!("scope key {label}"), format!("{sv}&{key}={scope}")));
    }
    for (label, key) in spellings("service", 7) {
        out.push((
            format!("service key {label}"),
            format!("{key}={service}&scope={scope}"),
        ));
    }
    for (label, value) in spellings(&scope, scope.len()) {
        out.push((
            format!("scope value {label}"),
            format!("{sv}&scope={value}"),
        ));
    }
    for (label, value) in spellings(service, service.len()) {
        if !label.contains("%25") || label.starts_with("all") {
            out.push((
                format!("service value {label}"),
                format!("service={value}&scope={scope}"),
            ));
        }
    }
    let tricks: Vec<(&str, String)> = vec![
        ("key Scope", format!("{sv}&Scope={scope}")),
        ("key SCOPE", format!("{sv}&SCOPE={scope}")),
        ("key sCOPE", format!("{sv}&sCOPE={scope}")),
        ("key scopE", format!("{sv}&scopE={scope}")),
        ("key Service", format!("Service={service}&scope={scope}")),
        (
            "value Repository:",
            format!("{sv}&scope=Repository:{HIDDEN}:pull"),
        ),
        (
            "value REPOSITORY:",
            format!("{sv}&scope=REPOSITORY:{HIDDEN}:pull"),
        ),
        (
            "value Demo/App",
            format!("{sv}&scope=repository:Demo/App:pull"),
        ),
        (
            "value DEMO/APP",
            format!("{sv}&scope=repository:DEMO/APP:pull"),
        ),
        (
            "value :PULL",
            format!("{sv}&scope=repository:{HIDDEN}:PULL"),
        ),
        (
            "public then hidden",
            format!("{sv}&scope={public}&scope={scope}"),
        ),
        (
            "hidden then public",
            format!("{sv}&scope={scope}&scope={public}"),
        ),
        ("hidden twice", format!("{sv}&scope={scope}&scope={scope}")),
        (
            "encoded key then public",
            format!("{sv}&sc%6fpe={scope}&scope={public}"),
        ),
        (
            "public then encoded key",
            format!("{sv}&scope={public}&sc%6fpe={scope}"),
        ),
        (
            "public then Scope",
            format!("{sv}&scope={public}&Scope={scope}"),
        ),
        ("service twice", format!("{sv}&{sv}&scope={scope}")),
        ("; before scope", format!("{sv};scope={scope}")),
        (
            "public ; hidden",
            format!("{sv}&scope={public};scope={scope}"),
        ),
        ("scope ;x", format!("{sv}&scope={scope};x")),
        (
            "scope; then public",
            format!("{sv}&scope={scope};&scope={public}"),
        ),
        ("only ;", format!("{sv};scope={scope};")),
        (
            "%26 inside service",
            format!("service={service}%26scope%3D{scope}"),
        ),
        ("%26 inside another", format!("{sv}&x=1%26scope%3D{scope}")),
        ("&& before", format!("{sv}&&scope={scope}")),
        ("leading &", format!("&scope={scope}&{sv}")),
        ("trailing &", format!("{sv}&scope={scope}&")),
        ("scope first", format!("scope={scope}&{sv}")),
        ("public+hidden", format!("{sv}&scope={public}+{scope}")),
        ("public%20hidden", format!("{sv}&scope={public}%20{scope}")),
        ("public,hidden", format!("{sv}&scope={public},{scope}")),
        (
            "plugin type",
            format!("{sv}&scope=repository(plugin):{HIDDEN}:pull"),
        ),
        ("actions *", format!("{sv}&scope=repository:{HIDDEN}:*")),
        (
            "actions pull,push",
            format!("{sv}&scope=repository:{HIDDEN}:pull,push"),
        ),
        (
            "name public/../",
            format!("{sv}&scope=repository:public/../{HIDDEN}:pull"),
        ),
        (
            "name public/app/../../",
            format!("{sv}&scope=repository:public/app/../../{HIDDEN}:pull"),
        ),
        (
            "name demo//app",
            format!("{sv}&scope=repository:demo//app:pull"),
        ),
        (
            "name demo/./app",
            format!("{sv}&scope=repository:demo/./app:pull"),
        ),
        (
            "name demo/app/",
            format!("{sv}&scope=repository:{HIDDEN}/:pull"),
        ),
        (
            "name demo%c0%afapp",
            format!("{sv}&scope=repository:demo%c0%afapp:pull"),
        ),
        (
            "name demo%5Capp",
            format!("{sv}&scope=repository:demo%5Capp:pull"),
        ),
        ("leading +", format!("{sv}&scope=+{scope}")),
        ("trailing +", format!("{sv}&scope={scope}+")),
        ("trailing %00", format!("{sv}&scope={scope}%00")),
        ("trailing %0a", format!("{sv}&scope={scope}%0a")),
        ("key scope[]", format!("{sv}&scope[]={scope}")),
        ("key scope%00", format!("{sv}&scope%00={scope}")),
        ("key scope+", format!("{sv}&scope+={scope}")),
        ("key +scope", format!("{sv}&+scope={scope}")),
        ("key scope%20", format!("{sv}&scope%20={scope}")),
        ("key %20scope", format!("{sv}&%20scope={scope}")),
        ("catalog", format!("{sv}&scope=registry:catalog:*")),
        (
            "catalog Registry:",
            format!("{sv}&scope=Registry:catalog:*"),
        ),
        (
            "catalog encoded",
            format!("{sv}&scope=registry%3Acatalog%3A%2A"),
        ),
        (
            "catalog key encoded",
            format!("{sv}&sc%6fpe=registry:catalog:*"),
        ),
        (
            "catalog after public",
            format!("{sv}&scope={public}&scope=registry:catalog:*"),
        ),
        (
            "catalog and public in one",
            format!("{sv}&scope={public}+registry:catalog:*"),
        ),
    ];
    out.extend(tricks.into_iter().map(|(l, q)| (l.to_string(), q)));
    out
}

/// Spellings of the token endpoint's path.
fn token_paths(port: u16) -> Vec<(String, String)> {
    let base = "/oauth2/token";
    let mut out: Vec<(String, String)> = Vec::new();
    for (j, &b) in base.as_bytes().iter().enumerate() {
        if b != b'/' {
            out.push((format!("char {j} %XX"), enc_at(base, j, enc)));
        }
    }
    for p in [
        "/oauth2/%74%6f%6b%65%6e",
        "/oauth2%2ftoken",
        "/oauth2%2Ftoken",
        "/oauth2/token/",
        "/oauth2/token//",
        "/OAuth2/Token",
        "/OAUTH2/TOKEN",
        "/oauth2/Token",
        "/oauth2/token;x",
        "/oauth2;x/token",
        "/oauth2/token;",
        "/oauth2//token",
        "//oauth2/token",
        "/oauth2/./token",
        "/oauth2/%2e/token",
        "/oauth2/x/../token",
        "/oauth2/x/%2e%2e/token",
        "/x/../oauth2/token",
        "/v2/../oauth2/token",
        "/oauth2\\token",
        "/oauth2%5ctoken",
        "/oauth2%c0%aftoken",
        "/oauth2/token%00",
        "/oauth2/token%20",
        "/oauth2/token%2f",
        "/oauth2/token.",
        "/oauth2/token/.",
        "/oauth2/exchange",
        "/oauth2/%65xchange",
        "/oauth2/token#x",
    ] {
        out.push((p.to_string(), p.to_string()));
    }
    out.push((
        "absolute-form".into(),
        format!("http://{LOGIN_HOST}:{port}/oauth2/token"),
    ));
    out
}

/// The credentials a registry request carries: none, Basic, or a token for the hidden repository
/// that the token server issued around the edge.
fn path_auths(bearer: &str) -> [(&'static str, Vec<String>); 3] {
    [
        ("anonymous", vec![]),
        ("basic", vec![basic_header()]),
        ("bearer", vec![format!("Authorization: Bearer {bearer}")]),
    ]
}

fn basic_header() -> String {
    let raw = format!("{}:{}", token::USER, token::PASSWORD);
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn password_form() -> String {
    format!(
        "grant_type=password&username={}&password={}",
        token::USER,
        token::PASSWORD
    )
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

/// Hidden digests a corpus names.
pub struct Targets {
    pub manifest: String,
    pub config: String,
    pub layer: String,
}

/// The whole corpus.
pub fn corpus(port: u16, service: &str, t: &Targets, bearer: &str) -> Vec<Variant> {
    let mut out = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let (demo, app) = HIDDEN.split_once('/').expect("a two-component name");
    let accept = format!("Accept: {MANIFEST_TYPE}");
    let ops: Vec<(&'static str, &'static str, Vec<String>)> = vec![
        ("manifest", "GET", s(&["v2", demo, app, "manifests", "1"])),
        (
            "manifest-head",
            "HEAD",
            s(&["v2", demo, app, "manifests", "1"]),
        ),
        (
            "manifest-digest",
            "GET",
            s(&["v2", demo, app, "manifests", &t.manifest]),
        ),
        ("blob", "GET", s(&["v2", demo, app, "blobs", &t.config])),
        ("tags", "GET", s(&["v2", demo, app, "tags", "list"])),
        ("catalog", "GET", s(&["v2", "_catalog"])),
        (
            "upload",
            "POST",
            s(&["v2", demo, app, "blobs", "uploads", ""]),
        ),
        (
            "referrers",
            "GET",
            s(&["v2", demo, app, "referrers", &t.manifest]),
        ),
        ("acr-catalog", "GET", s(&["acr", "v1", "_catalog"])),
        ("acr-tags", "GET", s(&["acr", "v1", demo, app, "_tags"])),
        (
            "acr-manifests",
            "GET",
            s(&["acr", "v1", demo, app, "_manifests"]),
        ),
    ];
    for (family, method, segs) in &ops {
        for (label, path) in path_forms(segs, port) {
            for (auth, headers) in path_auths(bearer) {
                let mut headers = headers.clone();
                if family.starts_with("manifest") {
                    headers.push(accept.clone());
                }
                out.push(Variant {
                    family,
                    label: format!("{label} [{auth}]"),
                    bytes: request(method, &path, port, &headers, &Framing::Empty),
                });
            }
        }
    }
    // The mount: the path is public, `from=` names the hidden repository.
    for (label, query) in mount_queries(&t.layer) {
        for path in [
            format!("/v2/{PUBLIC}/blobs/uploads/"),
            format!("/v2/{PUBLIC}/blobs/uploads"),
        ] {
            for (auth, headers) in path_auths(bearer) {
                out.push(Variant {
                    family: "mount",
                    label: format!("{label} on {path} [{auth}]"),
                    bytes: request(
                        "POST",
                        &format!("{path}?{query}"),
                        port,
                        &headers,
                        &Framing::Empty,
                    ),
                });
            }
        }
    }
    // Token requests: every parameter spelling, in a query and in a body.
    for (label, params) in token_params(service) {
        let target = format!("/oauth2/token?{params}");
        out.push(Variant {
            family: "token-get",
            label: format!("{label} [anonymous]"),
            bytes: request("GET", &target, port, &[], &Framing::Empty),
        });
        out.push(Variant {
            family: "token-get",
            label: format!("{label} [basic]"),
            bytes: request("GET", &target, port, &[basic_header()], &Framing::Empty),
        });
        out.push(Variant {
            family: "token-post",
            label: format!("{label} [anonymous, Content-Length]"),
            bytes: request(
                "POST",
                "/oauth2/token",
                port,
                &[FORM.into()],
                &Framing::Length(params.clone().into_bytes()),
            ),
        });
        out.push(Variant {
            family: "token-post",
            label: format!("{label} [password grant, Content-Length]"),
            bytes: request(
                "POST",
                "/oauth2/token",
                port,
                &[FORM.into()],
                &Framing::Length(format!("{}&{params}", password_form()).into_bytes()),
            ),
        });
        out.push(Variant {
            family: "token-post",
            label: format!("{label} [basic, chunked]"),
            bytes: request(
                "POST",
                "/oauth2/token",
                port,
                &[FORM.into(), basic_header()],
                &Framing::Chunked(params.clone().into_bytes(), 3),
            ),
        });
    }
    // The token endpoint's path in every spelling.
    let plain = format!("service={service}&scope=repository:{HIDDEN}:pull");
    for (label, path) in token_paths(port) {
        for (auth, headers) in [("anonymous", vec![]), ("basic", vec![basic_header()])] {
            out.push(Variant {
                family: "token-path",
                label: format!("GET {label} [{auth}]"),
                bytes: request(
                    "GET",
                    &format!("{path}?{plain}"),
                    port,
                    &headers,
                    &Framing::Empty,
                ),
            });
        }
        out.push(Variant {
            family: "token-path",
            label: format!("POST {label} [anonymous]"),
            bytes: request(
                "POST",
                &path,
                port,
                &[FORM.into()],
                &Framing::Length(plain.clone().into_bytes()),
            ),
        });
        out.push(Variant {
            family: "token-path",
            label: format!("POST {label} [password grant]"),
            bytes: request(
                "POST",
                &path,
                port,
                &[FORM.into()],
                &Framing::Length(format!("{}&{plain}", password_form()).into_bytes()),
            ),
        });
    }
    // Bodies: content types, JSON, multipart, query and body together, framing tricks.
    let json_plain =
        serde_json::json!({"service": service, "scope": format!("repository:{HIDDEN}:pull")})
            .to_string();
    let bodies: Vec<(&str, Vec<String>, Framing)> = vec![
        (
            "form; charset",
            vec!["Content-Type: application/x-www-form-urlencoded; charset=utf-8".into()],
            Framing::Length(plain.clone().into_bytes()),
        ),
        (
            "form, type in mixed case",
            vec!["Content-Type: Application/X-WWW-Form-URLEncoded".into()],
            Framing::Length(plain.clone().into_bytes()),
        ),
        (
            "form, no Content-Type",
            vec![],
            Framing::Length(plain.clone().into_bytes()),
        ),
        (
            "form as text/plain",
            vec!["Content-Type: text/plain".into()],
            Framing::Length(plain.clone().into_bytes()),
        ),
        (
            "form, chunked by 1",
            vec![FORM.into()],
            Framing::Chunked(plain.clone().into_bytes(), 1),
        ),
        (
            "form, chunked whole",
            vec![FORM.into()],
            Framing::Chunked(plain.clone().into_bytes(), 4096),
        ),
        (
            "form, chunk extension and trailer",
            vec![FORM.into(), "Transfer-Encoding: chunked".into()],
            Framing::Verbatim(
                format!(
                    "{:x};ext=1\r\n{plain}\r\n0\r\nX-Trailer: 1\r\n\r\n",
                    plain.len()
                )
                .into_bytes(),
            ),
        ),
        (
            "Content-Length and chunked",
            vec![
                FORM.into(),
                "Content-Length: 4".into(),
                "Transfer-Encoding: chunked".into(),
            ],
            Framing::Verbatim(format!("{:x}\r\n{plain}\r\n0\r\n\r\n", plain.len()).into_bytes()),
        ),
        (
            "two Content-Lengths",
            vec![
                FORM.into(),
                format!("Content-Length: {}", plain.len()),
                "Content-Length: 4".into(),
            ],
            Framing::Verbatim(plain.clone().into_bytes()),
        ),
        (
            "JSON",
            vec!["Content-Type: application/json".into()],
            Framing::Length(json_plain.clone().into_bytes()),
        ),
        (
            "JSON; charset",
            vec!["Content-Type: application/json; charset=utf-8".into()],
            Framing::Length(json_plain.clone().into_bytes()),
        ),
        (
            "JSON without Content-Type",
            vec![],
            Framing::Length(json_plain.clone().into_bytes()),
        ),
        (
            "JSON as form",
            vec![FORM.into()],
            Framing::Length(json_plain.clone().into_bytes()),
        ),
        (
            "JSON chunked",
            vec!["Content-Type: application/json".into()],
            Framing::Chunked(json_plain.clone().into_bytes(), 7),
        ),
        (
            "JSON with \\u escapes",
            vec!["Content-Type: application/json".into()],
            Framing::Length(
                format!(
                    r#"{{"service":"{service}","sc\u006fpe":"repository:demo\u002fapp:pull"}}"#
                )
                .into_bytes(),
            ),
        ),
        (
            "JSON scope array",
            vec!["Content-Type: application/json".into()],
            Framing::Length(
                serde_json::json!({"service": service, "scope": [format!("repository:{PUBLIC}:pull"), format!("repository:{HIDDEN}:pull")]})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "JSON key Scope",
            vec!["Content-Type: application/json".into()],
            Framing::Length(
                serde_json::json!({"service": service, "Scope": format!("repository:{HIDDEN}:pull")})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "JSON with a password grant",
            vec!["Content-Type: application/json".into()],
            Framing::Length(
                serde_json::json!({"service": service, "scope": format!("repository:{HIDDEN}:pull"),
                    "grant_type": "password", "username": token::USER, "password": token::PASSWORD})
                .to_string()
                .into_bytes(),
            ),
        ),
        (
            "multipart",
            vec!["Content-Type: multipart/form-data; boundary=XyZ".into()],
            Framing::Length(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"service\"\r\n\r\n{service}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"scope\"\r\n\r\nrepository:{HIDDEN}:pull\r\n--XyZ--\r\n"
                )
                .into_bytes(),
            ),
        ),
    ];
    for (label, headers, body) in bodies {
        out.push(Variant {
            family: "token-body",
            label: label.to_string(),
            bytes: request("POST", "/oauth2/token", port, &headers, &body),
        });
    }
    let query_and_body = [
        (
            "scope in the query, service in the body",
            format!("/oauth2/token?scope=repository:{HIDDEN}:pull"),
            format!("service={service}"),
        ),
        (
            "encoded scope in the query",
            format!("/oauth2/token?sc%6fpe=repository:{HIDDEN}:pull"),
            format!("service={service}"),
        ),
        (
            "public in the body, hidden in the query",
            format!("/oauth2/token?scope=repository:{HIDDEN}:pull"),
            format!("service={service}&scope=repository:{PUBLIC}:pull"),
        ),
        (
            "hidden in the body, public in the query",
            format!("/oauth2/token?scope=repository:{PUBLIC}:pull"),
            plain.clone(),
        ),
    ];
    for (label, target, body) in query_and_body {
        for (auth, mut headers) in [("anonymous", vec![]), ("basic", vec![basic_header()])] {
            headers.push(FORM.into());
            out.push(Variant {
                family: "token-body",
                label: format!("{label} [{auth}]"),
                bytes: request(
                    "POST",
                    &target,
                    port,
                    &headers,
                    &Framing::Length(body.clone().into_bytes()),
                ),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Setup: two images pushed straight to the registry

/// A request straight to the registry (around the edge), its Host the registry's advertised one.
fn direct(h: &Harness, method: &str, target: &str, headers: &[String], body: Framing) -> Resp {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        h.shim
    )
    .into_bytes();
    for x in headers {
        req.extend_from_slice(x.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    let body = match body {
        Framing::Length(b) => b,
        _ => Vec::new(),
    };
    if method != "GET" && method != "HEAD" {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    exchange(h.registry_addr, &req)
}

/// A token from the token server itself (around the edge), with the test credentials.
fn direct_token(h: &Harness, scopes: &[String]) -> String {
    let q: Vec<String> = scopes.iter().map(|s| format!("scope={s}")).collect();
    let req = format!(
        "GET /oauth2/token?service={}&{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}\r\n\r\n",
        h.shim,
        q.join("&"),
        h.token.addr,
        basic_header()
    );
    let r = exchange(h.token.addr, req.as_bytes());
    assert_eq!(r.status, 200, "token from the token server: {}", r.short());
    r.json()["token"].as_str().expect("a token").to_string()
}

/// Pushes `image` as `<repo>:<tag>` straight to the registry: per blob POST → PUT, then the
/// manifest.
fn push_direct(h: &Harness, image: &Image, repo: &str, bearer: &str) {
    let auth = format!("Authorization: Bearer {bearer}");
    for b in image.blobs() {
        let r = direct(
            h,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            std::slice::from_ref(&auth),
            Framing::Empty,
        );
        assert_eq!(r.status, 202, "start an upload to {repo}: {}", r.short());
        let loc = r.header("location").expect("upload Location").to_string();
        let loc = match loc.split_once("://") {
            Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
            None => loc,
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = direct(
            h,
            "PUT",
            &format!("{loc}{sep}digest={}", b.digest),
            &[
                auth.clone(),
                "Content-Type: application/octet-stream".into(),
            ],
            Framing::Length(std::fs::read(&b.path).expect("blob bytes")),
        );
        assert_eq!(r.status, 201, "put {} into {repo}: {}", b.digest, r.short());
    }
    let r = direct(
        h,
        "PUT",
        &format!("/v2/{repo}/manifests/{}", image.tag),
        &[auth, format!("Content-Type: {MANIFEST_TYPE}")],
        Framing::Length(image.manifest.clone()),
    );
    assert_eq!(r.status, 201, "put the manifest of {repo}: {}", r.short());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// Sending

struct Outcome {
    status: u16,
    leaks: Vec<String>,
    error: Option<String>,
}

fn send_all(addr: SocketAddr, corpus: &[Variant], secrets: &Secrets) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> =
        Mutex::new((0..corpus.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(v) = corpus.get(i) else {
                    return;
                };
                let r = exchange(addr, &v.bytes);
                let outcome = Outcome {
                    status: r.status,
                    leaks: leaks(&r, secrets),
                    error: r.error.clone(),
                };
                results.lock().expect("results")[i] = Some(outcome);
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|o| o.expect("every variant was sent"))
        .collect()
}

fn histogram(statuses: impl Iterator<Item = u16>) -> String {
    let mut h: BTreeMap<u16, usize> = BTreeMap::new();
    for s in statuses {
        *h.entry(s).or_default() += 1;
    }
    h.iter()
        .map(|(s, n)| {
            if *s == 0 {
                format!("no answer×{n}")
            } else {
                format!("{s}×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The test

pub fn run() {
    let mut h = step(
        "start the harness (edge publishing only public/*)",
        &[],
        || Harness::start_with("corpus", true, ACCESS),
    );
    let service = h.shim.to_string();
    let edge: SocketAddr = ([127, 0, 0, 1], h.http_port).into();
    let port = h.http_port;

    let (hidden, public) = h.step("build a hidden and a public image", || {
        // Small layers: the corpus is about names, not bytes.
        let hidden = image::build(&h.dir.join("layout-hidden"), "1", 4242, 4096);
        let public = image::build(&h.dir.join("layout-public"), "1", 4343, 4096);
        assert_ne!(hidden.manifest_digest, public.manifest_digest);
        (hidden, public)
    });
    let bearer = h.step(
        "a token for every repository, from the token server itself",
        || {
            direct_token(
                &h,
                &[
                    format!("repository:{HIDDEN}:pull,push"),
                    format!("repository:{PUBLIC}:pull,push"),
                    format!("repository:{MIRROR}:pull,push"),
                    "registry:catalog:*".into(),
                ],
            )
        },
    );
    h.step(
        &format!("push {HIDDEN} and {PUBLIC} straight to the registry"),
        || {
            push_direct(&h, &hidden, HIDDEN, &bearer);
            push_direct(&h, &public, PUBLIC, &bearer);
        },
    );
    let auth = format!("Authorization: Bearer {bearer}");
    let accept = format!("Accept: {MANIFEST_TYPE}");
    h.step(
        &format!("{HIDDEN} is there: read straight from the registry"),
        || {
            let r = direct(
                &h,
                "GET",
                &format!("/v2/{HIDDEN}/manifests/1"),
                &[auth.clone(), accept.clone()],
                Framing::Empty,
            );
            assert_eq!(r.status, 200, "{}", r.short());
            assert_eq!(r.body, hidden.manifest, "the hidden manifest");
            let r = direct(
                &h,
                "GET",
                &format!("/v2/{HIDDEN}/tags/list"),
                std::slice::from_ref(&auth),
                Framing::Empty,
            );
            assert_eq!(r.status, 200, "{}", r.short());
            assert_eq!(r.json()["name"], HIDDEN);
            let r = direct(
                &h,
                "GET",
                "/v2/_catalog",
                std::slice::from_ref(&auth),
                Framing::Empty,
            );
            assert_eq!(r.status, 200, "{}", r.short());
            let repos = r.json()["repositories"].clone();
            assert!(
                repos
                    .as_array()
                    .is_some_and(|a| a.iter().any(|n| n == HIDDEN)),
                "{repos}"
            );
            let r = direct(
                &h,
                "GET",
                &format!("/v2/{HIDDEN}/blobs/{}", hidden.config.digest),
                std::slice::from_ref(&auth),
                Framing::Empty,
            );
            assert_eq!(r.status, 307, "{}", r.short());
            // The checks themselves catch what leaks: the registry's answers, seen as a client would.
            let secrets = Secrets::of(&hidden);
            for (target, hdrs) in [
                (
                    format!("/v2/{HIDDEN}/manifests/1"),
                    vec![auth.clone(), accept.clone()],
                ),
                (
                    format!("/v2/{HIDDEN}/manifests/{}", hidden.manifest_digest),
                    vec![auth.clone(), accept.clone()],
                ),
                (
                    format!("/v2/{HIDDEN}/blobs/{}", hidden.config.digest),
                    vec![auth.clone()],
                ),
                (format!("/v2/{HIDDEN}/tags/list"), vec![auth.clone()]),
                ("/v2/_catalog".to_string(), vec![auth.clone()]),
            ] {
                let r = direct(&h, "GET", &target, &hdrs, Framing::Empty);
                assert!(
                    !leaks(&r, &secrets).is_empty(),
                    "the checks miss {target}: {}",
                    r.short()
                );
            }
            // What the registry makes of encoded paths: each one it serves is a way around an edge
            // that decides on the raw string.
            let mut served = Vec::new();
            for target in [
                format!("/v%32/{HIDDEN}/manifests/1"),
                format!("/%762/{HIDDEN}/manifests/1"),
                "/v2/%64emo/app/manifests/1".to_string(),
                "/v2/demo%2Fapp/manifests/1".to_string(),
                format!("/v2/{HIDDEN}/manifests/%31"),
                format!("/v2/public/../{HIDDEN}/manifests/1"),
                format!("/v2//{HIDDEN}/manifests/1"),
                "/v2/_c%61talog".to_string(),
                "/v%32/_catalog".to_string(),
            ] {
                let r = direct(
                    &h,
                    "GET",
                    &target,
                    &[auth.clone(), accept.clone()],
                    Framing::Empty,
                );
                served.push(format!("{target} → {}", r.status));
            }
            eprintln!("e2e: the registry itself answers: {}", served.join(", "));
        },
    );
    h.step("the token server decodes as Go does, and grants the hidden repository", || {
        let grants = |r: &Resp| -> Vec<String> {
            jwts(&r.json())
                .iter()
                .flat_map(|j| {
                    token::claims(j)["access"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        };
        let t = h.token.addr;
        for (what, req) in [
            ("sc%6fpe=", format!("GET /oauth2/token?service={service}&sc%6fpe=repository%3Ademo%2Fapp%3Apull HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n")),
            ("Scope=", format!("GET /oauth2/token?service={service}&Scope=repository:demo/app:pull HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n")),
            ("/oauth2/%74oken", format!("GET /oauth2/%74oken?service={service}&scope=repository:demo/app:pull HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n")),
            ("a form body", {
                let body = format!("service={service}&sc%6fpe=Repository:demo/app:pull");
                format!("POST /oauth2/token HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n{FORM}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            }),
            ("a JSON body", {
                let body = format!(r#"{{"service":"{service}","scope":"repository:demo\u002fapp:pull"}}"#);
                format!("POST /oauth2/token HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            }),
        ] {
            let r = exchange(t, req.as_bytes());
            assert_eq!(r.status, 200, "{what}: {}", r.short());
            assert_eq!(grants(&r), [HIDDEN], "{what}: {}", r.short());
        }
        let body = format!("service={service}&scope=repository:{HIDDEN}:pull");
        let chunked = format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n{FORM}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..3],
            body.len() - 3,
            &body[3..]
        );
        let r = exchange(t, chunked.as_bytes());
        assert_eq!(r.status, 200, "chunked: {}", r.short());
        assert_eq!(grants(&r), [HIDDEN], "chunked: {}", r.short());
        // Go skips a pair with `;` or a bad escape.
        let r = exchange(t, format!("GET /oauth2/token?service={service}&scope=repository:demo/app:pull;x=1&scope=repository:%zz:pull HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{}", r.short());
        assert!(grants(&r).is_empty(), "{}", r.short());
    });
    let registry_log = h.dir.join("registry.log");
    let log_offset = std::fs::metadata(&registry_log).map_or(0, |m| m.len() as usize);
    let tokens_offset = h.token.seen();

    h.step(&format!("positive controls: {PUBLIC} through the edge"), || {
        let get = |target: &str, hdrs: &[String]| exchange(edge, &request("GET", target, port, hdrs, &Framing::Empty));
        let r = get(&format!("/v2/{PUBLIC}/manifests/1"), &[auth.clone(), accept.clone()]);
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(r.body, public.manifest);
        let r = get(&format!("/v2/{PUBLIC}/manifests/{}", public.manifest_digest), &[auth.clone(), accept.clone()]);
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(r.body, public.manifest);
        let r = get(&format!("/v2/{PUBLIC}/blobs/{}", public.config.digest), std::slice::from_ref(&auth));
        assert_eq!(r.status, 307, "{}", r.short());
        assert!(r.header("location").is_some_and(|l| l.contains(public.config.digest.trim_start_matches("sha256:"))), "{}", r.short());
        let r = get(&format!("/v2/{PUBLIC}/tags/list"), std::slice::from_ref(&auth));
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(r.json(), serde_json::json!({"name": PUBLIC, "tags": ["1"]}));
        let r = exchange(edge, &request("POST", &format!("/v2/{PUBLIC}/blobs/uploads/"), port, std::slice::from_ref(&auth), &Framing::Empty));
        assert_eq!(r.status, 202, "{}", r.short());
        let layer = &public.layers[0].digest;
        let r = exchange(edge, &request("POST", &format!("/v2/{MIRROR}/blobs/uploads/?mount={layer}&from={PUBLIC}"), port, std::slice::from_ref(&auth), &Framing::Empty));
        assert_eq!(r.status, 201, "a mount from a public repository: {}", r.short());
        let granted = |r: &Resp| -> Vec<serde_json::Value> {
            jwts(&r.json()).iter().flat_map(|j| token::claims(j)["access"].as_array().cloned().unwrap_or_default()).collect()
        };
        let pull = serde_json::json!([{"type": "repository", "name": PUBLIC, "actions": ["pull"]}]);
        let push = serde_json::json!([{"type": "repository", "name": PUBLIC, "actions": ["pull", "push"]}]);
        let q = format!("service={service}&scope=repository:{PUBLIC}:pull");
        let r = get(&format!("/oauth2/token?{q}"), &[]);
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(serde_json::json!(granted(&r)), pull, "{}", r.short());
        let r = get(&format!("/oauth2/token?{q},push"), &[basic_header()]);
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(serde_json::json!(granted(&r)), push, "{}", r.short());
        let body = format!("{}&{q},push", password_form());
        let r = exchange(edge, &request("POST", "/oauth2/token", port, &[FORM.into()], &Framing::Length(body.into_bytes())));
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(serde_json::json!(granted(&r)), push, "{}", r.short());
        let r = exchange(edge, &request("POST", "/oauth2/token", port, &[FORM.into()], &Framing::Chunked(q.clone().into_bytes(), 3)));
        let seen = h.token.hits.lock().expect("token log").last().map(|t| (t.method.clone(), t.body.clone(), t.params.clone()));
        eprintln!(
            "e2e: a chunked token POST for {PUBLIC} through the edge: {} {}; the token server's last request: {seen:?}",
            r.status,
            serde_json::json!(granted(&r))
        );
    });

    let targets = Targets {
        manifest: hidden.manifest_digest.clone(),
        config: hidden.config.digest.clone(),
        layer: hidden.layers[0].digest.clone(),
    };
    let corpus = corpus(port, &service, &targets, &bearer);
    let secrets = Secrets::of(&hidden);
    let outcomes = h.step(
        &format!(
            "send the corpus ({} requests) through the edge",
            corpus.len()
        ),
        || {
            assert!(corpus.len() >= 500, "only {} variants", corpus.len());
            let t = Instant::now();
            let outcomes = send_all(edge, &corpus, &secrets);
            eprintln!(
                "e2e: corpus: {} requests in {:.1}s; statuses: {}",
                corpus.len(),
                t.elapsed().as_secs_f64(),
                histogram(outcomes.iter().map(|o| o.status))
            );
            let mut families: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
            for (v, o) in corpus.iter().zip(&outcomes) {
                families.entry(v.family).or_default().push(o.status);
            }
            for (family, statuses) in &families {
                eprintln!(
                    "e2e:   {family:<16} {:>5}  {}",
                    statuses.len(),
                    histogram(statuses.iter().copied())
                );
            }
            let unanswered: Vec<String> = corpus
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| o.status == 0)
                .map(|(v, o)| format!("{} {}: {:?}", v.family, v.label, o.error))
                .collect();
            if !unanswered.is_empty() {
                eprintln!(
                    "e2e: {} requests got no answer (connection closed), e.g. {:?}",
                    unanswered.len(),
                    &unanswered[..unanswered.len().min(5)]
                );
            }
            outcomes
        },
    );
    let logs = h.logs();
    // Every check runs before any fails, so that a failure shows the whole picture; the full
    // lists go to files in the harness directory.
    let mut failures: Vec<String> = Vec::new();
    let mut record = |what: &str, file: &str, found: Vec<String>| {
        if found.is_empty() {
            eprintln!("e2e: ok   {what}");
            return;
        }
        let path = h.dir.join(file);
        let _ = std::fs::write(&path, found.join("\n"));
        eprintln!(
            "e2e: FAIL {what}: {} (all in {})",
            found.len(),
            path.display()
        );
        failures.push(format!(
            "{what}: {} (all in {}):\n{}",
            found.len(),
            path.display(),
            found[..found.len().min(40)].join("\n")
        ));
    };

    let leaked: Vec<String> = corpus
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| !o.leaks.is_empty())
        .map(|(v, o)| {
            format!(
                "[{}] {} — {} → {}: {}",
                v.family,
                v.label,
                v.first_line(),
                o.status,
                o.leaks.join("; ")
            )
        })
        .collect();
    let mut by_family: BTreeMap<&str, usize> = BTreeMap::new();
    for (v, o) in corpus.iter().zip(&outcomes) {
        if !o.leaks.is_empty() {
            *by_family.entry(v.family).or_default() += 1;
        }
    }
    record(
        &format!("answers that give {HIDDEN} away {by_family:?}"),
        "corpus-leaks.txt",
        leaked,
    );

    let hits = h.token.hits.lock().expect("token log")[tokens_offset..].to_vec();
    eprintln!(
        "e2e: the token server saw {} requests during the corpus ({} with pairs Go would skip)",
        hits.len(),
        hits.iter().filter(|t| !t.errors.is_empty()).count()
    );
    let heard: Vec<String> = hits
        .iter()
        .filter(|t| {
            names_hidden(&t.target)
                || names_hidden(&t.body)
                || t.params
                    .iter()
                    .any(|(k, v)| names_hidden(k) || names_hidden(v))
        })
        .map(|t| {
            format!(
                "{} {} body {:?} → {} {:?} (pairs Go would skip: {:?})",
                t.method, t.target, t.body, t.status, t.granted, t.errors
            )
        })
        .collect();
    record(
        &format!("token requests naming {HIDDEN} that reached the token server"),
        "corpus-token-server.txt",
        heard,
    );

    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read(&registry_log).expect("registry log");
    let text = String::from_utf8_lossy(&log[log_offset.min(log.len())..]).into_owned();
    eprintln!(
        "e2e: the registry logged {} lines during the corpus",
        text.lines().count()
    );
    let registry_heard: Vec<String> = text
        .lines()
        .filter(|l| names_hidden(l))
        .map(str::to_string)
        .collect();
    record(
        &format!("registry log lines naming {HIDDEN}"),
        "corpus-registry.txt",
        registry_heard,
    );
    step("registry-edge and docker-registry still run", &logs, || {
        h.assert_alive()
    });
    step(
        &format!("nothing of {HIDDEN} came back, reached the token server or the registry"),
        &logs,
        || assert!(failures.is_empty(), "{}", failures.join("\n\n")),
    );
}

#[test]
fn hidden_names_in_any_spelling() {
    for s in [
        "/v2/demo/app/manifests/1",
        "/v%32/%64emo/app/manifests/1",
        "/v2/demo%2Fapp/tags/list",
        "/v2/demo%252fapp/tags/list",
        "/v2/demo%c0%afapp/tags/list",
        "/v2/DEMO/APP/tags/list",
        "/v2/public/../demo/app/x",
        "/v2/demo/./app/x",
        "/v2/demo;x/app/x",
        "/v2/demo\\app/x",
        "/v2/demo//app/x",
        "scope=repository%3Ademo%2Fapp%3Apull",
        r#"{"name":"demo\/app"}"#,
    ] {
        assert!(names_hidden(s), "{s}");
    }
    for s in [
        "/v2/public/app/manifests/1",
        "/v2/demo/x/app",
        "/v2/dem0/app",
        "scope=repository:public/app:pull",
    ] {
        assert!(!names_hidden(s), "{s}");
    }
}

#[test]
fn requests_are_written_as_generated() {
    let r = request(
        "POST",
        "/oauth2/%74oken",
        8080,
        &[FORM.into()],
        &Framing::Chunked(b"abcde".to_vec(), 2),
    );
    assert_eq!(
        String::from_utf8(r).unwrap(),
        format!("POST /oauth2/%74oken HTTP/1.1\r\nHost: {LOGIN_HOST}:8080\r\nConnection: close\r\nUser-Agent: registry-edge-e2e-corpus\r\n{FORM}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n1\r\ne\r\n0\r\n\r\n")
    );
    assert_eq!(
        dechunk(b"2\r\nab\r\n1;x=1\r\nc\r\n0\r\n\r\n").unwrap(),
        b"abc"
    );
    let forms = path_forms(&["v2".to_string(), "demo".into(), "app".into()], 1);
    let paths: Vec<&str> = forms.iter().map(|(_, p)| p.as_str()).collect();
    for p in [
        "/v2/demo/app",
        "/v%32/demo/app",
        "/%762/demo/app",
        "/v2/%64emo/app",
        "/v2/d%65mo/app",
        "/v2/%2564emo/app",
        "/v2/demo%2Fapp",
        "/v2/demo%c0%afapp",
        "/v2/demo\\app",
        "/v2/public/../demo/app",
        "/v2/public/%2e%2e/demo/app",
        "/v2/DEMO/app",
        "/v2/demo;x/app",
        "/v2/demo/app/",
        "/v2//demo/app",
        "//v2/demo/app",
    ] {
        assert!(paths.contains(&p), "{p} not generated");
    }
}
