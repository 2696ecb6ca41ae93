//! Reading a database file safely: only a regular file (a symlink to one is followed), never
//! more than [`MAX_DATABASE_BYTES`], and, for [`ReloadingDb`](crate::ReloadingDb), on a thread
//! of its own that the caller waits for at most [`READ_TIMEOUT`].
//!
//! What this guards against is a path that does not lead to a database: a FIFO renamed over it
//! (opening one for reading waits for a writer, forever), a symlink to `/dev/zero` or another
//! device (a read that never ends, until allocation fails), a file that grows while it is read,
//! or a file system that stops answering (a hung network mount).

use std::fs::{File, FileType, Metadata};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::GeoError;

/// The largest database file read: 1 GiB. Country databases take 5–10 MB and city databases
/// well under 200 MB, so a bigger file is not a database of the kind the edge reads; it is
/// refused rather than held in memory (the whole file is, once per copy).
pub const MAX_DATABASE_BYTES: u64 = 1 << 30;

/// How long [`ReloadingDb`](crate::ReloadingDb) waits for a database file to be read before it
/// refuses the file and keeps the database it has. A local disk reads the largest file allowed
/// in a few seconds; a read that takes longer is stalled (a hung network file system). The
/// stalled read goes on in the background and no other read starts until it ends.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of one read; tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_bytes: u64,
    pub(crate) timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: MAX_DATABASE_BYTES,
            timeout: READ_TIMEOUT,
        }
    }
}

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The file's metadata (the file as it is now, not a moment of a write) refuses it: not a
    /// regular file, or too large. Worth remembering until the file changes.
    File(GeoError, Box<Metadata>),
    /// Anything else: an I/O error, or a file that grew past the limit while it was read.
    Other(GeoError),
}

impl Refusal {
    pub(crate) fn into_error(self) -> GeoError {
        match self {
            Refusal::File(e, _) | Refusal::Other(e) => e,
        }
    }
}

/// What [`read`] found: the bytes and the open file's metadata before and after reading them.
pub(crate) struct Contents {
    pub(crate) bytes: Vec<u8>,
    pub(crate) before: Metadata,
    pub(crate) after: Metadata,
}

/// Reads the file at `path` (symlinks followed) if it is a regular file of at most `max_bytes`.
/// `name` is what errors call it (the configured path).
///
/// The type is checked on the path's metadata before opening, since opening a FIFO for reading
/// blocks; the file is opened with `O_NONBLOCK` all the same (a no-op for a regular file) and
/// its type checked again on the open descriptor, in case the path was replaced in between.
/// At most `max_bytes + 1` bytes are read, so a file that grows while it is read is refused
/// rather than followed.
pub(crate) fn read(name: &Path, path: &Path, max_bytes: u64) -> Result<Contents, Refusal> {
    let io = |source| {
        Refusal::Other(GeoError::Io {
            path: name.to_owned(),
            source,
        })
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    acceptable(name, &meta, max_bytes).map_err(|e| Refusal::File(e, Box::new(meta)))?;
    let file = open_nonblocking(path).map_err(io)?;
    let before = file.metadata().map_err(io)?;
    if let Err(e) = acceptable(name, &before, max_bytes) {
        return Err(Refusal::File(e, Box::new(before)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
    (&file)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > max_bytes) {
        return Err(Refusal::Other(too_large(name, max_bytes)));
    }
    let after = file.metadata().map_err(io)?;
    Ok(Contents {
        bytes,
        before,
        after,
    })
}

/// A regular file within the size limit.
fn acceptable(name: &Path, meta: &Metadata, max_bytes: u64) -> Result<(), GeoError> {
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(GeoError::NotAFile {
            path: name.to_owned(),
            kind: kind(file_type),
        });
    }
    if meta.len() > max_bytes {
        return Err(too_large(name, max_bytes));
    }
    Ok(())
}

fn too_large(name: &Path, max_bytes: u64) -> GeoError {
    GeoError::TooLarge {
        path: name.to_owned(),
        limit: max_bytes,
    }
}

#[cfg(unix)]
fn kind(file_type: FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "something other than a file"
    }
}

#[cfg(not(unix))]
fn kind(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else {
        "something other than a file"
    }
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Runs blocking reads on a thread of their own, one at a time, and waits for each at most a
/// timeout. A read that outlives its timeout goes on in the background (a thread blocked in
/// the kernel cannot be stopped); until it ends, no other read starts, so a stalled file system
/// costs one thread, not one per check.
#[derive(Debug, Default)]
pub(crate) struct Worker {
    busy: Arc<AtomicBool>,
}

/// Why [`Worker::run`] has no answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stalled {
    /// This read took longer than the timeout.
    TimedOut,
    /// An earlier read that timed out is still running.
    Busy,
    /// The thread could not be started, or the read panicked.
    Failed,
}

/// The read's way back: clears the busy flag when the read ends, however it ends (a panic
/// included), and before the answer is sent, so a caller that gets the answer finds the worker
/// free.
struct Reply<T> {
    busy: Arc<AtomicBool>,
    tx: Option<mpsc::SyncSender<T>>,
}

impl<T> Reply<T> {
    fn send(mut self, answer: T) {
        if let Some(tx) = self.tx.take() {
            self.busy.store(false, Ordering::Release);
            // The caller may have stopped waiting: then nobody wants the answer.
            let _ = tx.send(answer);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        // Not sent: the job panicked. This runs before the fields are dropped, so the flag is
        // clear when the caller sees the channel close. (After a send the flag is left alone:
        // the next read may already have set it.)
        if self.tx.is_some() {
            self.busy.store(false, Ordering::Release);
        }
    }
}

impl Worker {
    /// Runs `job` on a new thread and waits at most `timeout` for its answer.
    pub(crate) fn run<T, F>(&self, timeout: Duration, job: F) -> Result<T, Stalled>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Stalled::Busy);
        }
        // Room for the answer, so the thread never waits for a caller that stopped waiting.
        let (tx, rx) = mpsc::sync_channel(1);
        let reply = Reply {
            busy: self.busy.clone(),
            tx: Some(tx),
        };
        let spawned = std::thread::Builder::new()
            .name("geoip-read".to_owned())
            .spawn(move || {
                let reply = reply;
                reply.send(job());
            });
        // A failed spawn dropped the closure, and with it `reply`: the flag is clear again.
        if spawned.is_err() {
            return Err(Stalled::Failed);
        }
        match rx.recv_timeout(timeout) {
            Ok(answer) => Ok(answer),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Stalled::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Stalled::Failed),
        }
    }
}

impl Stalled {
    /// The error a refused reload reports.
    pub(crate) fn into_error(self, name: &Path, timeout: Duration) -> GeoError {
        let (kind, message) = match self {
            Stalled::TimedOut => (
                io::ErrorKind::TimedOut,
                format!(
                    "reading the file took longer than {}s (a stalled file system?); it is read again once that read ends",
                    timeout.as_secs_f64()
                ),
            ),
            Stalled::Busy => (
                io::ErrorKind::WouldBlock,
                "an earlier read of the file, which timed out, has not ended yet".to_owned(),
            ),
            Stalled::Failed => (
                io::ErrorKind::Other,
                "the thread reading the file failed".to_owned(),
            ),
        };
        GeoError::Io {
            path: name.to_owned(),
            source: io::Error::new(kind, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::{mkfifo, Dir};
    use std::time::Instant;

    #[test]
    fn a_regular_file_within_the_limit_is_read() {
        let dir = Dir::new("file-regular");
        let path = dir.path("db");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let c = read(&path, &path, 100).unwrap();
        assert_eq!(c.bytes, [7u8; 100]);
        assert_eq!(c.before.len(), 100);
        assert_eq!(c.after.len(), 100);
    }

    #[test]
    fn a_file_over_the_limit_is_refused_on_its_metadata() {
        let dir = Dir::new("file-large");
        let path = dir.path("db");
        std::fs::write(&path, [7u8; 101]).unwrap();
        match read(&path, &path, 100) {
            Err(Refusal::File(GeoError::TooLarge { limit: 100, .. }, meta)) => {
                assert_eq!(meta.len(), 101);
            }
            other => panic!("{:?}", other.map(|c| c.bytes.len())),
        }
    }

    #[test]
    fn a_file_larger_than_its_metadata_says_is_cut_and_refused() {
        // Stands in for a file that grows while it is read: /proc files are regular files of
        // size 0 whose content is longer, so only the bounded read can catch them.
        let path = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
        match read(path, path, 16) {
            Err(Refusal::Other(GeoError::TooLarge { limit: 16, .. })) => {}
            other => panic!("{:?}", other.map(|c| c.bytes.len())),
        }
        // With room enough, the same file is read whole.
        assert!(read(path, path, 1 << 20).unwrap().bytes.len() > 16);
    }

    #[test]
    fn a_fifo_is_refused_without_opening_it() {
        let dir = Dir::new("file-fifo");
        let path = dir.path("db");
        mkfifo(&path);
        let started = Instant::now();
        match read(&path, &path, MAX_DATABASE_BYTES) {
            Err(Refusal::File(GeoError::NotAFile { kind, .. }, _)) => assert_eq!(kind, "a FIFO"),
            other => panic!("{:?}", other.map(|c| c.bytes.len())),
        }
        assert!(started.elapsed() < READ_TIMEOUT);
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let dir = Dir::new("file-devices");
        let link = dir.path("zero.mmdb");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        match read(&link, &link, MAX_DATABASE_BYTES) {
            Err(Refusal::File(GeoError::NotAFile { kind, path }, _)) => {
                assert_eq!(kind, "a character device");
                assert_eq!(path, link);
            }
            other => panic!("{:?}", other.map(|c| c.bytes.len())),
        }
        assert!(matches!(
            read(&dir.0, &dir.0, MAX_DATABASE_BYTES),
            Err(Refusal::File(
                GeoError::NotAFile {
                    kind: "a directory",
                    ..
                },
                _
            ))
        ));
    }

    #[test]
    fn an_opened_fifo_fails_the_second_check() {
        // The path may turn into a FIFO between the first look and the open: the open does
        // not block (O_NONBLOCK) and the descriptor's own metadata refuses it.
        let dir = Dir::new("file-fifo-open");
        let path = dir.path("db");
        mkfifo(&path);
        let file = open_nonblocking(&path).unwrap();
        let meta = file.metadata().unwrap();
        assert!(matches!(
            acceptable(&path, &meta, MAX_DATABASE_BYTES),
            Err(GeoError::NotAFile { kind: "a FIFO", .. })
        ));
    }

    #[test]
    fn a_stalled_job_times_out_and_blocks_the_next_until_it_ends() {
        let worker = Worker::default();
        assert_eq!(worker.run(Duration::from_secs(5), || 42), Ok(42));

        let (release, wait) = mpsc::channel::<()>();
        let started = Instant::now();
        assert_eq!(
            worker.run(Duration::from_millis(50), move || wait.recv().is_ok()),
            Err(Stalled::TimedOut)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The stalled read is still running: no second thread.
        assert_eq!(worker.run(Duration::from_secs(5), || 1), Err(Stalled::Busy));
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match worker.run(Duration::from_secs(5), || 2) {
                Ok(n) => break assert_eq!(n, 2),
                Err(Stalled::Busy) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_panicking_job_frees_the_worker() {
        let worker = Worker::default();
        let result: Result<(), Stalled> = worker.run(Duration::from_secs(5), || panic!("boom"));
        assert_eq!(result, Err(Stalled::Failed));
        assert_eq!(worker.run(Duration::from_secs(5), || 3), Ok(3));
    }
}
