//! A graceful upgrade under load: `registry-edge upgrade` starts a new process that takes the
//! listening sockets over while the old one finishes what it serves; no request fails, and a
//! download in flight arrives whole.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    assert_load_unharmed, slow_download, small_requests, start_edge_full, HTTP_OPTS,
};

/// Sends SIGINT to a process when dropped.
struct Interrupt(u32);

impl Drop for Interrupt {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn graceful_upgrade_under_load() {
    // A longer grace period than the download takes.
    let edge = start_edge_full("upgrade", HTTP_OPTS, "", "30s");
    let config = edge.dir.join("edge.yaml");
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let old_pid = edge.child.id();
    assert_eq!(
        std::fs::read_to_string(edge.dir.join("edge.pid"))
            .unwrap()
            .trim(),
        old_pid.to_string()
    );

    // A large blob downloading at a client's pace, and a stream of small requests.
    let size: u64 = 256 << 20;
    let port = edge.http;
    let download = slow_download(port, &data_host, size);
    let stop = Arc::new(AtomicBool::new(false));
    let small = small_requests(port, &host, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    // The new process inherits `upgrade`'s stdio: give it files, not pipes this test would wait on.
    let status = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["upgrade", "-c"])
        .arg(&config)
        .stdout(std::fs::File::create(edge.dir.join("upgrade.out")).unwrap())
        .stderr(std::fs::File::create(edge.dir.join("upgrade.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(edge.dir.join("upgrade.err")).unwrap_or_default()
    );
    let new_pid: u32 = std::fs::read_to_string(edge.dir.join("edge.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    // The new process (started through `upgrade`) is stopped whatever happens: its grace period
    // is long, so SIGINT (fast shutdown).
    let _new = Interrupt(new_pid);
    // The old process drains: /readyz is served by the new one now.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (done, failed) = small.join().unwrap();
    let (got, ok) = download.join().unwrap();
    assert_load_unharmed("the upgrade", done, &failed, got, ok, size);
    eprintln!(
        "upgrade under load: {done} small requests, none failed; {size}-byte download intact"
    );
}
