//! Configuration reload (SIGHUP, which `registry-edge reload` sends): the file is read and
//! validated in full (files included), a new [`Generation`] is built beside the running one, its
//! upstreams are resolved, and only then is it swapped in, atomically. Requests in flight finish
//! under the generation they started with. A file that does not validate, or whose upstreams do
//! not resolve, is refused: the running generation stays, the error is logged and counted.
//!
//! Settings fixed into the listening services (listeners, `server:`, admin, logging) are not
//! applied by a reload: the running values are kept, the change is reported, and
//! `registry_edge_config_restart_pending` says an upgrade or restart is needed.
//!
//! Every attempt's outcome is also written next to the pid file (`<pid_file>.reload`), where
//! `registry-edge reload` reads it to tell the operator what happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::since_epoch;
use crate::generation::{self, Generation};
use crate::service::Shared;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        generation: u64,
        /// Sections whose new values are in force.
        changed: Vec<&'static str>,
        /// Sections that changed in the file but keep their running values until a restart.
        restart_required: Vec<&'static str>,
    },
    Refused(String),
}

impl Outcome {
    /// The status file's text: a first line `<unix nanoseconds> ok|refused`, then details.
    pub fn status_text(&self, at_nanos: u128) -> String {
        match self {
            Outcome::Applied {
                generation,
                changed,
                restart_required,
            } => {
                let mut t = format!(
                    "{at_nanos} ok\ngeneration {generation}\napplied: {}\n",
                    applied(changed)
                );
                if !restart_required.is_empty() {
                    t.push_str(&format!(
                        "restart required (running values kept until `registry-edge upgrade`): {}\n",
                        restart_required.join(", ")
                    ));
                }
                t
            }
            Outcome::Refused(e) => format!("{at_nanos} refused\n{e}\n"),
        }
    }
}

/// The sections a reload applied, for the log and the status file.
fn applied(changed: &[&str]) -> String {
    if changed.is_empty() {
        "no change".to_string()
    } else {
        changed.join(", ")
    }
}

/// Where a process writes the outcome of its reloads.
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut p = pid_file.as_os_str().to_owned();
    p.push(".reload");
    PathBuf::from(p)
}

/// Reloads the configuration file; returns what happened (also logged, counted and written to
/// the status file). The new generation's probe loops are started by the caller.
pub async fn reload(shared: &Arc<Shared>) -> (Outcome, Option<Arc<Generation>>) {
    let _one_at_a_time = shared.reloading.lock().await;
    let (outcome, generation) = match attempt(shared).await {
        Ok((outcome, generation)) => (outcome, Some(generation)),
        Err(e) => (Outcome::Refused(e), None),
    };
    let m = &shared.metrics;
    match &outcome {
        Outcome::Applied {
            generation,
            changed,
            restart_required,
        } => {
            m.config_reloads[0].inc();
            m.config_generation.set(*generation as i64);
            m.config_loaded_at.set(since_epoch().as_secs() as i64);
            m.config_restart_pending
                .set(i64::from(!restart_required.is_empty()));
            log::info!(
                "configuration reloaded: generation {generation}; applied: {}",
                applied(changed)
            );
            if !restart_required.is_empty() {
                log::warn!(
                    "configuration reload: {} changed; these apply only after a restart or `registry-edge upgrade` (running values kept)",
                    restart_required.join(", ")
                );
            }
        }
        Outcome::Refused(e) => {
            m.config_reloads[1].inc();
            log::error!("configuration reload refused, the running configuration stays:\n{e}");
        }
    }
    let pid_file = shared.generation().config.server.pid_file.clone();
    if let Err(e) = std::fs::write(
        status_path(&pid_file),
        outcome.status_text(since_epoch().as_nanos()),
    ) {
        log::warn!(
            "cannot write the reload status next to {}: {e}",
            pid_file.display()
        );
    }
    (outcome, generation)
}

async fn attempt(shared: &Arc<Shared>) -> Result<(Outcome, Arc<Generation>), String> {
    let Some(path) = shared.config_path.clone() else {
        return Err("this process was not started from a configuration file".into());
    };
    let running = shared.generation();
    let s = shared.clone();
    let prev = running.clone();
    // Reading and validating the file and opening the files it names block: off the async
    // threads.
    let built = tokio::task::spawn_blocking(move || {
        let options = registry_edge_config::Options { check_files: true };
        let new = registry_edge_config::load(&path, options).map_err(|e| e.to_string())?;
        let restart_required = generation::restart_only_changes(&prev.config, &new);
        let changed = generation::changed_sections(&prev.config, &new);
        let new = generation::keep_running_settings(&prev.config, new);
        let next =
            Generation::build(Arc::new(new), Some(&prev), &s.metrics).map_err(|e| e.to_string())?;
        Ok::<_, String>((next, changed, restart_required))
    })
    .await
    .map_err(|e| format!("reload task failed: {e}"))?;
    let (next, changed, restart_required) = built?;
    next.upstreams.resolve_all().await;
    if let Some(name) = next.upstreams.unresolved() {
        return Err(format!(
            "upstream {name}: its name does not resolve to any address"
        ));
    }
    let next = Arc::new(next);
    // The swap: new requests take `next`; requests in flight keep `running`.
    shared.in_force.store(next.clone());
    if let Some(cache) = &next.blob_cache {
        cache.in_force();
    }
    running.retire();
    forget_stale_series(shared, &running, &next);
    Ok((
        Outcome::Applied {
            generation: next.number,
            changed,
            restart_required,
        },
        next,
    ))
}

/// Drops the metric series of upstreams and rewrite rules the new generation no longer has.
fn forget_stale_series(shared: &Shared, old: &Generation, new: &Generation) {
    let m = &shared.metrics;
    for pool in old.upstreams.all() {
        if !new.upstreams.all().any(|p| p.name == pool.name) {
            m.upstreams.forget(
                &pool.name,
                pool.region.as_deref().unwrap_or(""),
                &pool.peer_addrs(),
            );
        }
    }
    let names: Vec<&str> = (0..new.engine.rule_count())
        .map(|i| new.engine.rule_name(i))
        .collect();
    for i in 0..old.engine.rule_count() {
        let name = old.engine.rule_name(i);
        if !names.contains(&name) {
            m.forget_rewrite(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_the_result_first() {
        let ok = Outcome::Applied {
            generation: 3,
            changed: vec!["access"],
            restart_required: vec!["listeners"],
        };
        let t = ok.status_text(42);
        assert!(t.starts_with("42 ok\ngeneration 3\napplied: access\n"));
        assert!(t.contains("restart required"));
        assert!(t.contains("listeners"));
        let refused = Outcome::Refused("x.yaml:3:1: bad".into());
        assert_eq!(refused.status_text(7), "7 refused\nx.yaml:3:1: bad\n");
        assert_eq!(
            status_path(Path::new("/run/registry-edge.pid")),
            PathBuf::from("/run/registry-edge.pid.reload")
        );
    }
}
