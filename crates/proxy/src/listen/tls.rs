//! The TLS handshake of a proxy listener's connection, within `header_read`, and what pingora
//! reads of it: the [`SslDigest`] (cipher suite, protocol version) and the ALPN protocol, which
//! sends the connection to pingora's HTTP/2 server or to the HTTP/1 loop. A TLS stream is a
//! [`Transport`] that cannot tell whether a request's bytes are there without reading.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Context, Poll};

use pingora::protocols::tls::SslDigest;
use pingora::protocols::ALPN;
use pingora::tls::{ServerTlsStream, TlsAcceptor};
use tokio::net::TcpStream;

use super::conn::{Conn, Transport};
use super::Settings;

/// The TLS handshake, within `header_read`.
pub(super) async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    settings: &Settings,
) -> Option<Box<Conn<ServerTlsStream<TcpStream>>>> {
    let tls = match tokio::time::timeout(settings.header_read, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        // Counted, and logged at debug only: scanners and broken clients would flood the log.
        Ok(Err(e)) => {
            settings.tls_failed.inc();
            log::debug!("TLS handshake with {peer} failed: {e}");
            return None;
        }
        Err(_) => {
            settings.tls_timed_out.inc();
            log::debug!("TLS handshake with {peer} timed out");
            return None;
        }
    };
    let c = tls.get_ref().1;
    let alpn = match c.alpn_protocol() {
        Some(b"h2") => Some(ALPN::H2),
        Some(b"http/1.1") => Some(ALPN::H1),
        _ => None,
    };
    let cipher = c
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or_default();
    let version = c
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let digest = SslDigest::new(cipher, version, None, None, Vec::new());
    let mut conn = Box::new(Conn::new(tls, peer, Some(Arc::new(digest)), settings));
    conn.alpn = alpn;
    Some(conn)
}

impl Transport for ServerTlsStream<TcpStream> {
    fn poll_wait(&self, _: &mut Context<'_>, _: bool) -> Option<Poll<io::Result<bool>>> {
        None
    }
    fn fd(&self) -> i32 {
        self.get_ref().0.as_raw_fd()
    }
}
