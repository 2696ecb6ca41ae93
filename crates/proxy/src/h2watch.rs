//! HTTP/2 request bodies under the listener's idle deadline.
//!
//! pingora's HTTP/2 server reads a stream's request body with no deadline at all
//! (`set_read_timeout` is a no-op there), so a client could open streams, send headers that
//! announce a body, and never send a DATA frame: each such stream holds an upstream connection
//! for as long as the client likes. On HTTP/1 the same body is read under `timeouts.idle`
//! between bytes. The edge enforces the same rule on HTTP/2:
//!
//! - the listener registers each HTTP/2 connection here ([`Registry::open`]) and serves it
//!   beside a watchdog ([`Connection::stalled`]);
//! - a request with a body registers a [`BodyWait`] on its connection (found by the socket's
//!   two addresses), and every body chunk marks progress;
//! - a body that has made no progress for `idle` ends the connection: its streams (the stalled
//!   one and any others — the client is not sending what it announced) are reset, their
//!   upstream connections closed. Counted in `registry_edge_http2_body_timeouts_total`.
//!
//! A stream cannot be reset from outside the task that owns it, hence the whole connection;
//! clients retry on a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The HTTP/2 connections being served, by (client, local) address.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<(SocketAddr, SocketAddr), Arc<Connection>>>,
}

/// One HTTP/2 connection's request bodies in progress.
pub struct Connection {
    start: Instant,
    bodies: Mutex<Vec<Weak<BodyWait>>>,
}

/// One stream's request body: when it last made progress.
pub struct BodyWait {
    start: Instant,
    /// Milliseconds since `start` at the last progress.
    last_ms: AtomicU64,
    done: AtomicBool,
}

/// Removes its connection from the registry when the connection ends.
pub struct Registered<'a> {
    registry: &'a Registry,
    key: (SocketAddr, SocketAddr),
    pub connection: Arc<Connection>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.registry.conns.lock() {
            conns.remove(&self.key);
        }
    }
}

impl Registry {
    pub fn open(&self, client: SocketAddr, local: SocketAddr) -> Registered<'_> {
        let connection = Arc::new(Connection {
            start: Instant::now(),
            bodies: Mutex::new(Vec::new()),
        });
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert((client, local), connection.clone());
        }
        Registered {
            registry: self,
            key: (client, local),
            connection,
        }
    }

    /// A body starts on the HTTP/2 connection between these addresses (`None`: not one this
    /// registry serves, e.g. an HTTP/1 request).
    pub fn body(&self, client: SocketAddr, local: SocketAddr) -> Option<Arc<BodyWait>> {
        let conn = self.conns.lock().ok()?.get(&(client, local))?.clone();
        let wait = Arc::new(BodyWait {
            start: conn.start,
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
        });
        wait.progress();
        if let Ok(mut bodies) = conn.bodies.lock() {
            bodies.retain(|b| b.strong_count() > 0);
            bodies.push(Arc::downgrade(&wait));
        }
        Some(wait)
    }

    pub fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Connection {
    /// Whether a body in progress has waited longer than `idle` for its next bytes.
    pub fn overdue(&self, idle: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        let idle_ms = idle.as_millis() as u64;
        let Ok(mut bodies) = self.bodies.lock() else {
            return false;
        };
        bodies.retain(|b| b.upgrade().is_some_and(|b| !b.done.load(Ordering::Relaxed)));
        bodies
            .iter()
            .filter_map(Weak::upgrade)
            .any(|b| now.saturating_sub(b.last_ms.load(Ordering::Relaxed)) > idle_ms)
    }

    /// Resolves when a body has waited longer than `idle`; checked four times per `idle`.
    pub async fn stalled(&self, idle: Duration) {
        let tick = (idle / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(tick).await;
            if self.overdue(idle) {
                return;
            }
        }
    }
}

impl BodyWait {
    /// Bytes of the body arrived.
    pub fn progress(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// The body is complete (or the request is over).
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_body_without_progress_is_overdue_and_a_finished_one_is_not() {
        let r = Registry::default();
        let (c, l) = (addr("127.0.0.1:5000"), addr("127.0.0.1:443"));
        assert!(r.body(c, l).is_none(), "no connection registered");
        let reg = r.open(c, l);
        assert_eq!(r.len(), 1);
        let idle = Duration::from_millis(30);
        let w = r.body(c, l).unwrap();
        assert!(!reg.connection.overdue(idle));
        std::thread::sleep(Duration::from_millis(60));
        assert!(reg.connection.overdue(idle));
        w.progress();
        assert!(!reg.connection.overdue(idle));
        std::thread::sleep(Duration::from_millis(60));
        w.finish();
        assert!(
            !reg.connection.overdue(idle),
            "a finished body never stalls"
        );
        let w2 = r.body(c, l).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        drop(w2);
        assert!(
            !reg.connection.overdue(idle),
            "a dropped request never stalls"
        );
        drop(reg);
        assert!(r.is_empty());
    }
}
