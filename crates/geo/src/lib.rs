//! Who a request comes from and where that is: registry-edge's client address and GeoIP
//! lookup. [`client_address`] takes the socket peer, or, only when the peer is a trusted
//! proxy, walks X-Forwarded-For right to left through trusted hops, so a client that lies in
//! the header changes nothing unless a trusted proxy vouches for it. [`GeoDb`] answers
//! country and continent from any MaxMind DB whose records carry `country.iso_code`
//! (MaxMind GeoIP2/GeoLite2 Country or City, DB-IP, ...), held in memory and looked up
//! without allocating; [`ReloadingDb`] swaps in a new copy when the file is replaced
//! (rename, copy over, Kubernetes `..data` symlink swap) and keeps the old one when the new
//! file is broken or has no country data. Only regular files of at most
//! [`MAX_DATABASE_BYTES`] are read (never a FIFO or a device), and a reload waits at most
//! [`READ_TIMEOUT`] for the read. Nothing here logs: outcomes are returned.
//!
//! ```
//! use std::net::IpAddr;
//! use registry_edge_geo::{client_address, CidrSet, GeoDb, IpNet, Via};
//!
//! let trusted = CidrSet::new(&["10.0.0.0/8".parse::<IpNet>()?]);
//! let peer: IpAddr = "::ffff:10.1.2.3".parse()?; // an IPv4 proxy on a dual-stack socket
//! let client = client_address(peer, [&b"198.51.100.1, 203.0.113.7, 10.0.0.2"[..]], &trusted);
//! assert_eq!(client.ip, "203.0.113.7".parse::<IpAddr>()?);
//! assert_eq!(client.via, Via::ForwardedFor { hops: 2 });
//!
//! # #[derive(serde::Serialize)] struct Country { iso_code: &'static str }
//! # #[derive(serde::Serialize)] struct Record { country: Country }
//! # let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
//! # w.insert("203.0.113.0/24".parse::<IpNet>()?, &Record { country: Country { iso_code: "CU" } })?;
//! # let bytes = w.to_bytes()?;
//! let db = GeoDb::from_bytes(bytes, "GeoLite2-Country.mmdb")?; // or GeoDb::open(path)
//! assert_eq!(db.lookup(client.ip).country_code(), Some("CU"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cidr;
mod client;
mod db;
mod error;
mod file;
mod reload;
#[cfg(test)]
#[path = "../tests/geo/scratch.rs"]
mod scratch;

pub use cidr::{normalise, CidrSet};
pub use client::{client_address, ClientAddr, Via};
pub use db::{GeoDb, Location};
pub use error::GeoError;
pub use file::{MAX_DATABASE_BYTES, READ_TIMEOUT};
pub use ipnet::IpNet;
pub use reload::{ReloadOutcome, ReloadingDb};
