//! `GeoDb`: country and continent for IPv4, IPv6 and IPv4-mapped addresses; refusal of
//! files that cannot serve.

use std::net::IpAddr;

use registry_edge_geo::{GeoDb, GeoError, Location};
use serde::Serialize;

use crate::scratch::Dir;
use crate::support::{self, continent, country, place, Record};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn loc(country: &str, continent: &str) -> Location {
    let two = |s: &str| <[u8; 2]>::try_from(s.as_bytes()).unwrap();
    Location {
        country: Some(two(country)),
        continent: Some(two(continent)),
    }
}

fn sample() -> GeoDb {
    let bytes = support::db(
        1_700_000_000,
        &[
            ("192.0.2.0/24", place("DE", "EU")),
            ("192.0.2.128/25", place("FR", "EU")),
            ("2001:db8:1::/48", place("JP", "AS")),
            // Only the registration: anycast and satellite ranges look like this.
            (
                "198.51.100.0/24",
                Record {
                    continent: Some(continent("NA")),
                    country: None,
                    registered_country: Some(country("US")),
                },
            ),
            // Only a continent.
            (
                "203.0.113.0/25",
                Record {
                    continent: Some(continent("EU")),
                    country: None,
                    registered_country: None,
                },
            ),
            // Lower case and malformed codes.
            ("203.0.113.128/26", place("cu", "na")),
            (
                "203.0.113.192/26",
                Record {
                    continent: Some(continent("Europe")),
                    country: Some(country("XXX")),
                    registered_country: Some(country("GB")),
                },
            ),
        ],
    );
    GeoDb::from_bytes(bytes, "sample.mmdb").unwrap()
}

#[test]
fn ipv4_lookup() {
    let db = sample();
    assert_eq!(db.lookup(ip("192.0.2.1")), loc("DE", "EU"));
    assert_eq!(db.lookup(ip("192.0.2.127")), loc("DE", "EU"));
    assert_eq!(db.lookup(ip("192.0.2.200")), loc("FR", "EU"));
}

#[test]
fn ipv6_lookup() {
    let db = sample();
    assert_eq!(db.lookup(ip("2001:db8:1:2::3")), loc("JP", "AS"));
    assert_eq!(db.lookup(ip("2001:db8:2::1")), Location::default());
}

#[test]
fn ipv4_mapped_lookup_is_the_ipv4_lookup() {
    let db = sample();
    assert_eq!(db.lookup(ip("::ffff:192.0.2.1")), loc("DE", "EU"));
    assert_eq!(db.lookup(ip("::ffff:192.0.2.200")), loc("FR", "EU"));
    assert_eq!(db.lookup(ip("::ffff:8.8.8.8")), Location::default());
}

#[test]
fn unknown_addresses_have_no_location() {
    let db = sample();
    for unknown in [
        "8.8.8.8",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "2a00::1",
    ] {
        assert_eq!(db.lookup(ip(unknown)), Location::default(), "{unknown}");
    }
}

#[test]
fn registered_country_is_the_fallback() {
    let db = sample();
    assert_eq!(db.lookup(ip("198.51.100.7")), loc("US", "NA"));
    // A malformed country code falls back too; a malformed continent is none.
    let l = db.lookup(ip("203.0.113.200"));
    assert_eq!(l.country_code(), Some("GB"));
    assert_eq!(l.continent, None);
}

#[test]
fn continent_without_country() {
    let db = sample();
    let l = db.lookup(ip("203.0.113.1"));
    assert_eq!(l.country, None);
    assert_eq!(l.continent_code(), Some("EU"));
}

#[test]
fn codes_are_upper_cased() {
    assert_eq!(sample().lookup(ip("203.0.113.130")), loc("CU", "NA"));
}

#[test]
fn metadata_and_counts() {
    let db = sample();
    assert_eq!(db.database_type(), "GeoLite2-Country");
    assert_eq!(db.build_epoch(), 1_700_000_000);
    assert_eq!(db.network_count(), 7);
    let shown = format!("{db:?}");
    assert!(shown.contains("sample.mmdb"), "{shown}");
}

#[test]
fn ipv4_only_database() {
    let bytes = support::db_v4(1, &[("192.0.2.0/24", place("DE", "EU"))]);
    let db = GeoDb::from_bytes(bytes, "v4.mmdb").unwrap();
    assert_eq!(db.lookup(ip("192.0.2.1")), loc("DE", "EU"));
    assert_eq!(db.lookup(ip("::ffff:192.0.2.1")), loc("DE", "EU"));
    assert_eq!(db.lookup(ip("2001:db8::1")), Location::default());
}

#[derive(Serialize)]
struct CityRecord {
    city: Names,
    continent: support::Continent,
    country: support::Country,
    location: Coordinates,
    subdivisions: Vec<Names>,
}

#[derive(Serialize)]
struct Names {
    geoname_id: u32,
    names: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Coordinates {
    latitude: f64,
    longitude: f64,
    accuracy_radius: u16,
}

#[test]
fn city_database_serves_too() {
    let rec = CityRecord {
        city: Names {
            geoname_id: 1,
            names: [("en".to_owned(), "Berlin".to_owned())].into(),
        },
        continent: continent("EU"),
        country: country("DE"),
        location: Coordinates {
            latitude: 52.5,
            longitude: 13.4,
            accuracy_radius: 10,
        },
        subdivisions: vec![Names {
            geoname_id: 2,
            names: [("en".to_owned(), "Land Berlin".to_owned())].into(),
        }],
    };
    let db = GeoDb::from_bytes(support::db(1, &[("192.0.2.0/24", rec)]), "city.mmdb").unwrap();
    assert_eq!(db.lookup(ip("192.0.2.1")), loc("DE", "EU"));
}

#[test]
fn database_without_country_data_is_refused() {
    let err = GeoDb::from_bytes(support::asn_db(), "GeoLite2-ASN.mmdb").unwrap_err();
    assert!(matches!(err, GeoError::NoCountryData { .. }), "{err:?}");
    assert!(err.to_string().contains("GeoLite2-ASN.mmdb"), "{err}");

    // A country that is a plain string (not `country.iso_code`) is not country data here.
    #[derive(Serialize)]
    struct Flat {
        country: &'static str,
        continent: &'static str,
    }
    let flat = support::db(
        1,
        &[(
            "192.0.2.0/24",
            Flat {
                country: "DE",
                continent: "EU",
            },
        )],
    );
    let err = GeoDb::from_bytes(flat, "flat.mmdb").unwrap_err();
    assert!(matches!(err, GeoError::NoCountryData { .. }), "{err:?}");
}

#[test]
fn a_record_that_cannot_be_decoded_refuses_the_database() {
    #[derive(Serialize)]
    struct BadCountry {
        iso_code: u32,
    }
    #[derive(Serialize)]
    struct Bad {
        country: BadCountry,
    }
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    w.insert(
        "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
        &place("DE", "EU"),
    )
    .unwrap();
    w.insert(
        "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
        &Bad {
            country: BadCountry { iso_code: 7 },
        },
    )
    .unwrap();
    let err = GeoDb::from_bytes(w.to_bytes().unwrap(), "bad.mmdb").unwrap_err();
    match err {
        GeoError::Invalid { message, .. } => {
            assert!(message.contains("198.51.100.0/24"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_bytes_are_invalid() {
    let good = support::db(1, &[("192.0.2.0/24", place("DE", "EU"))]);
    let mut flipped = good.clone();
    // Scramble the search tree: the metadata still parses, the tree no longer makes sense.
    for b in flipped.iter_mut().take(64) {
        *b = 0xff;
    }
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("garbage", b"this is not a MaxMind DB at all".repeat(100)),
        ("first half", good[..good.len() / 2].to_vec()),
        ("all but the last byte", good[..good.len() - 1].to_vec()),
        ("scrambled tree", flipped),
    ] {
        match GeoDb::from_bytes(bytes, what) {
            Err(GeoError::Invalid { path, message }) => {
                assert_eq!(path.to_str(), Some(what));
                assert!(!message.is_empty());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn open_reads_the_file() {
    let dir = Dir::new("open");
    let path = dir.path("GeoLite2-Country.mmdb");
    std::fs::write(
        &path,
        support::db(5, &[("192.0.2.0/24", place("DE", "EU"))]),
    )
    .unwrap();
    let db = GeoDb::open(&path).unwrap();
    assert_eq!(db.lookup(ip("192.0.2.9")), loc("DE", "EU"));

    let missing = dir.path("missing.mmdb");
    match GeoDb::open(&missing) {
        Err(GeoError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

/// The tree's own answer, read with the reader alone: what `GeoDb::lookup` must agree with.
fn tree_answer(bytes: &[u8], addr: IpAddr) -> Location {
    #[derive(serde::Deserialize)]
    struct Code<'a> {
        iso_code: Option<&'a str>,
        code: Option<&'a str>,
    }
    #[derive(serde::Deserialize)]
    struct Rec<'a> {
        #[serde(borrow)]
        country: Option<Code<'a>>,
        #[serde(borrow)]
        registered_country: Option<Code<'a>>,
        #[serde(borrow)]
        continent: Option<Code<'a>>,
    }
    fn two(s: Option<&str>) -> Option<[u8; 2]> {
        let s = s?;
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| <[u8; 2]>::try_from(s.to_ascii_uppercase().as_bytes()).unwrap())
    }
    let reader = maxminddb::Reader::from_source(bytes).unwrap();
    let addr = registry_edge_geo::normalise(addr);
    if reader.metadata().ip_version == 4 && addr.is_ipv6() {
        return Location::default();
    }
    let Some(rec) = reader.lookup(addr).unwrap().decode::<Rec>().unwrap() else {
        return Location::default();
    };
    let iso = |c: &Option<Code>| c.as_ref().and_then(|c| two(c.iso_code));
    Location {
        country: iso(&rec.country).or_else(|| iso(&rec.registered_country)),
        continent: rec.continent.as_ref().and_then(|c| two(c.code)),
    }
}

mod equivalence {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Net {
        V4(u32, u8),
        V6(u128, u8),
    }

    fn net() -> impl Strategy<Value = Net> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Net::V4(a, p)),
            (any::<u32>(), 8u8..=32)
                .prop_map(|(a, p)| Net::V4(a & 0xff00_0000 | a >> 8 & 0xffff, p)),
            (
                prop_oneof![
                    any::<u128>(),
                    any::<u64>().prop_map(|x| 0x2400_u128 << 112 | u128::from(x) << 40),
                    Just(0x2000_u128 << 112),
                ],
                0u8..=128
            )
                .prop_map(|(a, p)| Net::V6(a, p)),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        let iso = prop_oneof![
            Just("DE"),
            Just("fr"),
            Just("XXX"),
            Just("US"),
            Just("1A"),
            Just("")
        ];
        (iso.clone(), iso, 0u8..6).prop_map(|(c, r, shape)| Record {
            continent: (shape & 1 == 0).then(|| continent("EU")),
            country: (shape < 4).then(|| country(c)),
            registered_country: (shape & 2 == 0).then(|| country(r)),
        })
    }

    fn v4_probe(nets: &[(Net, Record)], pick: usize, offset: u32) -> u32 {
        let v4: Vec<(u32, u8)> = nets
            .iter()
            .filter_map(|(n, _)| match n {
                Net::V4(a, p) => Some((*a, *p)),
                Net::V6(..) => None,
            })
            .collect();
        match v4.get(pick % v4.len().max(1)) {
            Some((a, p)) => {
                let host = u32::MAX.checked_shr(u32::from(*p)).unwrap_or(0);
                (a & !host) | (offset & host)
            }
            None => offset,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn lookup_agrees_with_the_tree(
            nets in proptest::collection::vec((net(), record()), 1..24),
            ipv4_only in proptest::bool::weighted(0.15),
            probes in proptest::collection::vec((any::<usize>(), any::<u32>(), any::<u128>(), 0u8..7), 48),
        ) {
            let mut w = mmdb_writer::Writer::builder("GeoLite2-Country")
                .ip_version(if ipv4_only { mmdb_writer::IpVersion::V4 } else { mmdb_writer::IpVersion::V6 })
                .build();
            for (n, rec) in &nets {
                let net = match n {
                    Net::V4(a, p) => ipnet::IpNet::new(IpAddr::V4((*a).into()), *p),
                    Net::V6(a, p) => ipnet::IpNet::new(IpAddr::V6((*a).into()), *p),
                }.unwrap();
                // Aliased space and IPv6 in an IPv4 tree are refused by the writer.
                let _ = w.insert(net, rec);
            }
            // Something with a country (inserted last, so it wins), or the database is refused.
            w.insert("198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(), &place("DE", "EU")).unwrap();
            let bytes = w.to_bytes().unwrap();
            let db = GeoDb::from_bytes(bytes.clone(), "random.mmdb").unwrap();
            for (pick, offset, wide, kind) in probes {
                let v4 = v4_probe(&nets, pick, offset);
                let addr: IpAddr = match kind {
                    0 => IpAddr::V4(v4.into()),
                    1 => IpAddr::V4(offset.into()),
                    2 => IpAddr::V6(std::net::Ipv4Addr::from(v4).to_ipv6_mapped()),
                    // 6to4 and Teredo: aliases of the IPv4 subtree.
                    3 => IpAddr::V6((0x2002_u128 << 112 | u128::from(v4) << 80 | wide & 0xffff).into()),
                    4 => IpAddr::V6((0x2001_0000_u128 << 96 | u128::from(v4) << 64 | wide & 0xffff).into()),
                    // IPv4-compatible: the IPv4 subtree reached as IPv6.
                    5 => IpAddr::V6(u128::from(v4).into()),
                    _ => {
                        let v6: Vec<(u128, u8)> = nets.iter().filter_map(|(n, _)| match n {
                            Net::V6(a, p) => Some((*a, *p)),
                            Net::V4(..) => None,
                        }).collect();
                        match v6.get(pick % v6.len().max(1)) {
                            Some((a, p)) => {
                                let host = u128::MAX.checked_shr(u32::from(*p)).unwrap_or(0);
                                IpAddr::V6(((a & !host) | (wide & host)).into())
                            }
                            None => IpAddr::V6(wide.into()),
                        }
                    }
                };
                prop_assert_eq!(db.lookup(addr), tree_answer(&bytes, addr), "{}", addr);
            }
        }
    }
}
