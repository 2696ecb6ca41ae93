//! The blob cache (docs/blob-cache.md): blobs served from a digest-verified disk cache, only to
//! requests the registry has just authorized.
//!
//! - **Authorization stays the registry's.** A blob `GET` on the login side goes to the registry
//!   as always, with the client's credentials; only when the registry answers it with a redirect
//!   to a data endpoint does the edge append a cache token to the rewritten `Location`
//!   ([`token`]). The data-host request that carries a valid token may be served from the cache:
//!   that URL is the registry's own answer to this client for this digest, signed by the edge and
//!   bounded by the SAS expiry. A 401, 403 or 404 from the registry reaches the client unchanged
//!   and carries no token; a URL without a valid token is proxied as before.
//! - **Content addressed and verified.** Entries are keyed by digest, shared across
//!   repositories, and appear only after their bytes hashed to it ([`store`]). A fill streams
//!   to its client as bytes arrive, but for the chunk that completes the body, held until the
//!   body is verified: a wrong body never looks complete, the transfer is cut.
//! - **One fill per digest.** Other requests for a digest being filled wait for it (at most the
//!   listener's idle time: a fill goes at its own client's pace), then read the entry.
//! - **Never a failed pull because of the cache.** An unwritable or full disk, a writer that
//!   falls behind, a corrupt entry: the transfer goes on from the upstream, counted and logged.

pub mod fetch;
mod fill_file;
mod pages;
pub mod relay;
pub mod serve;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{Counter, IntCounter, IntGauge};

use crate::outcome::labelled;
use store::{FillEnd, FillWriter, Store};
use token::Signer;

/// A blob digest the cache keys by: `sha256:` and 64, or `sha512:` and 128, lower-case hex
/// digits (the forms registries write).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let (alg, hex) = s.split_once(':')?;
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return None,
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        (hex.len() == len && hex.bytes().all(lower_hex)).then(|| Digest(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }

    fn hasher(&self) -> ring::digest::Context {
        let alg = if self.algorithm() == "sha512" {
            &ring::digest::SHA512
        } else {
            &ring::digest::SHA256
        };
        ring::digest::Context::new(alg)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

labelled! {
    /// How a blob request with a cache token was served (`registry_edge_blob_cache_requests_total`,
    /// the access log's `cache`).
    pub enum CacheUse {
        /// From a complete entry.
        Hit => "hit",
        /// From the upstream, and stored.
        Fill => "fill",
        /// From the upstream, not stored: too small, a range, another fill in progress that did
        /// not finish in time, an upstream error.
        Miss => "miss",
        /// From the upstream, whose bytes did not hash to the digest: the transfer was cut.
        Corrupt => "corrupt",
        /// From the upstream, not stored: the disk refused.
        Bypass => "bypass",
    }
}

/// The cache's metric handles (registered once in `metrics::Metrics`).
#[derive(Clone)]
pub struct CacheMetrics {
    /// By [`CacheUse`].
    pub requests: Vec<IntCounter>,
    /// `[cache, upstream]`: body bytes of token-carrying blob requests.
    pub bytes: [IntCounter; 2],
    pub verification_failures: IntCounter,
    pub evictions: IntCounter,
    /// `[write, read]` (store::ErrorKind).
    pub errors: [IntCounter; 2],
    pub disk_bytes: IntGauge,
    pub entries: IntGauge,
    /// Seconds fills held their clients back for a writer behind the network ([`pace`]).
    pub paced_seconds: Counter,
    /// Fill bytes the client was sent from pipes ([`relay`]).
    pub relayed_bytes: IntCounter,
}

/// A fill in progress, as others see it: woken when it ends (its sender dropped).
#[derive(Clone)]
pub struct InProgress {
    pub ended: tokio::sync::watch::Receiver<()>,
}

pub struct BlobCache {
    pub store: Arc<Store>,
    signer: Signer,
    pub min_size: u64,
    pub ttl: Duration,
    /// `max_size` of this configuration.
    budget: u64,
    fills: Arc<Mutex<HashMap<Digest, InProgress>>>,
}

/// The right to fill a digest, held by one request; dropping it ends the fill (others stop
/// waiting).
pub struct Claim {
    digest: Digest,
    fills: Arc<Mutex<HashMap<Digest, InProgress>>>,
    _tx: tokio::sync::watch::Sender<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }
}

/// What a request with a valid token finds.
pub enum Lookup {
    /// A complete entry: the open file and its size.
    Hit(std::fs::File, u64),
    /// Nobody fills it: this request may (holding the claim).
    Fill(Claim),
    /// Another request is filling it: wait on this, then look again.
    Wait(InProgress),
}

impl BlobCache {
    /// The cache over `store` (kept across reloads) with these settings.
    pub fn new(store: Arc<Store>, key: &[u8], min_size: u64, ttl: Duration) -> BlobCache {
        BlobCache {
            budget: store.budget(),
            store,
            signer: Signer::new(key),
            min_size,
            ttl,
            fills: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same store and fills in progress, with another configuration's settings. The
    /// budget applies when the new configuration is in force ([`BlobCache::in_force`]): a
    /// refused reload changes nothing.
    pub fn renewed(&self, key: &[u8], min_size: u64, ttl: Duration, budget: u64) -> BlobCache {
        BlobCache {
            store: self.store.clone(),
            signer: Signer::new(key),
            min_size,
            ttl,
            budget,
            fills: self.fills.clone(),
        }
    }

    /// This configuration has just been put in force: its budget applies.
    pub fn in_force(&self) {
        self.store.set_budget(self.budget);
    }

    pub fn metrics(&self) -> &CacheMetrics {
        &self.store.metrics
    }

    /// `location` with a token for `digest` (docs in [`token`]); `None` when the URL's SAS has
    /// expired already.
    pub fn sign(&self, location: &str, digest: &Digest) -> Option<String> {
        let now = crate::clock::since_epoch().as_secs();
        self.signer.sign(location, digest, now, self.ttl.as_secs())
    }

    /// The token of a data-host request target, when valid now.
    pub fn verify(&self, target: &str) -> Option<Digest> {
        self.signer
            .verify(target, crate::clock::since_epoch().as_secs())
    }

    pub fn lookup(&self, d: &Digest) -> Lookup {
        if let Some((file, size)) = self.store.open_entry(d) {
            return Lookup::Hit(file, size);
        }
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = fills.get(d) {
            return Lookup::Wait(rx.clone());
        }
        // A fill may have stored the entry and ended since the first look.
        if let Some((file, size)) = self.store.open_entry(d) {
            return Lookup::Hit(file, size);
        }
        let (tx, ended) = tokio::sync::watch::channel(());
        fills.insert(d.clone(), InProgress { ended });
        Lookup::Fill(Claim {
            digest: d.clone(),
            fills: self.fills.clone(),
            _tx: tx,
        })
    }

    /// Starts filling from a response of `size` bytes, holding the claim until the writer
    /// ends; or why not (the claim is released, waiters look for themselves): too small or over
    /// the budget (`Miss`), the disk refused (`Bypass`).
    pub fn start_fill(&self, claim: Claim, size: u64) -> Result<Fill, CacheUse> {
        if size < self.min_size || !self.store.fits(size) {
            return Err(CacheUse::Miss);
        }
        let digest = claim.digest.clone();
        let writer = self
            .store
            .begin_fill(&digest, size, move |end| {
                if end != FillEnd::Stored {
                    log::debug!("blob cache: fill of {} not stored: {end:?}", claim.digest);
                }
                drop(claim);
            })
            .ok_or(CacheUse::Bypass)?;
        Ok(Fill {
            hasher: digest.hasher(),
            digest,
            expected: size,
            seen: 0,
            held: None,
            writer,
            paced: Duration::ZERO,
        })
    }
}

/// A fill streaming through `response_body_filter`: every chunk is hashed and queued for the
/// writer; the client gets each chunk at once, but for the one that completes the body's
/// declared length, which it gets only once the whole body hashed to the digest. Until then it
/// lacks at least one byte: never a complete-looking body that is not the blob.
pub struct Fill {
    digest: Digest,
    hasher: ring::digest::Context,
    expected: u64,
    seen: u64,
    held: Option<Bytes>,
    writer: FillWriter,
    /// Delay [`Fill::pace`] has asked for so far.
    paced: Duration,
}

/// A fill's writer this far behind the network makes the fill hold its client back.
pub const PACE_FROM: u64 = 16 << 20;
/// Delay before a chunk per MiB the writer is behind beyond [`PACE_FROM`].
const PACE_PER_MIB: Duration = Duration::from_millis(1);
/// Longest delay before one chunk.
const PACE_MAX: Duration = Duration::from_millis(50);
/// Most delay one fill adds in all, at least ([`pace_budget`]). Past its budget, a writer that
/// keeps falling behind gives the fill up when it is 64 MiB behind (the client's transfer goes
/// on at the network's pace).
pub const PACE_BUDGET: Duration = Duration::from_secs(2);
/// Most delay per GiB of the blob, for larger blobs: fills are written around the page cache,
/// at the disk's own speed, so a disk at a fifth of the network's (200 MB/s against 1 GB/s)
/// still stores the blob.
pub const PACE_BUDGET_PER_GIB: Duration = Duration::from_secs(4);

/// The delay a fill of `size` bytes may add to its client's transfer in all.
pub fn pace_budget(size: u64) -> Duration {
    PACE_BUDGET_PER_GIB
        .mul_f64(size as f64 / f64::from(1u32 << 30))
        .max(PACE_BUDGET)
}

/// The delay before the client's next chunk for a writer `backlog` bytes behind, after `spent`
/// of the fill's `budget`: nothing up to [`PACE_FROM`], then growing with the backlog, so that the
/// client goes at the disk's pace while the disk is briefly slower than the network (another
/// process's write-back) and the blob is still stored.
pub fn pace(backlog: u64, spent: Duration, budget: Duration) -> Option<Duration> {
    let over = backlog.saturating_sub(PACE_FROM);
    let d = PACE_PER_MIB
        .mul_f64(over as f64 / f64::from(1u32 << 20))
        .min(PACE_MAX)
        .min(budget.saturating_sub(spent));
    (!d.is_zero()).then_some(d)
}

/// What a fill says of a body chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the client (possibly nothing yet).
    Send(Option<Bytes>),
    /// The body was the blob: send the rest; how it was stored.
    Last(Option<Bytes>, CacheUse),
    /// The body is not the blob: cut the transfer.
    Corrupt,
}

impl Fill {
    /// How long to hold the client's next chunk back so the writer catches up ([`pace`]).
    pub fn pace(&mut self) -> Option<Duration> {
        let d = pace(
            self.writer.backlog(),
            self.paced,
            pace_budget(self.expected),
        )?;
        self.paced += d;
        Some(d)
    }

    /// One body chunk from the upstream; `end`: the last one.
    pub fn chunk(&mut self, data: Option<Bytes>, end: bool) -> Step {
        let mut out = None;
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            self.seen += d.len() as u64;
            // More bytes than the response declared are not the blob (pingora's framing stops
            // at Content-Length; the edge's own exchange reads no further either).
            if self.seen > self.expected {
                return Step::Corrupt;
            }
            self.hasher.update(&d);
            self.writer.write(d.clone());
            if self.seen < self.expected {
                out = Some(d);
            } else {
                self.held = Some(d);
            }
        }
        if !end {
            return Step::Send(out);
        }
        let hash = std::mem::replace(&mut self.hasher, self.digest.hasher()).finish();
        let ok = self.seen == self.expected
            && token::unhex(self.digest.hex()).as_deref() == Some(hash.as_ref());
        if !ok {
            return Step::Corrupt;
        }
        let writer = std::mem::replace(&mut self.writer, FillWriter::inactive());
        let stored = match writer.commit() {
            FillEnd::Stored => CacheUse::Fill,
            FillEnd::WriteError => CacheUse::Bypass,
            FillEnd::GivenUp => CacheUse::Miss,
        };
        // The chunk that completed the body, held until now.
        Step::Last(self.held.take(), stored)
    }
}

#[cfg(test)]
mod tests;
