//! What a fill's own upstream exchange (crate::service, `fill_from_upstream`) reads of the data
//! endpoint's response head: parsed with httparse under fixed limits, and taken only when it
//! is a whole blob of a known length. Anything else is left to pingora's proxy path, which
//! sends the request again (a blob `GET` is safe to repeat).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::pages::Pages;

/// Most bytes a response head may take (pingora's own limit for a head is 1 MiB; a data
/// endpoint's is a few hundred bytes).
pub const MAX_HEAD: usize = 64 << 10;
/// Most header fields a response head may have.
const MAX_FIELDS: usize = 128;

/// A complete response head.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// The fields in order, as sent.
    pub fields: Vec<(String, Bytes)>,
    /// Bytes the head took, blank line included.
    pub len: usize,
}

/// Why a response head is not one to fill from here.
#[derive(Debug, PartialEq, Eq)]
pub enum NotFillable {
    /// Not a head httparse takes, or over [`MAX_HEAD`] or [`MAX_FIELDS`].
    Malformed,
    /// An interim answer (100, 103), another status than 200.
    Status(u16),
    /// No `Content-Length`, several, or one that is not a number.
    Length,
    /// `Transfer-Encoding`, `Content-Encoding` or `Content-Range`: not the blob's bytes as
    /// they are.
    Framing(&'static str),
}

/// The head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, NotFillable> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut fields);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            status: r.code.unwrap_or(0),
            fields: r
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                .collect(),
            len,
        })),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        _ => Err(NotFillable::Malformed),
    }
}

impl Head {
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body's length when this is a whole blob the edge can read as it is: a `200` with
    /// one `Content-Length` (RFC 9110 §8.6: digits only), no `Transfer-Encoding`, no
    /// `Content-Encoding`, no `Content-Range`.
    pub fn blob_length(&self) -> Result<u64, NotFillable> {
        if self.status != 200 {
            return Err(NotFillable::Status(self.status));
        }
        for name in ["transfer-encoding", "content-encoding", "content-range"] {
            if self.all(name).next().is_some() {
                return Err(NotFillable::Framing(name));
            }
        }
        let mut lengths = self.all("content-length");
        let (Some(v), None) = (lengths.next(), lengths.next()) else {
            return Err(NotFillable::Length);
        };
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Err(NotFillable::Length);
        }
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(NotFillable::Length)
    }

    /// The tokens of every `Connection` field, trimmed.
    fn connection_tokens(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.all("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    }

    /// Whether the upstream keeps the connection open after this response.
    pub fn keeps_alive(&self) -> bool {
        !self
            .connection_tokens()
            .any(|t| t.eq_ignore_ascii_case(b"close"))
    }

    /// The head as pingora's proxy path would hand it to `response_filter`, less the
    /// hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and the fields it names, `Keep-Alive`,
    /// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`. The client's
    /// connection gets its own from pingora's session.
    pub fn response_header(&self) -> pingora::prelude::Result<ResponseHeader> {
        const HOP: [&str; 7] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        let named: Vec<String> = self
            .connection_tokens()
            .filter_map(|t| std::str::from_utf8(t).ok())
            .map(str::to_ascii_lowercase)
            .collect();
        let mut h = ResponseHeader::build(self.status, Some(self.fields.len()))?;
        for (name, value) in &self.fields {
            let lower = name.to_ascii_lowercase();
            if HOP.contains(&lower.as_str()) || named.contains(&lower) {
                continue;
            }
            let value = http::HeaderValue::from_maybe_shared(value.clone()).map_err(|_| {
                pingora::prelude::Error::explain(
                    pingora::prelude::ErrorType::InvalidHTTPHeader,
                    "a data endpoint's header value is not valid",
                )
            })?;
            h.append_header(name.clone(), value)?;
        }
        Ok(h)
    }
}

/// Body bytes per chunk of a fill's own exchange: read from the socket into one buffer,
/// hashed, queued for the writer and written to the client.
pub const CHUNK: usize = 4 << 20;
/// The first chunk's end (a multiple of the alignment): chunks double from here to [`CHUNK`].
pub const FIRST_CHUNK: usize = 256 << 10;
/// The sizes of an own exchange's chunks after the `pre` body bytes that came with the
/// response head: a first chunk that ends at [`FIRST_CHUNK`], so that every later one starts
/// at an aligned offset of the entry (the writer sends it to the disk from where it was read),
/// then sizes doubling up to [`CHUNK`], so that the client gets its first bytes after a few
/// hundred KiB rather than 4 MiB.
pub struct ChunkSizes {
    size: usize,
    want: usize,
}

impl ChunkSizes {
    pub fn after(pre: usize) -> ChunkSizes {
        ChunkSizes {
            size: FIRST_CHUNK,
            want: FIRST_CHUNK - pre % FIRST_CHUNK,
        }
    }

    /// The next chunk's size, with `left` body bytes still to come.
    pub fn next(&mut self, left: u64) -> usize {
        let n = left.min(self.want as u64) as usize;
        self.size = (self.size * 2).min(CHUNK);
        self.want = self.size;
        n
    }
}

/// Buffers a fill's pool keeps for reuse; more in flight (a writer behind) are freed.
const POOL_KEEPS: usize = 2;
/// Most chunk memory all own exchanges may hold at once outside their writers' queues (which
/// store.rs bounds on its own): each reserves the chunk being read, the one being written to its
/// client (or, the last, held until verified) and its pool's idle ones, [`PER_EXCHANGE`]. Past it, a fill goes through pingora's
/// proxy path (64 KiB at a time), as it did before there was an own exchange: many slow
/// clients filling many digests at once cannot make the edge hold gigabytes.
pub const CHUNK_MEMORY: u64 = 512 << 20;
/// What one own exchange reserves of [`CHUNK_MEMORY`].
pub const PER_EXCHANGE: u64 = ((2 + POOL_KEEPS) * CHUNK) as u64;

static RESERVED: AtomicU64 = AtomicU64::new(0);

/// One own exchange's share of [`CHUNK_MEMORY`], given back when dropped.
pub struct Reservation(());

impl Reservation {
    /// A share, if [`CHUNK_MEMORY`] has one left.
    pub fn take() -> Option<Reservation> {
        RESERVED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r + PER_EXCHANGE <= CHUNK_MEMORY).then_some(r + PER_EXCHANGE)
            })
            .ok()
            .map(|_| Reservation(()))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED.fetch_sub(PER_EXCHANGE, Ordering::AcqRel);
    }
}

/// A fill's body buffers: [`CHUNK`] bytes each, each of its own mapping (super::pages: aligned
/// for direct writes, whole chunks on huge pages), so that the writer sends a whole chunk to the
/// disk from where the socket read put it (fill_file, direct writes) instead of copying it into
/// its block. A buffer starts zeroed (a new mapping); a chunk's bytes return to the pool when
/// the client's write and the disk's are both done with them.
#[derive(Clone, Default)]
pub struct ChunkPool {
    free: Arc<Mutex<Vec<Pages>>>,
}

/// A chunk being read into: `room` to read into, `filled` to count what was read.
pub struct ChunkBuf {
    buf: Pages,
    len: usize,
    want: usize,
    home: ChunkPool,
}

impl ChunkPool {
    /// A buffer for the next `want` bytes (at most [`CHUNK`]): a kept one, or a new one of
    /// that size (a small blob, or the last chunk of one, does not map a whole chunk). An error
    /// when the kernel has no memory to map.
    pub fn take(&self, want: usize) -> std::io::Result<ChunkBuf> {
        let want = want.min(CHUNK);
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let buf = match kept.filter(|b| b.len() >= want) {
            Some(b) => b,
            None => Pages::new(want)?,
        };
        Ok(ChunkBuf {
            buf,
            len: 0,
            want,
            home: self.clone(),
        })
    }

    fn give_back(&self, buf: Pages) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_KEEPS {
            free.push(buf);
        }
    }
}

impl ChunkBuf {
    /// Where the next bytes go.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..self.want]
    }

    /// `n` more bytes were read into [`ChunkBuf::room`].
    pub fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(self.want);
    }

    pub fn is_full(&self) -> bool {
        self.len == self.want
    }

    /// The bytes read, shared with the writer and the client's write; back to the pool when
    /// both have let go.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(Frozen(Some(self)))
    }
}

struct Frozen(Option<ChunkBuf>);

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |c| &c.buf[..c.len])
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.home.give_back(c.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_cache::{fill_file::ALIGN, pages::HUGE};

    #[test]
    fn chunks_are_aligned_hold_what_was_read_and_go_back_to_the_pool() {
        let pool = ChunkPool::default();
        let mut c = pool.take(10_000).unwrap();
        assert_eq!(c.room().len(), 10_000);
        c.room()[..3].copy_from_slice(b"abc");
        c.filled(3);
        assert!(!c.is_full());
        c.room()[..2].copy_from_slice(b"de");
        c.filled(2);
        let b = c.freeze();
        assert_eq!(&b[..], b"abcde");
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        let copy = b.clone();
        drop(b);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "given back while in use"
        );
        drop(copy);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        // The kept buffer is too small for a whole chunk: a new one.
        let mut again = pool.take(CHUNK * 2).unwrap();
        assert_eq!(again.room().len(), CHUNK);
        assert!(pool.free.lock().unwrap().is_empty());
        let n = again.room().len();
        again.filled(n);
        assert!(again.is_full());
        let whole = again.freeze();
        assert_eq!(whole.len(), CHUNK);
        let at = whole.as_ptr();
        assert_eq!(
            at as usize % HUGE,
            0,
            "a whole chunk on huge pages' boundaries"
        );
        drop(whole);
        // A whole chunk's buffer serves any size after it.
        let small = pool.take(10).unwrap();
        assert_eq!(small.buf.as_ptr(), at, "not reused");
    }

    #[test]
    fn chunks_after_the_first_start_aligned_and_grow_to_a_whole_chunk() {
        for pre in [0, 1, 4095, 4096, 16_000, FIRST_CHUNK - 1] {
            for length in [1, 300_000, 5 << 20, (64 << 20) + 123] {
                let length = length.max(pre as u64);
                let mut sizes = ChunkSizes::after(pre);
                let (mut at, mut seen) = (pre as u64, Vec::new());
                while at < length {
                    let n = sizes.next(length - at);
                    assert!(n > 0);
                    if !seen.is_empty() {
                        assert_eq!(at % ALIGN as u64, 0, "pre {pre}: a chunk at {at}");
                    }
                    seen.push(n);
                    at += n as u64;
                }
                assert_eq!(at, length, "pre {pre}");
                if length > pre as u64 {
                    assert_eq!(pre + seen[0], FIRST_CHUNK.min(length as usize), "pre {pre}");
                }
                assert!(seen.iter().all(|&n| n <= CHUNK));
                if length >= 64 << 20 {
                    assert_eq!(seen[1..5], [512 << 10, 1 << 20, 2 << 20, CHUNK]);
                    assert_eq!(seen[seen.len() - 2], CHUNK);
                }
            }
        }
    }

    #[test]
    fn own_exchanges_hold_at_most_their_share_of_chunk_memory() {
        let all: Vec<Reservation> = std::iter::from_fn(Reservation::take).collect();
        assert_eq!(all.len() as u64, CHUNK_MEMORY / PER_EXCHANGE);
        assert!(Reservation::take().is_none());
        drop(all);
        assert!(Reservation::take().is_some());
    }

    fn head(s: &str) -> Head {
        parse(s.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_head_is_complete_only_at_its_blank_line() {
        let full = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() - 5 {
            assert!(parse(&full.as_bytes()[..cut]).unwrap().is_none(), "{cut}");
        }
        let h = head(full);
        assert_eq!((h.status, h.len), (200, full.len() - 5));
        assert_eq!(h.blob_length(), Ok(5));
        assert!(h.keeps_alive());
    }

    #[test]
    fn only_a_whole_blob_of_one_length_is_taken() {
        let with = |fields: &str| head(&format!("HTTP/1.1 200 OK\r\n{fields}\r\n"));
        assert_eq!(with("Content-Length: 10\r\n").blob_length(), Ok(10));
        assert_eq!(
            with("Content-Length: 10\r\nContent-Length: 10\r\n").blob_length(),
            Err(NotFillable::Length)
        );
        for bad in ["", "+1", "1,1", "0x10", " ", "99999999999999999999"] {
            assert_eq!(
                with(&format!("Content-Length: {bad}\r\n")).blob_length(),
                Err(NotFillable::Length),
                "{bad:?}"
            );
        }
        assert_eq!(with("").blob_length(), Err(NotFillable::Length));
        assert_eq!(
            with("Content-Length: 10\r\nTransfer-Encoding: chunked\r\n").blob_length(),
            Err(NotFillable::Framing("transfer-encoding"))
        );
        assert_eq!(
            with("Content-Length: 10\r\ncontent-encoding: gzip\r\n").blob_length(),
            Err(NotFillable::Framing("content-encoding"))
        );
        assert_eq!(
            with("Content-Length: 10\r\nContent-Range: bytes 0-9/20\r\n").blob_length(),
            Err(NotFillable::Framing("content-range"))
        );
        for status in ["100 Continue", "206 Partial Content", "403 Forbidden"] {
            let h = head(&format!("HTTP/1.1 {status}\r\nContent-Length: 1\r\n\r\n"));
            assert!(matches!(h.blob_length(), Err(NotFillable::Status(_))));
        }
    }

    #[test]
    fn malformed_or_oversized_heads_are_refused() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n").unwrap_err(),
            NotFillable::Malformed
        );
        assert_eq!(
            parse(b"SSH-2.0\r\n\r\n").unwrap_err(),
            NotFillable::Malformed
        );
        let long = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), NotFillable::Malformed);
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_FIELDS + 1)
        );
        assert_eq!(parse(many.as_bytes()).unwrap_err(), NotFillable::Malformed);
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nETag: \"e\"\r\nx-ms-request-id: r\r\nx-ms-request-id: s\r\n\r\n",
        );
        assert!(!h.keeps_alive());
        let r = h.response_header().unwrap();
        assert_eq!(r.status, 200);
        for gone in ["connection", "x-hop", "keep-alive"] {
            assert!(!r.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(r.headers["content-length"], "3");
        assert_eq!(r.headers["etag"], "\"e\"");
        assert_eq!(r.headers.get_all("x-ms-request-id").iter().count(), 2);
    }
}
