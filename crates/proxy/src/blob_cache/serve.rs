//! A cache hit written to the client: 200, or 206 for one satisfiable byte range, 416 for an
//! unsatisfiable one. Over plain HTTP/1 the kernel sends the body from the page cache
//! (crate::listen::sendfile: no copy through user space); otherwise it is read from the entry in
//! 4 MiB blocks (one copy: the file into the block the socket write takes, never zeroed first),
//! each read off the async threads.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

use super::Digest;
use crate::listen::sendfile::FileSender;

/// Bytes per read and per body write.
pub const BLOCK: usize = crate::listen::sendfile::BLOCK;

/// What a `Range` header asks of an entry of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The whole entry (no range, or one the edge does not take: several, other units).
    Whole,
    /// `first..=last`.
    Part(u64, u64),
    /// Nothing of the entry: 416.
    Unsatisfiable,
}

/// A single `bytes=` range (`a-b`, `a-`, `-n`) against `size` (RFC 9110 §14.1.2).
pub fn span(range: Option<&str>, size: u64) -> Span {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Span::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        // -n: the last n bytes.
        (true, None, Some(n)) => {
            if n == 0 || size == 0 {
                Span::Unsatisfiable
            } else {
                Span::Part(size.saturating_sub(n), size - 1)
            }
        }
        (false, Some(first), last) if b.is_empty() || last.is_some() => {
            if first >= size {
                return Span::Unsatisfiable;
            }
            match last {
                Some(l) if l < first => Span::Whole,
                Some(l) => Span::Part(first, l.min(size - 1)),
                None => Span::Part(first, size - 1),
            }
        }
        _ => Span::Whole,
    }
}

/// The response head for an entry of `size` bytes and the span asked.
pub fn head(digest: &Digest, size: u64, span: Span) -> Result<ResponseHeader> {
    let (status, len) = match span {
        Span::Whole => (200, size),
        Span::Part(a, b) => (206, b - a + 1),
        Span::Unsatisfiable => (416, 0),
    };
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("Content-Length", len.to_string())?;
    h.insert_header("Accept-Ranges", "bytes")?;
    match span {
        Span::Part(a, b) => h.insert_header("Content-Range", format!("bytes {a}-{b}/{size}"))?,
        Span::Unsatisfiable => h.insert_header("Content-Range", format!("bytes */{size}"))?,
        Span::Whole => {}
    }
    if span != Span::Unsatisfiable {
        h.insert_header("Content-Type", "application/octet-stream")?;
        h.insert_header("ETag", format!("\"{digest}\""))?;
    }
    Ok(h)
}

/// Writes `first..=last` of `file` as the response body (the head is written already).
pub async fn body(session: &mut Session, file: std::fs::File, first: u64, last: u64) -> Result<()> {
    if let Some(sender) = FileSender::of(session) {
        return sent_by_kernel(session, &sender, file, first, last).await;
    }
    let mut file = Some(file);
    let mut at = first;
    while at <= last {
        let n = (last - at + 1).min(BLOCK as u64);
        let mut f = file.take().or_err(InternalError, "blob cache file")?;
        // `read_to_end` of a `File` reads into the vector's spare capacity without zeroing it
        // first: the block is written once, by the read.
        let (f, block) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut block = Vec::with_capacity(n as usize);
            if at == first {
                f.seek(SeekFrom::Start(at))?;
            }
            (&mut f).take(n).read_to_end(&mut block)?;
            Ok((f, block))
        })
        .await
        .or_err(InternalError, "blob cache read task")?
        .or_err(ReadError, "blob cache read")?;
        if block.len() as u64 != n {
            return Error::e_explain(ReadError, "blob cache entry shorter than indexed");
        }
        file = Some(f);
        at += n;
        session
            .write_response_body(Some(Bytes::from(block)), at > last)
            .await?;
    }
    Ok(())
}

/// [`body`] on a plain HTTP/1 connection: each block a placeholder write the connection turns
/// into sendfile(2) of the same span of the entry.
async fn sent_by_kernel(
    session: &mut Session,
    sender: &FileSender,
    file: std::fs::File,
    first: u64,
    last: u64,
) -> Result<()> {
    let len = last - first + 1;
    // Reading ahead starts now, off this thread: sendfile finds the pages in memory, or waits
    // less for them (an entry is usually there already: hits are of recent blobs).
    // SAFETY: a valid descriptor and range; the call only advises the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            first as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
    let file = Arc::new(file);
    let mut at = first;
    while at <= last {
        let n = (last - at + 1).min(BLOCK as u64) as usize;
        let (_armed, placeholder) = sender.arm(&file, at, n);
        at += n as u64;
        session
            .write_response_body(Some(placeholder), at > last)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        let s = |r: &str| span(Some(r), 100);
        assert_eq!(span(None, 100), Span::Whole);
        assert_eq!(s("bytes=0-9"), Span::Part(0, 9));
        assert_eq!(s("bytes=90-"), Span::Part(90, 99));
        assert_eq!(s("bytes=90-500"), Span::Part(90, 99));
        assert_eq!(s("bytes=-10"), Span::Part(90, 99));
        assert_eq!(s("bytes=-500"), Span::Part(0, 99));
        assert_eq!(s("bytes=100-"), Span::Unsatisfiable);
        assert_eq!(s("bytes=-0"), Span::Unsatisfiable);
        // Not taken: served whole.
        assert_eq!(s("bytes=0-1,5-6"), Span::Whole);
        assert_eq!(s("items=0-1"), Span::Whole);
        assert_eq!(s("bytes=5-1"), Span::Whole);
        assert_eq!(s("bytes=a-1"), Span::Whole);
        assert_eq!(s("bytes=+1-2"), Span::Whole);
        assert_eq!(s("bytes=-"), Span::Whole);
        assert_eq!(span(Some("bytes=0-"), 0), Span::Unsatisfiable);
    }

    #[test]
    fn heads_say_what_the_body_holds() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let h = head(&d, 100, Span::Part(90, 99)).unwrap();
        assert_eq!(h.status, 206);
        assert_eq!(h.headers["content-length"], "10");
        assert_eq!(h.headers["content-range"], "bytes 90-99/100");
        let h = head(&d, 100, Span::Unsatisfiable).unwrap();
        assert_eq!(h.status, 416);
        assert_eq!(h.headers["content-range"], "bytes */100");
        assert_eq!(h.headers["content-length"], "0");
        let h = head(&d, 100, Span::Whole).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["content-length"], "100");
    }
}
