//! Checks of the files a configuration names, for `check` without `--no-files`. They open and
//! parse each file the way the proxy will, so that a bad file fails here and not at start.

use std::io::Read;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The fewest bytes `blob_cache.key_file` may hold: a 256-bit HMAC key.
pub const BLOB_CACHE_KEY_MIN_BYTES: usize = 32;

pub fn check_certificate(path: &Path) -> Result<(), String> {
    let certs = read_certs(path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            format!(
                "{}: certificate {} does not parse: {e}",
                path.display(),
                i + 1
            )
        })?;
        // The leaf is what clients check; an expired intermediate also fails them.
        let not_after = cert.validity().not_after;
        if not_after.timestamp() < now {
            return Err(format!(
                "{}: certificate {} ({}) expired on {}",
                path.display(),
                i + 1,
                cert.subject(),
                not_after
            ));
        }
    }
    Ok(())
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

pub fn check_private_key(path: &Path) -> Result<(), String> {
    PrivateKeyDer::from_pem_file(path)
        .map(|_| ())
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

pub fn check_ca_file(path: &Path) -> Result<(), String> {
    read_certs(path).map(|_| ())
}

/// Opens the database as the proxy will ([`registry_edge_geo::GeoDb::open`]): only a regular
/// file within the size limit (a FIFO or `/dev/zero` at the path is refused, never read), a
/// valid MaxMind DB whose records carry country codes.
pub fn check_geoip(path: &Path) -> Result<(), String> {
    registry_edge_geo::GeoDb::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `blob_cache.key_file`: the HMAC key's file must be a regular file (or a symlink to one) that
/// holds at least [`BLOB_CACHE_KEY_MIN_BYTES`] bytes. Anything else at the path (a FIFO, a device,
/// a directory) is refused without being opened.
pub fn check_blob_cache_key(path: &Path) -> Result<(), String> {
    let make = || {
        format!(
            "make one with `head -c {BLOB_CACHE_KEY_MIN_BYTES} /dev/urandom > {}` and give the same file to every replica",
            path.display()
        )
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{}: cannot read: {e}; {}", path.display(), make()))?;
    if !meta.is_file() {
        return Err(format!(
            "{}: not a regular file; {}",
            path.display(),
            make()
        ));
    }
    let mut head = Vec::with_capacity(BLOB_CACHE_KEY_MIN_BYTES);
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(BLOB_CACHE_KEY_MIN_BYTES as u64)
                .read_to_end(&mut head)
        })
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if head.len() < BLOB_CACHE_KEY_MIN_BYTES {
        return Err(format!(
            "{}: holds {} bytes, a key needs at least {BLOB_CACHE_KEY_MIN_BYTES}; {}",
            path.display(),
            head.len(),
            make()
        ));
    }
    Ok(())
}

/// `blob_cache.path` need not exist (the proxy creates it); what exists there must be a
/// directory (or a symlink to one).
pub fn check_blob_cache_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{}: exists and is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: cannot use: {e}", path.display())),
    }
}
