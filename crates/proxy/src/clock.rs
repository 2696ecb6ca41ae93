//! The process's two clocks.
//!
//! - [`now_ms`]: monotonic milliseconds since the process first read this clock, for instants
//!   kept in atomics (a peer's passive back-off, an auto-block's end, a rate-limited log line):
//!   a `u64` fits an `AtomicU64`, and the wall clock being set back or forth never moves it.
//! - [`since_epoch`]: the wall clock as time since the Unix epoch, for what leaves the process
//!   (access-log timestamps, the reload status file, the `config_loaded_at` gauge).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock's zero: its first reading in the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process first read this clock (monotonic).
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// The wall clock as time since the Unix epoch (zero for a clock set before it).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
