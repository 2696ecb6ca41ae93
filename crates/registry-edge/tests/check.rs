//! `registry-edge check` as an operator runs it: every shipped config passes, bad files list
//! every mistake with `file:line:col` and exit 64, malformed YAML never panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `registry-edge check` from the repository root, so that paths in messages are stable.
fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .arg("check")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// Runs the binary with `args`.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(args)
        .output()
        .unwrap()
}

/// The standard output of a run that must have succeeded (else its standard error).
fn succeeded(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("registry-edge-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_shipped_config_passes_without_files() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        let rel = path
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let out = check(&["--no-files", "-c", &rel]);
        assert!(
            out.status.success(),
            "{rel} fails check:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("valid"), "{rel}: no summary:\n{stdout}");
    }
    assert!(seen >= 3, "conf/ should hold at least three configs");
}

#[test]
fn contoso_summary_says_what_the_file_means() {
    let out = check(&["--no-files", "-c", "conf/registry-edge.yaml"]);
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "acr-secure.contoso.com → contososecurepublicacr.azurecr.io:443 (tls",
        "data acr-secure-data.contoso.com/_r/eastus → contososecurepublicacr.eastus.data.azurecr.io:443",
        "embargo CU IR KP SY (unknown country: allow)",
        "US CA MX NA SA → eastus",
        "registry:location",
        "rewrite-location: if Location ~ /https:\\/\\/contososecurepublicacr.azurecr.io(.*)$/i (status 302)",
        "[not opened: --no-files]",
        "blobs in /var/cache/registry-edge/blobs, 50GiB, of 1MiB or more, tokens valid 600s at most",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    assert!(
        s.lines().count() <= 30,
        "summary is more than a screen:\n{s}"
    );
}

#[test]
fn golden_errors_for_a_file_with_many_mistakes() {
    let out = check(&[
        "--no-files",
        "-c",
        "crates/registry-edge/tests/fixtures/bad.yaml",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let golden = repo().join("crates/registry-edge/tests/fixtures/bad.errors");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &stderr).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        stderr, want,
        "run with UPDATE_GOLDEN=1 to accept a deliberate change"
    );
}

#[test]
fn three_semantic_mistakes_are_all_reported_with_positions() {
    let p = write_temp(
        "three.yaml",
        "version: 1\n\
         listeners: [{ address: \"127.0.0.1:8080\" }]\n\
         registry:\n  \
           login_server: reg.azurecr.io\n  \
           public_host: acr.contoso.com\n  \
           data_endpoints:\n    \
             - { region: eastus, endpoint: reg.eastus.data.azurecr.io, public_host: acr.contoso.com }\n\
         local_region: westus\n\
         clients: { trusted_proxies: [\"10.0.0.0/33\"] }\n",
    );
    let out = check(&["--no-files", "-c", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = p.display().to_string();
    for want in [
        format!("{file}:7:76: registry.data_endpoints[0].public_host: `acr.contoso.com` must not be the login public host"),
        format!("{file}:8:15: local_region: no endpoint has region `westus` (known regions: eastus)"),
        format!("{file}:9:30: clients.trusted_proxies[0]: `10.0.0.0/33` is not an IP address or CIDR"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("3 errors found"), "{stderr}");
}

#[test]
fn malformed_yaml_gives_a_line_never_a_panic() {
    for (name, text, line) in [
        ("tabs.yaml", "version: 1\nlisteners:\n\t- address: x\n", 3),
        ("unclosed.yaml", "version: 1\nregistry: { login_server: a\n", 3),
        ("unknown-key.yaml", "version: 1\nlisteners: []\nregistry:\n  login_server: a\n  public_host: b\n  colour: red\n", 6),
        ("wrong-type.yaml", "version: one\n", 1),
    ] {
        let p = write_temp(name, text);
        let out = check(&["-c", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "{name}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let prefix = format!("{}:{line}:", p.display());
        assert!(stderr.starts_with(&prefix), "{name}: want {prefix}…, got:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let out = check(&["-c", "conf/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn files_are_opened_unless_no_files() {
    // conf/minimal.yaml names certificates under /etc that this machine does not have.
    let out = check(&["-c", "conf/minimal.yaml"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("listeners[0].tls.certificates[0].cert: /etc/registry-edge/tls/registry.pem: cannot read"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[0].tls.certificates[0].key"),
        "{stderr}"
    );
}

#[test]
fn geo_lookup_shows_country_and_decision() {
    #[derive(serde::Serialize)]
    struct Rec {
        country: Iso,
        continent: Cont,
    }
    #[derive(serde::Serialize)]
    struct Iso {
        iso_code: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Cont {
        code: &'static str,
    }
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    for (net, iso, code) in [("192.0.2.0/24", "CU", "NA"), ("2001:db8::/32", "DE", "EU")] {
        let rec = Rec {
            country: Iso { iso_code: iso },
            continent: Cont { code },
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
    }
    let db = write_temp("geo.mmdb", "");
    std::fs::write(&db, w.to_bytes().unwrap()).unwrap();
    let cfg = write_temp(
        "geo.yaml",
        &format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:8080\" }}]\nregistry: {{ login_server: r.internal, public_host: r.example }}\ngeoip: {{ database: \"{}\" }}\naccess:\n  embargo: {{ countries: [CU], unknown_country: deny }}\n  allow_cidrs: [192.0.2.7/32]\n",
            db.display()
        ),
    );
    let lookup = |addr: &str| succeeded(run(&["geo", "lookup", addr, "-c", cfg.to_str().unwrap()]));
    let s = lookup("192.0.2.1");
    assert!(s.contains("country    CU"), "{s}");
    assert!(s.contains("continent  NA"), "{s}");
    assert!(s.contains("decision   refuse 451 DENIED (embargo)"), "{s}");
    let s = lookup("::ffff:192.0.2.1");
    assert!(
        s.contains("address    192.0.2.1"),
        "mapped addresses are IPv4: {s}"
    );
    assert!(s.contains("refuse 451"), "{s}");
    let s = lookup("192.0.2.7");
    assert!(s.contains("decision   allow"), "allow_cidrs pass: {s}");
    let s = lookup("2001:db8::5");
    assert!(
        s.contains("country    DE") && s.contains("decision   allow"),
        "{s}"
    );
    let s = lookup("198.51.100.1");
    assert!(s.contains("country    unknown"), "{s}");
    assert!(s.contains("refuse 451 DENIED (unknown_country)"), "{s}");
}

#[test]
fn endpoints_probes_each_peer_now() {
    use std::io::{Read, Write};
    // A login server that answers the probe like a registry (401 on /v2/), a data endpoint that
    // accepts connections, and one that refuses them.
    let login = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let login_addr = login.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in login.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let data = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = write_temp(
        "endpoints.yaml",
        &format!(
            "version: 1\nlisteners: [{{ address: \"127.0.0.1:1\" }}]\nregistry:\n  login_server: \"{login_addr}\"\n  public_host: r.example\n  tls: false\n  data_endpoints:\n    - {{ region: eastus, endpoint: \"{}\", public_host: d.example }}\n    - {{ region: westus, endpoint: \"{refused}\", public_host: d.example }}\n",
            data.local_addr().unwrap()
        ),
    );
    let s = succeeded(run(&["endpoints", "-c", cfg.to_str().unwrap()]));
    let line = |role: &str, region: &str| {
        s.lines()
            .find(|l| l.starts_with(role) && l.contains(region))
            .unwrap_or_else(|| panic!("no {role} {region} line in:\n{s}"))
            .to_string()
    };
    assert!(line("login", "-").ends_with("healthy (GET /v2/)"), "{s}");
    assert!(
        line("data", "eastus").contains("d.example/_r/eastus/"),
        "{s}"
    );
    assert!(
        line("data", "eastus").ends_with(" healthy (connect)"),
        "{s}"
    );
    assert!(
        line("data", "westus").ends_with("unhealthy (connect)"),
        "{s}"
    );
    drop(data);
}

#[test]
fn init_writes_a_valid_config_and_refuses_storage_accounts() {
    let seed = write_temp(
        "show-endpoints.json",
        "{\n\"loginServer\": \"contoso.azurecr.io\",\n\"dataEndpoints\": [\n{\n\"region\": \"eastus\",\n\"endpoint\": \"contoso.eastus.data.azurecr.io\",\n},\n]\n}\n",
    );
    let init = |endpoints: &Path, public: &str, data: &str| {
        run(&[
            "init",
            "--endpoints",
            endpoints.to_str().unwrap(),
            "--public-host",
            public,
            "--data-host",
            data,
        ])
    };
    // `init` succeeds and its output passes `check`; returns the file and check's summary.
    let init_then_check = |public: &str, data: &str, file: &str| {
        let yaml = write_temp(file, &succeeded(init(&seed, public, data)));
        let summary = succeeded(check(&["--no-files", "-c", yaml.to_str().unwrap()]));
        (yaml, summary)
    };
    init_then_check("registry.contoso.com", "data.contoso.com", "init.yaml");
    // The data host may be a subdomain of the public host (the edge never forwards credentials
    // to a data endpoint; `check` says so), but not the public host itself.
    let (yaml, summary) = init_then_check("contoso.com", "data.contoso.com", "init-sub.yaml");
    assert!(
        summary.contains("subdomain") && summary.contains("Authorization"),
        "{summary}"
    );
    assert_eq!(
        init(&seed, "contoso.com", "contoso.com").status.code(),
        Some(64)
    );
    // `endpoints` needs no certificate file (init's output names some that do not exist yet).
    let out = run(&["endpoints", "-c", yaml.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("ROLE") && text.contains("note: data host data.contoso.com"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = write_temp(
        "blob.json",
        r#"{"loginServer":"c.azurecr.io","dataEndpoints":[{"region":"eastus","endpoint":"*.blob.core.windows.net"}]}"#,
    );
    let out = init(&blob, "r.example", "d.example");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enable dedicated data endpoints"));
}
