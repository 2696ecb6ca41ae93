//! The blob cache in the request path (crate::blob_cache): the registry's blob redirects signed
//! (`response_filter`, login side), a data-host request with a valid token served from the cache
//! or made the fill of its digest (`request_filter`, `response_filter`,
//! `response_body_filter`, data side).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

use registry_edge_gate::Kind;

use super::fill::Fetched;
use super::{Ctx, Edge};
use crate::blob_cache::serve::{self, Span};
use crate::blob_cache::{CacheUse, Lookup, Step};
use crate::route::Route;

/// At most this many fills of one digest a request waits for in turn.
const MAX_WAITS: usize = 3;

/// The error type that cuts a fill whose bytes are not the blob.
pub const BLOB_CORRUPT: &str = "blob_corrupt";

impl Edge {
    /// A redirect the registry answered to a blob `GET`/`HEAD`, on its way to the client with
    /// its `Location` rewritten: when that names a data host of this edge, the cache token for
    /// the blob's digest is appended (the registry has just authorized this client for it).
    pub(super) fn sign_blob_redirect(&self, response: &mut ResponseHeader, ctx: &Ctx) {
        let Some(cache) = &ctx.generation.blob_cache else {
            return;
        };
        let Some(Kind::Blob { digest }) = ctx.op.as_ref().map(|op| &op.kind) else {
            return;
        };
        if !response.status.is_redirection() {
            return;
        }
        let Some(digest) = crate::blob_cache::Digest::parse(digest) else {
            return;
        };
        let Some(location) = response
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let Some((authority, path)) = location
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest.split_at(i)))
        else {
            return;
        };
        let path = path.split('?').next().unwrap_or(path);
        let to_data = matches!(
            ctx.generation.router.route(Some(authority), path),
            Ok(r) if matches!(r.route, Route::Data(_))
        );
        if !to_data {
            return;
        }
        if let Some(signed) = cache.sign(location, &digest) {
            // A signed URL is made of the same bytes plus the token: always a valid value.
            let _ = response.insert_header(http::header::LOCATION, signed);
        }
    }

    /// A data-host `GET`/`HEAD` with a valid cache token: answered from the cache when the entry
    /// is complete (after waiting for a fill in progress, at most the listener's idle time);
    /// otherwise it goes upstream, holding the right to fill when nobody else does. `true`: answered.
    pub(super) async fn serve_cached_blob(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let Some(cache) = ctx.generation.blob_cache.clone() else {
            return Ok(false);
        };
        let req = session.req_header();
        let head_only = req.method == http::Method::HEAD;
        if !matches!(ctx.route, Some(Route::Data(_)))
            || !(head_only || req.method == http::Method::GET)
        {
            return Ok(false);
        }
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let Some(digest) = cache.verify(target) else {
            return Ok(false);
        };
        let range = req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ctx.blob = Some(digest.clone());
        // Fills this request waited for: one that ends without storing the blob (its client
        // left, the disk refused) hands over to a waiter; a few in a row, and this one goes
        // upstream itself.
        let mut waited = 0;
        loop {
            match cache.lookup(&digest) {
                Lookup::Hit(file, size) => {
                    ctx.cache_use = Some(CacheUse::Hit);
                    let span = serve::span(range.as_deref(), size);
                    let mut head = serve::head(&digest, size, span)?;
                    self.rewrite_response(session, &mut head, ctx);
                    let (first, last) = match span {
                        Span::Whole if size > 0 => (0, size - 1),
                        Span::Part(a, b) => (a, b),
                        Span::Whole | Span::Unsatisfiable => {
                            session.write_response_header(Box::new(head), true).await?;
                            return Ok(true);
                        }
                    };
                    session
                        .write_response_header(Box::new(head), head_only)
                        .await?;
                    if !head_only {
                        serve::body(session, file, first, last).await?;
                    }
                    return Ok(true);
                }
                // A HEAD or a range does not fill: the next whole GET will.
                // Counted as a miss unless the fill completes (then `fill`, `corrupt` or
                // `bypass`).
                Lookup::Fill(claim) => {
                    ctx.cache_use = Some(CacheUse::Miss);
                    if head_only || range.is_some() {
                        return Ok(false);
                    }
                    let fetched = self.fill_from_upstream(session, ctx, claim).await?;
                    return Ok(matches!(fetched, Fetched::Answered));
                }
                Lookup::Wait(fill) if waited < MAX_WAITS => {
                    waited += 1;
                    if !self.wait_for_fill(fill).await {
                        ctx.cache_use = Some(CacheUse::Miss);
                        return Ok(false);
                    }
                }
                Lookup::Wait(_) => {
                    ctx.cache_use = Some(CacheUse::Miss);
                    return Ok(false);
                }
            }
        }
    }

    /// Waits for another request's fill to end: `false` when it has not within the
    /// listener's idle time (this request then goes upstream itself). A fill runs at its own
    /// client's pace (the next chunk is read once the client has taken the last), so a slow first
    /// client never holds the others longer than that.
    async fn wait_for_fill(&self, mut fill: crate::blob_cache::InProgress) -> bool {
        let idle = self.listener.timeouts.idle;
        tokio::time::timeout(idle, fill.ended.changed())
            .await
            .is_ok()
    }

    /// The upstream's answer to a request holding a fill's claim: a whole `200` of a known
    /// length starts the fill; anything else releases the claim.
    pub(super) fn begin_blob_fill(&self, response: &ResponseHeader, ctx: &mut Ctx) {
        // A 100 or 103 comes before the answer: the claim waits for that.
        if ctx.blob.is_none() || response.status.is_informational() {
            return;
        }
        let Some(claim) = ctx.claim.take() else {
            ctx.cache_use.get_or_insert(CacheUse::Miss);
            return;
        };
        let Some(cache) = &ctx.generation.blob_cache else {
            return;
        };
        let length = response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let whole = response.status == http::StatusCode::OK
            && !response.headers.contains_key(http::header::CONTENT_RANGE)
            && !response
                .headers
                .contains_key(http::header::CONTENT_ENCODING);
        // An empty body is no blob (and pingora calls no body filter for it).
        match length.filter(|&n| whole && n > 0) {
            Some(size) => match cache.start_fill(claim, size) {
                Ok(fill) => ctx.fill = Some(fill),
                Err(why) => ctx.cache_use = Some(why),
            },
            None => ctx.cache_use = Some(CacheUse::Miss),
        }
    }

    /// A body chunk of a fill: hashed and stored; sent at once, but for the chunk that
    /// completes the body, sent only when the whole body is the blob. A body that is not:
    /// counted, and the transfer cut. Returns how
    /// long to hold the chunk back while the disk writer is behind (`blob_cache::pace`).
    pub(super) fn blob_fill_chunk(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        let Some(fill) = ctx.fill.as_mut() else {
            return Ok(None);
        };
        match fill.chunk(body.take(), end) {
            Step::Send(out) => {
                *body = out;
                let delay = fill.pace();
                if let (Some(d), Some(c)) = (delay, &ctx.generation.blob_cache) {
                    c.metrics().paced_seconds.inc_by(d.as_secs_f64());
                }
                Ok(delay)
            }
            Step::Last(out, stored) => {
                *body = out;
                ctx.fill = None;
                ctx.cache_use = Some(stored);
                Ok(None)
            }
            Step::Corrupt => {
                ctx.fill = None;
                ctx.cache_use = Some(CacheUse::Corrupt);
                if let Some(c) = &ctx.generation.blob_cache {
                    c.metrics().verification_failures.inc();
                }
                let digest = ctx.blob.as_ref().map(ToString::to_string);
                log::warn!(
                    "blob cache: the data endpoint's bytes for {} are not that blob; transfer cut, nothing stored",
                    digest.as_deref().unwrap_or("?")
                );
                Err(Error::create(
                    Custom(BLOB_CORRUPT),
                    ErrorSource::Upstream,
                    Some("the upstream's bytes do not hash to the blob's digest".into()),
                    None,
                ))
            }
        }
    }
}
