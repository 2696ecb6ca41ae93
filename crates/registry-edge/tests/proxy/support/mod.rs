//! What the proxy tests share: the origins they put the edge in front of, the edge process, a
//! small HTTP client (and a raw HTTP/2 one, `h2`) with the readers of the edge's metrics and access log, the GeoIP database
//! and policy, and the load that runs across upgrades and reloads.

mod client;
mod edge;
mod geo;
pub mod h2;
mod load;
mod origin;

pub use client::*;
pub use edge::*;
pub use geo::*;
pub use load::*;
pub use origin::*;
