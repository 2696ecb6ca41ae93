//! [`Conn`]'s write coalescing, head-end detection and Server-line filter.

use super::*;

/// A socket that records each write call (a vectored call is one write) and takes at most
/// `limit` bytes per call.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    writes: Vec<Vec<u8>>,
    limit: usize,
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut taken = Vec::new();
        for b in bufs {
            let room = self.limit - taken.len();
            taken.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = taken.len();
        self.writes.push(taken);
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for Recorder {
    fn poll_wait(&self, _: &mut Context<'_>, _: bool) -> Option<Poll<io::Result<bool>>> {
        Some(Poll::Ready(Ok(true)))
    }
    fn fd(&self) -> i32 {
        -1
    }
}

pub(crate) fn conn(limit: usize) -> Conn<Recorder> {
    let io = Recorder {
        writes: Vec::new(),
        limit,
    };
    Conn::new(io, ([127, 0, 0, 1], 1).into(), None, &settings())
}

pub(crate) fn settings() -> Settings {
    Settings {
        tls: None,
        idle: Duration::from_secs(5),
        header_read: Duration::from_secs(5),
        open_connections: prometheus::IntGauge::new("open", "open").unwrap_or_else(|e| {
            unreachable!("{e}");
        }),
        tls_failed: prometheus::IntCounter::new("failed", "failed")
            .unwrap_or_else(|e| unreachable!("{e}")),
        tls_timed_out: prometheus::IntCounter::new("timed_out", "timed out")
            .unwrap_or_else(|e| unreachable!("{e}")),
        upstreams_resolved: Arc::new(|| true),
        h2: Arc::default(),
        h2_body_timeouts: prometheus::IntCounter::new("h2", "h2")
            .unwrap_or_else(|e| unreachable!("{e}")),
        lean: false,
        max_requests: 1000,
        accepting: Arc::new(|| {}),
    }
}

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 1600\r\nDocker-Content-Digest: sha256:0\r\n\r\n";

#[tokio::test]
async fn a_head_and_a_small_body_leave_in_one_write_at_the_flush() -> io::Result<()> {
    let mut c = conn(usize::MAX);
    c.write_all(HEAD).await?;
    c.write_all(&[7u8; 1000]).await?;
    assert!(
        c.io.writes.is_empty(),
        "nothing is written before the flush"
    );
    c.flush().await?;
    assert_eq!(c.io.writes.len(), 1);
    assert_eq!(c.io.writes[0].len(), HEAD.len() + 1000);
    c.release_buffers();
    assert_eq!(c.wbuf.capacity(), 0, "an idle connection holds no buffer");
    Ok(())
}

#[tokio::test]
async fn a_body_too_large_to_hold_leaves_with_the_held_head_in_one_call() -> io::Result<()> {
    let mut c = conn(usize::MAX);
    c.write_all(HEAD).await?;
    let body = vec![9u8; 64 * 1024];
    c.write_all(&body).await?;
    assert_eq!(c.io.writes.len(), 1);
    assert_eq!(&c.io.writes[0][..HEAD.len()], HEAD);
    assert_eq!(&c.io.writes[0][HEAD.len()..], &body[..]);
    // Nothing is held after a direct write.
    c.flush().await?;
    assert_eq!(c.io.writes.len(), 1);
    Ok(())
}

/// Whatever the socket takes per call, every byte leaves once and in order, and at most
/// WRITE_HOLD bytes wait for a later write.
#[tokio::test]
async fn short_writes_keep_every_byte_in_order() -> io::Result<()> {
    for limit in [1, 7, 100, 1460, 1461, 5000] {
        let mut c = conn(limit);
        let mut expected = Vec::new();
        let mut seed = 0x2545_f491_u32;
        for i in 0..200u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 4000) as usize + 1;
            let chunk: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            c.write_all(&chunk).await?;
            expected.extend_from_slice(&chunk);
            let written: usize = c.io.writes.iter().map(Vec::len).sum();
            assert!(expected.len() - written <= WRITE_HOLD, "limit {limit}");
        }
        c.flush().await?;
        assert_eq!(c.io.writes.concat(), expected, "limit {limit}");
    }
    Ok(())
}

/// Split anywhere, in up to three pieces: the end is found in the piece that completes it,
/// never before.
#[test]
fn the_blank_line_is_found_across_any_split() {
    let head = b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n";
    let end = head.len();
    for i in 0..=end {
        for j in i..=end {
            let mut tail = [0u8; 3];
            let pieces = [&head[..i], &head[i..j], &head[j..]];
            let mut seen = 0;
            let mut found_at = None;
            for p in pieces {
                seen += p.len();
                if head_ends(&mut tail, p) {
                    found_at = Some(seen);
                    break;
                }
            }
            assert_eq!(found_at, Some(end), "split at {i}, {j}");
        }
    }
    let mut tail = [0u8; 3];
    assert!(!head_ends(&mut tail, b"GET / HTTP/1.1\r\nA: b\r\n"));
    assert!(!head_ends(&mut tail, b"\r"));
    assert!(head_ends(&mut tail, b"\n"));
}

#[test]
fn pingoras_server_line_is_found_only_in_its_own_heads() {
    let bare = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n";
    let at = pingora_server_line(bare).unwrap();
    let mut out = bare[..at].to_vec();
    out.extend_from_slice(&bare[at + PINGORA_SERVER.len()..]);
    assert_eq!(
        out,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        pingora_server_line(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n"),
        None
    );
    // A body that happens to hold the line is not a head.
    assert_eq!(
        pingora_server_line(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nx\r\nServer: Pingora\r\n"),
        None
    );
    assert_eq!(pingora_server_line(b"body\r\nServer: Pingora\r\n"), None);
}

/// Bare-LF heads end where httparse says they end, in one piece or split anywhere.
#[test]
fn bare_lf_heads_end_where_pingora_parses_them_to_end() {
    for head in [
        &b"PATCH /v2/a/blobs/uploads/u HTTP/1.1\nHost: a\nContent-Length: 9\n\n"[..],
        b"GET /v2/ HTTP/1.1\r\nHost: a\n\r\n",
        b"GET /v2/ HTTP/1.1\nHost: a\r\n\n",
    ] {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let parsed = httparse::Request::new(&mut headers).parse(head).unwrap();
        assert_eq!(parsed, httparse::Status::Complete(head.len()));
        for i in 0..=head.len() {
            let mut tail = [0u8; 3];
            let first = head_ends(&mut tail, &head[..i]);
            let found = first || head_ends(&mut tail, &head[i..]);
            assert!(found, "{head:?} split at {i}");
            assert!(!first || i == head.len(), "{head:?} ended early at {i}");
        }
    }
    let mut tail = [0u8; 3];
    assert!(!head_ends(&mut tail, b"GET / HTTP/1.1\nA: b\n"));
    assert!(!head_ends(&mut tail, b"\r"));
    assert!(head_ends(&mut tail, b"\n"));
}

/// A file body over TCP: the held head first, then the armed file's span in place of each
/// placeholder write (any base, any block), then ordinary writes again; every byte in order.
#[tokio::test]
async fn placeholder_writes_send_the_armed_files_span() -> io::Result<()> {
    use crate::listen::sendfile::{FileSender, BLOCK};

    let scratch = crate::testing::Scratch::new("sendfile");
    let data: Vec<u8> = (0..(9 << 20) + 123)
        .map(|i: u32| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(scratch.join("entry"), &data)?;
    let file = Arc::new(std::fs::File::open(scratch.join("entry"))?);

    let (mut c, reader) = tcp_conn().await?;
    let sender = FileSender::on(&c);

    // Nothing armed: the write fails and sends nothing, not even the held head.
    c.write_all(HEAD).await?;
    let (armed, placeholder) = sender.arm(&file, 0, BLOCK);
    drop(armed);
    assert!(c.write_all(&placeholder).await.is_err());
    assert_eq!(c.wbuf.len() - c.wpos, HEAD.len(), "the head is still held");

    let first = 1000u64;
    let mut at = first;
    while at < data.len() as u64 {
        let n = (data.len() as u64 - at).min(BLOCK as u64) as usize;
        let (_armed, placeholder) = sender.arm(&file, at, n);
        c.write_all(&placeholder).await?;
        at += n as u64;
    }
    c.write_all(b"after").await?;
    AsyncWriteExt::shutdown(&mut c).await?;
    drop(c);
    let got = reader.await.map_err(io::Error::other)??;
    let want = [HEAD, &data[first as usize..], b"after"].concat();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes differ");
    Ok(())
}

/// A transport the kernel cannot send files on (TLS): a placeholder write fails even when a
/// file is armed, and nothing is written.
#[tokio::test]
async fn placeholder_writes_fail_where_files_cannot_be_sent() -> io::Result<()> {
    use crate::listen::sendfile::FileSender;

    let scratch = crate::testing::Scratch::new("sendfile-tls");
    std::fs::write(scratch.join("entry"), [1u8; 4096])?;
    let file = Arc::new(std::fs::File::open(scratch.join("entry"))?);
    let mut c = conn(usize::MAX);
    let sender = FileSender::on(&c);
    let (_armed, placeholder) = sender.arm(&file, 0, 4096);
    let err = c.write_all(&placeholder).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::Unsupported));
    assert!(c.io.writes.is_empty());
    Ok(())
}

/// A pipe armed for placeholder writes: each write sends that many of the pipe's next bytes,
/// after the held head; the client reads every byte in order.
#[tokio::test]
async fn placeholder_writes_send_the_armed_pipes_bytes() -> io::Result<()> {
    use crate::listen::sendfile::FileSender;
    use std::os::fd::AsRawFd;

    let data = crate::testing::patterned((3 << 20) + 77);
    let (read_end, write_end) = crate::blob_cache::relay::pipe()?;
    let read_end = Arc::new(read_end);
    let (mut c, reader) = tcp_conn().await?;
    let sender = FileSender::on(&c);
    c.write_all(HEAD).await?;
    // Pieces of the pipe's default size and less, each written into the pipe, then sent.
    for piece in data.chunks(50_000) {
        // SAFETY: `piece` is valid for reads; the descriptor is open.
        #[allow(unsafe_code)]
        let n = unsafe { libc::write(write_end.as_raw_fd(), piece.as_ptr().cast(), piece.len()) };
        assert_eq!(n as usize, piece.len());
        let (_armed, placeholder) = sender.arm_pipe(&read_end, piece.len());
        c.write_all(&placeholder).await?;
    }
    c.write_all(b"after").await?;
    AsyncWriteExt::shutdown(&mut c).await?;
    drop(c);
    let got = reader.await.map_err(io::Error::other)??;
    let want = [HEAD, &data[..], b"after"].concat();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes differ");
    Ok(())
}

/// A connection over a real TCP socket, and a task reading everything its client receives.
async fn tcp_conn() -> io::Result<(
    Conn<TcpStream>,
    tokio::task::JoinHandle<io::Result<Vec<u8>>>,
)> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, peer) = listener.accept().await?;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.map(|_| got)
    });
    Ok((Conn::new(server, peer, None, &settings()), reader))
}
