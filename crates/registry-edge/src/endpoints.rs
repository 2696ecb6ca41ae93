//! `registry-edge endpoints`: the upstreams of a configuration, like `az acr show-endpoints`, with
//! each peer resolved and probed once, now, the way the running edge probes it.

use std::fmt::Write as _;

use registry_edge_config::{Config, HealthCheckKind};
use registry_edge_proxy::health;
use registry_edge_proxy::metrics::Metrics;
use registry_edge_proxy::upstream::{PoolId, Upstreams};

pub fn render(config: &Config) -> Result<String, String> {
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let ups = Upstreams::new(config, &metrics).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = &config.registry;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<12} {:<44} {:<34} {:<24} HEALTH",
        "ROLE", "REGION", "ENDPOINT", "PUBLIC", "PEER"
    );
    rt.block_on(async {
        ups.resolve_all().await;
        let connector = pingora::connectors::TransportConnector::new(None);
        for id in ups.ids() {
            let Some(pool) = ups.get(id) else { continue };
            let (role, public, endpoint) = match id {
                PoolId::Login => (
                    "login",
                    r.public_host.clone(),
                    r.login.authority.to_string(),
                ),
                PoolId::Token => (
                    "token",
                    format!("{}{}", r.public_host, r.token_paths.join(",")),
                    r.token_server
                        .as_ref()
                        .map_or(String::new(), |t| t.authority.to_string()),
                ),
                PoolId::Regional(i) => (
                    "regional",
                    r.public_host.clone(),
                    r.regional_endpoints[i].upstream.authority.to_string(),
                ),
                PoolId::Data(i) => {
                    let d = &r.data_endpoints[i];
                    let public = if d.shared_public_host {
                        format!("{}/_r/{}/", d.public_host, d.region)
                    } else {
                        d.public_host.clone()
                    };
                    ("data", public, d.upstream.authority.to_string())
                }
            };
            let region = pool.region.clone().unwrap_or_else(|| "-".into());
            let peers = pool.peers();
            if peers.is_empty() {
                let _ = writeln!(
                    out,
                    "{role:<9} {region:<12} {endpoint:<44} {public:<34} {:<24} unresolved",
                    "-"
                );
                continue;
            }
            let hc = &pool.health_check;
            let how = match &hc.kind {
                HealthCheckKind::Http { path, .. } => format!("GET {path}"),
                HealthCheckKind::Tcp => "connect".to_string(),
            };
            for p in peers.iter() {
                let ok = health::probe(&connector, &pool.probe_peer(p.addr), &pool.host_header, hc)
                    .await;
                let state = if ok { "healthy" } else { "unhealthy" };
                let _ = writeln!(
                    out,
                    "{role:<9} {region:<12} {endpoint:<44} {public:<34} {:<24} {state} ({how})",
                    p.addr.to_string()
                );
            }
        }
    });
    if !r.data_endpoints.is_empty() {
        let _ = writeln!(
            out,
            "\nA blob redirect maps to a public data host only when its authority is exactly the \
             data ENDPOINT above (host, and port unless it is the default); any other is counted \
             in registry_edge_rewrite_unmapped_urls_total and, with unmapped_redirects: refuse, \
             answered 502."
        );
    }
    for note in crate::summary::notes(config) {
        let _ = writeln!(out, "note: {note}");
    }
    Ok(out)
}
