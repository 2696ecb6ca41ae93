//! A fill's own exchange with the data endpoint (docs/blob-cache.md, "The fill's own exchange
//! with the data endpoint").
//!
//! pingora's proxy path reads an upstream body 64 KiB at a time, copies each read into a new
//! buffer and passes it between two tasks over a channel: per GiB, about 16,000 rounds and a
//! copy of every byte, on top of the hash and the disk write that a fill needs anyway. A fill
//! is one request to one peer for one body of a known length, so the edge makes that request
//! itself: the same peer (`plan`), the same request head (`Edge::upstream_head`, what
//! `upstream_request_filter` builds), the same response filters (`response_filter`), then a
//! loop that reads the body into aligned buffers of up to 4 MiB (one copy, from the socket),
//! hashes each and hands it to the client and to the fill's writer, which sends it to the disk
//! from the same buffer (blob_cache::fetch::ChunkPool). Between plain TCP sockets the client's
//! bytes do not come from that buffer: every chunk but the last is relayed through pipes
//! (blob_cache::relay), and the buffer is read from the pipe.
//!
//! Anything but a whole `200` of a known length, and any failure before the client has been
//! answered (no connection, a pooled connection the peer closed, a head that does not parse),
//! goes back to pingora's proxy path with the fill's claim, which sends the request as it
//! always did: a blob `GET` is safe to send again.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use pingora_proxy::{ProxyHttp, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, Edge};
use crate::blob_cache::fetch::{self, ChunkBuf, ChunkPool, ChunkSizes, Head, Reservation};
use crate::blob_cache::relay::Relay;
use crate::blob_cache::Claim;
use crate::listen::sendfile::FileSender;

/// Spare room in the head's buffer for each read: more than pingora's upstream read buffer.
const HEAD_READ: usize = pingora::protocols::l4::stream::DEFAULT_L4_READ_BUFFER_SIZE + (4 << 10);

/// How the fill's own exchange ended.
pub(super) enum Fetched {
    /// The client was answered (in full, or the transfer was cut with the error returned).
    Answered,
    /// Nothing was sent to the client: pingora's proxy path takes the request, with the claim.
    Declined(&'static str),
}

impl Edge {
    /// Fills `claim`'s digest from the data endpoint with the edge's own exchange, when the
    /// request allows it. See the module docs.
    pub(super) async fn fill_from_upstream(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        claim: Claim,
    ) -> Result<Fetched> {
        ctx.claim = Some(claim);
        // The request rules applied to this head are counted once, by whichever path sends it.
        let rules = ctx.rules.len();
        let fetched = self.own_exchange(session, ctx).await;
        if let Ok(Fetched::Declined(why)) = &fetched {
            ctx.rules.truncate(rules);
            log::debug!("blob cache: fill through pingora's proxy path ({why})");
        }
        fetched
    }

    async fn own_exchange(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Fetched> {
        if !session.is_body_empty() {
            return Ok(Fetched::Declined("request body"));
        }
        // Held until the body has been read (chunks still queued for the writer are bounded
        // by the store).
        let Some(_memory) = Reservation::take() else {
            return Ok(Fetched::Declined("chunk memory"));
        };
        ctx.candidates = self.plan(ctx);
        let Some(&(id, addr)) = ctx.candidates.first() else {
            return Ok(Fetched::Declined("no peer"));
        };
        let generation = ctx.generation.clone();
        let Some(pool) = generation.upstreams.get(id) else {
            return Ok(Fetched::Declined("no pool"));
        };
        let peer = pool.http_peer(addr);
        let read_timeout = peer.options.read_timeout.unwrap_or(Duration::from_secs(60));

        let mut req = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        req.remove_header(&http::header::CONTENT_LENGTH);
        req.remove_header(&http::header::TRANSFER_ENCODING);
        ctx.pool = Some(id);
        ctx.upstream_start.get_or_insert_with(Instant::now);
        self.upstream_head(session, &mut req, ctx)?;
        let Some(wire) = pingora::protocols::http::v1::client::http_req_header_to_wire(&req) else {
            return Ok(Fetched::Declined("request head"));
        };

        let (mut stream, reused) = match self.fill_upstream.get_stream(&*peer).await {
            Ok(s) => s,
            Err(e) => {
                // Counted and backed off as pingora's path does (`fail_to_connect`); that path
                // then plans again without this peer for a while.
                log::debug!("blob cache: fill connection to {addr}: {e}");
                pool.metrics.connect_errors.inc();
                pool.back_off(addr);
                return Ok(Fetched::Declined("connect"));
            }
        };
        let sent = tokio::time::timeout(read_timeout, async {
            stream.write_all(&wire).await?;
            stream.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Ok(Fetched::Declined(if reused {
                "pooled connection closed"
            } else {
                "request write"
            }));
        }
        let (head, mut pre) = match read_head(&mut stream, read_timeout).await {
            Ok(h) => h,
            Err(why) => return Ok(Fetched::Declined(why)),
        };
        let length = match head.blob_length() {
            Ok(n) if n > 0 => n,
            // Another answer: pingora's path sends the request again and passes the answer on.
            _ => return Ok(Fetched::Declined("not a whole blob")),
        };
        let mut response = match head.response_header() {
            Ok(r) => r,
            Err(_) => return Ok(Fetched::Declined("response head")),
        };

        // From here on the client is answered from this exchange.
        self.response_filter(session, &mut response, ctx).await?;
        session
            .write_response_header(Box::new(response), false)
            .await?;
        let extra = pre.len() as u64 > length;
        if extra {
            pre.truncate(length as usize);
        }
        let mut left = length - pre.len() as u64;
        let pool = ChunkPool::default();
        let mut sizes = ChunkSizes::after(pre.len());
        // Both sockets plain TCP: every chunk but the last relayed through pipes
        // (blob_cache::relay), the client's bytes never copied through the edge's memory.
        let mut relay = relay_between(session, &stream);
        // The bytes that came with the head first (possibly none), then chunk by chunk.
        let mut body = pre.freeze();
        let mut sent = false;
        loop {
            let end = left == 0;
            if sent {
                self.fill_sent(body, ctx).await?;
            } else {
                self.fill_send(session, body, end, ctx).await?;
            }
            if end {
                break;
            }
            let want = sizes.next(left);
            let chunk = pool
                .take(want)
                .map_err(|e| Error::because(InternalError, "mapping a blob chunk's memory", e))?;
            (body, sent) = match relay.as_mut() {
                // Not the chunk that completes the body: that one is held until verified.
                Some((to, relay)) if (want as u64) < left => {
                    let body = relay_chunk(session, to, relay, chunk, read_timeout).await?;
                    if let Some(c) = &generation.blob_cache {
                        c.metrics().relayed_bytes.inc_by(body.len() as u64);
                    }
                    (body, true)
                }
                _ => (read_chunk(&mut stream, chunk, read_timeout).await?, false),
            };
            left -= body.len() as u64;
        }
        drop(relay);
        if !extra && head.keeps_alive() {
            self.fill_upstream
                .release_stream(stream, peer.reuse_hash(), peer.idle_timeout());
        }
        Ok(Fetched::Answered)
    }

    /// One body chunk of the exchange to the client, through the fill (hashed, queued for the
    /// writer, the chunk that completes the body held until it is verified; the transfer cut if
    /// the body is not the blob) and its pacing.
    async fn fill_send(
        &self,
        session: &mut Session,
        body: Bytes,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let mut body = Some(body).filter(|b| !b.is_empty());
        if body.is_none() && !end {
            return Ok(());
        }
        if let Some(delay) = self.blob_fill_chunk(&mut body, end, ctx)? {
            tokio::time::sleep(delay).await;
        }
        // Held back (the chunk that completes the body waits for the verification): nothing to
        // write yet.
        if body.is_some() || end {
            session.write_response_body(body, end).await?;
        }
        Ok(())
    }

    /// [`Edge::fill_send`] for a chunk the client has been sent already (relayed): hashed and
    /// queued for the writer, and paced.
    async fn fill_sent(&self, body: Bytes, ctx: &mut Ctx) -> Result<()> {
        if let Some(delay) = self.blob_fill_chunk(&mut Some(body), false, ctx)? {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

/// The client's connection and a relay from the upstream's, when both are plain TCP.
fn relay_between(session: &Session, upstream: &Stream) -> Option<(FileSender, Relay)> {
    let to = FileSender::of(session)?;
    match Relay::of(upstream) {
        Ok(relay) => relay.map(|r| (to, r)),
        Err(e) => {
            log::debug!("blob cache: fill not relayed: {e}");
            None
        }
    }
}

/// Fills `chunk` from the upstream through `relay`, each piece sent to the client (through
/// `to`) as it arrives and read into the chunk; an error when the upstream closes first or
/// sends nothing for `read_timeout`, or when the client's write fails.
async fn relay_chunk(
    session: &mut Session,
    to: &FileSender,
    relay: &mut Relay,
    mut chunk: ChunkBuf,
    read_timeout: Duration,
) -> Result<Bytes> {
    let relay_error = |e| Error::because(ReadError, "relaying a blob from upstream", e).into_up();
    while !chunk.is_full() {
        let want = chunk.room().len();
        let n = body_read(read_timeout, relay.fill(want)).await?;
        let mut in_pipe = n;
        while in_pipe > 0 {
            let t = relay.tee(in_pipe).map_err(relay_error)?;
            {
                let (_armed, placeholder) = to.arm_pipe(relay.to_client(), t);
                session
                    .write_response_body(Some(placeholder), false)
                    .await?;
            }
            relay.read(&mut chunk.room()[..t]).map_err(relay_error)?;
            chunk.filled(t);
            in_pipe -= t;
        }
    }
    Ok(chunk.freeze())
}

/// What one read of the upstream's body got: its bytes (at least one); an error when the read
/// failed, got nothing for `read_timeout`, or found the upstream closed before the whole blob.
async fn body_read(
    read_timeout: Duration,
    read: impl std::future::Future<Output = std::io::Result<usize>>,
) -> Result<usize> {
    match tokio::time::timeout(read_timeout, read).await {
        Ok(Ok(0)) => Error::e_explain(
            ConnectionClosed,
            "the upstream closed before the whole blob",
        )
        .map_err(|e| e.into_up()),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Error::because(ReadError, "reading a blob from upstream", e).into_up()),
        Err(_) => {
            Error::e_explain(ReadTimedout, "reading a blob from upstream").map_err(|e| e.into_up())
        }
    }
}

/// Reads a response head: the head and the body bytes read with it; or why not.
async fn read_head(
    stream: &mut Stream,
    read_timeout: Duration,
) -> std::result::Result<(Head, BytesMut), &'static str> {
    let mut buf = BytesMut::new();
    loop {
        // Room for more than pingora's read buffer holds, every read: its `BufReader` then
        // reads into this buffer directly and keeps nothing of the body (a relay splices the
        // rest from the socket itself, blob_cache::relay).
        buf.reserve(HEAD_READ);
        let n = match tokio::time::timeout(read_timeout, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Err("response read"),
            Err(_) => return Err("response timeout"),
        };
        if n == 0 {
            return Err("closed before a response");
        }
        match fetch::parse(&buf) {
            Ok(Some(head)) => {
                let body = buf.split_off(head.len);
                return Ok((head, body));
            }
            Ok(None) => {}
            Err(_) => return Err("response head"),
        }
    }
}

/// Fills `chunk` from the body (the reads return what the socket has); an error when the
/// upstream closes first, or sends nothing for `read_timeout`.
async fn read_chunk(
    stream: &mut Stream,
    mut chunk: ChunkBuf,
    read_timeout: Duration,
) -> Result<Bytes> {
    while !chunk.is_full() {
        let n = body_read(read_timeout, stream.read(chunk.room())).await?;
        chunk.filled(n);
    }
    Ok(chunk.freeze())
}
