//! The two HTTP/1 sessions side by side on the same bytes: what each makes of one request (its
//! head as the proxy phases see it, and its body's bytes), which is what reaches the upstream,
//! since the edge rebuilds the upstream request from exactly these. Used by the unit tests over a
//! generated corpus and by the `http1_differential` fuzz target (fuzz/).
//!
//! The rule checked ([`compare`]): where both sessions accept a request, they read the same
//! request; where they differ, it is the lean session that refuses (stricter where RFC 9112 lets
//! a server choose), never the other way round.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::head::{self, Chunked, Framing, Step};

/// What a session made of a request's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Refused: a bad head, bad framing, or bytes that ended before the request did.
    Refused,
    Request {
        method: String,
        target: Vec<u8>,
        version: String,
        /// Every field in order, names in lower case, values as received.
        fields: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
}

fn reading(req: &pingora::http::RequestHeader, body: Vec<u8>) -> Reading {
    Reading::Request {
        method: req.method.to_string(),
        target: req.raw_path().to_vec(),
        version: format!("{:?}", req.version),
        fields: req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    }
}

/// The lean session's reading of the first request in `bytes` (then the stream ends).
pub fn lean(bytes: &[u8]) -> Reading {
    let mut buf = BytesMut::from(bytes);
    let Ok(Some(parsed)) = head::parse_request(&mut buf) else {
        return Reading::Refused;
    };
    let mut body = Vec::new();
    match parsed.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            if (buf.len() as u64) < n {
                return Reading::Refused;
            }
            body.extend_from_slice(&buf[..n as usize]);
        }
        Framing::Chunked => {
            let mut state = Chunked::Size;
            loop {
                match state.step(&mut buf, usize::MAX) {
                    Ok(Step::Data(d)) => body.extend_from_slice(&d),
                    Ok(Step::Framing) => {}
                    Ok(Step::End) => break,
                    Ok(Step::More) | Err(_) => return Reading::Refused,
                }
            }
        }
    }
    reading(&parsed.header, body)
}

/// pingora's HTTP/1 server session's reading of the first request in `bytes` (then the stream
/// ends), on the current-thread runtime `rt`.
pub fn pingora(rt: &tokio::runtime::Runtime, bytes: &[u8]) -> Reading {
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(bytes.len().max(1) + 1);
        if client.write_all(bytes).await.is_err() || client.shutdown().await.is_err() {
            return Reading::Refused;
        }
        let mut session = pingora::protocols::http::v1::server::HttpSession::new(Box::new(server));
        match session.read_request().await {
            Ok(Some(_)) => {}
            _ => return Reading::Refused,
        }
        let mut body = Vec::new();
        loop {
            match session.read_body_bytes().await {
                Ok(Some(b)) => body.extend_from_slice(&b),
                Ok(None) => break,
                Err(_) => return Reading::Refused,
            }
        }
        reading(session.req_header(), body)
    })
}

/// A runtime for [`pingora`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Checks the rule on `bytes`: `Err` says how the sessions disagreed.
pub fn compare(rt: &tokio::runtime::Runtime, bytes: &[u8]) -> Result<(), String> {
    let lean = lean(bytes);
    if lean == Reading::Refused {
        return Ok(());
    }
    let pingora = pingora(rt, bytes);
    if lean == pingora {
        return Ok(());
    }
    Err(format!(
        "the sessions read {:?} differently:\n  lean:    {lean:?}\n  pingora: {pingora:?}",
        String::from_utf8_lossy(bytes)
    ))
}
