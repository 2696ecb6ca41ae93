//! Checks of the files a configuration names, for `check` without `--no-files`. They open and
//! parse each file the way the proxy will, so that a bad file fails here and not at start.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
