//! Integration tests of registry-edge-geo against tiny MaxMind DBs built in the tests: lookups
//! of every address family, refusal of unusable files, and each kind of file replacement while
//! reader threads look addresses up. One binary; the modules live in `geo/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "geo/lookup.rs"]
mod lookup;
#[path = "geo/reload.rs"]
mod reload;
#[path = "geo/scratch.rs"]
mod scratch;
#[path = "geo/support.rs"]
mod support;
