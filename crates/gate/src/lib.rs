//! The request gate: what a request *is*, decided before anything else looks at it.
//!
//! Registries route on the decoded path (`/v%32/<repo>/manifests/x` is `/v2/...` to
//! distribution) and token servers decode parameter names (`sc%6fpe=` is `scope=`). A policy
//! that looks at raw strings can therefore be talked around by an encoding. This crate turns a
//! request into a typed value by the grammar of the OCI distribution specification, refuses
//! whatever does not parse *exactly*, and re-serialises what is forwarded from the parsed values,
//! so that the string the registry or token server decodes is the one the edge judged:
//!
//! - [`operation::parse`]: a login-side request (method, path, query) → [`Operation`] (base,
//!   catalog, manifest, blob, upload start with its mount, upload, tags, referrers, the ACR
//!   `/acr/v1/` routes, a token path), or a [`Reject`] with its status, OCI code and reason;
//! - [`token::TokenRequest::parse`]: a token request's query or form body → known parameters,
//!   decoded as `application/x-www-form-urlencoded` the way Go's `net/url` and ASP.NET decode
//!   them; unknown, case-folded and duplicate names refused;
//! - [`grammar`]: repository names, tags and digests; [`form`]: the decoding and the encoding.
//!
//! Pure and synchronous, with no dependencies: the proxy calls it from `request_filter`, the
//! fuzz targets and the benches call it directly.

pub mod form;
pub mod grammar;
pub mod operation;
pub mod token;

pub use operation::{parse, Kind, Operation, Reject, RejectReason};
pub use token::{TokenReject, TokenRequest};
