//! What changes while the edge runs, without a restart and without failing a request: its
//! configuration (`registry-edge reload`, SIGHUP), its certificates, the GeoIP database (by
//! rename, by copy in place, by a Kubernetes symlink swap).

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    access_log_with, assert_load_unharmed, assert_oci_error, curl, eventually, geo_dir, get,
    get_from, make_certs, metrics_text, metrics_with, mmdb, policy_edge, policy_yaml,
    read_response, sample, slow_download, small_requests, start_edge, start_edge_with,
    start_upload, uploads, HTTP_OPTS,
};

/// `registry-edge reload -c FILE`: (success, stdout + stderr).
fn reload_command(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_reload_under_load() {
    let edge = start_edge_with("reload", HTTP_OPTS, "");
    let config = edge.dir.join("edge.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    let host = format!("registry.test:{}", edge.http);
    let data_host = format!("data.test:{}", edge.http);
    let port = edge.http;
    let gauge = |series: &str| sample(&metrics_text(edge.admin), series);
    assert_eq!(gauge("registry_edge_config_generation"), 1.0);
    assert_eq!(uploads(&edge, &host).status, 202, "writes pass before");
    assert_eq!(
        get(port, &host, "/v2/", "").header("x-frame-options"),
        Some("DENY")
    );

    // A download in flight and a stream of small requests across every reload below.
    let size: u64 = 192 << 20;
    let download = slow_download(port, &data_host, size);
    let stop = Arc::new(AtomicBool::new(false));
    let small = small_requests(port, &host, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // An upload in flight across the reload: its head passed the policy before, its body ends
    // after; it finishes under the configuration it started with.
    let (mut upload, started) = start_upload(port, &host);
    assert_eq!(started.status, 202);
    let target = started
        .header("location")
        .unwrap()
        .strip_prefix(&format!("http://{host}"))
        .unwrap()
        .to_string();
    upload
        .write_all(
            format!("PATCH {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .as_bytes(),
        )
        .unwrap();

    // 1. Policy and rewrites change; the login upstream's settings too (its peers and their
    //    health are kept: no request may find it without a peer).
    let changed = original
        .replace(
            "rewrites:\n",
            "access:\n  read_only: true\n  deny_cidrs: [\"127.0.9.0/24\"]\nrewrites:\n",
        )
        .replace("value: DENY", "value: SAMEORIGIN")
        .replace("read_timeout: 2s", "read_timeout: 3s");
    std::fs::write(&config, &changed).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(ok, "{out}");
    assert!(out.contains("generation 2"), "{out}");
    assert!(out.contains("applied: registry, access, rewrites"), "{out}");
    assert!(!out.contains("restart required"), "{out}");
    upload.write_all(b"6\r\n world\r\n0\r\n\r\n").unwrap();
    let finished = read_response(&mut BufReader::new(upload.try_clone().unwrap()), false);
    assert_eq!(
        finished.status, 202,
        "the upload in flight finishes: {finished:?}"
    );
    assert_eq!(
        finished.header("x-frame-options"),
        Some("DENY"),
        "under the rules it started with"
    );
    assert_oci_error(&start_upload(port, &host).1, 405, "UNSUPPORTED");
    assert_eq!(
        get(port, &host, "/v2/", "").header("x-frame-options"),
        Some("SAMEORIGIN")
    );
    assert_eq!(get_from("127.0.9.9", port, &host, "/v2/", "").status, 403);
    assert_eq!(gauge("registry_edge_config_generation"), 2.0);
    assert_eq!(
        gauge("registry_edge_config_reloads_total{result=\"ok\"}"),
        1.0
    );

    // 2. An invalid file: `reload` refuses it before signalling (exit 64) ...
    let broken = changed.replace("read_only: true", "read_only: maybe");
    std::fs::write(&config, &broken).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(!ok);
    assert!(
        out.contains("edge.yaml:") && out.contains("read_only"),
        "{out}"
    );
    // ... and the process refuses it on a bare SIGHUP: logged, counted, old one kept.
    let pid = edge.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually("the refusal to be counted", Duration::from_secs(10), || {
        gauge("registry_edge_config_reloads_total{result=\"refused\"}") >= 1.0
    });
    let status = std::fs::read_to_string(edge.dir.join("edge.pid.reload")).unwrap();
    assert!(
        status.lines().next().unwrap().ends_with(" refused"),
        "{status}"
    );
    assert!(status.contains("read_only"), "{status}");
    let log = std::fs::read_to_string(edge.dir.join("stderr.log")).unwrap();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert_eq!(gauge("registry_edge_config_generation"), 2.0);
    assert_oci_error(&start_upload(port, &host).1, 405, "UNSUPPORTED");

    // 3. Listener and server settings need a restart: reported, running values kept, the rest
    //    applied.
    let restart_only = changed
        .replace(
            "graceful_shutdown_timeout: 1s",
            "graceful_shutdown_timeout: 2s",
        )
        .replace(
            "max_request_header_bytes: 4096",
            "max_request_header_bytes: 2048",
        )
        .replace("read_only: true", "read_only: false");
    std::fs::write(&config, &restart_only).unwrap();
    let (ok, out) = reload_command(&config);
    assert!(ok, "{out}");
    assert!(out.contains("generation 3"), "{out}");
    assert!(out.contains("applied: access"), "{out}");
    assert!(
        out.contains("restart required") && out.contains("listeners, server"),
        "{out}"
    );
    assert_eq!(gauge("registry_edge_config_restart_pending"), 1.0);
    assert_eq!(uploads(&edge, &host).status, 202, "writes pass again");
    // The running header limit (4096) still applies, not the file's 2048.
    let long = format!("X-Long: {}\r\n", "a".repeat(3000));
    assert_eq!(get(port, &host, "/v2/", &long).status, 401);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (done, failed) = small.join().unwrap();
    let (got, intact) = download.join().unwrap();
    assert_load_unharmed("the reloads", done, &failed, got, intact, size);
    eprintln!("config reload under load: 3 reloads (2 applied, 1 refused), {done} small requests, none failed; {size}-byte download intact");
}

#[test]
fn certificate_rotation_without_restart() {
    let edge = start_edge("rotate", HTTP_OPTS);
    let url = format!("https://registry.test:{}/v2/", edge.tls);
    let resolve = format!("registry.test:{}:127.0.0.1", edge.tls);
    let status_with = |ca: &Path| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .0
    };
    assert_eq!(status_with(&edge.certs.ca), "401");

    // New certificates from another CA.
    let next = edge.dir.join("next");
    std::fs::create_dir_all(&next).unwrap();
    let next_certs = make_certs(&next);
    let reloads = |result: &str| {
        sample(
            &metrics_text(edge.admin),
            &format!("registry_edge_tls_certificate_reloads_total{{result=\"{result}\"}}"),
        )
    };
    // A broken key first: refused, the old certificate keeps serving.
    std::fs::write(edge.dir.join("registry.test.key.tmp"), "not a key").unwrap();
    std::fs::rename(
        edge.dir.join("registry.test.key.tmp"),
        edge.dir.join("registry.test.key"),
    )
    .unwrap();
    eventually(
        "a broken key to be refused",
        Duration::from_secs(10),
        || reloads("refused") >= 1.0,
    );
    assert_eq!(
        status_with(&edge.certs.ca),
        "401",
        "the old certificate still serves"
    );
    // Then the new pair, each file renamed into place.
    for f in ["registry.test.pem", "registry.test.key"] {
        std::fs::copy(next.join(f), edge.dir.join(format!("{f}.tmp"))).unwrap();
        std::fs::rename(edge.dir.join(format!("{f}.tmp")), edge.dir.join(f)).unwrap();
    }
    eventually(
        "the new certificate to be picked up",
        Duration::from_secs(10),
        || status_with(&next_certs.ca) == "401",
    );
    assert_ne!(
        status_with(&edge.certs.ca),
        "401",
        "the old CA no longer verifies the listener"
    );
    assert!(reloads("ok") >= 1.0);
    // The other certificate on the same listener was reloaded with it and still answers.
    let data = curl(&[
        "--cacert",
        edge.certs.ca.to_str().unwrap(),
        "--resolve",
        &format!("data.test:{}:127.0.0.1", edge.tls),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://data.test:{}/echo?sig=1", edge.tls),
    ]);
    assert_eq!(data.0, "200", "{}", data.1);
}

/// The database is replaced under load: by rename, by a broken copy (refused, old kept), by a
/// copy in place; no request fails, and the new data takes effect.
#[test]
fn geoip_database_replaced_under_load() {
    let (gdir, edge) = policy_edge("geoip-reload");
    let db = gdir.join("country.mmdb");
    let host = format!("registry.test:{}", edge.http);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for t in 0..3 {
        let (stop, failures, host, port) =
            (stop.clone(), failures.clone(), host.clone(), edge.http);
        load.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Distinct addresses so that the rate limit does not interfere.
                let src = format!("127.0.3.{}", 1 + (t * 80 + n % 80));
                n += 1;
                let r = std::panic::catch_unwind(|| get_from(&src, port, &host, "/v2/", "").status);
                match r {
                    Ok(401) | Ok(451) | Ok(429) => {}
                    other => failures.lock().unwrap().push(format!("{src}: {other:?}")),
                }
            }
        }));
    }
    let reloads = |result: &str| {
        sample(
            &metrics_text(edge.admin),
            &format!("registry_edge_geoip_reloads_total{{result=\"{result}\"}}"),
        )
    };
    // Polled every 200 ms, each time from the same address: slow enough for its rate limit.
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The load runs before the first change.
    std::thread::sleep(Duration::from_millis(500));
    // 1. rename over the path: 127.0.3.0/24 becomes CU.
    let tmp = gdir.join("country.mmdb.tmp");
    std::fs::write(&tmp, mmdb("CU")).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    wait_for("the renamed database", &|| {
        get_from("127.0.3.250", edge.http, &host, "/v2/", "").status == 451
    });
    // 2. a broken file copied over in place: refused, the old one stays in force.
    let ok_before = reloads("ok");
    std::fs::write(&db, b"not a database at all").unwrap();
    wait_for("the refusal", &|| reloads("refused") >= 1.0);
    assert_eq!(
        get_from("127.0.3.251", edge.http, &host, "/v2/", "").status,
        451
    );
    // then a good copy in place, back to DE.
    std::fs::write(&db, mmdb("DE")).unwrap();
    wait_for("the copied database", &|| {
        get_from("127.0.3.252", edge.http, &host, "/v2/", "").status == 401
    });
    assert!(reloads("ok") > ok_before);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
}

#[test]
fn kubernetes_symlink_swap_and_detect_mode() {
    // The ConfigMap/Secret layout: country.mmdb -> ..data/country.mmdb, ..data -> ..v1.
    let gdir = geo_dir("k8s");
    let v1 = gdir.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("country.mmdb"), mmdb("DE")).unwrap();
    std::os::unix::fs::symlink("..v1", gdir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/country.mmdb", gdir.join("country.mmdb")).unwrap();
    let db = gdir.join("country.mmdb");
    let edge = start_edge_with("detect", HTTP_OPTS, &policy_yaml(&db, "detect"));
    let host = format!("registry.test:{}", edge.http);

    // Detect mode: decided and counted, but let through.
    let r = get_from("127.0.2.1", edge.http, &host, "/v2/", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        get_from("127.0.3.1", edge.http, &host, "/v2/", "").status,
        401
    );

    // The swap: a new directory, then ..data replaced atomically by rename.
    let v2 = gdir.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("country.mmdb"), mmdb("CU")).unwrap();
    std::os::unix::fs::symlink("..v2", gdir.join("..data_tmp")).unwrap();
    std::fs::rename(gdir.join("..data_tmp"), gdir.join("..data")).unwrap();
    eventually(
        "the symlink swap to be picked up",
        Duration::from_secs(15),
        || metrics_text(edge.admin).contains("registry_edge_geoip_reloads_total{result=\"ok\"} 1"),
    );
    assert_eq!(
        get_from("127.0.3.2", edge.http, &host, "/v2/", "").status,
        401
    );
    metrics_with(
        edge.admin,
        &["registry_edge_access_refusals_total{mode=\"detect\",reason=\"embargo\"} 2"],
    );
    let log = access_log_with(&edge, 2, |l| l["decision"] == "embargo");
    let embargoed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"decision\":\"embargo\""))
        .collect();
    assert_eq!(embargoed.len(), 2, "{log}");
    assert!(embargoed.iter().all(|l| l.contains("\"status\":401")));
}
