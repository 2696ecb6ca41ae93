//! Decides whether the rewrite engine may run on every response: applying the compiled rules to
//! a recorded ACR response must cost under 100 ns when there is nothing to rewrite (a 200
//! manifest) and under 500 ns for one rewrite (the 307 blob redirect's Location with its SAS
//! query, which only the derived rules take; the same redirect as a 302, which the reference
//! architecture's data rule takes when present; the 401 challenge's realm). Each case runs with
//! the derived registry rules alone and with the reference architecture's three App Gateway
//! rules in front of them.
//!
//! Timed: `Engine::apply_response` only. Each iteration gets its own copy of the recorded
//! header map, so a rewrite is measured on the same input every time; copies are made and
//! dropped outside the timed section, in batches of 64 that stay in cache, as the header a proxy
//! has just parsed would be. (Criterion's `iter_batched_ref` makes thousands of copies up front,
//! tens of MB, and partly times cache misses and page faults instead of the engine.)
//!
//! Run: `cargo bench -p registry-edge-benches --bench rewrite`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use registry_edge_benches::acr;
use registry_edge_rewrite::{Engine, RequestContext};

/// A recorded response: status and headers.
type Fixture = fn() -> (u16, HeaderMap);

#[expect(
    clippy::panic,
    reason = "start-up: a bench whose configuration does not compile has nothing to measure"
)]
fn compile(with_seed_rules: bool) -> Engine {
    let rules = if with_seed_rules {
        acr::seed_rules()
    } else {
        Vec::new()
    };
    match Engine::compile(&rules, Some(&acr::derived())) {
        Ok(engine) => engine,
        Err(errors) => panic!("bench configuration does not compile: {errors:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let request_headers = HeaderMap::new();
    let ctx = RequestContext {
        client_ip: "203.0.113.9",
        host: acr::PUBLIC,
        request_uri: "/v2/hello-world/blobs/sha256:2db29710123e3e53a794f2694094b9b4338aa9ee5c40b930cb8063a1be392c54",
        scheme: "https",
        public_port: None,
        public_origin: "https://acr-secure.contoso.com",
        request_headers: &request_headers,
    };
    let cases: [(&str, Fixture, usize); 4] = [
        ("nothing-to-rewrite-200-manifest", acr::manifest, 0),
        ("location-307-data-sas", acr::blob_redirect, 1),
        ("location-302-data-sas", acr::blob_redirect_302, 1),
        ("realm-401", acr::challenge, 1),
    ];
    for (config, with_seed_rules) in [("derived", false), ("seed+derived", true)] {
        let engine = compile(with_seed_rules);
        let mut group = c.benchmark_group(format!("rewrite/{config}"));
        for (name, response, expected) in cases {
            let (status, recorded) = response();
            // Guard against benchmarking a configuration that silently stopped matching.
            let mut check = recorded.clone();
            let fired = engine.apply_response(status, &mut check, &ctx).len();
            assert_eq!(fired, expected, "{config}/{name}: {fired} rules fired");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    timed_applies(iters, &recorded, |headers| {
                        engine.apply_response(black_box(status), black_box(headers), &ctx)
                    })
                });
            });
        }
        group.finish();
    }
}

/// Copies made per timed batch: enough to make the clock's cost negligible, few enough (about
/// 100 KiB) to stay in L2 like a response header that was just parsed.
const BATCH: usize = 64;

/// Runs `apply` `iters` times, each on a fresh copy of `recorded`, and returns the time spent
/// in `apply` alone: copies are made and dropped between timed batches.
fn timed_applies<R>(
    iters: u64,
    recorded: &HeaderMap,
    mut apply: impl FnMut(&mut HeaderMap) -> R,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut copies: Vec<HeaderMap> = Vec::new();
    let mut remaining = iters;
    while remaining > 0 {
        let n = remaining.min(BATCH as u64);
        // The next batch is made before the last one is freed, so the allocator never hands
        // memory back to the kernel between batches and the timed section takes no page faults.
        let fresh = (0..n).map(|_| recorded.clone()).collect();
        drop(std::mem::replace(&mut copies, fresh));
        let start = Instant::now();
        for headers in &mut copies {
            black_box(apply(headers));
        }
        total += start.elapsed();
        remaining -= n;
    }
    total
}

criterion_group!(benches, bench);
criterion_main!(benches);
