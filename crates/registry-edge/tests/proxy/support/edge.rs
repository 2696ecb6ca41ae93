//! The edge process: its certificates (a test CA), its configuration in a directory of its own,
//! started from the binary under test and waited for until ready; killed and its directory
//! removed when the test drops it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::send;
use super::origin::{start_origin, start_origin_tls, Kind, Origin, Seen};
use crate::ports::{free_port, server_section_with};

pub struct Certs {
    pub ca: PathBuf,
    /// Server configurations for TLS origins: one for `localhost`, one for another name.
    pub localhost: Arc<tokio_rustls::rustls::ServerConfig>,
    pub wrong_name: Arc<tokio_rustls::rustls::ServerConfig>,
}

fn origin_tls(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(cfg)
}

/// A test CA (`ca.pem`) and certificates for `registry.test` and `data.test`, written into `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "registry-edge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for name in ["registry.test", "data.test"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Certs {
        ca: ca_path,
        localhost: origin_tls(&issuer, "localhost"),
        wrong_name: origin_tls(&issuer, "other.example"),
    }
}

pub struct Edge {
    pub child: Child,
    pub dir: PathBuf,
    pub http: u16,
    pub tls: u16,
    pub redirect: u16,
    pub v6: Option<u16>,
    pub admin: u16,
    pub certs: Certs,
    pub login: Origin,
    pub data: Origin,
    pub token_seen: Seen,
}

impl Edge {
    /// An edge in front of origins the test holds itself: `login`, `data` and `token_seen` stand
    /// empty. `ports`: plain, TLS, redirect and admin listeners.
    pub fn without_origins(child: Child, dir: PathBuf, ports: [u16; 4], certs: Certs) -> Edge {
        let none = || Origin {
            addr: "127.0.0.1:9".parse().unwrap(),
            seen: Arc::default(),
            tasks: Arc::default(),
        };
        let [http, tls, redirect, admin] = ports;
        Edge {
            child,
            dir,
            http,
            tls,
            redirect,
            v6: None,
            admin,
            certs,
            login: none(),
            data: none(),
            token_seen: Arc::default(),
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// The plain listener's options used unless a test needs others.
pub const HTTP_OPTS: &str = "    timeouts: { header_read: 5s, idle: 5s, write: 5s }\n    max_request_header_bytes: 4096\n    max_requests_per_connection: 50\n";

pub fn start_edge(name: &str, http_opts: &str) -> Edge {
    start_edge_with(name, http_opts, "")
}

/// `extra`: top-level YAML added to the configuration (geoip, clients, access).
pub fn start_edge_with(name: &str, http_opts: &str, extra: &str) -> Edge {
    start_edge_full(name, http_opts, extra, "1s")
}

pub fn start_edge_full(name: &str, http_opts: &str, extra: &str, grace_period: &str) -> Edge {
    start_edge_opts(
        name,
        &EdgeOpts {
            http_opts,
            extra,
            grace_period,
            ..EdgeOpts::default()
        },
    )
}

/// What a test may change in the edge's configuration.
#[derive(Clone, Copy)]
pub struct EdgeOpts<'a> {
    /// Options of the plain listener (indented as `HTTP_OPTS`).
    pub http_opts: &'a str,
    /// Options of the TLS listener.
    pub tls_opts: &'a str,
    /// Top-level YAML.
    pub extra: &'a str,
    pub grace_period: &'a str,
    /// The registry's read timeout.
    pub read_timeout: &'a str,
    /// Keys added to the `registry` block.
    pub registry_opts: &'a str,
    /// A further data endpoint: its public host, served by the data origin under another
    /// authority (`localhost:<port>`).
    pub data_host: Option<&'a str>,
    /// The HTTP/1 session (`server.http1`); `None`: the one `REGISTRY_EDGE_TEST_HTTP1` names.
    pub http1: Option<&'a str>,
}

impl Default for EdgeOpts<'_> {
    fn default() -> Self {
        EdgeOpts {
            http_opts: HTTP_OPTS,
            tls_opts: "",
            extra: "",
            grace_period: "1s",
            read_timeout: "2s",
            registry_opts: "",
            data_host: None,
            http1: None,
        }
    }
}

/// A fresh directory for the edge called `name`, in the temporary directory.
pub fn edge_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("registry-edge-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The edge in front of its own origins: a login origin (`registry.test`), a token server, and
/// data endpoints for every way an upstream can fail: `data.test` (a data origin, behind a
/// refusing peer first), `down.test` (refuses), `slow.test` (never answers), `tls-data.test`
/// (TLS, the test CA), `wrong-data.test` (TLS, a certificate for another name) and
/// `roots-data.test` (TLS, verified against the system roots). Listeners: plain, TLS
/// (`registry.test`, `data.test`), redirect to https, `[::1]` when the machine has IPv6.
pub fn start_edge_opts(name: &str, o: &EdgeOpts<'_>) -> Edge {
    let EdgeOpts {
        http_opts,
        tls_opts,
        extra,
        grace_period,
        read_timeout,
        registry_opts,
        data_host,
        http1,
    } = *o;
    let dir = edge_dir(name);
    let certs = make_certs(&dir);
    let data = start_origin(Kind::Data, None);
    let login = start_origin(Kind::Login, Some(data.addr.to_string()));
    let silent = start_origin(Kind::Silent, None);
    let token = start_origin(Kind::Login, None);
    let tls_data = start_origin_tls(Kind::Data, None, Some(certs.localhost.clone()));
    let tls_wrong = start_origin_tls(Kind::Data, None, Some(certs.wrong_name.clone()));
    let refused = free_port();
    let (http, tls, redirect, admin) = (free_port(), free_port(), free_port(), free_port());
    let v6 = ipv6_available().then(|| {
        TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let v6_listener = v6
        .map(|p| format!("  - address: \"[::1]:{p}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        r#"version: 1
{server}listeners:
  - address: "127.0.0.1:{http}"
{http_opts}  - address: "127.0.0.1:{tls}"
    tls:
      certificates:
        - {{ cert: registry.test.pem, key: registry.test.key }}
        - {{ cert: data.test.pem, key: data.test.key }}
{tls_opts}  - address: "127.0.0.1:{redirect}"
    redirect_to_https: true
{v6_listener}admin:
  address: "127.0.0.1:{admin}"
registry:
  login_server: "{login}"
  public_host: registry.test
  tls: false
  token_server: "{token}"
  connect_timeout: 1s
  read_timeout: {read_timeout}
{registry_opts}  data_endpoints:
    - {{ region: eastus, endpoint: "{data}", public_host: data.test, peers: ["127.0.0.1:{refused}", "{data}"] }}
    - {{ region: westus, endpoint: "127.0.0.1:{refused}", public_host: down.test }}
    - {{ region: centralus, endpoint: "{silent}", public_host: slow.test }}
    - {{ region: tlsregion, endpoint: "localhost:{tls_data_port}", public_host: tls-data.test, tls: true,
         ca_file: ca.pem }}
    - {{ region: wrongname, endpoint: "localhost:{tls_wrong_port}", public_host: wrong-data.test, tls: true,
         ca_file: ca.pem, peers: ["{tls_wrong}"] }}
    - {{ region: systemroots, endpoint: "localhost:{tls_data_port2}", public_host: roots-data.test, tls: true,
         peers: ["{tls_data}"] }}
{data_extra}{extra}rewrites:
  - name: frame-policy
    action: {{ set_header: X-Frame-Options, value: DENY }}
logging:
  access_log: {dir}/access.log
"#,
        server = server_section_with(
            &dir.display().to_string(),
            grace_period,
            &http1.map_or_else(crate::ports::http1, str::to_string)
        ),
        dir = dir.display(),
        login = login.addr,
        data = data.addr,
        silent = silent.addr,
        token = token.addr,
        tls_data = tls_data.addr,
        tls_data_port = tls_data.addr.port(),
        tls_data_port2 = free_port(),
        tls_wrong = tls_wrong.addr,
        tls_wrong_port = tls_wrong.addr.port(),
        data_extra = data_host.map_or(String::new(), |h| format!(
            "    - {{ region: extra, endpoint: \"localhost:{}\", public_host: {h} }}\n",
            data.addr.port()
        )),
    );
    let child = spawn_edge(&dir, &yaml);
    let edge = Edge {
        child,
        dir,
        http,
        tls,
        redirect,
        v6,
        admin,
        certs,
        login,
        data,
        token_seen: token.seen.clone(),
    };
    wait_ready(&edge, Some(edge.tls));
    edge
}

/// Writes the configuration into `dir` and starts the edge on it.
pub fn spawn_edge(dir: &Path, yaml: &str) -> Child {
    let config = dir.join("edge.yaml");
    std::fs::write(&config, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_registry-edge"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Until `/readyz` answers 200 (and `tls_port`, when given, accepts), or fails with the edge's log.
pub fn wait_ready(edge: &Edge, tls_port: Option<u16>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = TcpStream::connect(("127.0.0.1", edge.admin)).is_ok_and(|mut s| {
            send(&mut s, "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n").status == 200
        });
        if ready && tls_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edge did not become ready: {}",
            std::fs::read_to_string(edge.dir.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
