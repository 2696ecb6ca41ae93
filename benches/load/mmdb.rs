//! Writes the country database and the client addresses of the side-by-side load harness
//! (`benches/load/run`): a GeoLite2-Country-shaped MMDB covering the public IPv4 space, and a
//! list of addresses drawn all over that space with the country the database gives each.
//!
//! No vendor database is committed or downloaded: the countries are real ISO codes, the
//! networks are made up. Networks of /14 to /22 (smaller next to the reserved ranges) tile the space from
//! 1.0.0.0 to 223.255.255.255, skipping the reserved ranges (private, loopback, documentation, ...) and
//! leaving about one block in thirty unassigned (an address there has no country). About 4 % of
//! the networks belong to the countries the harness embargoes (CU, IR, KP, SY, RU), the rest to
//! 55 other countries on every continent. Records carry `continent.code`, `country.iso_code`
//! and `registered_country.iso_code` with English names, as GeoLite2 does: nginx's geoip2
//! module and registry-edge read the same fields. The output is the same for the same seed.
//!
//! Run: `cargo run --release -p registry-edge-benches --example load_mmdb -- OUT.mmdb
//! ADDRESSES.txt [COUNT]`. ADDRESSES.txt gets one `address country` line per address (`--`
//! where the database has no country).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

/// The countries the harness configures as embargoed, on both proxies.
const EMBARGOED: [(&str, &str); 5] = [
    ("CU", "NA"),
    ("IR", "AS"),
    ("KP", "AS"),
    ("SY", "AS"),
    ("RU", "EU"),
];

/// Share of the networks (per mille) given to an embargoed country.
const EMBARGOED_PER_MILLE: u64 = 40;

const COUNTRIES: [(&str, &str); 55] = [
    ("US", "NA"),
    ("CA", "NA"),
    ("MX", "NA"),
    ("GT", "NA"),
    ("PA", "NA"),
    ("BR", "SA"),
    ("AR", "SA"),
    ("CL", "SA"),
    ("CO", "SA"),
    ("PE", "SA"),
    ("UY", "SA"),
    ("GB", "EU"),
    ("DE", "EU"),
    ("FR", "EU"),
    ("NL", "EU"),
    ("IE", "EU"),
    ("ES", "EU"),
    ("IT", "EU"),
    ("PL", "EU"),
    ("SE", "EU"),
    ("NO", "EU"),
    ("FI", "EU"),
    ("CH", "EU"),
    ("AT", "EU"),
    ("UA", "EU"),
    ("RO", "EU"),
    ("PT", "EU"),
    ("CN", "AS"),
    ("JP", "AS"),
    ("KR", "AS"),
    ("IN", "AS"),
    ("SG", "AS"),
    ("HK", "AS"),
    ("TW", "AS"),
    ("ID", "AS"),
    ("VN", "AS"),
    ("TH", "AS"),
    ("MY", "AS"),
    ("PH", "AS"),
    ("IL", "AS"),
    ("AE", "AS"),
    ("SA", "AS"),
    ("TR", "AS"),
    ("KZ", "AS"),
    ("AU", "OC"),
    ("NZ", "OC"),
    ("FJ", "OC"),
    ("ZA", "AF"),
    ("NG", "AF"),
    ("KE", "AF"),
    ("EG", "AF"),
    ("MA", "AF"),
    ("GH", "AF"),
    ("ET", "AF"),
    ("AQ", "AN"),
];

/// Ranges that carry no country in real databases either; no network overlaps them and no
/// client address is drawn from them (127.0.0.0/8 is also the harness's trusted proxy range).
const RESERVED: [(u32, u8); 14] = [
    (0x0000_0000, 8),  // 0.0.0.0/8
    (0x0a00_0000, 8),  // 10.0.0.0/8
    (0x6440_0000, 10), // 100.64.0.0/10
    (0x7f00_0000, 8),  // 127.0.0.0/8
    (0xa9fe_0000, 16), // 169.254.0.0/16
    (0xac10_0000, 12), // 172.16.0.0/12
    (0xc000_0000, 24), // 192.0.0.0/24
    (0xc000_0200, 24), // 192.0.2.0/24
    (0xc058_6300, 24), // 192.88.99.0/24
    (0xc0a8_0000, 16), // 192.168.0.0/16
    (0xc612_0000, 15), // 198.18.0.0/15
    (0xc633_6400, 24), // 198.51.100.0/24
    (0xcb00_7100, 24), // 203.0.113.0/24
    (0xe000_0000, 3),  // 224.0.0.0/3: multicast and class E
];

use registry_edge_benches::geolite::{Continent, Country, Record};
use registry_edge_benches::rng::Rng;

fn record(index: u32, iso: &str, continent: &str) -> Record {
    let names = |what: &str| BTreeMap::from([("en".to_owned(), what.to_owned())]);
    let country = || Country {
        geoname_id: 2_000_000 + index,
        is_in_european_union: None,
        iso_code: iso.to_owned(),
        names: names(iso),
    };
    Record {
        continent: Continent {
            code: continent.to_owned(),
            geoname_id: 6_255_000 + u32::from(continent.as_bytes()[0]),
            names: names(continent),
        },
        country: country(),
        registered_country: country(),
    }
}

fn overlaps_reserved(start: u64, size: u64) -> bool {
    RESERVED.iter().any(|&(net, prefix)| {
        let net_start = u64::from(net);
        let net_end = net_start + (1u64 << (32 - prefix));
        start < net_end && net_start < start + size
    })
}

struct Network {
    start: u32,
    size: u64,
    country: &'static str,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load_mmdb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(db_path), Some(addr_path)) = (args.first(), args.get(1)) else {
        return Err("usage: load_mmdb OUT.mmdb ADDRESSES.txt [COUNT]".into());
    };
    let count: usize = match args.get(2) {
        Some(n) => n.parse()?,
        None => 4096,
    };

    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut records = Vec::new();
    for (i, (iso, continent)) in COUNTRIES.iter().chain(EMBARGOED.iter()).enumerate() {
        records.push((*iso, record(u32::try_from(i)?, iso, continent)));
    }
    let (normal, embargoed) = records.split_at(COUNTRIES.len());

    let mut writer = mmdb_writer::Writer::builder("GeoLite2-Country")
        .description(&[(
            "en",
            "registry-edge load harness: made-up networks, real country codes",
        )])
        .languages(["en"])
        .build_epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        .build();

    let mut networks: Vec<Network> = Vec::new();
    let mut cursor: u64 = 0x0100_0000;
    let end: u64 = 0xe000_0000;
    while cursor < end {
        // A random size, cut down to what the cursor's alignment allows, and halved until the
        // network misses the reserved ranges (which are aligned to their own sizes): the
        // networks tile the space with no gaps but the deliberate ones.
        let mut prefix = (14 + rng.below(9) as u8).max(32 - cursor.trailing_zeros().min(32) as u8);
        while prefix < 24 && overlaps_reserved(cursor, 1u64 << (32 - prefix)) {
            prefix += 1;
        }
        let size = 1u64 << (32 - prefix);
        if cursor + size > end {
            break;
        }
        if overlaps_reserved(cursor, size) || rng.below(30) == 0 {
            cursor += size;
            continue;
        }
        let (iso, rec) = if rng.below(1000) < EMBARGOED_PER_MILLE {
            &embargoed[rng.below(embargoed.len() as u64) as usize]
        } else {
            &normal[rng.below(normal.len() as u64) as usize]
        };
        let start = u32::try_from(cursor)?;
        writer.insert(IpNet::new(IpAddr::V4(Ipv4Addr::from(start)), prefix)?, rec)?;
        networks.push(Network {
            start,
            size,
            country: iso,
        });
        cursor += size;
    }

    let bytes = writer.to_bytes()?;
    std::fs::write(db_path, &bytes)?;

    // Client addresses: uniform over the public IPv4 space (so some fall in unassigned blocks),
    // each with the country of the network holding it.
    let mut out = std::io::BufWriter::new(std::fs::File::create(addr_path)?);
    let mut embargoed_hits = 0usize;
    let mut unknown = 0usize;
    let mut written = 0usize;
    while written < count {
        let addr = 0x0100_0000 + rng.below(end - 0x0100_0000);
        if overlaps_reserved(addr, 1) {
            continue;
        }
        let found = networks.partition_point(|n| u64::from(n.start) <= addr);
        let country = found
            .checked_sub(1)
            .and_then(|i| networks.get(i))
            .filter(|n| addr < u64::from(n.start) + n.size)
            .map_or("--", |n| n.country);
        if EMBARGOED.iter().any(|(iso, _)| *iso == country) {
            embargoed_hits += 1;
        }
        if country == "--" {
            unknown += 1;
        }
        writeln!(out, "{} {country}", Ipv4Addr::from(u32::try_from(addr)?))?;
        written += 1;
    }
    out.flush()?;

    eprintln!(
        "load_mmdb: {db_path}: {} IPv4 networks, {} countries, {:.1} MiB; {addr_path}: {count} addresses, {embargoed_hits} embargoed ({:.1} %), {unknown} without a country",
        networks.len(),
        records.len(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        100.0 * embargoed_hits as f64 / count as f64,
    );
    Ok(())
}
