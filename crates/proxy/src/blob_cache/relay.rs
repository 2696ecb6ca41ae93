//! One copy of a fill's bytes instead of two, between plain TCP sockets.
//!
//! A fill needs the data endpoint's bytes twice: once in the edge's memory (hashed, and written
//! to the disk from there) and once on the client's socket. Read into memory and written back
//! out, each byte is copied by the kernel twice: out of the upstream socket and into the
//! client's. With both sockets plain TCP, the edge moves the bytes with pipes instead:
//!
//! 1. splice(2) from the upstream socket into pipe A: the pipe takes references to the
//!    socket buffer's pages, no copy;
//! 2. tee(2) from A into pipe B: the same pages referenced again, no copy;
//! 3. splice(2) from B into the client's socket (crate::listen::sendfile, a pipe armed for
//!    pingora's placeholder writes): no copy;
//! 4. read(2) from A into the fill's chunk: the one copy, which the hash and the disk need.
//!
//! No page of the edge's own memory is ever handed to the kernel by reference, so nothing the
//! edge writes later can change bytes still queued for the client. The chunk that completes
//! the body is not relayed: it is read the ordinary way and held until the whole body hashed
//! to the digest (crate::service, `fill.rs`), so the client never gets a complete-looking
//! body that is not the blob.
//!
//! The upstream socket stays pingora's (its connection pool takes it back after the body): the
//! relay polls a duplicate of its descriptor, registered with the runtime for readability on
//! its own. The bytes pingora's stream could hold in its own read buffer are none: the head is
//! read with room for more than that buffer every time, so tokio's `BufReader` reads past it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::listen::sendfile::{byte_count, splice};

/// Bytes a relay's pipes are asked to hold (`F_SETPIPE_SZ`; an unprivileged process may ask
/// up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default). A pipe keeps its default (64 KiB)
/// when the kernel refuses: more system calls per byte, the same bytes.
pub const PIPE_BYTES: usize = 1 << 20;

/// A fill's pipes and its view of the upstream socket.
pub struct Relay {
    upstream: AsyncFd<OwnedFd>,
    /// Pipe A: from the upstream socket; read into the fill's chunks.
    a_read: OwnedFd,
    a_write: OwnedFd,
    /// Pipe B: A's bytes again, spliced to the client's socket.
    b_read: Arc<OwnedFd>,
    b_write: OwnedFd,
    /// The most bytes one [`Relay::fill`] takes: what the pipes hold.
    capacity: usize,
}

impl Relay {
    /// A relay from `upstream` when it is a plain TCP connection (not TLS); `Ok(None)` when it
    /// is not. An error when the kernel gives no pipes or descriptors.
    pub fn of(upstream: &pingora::protocols::Stream) -> io::Result<Option<Relay>> {
        let Some(tcp) = upstream
            .as_any()
            .downcast_ref::<pingora::protocols::l4::stream::Stream>()
        else {
            return Ok(None);
        };
        let dup = duplicate(tcp.as_raw_fd())?;
        // SAFETY: `dup` is an open descriptor the `AsyncFd` owns (an `OwnedFd`): it stays open,
        // the same file, until the `AsyncFd` is dropped.
        #[allow(unsafe_code)]
        let upstream = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }?;
        let (a_read, a_write) = pipe()?;
        let (b_read, b_write) = pipe()?;
        let capacity = resize(&a_write).min(resize(&b_write));
        Ok(Some(Relay {
            upstream,
            a_read,
            a_write,
            b_read: Arc::new(b_read),
            b_write,
            capacity,
        }))
    }

    /// Moves up to `max` of the upstream's next bytes into pipe A (empty before the call),
    /// waiting for some to arrive: how many; 0 when the upstream closed.
    pub async fn fill(&mut self, max: usize) -> io::Result<usize> {
        let len = max.min(self.capacity);
        let (from, to) = (
            self.upstream.get_ref().as_raw_fd(),
            self.a_write.as_raw_fd(),
        );
        loop {
            let mut ready = self.upstream.readable().await?;
            match ready.try_io(|_| splice(from, to, len)) {
                Ok(n) => return n,
                Err(_would_block) => continue,
            }
        }
    }

    /// Copies (by reference) up to `len` of pipe A's bytes into pipe B, which must be empty:
    /// how many. A's bytes stay in A.
    pub fn tee(&self, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are open pipe ends owned by `self`.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::tee(
                self.a_read.as_raw_fd(),
                self.b_write.as_raw_fd(),
                len,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        match byte_count(n)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "nothing in the relay's pipe to tee",
            )),
            n => Ok(n),
        }
    }

    /// The read end of pipe B, for the client's connection to send from.
    pub fn to_client(&self) -> &Arc<OwnedFd> {
        &self.b_read
    }

    /// Reads exactly `dst.len()` bytes of pipe A, which holds at least that many.
    pub fn read(&self, dst: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < dst.len() {
            let rest = &mut dst[at..];
            // SAFETY: `rest` is valid for writes of `rest.len()` bytes; the descriptor is open.
            #[allow(unsafe_code)]
            let n = unsafe {
                libc::read(
                    self.a_read.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                )
            };
            match n {
                n if n > 0 => at += n as usize,
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the relay's pipe ended early",
                    ))
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

    /// Bytes one [`Relay::fill`] takes at most.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A new descriptor (close-on-exec) for the open file `fd`.
fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor the caller holds open; the result is a new descriptor this
    // function alone owns.
    #[allow(unsafe_code)]
    unsafe {
        let d = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
        if d < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(d))
    }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors; on success both are new and owned here.
    #[allow(unsafe_code)]
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Asks for a pipe of [`PIPE_BYTES`]: the size it has.
fn resize(pipe: &impl AsFd) -> usize {
    let fd = pipe.as_fd().as_raw_fd();
    // SAFETY: fcntl on an open pipe descriptor; integer argument and result.
    #[allow(unsafe_code)]
    let size = unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int);
        libc::fcntl(fd, libc::F_GETPIPE_SZ)
    };
    usize::try_from(size).unwrap_or(0).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A relay over a real upstream socket: every byte in pipe A and in pipe B, in order, the
    /// same as sent; the upstream's close is 0.
    #[tokio::test]
    async fn both_pipes_get_every_upstream_byte_in_order() -> io::Result<()> {
        let data = crate::testing::patterned((5 << 20) + 4321);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (sent, accepted) = tokio::join!(
            tokio::net::TcpStream::connect(listener.local_addr()?),
            listener.accept()
        );
        let mut origin = sent?;
        let upstream: pingora::protocols::Stream =
            Box::new(pingora::protocols::l4::stream::Stream::from(accepted?.0));
        let mut relay = Relay::of(&upstream)?.ok_or_else(|| io::Error::other("not plain"))?;
        assert!(relay.capacity() >= 4096);

        let source = data.clone();
        let writer = tokio::spawn(async move {
            origin.write_all(&source).await?;
            origin.shutdown().await
        });
        let (mut via_a, mut via_b) = (Vec::new(), Vec::new());
        loop {
            let n = relay.fill(usize::MAX).await?;
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                let t = relay.tee(left)?;
                let mut b = vec![0; t];
                read_pipe(relay.to_client().as_raw_fd(), &mut b)?;
                via_b.extend_from_slice(&b);
                let mut a = vec![0; t];
                relay.read(&mut a)?;
                via_a.extend_from_slice(&a);
                left -= t;
            }
        }
        writer.await.map_err(io::Error::other)??;
        assert_eq!(via_a.len(), data.len());
        assert!(via_a == data, "pipe A's bytes differ");
        assert!(via_b == data, "pipe B's bytes differ");
        Ok(())
    }

    fn read_pipe(fd: RawFd, dst: &mut [u8]) -> io::Result<()> {
        // SAFETY: `dst` is valid for writes; the descriptor is open.
        #[allow(unsafe_code)]
        let n = unsafe { libc::read(fd, dst.as_mut_ptr().cast(), dst.len()) };
        if n as usize != dst.len() {
            return Err(io::Error::other(format!("read {n} of {}", dst.len())));
        }
        Ok(())
    }
}
