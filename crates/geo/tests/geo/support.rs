//! MMDB files shaped like GeoLite2 records, and file modification times.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mmdb_writer::{IpVersion, Writer};
use serde::Serialize;

/// A GeoLite2-Country record: every key a real one has, so lookups skip what they don't read.
#[derive(Serialize, Clone, Debug)]
pub struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continent: Option<Continent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_country: Option<Country>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Continent {
    pub code: String,
    pub geoname_id: u32,
    pub names: BTreeMap<String, String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Country {
    pub geoname_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_in_european_union: Option<bool>,
    pub iso_code: String,
    pub names: BTreeMap<String, String>,
}

fn names(what: &str) -> BTreeMap<String, String> {
    ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
        .iter()
        .map(|lang| ((*lang).to_owned(), format!("{what} ({lang})")))
        .collect()
}

pub fn country(iso: &str) -> Country {
    Country {
        geoname_id: 2_000_000,
        is_in_european_union: matches!(iso, "DE" | "FR" | "IT").then_some(true),
        iso_code: iso.to_owned(),
        names: names(iso),
    }
}

pub fn continent(code: &str) -> Continent {
    Continent {
        code: code.to_owned(),
        geoname_id: 6_255_148,
        names: names(code),
    }
}

/// `country` and `registered_country` both `iso`, on `continent`.
pub fn place(iso: &str, cont: &str) -> Record {
    Record {
        continent: Some(continent(cont)),
        country: Some(country(iso)),
        registered_country: Some(country(iso)),
    }
}

pub fn epoch(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An IPv6 database (IPv4 in its `::/96` subtree, with the mapped aliases) of `nets`.
pub fn db<T: Serialize>(build_epoch: u64, nets: &[(&str, T)]) -> Vec<u8> {
    let mut w = Writer::builder("GeoLite2-Country")
        .description(&[("en", "test")])
        .build_epoch(epoch(build_epoch))
        .build();
    for (net, rec) in nets {
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), rec).unwrap();
    }
    w.to_bytes().unwrap()
}

pub fn db_v4<T: Serialize>(build_epoch: u64, nets: &[(&str, T)]) -> Vec<u8> {
    let mut w = Writer::builder("GeoLite2-Country")
        .ip_version(IpVersion::V4)
        .build_epoch(epoch(build_epoch))
        .build();
    for (net, rec) in nets {
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), rec).unwrap();
    }
    w.to_bytes().unwrap()
}

#[derive(Serialize)]
pub struct Asn {
    pub autonomous_system_number: u32,
    pub autonomous_system_organization: String,
}

/// A GeoLite2-ASN database: valid, but without country data.
pub fn asn_db() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-ASN");
    let rec = Asn {
        autonomous_system_number: 64_512,
        autonomous_system_organization: "Example".into(),
    };
    w.insert("192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
        .unwrap();
    w.insert("2001:db8::/32".parse::<ipnet::IpNet>().unwrap(), &rec)
        .unwrap();
    w.to_bytes().unwrap()
}

/// Sets a file's mtime `secs_ago` seconds in the past: old enough to count as settled.
pub fn age(path: &Path, secs_ago: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

/// Sets a file's mtime to exactly `at`.
pub fn set_mtime(path: &Path, at: SystemTime) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(at).unwrap();
}
