//! A file's bytes as a response body over plain TCP, sent by the kernel (sendfile(2)): from the
//! page cache to the socket, never through user space. The blob cache's hits use it
//! (crate::blob_cache::serve).
//!
//! pingora's HTTP/1 session still writes the body: it counts the bytes against
//! `Content-Length`, applies its write timeout and keeps the connection reusable. What it is
//! given to write is a slice of [`PLACEHOLDER`], a static block of zeros that nothing reads (it
//! lives in `.bss`, never touched: no memory). [`Conn`]'s `poll_write` recognises a slice of it by
//! its address and sends the same span of the armed file instead, at the armed base plus the
//! slice's offset in the placeholder. A placeholder write with no file armed fails, and so does
//! one on any other transport: its zeros never reach a client.
//!
//! A pipe can be armed instead of a file (splice(2) from the pipe to the socket): a fill between
//! plain TCP sockets tees the data endpoint's bytes to its client that way
//! (crate::blob_cache::relay), so the client's copy of them never passes through user space.
//!
//! Only an HTTP/1 session on a plain TCP [`Conn`] has a [`FileSender`]; TLS and HTTP/2 sessions
//! are written as before, from blocks read into memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::conn::Conn;

/// Most bytes of one placeholder write (one pingora body write).
pub(crate) const BLOCK: usize = 4 << 20;

/// What pingora writes in place of a file's bytes; never read.
static PLACEHOLDER: [u8; BLOCK] = [0; BLOCK];

/// What a connection sends in place of placeholder writes.
#[derive(Debug)]
pub(super) enum Armed {
    /// A file, and the offset in it of the placeholder's first byte.
    File { file: Arc<File>, base: u64 },
    /// The read end of a pipe: each placeholder write sends that many of its next bytes.
    Pipe(Arc<OwnedFd>),
}

/// Where the bytes of one placeholder write come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// A file's descriptor and the offset of the write's first byte in it.
    File(RawFd, u64),
    /// A pipe's read end.
    Pipe(RawFd),
}

/// A connection's armed file, shared with the [`FileSender`] of the response being written.
pub(super) type Slot = Arc<Mutex<Option<Armed>>>;

/// The span of a placeholder write: its offset in [`PLACEHOLDER`], if `buf` is a slice of it.
pub(super) fn placeholder_offset(buf: &[u8]) -> Option<usize> {
    let start = PLACEHOLDER.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (at >= start && at + buf.len() <= start + BLOCK).then(|| at - start)
}

/// What a placeholder write at `offset` stands for.
pub(super) fn armed_at(slot: Option<&Slot>, offset: usize) -> io::Result<Source> {
    let armed = slot.map(|s| s.lock().unwrap_or_else(PoisonError::into_inner));
    match armed.as_deref() {
        Some(Some(Armed::File { file, base })) => {
            Ok(Source::File(file.as_raw_fd(), base + offset as u64))
        }
        Some(Some(Armed::Pipe(pipe))) => Ok(Source::Pipe(pipe.as_raw_fd())),
        _ => Err(io::Error::other(
            "a file body written with no file armed: nothing sent",
        )),
    }
}

/// Sends up to `len` bytes of `source` to the socket, waiting for room in it.
pub(super) fn poll_send_file(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    source: Source,
    len: usize,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(socket.poll_write_ready(cx))?;
        let sent = socket.try_io(Interest::WRITABLE, || match source {
            Source::File(fd, offset) => send_file(socket.as_raw_fd(), fd, offset, len),
            // The socket is non-blocking, and so is the pipe's side of the call: an empty pipe
            // is `EAGAIN`, never a wait on this thread.
            Source::Pipe(fd) => splice(fd, socket.as_raw_fd(), len),
        });
        match sent {
            Ok(0) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended before the body did",
                )))
            }
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// sendfile(2) of up to `len` bytes of the file `fd` from `offset` to `socket`.
fn send_file(socket: RawFd, fd: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open (the caller's socket; `fd` is held by the armed
    // `Arc<File>` until the write ends) and `off` is a valid `off_t`.
    #[allow(unsafe_code)]
    let n = unsafe { libc::sendfile(socket, fd, &mut off, len) };
    byte_count(n)
}

/// splice(2) of up to `len` bytes from `from` to `to`, one of them a pipe, the other a socket;
/// the pipe's side never waits (`SPLICE_F_NONBLOCK`), nor does a non-blocking socket's.
pub(crate) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: the caller holds both descriptors open for the call; null offsets, as pipes and
    // sockets require.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    byte_count(n)
}

/// A system call's count of bytes moved, or its error (`errno`) when it returned -1.
pub(crate) fn byte_count(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Writes a file's spans as a session's body through placeholder writes.
///
/// The lean HTTP/1 session (`listen::lean`) hands pingora no stream to look into: it puts its
/// connection's sender among the request head's extensions instead, where [`FileSender::of`]
/// finds it.
#[derive(Clone)]
pub(crate) struct FileSender {
    slot: Slot,
}

impl FileSender {
    /// The sender of the session's connection when the kernel can send files on it: HTTP/1
    /// over plain TCP.
    pub(crate) fn of(session: &pingora_proxy::Session) -> Option<FileSender> {
        let downstream = session.as_downstream();
        if downstream.is_custom() {
            return downstream
                .req_header()
                .extensions
                .get::<FileSender>()
                .cloned();
        }
        let stream = downstream.stream()?;
        let conn = (**stream).as_any().downcast_ref::<Conn<TcpStream>>()?;
        Some(FileSender::on(conn))
    }

    /// The sender of a connection, whatever its transport (one that cannot send files fails
    /// the placeholder writes).
    pub(super) fn on<T: super::conn::Transport>(conn: &Conn<T>) -> FileSender {
        FileSender {
            slot: conn.file_slot().clone(),
        }
    }

    /// Arms `file` so that the next placeholder writes send it from `base`, until the
    /// returned guard is dropped; and the placeholder of `len` bytes (at most [`BLOCK`]) to
    /// write.
    pub(crate) fn arm(&self, file: &Arc<File>, base: u64, len: usize) -> (Disarm<'_>, Bytes) {
        self.arm_with(
            Armed::File {
                file: file.clone(),
                base,
            },
            len,
        )
    }

    /// Arms the read end of `pipe` so that the next placeholder writes send its next bytes,
    /// until the returned guard is dropped; and the placeholder of `len` bytes (at most
    /// [`BLOCK`]) to write. The pipe must hold `len` bytes: a write of an empty pipe waits for
    /// the socket's next readiness, and then for pingora's write timeout.
    pub(crate) fn arm_pipe(&self, pipe: &Arc<OwnedFd>, len: usize) -> (Disarm<'_>, Bytes) {
        self.arm_with(Armed::Pipe(pipe.clone()), len)
    }

    fn arm_with(&self, armed: Armed, len: usize) -> (Disarm<'_>, Bytes) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(armed);
        (
            Disarm(&self.slot),
            Bytes::from_static(&PLACEHOLDER[..len.min(BLOCK)]),
        )
    }
}

/// Disarms the connection's file when dropped (the write ended, failed or was cancelled).
pub(crate) struct Disarm<'a>(&'a Slot);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
