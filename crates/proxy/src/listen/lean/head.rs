//! The request head and body framing of the lean HTTP/1 session, as pure functions over bytes
//! (no I/O), so that they can be tested and fuzzed against pingora's own session.
//!
//! Stricter than pingora where RFC 9112 lets a server choose, never looser:
//!
//! - a request line or field httparse refuses is a 400 (pingora percent-escapes some bytes of a
//!   request line it cannot parse and goes on);
//! - `Content-Length` together with `Transfer-Encoding` is a 400 (pingora drops the length and
//!   closes after the response); `Transfer-Encoding` other than exactly `chunked`, or in an
//!   HTTP/1.0 request, is a 400;
//! - a request with more than one `Host` is a 400 (RFC 9112 §3.2; pingora refuses it too);
//! - a chunk-size line must end in CRLF, its size is 1 to 15 hex digits, and its extensions hold
//!   no control characters; the data must be followed by CRLF; trailer fields are read, bounded
//!   and dropped (pingora forwards none over HTTP/1 either).

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Version};
use pingora::http::RequestHeader;

/// Most bytes of a request head (pingora's limit).
pub const MAX_HEAD: usize = 1_048_575;
/// Most fields of a request head (pingora's limit).
pub const MAX_FIELDS: usize = 256;
/// Most bytes of a chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of a chunked body's trailer section.
pub const MAX_TRAILER: usize = 16 * 1024;

/// Why a head or a body was refused; the text goes to the debug log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no framing field, or a length of 0).
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Parsed {
    pub header: Box<RequestHeader>,
    pub framing: Framing,
    /// The head's bytes as received.
    pub raw: Bytes,
    /// What the request's `Connection` and version ask for.
    pub keepalive: bool,
}

/// Parses the request head at the start of `buf`. `Ok(None)`: more bytes are needed (and
/// allowed). On success the head's bytes are taken off the front of `buf`; what follows (body,
/// next request) stays.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Parsed>, Refused> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(Refused("request head too large"))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refused("too many header fields")),
        Err(_) => return Err(Refused("malformed request head")),
    };
    if len > MAX_HEAD {
        return Err(Refused("request head too large"));
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(Refused("unsupported HTTP version")),
    };
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    // Offsets of every name and value in `buf`, so that the fields can be slices of the frozen
    // head instead of copies.
    let base = buf.as_ptr() as usize;
    let spans: Vec<((usize, usize), (usize, usize))> = req
        .headers
        .iter()
        .map(|h| {
            (
                (h.name.as_ptr() as usize - base, h.name.len()),
                (h.value.as_ptr() as usize - base, h.value.len()),
            )
        })
        .collect();
    // Without pingora's case map (a second map of every field name, kept to replay the client's
    // capitalisation upstream): field names are case-insensitive (RFC 9110 §5.1), and the
    // upstream receives them in lower case.
    let mut header = Box::new(
        RequestHeader::build_no_case(method, path.as_bytes(), Some(spans.len()))
            .map_err(|_| Refused("invalid request target"))?,
    );
    header.set_version(version);
    let head = buf.split_to(len).freeze();
    for ((n, nl), (v, vl)) in spans {
        let name: Bytes = head.slice(n..n + nl);
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| Refused("invalid field value"))?;
        header
            .append_header(name, value)
            .map_err(|_| Refused("invalid field name"))?;
    }
    let framing = framing(&header)?;
    pingora::protocols::http::authority::validate_request_authority(&header)
        .map_err(|_| Refused("ambiguous authority"))?;
    // No `Host` at all is left to the edge, which answers it 421 as it does any host it does not
    // serve (as with pingora's session); more than one is refused here.
    if header.headers.get_all(HOST).iter().count() > 1 {
        return Err(Refused("Host given twice"));
    }
    let keepalive = keepalive(&header);
    Ok(Some(Parsed {
        header,
        framing,
        raw: head,
        keepalive,
    }))
}

/// The request body's framing (RFC 9112 §6), refusing every ambiguous form.
pub fn framing(header: &RequestHeader) -> Result<Framing, Refused> {
    let te = header.headers.get_all(TRANSFER_ENCODING);
    let mut te = te.iter();
    let length = content_length(header)?;
    match (te.next(), te.next()) {
        (None, _) => Ok(match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }),
        (Some(_), Some(_)) => Err(Refused("Transfer-Encoding given twice")),
        (Some(v), None) => {
            if length.is_some() {
                return Err(Refused("both Content-Length and Transfer-Encoding"));
            }
            if header.version != Version::HTTP_11 {
                return Err(Refused("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(Refused("Transfer-Encoding other than chunked"));
            }
            Ok(Framing::Chunked)
        }
    }
}

/// The one length every `Content-Length` field (and every item of a list in one) gives: equal
/// repeats are one length (RFC 9110 §8.6), anything else is refused.
fn content_length(header: &RequestHeader) -> Result<Option<u64>, Refused> {
    let mut length: Option<u64> = None;
    for v in header.headers.get_all(CONTENT_LENGTH) {
        for item in v.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(Refused("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Refused("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Refused("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the client asks for the connection to stay open: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive`.
fn keepalive(header: &RequestHeader) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in header.headers.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (header.version == Version::HTTP_11 || keep)
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of chunk data, then CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailer,
    Done,
}

/// One step of a chunked decoder over `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes, taken off `buf`.
    Data(Bytes),
    /// Framing was consumed; step again.
    Framing,
    /// More bytes are needed.
    More,
    /// The body ended (its last framing byte consumed).
    End,
}

impl Chunked {
    /// Decodes what `buf` holds, at most `max` data bytes at a time.
    pub fn step(&mut self, buf: &mut BytesMut, max: usize) -> Result<Step, Refused> {
        match *self {
            Chunked::Done => Ok(Step::End),
            Chunked::Size => {
                let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                    return if buf.len() >= MAX_CHUNK_LINE {
                        Err(Refused("chunk-size line too long"))
                    } else {
                        Ok(Step::More)
                    };
                };
                let size = chunk_size(&buf[..lf])?;
                let _ = buf.split_to(lf + 1);
                *self = if size == 0 {
                    Chunked::Trailer
                } else {
                    Chunked::Data(size)
                };
                Ok(Step::Framing)
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (buf.len() as u64).min(left).min(max as u64) as usize;
                let data = buf.split_to(n).freeze();
                *self = if left == n as u64 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n as u64)
                };
                Ok(Step::Data(data))
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return if buf.first().is_some_and(|&b| b != b'\r') {
                        Err(Refused("chunk data not followed by CRLF"))
                    } else {
                        Ok(Step::More)
                    };
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Refused("chunk data not followed by CRLF"));
                }
                let _ = buf.split_to(2);
                *self = Chunked::Size;
                Ok(Step::Framing)
            }
            Chunked::Trailer => {
                if buf.starts_with(b"\r\n") {
                    let _ = buf.split_to(2);
                    *self = Chunked::Done;
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((n, _))) if n <= MAX_TRAILER => {
                        // httparse takes a bare LF for a line's end; pingora does not here.
                        let bare_lf = buf[..n]
                            .iter()
                            .enumerate()
                            .any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'));
                        if bare_lf {
                            return Err(Refused("bare LF in the trailer section"));
                        }
                        let _ = buf.split_to(n);
                        *self = Chunked::Done;
                        Ok(Step::End)
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILER => Ok(Step::More),
                    Ok(_) => Err(Refused("trailer section too large")),
                    Err(_) => Err(Refused("malformed trailer section")),
                }
            }
        }
    }
}

/// The size of a chunk-size line (without its LF): `1*15HEXDIG *( BWS ";" ext ) CR`.
fn chunk_size(line: &[u8]) -> Result<u64, Refused> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(Refused("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(Refused("invalid chunk size"));
    }
    let rest = &line[digits..];
    let ext = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !(rest.is_empty() || ext.starts_with(b";")) {
        return Err(Refused("invalid chunk size"));
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Refused("control character in a chunk extension"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| Refused("invalid chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| Refused("invalid chunk size"))
}

#[cfg(test)]
mod tests;
