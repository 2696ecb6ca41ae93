//! Country and continent lookup in a MaxMind DB held in memory.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Reader, WithinOptions};
use serde::Deserialize;

use crate::cidr::normalise;
use crate::error::GeoError;
use crate::file::{self, Refusal, MAX_DATABASE_BYTES};

use index::{Builder, Ranges, ASK_TREE};

mod index;

/// Where the database places an address; both codes upper-case ISO (`US`, `NA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code: `country.iso_code`, else `registered_country.iso_code`.
    pub country: Option<[u8; 2]>,
    /// Continent code (`AF AN AS EU NA OC SA`) from `continent.code`.
    pub continent: Option<[u8; 2]>,
}

impl Location {
    /// The country code as text, for logs and metric labels.
    pub fn country_code(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }

    /// The continent code as text.
    pub fn continent_code(&self) -> Option<&str> {
        self.continent
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
}

/// The parts of a GeoIP2/GeoLite2 (or DB-IP, ...) Country or City record the edge reads.
/// Strings are borrowed from the database buffer and every other key (`names`, `geoname_id`,
/// `traits`, ...) is skipped in place, so decoding allocates nothing.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Place<'a>>,
    #[serde(borrow)]
    registered_country: Option<Place<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

impl Record<'_> {
    fn location(&self) -> Location {
        let iso = |place: &Option<Place<'_>>| place.as_ref().and_then(|p| code(p.iso_code));
        Location {
            country: iso(&self.country).or_else(|| iso(&self.registered_country)),
            continent: self.continent.as_ref().and_then(|c| code(c.code)),
        }
    }
}

/// A two-letter code, upper-cased; anything else (`XXX`, digits, empty) is no code.
fn code(text: Option<&str>) -> Option<[u8; 2]> {
    match text?.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// A MaxMind DB with country data, the whole file in memory, plus its leaves laid out as
/// range tables of packed locations (8 bytes per IPv4 run, 20 per IPv6 run) that answer
/// lookups without walking the tree or decoding records.
///
/// Never memory-mapped: a map of a file that is rewritten in place changes under the reader
/// (wrong answers, or SIGBUS when it shrinks). A copy in memory is immune, and
/// [`ReloadingDb`](crate::ReloadingDb) swaps in a new copy when the file changes.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    ipv4_only: bool,
    networks: usize,
    name: String,
    /// IPv4 addresses (the IPv4 subtree of an IPv6 database).
    v4: Ranges<u32>,
    /// IPv6 addresses outside `::/96`; empty for an IPv4 database.
    v6: Ranges<u128>,
}

impl GeoDb {
    /// Parses and validates a database; `name` (usually the file's path) is only used in
    /// error messages.
    ///
    /// Every network of the search tree is visited once, its record decoded to the location
    /// [`lookup`](Self::lookup) will answer, and the range tables built. The database is
    /// refused when no record
    /// carries a country code ([`GeoError::NoCountryData`]: an ASN or ISP database), and when
    /// any record fails to decode or the tree is malformed ([`GeoError::Invalid`]).
    /// Visiting everything rather than sampling a few records or trusting
    /// `metadata.database_type` (vendors name their types freely; a `City` database is fine,
    /// an `ASN` one is not) costs a fraction of a second on a country database, off the
    /// request path, and buys two guarantees: the country check has no false negatives
    /// (records without a country, such as anycast or satellite ranges, may come first), and a
    /// lookup can never meet a record it cannot decode, so it never fails at request time. The
    /// visit is also what the range tables are built from.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GeoDb, GeoError> {
        let invalid = |message: String| GeoError::Invalid {
            path: PathBuf::from(name),
            message,
        };
        let reader = Reader::from_source(bytes).map_err(|e| invalid(e.to_string()))?;
        let survey = survey(&reader).map_err(invalid)?;
        if survey.with_country == 0 {
            return Err(GeoError::NoCountryData {
                path: PathBuf::from(name),
            });
        }
        if let Some(message) = survey.first_error {
            return Err(invalid(message));
        }
        let ipv4_only = reader.metadata().ip_version == 4;
        Ok(GeoDb {
            reader,
            ipv4_only,
            networks: survey.networks,
            name: name.to_owned(),
            v4: survey.v4,
            v6: survey.v6,
        })
    }

    /// Reads the whole file and validates it as [`from_bytes`](Self::from_bytes) does. Only a
    /// regular file (or a symlink to one) of at most
    /// [`MAX_DATABASE_BYTES`](crate::MAX_DATABASE_BYTES) is read: anything else (a FIFO,
    /// `/dev/zero`, a directory, a bigger file) is refused without reading it
    /// ([`GeoError::NotAFile`], [`GeoError::TooLarge`]). Blocking, without a timeout;
    /// [`ReloadingDb`](crate::ReloadingDb) reads with one.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let contents = file::read(path, path, MAX_DATABASE_BYTES).map_err(Refusal::into_error)?;
        GeoDb::from_bytes(contents.bytes, &path.display().to_string())
    }

    /// Where the database places `ip` (IPv4-mapped addresses as their IPv4 address); an
    /// address it does not know is `Location::default()`. Allocates nothing.
    ///
    /// The answer is the search tree's, read from the range tables built at load (see
    /// `index`); addresses no leaf covers (the tree's IPv4 aliases: 6to4, Teredo) are looked
    /// up in the tree itself.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let ip = normalise(ip);
        let packed = match ip {
            IpAddr::V4(v4) => self.v4.get(u32::from(v4)),
            // The reader would build an error message for this; the answer is known.
            IpAddr::V6(_) if self.ipv4_only => return Location::default(),
            IpAddr::V6(v6) => self.v6.get(u128::from(v6)),
        };
        if packed == ASK_TREE {
            return self.lookup_in_tree(ip);
        }
        index::unpack(packed)
    }

    #[cold]
    fn lookup_in_tree(&self, ip: IpAddr) -> Location {
        match self.reader.lookup(ip) {
            Ok(found) => match found.decode::<Record<'_>>() {
                Ok(Some(record)) => record.location(),
                // Not reached for a database that passed `from_bytes`: every record decodes.
                Ok(None) | Err(_) => Location::default(),
            },
            Err(_) => Location::default(),
        }
    }

    /// `metadata.build_epoch`: when the vendor built the file (seconds since 1970).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// `metadata.database_type`, such as `GeoLite2-Country` or `DBIP-Country-Lite`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// How many networks carry a record (IPv4 and IPv6, aliases counted once).
    pub fn network_count(&self) -> usize {
        self.networks
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("name", &self.name)
            .field("database_type", &self.database_type())
            .field("build_epoch", &self.build_epoch())
            .field("networks", &self.networks)
            .field("ipv4_runs", &self.v4.len())
            .field("ipv6_runs", &self.v6.len())
            .finish_non_exhaustive()
    }
}

struct Survey {
    networks: usize,
    with_country: usize,
    first_error: Option<String>,
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

/// Visits every leaf of the tree once, in address order (IPv4 aliases in an IPv6 tree are
/// skipped: they lead to the IPv4 subtree's leaves), decodes its record and lays the leaves
/// out as range tables.
fn survey(reader: &Reader<Vec<u8>>) -> Result<Survey, String> {
    // A tree of n nodes has at most n + 1 leaves. The reader refuses paths deeper than the
    // address, but nodes shared between branches could still multiply the walk; the bound is
    // the one the reader's own `verify()` uses.
    let limit = usize::try_from(reader.metadata().node_count)
        .unwrap_or(usize::MAX)
        .saturating_mul(3);
    let ipv6_tree = reader.metadata().ip_version == 6;
    let mut networks = 0usize;
    let mut with_country = 0usize;
    let mut first_error = None;
    let mut v4 = Builder::<u32>::new();
    let mut v6 = Builder::<u128>::new();
    let options = WithinOptions::default().include_networks_without_data();
    let mut leaves = 0usize;
    for item in reader.networks(options).map_err(|e| e.to_string())? {
        leaves += 1;
        if leaves > limit {
            return Err(format!(
                "the search tree has more than {limit} leaves: nodes are shared or cyclic"
            ));
        }
        let found = item.map_err(|e| e.to_string())?;
        let network = found.network().map_err(|e| e.to_string())?;
        let mut location = Location::default();
        if found.has_data() {
            networks += 1;
            match found.decode::<Record<'_>>() {
                Ok(Some(record)) => location = record.location(),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("the record of {network}: {e}"));
                }
            }
            if location.country.is_some() {
                with_country += 1;
            }
        }
        let (start, end) = index::tree_range(network.network(), network.prefix(), ipv6_tree)
            .ok_or_else(|| format!("network {network} does not fit the tree"))?;
        let packed = index::pack(location);
        let in_ipv4 = |a: u128| u32::try_from(a).ok();
        // IPv6 addresses inside `::/96` are deprecated IPv4-compatible ones: leaves wholly
        // inside it stay out of the IPv6 table (a gap there asks the tree), which would
        // otherwise repeat the whole IPv4 table.
        if ipv6_tree && end > u128::from(u32::MAX) {
            v6.push(start, end, packed)
                .map_err(|e| format!("{e} at {network}"))?;
        }
        // The IPv4 part of the tree: all of an IPv4 tree, `::/96` of an IPv6 one.
        if let Some(v4_start) = in_ipv4(start) {
            let v4_end = in_ipv4(end).unwrap_or(u32::MAX);
            v4.push(v4_start, v4_end, packed)
                .map_err(|e| format!("{e} at {network}"))?;
        }
    }
    Ok(Survey {
        networks,
        with_country,
        first_error,
        v4: v4.finish(),
        v6: v6.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_two_letters_upper_cased() {
        assert_eq!(code(Some("us")), Some(*b"US"));
        assert_eq!(code(Some("De")), Some(*b"DE"));
        assert_eq!(code(Some("USA")), None);
        assert_eq!(code(Some("U")), None);
        assert_eq!(code(Some("")), None);
        assert_eq!(code(Some("1A")), None);
        assert_eq!(code(Some("é")), None);
        assert_eq!(code(None), None);
    }

    #[test]
    fn location_text_accessors() {
        let l = Location {
            country: Some(*b"CU"),
            continent: Some(*b"NA"),
        };
        assert_eq!(l.country_code(), Some("CU"));
        assert_eq!(l.continent_code(), Some("NA"));
        assert_eq!(Location::default().country_code(), None);
    }
}
