//! Fixtures for registry-edge's benches: header sets recorded from Azure Container Registry
//! responses (names and shapes as ACR sends them; identifiers replaced) and the rewrite
//! configuration of the reference architecture.
//!
//! ```
//! let (status, headers) = registry_edge_benches::acr::blob_redirect();
//! assert_eq!(status, 307);
//! assert!(headers.contains_key(http::header::LOCATION));
//! ```

pub mod acr;
pub mod geolite;
pub mod rng;
