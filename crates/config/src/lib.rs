//! registry-edge's configuration: one YAML file, read in three steps.
//!
//! 1. **parse**: serde structs that refuse unknown keys ([`raw`]);
//! 2. **validate**: every value and every cross-reference checked, *all* errors collected, each
//!    with `file:line:col` and a dotted path such as `registry.data_endpoints[1].public_host`
//!    (positions come from [`position::PositionIndex`], since serde_yaml keeps none);
//! 3. **compile**: the rewrite engine, CIDR lists and country codes built once ([`Config`]).
//!
//! ```
//! let yaml = "version: 1\nlisteners: [{ address: \"127.0.0.1:8080\" }]\nregistry:\n  login_server: \"127.0.0.1:5000\"\n  tls: false\n  public_host: registry.localhost\n";
//! let config = registry_edge_config::parse(yaml, "edge.yaml", std::path::Path::new("."), registry_edge_config::Options { check_files: true }).unwrap();
//! assert_eq!(config.registry.public_host, "registry.localhost");
//! ```

pub mod error;
pub mod files;
pub mod limits;
pub mod model;
pub mod position;
pub mod raw;
mod validate;
pub mod values;

use std::io::Read;
use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use files::BLOB_CACHE_KEY_MIN_BYTES;
pub use limits::{MAX_BYTES, MAX_DEPTH};
pub use model::*;
pub use position::Position;
pub use validate::{
    derived_spec, Options, DEFAULT_AUTHORIZATION_TTL, DEFAULT_IPV6_PREFIX, DEFAULT_MIN_BLOB_SIZE,
    DEFAULT_TOKEN_PATHS, MIN_BLOB_CACHE_SIZE,
};
pub use values::{Authority, CountryCode};

/// Reads and validates a configuration file. Relative paths inside it are taken relative to the
/// file's directory. At most [`MAX_BYTES`] are read (one more tells a longer file).
pub fn load(path: &Path, options: Options) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let fail = |error| ConfigErrors {
        file: source.clone(),
        errors: vec![error],
    };
    let unreadable = |e: std::io::Error| ConfigError {
        path: String::new(),
        position: None,
        message: format!("cannot read the file: {e}"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(unreadable(e)))?;
    if bytes.len() > MAX_BYTES {
        return Err(fail(limits::too_large(&bytes[..MAX_BYTES])));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        fail(unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &source, base, options)
}

/// Validates configuration text; `source` names it in messages. A text over [`MAX_BYTES`] or
/// nested deeper than [`MAX_DEPTH`] is refused first, in linear time (see [`limits`]).
pub fn parse(
    text: &str,
    source: &str,
    base_dir: &Path,
    options: Options,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: source.to_owned(),
        errors,
    };
    limits::check(text).map_err(|e| fail(vec![e]))?;
    let raw: raw::RawConfig =
        serde_yaml::from_str(text).map_err(|e| fail(vec![serde_error(&e)]))?;
    let index = position::PositionIndex::build(text);
    let mut v = validate::Validator::new(&index, options, base_dir.to_path_buf());
    match v.config(raw, source) {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => {
            let mut errors = std::mem::take(&mut v.errors);
            // File order reads best; errors without a position (none today) go last.
            errors.sort_by_key(|e| e.position.map_or((usize::MAX, 0), |p| (p.line, p.col)));
            Err(fail(errors))
        }
    }
}

/// serde_yaml stops at the first error: keep its position and drop the "at line X column Y"
/// it appends, which the caller prints in the `file:line:col` form.
fn serde_error(e: &serde_yaml::Error) -> ConfigError {
    let position = e.location().map(|l| Position {
        line: l.line(),
        col: l.column(),
    });
    let mut message = e.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    let (path, message) = match message.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
        _ => (String::new(), message),
    };
    ConfigError {
        path,
        position,
        message,
    }
}
