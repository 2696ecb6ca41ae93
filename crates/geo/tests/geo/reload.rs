//! `ReloadingDb`: each kind of file replacement while reader threads look addresses up. Every
//! lookup must answer from the old or the new database (never "unknown"), a refused file must
//! leave the old database in place, and a refusal is reported once per file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use registry_edge_geo::{GeoError, ReloadOutcome, ReloadingDb};

use crate::scratch::{mkfifo, Dir};
use crate::support::{self, age, place, set_mtime};

const OLD_EPOCH: u64 = 1_700_000_000;
const NEW_EPOCH: u64 = 1_700_000_100;

fn ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

/// Both test networks in `iso`. The databases this makes have the same shape and size: only
/// the country differs, so size alone cannot tell them apart.
fn db_in(build_epoch: u64, iso: &str) -> Vec<u8> {
    support::db(
        build_epoch,
        &[
            ("192.0.2.0/24", place(iso, "EU")),
            ("2001:db8::/32", place(iso, "EU")),
        ],
    )
}

fn old_db() -> Vec<u8> {
    db_in(OLD_EPOCH, "DE")
}

fn new_db() -> Vec<u8> {
    db_in(NEW_EPOCH, "FR")
}

fn country(db: &ReloadingDb) -> String {
    db.current()
        .lookup(ip())
        .country_code()
        .unwrap_or("none")
        .to_owned()
}

/// Reader threads looking up without pause; every answer must be DE or FR.
struct Hammer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    lookups: Arc<AtomicU64>,
}

impl Hammer {
    fn start(db: &Arc<ReloadingDb>) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let lookups = Arc::new(AtomicU64::new(0));
        let threads = (0..2)
            .map(|_| {
                let (db, stop, lookups) = (db.clone(), stop.clone(), lookups.clone());
                std::thread::spawn(move || {
                    let v6: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let current = db.current();
                        for addr in [ip(), v6, "2001:db8::5".parse().unwrap()] {
                            let code = current.lookup(addr).country_code().map(str::to_owned);
                            assert!(
                                matches!(code.as_deref(), Some("DE" | "FR")),
                                "a lookup during a reload answered {code:?}"
                            );
                        }
                        lookups.fetch_add(3, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Hammer {
            stop,
            threads,
            lookups,
        }
    }

    fn finish(self) {
        // Let the readers run against the final state too.
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a reader thread panicked");
        }
        assert!(self.lookups.load(Ordering::Relaxed) > 0);
    }
}

fn write_settled(path: &Path, bytes: &[u8], secs_ago: u64) {
    fs::write(path, bytes).unwrap();
    age(path, secs_ago);
}

/// Writes `bytes` to `tmp`, settled, and renames it over `path`.
fn rename_settled(tmp: &Path, bytes: &[u8], secs_ago: u64, path: &Path) {
    write_settled(tmp, bytes, secs_ago);
    fs::rename(tmp, path).unwrap();
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn open(path: &Path) -> Arc<ReloadingDb> {
    let db = Arc::new(ReloadingDb::open(path).unwrap());
    assert_eq!(country(&db), "DE");
    assert_unchanged(&db);
    db
}

/// A scratch directory with the old database, settled, at `GeoLite2-Country.mmdb`, opened.
fn open_old(dir_name: &str) -> (Dir, PathBuf, Arc<ReloadingDb>) {
    let dir = Dir::new(dir_name);
    let path = dir.path("GeoLite2-Country.mmdb");
    write_settled(&path, &old_db(), 60);
    let db = open(&path);
    (dir, path, db)
}

/// The next check loads the new database, and lookups answer from it.
fn assert_reloads_the_new(db: &ReloadingDb) {
    match db.check() {
        ReloadOutcome::Reloaded { build_epoch } => assert_eq!(build_epoch, NEW_EPOCH),
        other => panic!("expected a reload, got {other:?}"),
    }
    assert_eq!(country(db), "FR");
}

fn assert_unchanged(db: &ReloadingDb) {
    match db.check() {
        ReloadOutcome::Unchanged => {}
        other => panic!("expected no change, got {other:?}"),
    }
}

fn assert_refused_as_invalid(db: &ReloadingDb) {
    match db.check() {
        ReloadOutcome::Refused(GeoError::Invalid { .. }) => {}
        other => panic!("expected a refusal of an invalid file, got {other:?}"),
    }
}

#[test]
fn rename_over_the_path() {
    let (dir, path, db) = open_old("rename");
    let hammer = Hammer::start(&db);
    // An in-flight request keeps the database it took.
    let held = db.current();

    // Same size and the same mtime as the old file: only the inode tells.
    let tmp = dir.path(".GeoLite2-Country.mmdb.tmp");
    fs::write(&tmp, new_db()).unwrap();
    set_mtime(&tmp, modified(&path));
    assert_eq!(
        fs::metadata(&tmp).unwrap().len(),
        fs::metadata(&path).unwrap().len()
    );
    fs::rename(&tmp, &path).unwrap();

    assert_reloads_the_new(&db);
    assert_eq!(held.lookup(ip()).country_code(), Some("DE"));
    assert_unchanged(&db);
    hammer.finish();
}

#[test]
fn copy_over_in_place_with_a_truncated_intermediate_state() {
    let (_dir, path, db) = open_old("copy");
    let first_inode = inode(&path);
    let hammer = Hammer::start(&db);

    // `cp` truncates and writes: a check can see the first half.
    let new = new_db();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(&new[..new.len() / 2]).unwrap();
    f.flush().unwrap();
    age(&path, 50);
    // A half-written file is refused.
    assert_refused_as_invalid(&db);
    assert_eq!(country(&db), "DE");
    // The same half-written file is not read and reported again.
    assert_unchanged(&db);
    assert_eq!(country(&db), "DE");

    // The rest of the write changes size and mtime.
    f.write_all(&new[new.len() / 2..]).unwrap();
    drop(f);
    age(&path, 40);
    assert_eq!(inode(&path), first_inode);
    assert_reloads_the_new(&db);
    assert_unchanged(&db);
    hammer.finish();
}

#[test]
fn a_fresh_refused_file_is_looked_at_again() {
    let (_dir, path, db) = open_old("fresh");

    let new = new_db();
    fs::write(&path, &new[..new.len() / 2]).unwrap();
    // Just written: a writer may still be at it within the same mtime tick.
    assert_refused_as_invalid(&db);
    assert_refused_as_invalid(&db);
    assert_eq!(country(&db), "DE");
    age(&path, 30);
    assert_refused_as_invalid(&db);
    assert_unchanged(&db);
}

#[test]
fn a_fresh_load_is_confirmed_by_content_once_the_file_settles() {
    let (_dir, path, db) = open_old("settle");

    // A same-size file rewritten in place within one mtime tick: the identity the first
    // (fresh) load recorded stays the same, only the content differs.
    let new = new_db();
    let other = db_in(NEW_EPOCH + 1, "IT");
    assert_eq!(new.len(), other.len());
    let stamp = SystemTime::now();
    fs::write(&path, &other).unwrap();
    set_mtime(&path, stamp);
    match db.check() {
        ReloadOutcome::Reloaded { build_epoch } => assert_eq!(build_epoch, NEW_EPOCH + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(country(&db), "IT");
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&new).unwrap();
    drop(f);
    set_mtime(&path, stamp);
    // Not settled yet: nothing to see.
    assert_unchanged(&db);
    std::thread::sleep(Duration::from_millis(2100));
    assert_reloads_the_new(&db);
    // Confirmed now: no more reads.
    assert_unchanged(&db);
}

#[test]
fn kubernetes_data_symlink_swap() {
    let dir = Dir::new("k8s");
    let first = dir.path("..2026_11_23_10_00_00.000000001");
    let second = dir.path("..2026_11_23_10_05_00.000000002");
    fs::create_dir(&first).unwrap();
    fs::create_dir(&second).unwrap();
    write_settled(&first.join("GeoLite2-Country.mmdb"), &old_db(), 60);
    std::os::unix::fs::symlink(first.file_name().unwrap(), dir.path("..data")).unwrap();
    std::os::unix::fs::symlink(
        "..data/GeoLite2-Country.mmdb",
        dir.path("GeoLite2-Country.mmdb"),
    )
    .unwrap();
    let path = dir.path("GeoLite2-Country.mmdb");
    let db = open(&path);
    let hammer = Hammer::start(&db);

    // The kubelet writes the new directory, points a temporary link at it, renames the link
    // over `..data` and removes the old directory. Same size and mtime as the old file.
    let new_file = second.join("GeoLite2-Country.mmdb");
    fs::write(&new_file, new_db()).unwrap();
    set_mtime(&new_file, modified(&path));
    std::os::unix::fs::symlink(second.file_name().unwrap(), dir.path("..data_tmp")).unwrap();
    fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    fs::remove_dir_all(&first).unwrap();

    assert_reloads_the_new(&db);
    assert_unchanged(&db);
    hammer.finish();
}

#[test]
fn a_database_without_country_data_is_refused_and_the_old_kept() {
    let (dir, path, db) = open_old("asn");
    let hammer = Hammer::start(&db);

    let tmp = dir.path("asn.tmp");
    rename_settled(&tmp, &support::asn_db(), 50, &path);
    match db.check() {
        ReloadOutcome::Refused(GeoError::NoCountryData { path: p }) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    assert_eq!(country(&db), "DE");
    assert_unchanged(&db);

    // A later good file is picked up.
    rename_settled(&tmp, &new_db(), 40, &path);
    assert_reloads_the_new(&db);
    hammer.finish();
}

#[test]
fn a_missing_file_is_reported_once_and_its_return_picked_up() {
    let (_dir, path, db) = open_old("missing");
    let hammer = Hammer::start(&db);

    fs::remove_file(&path).unwrap();
    match db.check() {
        ReloadOutcome::Refused(GeoError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert_unchanged(&db);
    assert_eq!(country(&db), "DE");

    write_settled(&path, &new_db(), 30);
    assert_reloads_the_new(&db);
    hammer.finish();
}

#[test]
fn a_missing_or_broken_file_at_start_is_an_error() {
    let dir = Dir::new("start");
    let path = dir.path("GeoLite2-Country.mmdb");
    assert!(matches!(ReloadingDb::open(&path), Err(GeoError::Io { .. })));
    fs::write(&path, b"not a database").unwrap();
    assert!(matches!(
        ReloadingDb::open(&path),
        Err(GeoError::Invalid { .. })
    ));
    fs::write(&path, support::asn_db()).unwrap();
    assert!(matches!(
        ReloadingDb::open(&path),
        Err(GeoError::NoCountryData { .. })
    ));
    // A dangling symlink is a missing file.
    let link = dir.path("link.mmdb");
    std::os::unix::fs::symlink("nowhere.mmdb", &link).unwrap();
    assert!(matches!(ReloadingDb::open(&link), Err(GeoError::Io { .. })));
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

/// `f` on a thread of its own; a panic, not a hung test, when it takes longer than 10 s (a
/// FIFO opened for reading waits for a writer forever, a read of /dev/zero until memory ends).
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("stalled on a file that is not a regular file")
}

/// `db.check()` [`within`] 10 s.
fn check_within(db: &Arc<ReloadingDb>) -> ReloadOutcome {
    let db = db.clone();
    within(move || db.check())
}

fn assert_not_a_file(outcome: ReloadOutcome, path: &Path, what: &str) {
    match outcome {
        ReloadOutcome::Refused(GeoError::NotAFile { path: p, kind }) => {
            assert_eq!(p, path);
            assert_eq!(kind, what);
        }
        other => panic!("expected a refusal of {what}, got {other:?}"),
    }
}

#[test]
fn a_fifo_renamed_over_the_path_is_refused_at_once_and_the_old_kept() {
    let (dir, path, db) = open_old("fifo");
    let hammer = Hammer::start(&db);

    let tmp = dir.path("fifo.tmp");
    mkfifo(&tmp);
    fs::rename(&tmp, &path).unwrap();
    assert_not_a_file(check_within(&db), &path, "a FIFO");
    assert_eq!(country(&db), "DE");
    // Reported once, not on every check.
    assert!(matches!(check_within(&db), ReloadOutcome::Unchanged));

    // A good file renamed over the FIFO is picked up.
    rename_settled(&tmp, &new_db(), 40, &path);
    assert_reloads_the_new(&db);
    hammer.finish();
}

#[test]
fn a_symlink_to_a_device_is_refused_and_the_old_kept() {
    let dir = Dir::new("device");
    let path = dir.path("GeoLite2-Country.mmdb");
    let data = dir.path("db-1.mmdb");
    write_settled(&data, &old_db(), 60);
    std::os::unix::fs::symlink(&data, &path).unwrap();
    let db = open(&path);
    let hammer = Hammer::start(&db);

    // A symlink swap, as for a Kubernetes volume, but to /dev/zero.
    let tmp = dir.path("link.tmp");
    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    fs::rename(&tmp, &path).unwrap();
    assert_not_a_file(check_within(&db), &path, "a character device");
    assert_eq!(country(&db), "DE");
    assert!(matches!(check_within(&db), ReloadOutcome::Unchanged));

    // A directory is no better.
    std::os::unix::fs::symlink(&dir.0, &tmp).unwrap();
    fs::rename(&tmp, &path).unwrap();
    assert_not_a_file(db.check(), &path, "a directory");

    let new = dir.path("db-2.mmdb");
    write_settled(&new, &new_db(), 40);
    std::os::unix::fs::symlink(&new, &tmp).unwrap();
    fs::rename(&tmp, &path).unwrap();
    assert_reloads_the_new(&db);
    hammer.finish();
}

#[test]
fn a_fifo_or_a_device_at_start_is_an_error_not_a_hang() {
    let dir = Dir::new("start-special");
    let fifo = dir.path("fifo.mmdb");
    mkfifo(&fifo);
    let zero = dir.path("zero.mmdb");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for (path, what) in [(fifo, "a FIFO"), (zero, "a character device")] {
        let p = path.clone();
        match within(move || ReloadingDb::open(&p)) {
            Err(GeoError::NotAFile { kind, .. }) => assert_eq!(kind, what),
            other => panic!("{other:?}"),
        }
        let p = path.clone();
        match within(move || registry_edge_geo::GeoDb::open(&p)) {
            Err(e @ GeoError::NotAFile { .. }) => {
                assert_eq!(e.path(), path);
                assert!(e.to_string().contains(what), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
