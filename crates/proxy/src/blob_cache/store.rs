//! The cache on disk: `<path>/sha256/<hex>` (and `sha512/`) for complete, verified entries,
//! `<path>/tmp/<pid>-<start>-<n>` for fills in progress, each created exclusively and locked
//! (`flock`) by its writer. An entry appears only by `rename` from `tmp/` after its bytes hashed
//! to its digest and were synced to disk (file, then directory), so neither a crash of the
//! process nor of the machine leaves anything that is served: temporary files no writer holds
//! locked are removed at start, and empty entries are not indexed. The index (digest → size, last
//! use) is rebuilt from the directory at start; the old and new process of an upgrade share the
//! directory, each with its own index (an entry the other evicted is a miss when it fails to
//! open). Eviction: least recently used first, to stay within the size budget.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use bytes::Bytes;

use super::fill_file::FillFile;
use super::{CacheMetrics, Digest};

/// Bytes waiting for a fill's writer thread, at most; a fill whose writer falls further behind
/// is given up (the client's transfer goes on). The chunks are the ones sent to the client
/// (shared, not copied).
const WRITE_QUEUE_BYTES: u64 = 64 << 20;
/// Bytes waiting for all writers of the process together, at most (fills beyond it are given
/// up): a slow disk cannot make the cache hold unbounded memory.
const WRITE_QUEUES_BYTES: u64 = 256 << 20;
static QUEUED: AtomicU64 = AtomicU64::new(0);
/// Temporary file names: unique in the process whatever the number of stores, and across
/// processes that share the directory (`<pid>-<start>-<n>`, created exclusively).
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

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
    pub(super) metrics: CacheMetrics,
    /// Tests: writers wait while it is set (a disk that takes nothing).
    #[cfg(test)]
    pub(super) hold_writes: std::sync::atomic::AtomicBool,
}

/// Bytes a fill gathers before it hands them to its writer thread: one wake-up of the thread
/// per MiB, not per network read (64 KiB), on a core the thread may share with the proxy.
const BATCH_BYTES: usize = 1 << 20;

/// What a fill sends its writer.
enum Chunk {
    Data(Vec<Bytes>),
    /// The bytes hashed to the digest: keep them.
    Commit,
}

/// The writing side of a fill: chunks go to a thread that writes them to a temporary file and,
/// on `commit`, renames it into place. Dropped without `commit`: the file is removed.
pub struct FillWriter {
    tx: Option<mpsc::Sender<Chunk>>,
    /// Chunks not yet sent (fewer than [`BATCH_BYTES`]), and their length.
    batch: Vec<Bytes>,
    batch_len: usize,
    /// Bytes queued (in the batch or sent) and not yet written.
    queued: std::sync::Arc<AtomicU64>,
    /// Set by the writer when the disk refused a write.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FillWriter {
    /// Queues a chunk; `false` when the writer has failed or fallen behind (the fill is given up).
    pub fn write(&mut self, data: Bytes) -> bool {
        if self.tx.is_none() || self.disk_failed() {
            self.give_up();
            return false;
        }
        let len = data.len() as u64;
        let mine = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        let all = QUEUED.fetch_add(len, Ordering::Relaxed) + len;
        if mine > WRITE_QUEUE_BYTES || all > WRITE_QUEUES_BYTES {
            // Not queued: not to be written.
            self.queued.fetch_sub(len, Ordering::Relaxed);
            QUEUED.fetch_sub(len, Ordering::Relaxed);
            self.give_up();
            return false;
        }
        self.batch_len += data.len();
        self.batch.push(data);
        self.batch_len < BATCH_BYTES || self.send_batch()
    }

    /// Hands the gathered chunks to the writer thread.
    fn send_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Chunk::Data(batch)).is_ok());
        if !sent {
            self.give_up();
        }
        sent
    }

    /// No more writes: the writer thread removes its file. What the batch held leaves the
    /// counts (the thread takes the rest off when it ends).
    fn give_up(&mut self) {
        let held = std::mem::take(&mut self.batch_len) as u64;
        self.batch.clear();
        self.queued.fetch_sub(held, Ordering::Relaxed);
        QUEUED.fetch_sub(held, Ordering::Relaxed);
        self.tx = None;
    }

    /// Bytes queued and not yet written: how far the writer is behind the network (nothing
    /// once the fill is given up: there is nothing left to wait for).
    pub fn backlog(&self) -> u64 {
        if self.tx.is_none() {
            return 0;
        }
        self.queued.load(Ordering::Relaxed)
    }

    /// The disk refused one of this fill's writes.
    pub fn disk_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The bytes are the blob: store them. Never waits for the disk: says what is known now
    /// (`Stored` when the bytes went to the writer, whose own failures are counted and
    /// logged when they happen).
    pub fn commit(mut self) -> FillEnd {
        if self.disk_failed() {
            return FillEnd::WriteError;
        }
        if !self.send_batch() {
            return FillEnd::GivenUp;
        }
        match self.tx.take() {
            Some(tx) if tx.send(Chunk::Commit).is_ok() => FillEnd::Stored,
            // Given up before the end (fell behind): the writer removes its file.
            _ => FillEnd::GivenUp,
        }
    }

    /// A writer that writes nothing.
    pub fn inactive() -> FillWriter {
        FillWriter {
            tx: None,
            batch: Vec::new(),
            batch_len: 0,
            queued: Default::default(),
            failed: Default::default(),
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
            metrics,
            #[cfg(test)]
            hold_writes: Default::default(),
        };
        store.remove_dead_fills()?;
        store.rescan()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// A new budget (a reload in force): entries beyond it are evicted at once.
    pub fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
        let evicted = self.evict();
        self.remove_files(evicted);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm()).join(d.hex())
    }

    /// Temporary files no writer holds: an interrupted fill (a crash, a kill, pid reuse in a
    /// container) leaves nothing behind. A writer holds its file locked until it ends.
    fn remove_dead_fills(&self) -> std::io::Result<()> {
        for e in std::fs::read_dir(self.dir.join("tmp"))?.flatten() {
            let Ok(f) = File::open(e.path()) else {
                continue;
            };
            if f.try_lock().is_ok() {
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
            // An entry the other process of an upgrade evicts during the scan is skipped.
            for e in std::fs::read_dir(self.dir.join(alg))?.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Some(d) = Digest::parse(&format!("{alg}:{name}")) else {
                    continue;
                };
                let Ok(meta) = e.metadata() else {
                    continue;
                };
                // An empty entry is what a machine crash can leave of an unsynced file (no
                // blob registries serve is empty): not indexed, fetched again.
                if !meta.is_file() || meta.len() == 0 {
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
        let evicted = self.evict();
        self.remove_files(evicted);
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
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{}-{n}", std::process::id(), start_id()));
        // Exclusive: never a file another writer has open.
        let created = FillFile::create(&tmp, true);
        let file = match created {
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
        let queued = std::sync::Arc::new(AtomicU64::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            queued: queued.clone(),
            failed: failed.clone(),
        };
        let store = self.clone();
        let d = d.clone();
        let path = tmp.clone();
        let spawned = std::thread::Builder::new()
            .name("blob-fill".into())
            .spawn(move || {
                let end = store.write_fill(file, &path, &d, size, rx, &writer);
                done(end);
            });
        match spawned {
            Ok(_) => Some(FillWriter {
                tx: Some(tx),
                batch: Vec::new(),
                batch_len: 0,
                queued,
                failed,
            }),
            Err(e) => {
                log::warn!("blob cache: no writer thread: {e}; not cached");
                self.metrics.errors[ErrorKind::Write as usize].inc();
                let _ = std::fs::remove_file(&tmp);
                None
            }
        }
    }

    /// The writer thread: chunks to the file until `Commit` (rename into place, index, evict)
    /// or the sender's end (the fill was given up: the file is removed).
    fn write_fill(
        &self,
        mut file: FillFile,
        tmp: &Path,
        d: &Digest,
        size: u64,
        rx: mpsc::Receiver<Chunk>,
        w: &Writer,
    ) -> FillEnd {
        let mut written = 0u64;
        let mut failed = None;
        let end = loop {
            match rx.recv() {
                Ok(Chunk::Data(batch)) => {
                    #[cfg(test)]
                    while self.hold_writes.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    for b in batch {
                        let len = b.len() as u64;
                        if failed.is_none() {
                            written += len;
                            if let Err(e) = file.write(&b) {
                                w.failed.store(true, Ordering::Relaxed);
                                log::warn!("blob cache: writing {d} failed: {e}; not cached");
                                self.metrics.errors[ErrorKind::Write as usize].inc();
                                failed = Some(e);
                            }
                        }
                        w.queued.fetch_sub(len, Ordering::Relaxed);
                        QUEUED.fetch_sub(len, Ordering::Relaxed);
                    }
                }
                Ok(Chunk::Commit) => break true,
                Err(_) => break false,
            }
        };
        if !file.direct() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                log::warn!(
                    "blob cache: {} takes no direct writes; fills go through the page cache \
                     (more CPU per byte, docs/blob-cache.md)",
                    self.dir.display()
                )
            });
        }
        // Chunks never received (the fill ended first) leave the process-wide count too.
        QUEUED.fetch_sub(w.queued.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        // On disk before it has a name: a machine crash never leaves a named partial entry.
        if end && failed.is_none() {
            if let Err(e) = file.finish() {
                w.failed.store(true, Ordering::Relaxed);
                log::warn!(
                    "blob cache: writing the end of {d} or syncing it failed: {e}; not cached"
                );
                self.metrics.errors[ErrorKind::Write as usize].inc();
                failed = Some(e);
            }
        }
        // The file stays open (and locked) until renamed or removed: no other process's start
        // takes it for a dead fill in between.
        let result = match (end, failed) {
            (false, _) => FillEnd::GivenUp,
            (true, Some(_)) => FillEnd::WriteError,
            (true, None) if written != size => FillEnd::GivenUp,
            (true, None) => match std::fs::rename(tmp, self.path_of(d)) {
                Ok(()) => {
                    if let Ok(dir) = File::open(self.dir.join(d.algorithm())) {
                        let _ = dir.sync_all();
                    }
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
        let evicted = self.evict();
        self.remove_files(evicted);
    }

    /// Removes least recently used entries from the index until the rest fits the budget;
    /// returns them (their files are removed outside the lock). One sort per eviction, not a
    /// scan per entry.
    fn evict(&self) -> Vec<Digest> {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut index = self.lock();
        if index.used <= budget {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, Digest)> = index
            .entries
            .iter()
            .map(|(d, e)| (e.last_used, d.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(used, _)| *used);
        let mut out = Vec::new();
        for (_, d) in by_age {
            if index.used <= budget {
                break;
            }
            if let Some(e) = index.entries.remove(&d) {
                index.used -= e.size;
            }
            out.push(d);
        }
        out
    }

    /// Removes the files of evicted entries, then publishes the index's figures.
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

/// What the writer thread shares with its fill.
struct Writer {
    queued: std::sync::Arc<AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A number for this process's start, in temporary file names (pids repeat across restarts).
fn start_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(crate::clock::since_epoch().as_nanos());
        h.finish() & 0xffff_ffff
    })
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
