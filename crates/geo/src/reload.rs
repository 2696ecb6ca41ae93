//! A database file watched for replacement and swapped in atomically.

use std::fs::{self, File, Metadata};
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::db::GeoDb;
use crate::error::GeoError;

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
#[derive(Debug)]
pub struct ReloadingDb {
    path: PathBuf,
    current: ArcSwap<GeoDb>,
    state: Mutex<State>,
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
        let io_error = |source| GeoError::Io {
            path: path.to_owned(),
            source,
        };
        let snapshot = read_snapshot(path).map_err(io_error)?;
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
    /// reads metadata every time and the whole file when it changed; call it from a blocking
    /// task every few seconds. Concurrent calls are serialised.
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
            return match read_snapshot(&self.path) {
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
                Err(source) => ReloadOutcome::Refused(GeoError::Io {
                    path: self.path.clone(),
                    source,
                }),
            };
        }

        if matches!(&state.refused, Some(Seen::File(refused)) if *refused == id) {
            return ReloadOutcome::Unchanged;
        }
        match read_snapshot(&self.path) {
            Ok(snapshot) => self.load(&mut state, snapshot),
            // The path was readable a moment ago: a replacement raced this check, and the
            // next check sees how it ended, so this is not remembered.
            Err(source) => ReloadOutcome::Refused(GeoError::Io {
                path: self.path.clone(),
                source,
            }),
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

/// Reads the file through its resolved path, so the identity and the content belong to the
/// same file even when a symlink is swapped meanwhile.
fn read_snapshot(path: &Path) -> io::Result<Snapshot> {
    let resolved = fs::canonicalize(path)?;
    let mut file = File::open(&resolved)?;
    let before = file.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    let after = file.metadata()?;
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
