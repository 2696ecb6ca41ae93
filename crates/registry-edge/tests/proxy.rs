//! registry-edge as a running process in front of registry-shaped origins started here: a login
//! origin (401 with a realm on itself, 307 to the data origin, manifests, uploads) and a data origin
//! that behaves like Azure Storage (400 with `Authorization`, 403 without a signature, Range, large
//! blobs). Real sockets on loopback; curl where TLS and HTTP/2 matter.
//!
//! One test binary; a module per capability, each test with an edge of its own. What they share
//! (the origins, the edge launcher, the HTTP client) is in `proxy/support/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/ports.rs"]
mod ports;

#[path = "proxy/support/mod.rs"]
mod support;

/// Routing, rewrites, forwarding, uploads, the edge's own answers, upstream failures, listeners.
#[path = "proxy/core.rs"]
mod core;
/// HTTP/1 framing, the same table against both HTTP/1 sessions.
#[path = "proxy/framing.rs"]
mod framing;
/// HTTP/2 limits: body deadlines, the stream cap.
#[path = "proxy/h2.rs"]
mod h2;
/// No upstream name reaches a client.
#[path = "proxy/identity.rs"]
mod identity;
/// Downstream protection: slow heads, connection reuse and idle limits, stalled and slow readers.
#[path = "proxy/limits.rs"]
mod limits;
/// The process log: secrets redacted on every error path, client floods rate-limited.
#[path = "proxy/logs.rs"]
mod logs;
/// Metrics, the access log, security events.
#[path = "proxy/observe.rs"]
mod observe;
/// GeoIP and the access policy.
#[path = "proxy/policy.rs"]
mod policy;
/// Two regions: nearest healthy, failover and back.
#[path = "proxy/regions.rs"]
mod regions;
/// What changes while the edge runs: its configuration, certificates, the GeoIP database.
#[path = "proxy/reload.rs"]
mod reload;
/// A graceful upgrade under load.
#[path = "proxy/upgrade.rs"]
mod upgrade;
