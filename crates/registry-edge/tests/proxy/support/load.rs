//! Load that runs across an upgrade or a reload: a large download at a client's pace and a
//! stream of small requests, and the check that they went through unharmed.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::{get, read_response};
use super::origin::{is_pattern, SAS};

/// A large blob downloading at a client's pace (8 MiB, then a pause): (bytes, all bytes right).
pub fn slow_download(
    port: u16,
    data_host: &str,
    size: u64,
) -> std::thread::JoinHandle<(u64, bool)> {
    let data_host = data_host.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!("GET /blob?{SAS}&size={size} HTTP/1.1\r\nHost: {data_host}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let head = read_response(&mut r, true);
        assert_eq!(head.status, 200);
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut ok = true;
        while got < size {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "download cut at {got}");
            ok &= is_pattern(&buf[..n], got);
            got += n as u64;
            if got % (8 << 20) < n as u64 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (got, ok)
    })
}

/// `GET /v2/` (a 401 challenge) on a new connection each, until `stop`: (answered, failures).
pub fn small_requests(
    port: u16,
    host: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    let host = host.to_owned();
    std::thread::spawn(move || {
        let (mut done, mut failed) = (0u32, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let r = std::panic::catch_unwind(|| get(port, &host, "/v2/", "").status);
            match r {
                Ok(401) => done += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (done, failed)
    })
}

/// The load that ran across `what` went through unharmed: no small request failed, enough of
/// them ran, and the download arrived whole with its bytes unchanged.
pub fn assert_load_unharmed(
    what: &str,
    done: u32,
    failed: &[String],
    got: u64,
    intact: bool,
    size: u64,
) {
    assert!(
        failed.is_empty(),
        "{} of {} small requests failed across {what}: {failed:?}",
        failed.len(),
        done + failed.len() as u32
    );
    assert!(done > 10, "{done}");
    assert_eq!(got, size);
    assert!(intact, "the download's bytes changed across {what}");
}
