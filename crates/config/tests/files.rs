//! `check` opens the files a configuration names the way the proxy will: real certificates,
//! keys and MMDB files built here pass; missing, garbage or expired ones are errors on their key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use registry_edge_config::{parse, Options};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p =
            std::env::temp_dir().join(format!("registry-edge-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cert(dir: &Dir, name: &str, expired: bool) {
    let mut params = rcgen::CertificateParams::new(vec!["acr.example.com".to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    dir.write(&format!("{name}.pem"), cert.pem());
    dir.write(&format!("{name}.key"), key.serialize_pem());
}

#[derive(serde::Serialize)]
struct Country {
    iso_code: String,
}
#[derive(serde::Serialize)]
struct Record {
    country: Country,
}

fn mmdb(dir: &Dir) {
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    let rec = Record {
        country: Country {
            iso_code: "CU".into(),
        },
    };
    w.insert("192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
        .unwrap();
    dir.write("geo.mmdb", w.to_bytes().unwrap());
}

fn config(dir: &Path) -> String {
    format!(
        "version: 1\n\
         listeners:\n  - address: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - {{ cert: tls.pem, key: tls.key }}\n\
         registry:\n  login_server: reg.azurecr.io\n  public_host: acr.example.com\n  ca_file: ca.pem\n\
         geoip:\n  database: geo.mmdb\n\
         access:\n  embargo: {{ countries: [CU] }}\n\
         logging:\n  access_log: {}/logs/access.log\n",
        dir.display()
    )
}

fn check(dir: &Dir) -> Result<(), String> {
    check_text(dir, &config(&dir.0))
}

/// `text` validated with its files read, relative to `dir`.
fn check_text(dir: &Dir, text: &str) -> Result<(), String> {
    parse(text, "edge.yaml", &dir.0, Options { check_files: true })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn real_files_pass() {
    let dir = Dir::new("ok");
    cert(&dir, "tls", false);
    cert(&dir, "ca", false);
    mmdb(&dir);
    std::fs::create_dir_all(dir.0.join("logs")).unwrap();
    check(&dir).unwrap();
}

#[test]
fn missing_garbage_and_expired_files_are_reported_each_on_its_key() {
    let dir = Dir::new("bad");
    cert(&dir, "tls", true);
    dir.write("tls.key", "not a key");
    dir.write("geo.mmdb", "not a database");
    let err = check(&dir).unwrap_err();
    for want in [
        "edge.yaml:6:19: listeners[0].tls.certificates[0].cert:",
        "expired on",
        "edge.yaml:6:33: listeners[0].tls.certificates[0].key:",
        "no usable PEM private key",
        "registry.ca_file:",
        "ca.pem: cannot read",
        "geoip.database:",
        "is not a usable MaxMind DB",
        "logging.access_log: the directory of",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 5, "{err}");
}

#[test]
fn no_files_skips_them() {
    let dir = Dir::new("skip");
    parse(
        &config(&dir.0),
        "edge.yaml",
        &dir.0,
        Options { check_files: false },
    )
    .unwrap();
}

#[test]
fn token_server_is_probed_by_connection() {
    let yaml = "version: 1\nlisteners: [{ address: \"127.0.0.1:1\" }]\nregistry:\n  login_server: reg.azurecr.io\n  public_host: acr.example.com\n  token_server: auth.example.net\n  health_check: { path: /v2/, interval: 3s, unhealthy_after: 4 }\n";
    let c = parse(
        yaml,
        "t.yaml",
        std::path::Path::new("."),
        Options { check_files: false },
    )
    .unwrap();
    let t = c.registry.token_server.unwrap();
    assert!(matches!(
        t.health_check.kind,
        registry_edge_config::HealthCheckKind::Tcp
    ));
    assert_eq!(t.health_check.interval, std::time::Duration::from_secs(3));
    assert_eq!(t.health_check.unhealthy_after, 4);
    assert!(matches!(
        c.registry.login.health_check.kind,
        registry_edge_config::HealthCheckKind::Http { .. }
    ));
}

/// A configuration with a `blob_cache` block (line 4 on) whose paths are relative to `dir`.
fn check_blob_cache(dir: &Dir, key_file: &str) -> Result<(), String> {
    check_text(
        dir,
        &format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry: {{ login_server: reg.azurecr.io, public_host: acr.example.com }}\n\
             blob_cache:\n  path: cache\n  max_size: 1GiB\n  key_file: {key_file}\n"
        ),
    )
}

#[test]
fn blob_cache_key_file_must_hold_32_bytes_and_its_directory_may_be_missing() {
    let dir = Dir::new("blob-cache");
    let key = dir.0.join("blob-cache.key");
    let make = format!(
        "make one with `head -c 32 /dev/urandom > {}` and give the same file to every replica",
        key.display()
    );
    // Missing.
    let err = check_blob_cache(&dir, "blob-cache.key").unwrap_err();
    assert!(
        err.starts_with(&format!(
            "edge.yaml:7:13: blob_cache.key_file: {}: cannot read: ",
            key.display()
        )) && err.ends_with(&make),
        "{err}"
    );
    // Too short.
    dir.write("blob-cache.key", [7u8; 31]);
    assert_eq!(
        check_blob_cache(&dir, "blob-cache.key").unwrap_err(),
        format!(
            "edge.yaml:7:13: blob_cache.key_file: {}: holds 31 bytes, a key needs at least 32; {make}",
            key.display()
        )
    );
    // Not a regular file: refused without being read (/dev/zero would give any length).
    for other in ["/dev/zero", "/tmp"] {
        let err = check_blob_cache(&dir, other).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "edge.yaml:7:13: blob_cache.key_file: {other}: not a regular file; make one with"
            )),
            "{err}"
        );
    }
    // 32 bytes (or more) pass, through a symlink too; the cache directory need not exist yet.
    dir.write("blob-cache.key", [7u8; 32]);
    check_blob_cache(&dir, "blob-cache.key").unwrap();
    std::os::unix::fs::symlink(&key, dir.0.join("link.key")).unwrap();
    check_blob_cache(&dir, "link.key").unwrap();
    dir.write("long.key", [7u8; 4096]);
    check_blob_cache(&dir, "long.key").unwrap();
    std::fs::create_dir(dir.0.join("cache")).unwrap();
    check_blob_cache(&dir, "blob-cache.key").unwrap();
    // Something else where the directory goes.
    std::fs::remove_dir(dir.0.join("cache")).unwrap();
    let cache = dir.write("cache", "a file");
    assert_eq!(
        check_blob_cache(&dir, "blob-cache.key").unwrap_err(),
        format!(
            "edge.yaml:5:9: blob_cache.path: {}: exists and is not a directory",
            cache.display()
        )
    );
    // Without files, neither is looked at.
    parse(
        "version: 1\nlisteners: [{ address: \"127.0.0.1:8080\" }]\nregistry: { login_server: reg.azurecr.io, public_host: acr.example.com }\nblob_cache: { path: cache, max_size: 1GiB, key_file: missing.key }\n",
        "edge.yaml",
        &dir.0,
        Options { check_files: false },
    )
    .unwrap();
}
