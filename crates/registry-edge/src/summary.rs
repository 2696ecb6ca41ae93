//! The one-screen summary `check` prints: what the file means, in the operator's terms.

use std::fmt::Write as _;

use registry_edge_config::{
    AccessLog, AccessMode, Config, HealthCheckKind, Options, UnknownCountry, UnmappedRedirects,
    Upstream,
};
use registry_edge_rewrite::{ActionSpec, Subject};

pub fn render(c: &Config, options: Options) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<10} {text}");
    };
    let files_note = if options.check_files {
        ""
    } else {
        " [not opened: --no-files]"
    };
    line("config", format!("{}: valid", c.source));

    for (i, l) in c.listeners.iter().enumerate() {
        let mut text = format!("{} ", l.address);
        if let Some(tls) = &l.tls {
            let _ = write!(
                text,
                "TLS ({} certificate{}{files_note}), ",
                tls.certificates.len(),
                if tls.certificates.len() == 1 { "" } else { "s" }
            );
        }
        if l.redirect_to_https {
            text.push_str("redirects GET/HEAD to https (308)");
        } else {
            let _ = write!(
                text,
                "public scheme {}, header read {:?}, idle {:?}, write {:?}, headers ≤ {} B",
                l.public_scheme.as_str(),
                l.timeouts.header_read,
                l.timeouts.idle,
                l.timeouts.write,
                l.max_request_header_bytes
            );
        }
        line(if i == 0 { "listeners" } else { "" }, text);
    }
    match &c.admin {
        Some(a) => line(
            "admin",
            format!("{} (/metrics, /healthz, /readyz)", a.address),
        ),
        None => line("admin", "off".into()),
    }

    let r = &c.registry;
    line(
        "login",
        format!("{} → {}", r.public_host, upstream(&r.login)),
    );
    line(
        "token",
        format!(
            "{} → {}",
            r.token_paths.join(", "),
            r.token_server
                .as_ref()
                .map_or("the login side".to_string(), upstream)
        ),
    );
    let mut regions: Vec<&str> = r
        .regional_endpoints
        .iter()
        .map(|e| e.region.as_str())
        .chain(r.data_endpoints.iter().map(|d| d.region.as_str()))
        .collect();
    regions.sort_unstable();
    regions.dedup();
    for (i, name) in regions.iter().enumerate() {
        let mut text = format!("{name:<12}");
        if let Some(e) = r.regional_endpoints.iter().find(|e| e.region == *name) {
            let _ = write!(text, " login {}", upstream(&e.upstream));
        }
        if let Some(d) = r.data_endpoints.iter().find(|d| d.region == *name) {
            let prefix = if d.shared_public_host {
                format!("/_r/{name}")
            } else {
                String::new()
            };
            let _ = write!(
                text,
                " data {}{prefix} → {}",
                d.public_host,
                upstream(&d.upstream)
            );
        }
        line(if i == 0 { "regions" } else { "" }, text);
    }
    let mut routing: Vec<String> = c
        .regions
        .iter()
        .map(|rule| {
            let mut keys: Vec<&str> = rule.countries.iter().map(|c| c.as_str()).collect();
            keys.extend(rule.continents.iter().map(|k| k.code()));
            format!("{} → {}", keys.join(" "), rule.region)
        })
        .collect();
    routing.push(match &c.local_region {
        Some(l) => format!("otherwise → {l} (local)"),
        None => "otherwise → declared order, then the login server".into(),
    });
    line("routing", routing.join("; "));

    if !c.clients.trusted_proxies.is_empty() {
        line(
            "clients",
            format!(
                "X-Forwarded-For trusted from {}",
                join(c.clients.trusted_proxies.iter())
            ),
        );
    } else {
        line("clients", "socket address only (no trusted proxies)".into());
    }
    let a = &c.access;
    let mut access = vec![match a.mode {
        AccessMode::Enforce => "enforce".to_string(),
        AccessMode::Detect => "detect (decide and log, let through)".to_string(),
    }];
    if a.embargo_countries.is_empty() {
        access.push("no embargo".into());
    } else {
        access.push(format!(
            "embargo {} (unknown country: {})",
            join(a.embargo_countries.iter()),
            match a.unknown_country {
                UnknownCountry::Allow => "allow",
                UnknownCountry::Deny => "deny",
            }
        ));
    }
    if !a.deny_cidrs.is_empty() {
        access.push(format!("deny {}", join(a.deny_cidrs.iter())));
    }
    if !a.allow_cidrs.is_empty() {
        access.push(format!("allow {}", join(a.allow_cidrs.iter())));
    }
    access.push(if a.read_only {
        "read-only".into()
    } else {
        "read-write".into()
    });
    access.push(format!("repositories {}", a.repositories_allow.join(" ")));
    if let Some(rl) = &a.rate_limit {
        access.push(format!(
            "rate limit {}/s burst {} per client",
            rl.requests_per_second, rl.burst
        ));
    }
    line("access", access.join("; "));
    match &c.geoip {
        Some(g) => line(
            "geoip",
            format!(
                "{}{}{files_note}",
                g.database.display(),
                if g.reload {
                    " (swapped in when the file changes)"
                } else {
                    ""
                }
            ),
        ),
        None => line("geoip", "none".into()),
    }
    line(
        "cache",
        match &c.blob_cache {
            None => "off (no blob_cache)".into(),
            Some(b) => format!(
                "blobs in {}, {}, of {} or more, tokens valid {}s at most (key {}){files_note}",
                b.path.display(),
                size(b.max_size),
                size(b.min_blob_size),
                b.authorization_ttl.as_secs(),
                b.key_file.display()
            ),
        },
    );

    line(
        "redirects",
        match r.unmapped_redirects {
            UnmappedRedirects::Refuse => {
                "an absolute Location no rule maps is refused (502), counted and logged".into()
            }
            UnmappedRedirects::Pass => {
                "an absolute Location no rule maps is passed (counted and logged)".into()
            }
        },
    );
    for note in notes(c) {
        line("note", note);
    }

    let derived = (c.rewrites.len()..c.engine.rule_count())
        .map(|i| c.engine.rule_name(i).to_string())
        .collect::<Vec<_>>();
    line("rewrites", format!("derived: {}", derived.join(", ")));
    for rule in &c.rewrites {
        let conds: Vec<String> = rule
            .conditions
            .iter()
            .map(|k| {
                let subject = match &k.subject {
                    Subject::Header { name, .. } => name.clone(),
                    Subject::Var(v) => format!("var {}", v.name()),
                };
                format!(
                    "{subject} {}~ /{}/{}",
                    if k.negate { "!" } else { "" },
                    k.pattern,
                    if k.case_sensitive { "" } else { "i" }
                )
            })
            .collect();
        let acts: Vec<String> = rule
            .actions
            .iter()
            .map(|a| match a {
                ActionSpec::Set { header, value, .. } => format!("set {header} = {value}"),
                ActionSpec::Delete { header, .. } => format!("delete {header}"),
            })
            .collect();
        let statuses: Vec<String> = rule
            .statuses
            .iter()
            .map(|s| {
                if s.from == s.to {
                    s.from.to_string()
                } else {
                    format!("{}-{}", s.from, s.to)
                }
            })
            .collect();
        line(
            "",
            format!(
                "{}: if {}{} then {}",
                rule.name,
                if conds.is_empty() {
                    "always".to_string()
                } else {
                    conds.join(" and ")
                },
                if statuses.is_empty() {
                    String::new()
                } else {
                    format!(" (status {})", statuses.join(", "))
                },
                acts.join("; ")
            ),
        );
    }
    line(
        "logging",
        match &c.logging.access_log {
            AccessLog::Stdout => "access log → stdout".into(),
            AccessLog::Stderr => "access log → stderr".into(),
            AccessLog::Off => "access log off".into(),
            AccessLog::File(p) => format!("access log → {}", p.display()),
        },
    );
    out
}

fn upstream(u: &Upstream) -> String {
    let mut s = format!(
        "{} ({}",
        u.authority,
        if u.tls { "tls" } else { "plain http" }
    );
    if !u.peers.is_empty() {
        let _ = write!(s, ", peers {}", join(u.peers.iter()));
    }
    match &u.health_check.kind {
        HealthCheckKind::Http { path, .. } => {
            let _ = write!(s, ", probe GET {path} every {:?}", u.health_check.interval);
        }
        HealthCheckKind::Tcp => {
            let _ = write!(s, ", probe connect every {:?}", u.health_check.interval);
        }
    }
    s.push(')');
    s
}

/// A byte count in the largest binary unit that divides it (`50GiB`, `1MiB`, `1500B`).
fn size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
}

/// What an operator should know about a valid configuration.
pub fn notes(c: &Config) -> Vec<String> {
    let r = &c.registry;
    let mut out = Vec::new();
    for d in &r.data_endpoints {
        if d.public_host.ends_with(&format!(".{}", r.public_host)) {
            out.push(format!(
                "data host {} is a subdomain of {}: Go clients (docker, containerd) resend \
                 Authorization and cookies on the blob redirect; the edge removes both before \
                 anything reaches the data endpoint",
                d.public_host, r.public_host
            ));
        }
        if d.upstream
            .authority
            .host
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            out.push(format!(
                "data endpoint {} ({}) is an IP literal: registries write host names in their \
                 blob redirects, and a redirect only maps when its authority is exactly this \
                 one; see `registry-edge endpoints` and docs/operations.md",
                d.upstream.authority, d.region
            ));
        }
    }
    out
}
