//! A database file watched for replacement and swapped in atomically.

use std::fs::{self, Metadata};
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::db::GeoDb;
use crate::error::GeoError;
use crate::file::{self, Limits, Refusal, Stalled, Worker};

/// How old a file's mtime must be before its (size, mtime) is trusted to describe its final
/// content. Timestamps are coarse (a kernel tick on ext4, 1 s on some file systems, 2 s on
/// FAT), so a writer that rewrites a file in place without changing its size can finish
/// within the tick in which a half-written state was read and leave no trace in the
/// metadata. Within this window a refusal is not remembered and a load is confirmed by
/// comparing content once the window has passed.
const SETTLE: Duration = Duration::from_secs(2);

/// What [`ReloadingDb::check`] did, for the caller to log and count.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file is the one already loaded (or already refused): nothing was done.
    Unchanged,
    /// A new database is in place; requests that took the old one finish on it.
    Reloaded {
        /// The new database's `metadata.build_epoch`.
        build_epoch: u64,
    },
    /// The file changed but cannot serve; the previous database stays in place. The same
    /// file is not reported again until it changes.
    Refused(GeoError),
}

/// The database of a file, swapped atomically (arc-swap) when the file changes.
///
/// A change is any difference in the identity of the file the path leads to, symlinks
/// followed: its resolved path, device, inode, size and mtime. That catches a rename over
/// the path (new inode), a copy over it in place (same inode, new size or mtime) and a
/// Kubernetes ConfigMap/Secret update (`db.mmdb -> ..data/db.mmdb`, with `..data` itself a
/// symlink to a timestamped directory that is atomically replaced: new resolved path and
/// inode). A half-written file fails to parse and is refused, the old database kept; the
/// rest of the write changes the identity again and is picked up by a later check.
///
/// Only a regular file (symlinks followed) of at most
/// [`MAX_DATABASE_BYTES`](crate::MAX_DATABASE_BYTES) is read: a FIFO or a device at the path
/// (`/dev/zero`) is refused on its metadata without being read, a bigger file on its size, a
/// file that grows past the limit while it is read when it does. Each read runs on a thread of
/// its own and is waited for at most [`READ_TIMEOUT`](crate::READ_TIMEOUT); a read that takes
/// longer is reported as refused, and no other read starts until it ends.
#[derive(Debug)]
pub struct ReloadingDb {
    path: PathBuf,
    current: ArcSwap<GeoDb>,
    state: Mutex<State>,
    limits: Limits,
    worker: Worker,
}

#[derive(Debug)]
struct State {
    /// The file `current` was loaded from.
    loaded: FileId,
    /// The digest of the loaded bytes, kept while the file was too fresh (see [`SETTLE`]) for
    /// its identity to vouch for its content.
    unsettled_digest: Option<u64>,
    /// The last observation that was refused and reported, so it is not read and reported
    /// again on every check.
    refused: Option<Seen>,
}

/// The identity of the file behind the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    resolved: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    File(FileId),
    Unreadable(io::ErrorKind),
}

/// Why a snapshot was not taken.
enum NoSnapshot {
    /// The file itself is refused (not a regular file, too large): remembered until it changes.
    Refused(GeoError, FileId),
    /// An I/O error, a file that grew while it was read, or a read that did not end in time:
    /// the next check looks again.
    Failed(GeoError),
    /// An earlier read that timed out is still running: nothing to report yet.
    Busy,
}

/// The file's content with the identity it had while it was read.
struct Snapshot {
    id: FileId,
    bytes: Vec<u8>,
    /// Size or mtime moved while reading: the bytes may mix two versions.
    torn: bool,
    settled: bool,
}

impl ReloadingDb {
    /// Loads the database at `path`; a missing or unusable file is an error (at start-up
    /// there is no previous database to fall back on).
    pub fn open(path: &Path) -> Result<ReloadingDb, GeoError> {
        ReloadingDb::open_with(path, Limits::default())
    }

    pub(crate) fn open_with(path: &Path, limits: Limits) -> Result<ReloadingDb, GeoError> {
        let worker = Worker::default();
        let snapshot = match timed_snapshot(&worker, path, limits) {
            Ok(snapshot) => snapshot,
            Err(NoSnapshot::Refused(e, _) | NoSnapshot::Failed(e)) => return Err(e),
            Err(NoSnapshot::Busy) => return Err(Stalled::Busy.into_error(path, limits.timeout)),
        };
        if snapshot.torn {
            return Err(torn(path));
        }
        let digest = (!snapshot.settled).then(|| digest(&snapshot.bytes));
        let db = GeoDb::from_bytes(snapshot.bytes, &path.display().to_string())?;
        Ok(ReloadingDb {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(db),
            state: Mutex::new(State {
                loaded: snapshot.id,
                unsettled_digest: digest,
                refused: None,
            }),
            limits,
            worker,
        })
    }

    /// The database now in place. Requests in flight keep the `Arc` they took, so a swap
    /// never changes the answer in the middle of a request. Lock-free.
    pub fn current(&self) -> Arc<GeoDb> {
        self.current.load_full()
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file and swaps in its database if it changed and is usable. Blocking:
    /// reads metadata every time and, when the file changed, the whole file (on a thread of its
    /// own, waited for at most [`READ_TIMEOUT`](crate::READ_TIMEOUT)) and parses it; call it
    /// from a blocking task every few seconds. Concurrent calls are serialised.
    pub fn check(&self) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);

        let id = match observe(&self.path) {
            Ok(id) => id,
            Err(source) => {
                let seen = Seen::Unreadable(source.kind());
                if state.refused.as_ref() == Some(&seen) {
                    return ReloadOutcome::Unchanged;
                }
                state.refused = Some(seen);
                return ReloadOutcome::Refused(GeoError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };

        if id == state.loaded {
            let Some(loaded_digest) = state.unsettled_digest else {
                return ReloadOutcome::Unchanged;
            };
            if !is_settled(id.modified, SystemTime::now()) {
                return ReloadOutcome::Unchanged;
            }
            // Loaded while fresh and unchanged since: compare content once, now that a
            // same-size rewrite would have had time to show in the mtime.
            return match timed_snapshot(&self.worker, &self.path, self.limits) {
                Ok(s) if s.settled && s.id == state.loaded && digest(&s.bytes) == loaded_digest => {
                    state.unsettled_digest = None;
                    ReloadOutcome::Unchanged
                }
                Ok(s) => {
                    if s.id == state.loaded {
                        // Whatever the verdict, this content is judged once.
                        state.unsettled_digest = None;
                    }
                    self.load(&mut state, s)
                }
                Err(no) => refuse(&mut state, no),
            };
        }

        if matches!(&state.refused, Some(Seen::File(refused)) if *refused == id) {
            return ReloadOutcome::Unchanged;
        }
        match timed_snapshot(&self.worker, &self.path, self.limits) {
            Ok(snapshot) => self.load(&mut state, snapshot),
            Err(no) => refuse(&mut state, no),
        }
    }

    fn load(&self, state: &mut State, snapshot: Snapshot) -> ReloadOutcome {
        if snapshot.torn {
            state.refused = None;
            return ReloadOutcome::Refused(torn(&self.path));
        }
        let digest = (!snapshot.settled).then(|| digest(&snapshot.bytes));
        match GeoDb::from_bytes(snapshot.bytes, &self.path.display().to_string()) {
            Ok(db) => {
                let build_epoch = db.build_epoch();
                self.current.store(Arc::new(db));
                state.loaded = snapshot.id;
                state.unsettled_digest = digest;
                state.refused = None;
                ReloadOutcome::Reloaded { build_epoch }
            }
            Err(error) => {
                // A fresh file may still be being written: look again next time.
                state.refused = snapshot.settled.then_some(Seen::File(snapshot.id));
                ReloadOutcome::Refused(error)
            }
        }
    }
}

/// The outcome of a read that gave no snapshot.
fn refuse(state: &mut State, no: NoSnapshot) -> ReloadOutcome {
    match no {
        NoSnapshot::Refused(error, id) => {
            state.refused = Some(Seen::File(id));
            ReloadOutcome::Refused(error)
        }
        // The path was readable a moment ago: a replacement raced this check, or the file
        // system stalled, and the next check sees how it ended, so this is not remembered.
        NoSnapshot::Failed(error) => ReloadOutcome::Refused(error),
        // The timeout of the read still running was reported when it happened.
        NoSnapshot::Busy => ReloadOutcome::Unchanged,
    }
}

fn torn(path: &Path) -> GeoError {
    GeoError::Invalid {
        path: path.to_owned(),
        message: "the file changed while it was read (still being written?)".to_owned(),
    }
}

/// The identity of the file `path` leads to, symlinks followed.
fn observe(path: &Path) -> io::Result<FileId> {
    let resolved = fs::canonicalize(path)?;
    let meta = fs::metadata(&resolved)?;
    Ok(FileId::new(resolved, &meta))
}

/// [`read_snapshot`] on the worker's thread, waited for at most the timeout.
fn timed_snapshot(worker: &Worker, path: &Path, limits: Limits) -> Result<Snapshot, NoSnapshot> {
    let owned = path.to_owned();
    match worker.run(limits.timeout, move || {
        read_snapshot(&owned, limits.max_bytes)
    }) {
        Ok(read) => read,
        Err(Stalled::Busy) => Err(NoSnapshot::Busy),
        Err(stalled) => Err(NoSnapshot::Failed(stalled.into_error(path, limits.timeout))),
    }
}

/// Reads the file through its resolved path, so the identity and the content belong to the
/// same file even when a symlink is swapped meanwhile; only a regular file of at most
/// `max_bytes` (see [`file::read`]).
fn read_snapshot(path: &Path, max_bytes: u64) -> Result<Snapshot, NoSnapshot> {
    let resolved = fs::canonicalize(path).map_err(|source| {
        NoSnapshot::Failed(GeoError::Io {
            path: path.to_owned(),
            source,
        })
    })?;
    let file::Contents {
        bytes,
        before,
        after,
    } = file::read(path, &resolved, max_bytes).map_err(|refusal| match refusal {
        Refusal::File(error, meta) => {
            NoSnapshot::Refused(error, FileId::new(resolved.clone(), &meta))
        }
        Refusal::Other(error) => NoSnapshot::Failed(error),
    })?;
    let now = SystemTime::now();
    let id = FileId::new(resolved, &after);
    let torn = before.len() != after.len()
        || before.modified().ok() != id.modified
        || u64::try_from(bytes.len()) != Ok(after.len());
    let settled = !torn && is_settled(id.modified, now);
    Ok(Snapshot {
        id,
        bytes,
        torn,
        settled,
    })
}

fn is_settled(modified: Option<SystemTime>, now: SystemTime) -> bool {
    match modified.map(|m| now.duration_since(m)) {
        Some(Ok(age)) => age >= SETTLE,
        // No mtime, or one in the future (clock skew): waiting would not make it trustworthy.
        None | Some(Err(_)) => true,
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

impl FileId {
    fn new(resolved: PathBuf, meta: &Metadata) -> FileId {
        let (dev, ino) = dev_ino(meta);
        FileId {
            resolved,
            dev,
            ino,
            size: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

#[cfg(unix)]
fn dev_ino(meta: &Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dev_ino(_meta: &Metadata) -> (u64, u64) {
    // Without inodes, a rename over the path still shows as a new mtime (or size).
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Country {
        iso_code: &'static str,
    }

    #[derive(serde::Serialize)]
    struct Record {
        country: Country,
    }

    /// A database placing `networks` /24s in `iso`.
    fn mmdb(iso: &'static str, networks: u32, build_epoch: u64) -> Vec<u8> {
        let mut w = mmdb_writer::Writer::builder("GeoLite2-Country")
            .build_epoch(std::time::UNIX_EPOCH + Duration::from_secs(build_epoch))
            .build();
        for n in 0..networks {
            // Not adjacent, or the writer merges them into one network.
            let net = format!("10.{}.{}.0/24", n % 256, 2 * (n / 256));
            w.insert(
                net.parse::<ipnet::IpNet>().unwrap(),
                &Record {
                    country: Country { iso_code: iso },
                },
            )
            .unwrap();
        }
        w.to_bytes().unwrap()
    }

    fn write_settled(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    fn country(db: &ReloadingDb) -> Option<String> {
        let ip = "10.0.0.1".parse().unwrap();
        db.current().lookup(ip).country_code().map(str::to_owned)
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_and_the_old_kept() {
        let dir = std::env::temp_dir().join(format!(
            "registry-edge-geo-reload-large-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("GeoLite2-Country.mmdb");
        let tmp = dir.join("tmp.mmdb");
        let small = mmdb("DE", 1, 1);
        let large = mmdb("FR", 250, 2);
        assert!(large.len() > small.len() + 1000);
        let limits = Limits {
            max_bytes: u64::try_from(small.len()).unwrap() + 100,
            timeout: Duration::from_secs(10),
        };

        // Over the limit at start: an error, even though the database is valid.
        write_settled(&path, &large);
        match ReloadingDb::open_with(&path, limits) {
            Err(GeoError::TooLarge { limit, .. }) => assert_eq!(limit, limits.max_bytes),
            other => panic!("{other:?}"),
        }

        write_settled(&path, &small);
        let db = ReloadingDb::open_with(&path, limits).unwrap();
        assert_eq!(country(&db).as_deref(), Some("DE"));

        write_settled(&tmp, &large);
        fs::rename(&tmp, &path).unwrap();
        match db.check() {
            ReloadOutcome::Refused(e @ GeoError::TooLarge { .. }) => {
                assert!(e.to_string().contains("is larger than"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(country(&db).as_deref(), Some("DE"));
        // Reported once per file.
        assert!(matches!(db.check(), ReloadOutcome::Unchanged));

        // Within the limit again: picked up.
        write_settled(&tmp, &mmdb("FR", 2, 3));
        fs::rename(&tmp, &path).unwrap();
        assert!(matches!(
            db.check(),
            ReloadOutcome::Reloaded { build_epoch: 3 }
        ));
        assert_eq!(country(&db).as_deref(), Some("FR"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fresh_files_are_not_settled() {
        let now = SystemTime::now();
        assert!(!is_settled(Some(now), now));
        assert!(!is_settled(Some(now - Duration::from_millis(1500)), now));
        assert!(is_settled(Some(now - SETTLE), now));
        assert!(is_settled(Some(now + Duration::from_secs(60)), now));
        assert!(is_settled(None, now));
    }
}
