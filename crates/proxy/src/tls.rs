//! Downstream TLS: the certificate is chosen by SNI among the listener's certificates, through a
//! rustls resolver (the first certificate answers clients without SNI, or with a name no
//! certificate carries). The set sits behind an atomic swap so that rotation can replace it
//! without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use registry_edge_config::CertificatePair;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// One loaded certificate with the names it answers for.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

#[derive(Debug, Default)]
struct CertSet {
    /// (certificate file, expiry in Unix seconds), in configuration order.
    expiries: Vec<(String, i64)>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

/// The listener's TLS acceptor: TLS 1.2 and 1.3, no client certificates, the certificate chosen
/// by `resolver`, HTTP/2 offered before HTTP/1.1 (ALPN); rustls's defaults otherwise (a 256-entry
/// session cache) but for two choices made for handshake cost:
///
/// - the server's cipher suite order, AES-128-GCM first: OpenSSL-based clients (curl, Python)
///   offer AES-256-GCM-SHA384 first, whose SHA-384 transcript hash has no CPU instructions on
///   x86 where SHA-256 has (Go's clients, containerd and docker, already offer AES-128-GCM first
///   on hardware with AES instructions); AES-128-GCM is as recommended (Mozilla's intermediate
///   profile puts it first) and cheaper. A client that puts ChaCha20 first for want of AES
///   hardware gets AES-GCM too when it offers it;
/// - one TLS 1.3 session ticket per handshake, not two: a client resumes with one, and Go's
///   clients (containerd, docker) keep only the last they got per server.
pub fn acceptor(resolver: Arc<SniResolver>) -> Result<pingora::tls::TlsAcceptor, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| suite_preference(s.suite()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    config.send_tls13_tickets = 1;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(pingora::tls::TlsAcceptor::from(Arc::new(config)))
}

/// Lower first: AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305 (a stable sort keeps
/// rustls's order within each).
fn suite_preference(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn load(pairs: &[CertificatePair]) -> Result<SniResolver, TlsError> {
        Ok(SniResolver {
            set: ArcSwap::from_pointee(build_set(pairs)?),
        })
    }

    /// Each certificate file with its leaf's expiry (Unix seconds).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        self.set.load().expiries.clone()
    }

    /// Replaces the whole set at once; handshakes in progress keep the set they started with.
    pub fn reload(&self, pairs: &[CertificatePair]) -> Result<(), TlsError> {
        self.set.store(Arc::new(build_set(pairs)?));
        Ok(())
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = set.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = set.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        set.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

fn build_set(pairs: &[CertificatePair]) -> Result<CertSet, TlsError> {
    let mut set = CertSet::default();
    for pair in pairs {
        let loaded = load_pair(&pair.cert, &pair.key)?;
        set.expiries
            .push((pair.cert.display().to_string(), loaded.not_after));
        if set.default.is_none() {
            set.default = Some(loaded.key.clone());
        }
        for name in loaded.names {
            // The first certificate naming a host wins, as in the configuration's order.
            match name.strip_prefix("*.") {
                Some(parent) => {
                    set.wildcard
                        .entry(parent.to_owned())
                        .or_insert_with(|| loaded.key.clone());
                }
                None => {
                    set.exact.entry(name).or_insert_with(|| loaded.key.clone());
                }
            }
        }
    }
    Ok(set)
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert, "holds no certificate"));
    };
    let (names, not_after) = certificate_names(leaf).map_err(|e| file_error(cert, e))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no usable PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| file_error(key, format!("does not match the certificate: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// DNS names of the leaf (subjectAltName, else the common name), lower case, and its expiry.
fn certificate_names(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// A listener's certificate files and resolver, watched for replacement.
pub struct Watched {
    pub listener: String,
    pub pairs: Vec<CertificatePair>,
    pub resolver: Arc<SniResolver>,
    stamp: std::sync::Mutex<Vec<Option<FileStamp>>>,
}

/// What identifies a file's content without reading it: the target after symlinks, inode,
/// size and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    target: std::path::PathBuf,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&target).ok()?;
    Some(FileStamp {
        target,
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

fn stamps(pairs: &[CertificatePair]) -> Vec<Option<FileStamp>> {
    pairs
        .iter()
        .flat_map(|p| [stamp(&p.cert), stamp(&p.key)])
        .collect()
}

/// The outcome of a check of a listener's files.
pub enum CertCheck {
    Unchanged,
    Reloaded,
    Refused(TlsError),
}

impl Watched {
    pub fn new(listener: String, pairs: Vec<CertificatePair>, resolver: Arc<SniResolver>) -> Self {
        let stamp = std::sync::Mutex::new(stamps(&pairs));
        Watched {
            listener,
            pairs,
            resolver,
            stamp,
        }
    }

    /// Reloads the listener's certificates when any file changed (replaced, copied over,
    /// symlink swapped). A broken set is refused and the old one kept; the same broken files
    /// are not retried until they change again. Blocking: reads files.
    pub fn check(&self) -> CertCheck {
        let now = stamps(&self.pairs);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return CertCheck::Unchanged;
        }
        *last = now;
        match self.resolver.reload(&self.pairs) {
            Ok(()) => CertCheck::Reloaded,
            Err(e) => CertCheck::Refused(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory with self-signed certificate and key files.
    struct Files(crate::testing::Scratch);

    impl Files {
        fn new(name: &str) -> Files {
            Files(crate::testing::Scratch::new(&format!("tls-{name}")))
        }

        /// A certificate for `names`, written as `<file>.pem` / `<file>.key`; returns the pair
        /// and the certificate's DER.
        fn issue(&self, file: &str, names: &[&str]) -> (CertificatePair, Vec<u8>) {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let issued = rcgen::generate_simple_self_signed(names).unwrap();
            let pair = CertificatePair {
                cert: self.0.join(format!("{file}.pem")),
                key: self.0.join(format!("{file}.key")),
            };
            std::fs::write(&pair.cert, issued.cert.pem()).unwrap();
            std::fs::write(&pair.key, issued.signing_key.serialize_pem()).unwrap();
            (pair, issued.cert.der().to_vec())
        }
    }

    fn served(r: &SniResolver, name: Option<&str>) -> Vec<u8> {
        r.pick(name).unwrap().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_certificate_by_exact_name_then_wildcard_then_the_first() {
        let files = Files::new("pick");
        let (registry, registry_der) = files.issue("registry", &["registry.test"]);
        let (data, data_der) = files.issue("data", &["*.data.test"]);
        let r = SniResolver::load(&[registry, data]).unwrap();
        assert_eq!(served(&r, Some("registry.test")), registry_der);
        assert_eq!(served(&r, Some("REGISTRY.test")), registry_der);
        assert_eq!(served(&r, Some("eastus.data.test")), data_der);
        // A wildcard covers one label only; anything else gets the first certificate.
        assert_eq!(served(&r, Some("a.eastus.data.test")), registry_der);
        assert_eq!(served(&r, Some("other.example")), registry_der);
        assert_eq!(served(&r, None), registry_der);
        let expiries = r.expiries();
        assert_eq!(expiries.len(), 2);
        assert!(expiries.iter().all(|(_, at)| *at > 0));
    }

    #[test]
    fn a_broken_replacement_is_refused_and_the_old_set_kept() {
        let files = Files::new("rotate");
        let (pair, first) = files.issue("registry", &["registry.test"]);
        let resolver = Arc::new(SniResolver::load(std::slice::from_ref(&pair)).unwrap());
        let watched = Watched::new("l".into(), vec![pair.clone()], resolver.clone());
        assert!(matches!(watched.check(), CertCheck::Unchanged));
        // A key that does not parse: refused, the old certificate still served, and the same
        // broken files are not read again until they change.
        std::fs::write(&pair.key, "not a key").unwrap();
        assert!(matches!(watched.check(), CertCheck::Refused(_)));
        assert_eq!(served(&resolver, Some("registry.test")), first);
        assert!(matches!(watched.check(), CertCheck::Unchanged));
        // A whole new pair (the stamps differ in size at least): loaded.
        let (_, second) = files.issue("registry", &["registry.test", "other.test"]);
        assert!(matches!(watched.check(), CertCheck::Reloaded));
        assert_eq!(served(&resolver, Some("registry.test")), second);
        assert_ne!(first, second);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let files = Files::new("missing");
        let pair = CertificatePair {
            cert: files.0.join("absent.pem"),
            key: files.0.join("absent.key"),
        };
        let e = SniResolver::load(&[pair]).unwrap_err().to_string();
        assert!(e.contains("absent.pem"), "{e}");
    }
}
