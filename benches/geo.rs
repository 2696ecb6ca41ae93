//! Decides whether the GeoIP country lookup may run on every request: on a database of
//! realistic size (at least 500k networks, IPv4 and IPv6, GeoLite2-Country-shaped records with
//! continent, country and registered country, each with `names` in eight languages), one
//! `GeoDb::lookup` of a random address must cost under 200 ns.
//!
//! The database is built in memory at start-up with mmdb-writer (a few seconds). Timed:
//! `GeoDb::lookup` only, over 64k addresses drawn in advance and visited in order, so the
//! search tree (several MB) is walked along random paths and cache misses count as they would
//! for real clients. Cases: addresses inside the IPv4 and the IPv6 networks, the same IPv4
//! addresses in their IPv4-mapped form (as a dual-stack listener reports them), uniformly random
//! IPv4 addresses (many fall in no network), and, as a reference, the bare tree walk of
//! `maxminddb::Reader::lookup` without decoding the record.
//!
//! Run: `cargo bench -p registry-edge-benches --bench geo`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::IpNet;
use registry_edge_geo::GeoDb;

const IPV4_NETWORKS: usize = 380_000;
const IPV6_NETWORKS: usize = 170_000;
/// Addresses per case: a power of two, far more than fit in any cache line set of the tree.
const ADDRESSES: usize = 1 << 16;

use registry_edge_benches::geolite::{Continent, Country, Record};
use registry_edge_benches::rng::Rng;

const LANGUAGES: [&str; 8] = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"];
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

fn names(what: &str) -> BTreeMap<String, String> {
    LANGUAGES
        .iter()
        .map(|lang| ((*lang).to_owned(), format!("{what} name in {lang}")))
        .collect()
}

/// 250 countries, as in GeoLite2.
fn records() -> Vec<Record> {
    (0..250u32)
        .map(|i| {
            let iso: String = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8]
                .iter()
                .map(|b| char::from(*b))
                .collect();
            let continent = CONTINENTS[i as usize % CONTINENTS.len()];
            let country = || Country {
                geoname_id: 1_000_000 + i,
                is_in_european_union: (continent == "EU").then_some(true),
                iso_code: iso.clone(),
                names: names(&iso),
            };
            Record {
                continent: Continent {
                    code: continent.to_owned(),
                    geoname_id: 6_255_000 + i % 7,
                    names: names(continent),
                },
                country: country(),
                registered_country: country(),
            }
        })
        .collect()
}

struct Built {
    db: GeoDb,
    bytes: Vec<u8>,
    v4: Vec<(u32, u8)>,
    v6: Vec<(u128, u8)>,
}

/// Networks laid out one after another with random prefix lengths (IPv4 /18../24, IPv6
/// /29../48, as registries allocate) and random countries, leaving every eighth slot empty.
#[expect(
    clippy::panic,
    reason = "start-up: a bench whose database cannot be built has nothing to measure"
)]
fn build(rng: &mut Rng) -> Built {
    let records = records();
    let mut writer = mmdb_writer::Writer::builder("GeoLite2-Country")
        .description(&[("en", "registry-edge bench database")])
        .build();
    let mut insert = |addr: IpAddr, prefix: u8, rng: &mut Rng| {
        let net = IpNet::new(addr, prefix).unwrap_or_else(|e| panic!("{addr}/{prefix}: {e}"));
        let record = &records[rng.below(records.len() as u64) as usize];
        if let Err(e) = writer.insert(net, record) {
            panic!("inserting {net}: {e}");
        }
    };

    let mut v4 = Vec::with_capacity(IPV4_NETWORKS);
    let mut cursor: u64 = 0x0100_0000;
    while v4.len() < IPV4_NETWORKS {
        let prefix = 18 + rng.below(7) as u8;
        let size = 1u64 << (32 - prefix);
        cursor = cursor.div_ceil(size) * size;
        if rng.below(8) == 0 {
            cursor += size;
            continue;
        }
        if cursor + size > 0xe000_0000 {
            panic!("IPv4 space exhausted after {} networks", v4.len());
        }
        let start = cursor as u32;
        insert(IpAddr::V4(Ipv4Addr::from(start)), prefix, rng);
        v4.push((start, prefix));
        cursor += size;
    }

    let mut v6 = Vec::with_capacity(IPV6_NETWORKS);
    let mut cursor: u128 = 0x2400_u128 << 112;
    while v6.len() < IPV6_NETWORKS {
        let prefix = 29 + rng.below(20) as u8;
        let size = 1u128 << (128 - prefix);
        cursor = cursor.div_ceil(size) * size;
        if rng.below(8) == 0 {
            cursor += size;
            continue;
        }
        if cursor + size > 0x2c00_u128 << 112 {
            panic!("IPv6 space exhausted after {} networks", v6.len());
        }
        insert(IpAddr::V6(Ipv6Addr::from(cursor)), prefix, rng);
        v6.push((cursor, prefix));
        cursor += size;
    }

    let bytes = match writer.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => panic!("writing the bench database: {e}"),
    };
    // What a (re)load costs the blocking task: parse plus the visit of every record.
    let started = std::time::Instant::now();
    let db = match GeoDb::from_bytes(bytes.clone(), "bench.mmdb") {
        Ok(db) => db,
        Err(e) => panic!("the bench database does not load: {e}"),
    };
    eprintln!(
        "geo bench database: {:.1} MiB, GeoDb::from_bytes (validation, range tables) {:.0?}: {db:?}",
        bytes.len() as f64 / (1024.0 * 1024.0),
        started.elapsed()
    );
    if db.network_count() < 500_000 {
        panic!("only {} networks", db.network_count());
    }
    Built { db, bytes, v4, v6 }
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let Built { db, bytes, v4, v6 } = build(&mut rng);

    let ipv4_hits: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| {
            let (start, prefix) = v4[rng.below(v4.len() as u64) as usize];
            let offset = rng.below(1 << (32 - prefix)) as u32;
            IpAddr::V4(Ipv4Addr::from(start + offset))
        })
        .collect();
    let ipv6_hits: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| {
            let (start, prefix) = v6[rng.below(v6.len() as u64) as usize];
            let low = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> prefix;
            IpAddr::V6(Ipv6Addr::from(start | low))
        })
        .collect();
    let mapped: Vec<IpAddr> = ipv4_hits
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(_) => *ip,
        })
        .collect();
    let uniform: Vec<IpAddr> = (0..ADDRESSES)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)))
        .collect();

    // Guard against measuring a database that stopped answering.
    for (name, addrs) in [
        ("ipv4", &ipv4_hits),
        ("ipv6", &ipv6_hits),
        ("mapped", &mapped),
    ] {
        let known = addrs
            .iter()
            .filter(|ip| db.lookup(**ip).country.is_some())
            .count();
        assert_eq!(known, addrs.len(), "{name}: addresses outside the database");
    }
    let known = uniform
        .iter()
        .filter(|ip| db.lookup(**ip).country.is_some())
        .count();
    eprintln!(
        "uniform IPv4: {:.0}% of addresses in a network",
        100.0 * known as f64 / uniform.len() as f64
    );

    let mut group = c.benchmark_group("geo/lookup");
    for (name, addrs) in [
        ("ipv4-in-networks", &ipv4_hits),
        ("ipv6-in-networks", &ipv6_hits),
        ("ipv4-mapped", &mapped),
        ("ipv4-uniform", &uniform),
    ] {
        group.bench_function(name, |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & (ADDRESSES - 1);
                db.lookup(black_box(addrs[i]))
            });
        });
    }
    group.finish();

    // The tree walk alone, for the share of the record decoding in the figures above.
    let reader = match maxminddb::Reader::from_source(bytes.as_slice()) {
        Ok(reader) => reader,
        Err(e) => {
            eprintln!("reference reader unavailable: {e}");
            return;
        }
    };
    c.bench_function("geo/reference/tree-walk-ipv4-in-networks", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & (ADDRESSES - 1);
            reader
                .lookup(black_box(ipv4_hits[i]))
                .map(|found| found.offset())
                .ok()
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
