//! A cache hit written to the client: 200, or 206 for one satisfiable byte range, 416 for an
//! unsatisfiable one. Over plain HTTP/1 the kernel sends the body from the page cache
//! (crate::listen::sendfile: no copy through user space). Otherwise (TLS, HTTP/2) it is copied
//! from the entry in [`COPY_BLOCK`]s: each read on the worker when the page cache holds the
//! block (`preadv2` with `RWF_NOWAIT`, which never waits for the disk), and off the async
//! threads for what it does not. A block is small enough to still be in the core's cache when
//! the TLS layer encrypts it, and is never zeroed first (the read writes it once).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

use super::Digest;
use crate::listen::sendfile::FileSender;

/// Bytes per body write when the kernel sends the entry.
pub const BLOCK: usize = crate::listen::sendfile::BLOCK;
/// Bytes per read and per body write when the body is copied (TLS, HTTP/2): what one slow
/// client holds in memory, and a block small enough to stay in the core's cache between the
/// read and the encryption. The load harness's TLS hit (docs/performance.md) was not measured
/// cheaper with 4 MiB blocks.
pub const COPY_BLOCK: usize = 256 << 10;

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
    let file = Arc::new(file);
    let mut at = first;
    while at <= last {
        let n = (last - at + 1).min(COPY_BLOCK as u64) as usize;
        let block = read_block(&file, at, n).await?;
        at += n as u64;
        session
            .write_response_body(Some(Bytes::from(block)), at > last)
            .await?;
    }
    Ok(())
}

/// `n` bytes of `file` from `at`: what the page cache holds read here, the rest (a disk read)
/// on the blocking pool.
async fn read_block(file: &Arc<std::fs::File>, at: u64, n: usize) -> Result<Vec<u8>> {
    let mut block = Vec::with_capacity(n);
    // Any failure here (EAGAIN: not in memory; EOPNOTSUPP: a file system without it) leaves
    // the rest to the blocking read, which reports real errors.
    let _ = read_into(file, &mut block, n, at, libc::RWF_NOWAIT);
    if block.len() < n {
        let f = file.clone();
        block = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let from = at + block.len() as u64;
            read_into(&f, &mut block, n, from, 0)?;
            Ok(block)
        })
        .await
        .or_err(InternalError, "blob cache read task")?
        .or_err(ReadError, "blob cache read")?;
    }
    if block.len() != n {
        return Error::e_explain(ReadError, "blob cache entry shorter than indexed");
    }
    Ok(block)
}

/// Bytes one read-ahead request asks for. `POSIX_FADV_WILLNEED` allocates the pages and
/// submits the reads before it returns: in steps, a send that ends early stops asking. Large
/// steps keep the disk's queue deep (with 2 MiB steps a cold 1 GiB hit took 1.0–1.1 s, with
/// 64 MiB 0.6–0.7 s: docs/performance.md).
const READ_AHEAD_STEP: u64 = 64 << 20;

/// Asks the kernel to read `start..end` of `file` into the page cache, in steps of
/// [`READ_AHEAD_STEP`]; the reads go on in the background. Stops early once the file is no
/// longer being sent (this is its last holder).
fn read_ahead(file: &Arc<std::fs::File>, start: u64, end: u64) {
    let mut at = start;
    while at < end && Arc::strong_count(file) > 1 {
        let n = READ_AHEAD_STEP.min(end - at);
        will_need(file, at, n);
        at += n;
    }
}

/// `POSIX_FADV_WILLNEED` for `n` bytes of `file` from `at`: the pages are allocated and their
/// reads submitted before it returns (work for the blocking pool, not a worker).
fn will_need(file: &std::fs::File, at: u64, n: u64) {
    // SAFETY: a valid descriptor and range; the call only advises the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            at as libc::off_t,
            n as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Whether the page cache holds `n` bytes of `file` from `at` (a read that must not wait for
/// the disk gets them all).
fn resident(file: &std::fs::File, at: u64, n: usize) -> bool {
    let mut part = Vec::with_capacity(n);
    read_into(file, &mut part, n, at, libc::RWF_NOWAIT).is_ok() && part.len() == n
}

/// Until the last page of `n` bytes of `file` from `at` is in memory, unless it is there
/// already: on the blocking pool, the block's reads are asked for (in order, behind those the
/// read-ahead asked for) and its last page waited for. sendfile then finds the block in memory,
/// or waits only for what is still in flight.
async fn wait_resident(file: &Arc<std::fs::File>, at: u64, n: usize) -> Result<()> {
    let end = at + n as u64 - 1;
    if resident(file, end, 1) {
        return Ok(());
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        will_need(&f, at, n as u64);
        let mut byte = Vec::with_capacity(1);
        read_into(&f, &mut byte, 1, end, 0)
    })
    .await
    .or_err(InternalError, "blob cache read task")?
    .or_err(ReadError, "blob cache read")
}

/// Appends bytes of `file` from `at` to `buf` until it holds `want` bytes, the file ends, or
/// a read fails (`preadv2` with `flags`): into the vector's spare capacity, never zeroed first.
fn read_into(
    file: &std::fs::File,
    buf: &mut Vec<u8>,
    want: usize,
    mut at: u64,
    flags: libc::c_int,
) -> io::Result<()> {
    buf.reserve_exact(want.saturating_sub(buf.len()));
    while buf.len() < want {
        let left = want - buf.len();
        let room = &mut buf.spare_capacity_mut()[..left];
        let iov = libc::iovec {
            iov_base: room.as_mut_ptr().cast(),
            iov_len: room.len(),
        };
        // SAFETY: `iov` spans spare capacity of `buf`, writable for its length and not
        // aliased; the kernel writes at most that many bytes, and only the count it returns
        // is added to the vector's length below.
        #[allow(unsafe_code)]
        let got = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at as libc::off_t, flags) };
        match got {
            0 => return Ok(()),
            n if n > 0 => {
                // SAFETY: the kernel initialised these `n` bytes (n <= the span's length).
                #[allow(unsafe_code)]
                unsafe {
                    buf.set_len(buf.len() + n as usize)
                };
                at += n as u64;
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
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
    let file = Arc::new(file);
    // sendfile waits for the disk on this thread when the pages are not in memory, and fills
    // are written around the page cache: the first hits of an entry find it on disk. An entry
    // whose last byte is not in memory is read ahead on the blocking pool (asking for it
    // allocates the pages and submits the reads: not work for this thread), and each block is
    // sent once its last page is in.
    let cold = !resident(&file, last, 1);
    if cold {
        let ahead = file.clone();
        drop(tokio::task::spawn_blocking(move || {
            read_ahead(&ahead, first, last + 1)
        }));
    }
    let mut at = first;
    while at <= last {
        let n = (last - at + 1).min(BLOCK as u64) as usize;
        if cold {
            wait_resident(&file, at, n).await?;
        }
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

    /// A file of `len` bytes that says where each byte is.
    fn patterned(scratch: &crate::testing::Scratch, len: usize) -> (std::fs::File, Vec<u8>) {
        let bytes = crate::testing::patterned(len);
        let path = scratch.join("entry");
        std::fs::write(&path, &bytes).unwrap();
        (std::fs::File::open(&path).unwrap(), bytes)
    }

    /// Drops the file's pages from the page cache (clean pages after the sync): reads that
    /// must not wait for the disk find nothing.
    fn evict(file: &std::fs::File) {
        file.sync_all().unwrap();
        // SAFETY: a valid descriptor; the call only advises the kernel.
        #[allow(unsafe_code)]
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }

    #[tokio::test]
    async fn copied_blocks_hold_the_entrys_bytes_whether_cached_or_not() {
        let scratch = crate::testing::Scratch::new("serve-blocks");
        let len = 3 * COPY_BLOCK + 123;
        let (file, bytes) = patterned(&scratch, len);
        let file = Arc::new(file);
        for cached in [true, false] {
            for (at, n) in [(0, COPY_BLOCK), (1, COPY_BLOCK), (len - 123, 123), (7, 1)] {
                if !cached {
                    evict(&file);
                }
                let block = read_block(&file, at as u64, n).await.unwrap();
                assert!(
                    block == bytes[at..at + n],
                    "at {at}, {n} bytes, cached {cached}"
                );
            }
        }
        // Read here, without waiting: what the page cache has (a file system that cannot tell
        // reads nothing, and the blocking read does it all).
        evict(&file);
        let mut part = Vec::new();
        let _ = read_into(&file, &mut part, COPY_BLOCK, 0, libc::RWF_NOWAIT);
        assert!(part == bytes[..part.len()]);
        let err = read_block(&file, (len - 10) as u64, 20).await.unwrap_err();
        assert!(err.to_string().contains("shorter than indexed"), "{err}");
    }

    #[tokio::test]
    async fn a_block_is_waited_for_until_its_last_page_is_in_memory() {
        let scratch = crate::testing::Scratch::new("serve-resident");
        let len = 9 << 20;
        let (file, _) = patterned(&scratch, len);
        let file = Arc::new(file);
        evict(&file);
        if resident(&file, (len - 1) as u64, 1) {
            return; // a file system that keeps the pages whatever it is told
        }
        assert!(!resident(&file, (4 << 20) - 1, 1));
        wait_resident(&file, 0, 4 << 20).await.unwrap();
        assert!(resident(&file, (4 << 20) - 1, 1), "the block's last page");
        // Its other pages were asked for: in memory now, or soon.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !resident(&file, 0, 4 << 20) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(resident(&file, 0, 4 << 20), "the block's pages");
    }

    #[test]
    fn reading_ahead_brings_the_whole_range_into_the_page_cache() {
        let scratch = crate::testing::Scratch::new("serve-ahead");
        let len = 24 << 20;
        let (file, _) = patterned(&scratch, len);
        let file = Arc::new(file);
        evict(&file);
        let tail = (len - (1 << 20)) as u64;
        if resident(&file, tail, 1 << 20) {
            // A file system that keeps the pages whatever it is told: nothing to show here.
            return;
        }
        let sending = file.clone();
        read_ahead(&file, 0, len as u64);
        // The reads were only started: they complete in the background.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !resident(&file, tail, 1 << 20) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            resident(&file, tail, 1 << 20),
            "the range's last MiB never reached the page cache"
        );
        // Once the file is no longer being sent, nothing more is asked for.
        drop(sending);
        evict(&file);
        read_ahead(&file, 0, len as u64);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!resident(&file, tail, 1 << 20), "read ahead for nobody");
    }
}
