//! GeoIP for the tests: a country database written by the test (clients come from addresses of
//! 127.0.0.0/8 that it places in countries) and the access policy the policy tests run under.

use std::path::{Path, PathBuf};

use super::edge::{start_edge_with, Edge, HTTP_OPTS};

#[derive(serde::Serialize)]
struct GeoRecord {
    country: GeoCode,
    continent: GeoContinent,
}
#[derive(serde::Serialize)]
struct GeoCode {
    iso_code: &'static str,
}
#[derive(serde::Serialize)]
struct GeoContinent {
    code: &'static str,
}

/// 127.0.1.0/24 US, 127.0.2.0/24 CU, 127.0.3.0/24 `third` (DE, or CU after a "sanctions update"),
/// 127.0.9.0/24 (the trusted proxies) US; everything else unknown.
pub fn mmdb(third: &'static str) -> Vec<u8> {
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    for (net, iso, cont) in [
        ("127.0.1.0/24", "US", "NA"),
        ("127.0.2.0/24", "CU", "NA"),
        ("127.0.3.0/24", third, "EU"),
        ("127.0.9.0/24", "US", "NA"),
    ] {
        let rec = GeoRecord {
            country: GeoCode { iso_code: iso },
            continent: GeoContinent { code: cont },
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

/// A fresh directory for a test's database, removed when dropped (declare it before the edge
/// that reads it, so that the edge stops first).
pub struct GeoDir(PathBuf);

impl std::ops::Deref for GeoDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for GeoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn geo_dir(name: &str) -> GeoDir {
    let dir = std::env::temp_dir().join(format!("registry-edge-geo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    GeoDir(dir)
}

/// The database `db` (reloaded when it changes), trusted proxies in 127.0.9.0/24, and an access
/// policy in `mode` (enforce, detect): CU and unknown countries embargoed, 127.0.5.0/24 denied,
/// 127.0.2.9 allowed, read-only, only `team/*` public, 5 requests of burst then one each 5 s
/// (127.0.1.99 exempt).
pub fn policy_yaml(db: &Path, mode: &str) -> String {
    format!(
        r#"geoip: {{ database: "{db}", reload: true }}
clients:
  trusted_proxies: ["127.0.9.0/24"]
access:
  mode: {mode}
  embargo: {{ countries: [CU], unknown_country: deny }}
  deny_cidrs: ["127.0.5.0/24"]
  allow_cidrs: ["127.0.2.9/32"]
  read_only: true
  repositories: {{ allow: ["team/*"] }}
  rate_limit: {{ requests_per_second: 0.2, burst: 5, exempt_cidrs: ["127.0.1.99/32"] }}
"#,
        db = db.display()
    )
}

/// The edge under the enforced policy (`policy_yaml`), its database placing 127.0.3.0/24 in DE;
/// the database's directory first, so that it outlives the edge.
pub fn policy_edge(name: &str) -> (GeoDir, Edge) {
    let gdir = geo_dir(name);
    let db = gdir.join("country.mmdb");
    std::fs::write(&db, mmdb("DE")).unwrap();
    let edge = start_edge_with(name, HTTP_OPTS, &policy_yaml(&db, "enforce"));
    (gdir, edge)
}
