//! Why a GeoIP database was not (re)loaded.

use std::path::PathBuf;

/// Why a GeoIP database file cannot serve: start-up turns it into a config error, a reload
/// into [`ReloadOutcome::Refused`](crate::ReloadOutcome::Refused) with the old database kept.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be opened or read.
    #[error("cannot read GeoIP database {}: {source}", path.display())]
    Io {
        /// The configured path (or the name given to [`GeoDb::from_bytes`](crate::GeoDb::from_bytes)).
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a usable MaxMind DB: truncated, half-written, corrupt, or a record
    /// the lookup could not decode.
    #[error("GeoIP database {} is not a usable MaxMind DB: {message}", path.display())]
    Invalid {
        /// The configured path (or the name given to [`GeoDb::from_bytes`](crate::GeoDb::from_bytes)).
        path: PathBuf,
        /// The reader's or the validation's explanation.
        message: String,
    },
    /// The path leads to something other than a regular file (a FIFO, a device such as
    /// `/dev/zero`, a directory): reading it could block or never end, so it is not opened
    /// (a symlink to a regular file is fine).
    #[error(
        "GeoIP database {} is {kind}, not a regular file: refused without reading it",
        path.display()
    )]
    NotAFile {
        /// The configured path.
        path: PathBuf,
        /// What it is instead: `a FIFO`, `a character device`, `a directory`, ...
        kind: &'static str,
    },
    /// The file is larger than the limit ([`MAX_DATABASE_BYTES`](crate::MAX_DATABASE_BYTES),
    /// 1 GiB), or grew past it while it was read; no country or city database comes near it.
    #[error(
        "GeoIP database {} is larger than {limit} bytes, the most registry-edge reads: refused",
        path.display()
    )]
    TooLarge {
        /// The configured path.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A valid MaxMind DB in which no record carries `country.iso_code` (or
    /// `registered_country.iso_code`): an ASN, ISP or other non-country database.
    #[error(
        "GeoIP database {} has no country data: no record carries country.iso_code (an ASN or other non-country database?)",
        path.display()
    )]
    NoCountryData {
        /// The configured path (or the name given to [`GeoDb::from_bytes`](crate::GeoDb::from_bytes)).
        path: PathBuf,
    },
}

impl GeoError {
    /// The file (or name) the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            GeoError::Io { path, .. }
            | GeoError::NotAFile { path, .. }
            | GeoError::TooLarge { path, .. }
            | GeoError::Invalid { path, .. }
            | GeoError::NoCountryData { path } => path,
        }
    }
}
