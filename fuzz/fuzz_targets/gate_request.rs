//! The request gate's parser against arbitrary request lines: `METHOD SP path[?query]` (no
//! space: `GET` and the whole input as the target; invalid UTF-8 read lossily). It must never
//! panic, and whatever it accepts must be what a registry behind it would read:
//!
//! - the rebuilt target (`Operation::target`, split at `?`) parses to the same operation;
//! - the rebuilt path is the received one byte for byte (`/v2` becomes `/v2/`), holds no `%`,
//!   `;`, `//`, `.` or `..` segment, control or non-ASCII byte, and is already clean as
//!   gorilla/mux (`path.Clean`) would clean it;
//! - every repository it reports is a name by the grammar;
//! - differential, path: the path decoded as Go's `url.PathUnescape` decodes it (every `%XX`)
//!   is the path received, so a registry that routes on the decoded path routes on the judged
//!   one;
//! - differential, query: the received and the rebuilt query, read as Go's `url.ParseQuery`
//!   reads them, give without error exactly the parameters the gate judged, in order.
//!
//! Run (in `fuzz/`), seeds and dictionary in `fuzz/seeds/`:
//! `mkdir -p corpus/gate_request && cp seeds/gate_request/* corpus/gate_request/`
//! `cargo +nightly fuzz run gate_request corpus/gate_request -- -dict=seeds/gate_request.dict -max_len=4096`

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_edge_gate::grammar;

const TOKEN_PATHS: [&str; 2] = ["/oauth2/token", "/oauth2/exchange"];

fn split_target(target: &str) -> (&str, Option<&str>) {
    target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)))
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Go's `unescape`: `%XX` is a byte, a `%` without two hex digits an error; in query mode
/// (`url.QueryUnescape`) `+` is a space. No UTF-8 check, as Go makes none.
fn go_unescape(s: &str, query: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = hex(*b.get(i + 1)?)?;
                let l = hex(*b.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Go's `url.ParseQuery`: the pairs in order, or `None` where Go reports an error (a `;` in a
/// pair, a bad escape).
fn go_parse_query(q: &str) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for pair in q.split('&') {
        if pair.contains(';') {
            return None;
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((go_unescape(k, true)?, go_unescape(v, true)?));
    }
    Some(out)
}

/// Go's `path.Clean`, with the trailing slash gorilla/mux puts back.
fn go_clean(p: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = format!("/{}", segs.join("/"));
    if p.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

fn check(method: &str, path: &str, query: Option<&str>) {
    let parsed = registry_edge_gate::parse(method, path, query, &TOKEN_PATHS);

    // Differential, path: a path that Go decodes to something else (or refuses) is refused.
    let decoded = go_unescape(path, false);
    if decoded.as_deref() != Some(path.as_bytes()) {
        assert!(
            parsed.is_err(),
            "accepted {path:?}, which a registry decodes to {:?}",
            decoded.map(|d| String::from_utf8_lossy(&d).into_owned())
        );
    }

    let Ok(op) = parsed else {
        return;
    };

    for name in op.repositories() {
        assert!(grammar::is_name(name), "{op:?} reports the name {name:?}");
    }

    if let Some(rebuilt) = op.path() {
        assert!(
            rebuilt == path || (path == "/v2" && rebuilt == "/v2/"),
            "{path:?} rebuilt as {rebuilt:?}"
        );
        assert!(
            rebuilt.starts_with('/')
                && !rebuilt.contains('%')
                && !rebuilt.contains(';')
                && !rebuilt.contains("//")
                && !rebuilt.contains("/./")
                && !rebuilt.contains("/../")
                && !rebuilt.ends_with("/.")
                && !rebuilt.ends_with("/..")
                && rebuilt.bytes().all(|b| b.is_ascii_graphic()),
            "{path:?} rebuilt as the non-canonical {rebuilt:?}"
        );
        assert_eq!(go_clean(&rebuilt), rebuilt, "{rebuilt:?} is not clean");
    }

    // Differential, query: Go reads the parameters the gate judged.
    let judged: Vec<(Vec<u8>, Vec<u8>)> = op
        .query
        .iter()
        .map(|(p, v)| (p.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    if op.path().is_some() {
        let go = query.map_or(Some(Vec::new()), go_parse_query);
        assert_eq!(
            go.as_ref(),
            Some(&judged),
            "Go reads {query:?} otherwise than the gate: {op:?}"
        );
    }

    // Round trip through the rebuilt target.
    if let Some(target) = op.target() {
        let (p, q) = split_target(&target);
        let again = registry_edge_gate::parse(method, p, q, &TOKEN_PATHS);
        assert_eq!(
            again.as_ref(),
            Ok(&op),
            "{path:?} ? {query:?} → {target:?} does not parse back"
        );
        let go = q.map_or(Some(Vec::new()), go_parse_query);
        assert_eq!(go.as_ref(), Some(&judged), "Go reads {target:?} otherwise");
        assert!(
            target.bytes().all(|b| b.is_ascii_graphic()) && !target.contains(';'),
            "{target:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let (method, target) = line.split_once(' ').unwrap_or(("GET", &line));
    let (path, query) = split_target(target);
    check(method, path, query);
});
