//! What of a request may be logged: redaction by allow-list, not deny-list. Every request
//! target, host name and line of text the process writes to a log goes through here (the access
//! log, pingora's own `Fail to proxy` lines through [`summary`], and every log record through
//! [`scrub`] in `logfilter`).
//!
//! The rules, each an allow-list:
//!
//! - **Path**: split on `/`; a segment is kept when it is made only of `A-Z a-z 0-9 . _ ~ : @ + -`
//!   (the characters of repository names, tags, digests, upload ids and the edge's own
//!   `/_r/<region>/` prefix) and is at most [`MAX_SEGMENT`] long; any other segment (a `%XX`
//!   escape, `;sig=…`, `=`, spaces, non-ASCII) becomes `REDACTED`. A segment that is plain
//!   characters all through is kept even if it is a secret: a signature smuggled into a path
//!   survives only when it has no `=`, `%`, `/`-escape or `;` in it and is short.
//! - **Query**: parameters are split on `&` and `;`. A key is kept when it is made of
//!   `A-Z a-z 0-9 _ . -` and at most [`MAX_KEY`] long, else it becomes `REDACTED` (so is a
//!   percent-encoded key such as `sc%6fpe`). A value is kept only after a key of
//!   [`QUERY_KEYS`] (compared exactly) and when it is made of `A-Z a-z 0-9 - . _ ~ : @ + / , % * ! $ ( )`;
//!   every other value becomes `REDACTED`. A parameter without `=` is kept only when it is a
//!   key of [`QUERY_KEYS`].
//! - **Host**: kept when made of `A-Z a-z 0-9 . - _ : [ ]` and at most 255 long.
//!
//! What these functions write is printable ASCII without `"` or `\`: safe inside a JSON
//! string and on one line.

/// What replaces anything that is not allowed.
pub const REDACTED: &str = "REDACTED";

/// Query keys whose values are harmless and worth logging: distribution's pagination (`n`,
/// `last`), cross-repository mounts (`mount`, `from`), upload completion (`digest`), OCI
/// referrers (`artifactType`), containerd's namespace (`ns`), the token endpoint's `service`,
/// `scope`, `client_id` and `offline_token`, the non-secret parts of an Azure SAS (`sv`, `se`,
/// `sr`, `sp`, `spr`, `st`, `sip`), Azure's `api-version` and ACR's `_nouploadcache`. Not here,
/// so always redacted: `sig`, `access_token`, `refresh_token`, `token`, `_state`, `code`,
/// `password`, `X-Amz-*`, `api_key`, and anything else.
pub const QUERY_KEYS: [&str; 20] = [
    "n",
    "last",
    "mount",
    "from",
    "digest",
    "artifactType",
    "ns",
    "service",
    "scope",
    "client_id",
    "offline_token",
    "sv",
    "se",
    "sr",
    "sp",
    "spr",
    "st",
    "sip",
    "api-version",
    "_nouploadcache",
];

/// Longer path segments are redacted: longer than any digest (`sha512:` and 128 hex digits).
pub const MAX_SEGMENT: usize = 160;
/// Longer query keys are redacted.
pub const MAX_KEY: usize = 40;
const MAX_HOST: usize = 255;

const fn table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = b'0';
    while b <= b'9' {
        t[b as usize] = true;
        b += 1;
    }
    b = b'a';
    while b <= b'z' {
        t[b as usize] = true;
        t[(b - 32) as usize] = true;
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static SEGMENT: [bool; 256] = table(b"._~:@+-");
static KEY: [bool; 256] = table(b"_.-");
static VALUE: [bool; 256] = table(b"-._~:@+/,%*!$()");
static HOST: [bool; 256] = table(b".-_:[]");
static SEGMENT_OR_SLASH: [bool; 256] = table(b"._~:@+-/");

fn all(set: &[bool; 256], s: &str) -> bool {
    s.bytes().all(|b| set[usize::from(b)])
}

fn allowed_key(key: &str) -> bool {
    QUERY_KEYS.contains(&key)
}

/// Appends the loggable form of a path (see the module documentation).
pub fn write_path(out: &mut Vec<u8>, path: &str) {
    // The common case: a registry path, every segment plain.
    if all(&SEGMENT_OR_SLASH, path) && path.split('/').all(|s| s.len() <= MAX_SEGMENT) {
        out.extend_from_slice(path.as_bytes());
        return;
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if segment.len() <= MAX_SEGMENT && all(&SEGMENT, segment) {
            out.extend_from_slice(segment.as_bytes());
        } else {
            out.extend_from_slice(REDACTED.as_bytes());
        }
    }
}

/// Appends the loggable form of a query string (without its `?`; see the module documentation).
pub fn write_query(out: &mut Vec<u8>, query: &str) {
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        write_parameter(out, &rest[..end]);
        let Some(sep) = rest.as_bytes().get(end) else {
            return;
        };
        out.push(*sep);
        rest = &rest[end + 1..];
    }
}

fn write_parameter(out: &mut Vec<u8>, parameter: &str) {
    if parameter.is_empty() {
        return;
    }
    let (key, value) = match parameter.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (parameter, None),
    };
    let simple = !key.is_empty() && key.len() <= MAX_KEY && all(&KEY, key);
    let known = simple && allowed_key(key);
    match value {
        None if known => out.extend_from_slice(key.as_bytes()),
        None => out.extend_from_slice(REDACTED.as_bytes()),
        Some(v) => {
            out.extend_from_slice(if simple { key } else { REDACTED }.as_bytes());
            out.push(b'=');
            if known && all(&VALUE, v) {
                out.extend_from_slice(v.as_bytes());
            } else {
                out.extend_from_slice(REDACTED.as_bytes());
            }
        }
    }
}

/// Appends a host (`name[:port]`) when it is made of host-name characters, else `REDACTED`.
pub fn write_host(out: &mut Vec<u8>, host: &str) {
    if !host.is_empty() && host.len() <= MAX_HOST && all(&HOST, host) {
        out.extend_from_slice(host.as_bytes());
    } else {
        out.extend_from_slice(REDACTED.as_bytes());
    }
}

/// Appends a request target, `path[?query]`. Tests read the writers through it.
#[cfg(test)]
pub fn write_target(out: &mut Vec<u8>, target: &str) {
    match target.split_once('?') {
        Some((path, query)) => {
            write_path(out, path);
            out.push(b'?');
            write_query(out, query);
        }
        None => write_path(out, target),
    }
}

/// What the writers produced (ASCII by construction; anything else would be a bug, and is
/// written lossily rather than dropped).
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The loggable form of a request target, `path[?query]`. Tests read the writers through it.
#[cfg(test)]
pub fn target(target: &str) -> String {
    let mut out = Vec::with_capacity(target.len() + 16);
    write_target(&mut out, target);
    into_string(out)
}

/// The loggable form of a path. Tests read the writers through it.
#[cfg(test)]
pub fn path(path: &str) -> std::borrow::Cow<'_, str> {
    if all(&SEGMENT_OR_SLASH, path) && path.split('/').all(|s| s.len() <= MAX_SEGMENT) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    write_path(&mut out, path);
    std::borrow::Cow::Owned(into_string(out))
}

/// The loggable form of a query string (without its `?`). Tests read the writers through it.
#[cfg(test)]
pub fn query(query: &str) -> String {
    let mut out = Vec::with_capacity(query.len());
    write_query(&mut out, query);
    into_string(out)
}

/// `METHOD host route path[?query]`, every part through the allow-lists: what pingora prints
/// in its `Fail to proxy` and `Fail to filter request` lines (`ProxyHttp::request_summary`)
/// instead of the raw request target. `route`: the request's route label (`login`, `token`,
/// `data`, or `none`).
pub fn summary(session: &pingora_proxy::Session, route: &str) -> String {
    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("-");
    summary_of(
        req.method.as_str(),
        host,
        route,
        req.uri.path(),
        req.uri.query(),
    )
}

/// [`summary`] of the parts of a request.
pub fn summary_of(
    method: &str,
    host: &str,
    route: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut out = Vec::with_capacity(64 + path.len() + query.map_or(0, str::len));
    // Methods are tokens; an extension method of other characters is not worth keeping.
    if !method.is_empty() && method.len() <= 20 && all(&KEY, method) {
        out.extend_from_slice(method.as_bytes());
    } else {
        out.extend_from_slice(REDACTED.as_bytes());
    }
    out.push(b' ');
    if host == "-" {
        out.push(b'-');
    } else {
        write_host(&mut out, host);
    }
    out.push(b' ');
    if all(&KEY, route) && !route.is_empty() {
        out.extend_from_slice(route.as_bytes());
    } else {
        out.extend_from_slice(REDACTED.as_bytes());
    }
    out.push(b' ');
    write_path(&mut out, path);
    if let Some(q) = query {
        out.push(b'?');
        write_query(&mut out, q);
    }
    into_string(out)
}

// ---------------------------------------------------------------------------------------------
// Free text

/// Bytes that end a word of free text.
fn delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\r'
            | b'\n'
            | b'"'
            | b'\''
            | b'`'
            | b'<'
            | b'>'
            | b'('
            | b')'
            | b'{'
            | b'}'
    )
}

/// Authorization schemes: the word after one of these is a credential.
const SCHEMES: [&str; 3] = ["bearer", "basic", "negotiate"];
/// Names whose value (up to a closing quote, or the end of the line) is a credential:
/// header names, and JSON or form keys of credentials.
const CREDENTIAL_NAMES: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "access_token",
    "refresh_token",
    "token",
    "password",
    "client_secret",
];

/// A line of free text with what could be a credential replaced: every `?query` and every
/// `key=value` word through the query allow-list, every word starting with `/` through the path
/// allow-list, URLs by parts (user information always redacted), the word after `Bearer`,
/// `Basic` or `Negotiate`, the value after `Authorization`, `Cookie` and credential keys, and
/// any other word holding a `%XX` escape. The rest of the text is kept. Idempotent: what it
/// writes passes through it unchanged.
pub fn scrub(text: &str) -> String {
    let b = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 32);
    let mut i = 0;
    let mut after_scheme = false;
    while i < b.len() {
        if delimiter(b[i]) {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|&c| delimiter(c))
            .map_or(b.len(), |p| i + p);
        let word = &text[i..end];
        if after_scheme {
            after_scheme = false;
            out.extend_from_slice(REDACTED.as_bytes());
            i = end;
            continue;
        }
        let bare = word.trim_end_matches([':', '=', ',', ';']);
        if SCHEMES.iter().any(|s| bare.eq_ignore_ascii_case(s)) && bare.len() == word.len() {
            out.extend_from_slice(word.as_bytes());
            after_scheme = true;
            i = end;
            continue;
        }
        if CREDENTIAL_NAMES
            .iter()
            .any(|n| bare.eq_ignore_ascii_case(n))
        {
            out.extend_from_slice(word.as_bytes());
            i = credential_value(text, end, &mut out);
            continue;
        }
        // `key="value"`: the quoted text is the value, kept only after an allowed key.
        if let Some(key) = word.strip_suffix('=') {
            if matches!(b.get(end), Some(b'"' | b'\'')) {
                scrub_word(key, &mut out);
                out.push(b'=');
                let last = key.rsplit(['&', ';', '?']).next().unwrap_or_default();
                i = if allowed_key(last) {
                    end
                } else {
                    quoted_redacted(text, end, &mut out)
                };
                continue;
            }
        }
        scrub_word(word, &mut out);
        i = end;
    }
    into_string(out)
}

/// After a credential's name at `at`: separators (`"`, `'`, `:`, `=`, blanks) are kept, then the
/// value up to a closing quote (when it was quoted) or the end of the line becomes `REDACTED`.
/// Returns where to go on.
fn credential_value(text: &str, mut at: usize, out: &mut Vec<u8>) -> usize {
    let b = text.as_bytes();
    let mut quote = None;
    while let Some(&c) = b.get(at) {
        match c {
            b'"' | b'\'' => {
                quote = Some(c);
                out.push(c);
                at += 1;
            }
            b':' | b'=' | b' ' | b'\t' => {
                out.push(c);
                at += 1;
            }
            _ => break,
        }
    }
    let end = match quote {
        Some(q) => b[at..].iter().position(|&c| c == q || c == b'\n'),
        None => b[at..].iter().position(|&c| c == b'\n' || c == b'\r'),
    }
    .map_or(b.len(), |p| at + p);
    if end > at {
        out.extend_from_slice(REDACTED.as_bytes());
    }
    end
}

/// A quoted value at `at` (the opening quote): quotes kept, content `REDACTED`.
fn quoted_redacted(text: &str, at: usize, out: &mut Vec<u8>) -> usize {
    let b = text.as_bytes();
    let q = b[at];
    out.push(q);
    let end = b[at + 1..]
        .iter()
        .position(|&c| c == q || c == b'\n')
        .map_or(b.len(), |p| at + 1 + p);
    if end > at + 1 {
        out.extend_from_slice(REDACTED.as_bytes());
    }
    end
}

/// One word of free text.
fn scrub_word(word: &str, out: &mut Vec<u8>) {
    // Punctuation that ends a sentence or a list is kept as it is.
    let core = word.trim_end_matches([',', ';']);
    let tail = &word[core.len()..];
    let (head, query) = match core.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (core, None),
    };
    scrub_head(head, out);
    if let Some(q) = query {
        out.push(b'?');
        write_query(out, q);
    }
    out.extend_from_slice(tail.as_bytes());
}

fn scrub_head(head: &str, out: &mut Vec<u8>) {
    if let Some(p) = head.find("://") {
        let scheme = &head[..p];
        if !scheme.is_empty()
            && scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            out.extend_from_slice(scheme.as_bytes());
            out.extend_from_slice(b"://");
            let rest = &head[p + 3..];
            let split = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(split);
            let host = match authority.rfind('@') {
                Some(at) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    out.push(b'@');
                    &authority[at + 1..]
                }
                None => authority,
            };
            if !host.is_empty() {
                write_host(out, host);
            }
            write_path(out, path);
            return;
        }
    }
    if head.starts_with('/') {
        write_path(out, head);
    } else if head.contains('=') {
        write_query(out, head);
    } else if has_escape(head) {
        out.extend_from_slice(REDACTED.as_bytes());
    } else {
        out.extend_from_slice(head.as_bytes());
    }
}

/// Whether `s` holds a `%XX` escape.
fn has_escape(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
