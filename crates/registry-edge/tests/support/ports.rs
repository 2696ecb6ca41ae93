//! Loopback ports for the servers a test starts, and the `server:` section of a test edge's
//! configuration (shared by the `proxy` and `e2e` suites).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Every loopback port handed out in this process, by [`free_port`] or [`listener`].
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port free now and never handed out before in this process: tests run in parallel
/// threads, and the kernel may give a port just released to the next `bind(0)`, so two tests
/// could otherwise start servers on the same port.
pub fn free_port() -> u16 {
    let l = listener();
    l.local_addr().expect("local address").port()
}

/// A loopback listener on a port never handed out before in this process. A server a test starts
/// in-process binds through this, not `bind(0)` alone: [`free_port`] hands out ports that stay
/// closed until their server starts (an edge, or a port meant to refuse), and the kernel would
/// give such a port to the next `bind(0)`: an origin would then answer on a port meant to refuse,
/// or take an edge's listener before the edge binds it.
pub fn listener() -> TcpListener {
    // Ports already handed out are held while the kernel is asked again, so that it does not
    // give the same one back.
    let mut taken = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = l.local_addr().expect("local address").port();
        if GIVEN.lock().expect("port set").insert(port) {
            return l;
        }
        taken.push(l);
    }
}

/// The `server:` section of a test edge's configuration: two threads, a one-second shutdown,
/// `grace_period` before it, the pid file (`edge.pid`) and upgrade socket in `dir`; and the
/// HTTP/1 session that `REGISTRY_EDGE_TEST_HTTP1` names (`pingora`, the default, or `lean`), so
/// that the same suites run against either (scripts/test runs them against both).
pub fn server_section(dir: &str, grace_period: &str) -> String {
    server_section_with(dir, grace_period, &http1())
}

/// [`server_section`] with the HTTP/1 session `http1`.
pub fn server_section_with(dir: &str, grace_period: &str, http1: &str) -> String {
    format!(
        "server:\n  threads: 2\n  grace_period: {grace_period}\n  graceful_shutdown_timeout: 1s\n  pid_file: {dir}/edge.pid\n  upgrade_sock: {dir}/upgrade.sock\n  http1: {http1}\n"
    )
}

/// The HTTP/1 session under test: `REGISTRY_EDGE_TEST_HTTP1`, else `pingora`.
pub fn http1() -> String {
    match std::env::var("REGISTRY_EDGE_TEST_HTTP1") {
        Ok(v) if v == "lean" || v == "pingora" => v,
        Ok(v) => panic!("REGISTRY_EDGE_TEST_HTTP1={v:?}: expected `pingora` or `lean`"),
        Err(_) => "pingora".to_string(),
    }
}
