//! The `registry-edge` binary: a thin command-line front over the library crates.
//!
//! ```text
//! registry-edge check -c conf/registry-edge.yaml            # validate, print what the file means
//! registry-edge check --no-files -c conf/registry-edge.yaml # skip certificate and GeoIP files (CI)
//! registry-edge run -c conf/local.yaml                      # serve
//! registry-edge run -c conf/local.yaml --upgrade            # take the sockets of a running instance
//! registry-edge reload -c conf/local.yaml                   # apply a changed file (SIGHUP)
//! registry-edge upgrade -c conf/local.yaml                  # replace the process, sockets kept
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: pingora allocates and frees many small objects per
/// request (header maps, buffers, boxed futures); docs/performance.md has the measurement.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod endpoints;
mod init;
mod summary;
mod tuning;

/// Exit status for a configuration that does not validate (EX_USAGE): nothing was started.
const EXIT_INVALID_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "registry-edge",
    version,
    about = "Edge proxy that publishes a private container registry under custom domains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file (validated first: exit 64 when invalid).
    Run {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from a running instance (graceful upgrade); send the
        /// old process SIGQUIT once this one has started.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Replace the running instance with a new process without dropping a connection: starts
    /// `run --upgrade`, which takes the listening sockets over, then tells the old process
    /// (from `server.pid_file`) to finish its requests within `server.grace_period` and exit.
    Upgrade {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Apply a changed configuration file to the running instance without a restart: the
    /// file is validated here first, then the instance (from `server.pid_file`) is sent SIGHUP
    /// and its verdict is printed (exit 0 applied, 1 refused). Listener, `server:`, admin and
    /// logging changes need `upgrade`.
    Reload {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The upstreams of a configuration (login server, token server, regional and data
    /// endpoints) with their peers, each resolved and probed now.
    Endpoints {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a configuration from the JSON that `az acr show-endpoints` prints.
    Init {
        /// The saved output of `az acr show-endpoints --name <registry>`.
        #[arg(long, value_name = "FILE")]
        endpoints: PathBuf,
        /// The custom domain clients log in to.
        #[arg(long, value_name = "HOST")]
        public_host: String,
        /// The custom domain of the data endpoints (not the public host; a subdomain of it is fine).
        #[arg(long, value_name = "HOST")]
        data_host: String,
        /// Write here instead of standard output (refuses to overwrite).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// GeoIP: where an address is and what the access policy decides for it.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// Validate a configuration file and print what it means (exit 0), or every error (exit 64).
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Do not open the files the configuration names (certificates, CA, GeoIP database).
        #[arg(long)]
        no_files: bool,
        /// Print only errors.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum GeoCommand {
    /// Country, continent and the policy's decision for ADDRESS (as a client address, after any
    /// trusted-proxy processing).
    Lookup {
        /// An IPv4 or IPv6 address.
        address: std::net::IpAddr,
        /// The configuration file (its geoip.database and access policy).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => {
            tuning::reexec_tuned();
            run(config, upgrade)
        }
        Command::Upgrade { config } => upgrade(&config),
        Command::Reload { config } => reload(&config),
        Command::Endpoints { config } => {
            // Only the upstream part is needed: certificates and the GeoIP database are not
            // opened (as `check --no-files`), so it runs on `init`'s output before they exist.
            let options = registry_edge_config::Options { check_files: false };
            match registry_edge_config::load(&config, options) {
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(EXIT_INVALID_CONFIG)
                }
                Ok(c) => match endpoints::render(&c) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("registry-edge endpoints: {e}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
        Command::Init {
            endpoints,
            public_host,
            data_host,
            output,
        } => init_command(&endpoints, &public_host, &data_host, output.as_deref()),
        Command::Geo {
            command: GeoCommand::Lookup { address, config },
        } => geo_lookup(address, config),
        Command::Check {
            config,
            no_files,
            quiet,
        } => {
            let options = registry_edge_config::Options {
                check_files: !no_files,
            };
            match registry_edge_config::load(&config, options) {
                Ok(cfg) => {
                    if !quiet {
                        print!("{}", summary::render(&cfg, options));
                    }
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    let n = errors.errors.len();
                    eprintln!(
                        "{}: {n} error{} found; nothing was started",
                        errors.file,
                        if n == 1 { "" } else { "s" }
                    );
                    ExitCode::from(EXIT_INVALID_CONFIG)
                }
            }
        }
    }
}

fn run(path: PathBuf, upgrade: bool) -> ExitCode {
    // Every record is scrubbed (queries, paths, credentials by allow-list) and pingora's lines
    // about misbehaving clients are rate-limited and counted: registry_edge_proxy::logfilter.
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max_level = logger.filter();
    if let Err(e) = registry_edge_proxy::logfilter::install(logger, max_level) {
        eprintln!("registry-edge: cannot install the logger: {e}");
    }
    let config = match registry_edge_config::load(
        &path,
        registry_edge_config::Options { check_files: true },
    ) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: invalid configuration; nothing was started",
                errors.file
            );
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let pid_file = config.server.pid_file.clone();
    let options = registry_edge_proxy::RunOptions {
        upgrade,
        config_path: Some(path.clone()),
    };
    match registry_edge_proxy::build(config, options) {
        Ok(server) => {
            // pingora writes the pid file only when it daemonizes; `upgrade` needs it always.
            // By now (after bootstrap) an upgrading process holds the sockets.
            if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
                log::warn!("cannot write the pid file {}: {e}", pid_file.display());
            }
            log::info!(
                "registry-edge {} starting with {}",
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
            server.run_forever()
        }
        Err(e) => {
            eprintln!("registry-edge: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn geo_lookup(address: std::net::IpAddr, path: PathBuf) -> ExitCode {
    let options = registry_edge_config::Options { check_files: true };
    let config = match registry_edge_config::load(&path, options) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let Some(geoip) = &config.geoip else {
        eprintln!("{}: no geoip.database configured", path.display());
        return ExitCode::from(EXIT_INVALID_CONFIG);
    };
    let db = match registry_edge_geo::GeoDb::open(&geoip.database) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let address = registry_edge_geo::normalise(address);
    let loc = db.lookup(address);
    let code = |c: Option<[u8; 2]>| {
        c.map_or("unknown".to_string(), |c| {
            String::from_utf8_lossy(&c).into_owned()
        })
    };
    println!("address    {address}");
    println!("country    {}", code(loc.country));
    println!("continent  {}", code(loc.continent));
    println!(
        "database   {} (built {})",
        db.database_type(),
        db.build_epoch()
    );
    let policy = registry_edge_proxy::policy::Policy::new(&config.access);
    match policy.address_and_country(address, loc.country) {
        None => println!("decision   allow: passes the address and country checks"),
        Some(r) => println!(
            "decision   refuse {} {} ({}): {}{}",
            r.status,
            r.code,
            r.reason.label(),
            r.message,
            if policy.detect_only() {
                " [detect mode: logged, let through]"
            } else {
                ""
            }
        ),
    }
    ExitCode::SUCCESS
}

fn init_command(
    endpoints: &std::path::Path,
    public_host: &str,
    data_host: &str,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let json = match std::fs::read_to_string(endpoints) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{}: {e}", endpoints.display());
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let yaml = match init::render(&json, public_host, data_host) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("{}: {e}", endpoints.display());
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    // What init writes must pass check: the names given may still be wrong.
    if let Err(errors) = registry_edge_config::parse(
        &yaml,
        "<init>",
        std::path::Path::new("."),
        registry_edge_config::Options { check_files: false },
    ) {
        eprintln!("{errors}");
        return ExitCode::from(EXIT_INVALID_CONFIG);
    }
    match output {
        None => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some(p) => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, yaml.as_bytes()));
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {e}", p.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// For `upgrade` and `reload`: the validated file and the process in its `server.pid_file`.
/// An invalid file exits 64 before anything is signalled.
fn validated_and_running(
    config_path: &std::path::Path,
    command: &str,
) -> Result<(registry_edge_config::Config, i32), ExitCode> {
    let options = registry_edge_config::Options { check_files: true };
    let config = match registry_edge_config::load(config_path, options) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: invalid configuration; the running instance is left as it is",
                errors.file
            );
            return Err(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    let Some(pid) = read_pid(&config.server.pid_file) else {
        eprintln!(
            "registry-edge {command}: no running instance in {}",
            config.server.pid_file.display()
        );
        return Err(ExitCode::FAILURE);
    };
    Ok((config, pid))
}

fn upgrade(config_path: &std::path::Path) -> ExitCode {
    let (config, old) = match validated_and_running(config_path, "upgrade") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let pid_file = &config.server.pid_file;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("registry-edge upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The new process outlives this command: its own process group, stdio inherited (journald
    // or the terminal keeps its logs).
    let child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("run")
            .arg("-c")
            .arg(config_path)
            .arg("--upgrade")
            .process_group(0)
            .spawn()
    };
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-edge upgrade: cannot start the new process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let new = child.id() as i32;
    // The new process waits on the upgrade socket; the old one sends its sockets there on
    // SIGQUIT, retrying for a few seconds, so the order is safe.
    std::thread::sleep(std::time::Duration::from_millis(300));
    if let Err(code) = signal("upgrade", old, nix::sys::signal::Signal::SIGQUIT) {
        return code;
    }
    if wait_for(|| (read_pid(pid_file) == Some(new)).then_some(())).is_none() {
        eprintln!("registry-edge upgrade: the new process {new} did not take over within 30 s");
        return ExitCode::FAILURE;
    }
    println!(
        "registry-edge upgrade: process {new} serves; process {old} finishes its requests for up to {:?} and exits",
        config.server.grace_period
    );
    ExitCode::SUCCESS
}

fn reload(config_path: &std::path::Path) -> ExitCode {
    let (config, pid) = match validated_and_running(config_path, "reload") {
        Ok(found) => found,
        Err(code) => return code,
    };
    let pid_file = &config.server.pid_file;
    let status_file = registry_edge_proxy::reload::status_path(pid_file);
    let before = std::fs::read_to_string(&status_file).ok();
    if let Err(code) = signal("reload", pid, nix::sys::signal::Signal::SIGHUP) {
        return code;
    }
    // The instance validates again (it reads the file itself) and resolves new upstreams.
    let verdict = wait_for(|| {
        std::fs::read_to_string(&status_file)
            .ok()
            .filter(|t| Some(t) != before.as_ref())
    });
    let Some(text) = verdict else {
        eprintln!(
            "registry-edge reload: process {pid} wrote no verdict to {} within 30 s; see its log",
            status_file.display()
        );
        return ExitCode::FAILURE;
    };
    let mut lines = text.lines();
    let ok = lines.next().is_some_and(|l| l.ends_with(" ok"));
    let details: Vec<&str> = lines.collect();
    if ok {
        println!(
            "registry-edge reload: process {pid} applied {}",
            config_path.display()
        );
        for l in details {
            println!("  {l}");
        }
        return ExitCode::SUCCESS;
    }
    eprintln!("registry-edge reload: process {pid} refused the file and keeps its configuration:");
    for l in details {
        eprintln!("  {l}");
    }
    ExitCode::FAILURE
}

/// Sends `sig` to the running process `pid` for `command` (`upgrade`, `reload`).
fn signal(command: &str, pid: i32, sig: nix::sys::signal::Signal) -> Result<(), ExitCode> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| {
        eprintln!("registry-edge {command}: cannot signal process {pid}: {e}");
        ExitCode::FAILURE
    })
}

/// What `check` finds, asked every 50 ms for up to 30 s; `None` when it finds nothing in time.
fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
