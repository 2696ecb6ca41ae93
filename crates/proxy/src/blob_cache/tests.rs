//! The store (crash safety, index, LRU), the fill (verification, the completing chunk held),
//! the claims.

use std::sync::Arc;
use std::time::Duration;

use super::store::Store;
use super::*;
use crate::testing::Scratch;

fn metrics() -> CacheMetrics {
    crate::metrics::Metrics::new().unwrap().blob_cache.clone()
}

fn digest_of(bytes: &[u8]) -> Digest {
    let h = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = h.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Digest::parse(&format!("sha256:{hex}")).unwrap()
}

fn cache(dir: &Scratch, budget: u64) -> BlobCache {
    let store = Arc::new(Store::open(&dir.0, budget, metrics()).unwrap());
    BlobCache::new(store, &[9; 32], 0, Duration::from_secs(600))
}

/// The fill of `d`, `size` bytes long, by the first asker; panics when it is not one.
fn started(c: &BlobCache, d: &Digest, size: usize) -> Fill {
    let Lookup::Fill(claim) = c.lookup(d) else {
        panic!("not a fill");
    };
    c.start_fill(claim, size as u64).unwrap()
}

/// Fills `bytes` through the cache as the response filters would, in `chunk`-byte pieces;
/// returns what the client got and whether the fill was refused as corrupt.
fn fill(c: &BlobCache, d: &Digest, bytes: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut f = started(c, d, bytes.len());
    let mut sent = Vec::new();
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    for (i, p) in pieces.iter().enumerate() {
        match f.chunk(Some(Bytes::copy_from_slice(p)), i + 1 == pieces.len()) {
            Step::Send(b) => sent.extend_from_slice(&b.unwrap_or_default()),
            Step::Last(b, stored) => {
                sent.extend_from_slice(&b.unwrap_or_default());
                assert_eq!(stored, CacheUse::Fill);
            }
            Step::Corrupt => return (sent, true),
        }
    }
    (sent, false)
}

/// The bytes of `d`'s entry once its fill has ended; panics when it was not stored with
/// `size` bytes.
fn stored_bytes(c: &BlobCache, d: &Digest, size: usize) -> Vec<u8> {
    settle(c, d);
    let Lookup::Hit(file, stored) = c.lookup(d) else {
        panic!("not stored");
    };
    assert_eq!(stored, size as u64);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut back).unwrap();
    back
}

/// Waits until the writer thread has stored (or given up) `d`.
fn settle(c: &BlobCache, d: &Digest) {
    for _ in 0..200 {
        if !c.fills.lock().unwrap().contains_key(d) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the fill of {d} did not end");
}

#[test]
fn digests_are_sha256_or_sha512_in_lower_hex() {
    assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_some());
    assert!(Digest::parse(&format!("sha512:{}", "f".repeat(128))).is_some());
    for bad in [
        format!("sha256:{}", "0".repeat(63)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha384:{}", "0".repeat(96)),
        format!("sha256:{}/..", "0".repeat(61)),
        "sha256".to_string(),
    ] {
        assert!(Digest::parse(&bad).is_none(), "{bad}");
    }
}

#[test]
fn a_verified_fill_is_stored_and_served_whole() {
    let dir = Scratch::new("blob-cache-fill");
    let c = cache(&dir, 1 << 20);
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let d = digest_of(&blob);
    let (sent, corrupt) = fill(&c, &d, &blob, 4096);
    assert!(!corrupt);
    assert_eq!(sent, blob, "the client got every byte, in order");
    assert_eq!(stored_bytes(&c, &d, blob.len()), blob);
    assert_eq!(c.metrics().entries.get(), 1);
    assert_eq!(c.metrics().disk_bytes.get(), blob.len() as i64);
    // Nothing left in tmp/.
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_fill_of_several_mib_in_odd_chunks_is_stored_byte_for_byte() {
    let dir = Scratch::new("blob-cache-spans");
    let c = cache(&dir, 64 << 20);
    let blob = crate::testing::patterned((5 << 20) + 12_345);
    let d = digest_of(&blob);
    let (sent, corrupt) = fill(&c, &d, &blob, 65_521);
    assert!(!corrupt);
    assert_eq!(sent, blob);
    assert!(
        stored_bytes(&c, &d, blob.len()) == blob,
        "the entry's bytes differ from the blob's"
    );
}

#[test]
fn a_writer_behind_paces_its_client_within_a_budget() {
    use super::{pace_budget, PACE_BUDGET, PACE_FROM};
    let pace = |backlog, spent| super::pace(backlog, spent, PACE_BUDGET);
    let none = Duration::ZERO;
    let ms = Duration::from_millis;
    // 2 s per fill, 4 s per GiB for larger blobs.
    assert_eq!(pace_budget(80 << 20), PACE_BUDGET);
    assert_eq!(pace_budget(1 << 30), Duration::from_secs(4));
    assert_eq!(pace_budget(5 << 30), Duration::from_secs(20));
    assert_eq!(
        super::pace(
            PACE_FROM + (40 << 20),
            Duration::from_secs(3),
            pace_budget(1 << 30)
        ),
        Some(ms(40))
    );
    assert_eq!(pace(0, none), None);
    assert_eq!(pace(PACE_FROM, none), None);
    // 1 ms per MiB beyond, at most 50 ms before one chunk.
    assert_eq!(pace(PACE_FROM + (4 << 20), none), Some(ms(4)));
    assert_eq!(pace(PACE_FROM + (512 << 20), none), Some(ms(50)));
    assert!(pace(PACE_FROM + (8 << 20), none) > pace(PACE_FROM + (2 << 20), none));
    // Never past the fill's budget.
    assert_eq!(
        pace(PACE_FROM + (40 << 20), PACE_BUDGET - ms(3)),
        Some(ms(3))
    );
    assert_eq!(pace(PACE_FROM + (40 << 20), PACE_BUDGET), None);
    // A disk that takes nothing: until the writer is 64 MiB behind (the fill given up), the
    // client is held back the budget in all, and no more.
    let (mut spent, mut backlog) = (none, 0u64);
    while backlog < 64 << 20 {
        spent += pace(backlog, spent).unwrap_or_default();
        backlog += 64 << 10;
    }
    assert_eq!(spent, PACE_BUDGET);
}

#[test]
fn a_fill_whose_disk_takes_nothing_paces_then_gives_up_and_the_client_gets_every_byte() {
    let dir = Scratch::new("blob-cache-pace");
    let c = cache(&dir, 1 << 30);
    c.store
        .hold_writes
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mib = Bytes::from(vec![7u8; 1 << 20]);
    let blob: Vec<u8> = mib.iter().copied().cycle().take(80 << 20).collect();
    let d = digest_of(&blob);
    let mut f = started(&c, &d, blob.len());
    let (mut sent, mut paced, mut last) = (0usize, Duration::ZERO, None);
    for i in 0..80 {
        match f.chunk(Some(mib.clone()), i == 79) {
            Step::Send(b) => sent += b.map_or(0, |b| b.len()),
            Step::Last(b, stored) => {
                sent += b.map_or(0, |b| b.len());
                last = Some(stored);
            }
            Step::Corrupt => panic!("corrupt"),
        }
        let delay = if i < 79 { f.pace() } else { None };
        // Nothing while the writer is at most 16 MiB behind; then more the further behind;
        // nothing once the writer fell 64 MiB behind and the fill was given up.
        match i + 1 {
            ..=16 => assert_eq!(delay, None, "chunk {i}"),
            17..=63 => assert!(delay.is_some(), "chunk {i}"),
            65.. => assert_eq!(delay, None, "chunk {i}"),
            _ => {}
        }
        paced += delay.unwrap_or_default();
    }
    assert!(
        paced > Duration::ZERO && paced <= super::PACE_BUDGET,
        "{paced:?}"
    );
    assert_eq!(sent, blob.len(), "the client got every byte");
    assert_eq!(last, Some(CacheUse::Miss), "given up, not stored");
    c.store
        .hold_writes
        .store(false, std::sync::atomic::Ordering::Relaxed);
    settle(&c, &d);
    assert!(matches!(c.lookup(&d), Lookup::Fill(_)), "nothing stored");
}

#[test]
fn corrupt_bytes_are_never_stored_and_the_last_chunk_is_withheld() {
    let dir = Scratch::new("blob-cache-corrupt");
    let c = cache(&dir, 1 << 20);
    let blob = vec![1u8; 50_000];
    let d = digest_of(&blob);
    let mut wrong = blob.clone();
    wrong[49_999] = 2;
    let (sent, corrupt) = fill(&c, &d, &wrong, 10_000);
    assert!(corrupt);
    // The client got at most all but the last chunk: never a complete-looking body.
    assert!(sent.len() <= 40_000, "{}", sent.len());
    settle(&c, &d);
    assert!(matches!(c.lookup(&d), Lookup::Fill(_)), "nothing stored");
    // A body of the wrong length (same prefix) is refused too.
    let (_, corrupt) = fill(&c, &d, &blob[..40_000], 10_000);
    assert!(corrupt);
    settle(&c, &d);
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
}

/// Whether `step` sends exactly `want` (nothing when `None`) and goes on.
fn sends(step: Step, want: Option<&[u8]>) -> bool {
    match step {
        Step::Send(b) => b.as_deref() == want,
        _ => false,
    }
}

#[test]
fn chunks_go_at_once_but_the_one_that_completes_the_body_waits_for_the_hash() {
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let d = digest_of(&blob);
    let pieces: Vec<Bytes> = blob.chunks(10_000).map(Bytes::copy_from_slice).collect();
    // The end with the last chunk (the edge's own exchange), or on its own after it
    // (pingora's proxy path), where the completing chunk is held, then sent with the end.
    for end_with_last in [true, false] {
        let dir = Scratch::new("blob-cache-stream");
        let c = cache(&dir, 1 << 20);
        let mut f = started(&c, &d, blob.len());
        for p in &pieces[..4] {
            assert!(sends(f.chunk(Some(p.clone()), false), Some(&p[..])));
        }
        let last = if end_with_last {
            f.chunk(Some(pieces[4].clone()), true)
        } else {
            assert!(sends(f.chunk(Some(pieces[4].clone()), false), None));
            assert!(sends(f.chunk(Some(Bytes::new()), false), None));
            f.chunk(None, true)
        };
        match last {
            Step::Last(Some(b), CacheUse::Fill) => assert_eq!(b, pieces[4]),
            other => panic!("{other:?}"),
        }
        drop(f);
        assert_eq!(stored_bytes(&c, &d, blob.len()), blob);
    }
}

#[test]
fn bytes_past_the_declared_length_are_not_the_blob() {
    let dir = Scratch::new("blob-cache-long");
    let c = cache(&dir, 1 << 20);
    let blob = vec![7u8; 40_000];
    let d = digest_of(&blob);
    let mut f = started(&c, &d, blob.len());
    let mut sent = 0;
    for p in blob.chunks(10_000) {
        if let Step::Send(b) = f.chunk(Some(Bytes::copy_from_slice(p)), false) {
            sent += b.map_or(0, |b| b.len());
        }
    }
    assert_eq!(sent, 30_000, "the completing chunk left before the end");
    assert_eq!(f.chunk(Some(Bytes::from_static(b"x")), true), Step::Corrupt);
    drop(f);
    settle(&c, &d);
    assert!(matches!(c.lookup(&d), Lookup::Fill(_)), "nothing stored");
}

#[test]
fn one_fill_per_digest_and_waiters_wake_when_it_ends() {
    let dir = Scratch::new("blob-cache-claims");
    let c = cache(&dir, 1 << 20);
    let blob = vec![3u8; 1000];
    let d = digest_of(&blob);
    let Lookup::Fill(claim) = c.lookup(&d) else {
        panic!("first asker fills");
    };
    let Lookup::Wait(mut waiting) = c.lookup(&d) else {
        panic!("second asker waits");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // While the claim is held, a waiter waits.
    rt.block_on(async {
        let early = tokio::time::timeout(Duration::from_millis(50), waiting.ended.changed()).await;
        assert!(
            early.is_err(),
            "a waiter woke while the fill was held: {early:?}"
        );
    });
    // The filler goes away without filling: the waiter wakes and may fill itself.
    drop(claim);
    rt.block_on(async {
        let woke = tokio::time::timeout(Duration::from_secs(1), waiting.ended.changed()).await;
        assert!(matches!(woke, Ok(Err(_))), "the claim's end wakes waiters");
    });
    assert!(matches!(c.lookup(&d), Lookup::Fill(_)));
}

#[test]
fn least_recently_used_entries_go_first_within_the_budget() {
    let dir = Scratch::new("blob-cache-lru");
    let c = cache(&dir, 25_000);
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10_000]).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| digest_of(b)).collect();
    for (b, d) in blobs.iter().zip(&ds).take(2) {
        fill(&c, d, b, 4096);
        settle(&c, d);
    }
    // Use the first, then add a third: the second (least recently used) goes.
    assert!(matches!(c.lookup(&ds[0]), Lookup::Hit(..)));
    fill(&c, &ds[2], &blobs[2], 4096);
    settle(&c, &ds[2]);
    assert!(matches!(c.lookup(&ds[0]), Lookup::Hit(..)));
    assert!(matches!(c.lookup(&ds[2]), Lookup::Hit(..)));
    assert!(matches!(c.lookup(&ds[1]), Lookup::Fill(_)));
    assert!(!dir.join("sha256").join(ds[1].hex()).exists());
    assert_eq!(c.store.used(), 20_000);
    assert_eq!(c.metrics().evictions.get(), 1);
    // Too big for the budget: not even started.
    let big = vec![0u8; 30_000];
    let Lookup::Fill(claim) = c.lookup(&digest_of(&big)) else {
        panic!()
    };
    assert!(matches!(c.start_fill(claim, 30_000), Err(CacheUse::Miss)));
}

#[test]
fn the_index_is_rebuilt_from_the_directory_and_dead_fills_are_removed() {
    let dir = Scratch::new("blob-cache-index");
    let blob = vec![5u8; 2048];
    let d = digest_of(&blob);
    {
        let c = cache(&dir, 1 << 20);
        fill(&c, &d, &blob, 1000);
        settle(&c, &d);
    }
    // What a crashed fill (even one named with this very pid: pids repeat) and a stray file
    // leave behind, and a fill in progress: its writer holds it locked.
    std::fs::write(dir.join("tmp").join("999999999-1-0"), b"partial").unwrap();
    std::fs::write(
        dir.0
            .join("tmp")
            .join(format!("{}-1-5", std::process::id())),
        b"x",
    )
    .unwrap();
    std::fs::write(dir.join("tmp").join("junk"), b"x").unwrap();
    let mine = dir.join("tmp").join("12-34-56");
    std::fs::write(&mine, b"a fill in progress").unwrap();
    let writer = std::fs::File::open(&mine).unwrap();
    writer.try_lock().unwrap();
    std::fs::write(dir.join("sha256").join("not-a-digest"), b"x").unwrap();
    let c = cache(&dir, 1 << 20);
    assert!(matches!(c.lookup(&d), Lookup::Hit(_, 2048)));
    assert_eq!(c.metrics().entries.get(), 1);
    let left: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![mine], "only the fill its writer holds stays");
    drop(writer);
    // An empty entry (what a machine crash can leave) is not indexed.
    let empty = format!("sha256:{}", "e".repeat(64));
    std::fs::write(dir.join("sha256").join("e".repeat(64)), b"").unwrap();
    let c2 = cache(&dir, 1 << 20);
    assert!(matches!(
        c2.lookup(&Digest::parse(&empty).unwrap()),
        Lookup::Fill(_)
    ));
    // An entry whose file changed size is dropped, not served.
    std::fs::write(dir.join("sha256").join(d.hex()), b"short").unwrap();
    assert!(matches!(c.lookup(&d), Lookup::Fill(_)));
    assert_eq!(c.metrics().errors[1].get(), 1);
}

#[test]
fn an_unwritable_cache_is_bypassed() {
    let dir = Scratch::new("blob-cache-unwritable");
    let c = cache(&dir, 1 << 20);
    // The tmp directory replaced by a file: no fill can start.
    std::fs::remove_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("tmp"), b"").unwrap();
    let blob = vec![1u8; 100];
    let Lookup::Fill(claim) = c.lookup(&digest_of(&blob)) else {
        panic!()
    };
    assert!(matches!(c.start_fill(claim, 100), Err(CacheUse::Bypass)));
    assert_eq!(c.metrics().errors[0].get(), 1);
    // The claim went with it: the next asker may try.
    assert!(matches!(c.lookup(&digest_of(&blob)), Lookup::Fill(_)));
}
