//! What the unit tests share: a configuration from YAML text, validated as `check --no-files`
//! validates it; a scratch directory.

use registry_edge_config::{parse, Config, Options};

/// `yaml` parsed and validated (files named in it are not read); a test's own fixtures must be
/// valid, so an error panics with the validator's message.
pub fn config(yaml: &str) -> Config {
    parse(
        yaml,
        "t.yaml",
        std::path::Path::new("."),
        Options { check_files: false },
    )
    .unwrap_or_else(|e| panic!("test configuration: {e}"))
}

/// One listener on `127.0.0.1:1` with `listener` added to its mapping, a registry
/// `login_server: r.internal` published as `r.example`, then `rest` (top-level YAML).
pub fn minimal(listener: &str, rest: &str) -> Config {
    config(&format!(
        "version: 1\nlisteners: [{{ address: \"127.0.0.1:1\"{listener} }}]\nregistry:\n  login_server: r.internal\n  public_host: r.example\n{rest}"
    ))
}

/// `len` bytes in which a misplaced byte or block shows: a 251-byte cycle, varied every 64 KiB.
pub fn patterned(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// A scratch directory of a test, empty at the start and removed at the end:
/// `<temp>/registry-edge-<name>-<pid>`.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("registry-edge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn join(&self, path: impl AsRef<std::path::Path>) -> std::path::PathBuf {
        self.0.join(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
