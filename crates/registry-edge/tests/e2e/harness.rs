//! The processes and servers of one end-to-end environment, the clients that drive it, and the
//! scan of what the clients saw.
//!
//! ```text
//! skopeo ──► [tap] ──► registry-edge ──► shim ──► docker-registry (token auth, redirect middleware)
//! curl   ─────────────►    │   │                        307 → http://127.0.0.1:<data>/docker/...
//!                          │   └─ /oauth2/token ──► token server (ES256 JWTs)
//!                          └───── data.localhost ──► data server (storage root, SAS, no Authorization)
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::data::{self, DataServer, Sas};
use crate::http1::{self, Exchanges, Hellos, RelayKind};
use crate::ports::free_port;
use crate::token::{self, TokenServer};

pub const LOGIN_HOST: &str = "registry.localhost";
pub const DATA_HOST: &str = "data.localhost";

// ---------------------------------------------------------------------------------------------
// Steps

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs one step; a failure panics with the step's name, its cause and the tails of `logs`.
pub fn step<T>(name: &str, logs: &[(String, PathBuf)], f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => {
            eprintln!("e2e: ok   {name} ({:.1}s)", t.elapsed().as_secs_f64());
            v
        }
        Err(e) => {
            let mut msg = format!(
                "\n\nSTEP FAILED: {name} (after {:.1}s)\ncause: {}\n",
                t.elapsed().as_secs_f64(),
                panic_text(&*e)
            );
            for (label, path) in logs {
                msg.push_str(&format!(
                    "\n--- last lines of {label} ({}) ---\n{}\n",
                    path.display(),
                    tail(path, 25)
                ));
            }
            panic!("{msg}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and the temporary directory

/// A child process, killed (by its PID) when dropped, failure or not.
pub struct Proc {
    child: Child,
}

/// A command for `program` that also dies with the test: `setpriv --pdeathsig KILL` execs it
/// with a parent-death signal (same PID), so that not even a killed test leaves it running.
fn guarded(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "--", program]);
    c
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The temporary directory of one environment: removed when dropped; after a failure only the
/// bulk (images, registry storage) goes, the logs, configurations and curl dumps stay.
pub struct TempDir(pub PathBuf);

/// Removes the images and the registry storage of an environment's directory, keeping the rest.
fn remove_bulk(dir: &Path) {
    let bulky = [
        "layout-",
        "pulled-",
        "curl-pulled-",
        "storage",
        "var-lib",
        "skopeo-tmp",
    ];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if bulky.iter().any(|b| name.starts_with(b)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The bulk left by runs that were killed before they could clean up (their process is gone).
fn sweep_killed_runs() {
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("registry-edge-e2e-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            remove_bulk(&entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            remove_bulk(&self.0);
            eprintln!("e2e: kept the logs in {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One raw HTTP/1.1 GET over loopback: the status, or None when nothing answers yet.
fn probe(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready in 30s; its log:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists() || which(path),
        "{path} is missing: install Debian's `{package}` (scripts/test installs it when run as root)"
    );
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A test CA and one certificate for both public names; `ca.crt` also in a cert dir for skopeo.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "registry-edge e2e CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params =
        rcgen::CertificateParams::new(vec![LOGIN_HOST.to_string(), DATA_HOST.to_string()])
            .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, LOGIN_HOST);
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    std::fs::write(dir.join("public.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("public.key"), key.serialize_pem()).expect("write key");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let cert_dir = dir.join("certs.d");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    std::fs::write(cert_dir.join("ca.crt"), ca.pem()).expect("write ca.crt");
    (ca_path, cert_dir)
}

// ---------------------------------------------------------------------------------------------
// The environment

/// A response head a client saw, with the port it used (its public origin's port).
#[derive(Clone, Debug)]
pub struct Seen {
    pub client: String,
    pub port: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
}

pub struct Harness {
    // Dropped in this order: the processes, then the servers' runtime, then the directory.
    edge: Proc,
    registry: Proc,
    rt: tokio::runtime::Runtime,
    pub dir: PathBuf,
    pub shim: SocketAddr,
    pub shim_log: Exchanges,
    pub token: TokenServer,
    pub data: DataServer,
    pub sas: Arc<Sas>,
    pub registry_addr: SocketAddr,
    pub http_port: u16,
    pub tls_port: u16,
    pub admin: SocketAddr,
    pub ca: PathBuf,
    pub cert_dir: PathBuf,
    /// Every response head a client saw through the edge, for the scan.
    pub seen: Mutex<Vec<Seen>>,
    runs: AtomicUsize,
    _tmp: TempDir,
}

impl Harness {
    /// The value of an unlabelled metric on the edge's admin `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(self.admin).expect("admin listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .expect("metrics request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("metrics response");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// The logs a failing step shows.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        vec![
            (
                "registry-edge stderr".into(),
                self.dir.join("edge.stderr.log"),
            ),
            (
                "registry-edge access log".into(),
                self.dir.join("access.log"),
            ),
            ("docker-registry".into(), self.dir.join("registry.log")),
        ]
    }

    pub fn step<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        step(name, &self.logs(), f)
    }

    /// Starts everything: `relative_urls` is distribution's `http.relativeurls`; without it the
    /// registry's `http.host` is its upstream authority (the shim's), so upload Locations come
    /// back absolute on it whatever X-Forwarded-Host says.
    pub fn start(name: &str, relative_urls: bool) -> Harness {
        Harness::start_with(name, relative_urls, "")
    }

    /// As [`Harness::start`], with `edge_extra` appended to the edge's configuration: top-level
    /// sections such as `access:` (the encoding corpus hides a repository with
    /// `repositories.allow`).
    pub fn start_with(name: &str, relative_urls: bool, edge_extra: &str) -> Harness {
        require_tool("/usr/bin/docker-registry", "docker-registry");
        require_tool("skopeo", "skopeo");
        require_tool("curl", "curl");
        require_tool("unshare", "util-linux");
        require_tool("setpriv", "util-linux");
        sweep_killed_runs();
        let dir =
            std::env::temp_dir().join(format!("registry-edge-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let tmp = TempDir(dir.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");

        // The login-side shim sits in front of the registry; its authority is the login server
        // the edge knows, and so the one the registry must advertise (realm, service, http.host).
        let registry_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let sas = Arc::new(Sas::new());
        let shim_log: Exchanges = Arc::default();
        let signer = sas.clone();
        let shim = http1::relay(
            &rt,
            registry_addr,
            RelayKind::Shim(Arc::new(move |path: &str| signer.sign(path))),
            shim_log.clone(),
        );
        let token = token::start(&rt, &shim.to_string());
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let data = data::start(&rt, storage.clone(), sas.clone());

        std::fs::write(dir.join("token-signer.pem"), &token.cert_pem).expect("rootcertbundle");
        let host_line = if relative_urls {
            String::new()
        } else {
            format!("  host: http://{shim}\n")
        };
        let registry_yaml = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {registry_addr}
  secret: registry-edge-e2e-{pid}
  relativeurls: {relative_urls}
{host_line}auth:
  token:
    realm: http://{shim}/oauth2/token
    service: "{shim}"
    issuer: {issuer}
    rootcertbundle: {dir}/token-signer.pem
middleware:
  storage:
    - name: redirect
      options:
        baseurl: http://{data}
"#,
            storage = storage.display(),
            pid = std::process::id(),
            issuer = token::ISSUER,
            dir = dir.display(),
            data = data.addr,
        );
        std::fs::write(dir.join("registry.yml"), registry_yaml).expect("registry config");
        let registry_log = dir.join("registry.log");
        let log_file = std::fs::File::create(&registry_log).expect("registry log");
        let registry = Proc {
            child: guarded("/usr/bin/docker-registry")
                .arg("serve")
                .arg(dir.join("registry.yml"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file)
                .spawn()
                .expect("start docker-registry"),
        };
        wait_for("docker-registry", &registry_log, || {
            probe(registry_addr, &shim.to_string(), "/v2/") == Some(401)
        });

        let (ca, cert_dir) = make_certs(&dir);
        let (http_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
        let edge_yaml = format!(
            r#"version: 1
{server}listeners:
  - address: "127.0.0.1:{http_port}"
  - address: "127.0.0.1:{tls_port}"
    tls:
      certificates:
        - {{ cert: public.pem, key: public.key }}
admin:
  address: "127.0.0.1:{admin_port}"
registry:
  login_server: "{shim}"
  public_host: {LOGIN_HOST}
  tls: false
  token_server: "{token}"
  data_endpoints:
    - {{ region: local, endpoint: "{data}", public_host: {DATA_HOST} }}
logging:
  access_log: {dir}/access.log
{edge_extra}"#,
            server = crate::ports::server_section(&dir.display().to_string(), "1s"),
            dir = dir.display(),
            token = token.addr,
            data = data.addr,
        );
        std::fs::write(dir.join("edge.yaml"), edge_yaml).expect("edge config");
        let edge_log = dir.join("edge.stderr.log");
        let edge = Proc {
            child: guarded(env!("CARGO_BIN_EXE_registry-edge"))
                .args(["run", "-c"])
                .arg(dir.join("edge.yaml"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&edge_log).expect("edge log"))
                .spawn()
                .expect("start registry-edge"),
        };
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        wait_for("registry-edge", &edge_log, || {
            probe(admin, "admin", "/readyz") == Some(200)
                && TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
        });

        // Names under .localhost: skopeo resolves them through a private /etc/hosts (see skopeo()).
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.0.1 {LOGIN_HOST} {DATA_HOST}\n"),
        )
        .expect("hosts file");
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        std::fs::write(
            dir.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy");
        std::fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .expect("registries.conf");
        for d in ["registries.d", "home", "skopeo-tmp", "var-lib"] {
            std::fs::create_dir_all(dir.join(d)).expect("skopeo dirs");
        }

        Harness {
            edge,
            registry,
            rt,
            dir,
            shim,
            shim_log,
            token,
            data,
            sas,
            registry_addr,
            http_port,
            tls_port,
            admin,
            ca,
            cert_dir,
            seen: Mutex::default(),
            runs: AtomicUsize::new(0),
            _tmp: tmp,
        }
    }

    /// Whether both processes still run (a crash is a failure of its own).
    pub fn assert_alive(&mut self) {
        for (name, p) in [
            ("registry-edge", &mut self.edge),
            ("docker-registry", &mut self.registry),
        ] {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{name} exited: {status}");
            }
        }
    }

    /// The upstream authorities no client may ever see (the token audience excepted).
    pub fn upstream_authorities(&self) -> Vec<String> {
        [
            self.shim,
            self.token.addr,
            self.data.addr,
            self.registry_addr,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    fn next_run(&self, label: &str) -> String {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        format!(
            "{n:03}-{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        )
    }

    // -----------------------------------------------------------------------------------------
    // skopeo

    /// A tap in front of the edge's plain listener: skopeo talks to it, it records the heads.
    pub fn http_tap(&self) -> (u16, Exchanges) {
        let log: Exchanges = Arc::default();
        let addr = http1::relay(
            &self.rt,
            ([127, 0, 0, 1], self.http_port).into(),
            RelayKind::Tap,
            log.clone(),
        );
        (addr.port(), log)
    }

    /// A pass-through in front of the TLS listener that reads the ClientHellos.
    pub fn tls_tap(&self) -> (u16, Hellos) {
        let log: Hellos = Arc::default();
        let addr = http1::tls_tap(
            &self.rt,
            ([127, 0, 0, 1], self.tls_port).into(),
            log.clone(),
        );
        (addr.port(), log)
    }

    /// Moves what a tap recorded into the scanned set.
    pub fn collect_tap(&self, client: &str, port: u16, log: &Exchanges) -> usize {
        let taken: Vec<http1::Exchange> = std::mem::take(&mut *log.lock().expect("tap log"));
        let n = taken.len();
        self.seen
            .lock()
            .expect("seen")
            .extend(taken.into_iter().map(|e| Seen {
                client: format!("{client} {} {}", e.method, e.target),
                port,
                status_line: e.head.line,
                headers: e.head.headers,
            }));
        n
    }

    /// Runs skopeo with `args` (its debug log in a file of the harness) and returns its standard
    /// output. Its names are resolved through a private /etc/hosts: a mount
    /// namespace of its own (`unshare --mount`) where the harness's hosts file is bind-mounted
    /// over /etc/hosts, and a resolv.conf that points at loopback, so that no lookup ever leaves
    /// the machine. The host's files are not touched. skopeo as root also keeps a blob-info cache
    /// under /var/lib/containers: it gets a directory of the harness there instead.
    pub fn skopeo(&self, label: &str, args: &[String], godebug: Option<&str>) -> String {
        let run = self.next_run(label);
        let log_path = self.dir.join(format!("skopeo-{run}.log"));
        let log = std::fs::File::create(&log_path).expect("skopeo log");
        let out_path = self.dir.join(format!("skopeo-{run}.out"));
        let out = std::fs::File::create(&out_path).expect("skopeo output");
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .map(|u| u.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        let mut cmd = guarded("unshare");
        if !root {
            cmd.arg("--map-root-user");
        }
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && mount --bind "$3" /var/lib && shift 3 && exec "$@""#,
            )
            .arg("e2e-skopeo")
            .arg(self.dir.join("hosts"))
            .arg(self.dir.join("resolv.conf"))
            .arg(self.dir.join("var-lib"))
            .arg("skopeo")
            .arg("--debug")
            .arg("--policy")
            .arg(self.dir.join("policy.json"))
            .arg("--registries.d")
            .arg(self.dir.join("registries.d"))
            .arg("--tmpdir")
            .arg(self.dir.join("skopeo-tmp"))
            .arg("--command-timeout")
            .arg("240s")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("home"))
            .env("REGISTRY_AUTH_FILE", self.dir.join("home/auth.json"))
            .env("CONTAINERS_REGISTRIES_CONF", self.dir.join("registries.conf"))
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        if let Some(g) = godebug {
            cmd.env("GODEBUG", g);
        }
        let mut child = Proc {
            child: cmd.spawn().expect("start skopeo (through unshare)"),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = child.child.try_wait().expect("wait for skopeo") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "skopeo {label} still running after 300s; its log:\n{}",
                tail(&log_path, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "skopeo {label} failed ({status}); log {}:\n{}",
            log_path.display(),
            tail(&log_path, 30)
        );
        std::fs::read_to_string(&out_path).unwrap_or_default()
    }

    // -----------------------------------------------------------------------------------------
    // curl

    pub fn client(&self, proto: Proto) -> Client<'_> {
        let port = match proto {
            Proto::Http => self.http_port,
            Proto::TlsH1 | Proto::TlsH2 => self.tls_port,
        };
        Client {
            h: self,
            proto,
            port,
        }
    }

    /// curl straight to an upstream, around the edge (the harness's own checks; not scanned).
    pub fn curl_direct(&self, method: &str, url: &str, headers: &[&str]) -> CurlResp {
        self.send_direct(method, url, headers, ReqBody::Nothing)
    }

    /// [`Harness::curl_direct`] with a request body.
    pub fn send_direct(
        &self,
        method: &str,
        url: &str,
        headers: &[&str],
        body: ReqBody<'_>,
    ) -> CurlResp {
        let run = self.next_run("direct");
        let mut args: Vec<String> = vec!["--http1.1".into()];
        push_method(&mut args, method);
        push_headers(&mut args, headers);
        self.push_body(&run, &mut args, body);
        curl(&self.dir, &run, &args, url, None)
    }

    /// curl's arguments for a request body.
    fn push_body(&self, run: &str, args: &mut Vec<String>, body: ReqBody<'_>) {
        match body {
            ReqBody::Nothing => {}
            ReqBody::Bytes(b) => {
                let p = self.dir.join(format!("curl-{run}.send"));
                std::fs::write(&p, b).expect("request body file");
                args.push("--data-binary".into());
                args.push(format!("@{}", p.display()));
            }
            ReqBody::File(p) => {
                args.push("-T".into());
                args.push(p.display().to_string());
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Proto {
    Http,
    TlsH1,
    TlsH2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http => "HTTP/1.1 (plain)",
            Proto::TlsH1 => "HTTP/1.1 over TLS",
            Proto::TlsH2 => "HTTP/2 over TLS",
        }
    }
    /// What curl's `%{http_version}` says for it.
    pub fn version(self) -> &'static str {
        match self {
            Proto::Http | Proto::TlsH1 => "1.1",
            Proto::TlsH2 => "2",
        }
    }
}

pub struct CurlResp {
    pub status: u16,
    pub version: String,
    /// Every head received (interim 100s first), each with its status line.
    pub heads: Vec<(String, Vec<(String, String)>)>,
    pub body: Vec<u8>,
}

impl CurlResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.heads.last().and_then(|(_, h)| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        })
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Debug for CurlResp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP/{} {} {:?} body {:?}",
            self.version,
            self.status,
            self.heads.last().map(|(_, h)| h),
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }
}

/// curl's arguments for request headers (`Name: value` lines).
fn push_headers(args: &mut Vec<String>, headers: &[&str]) {
    for h in headers {
        args.push("-H".into());
        args.push(h.to_string());
    }
}

fn push_method(args: &mut Vec<String>, method: &str) {
    match method {
        "GET" => {}
        // -I: a HEAD without waiting for a body.
        "HEAD" => args.push("-I".into()),
        m => {
            args.push("-X".into());
            args.push(m.into());
        }
    }
}

/// Runs curl; the heads go to a dump file, the body to a file (read back unless `out` is given).
fn curl(dir: &Path, run: &str, extra: &[String], url: &str, out: Option<&Path>) -> CurlResp {
    let dump = dir.join(format!("curl-{run}.headers"));
    let body_path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("curl-{run}.body")));
    let output = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "180"])
        .args(extra)
        .arg("-D")
        .arg(&dump)
        .arg("-o")
        .arg(&body_path)
        .args(["-w", "%{http_code} %{http_version}"])
        .arg(url)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        stdout
    );
    let (code, version) = stdout.trim().split_once(' ').unwrap_or(("0", ""));
    let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
    let mut heads = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    for line in dumped.split("\r\n") {
        if line.starts_with("HTTP/") {
            if let Some(h) = current.take() {
                heads.push(h);
            }
            current = Some((line.trim().to_string(), Vec::new()));
        } else if let (Some((_, hs)), Some((k, v))) = (current.as_mut(), line.split_once(':')) {
            hs.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    heads.extend(current);
    let body = if out.is_some() {
        Vec::new()
    } else {
        let mut b = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&body_path) {
            f.read_to_end(&mut b).expect("read curl body");
        }
        b
    };
    CurlResp {
        status: code.parse().unwrap_or(0),
        version: version.to_string(),
        heads,
        body,
    }
}

/// curl through the edge, on one protocol; every head it sees is kept for the scan.
pub struct Client<'a> {
    pub h: &'a Harness,
    pub proto: Proto,
    pub port: u16,
}

pub enum ReqBody<'b> {
    Nothing,
    Bytes(&'b [u8]),
    /// Streamed from a file (`curl -T`).
    File(&'b Path),
}

impl Client<'_> {
    fn scheme(&self) -> &'static str {
        if self.proto == Proto::Http {
            "http"
        } else {
            "https"
        }
    }
    /// The public origin of the login host, as this client reaches it.
    pub fn origin(&self) -> String {
        format!("{}://{LOGIN_HOST}:{}", self.scheme(), self.port)
    }
    pub fn data_origin(&self) -> String {
        format!("{}://{DATA_HOST}:{}", self.scheme(), self.port)
    }
    /// A Location as a URL: relative ones are on the login origin.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with('/') {
            format!("{}{location}", self.origin())
        } else {
            location.to_string()
        }
    }

    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[&str],
        body: ReqBody<'_>,
        out: Option<&Path>,
    ) -> CurlResp {
        let run = self.h.next_run(&format!("{:?}-{method}", self.proto));
        let mut args: Vec<String> = Vec::new();
        for name in [LOGIN_HOST, DATA_HOST] {
            args.push("--resolve".into());
            args.push(format!("{name}:{}:127.0.0.1", self.port));
        }
        match self.proto {
            Proto::Http => args.push("--http1.1".into()),
            Proto::TlsH1 => args.push("--http1.1".into()),
            Proto::TlsH2 => args.push("--http2".into()),
        }
        if self.proto != Proto::Http {
            args.push("--cacert".into());
            args.push(self.h.ca.display().to_string());
        }
        push_method(&mut args, method);
        push_headers(&mut args, headers);
        self.h.push_body(&run, &mut args, body);
        let resp = curl(&self.h.dir, &run, &args, url, out);
        assert_eq!(
            resp.version,
            self.proto.version(),
            "{method} {url}: curl spoke HTTP/{} instead of {}",
            resp.version,
            self.proto.name()
        );
        self.h
            .seen
            .lock()
            .expect("seen")
            .extend(resp.heads.iter().map(|(line, hs)| Seen {
                client: format!("curl {} {method} {url}", self.proto.name()),
                port: self.port,
                status_line: line.clone(),
                headers: hs.clone(),
            }));
        resp
    }

    pub fn get(&self, url: &str, headers: &[&str]) -> CurlResp {
        self.send("GET", url, headers, ReqBody::Nothing, None)
    }
}

// ---------------------------------------------------------------------------------------------
// The scan

/// Checks one header a client saw: no upstream authority anywhere in it (the `service=` audience
/// of a challenge included: the edge names its public host there), and every URL in it on the
/// public origin the client used.
pub fn check_header(
    name: &str,
    value: &str,
    port: u16,
    upstreams: &[String],
) -> Result<(), String> {
    let lower = value.to_ascii_lowercase();
    for up in upstreams {
        if lower.contains(&up.to_ascii_lowercase()) {
            return Err(format!("{name}: {value} names the upstream {up}"));
        }
    }
    let allowed = [
        format!("{LOGIN_HOST}:{port}"),
        format!("{DATA_HOST}:{port}"),
    ];
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| "/?#\"'<>, ;".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        if !allowed.iter().any(|a| a == authority) {
            return Err(format!(
                "{name}: {value} has a URL on {authority}, not on {} or {}",
                allowed[0], allowed[1]
            ));
        }
        rest = &after[end..];
    }
    Ok(())
}

impl Harness {
    /// Scans every head seen so far; returns how many headers were checked.
    pub fn scan(&self) -> usize {
        let upstreams = self.upstream_authorities();
        let seen = self.seen.lock().expect("seen");
        let mut problems = Vec::new();
        let mut n = 0;
        for s in seen.iter() {
            for (k, v) in &s.headers {
                n += 1;
                if let Err(e) = check_header(k, v, s.port, &upstreams) {
                    problems.push(format!("{} → {}: {e}", s.client, s.status_line));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{} of {n} response headers leak an upstream:\n{}",
            problems.len(),
            problems.join("\n")
        );
        n
    }

    /// The access log's JSON lines.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
pub fn challenge(v: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let v = v.strip_prefix("Bearer ").unwrap_or(v);
    let mut rest = v;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches([',', ' ']).to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        out.insert(key, after[..end].to_string());
        rest = &after[(end + 1).min(after.len())..];
    }
    out
}

#[test]
fn scan_rules() {
    let ups = vec!["127.0.0.1:4000".to_string(), "127.0.0.1:4001".to_string()];
    let ok = |n: &str, v: &str| check_header(n, v, 8443, &ups).is_ok();
    assert!(ok(
        "WWW-Authenticate",
        "Bearer realm=\"https://registry.localhost:8443/oauth2/token\",service=\"registry.localhost\""
    ));
    // The audience names the upstream: a leak.
    assert!(!ok(
        "WWW-Authenticate",
        "Bearer realm=\"https://registry.localhost:8443/oauth2/token\",service=\"127.0.0.1:4000\""
    ));
    assert!(!ok(
        "WWW-Authenticate",
        "Bearer realm=\"http://127.0.0.1:4000/oauth2/token\",service=\"127.0.0.1:4000\""
    ));
    assert!(ok(
        "Location",
        "https://data.localhost:8443/docker/x?sv=1&sig=a%3D"
    ));
    assert!(!ok("Location", "https://data.localhost:4001/docker/x"));
    assert!(!ok("Location", "https://registry.localhost/docker/x"));
    assert!(!ok("X-Debug", "upstream 127.0.0.1:4001 said no"));
    assert!(ok("Location", "/v2/team/app/blobs/uploads/u?_state=x"));
    assert!(ok(
        "Link",
        "<https://registry.localhost:8443/v2/_catalog?n=1&last=a>; rel=\"next\""
    ));
    let c = challenge("Bearer realm=\"https://r/oauth2/token\",service=\"s:1\",scope=\"repository:a/b:pull,push\"");
    assert_eq!(c["realm"], "https://r/oauth2/token");
    assert_eq!(c["service"], "s:1");
    assert_eq!(c["scope"], "repository:a/b:pull,push");
}
