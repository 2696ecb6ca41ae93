//! The token-request parser against arbitrary query strings and form bodies (invalid UTF-8 read
//! lossily). It must never panic, and whatever it accepts must be what a token server behind it
//! would read:
//!
//! - `serialize()` parses back to the same request, before and after the scope filter, and
//!   holds no `;`, space, control or non-ASCII byte;
//! - differential: the input and every serialised output, read as Go's `url.ParseQuery` reads
//!   them, give without error exactly the judged parameters, in order;
//! - after `retain_scopes` keeping only `public/` repositories, every scope of the serialised
//!   output, decoded by Go and split at any whitespace, parses as distribution's token server
//!   parses it (`strings.SplitN(scope, ":", 3)`) to a `repository` scope naming a `public/`
//!   repository, and the dropped count is what disappeared.
//!
//! Run (in `fuzz/`), seeds and dictionary in `fuzz/seeds/`:
//! `mkdir -p corpus/gate_token && cp seeds/gate_token/* corpus/gate_token/`
//! `cargo +nightly fuzz run gate_token corpus/gate_token -- -dict=seeds/gate_token.dict -max_len=4096`

#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_edge_gate::token::TokenParam;
use registry_edge_gate::{grammar, TokenRequest};

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte, a `%` without two hex digits an
/// error; no UTF-8 check.
fn go_unescape(s: &str) -> Option<Vec<u8>> {
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
            b'+' => {
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

/// Go's `url.ParseQuery`: the pairs in order, or `None` where Go reports an error.
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
        out.push((go_unescape(k)?, go_unescape(v)?));
    }
    Some(out)
}

fn judged(t: &TokenRequest) -> Vec<(Vec<u8>, Vec<u8>)> {
    t.params
        .iter()
        .map(|(p, v)| (p.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The serialised form parses back, is read alike by Go, and is plain.
fn serialised(t: &TokenRequest) -> String {
    let s = t.serialize();
    assert!(
        !s.contains(';') && !s.contains(' ') && s.bytes().all(|b| b.is_ascii_graphic()),
        "{t:?} serialised as {s:?}"
    );
    assert_eq!(
        TokenRequest::parse(&s).as_ref(),
        Ok(t),
        "{s:?} does not parse back"
    );
    assert_eq!(
        go_parse_query(&s),
        Some(judged(t)),
        "Go reads {s:?} otherwise"
    );
    s
}

fn public(name: &str) -> bool {
    name.starts_with("public/")
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let Ok(t) = TokenRequest::parse(&raw) else {
        return;
    };
    assert_eq!(
        go_parse_query(&raw),
        Some(judged(&t)),
        "Go reads {raw:?} otherwise than the gate: {t:?}"
    );
    serialised(&t);

    let mut kept = t.clone();
    let before = kept.scopes().count();
    let dropped = kept.retain_scopes(|s| s.and_then(|s| s.repository()).is_some_and(public));
    assert_eq!(kept.scopes().count() + dropped, before, "{t:?} → {kept:?}");
    assert!(
        kept.params
            .iter()
            .all(|(p, v)| *p != TokenParam::Scope || !v.is_empty()),
        "{kept:?} keeps an empty scope"
    );
    // Everything but the scopes is left as it was.
    let others = |r: &TokenRequest| -> Vec<(TokenParam, String)> {
        r.params
            .iter()
            .filter(|(p, _)| *p != TokenParam::Scope)
            .cloned()
            .collect()
    };
    assert_eq!(others(&kept), others(&t));

    let s = serialised(&kept);
    for (k, v) in go_parse_query(&s).unwrap() {
        if k != b"scope" {
            continue;
        }
        let v = String::from_utf8(v).expect("a kept scope is UTF-8");
        for scope in v.split(char::is_whitespace).filter(|x| !x.is_empty()) {
            // distribution's contrib/token-server: type[(class)]:name:actions, SplitN 3.
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            assert_eq!(parts.len(), 3, "kept {scope:?} from {raw:?}");
            let resource_type = parts[0].split_once('(').map_or(parts[0], |(t, _)| t);
            assert_eq!(resource_type, "repository", "kept {scope:?} from {raw:?}");
            assert!(
                public(parts[1]) && grammar::is_name(parts[1]),
                "kept {scope:?} from {raw:?}"
            );
            assert!(!parts[2].contains(':'), "kept {scope:?} from {raw:?}");
        }
    }
});
