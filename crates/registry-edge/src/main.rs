//! The `registry-edge` binary: a thin command-line front over the library crates.
//!
//! ```text
//! registry-edge check -c conf/registry-edge.yaml            # validate, print what the file means
//! registry-edge check --no-files -c conf/registry-edge.yaml # skip certificate and GeoIP files (CI)
//! registry-edge run -c conf/local.yaml                      # serve
//! registry-edge run -c conf/local.yaml --upgrade            # take the sockets of a running instance
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod summary;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => run(config, upgrade),
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    match registry_edge_proxy::build(config, registry_edge_proxy::RunOptions { upgrade }) {
        Ok(server) => {
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
