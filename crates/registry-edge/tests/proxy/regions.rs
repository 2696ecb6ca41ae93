//! Two regions: each with a login front that redirects to its own data endpoint, whose signed
//! URLs only that endpoint accepts. US clients belong to eastus, European ones to westus. A
//! region whose login front or data endpoint stops loses its clients to the other, without a
//! failed pull, and gets them back once its probes see it again.

use std::time::{Duration, Instant};

use crate::ports::{free_port, http1};
use crate::support::{
    edge_dir, geo_dir, get_from, make_certs, metrics_text, mmdb, sample, spawn_edge, start_origin,
    start_origin_opts, wait_ready, Edge, GeoDir, Kind, Origin, OriginOpts, DIGEST,
};

struct Region {
    login: Origin,
    data: Origin,
    sig: String,
}

fn start_region(name: &str) -> Region {
    let sig = format!("signed-by-{name}");
    let data = start_origin_opts(
        Kind::Data,
        OriginOpts {
            sig: Some(sig.clone()),
            ..OriginOpts::default()
        },
    );
    let login = start_origin_opts(
        Kind::Login,
        OriginOpts {
            data: Some(data.addr.to_string()),
            sig: Some(sig.clone()),
            ..OriginOpts::default()
        },
    );
    Region { login, data, sig }
}

fn restart(o: &Origin, kind: Kind, data: Option<String>, sig: &str) -> Origin {
    start_origin_opts(
        kind,
        OriginOpts {
            data,
            sig: Some(sig.to_string()),
            bind: Some(o.addr),
            ..OriginOpts::default()
        },
    )
}

/// One pull of one blob as docker does it: ask the login host, follow the redirect to the data
/// host; a failed data download is retried by asking the login host again. Returns the region
/// whose data endpoint served the bytes.
fn pull(src: &str, port: u16) -> Result<String, String> {
    let host = format!("registry.test:{port}");
    let mut last = String::new();
    for _attempt in 0..3 {
        let r = get_from(src, port, &host, "/v2/team/app/manifests/1", "");
        if r.status != 200 {
            last = format!("manifest {}", r.status);
            continue;
        }
        let r = get_from(
            src,
            port,
            &host,
            &format!("/v2/team/app/blobs/{DIGEST}"),
            "",
        );
        if r.status != 307 {
            last = format!("blob redirect {}", r.status);
            continue;
        }
        let loc = r.header("location").unwrap().to_string();
        let target = loc
            .strip_prefix(&format!("http://data.test:{port}"))
            .ok_or_else(|| format!("redirect off the data host: {loc}"))?
            .to_string();
        let region = target
            .strip_prefix("/_r/")
            .and_then(|t| t.split('/').next())
            .unwrap_or_default()
            .to_string();
        let r = get_from(src, port, &format!("data.test:{port}"), &target, "");
        if r.status == 200 && r.body.len() == 1 << 20 {
            return Ok(region);
        }
        last = format!("data {} from {region}", r.status);
    }
    Err(last)
}

/// The edge, fields in the order they stop: the edge first, the database's directory last.
struct TwoRegions {
    edge: Edge,
    east: Region,
    west: Region,
    global: Origin,
    _gdir: GeoDir,
}

/// eastus and westus, and a global login server as last resort (its blobs in eastus).
fn start_two_regions(name: &str) -> TwoRegions {
    let gdir = geo_dir(name);
    let db = gdir.join("country.mmdb");
    std::fs::write(&db, mmdb("DE")).unwrap();
    let east = start_region("eastus");
    let west = start_region("westus");
    let global = start_origin(Kind::Login, Some(east.data.addr.to_string()));
    let extra = format!(
        r#"geoip: {{ database: "{db}" }}
local_region: eastus
regions:
  - {{ region: eastus, countries: [US] }}
  - {{ region: westus, continents: [EU] }}
"#,
        db = db.display()
    );
    // The regions replace the single-region registry of the other tests.
    let edge = start_edge_regions(name, &extra, &global, &east, &west);
    TwoRegions {
        edge,
        east,
        west,
        global,
        _gdir: gdir,
    }
}

/// An edge whose registry has two regions (and a global login server as last resort).
fn start_edge_regions(
    name: &str,
    extra: &str,
    global: &Origin,
    east: &Region,
    west: &Region,
) -> Edge {
    let dir = edge_dir(name);
    let certs = make_certs(&dir);
    let (http, tls, redirect, admin) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"version: 1
server: {{ threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, pid_file: {dir}/edge.pid, upgrade_sock: {dir}/upgrade.sock, http1: {http1} }}
listeners:
  - address: "127.0.0.1:{http}"
admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{global}"
  public_host: registry.test
  tls: false
  connect_timeout: 1s
  read_timeout: 5s
  health_check: {{ path: /v2/, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}
  regional_endpoints:
    - {{ region: eastus, endpoint: "{east_login}" }}
    - {{ region: westus, endpoint: "{west_login}" }}
  data_endpoints:
    - {{ region: eastus, endpoint: "{east_data}", public_host: data.test,
         health_check: {{ tcp: true, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }} }}
    - {{ region: westus, endpoint: "{west_data}", public_host: data.test,
         health_check: {{ tcp: true, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }} }}
{extra}logging:
  access_log: {dir}/access.log
"#,
        dir = dir.display(),
        global = global.addr,
        east_login = east.login.addr,
        west_login = west.login.addr,
        east_data = east.data.addr,
        west_data = west.data.addr,
        http1 = http1(),
    );
    let child = spawn_edge(&dir, &yaml);
    let edge = Edge::without_origins(child, dir, [http, tls, redirect, admin], certs);
    wait_ready(&edge, None);
    edge
}

/// Each client is served by its region, login and data.
#[test]
fn each_client_is_served_by_its_region() {
    let r = start_two_regions("regions-nearest");
    let port = r.edge.http;
    assert_eq!(pull("127.0.1.10", port).unwrap(), "eastus");
    assert_eq!(pull("127.0.3.10", port).unwrap(), "westus");
    let east_seen = r.east.login.seen.lock().unwrap().len();
    let west_seen = r.west.login.seen.lock().unwrap().len();
    assert!(east_seen >= 2 && west_seen >= 2, "{east_seen} {west_seen}");
    assert_eq!(
        r.global.seen.lock().unwrap().len(),
        0,
        "the global login server is the last resort"
    );
}

/// Whether the probes have marked eastus's login front down.
fn east_login_marked_down(admin: u16) -> bool {
    metrics_text(admin).lines().any(|l| {
        l.starts_with("registry_edge_upstream_peer_healthy")
            && l.contains("regional:eastus")
            && l.ends_with(" 0")
    })
}

/// Stop eastus's login front during a series of pulls: every pull completes. Start it again:
/// its clients come back within two probe intervals (healthy_after: 2).
#[test]
fn a_login_front_down_loses_its_clients_and_gets_them_back() {
    let r = start_two_regions("regions-login");
    let (edge, east) = (&r.edge, &r.east);
    let port = edge.http;
    assert_eq!(pull("127.0.1.10", port).unwrap(), "eastus");

    east.login.stop();
    let stopped = Instant::now();
    let mut regions = Vec::new();
    let mut marked_down = None;
    for i in 0..20 {
        regions.push(
            pull(&format!("127.0.1.{}", 20 + i), port)
                .expect("a pull failed with eastus's login front down"),
        );
        if marked_down.is_none() && east_login_marked_down(edge.admin) {
            marked_down = Some(stopped.elapsed());
        }
        // The series spans several probe intervals.
        std::thread::sleep(Duration::from_millis(150));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while marked_down.is_none() {
        if east_login_marked_down(edge.admin) {
            marked_down = Some(stopped.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the probes never marked eastus's login front down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics_text(edge.admin);
    let of_east = |name: &str| sample(&m, &format!("{name}{{upstream=\"regional:eastus\"}}"));
    let failovers = of_east("registry_edge_upstream_failovers_total");
    let retries = of_east("registry_edge_upstream_retries_total");
    let connect_errors = of_east("registry_edge_upstream_connect_errors_total");
    eprintln!(
        "login front down: marked down after {:?}; failovers {failovers}, retries {retries}, connect errors {connect_errors}; data regions {regions:?}",
        marked_down.unwrap()
    );
    assert!(
        failovers >= 20.0,
        "every US pull went elsewhere: {failovers}"
    );
    assert!(connect_errors >= 1.0);

    let east_login = restart(
        &east.login,
        Kind::Login,
        Some(east.data.addr.to_string()),
        &east.sig,
    );
    let started = Instant::now();
    loop {
        if pull("127.0.1.50", port).unwrap() == "eastus"
            && !east_login.seen.lock().unwrap().is_empty()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "traffic did not return to eastus"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let back_after = started.elapsed();
    eprintln!("login front back: traffic returned after {back_after:?}");
    assert!(
        back_after <= Duration::from_millis(2 * 1000 + 1500),
        "{back_after:?}"
    );
}

/// Stop eastus's data endpoint: its pulls fail over through the login side to westus, and a URL
/// signed by eastus never goes to westus. Start it again: pulls return to eastus within two
/// probe intervals.
#[test]
fn a_data_endpoint_down_loses_its_clients_and_gets_them_back() {
    let r = start_two_regions("regions-data");
    let (edge, east) = (&r.edge, &r.east);
    let port = edge.http;
    assert_eq!(pull("127.0.1.10", port).unwrap(), "eastus");

    east.data.stop();
    let mut data_regions = Vec::new();
    for i in 0..10 {
        data_regions.push(
            pull(&format!("127.0.1.{}", 60 + i), port)
                .expect("a pull failed with eastus's data endpoint down"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("data endpoint down: pulls served from {data_regions:?}");
    assert!(
        data_regions.iter().all(|r| r == "westus"),
        "{data_regions:?}"
    );
    // A URL signed by eastus gets a 503 clients retry through login.
    let signed = get_from(
        "127.0.1.10",
        port,
        &format!("data.test:{port}"),
        &format!("/_r/eastus/blob?sig={}", east.sig),
        "",
    );
    assert!([502, 503].contains(&signed.status), "{}", signed.status);
    assert_eq!(signed.json()["errors"][0]["code"], "UNAVAILABLE");

    let _east_data = restart(&east.data, Kind::Data, None, &east.sig);
    let started = Instant::now();
    while pull("127.0.1.80", port).unwrap() != "eastus" {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "data traffic did not return to eastus"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "data endpoint back: traffic returned after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() <= Duration::from_millis(2 * 1000 + 1500));
}
