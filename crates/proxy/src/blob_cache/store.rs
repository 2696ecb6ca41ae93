//! The cache on disk: `<path>/sha256/<hex>` (and `sha512/`) for complete, verified entries,
//! `<path>/tmp/<pid>-<n>` for fills in progress. An entry appears only by `rename` from `tmp/`
//! after its bytes hashed to its digest, so a crash leaves nothing that is served: temporary
//! files of processes no longer running are removed at start. The index (digest → size, last
//! use) is rebuilt from the directory at start; the old and new process of an upgrade share the
//! directory, each with its own index (an entry the other evicted is a miss when it fails to
//! open). Eviction: least recently used first, to stay within the size budget.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use bytes::Bytes;

use super::{CacheMetrics, Digest};

/// Bytes waiting for the writer thread, at most; a fill whose writer falls further behind is
/// given up (the client's transfer goes on). The chunks are the ones sent to the client
/// (shared, not copied).
const WRITE_QUEUE_BYTES: u64 = 64 << 20;

struct Entry {
    size: u64,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    used: u64,
    clock: u64,
}

pub struct Store {
    dir: PathBuf,
    budget: AtomicU64,
    index: Mutex<Index>,
    next_tmp: AtomicU64,
    pub(super) metrics: CacheMetrics,
}

/// What a fill sends its writer.
enum Chunk {
    Data(Bytes),
    /// The bytes hashed to the digest: keep them.
    Commit,
}

/// The writing side of a fill: chunks go to a thread that writes them to a temporary file and,
/// on `commit`, renames it into place. Dropped without `commit`: the file is removed.
pub struct FillWriter {
    tx: Option<mpsc::Sender<Chunk>>,
    /// Bytes sent and not yet written.
    queued: std::sync::Arc<AtomicU64>,
    /// How the writer ended, sent once it has.
    /// (In a mutex: a request's context is shared between threads, a receiver may not be.)
    ended: Option<Mutex<mpsc::Receiver<FillEnd>>>,
}

/// How long `commit` waits for the writer to store the entry (it has at most
/// `WRITE_QUEUE_BYTES` still to write to the page cache).
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl FillWriter {
    /// Queues a chunk; `false` when the writer has failed or fallen behind (the fill is given up).
    pub fn write(&mut self, data: Bytes) -> bool {
        let len = data.len() as u64;
        let room = self.queued.fetch_add(len, Ordering::Relaxed) + len <= WRITE_QUEUE_BYTES;
        let ok = room
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| tx.send(Chunk::Data(data)).is_ok());
        if !ok {
            self.tx = None;
        }
        ok
    }

    /// The bytes are the blob: store them. Returns how the writer ended (`None`: it has not
    /// within [`COMMIT_WAIT`], and goes on).
    pub fn commit(mut self) -> Option<FillEnd> {
        let tx = self.tx.take();
        let ended = self.ended.take()?;
        match tx {
            Some(tx) => {
                let _ = tx.send(Chunk::Commit);
            }
            // Given up before the end (fell behind): the writer removes its file.
            None => return Some(FillEnd::GivenUp),
        }
        let ended = ended.into_inner().unwrap_or_else(|p| p.into_inner());
        ended.recv_timeout(COMMIT_WAIT).ok()
    }

    /// A writer that writes nothing.
    pub fn inactive() -> FillWriter {
        FillWriter {
            tx: None,
            queued: Default::default(),
            ended: None,
        }
    }

    pub fn active(&self) -> bool {
        self.tx.is_some()
    }
}

fn alg_dirs() -> [&'static str; 2] {
    ["sha256", "sha512"]
}

impl Store {
    /// Opens (creating) the cache directory, removes what dead fills left, and indexes the
    /// entries found.
    pub fn open(dir: &Path, budget: u64, metrics: CacheMetrics) -> std::io::Result<Store> {
        for sub in alg_dirs().into_iter().chain(["tmp"]) {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let store = Store {
            dir: dir.to_owned(),
            budget: AtomicU64::new(budget),
            index: Mutex::new(Index::default()),
            next_tmp: AtomicU64::new(0),
            metrics,
        };
        store.remove_dead_fills()?;
        store.rescan()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
        let evicted = self.evict(0);
        self.remove_files(evicted);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm()).join(d.hex())
    }

    /// Temporary files of fills whose process is gone (`<pid>-<n>`): an interrupted fill
    /// leaves nothing behind.
    fn remove_dead_fills(&self) -> std::io::Result<()> {
        for e in std::fs::read_dir(self.dir.join("tmp"))? {
            let e = e?;
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(p, _)| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Indexes the complete entries on disk (oldest modification first in the LRU order).
    /// Files that are not named by a digest, or are not regular files, are left alone.
    fn rescan(&self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for alg in alg_dirs() {
            for e in std::fs::read_dir(self.dir.join(alg))? {
                let e = e?;
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Some(d) = Digest::parse(&format!("{alg}:{name}")) else {
                    continue;
                };
                let meta = e.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |t| t.as_nanos());
                found.push((mtime, d, meta.len()));
            }
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut index = self.lock();
        *index = Index::default();
        for (_, d, size) in found {
            index.clock += 1;
            let last_used = index.clock;
            index.used += size;
            index.entries.insert(d, Entry { size, last_used });
        }
        drop(index);
        let evicted = self.evict(0);
        self.remove_files(evicted);
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let index = self.lock();
        self.metrics.disk_bytes.set(index.used as i64);
        self.metrics.entries.set(index.entries.len() as i64);
    }

    /// A complete entry: its open file and size. An entry whose file is gone (evicted by the
    /// other process of an upgrade, removed by hand) or has another size is dropped from the
    /// index and is a miss.
    pub fn open_entry(&self, d: &Digest) -> Option<(File, u64)> {
        let size = {
            let mut index = self.lock();
            index.clock += 1;
            let clock = index.clock;
            let e = index.entries.get_mut(d)?;
            e.last_used = clock;
            e.size
        };
        match File::open(self.path_of(d)) {
            Ok(f) if f.metadata().is_ok_and(|m| m.len() == size) => Some((f, size)),
            Ok(_) | Err(_) => {
                self.forget(d);
                self.metrics.errors[ErrorKind::Read as usize].inc();
                None
            }
        }
    }

    fn forget(&self, d: &Digest) {
        let mut index = self.lock();
        if let Some(e) = index.entries.remove(d) {
            index.used -= e.size;
        }
        drop(index);
        self.publish();
    }

    /// Whether an entry fits the budget at all.
    pub fn fits(&self, size: u64) -> bool {
        size <= self.budget.load(Ordering::Relaxed)
    }

    /// Starts writing a fill of `d` (`size` bytes) to a temporary file. `None` when the file
    /// cannot be created (counted; the transfer goes on without the cache).
    pub fn begin_fill(
        self: &std::sync::Arc<Self>,
        d: &Digest,
        size: u64,
        done: impl FnOnce(FillEnd) + Send + 'static,
    ) -> Option<FillWriter> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = match File::create(&tmp) {
            Ok(f) => f,
            Err(e) => {
                self.metrics.errors[ErrorKind::Write as usize].inc();
                log::warn!(
                    "blob cache: cannot create {}: {e}; not cached",
                    tmp.display()
                );
                done(FillEnd::WriteError);
                return None;
            }
        };
        let (tx, rx) = mpsc::channel();
        let (ended_tx, ended) = mpsc::sync_channel(1);
        let queued = std::sync::Arc::new(AtomicU64::new(0));
        let writing = queued.clone();
        let store = self.clone();
        let d = d.clone();
        let spawned = std::thread::Builder::new()
            .name("blob-fill".into())
            .spawn(move || {
                let end = store.write_fill(file, &tmp, &d, size, rx, &writing);
                let _ = ended_tx.send(end);
                done(end);
            });
        match spawned {
            Ok(_) => Some(FillWriter {
                tx: Some(tx),
                queued,
                ended: Some(Mutex::new(ended)),
            }),
            Err(e) => {
                log::warn!("blob cache: no writer thread: {e}; not cached");
                self.metrics.errors[ErrorKind::Write as usize].inc();
                None
            }
        }
    }

    /// The writer thread: chunks to the file until `Commit` (rename into place, index, evict)
    /// or the sender's end (the fill was given up: the file is removed).
    fn write_fill(
        &self,
        mut file: File,
        tmp: &Path,
        d: &Digest,
        size: u64,
        rx: mpsc::Receiver<Chunk>,
        queued: &AtomicU64,
    ) -> FillEnd {
        let mut written = 0u64;
        let mut failed = None;
        let end = loop {
            match rx.recv() {
                Ok(Chunk::Data(b)) => {
                    queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
                    if failed.is_none() {
                        written += b.len() as u64;
                        if let Err(e) = file.write_all(&b) {
                            failed = Some(e);
                        }
                    }
                }
                Ok(Chunk::Commit) => break true,
                Err(_) => break false,
            }
        };
        drop(file);
        let result = match (end, failed) {
            (false, _) => FillEnd::GivenUp,
            (true, Some(e)) => {
                log::warn!("blob cache: writing {d} failed: {e}; not cached");
                self.metrics.errors[ErrorKind::Write as usize].inc();
                FillEnd::WriteError
            }
            (true, None) if written != size => FillEnd::GivenUp,
            (true, None) => match std::fs::rename(tmp, self.path_of(d)) {
                Ok(()) => {
                    self.insert(d, size);
                    return FillEnd::Stored;
                }
                Err(e) => {
                    log::warn!("blob cache: storing {d} failed: {e}; not cached");
                    self.metrics.errors[ErrorKind::Write as usize].inc();
                    FillEnd::WriteError
                }
            },
        };
        let _ = std::fs::remove_file(tmp);
        result
    }

    fn insert(&self, d: &Digest, size: u64) {
        {
            let mut index = self.lock();
            index.clock += 1;
            let last_used = index.clock;
            if let Some(old) = index.entries.insert(d.clone(), Entry { size, last_used }) {
                index.used -= old.size;
            }
            index.used += size;
        }
        let evicted = self.evict(0);
        self.remove_files(evicted);
        self.publish();
    }

    /// Removes least recently used entries from the index until `extra` more bytes fit;
    /// returns them (their files are removed outside the lock).
    fn evict(&self, extra: u64) -> Vec<Digest> {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut index = self.lock();
        let mut out = Vec::new();
        while index.used + extra > budget {
            let Some(oldest) = index
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            if let Some(e) = index.entries.remove(&oldest) {
                index.used -= e.size;
            }
            out.push(oldest);
        }
        out
    }

    fn remove_files(&self, evicted: Vec<Digest>) {
        for d in evicted {
            self.metrics.evictions.inc();
            // Readers hold open files: removing the name does not cut a transfer short.
            let _ = std::fs::remove_file(self.path_of(&d));
        }
        self.publish();
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

/// How a fill's writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillEnd {
    Stored,
    /// Not committed: verification failed, the transfer ended early, or the writer fell behind.
    GivenUp,
    /// The disk refused (full, unwritable).
    WriteError,
}

/// Indexes of `CacheMetrics::errors`.
#[derive(Debug, Clone, Copy)]
pub enum ErrorKind {
    Write = 0,
    Read = 1,
}
