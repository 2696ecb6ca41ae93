//! pingora's floor: the least a `ProxyHttp` on pingora 0.9 can do per request, measured by the
//! load harness beside nginx and registry-edge (`benches/load/run --floor`, README "pingora's
//! floor").
//!
//! One `ProxyHttp` whose only phase is `upstream_peer`, which hands every request to the origin
//! as it came: no GeoIP, no gate, no header rewriting, no access log, no metrics; pingora's own
//! HTTP/1 session on both sides, one worker thread, upstream keepalive, mimalloc as
//! registry-edge uses. It does not do the job (the 451 embargo, the rewritten `Location` and
//! realm are missing), so it is never a row of the comparison; its figures say what pingora's
//! proxy machinery costs before any of registry-edge's work, against what nginx spends on the
//! whole job.
//!
//!     pingora_floor LISTEN UPSTREAM      # e.g. pingora_floor 127.0.0.1:8080 127.0.0.1:9000

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    peer: Box<HttpPeer>,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(self.peer.clone())
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: pingora_floor LISTEN UPSTREAM (addresses, e.g. 127.0.0.1:8080)".into());
    };
    let upstream: SocketAddr = upstream.parse()?;
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let floor = Floor {
        peer: Box::new(peer),
    };
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, floor);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
