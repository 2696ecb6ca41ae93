//! The lean HTTP/1 session against pingora's on arbitrary bytes: the first request in the input,
//! read by each session's head parser and body framing as the proxy would read it
//! (`registry_edge_proxy::http1::differential`). Where both accept, they must read the same
//! request (method, target, version, every field, the body's bytes), since that is what the edge
//! forwards; where they differ, it must be the lean session that refuses. Neither may panic.
//!
//! Run (in `fuzz/`), seeds in `fuzz/seeds/http1_differential/`:
//! `mkdir -p corpus/http1_differential && cp seeds/http1_differential/* corpus/http1_differential/`
//! `cargo +nightly fuzz run http1_differential corpus/http1_differential -- -dict=seeds/http1_differential.dict -max_len=2048`

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry_edge_proxy::http1::differential;

fuzz_target!(|data: &[u8]| {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| differential::runtime().expect("a current-thread runtime"));
    if let Err(e) = differential::compare(rt, data) {
        panic!("{e}");
    }
});
