//! glibc's copy routine, tuned for `run` before anything starts (docs/operations.md, "Copies
//! through TLS").
//!
//! rustls copies every byte it encrypts into its record buffer with `memcpy`, 16 KiB at a time.
//! glibc 2.36 copies 2,112 bytes and more with `rep movsb` whenever the CPU says such copies are
//! fast (ERMS, FSRM); on the AMD EPYC machines measured here they are not, and that copy was
//! the largest single cost of a blob sent over TLS (docs/performance.md). With copies below
//! 4 MiB left to glibc's vector loop, a TLS cache hit and TLS proxying cost a third less CPU.
//!
//! glibc reads its tunables once, when the program is loaded, so the process executes itself
//! again, once, with `glibc.cpu.x86_rep_movsb_threshold` added to `GLIBC_TUNABLES` (any tunables
//! already set are kept). Left alone: a threshold the operator set, `REGISTRY_EDGE_GLIBC_TUNING=off`,
//! CPUs other than AMD's (not measured), other C libraries and architectures.

/// The threshold set: copies below it use the vector loop.
pub const REP_MOVSB_THRESHOLD: &str = "glibc.cpu.x86_rep_movsb_threshold=4194304";

/// The `GLIBC_TUNABLES` value to run with, given the one in the environment; `None` when the
/// environment already says what the threshold is.
#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")),
    allow(dead_code)
)]
pub fn tunables(existing: Option<&str>) -> Option<String> {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        None => Some(REP_MOVSB_THRESHOLD.to_string()),
        Some(s)
            if s.split(':')
                .any(|t| t.starts_with("glibc.cpu.x86_rep_movsb_threshold=")) =>
        {
            None
        }
        Some(s) => Some(format!("{s}:{REP_MOVSB_THRESHOLD}")),
    }
}

/// Whether this CPU is one the tuning was measured on (`/proc/cpuinfo`'s vendor).
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn amd_cpu() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("vendor_id"))
            .is_some_and(|l| l.ends_with("AuthenticAMD"))
    })
}

/// Executes this program again with the tuned `GLIBC_TUNABLES` when that applies (same
/// arguments, same process id). Returns when it does not apply, or when the execution failed
/// (said on standard error; the process goes on untuned).
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
pub fn reexec_tuned() {
    use std::os::unix::process::CommandExt;

    if std::env::var_os("REGISTRY_EDGE_GLIBC_TUNING").is_some_and(|v| v == "off") {
        return;
    }
    // The environment first: the executed process finds the threshold set and stops here,
    // without reading /proc/cpuinfo again.
    let existing = std::env::var("GLIBC_TUNABLES").ok();
    let Some(value) = tunables(existing.as_deref()) else {
        return;
    };
    if !amd_cpu() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "registry-edge".into());
    let e = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .exec();
    eprintln!("registry-edge: could not execute itself with GLIBC_TUNABLES set ({e}); going on");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
pub fn reexec_tuned() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_added_once_and_an_operators_choice_kept() {
        assert_eq!(tunables(None).as_deref(), Some(REP_MOVSB_THRESHOLD));
        assert_eq!(tunables(Some("")).as_deref(), Some(REP_MOVSB_THRESHOLD));
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{REP_MOVSB_THRESHOLD}"))
        );
        // Once set (by the operator, or by the first execution), nothing changes: no loop.
        assert_eq!(tunables(Some(REP_MOVSB_THRESHOLD)), None);
        assert_eq!(
            tunables(Some(
                "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=2048"
            )),
            None
        );
        // Another tunable whose name merely starts the same way is not the threshold.
        assert!(tunables(Some("glibc.cpu.x86_rep_movsb_threshold_x=1")).is_some());
    }
}
